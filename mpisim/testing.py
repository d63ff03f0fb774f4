"""A test kit for aggregation rules: the properties every built-in rule passes, run on any registered rule.

    python -m mpisim.testing rule NAME [--run.plugins FILE[,FILE]] [--n N --d D --f F] [--params.KEY VALUE]

or, from Python, ``check_rule("my_rule", n=11, f=2).table()``. The rule is
called on a seeded random float32 block (row i = a common centre plus
unit noise) and checked for, in order:

- output shape (d,) and dtype float32; the same bits from two calls; the
  input left unchanged;
- invariance to permuting the rows (three random permutations);
- with f = 0 and n identical rows, that row;
- when f rows are replaced by 1e20, -1e20, NaN, +inf, -inf or a mix, a
  finite output within the honest rows' coordinate range widened by their
  spread (only if the rule claims robustness: its check refuses some f with
  2f >= n);
- for ``coordinatewise=True``: its output on column slices equals the
  slices of its output; for a rule taking ``sharding``: three column slices
  run in three threads, summing their parts through a :class:`Sharding`,
  give the slices of its output.

Comparisons pass when the bits are equal, or within
``2 n^2 eps max|x|`` (eps = 2^-23, float32's machine epsilon): n rows added
in another order differ by at most (n - 1) eps sum_i |x_i| <= n^2 eps max|x|
(Higham, recursive summation), for rules of sum scale too; the table says
which of the two held. A rule whose output on the block is all +-1 is taken
for a vote (``majority_vote``): its identical rows are a row of signs, and
its bound is that wherever the honest rows' vote leads by more than f, the
output is that vote. Nothing here imports MPI.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from threading import Barrier, BrokenBarrierError, Thread
from typing import Any

import torch

from . import plugins, registry
from .config import _parse_literal  # --params.KEY VALUE reads like --aggregator.params.KEY VALUE
from .rules.aggregators import Sharding

__all__ = ["check_rule", "claims_robustness", "Report", "Result", "main"]

EPS32 = 2.0 ** -23
PERMUTATIONS = 3
#: what the f bad rows hold in the boundedness checks ("mixed": NaN, -inf, 1e20, +inf, -1e20 in turn)
BAD_VALUES = {"1e20": 1e20, "-1e20": -1e20, "NaN": math.nan, "+inf": math.inf, "-inf": -math.inf, "mixed": None}
MIXED = (math.nan, -math.inf, 1e20, math.inf, -1e20)
SHARD_TIMEOUT = 10.0  # seconds a slice waits for the others in sharding.sum


@dataclass(frozen=True)
class Result:
    """One property: ``status`` is "held", "failed" or "skipped"; ``example`` a small failing input."""

    name: str
    status: str
    detail: str = ""
    example: str = ""


@dataclass(frozen=True)
class Report:
    """Every property checked on one rule, at one (n, d, f, params)."""

    rule: str
    n: int
    d: int
    f: int
    params: Mapping[str, Any]
    results: tuple[Result, ...]
    properties: Mapping[str, Any] = field(default_factory=dict)
    origin: str = ""

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def result(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    def table(self) -> str:
        """The properties as a table, then an example input for each failure."""
        declared = ", ".join(f"{k}={v}" for k, v in self.properties.items() if isinstance(v, bool))
        lines = [f"rule {self.rule!r} ({self.origin}; {declared}) at n={self.n}, d={self.d}, f={self.f}, "
                 f"params {dict(self.params)}"]
        width = max(len("property"), *(len(r.name) for r in self.results))
        lines.append(f"{'property':<{width}}  {'result':<7}  detail")
        lines.append(f"{'-' * width}  {'-' * 7}  {'-' * 6}")
        lines += [f"{r.name:<{width}}  {r.status:<7}  {r.detail}" for r in self.results]
        for r in self.failed:
            lines += ["", f"FAILED {r.name}: {r.detail}", r.example]
        lines.append("")
        lines.append(f"{len(self.failed)} failed" if self.failed else "all properties held or were skipped")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Inputs, calls and comparisons
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Case:
    name: str
    rule: Callable
    n: int
    d: int
    f: int
    params: Mapping[str, Any]
    seed: int
    entry: registry.Entry
    vote: bool = False

    def gen(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1000 + salt)

    def block(self) -> torch.Tensor:
        """(n, d) float32: a centre of scale 4, plus unit noise per row (no ties, no zeros)."""
        g = self.gen(0)
        centre = 4 * torch.randn(self.d, generator=g)
        return centre + torch.randn(self.n, self.d, generator=g)

    def bad_block(self, value: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The block with f random rows set to ``value`` (None: the mix); returns it and the honest mask."""
        x = self.block()
        bad = torch.randperm(self.n, generator=self.gen(1))[: self.f]
        for k, i in enumerate(bad.tolist()):
            x[i] = MIXED[k % len(MIXED)] if value is None else value
        if value is None and self.f:
            x[bad[0], 0] = 1.0  # a row that is only partly NaN
        honest = torch.ones(self.n, dtype=torch.bool)
        honest[bad] = False
        return x, honest

    def call(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if getattr(self.rule, "takes_root", False):
            # The server's own gradient (FLTrust): the kit stands in the rows' coordinate-wise median,
            # which is the row itself for identical rows, stays bounded with f bad rows, and on a slice
            # of the columns is that slice of the whole one.
            kwargs["root"] = registry.rules["median"](x, f=0)
        try:
            return self.rule(x, f=kwargs.pop("f", self.f), **self.params, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a user's rule may raise anything; it is reported
            raise _Raised(exc, x) from exc

    def tolerance(self, honest: torch.Tensor) -> float:
        """2 n^2 eps max|x| over the finite rows of ``honest`` (see the module's docstring)."""
        finite = honest[torch.isfinite(honest).all(dim=1)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        return 2 * self.n ** 2 * EPS32 * scale


class _Raised(Exception):
    """The rule raised ``exc`` on input ``x``."""

    def __init__(self, exc: BaseException, x: torch.Tensor):
        super().__init__(f"raised {type(exc).__name__}: {exc}")
        self.exc, self.x = exc, x


class _Failed(Exception):
    def __init__(self, detail: str, example: str):
        super().__init__(detail)
        self.detail, self.example = detail, example


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and a.detach().contiguous().numpy().tobytes() == b.detach().contiguous().numpy().tobytes())


def _compare(a: torch.Tensor, b: torch.Tensor, tol: float) -> tuple[bool, bool, float]:
    """(same bits, equal within tol, largest difference); NaN equals NaN, inf equals inf."""
    if a.shape != b.shape:
        return False, False, math.inf
    if _same_bits(a, b):
        return True, True, 0.0
    a, b = a.detach().double(), b.detach().double()
    both = torch.isfinite(a) & torch.isfinite(b)
    infinite = ~both & ~a.isnan()
    pattern = torch.equal(a.isnan(), b.isnan()) and torch.equal(a[infinite], b[infinite])
    diff = float((a[both] - b[both]).abs().max()) if bool(both.any()) else 0.0
    return False, pattern and diff <= tol, diff if pattern else math.inf


def _fmt(v: torch.Tensor) -> str:
    return "[" + ", ".join(f"{float(e):.9g}" for e in v.flatten()) + "]"


def _rows(x: torch.Tensor, honest: torch.Tensor | None = None) -> str:
    tag = ["" if honest is None or honest[i] else "  (bad)" for i in range(x.shape[0])]
    return "\n".join(f"  x[{i}] = {_fmt(x[i])}{tag[i]}" for i in range(x.shape[0]))


def _held(name: str, exact: bool, worst: float, tol: float, what: str) -> Result:
    if exact:
        return Result(name, "held", f"bit for bit ({what})")
    return Result(name, "held", f"within tolerance, not bit for bit: largest difference {worst:.3g} "
                                f"<= {tol:.3g} ({what})")


# --------------------------------------------------------------------------
# The properties
# --------------------------------------------------------------------------

def _shape(case: _Case) -> Result:
    x = case.block()
    y = case.call(x)
    got = (f"{tuple(y.shape)} {str(y.dtype).removeprefix('torch.')}" if isinstance(y, torch.Tensor)
           else f"a {type(y).__name__}")
    if not isinstance(y, torch.Tensor) or y.shape != (case.d,) or y.dtype != torch.float32:
        raise _Failed(f"expected ({case.d},) float32, got {got}", f"x ({case.n} x {case.d}):\n{_rows(x)}")
    return Result("output shape and dtype", "held", got)


def _deterministic(case: _Case) -> Result:
    x = case.block()
    a, b = case.call(x), case.call(x.clone())
    if not _same_bits(a, b):
        raise _Failed("two calls on the same input gave different bits",
                      f"x ({case.n} x {case.d}):\n{_rows(x)}\nfirst call  = {_fmt(a)}\nsecond call = {_fmt(b)}")
    return Result("deterministic", "held", "same bits in two calls")


def _input_unchanged(case: _Case) -> Result:
    x = case.block()
    before = x.clone()
    case.call(x)
    if not _same_bits(x, before):
        changed = (x != before).any(dim=1).nonzero().flatten().tolist()
        raise _Failed(f"the rule wrote into its input (rows {changed})",
                      f"x before ({case.n} x {case.d}):\n{_rows(before)}\nx after:\n{_rows(x)}")
    return Result("input unchanged", "held", "x has the same bits after the call")


def _blocks(case: _Case) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The clean block, and the mixed bad block when the rule claims robustness: (what, x, honest)."""
    x = case.block()
    out = [("clean rows", x, torch.ones(case.n, dtype=torch.bool))]
    if case.f and claims_robustness(case.entry, case.n, case.params) is None:
        out.append(("f mixed bad rows", *case.bad_block(None)))
    return out


def _permutation(case: _Case) -> Result:
    name = "permutation invariance"
    exact, worst, tol, g = True, 0.0, 0.0, case.gen(2)
    for what, x, honest in _blocks(case):
        tol = case.tolerance(x[honest])
        y = case.call(x)
        for _ in range(PERMUTATIONS):
            perm = torch.randperm(case.n, generator=g)
            z = case.call(x[perm])
            same, ok, diff = _compare(y, z, tol)
            if not ok:
                raise _Failed(f"rule(x[perm]) differs from rule(x) by {diff:.3g} > {tol:.3g} ({what})",
                              f"x ({case.n} x {case.d}):\n{_rows(x, honest)}\nperm = {perm.tolist()}\n"
                              f"rule(x)       = {_fmt(y)}\nrule(x[perm]) = {_fmt(z)}")
            exact, worst = exact and same, max(worst, diff)
    return _held(name, exact, worst, tol, f"{PERMUTATIONS} permutations")


def _identical(case: _Case) -> Result:
    name = "identical rows give that row"
    problem = case.entry.check(case.n, 0, **case.params)
    if problem:
        return Result(name, "skipped", f"f=0 is refused: {problem}")
    g = case.gen(3)
    if case.vote:  # a vote reproduces a row of signs
        row = torch.where(torch.rand(case.d, generator=g) < 0.5, -1.0, 1.0)
    else:
        row = case.block()[0]
    x = row.expand(case.n, case.d).clone()
    y = case.call(x, f=0)
    tol = case.tolerance(x)
    same, ok, diff = _compare(y, row, tol)
    if not ok:
        scale = _multiple(y, row, tol)
        hint = f": {scale:.6g} times the row, a rule of another scale (cge sums)" if scale is not None else ""
        raise _Failed(f"f=0 and {case.n} copies of a row gave another vector (difference {diff:.3g} > {tol:.3g})"
                      f"{hint}",
                      f"every row of x ({case.n} x {case.d}) = {_fmt(row)}\nrule(x, f=0) = {_fmt(y)}")
    return _held(name, same, diff, tol, "f=0" + (", a row of signs (vote)" if case.vote else ""))


def _multiple(y: torch.Tensor, row: torch.Tensor, tol: float) -> float | None:
    """c when y = c * row (to tol per unit of c), else None."""
    y, row = y.detach().double(), row.double()
    if y.shape != row.shape or not bool(torch.isfinite(y).all()) or float(row @ row) == 0:
        return None
    c = float(y @ row) / float(row @ row)
    return c if float((y - c * row).abs().max()) <= tol * max(1.0, abs(c)) else None


def claims_robustness(entry: registry.Entry, n: int, params: Mapping[str, Any] | None = None) -> str | None:
    """None if the rule claims robustness at n rows (its check refuses some f with 2f >= n), else why not."""
    refuses = [f for f in range((n + 1) // 2, n + 1) if entry.check and entry.check(n, f, **dict(params or {}))]
    if refuses:
        return None
    return f"its check accepts f={(n + 1) // 2} of n={n} (n <= 2f): it claims no robustness"


def _bounded(case: _Case) -> Result:
    name = "bounded with f bad rows"
    if case.f == 0:
        return Result(name, "skipped", "f=0: no bad rows to place")
    why_not = claims_robustness(case.entry, case.n, case.params)
    if why_not:
        return Result(name, "skipped", why_not)
    for label, value in BAD_VALUES.items():
        x, honest = case.bad_block(value)
        y = case.call(x).detach().double()
        h = x[honest].double()
        where = f"f={case.f} rows of {label}"
        if case.vote:
            lead = (h >= 0).sum(dim=0) - (h < 0).sum(dim=0)
            clear = lead.abs() > case.f
            ok = bool((y.abs() == 1).all()) and torch.equal(y[clear], torch.sign(lead[clear]).double())
            bound = f"honest vote, leading by more than f={case.f} in {int(clear.sum())} of {case.d} coordinates"
            shown = f"honest vote where it leads by > f (else 0) = {_fmt(torch.sign(lead) * clear)}"
        else:
            lo, hi = h.min(dim=0).values, h.max(dim=0).values
            spread = hi - lo
            ok = bool(torch.isfinite(y).all() and ((y >= lo - spread) & (y <= hi + spread)).all())
            bound = "finite, within the honest range widened by its spread"
            shown = f"lower bound = {_fmt(lo - spread)}\nupper bound = {_fmt(hi + spread)}"
        if not ok:
            raise _Failed(f"{where}: output not {bound}",
                          f"x ({case.n} x {case.d}):\n{_rows(x, honest)}\n{shown}\nrule(x) = {_fmt(y)}")
    values = ", ".join(BAD_VALUES)
    if case.vote:
        return Result(name, "held", f"{values}: +-1, the honest vote wherever it leads by more than f")
    return Result(name, "held", f"{values}: finite, within the honest range widened by its spread")


def _slices(d: int) -> list[slice]:
    """Three column slices of unequal widths (fewer when d < 3)."""
    cuts = sorted({0, max(1, d // 4), max(1, (2 * d) // 3), d})
    return [slice(a, b) for a, b in zip(cuts, cuts[1:])]


def _coordinatewise(case: _Case) -> Result:
    name = "coordinate-wise (column slices)"
    if not case.entry.properties.get("coordinatewise"):
        return Result(name, "skipped", "declared coordinatewise=False")
    if case.d < 2:
        return Result(name, "skipped", "needs d >= 2")
    exact, worst, tol = True, 0.0, 0.0
    for what, x, honest in _blocks(case):
        tol = case.tolerance(x[honest])
        y = case.call(x)
        for part in _slices(case.d):
            z = case.call(x[:, part].contiguous())
            same, ok, diff = _compare(y[part], z, tol)
            if not ok:
                raise _Failed(f"rule(x[:, {part.start}:{part.stop}]) differs from rule(x)[{part.start}:{part.stop}] "
                              f"by {diff:.3g} > {tol:.3g} ({what})",
                              f"x ({case.n} x {case.d}):\n{_rows(x, honest)}\n"
                              f"rule(x)[{part.start}:{part.stop}] = {_fmt(y[part])}\n"
                              f"rule(x[:, {part.start}:{part.stop}]) = {_fmt(z)}")
            exact, worst = exact and same, max(worst, diff)
    shown = ", ".join(f"{p.start}:{p.stop}" for p in _slices(case.d))
    return _held(name, exact, worst, tol, f"columns {shown}")


class _Exchange:
    """k threads, one a column slice each, summing their parts: a sharded server inside one process."""

    def __init__(self, k: int):
        self.parts: list[torch.Tensor | None] = [None] * k
        self.barrier = Barrier(k, timeout=SHARD_TIMEOUT)

    def sum(self, index: int, part: torch.Tensor) -> torch.Tensor:
        self.parts[index] = part.to(torch.float64).clone()
        self.barrier.wait()
        total = self.parts[0].clone()
        for other in self.parts[1:]:
            total += other  # the same order on every slice: the same sum everywhere
        self.barrier.wait()  # nobody writes the next part before every slice has read this one
        return total


class _Slice(Sharding):
    def __init__(self, exchange: _Exchange, index: int):
        self.slices = len(exchange.parts)
        self.exchange, self.index = exchange, index

    def sum(self, part: torch.Tensor) -> torch.Tensor:
        return self.exchange.sum(self.index, part)


def _run_sharded(case: _Case, x: torch.Tensor, parts: list[slice]) -> torch.Tensor:
    exchange = _Exchange(len(parts))
    outputs: list[Any] = [None] * len(parts)

    def run(i: int) -> None:
        try:
            outputs[i] = case.call(x[:, parts[i]].contiguous(), sharding=_Slice(exchange, i))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outputs[i] = exc
            exchange.barrier.abort()  # the other slices stop waiting for this one

    threads = [Thread(target=run, args=(i,), name=f"mpisim-slice-{i}") for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [out for out in outputs if isinstance(out, BaseException)]
    # A slice stopped waiting (BrokenBarrierError) because another one raised, or because another
    # one returned without summing as often: report the cause, not the wait.
    for exc in errors:
        if not isinstance(getattr(exc, "exc", exc), BrokenBarrierError):
            raise exc
    if errors:
        raise _Failed(f"the slices did not call sharding.sum the same number of times (a slice waited "
                      f"{SHARD_TIMEOUT:g} s)", f"x ({x.shape[0]} x {x.shape[1]}):\n{_rows(x)}")
    return torch.cat(outputs)


def _sharded(case: _Case) -> Result:
    name = "sharded (whole-row sums)"
    if not case.entry.properties.get("sharding"):
        return Result(name, "skipped", "takes no sharding argument")
    parts = _slices(case.d)
    if len(parts) < 2:
        return Result(name, "skipped", "needs d >= 2")
    exact, worst, tol = True, 0.0, 0.0
    for what, x, honest in _blocks(case):
        tol = case.tolerance(x[honest])
        y = case.call(x)
        z = _run_sharded(case, x, parts)
        same, ok, diff = _compare(y, z, tol)
        if not ok:
            shown = ", ".join(f"{p.start}:{p.stop}" for p in parts)
            raise _Failed(f"{len(parts)} slices summing through sharding differ from the whole by {diff:.3g} "
                          f"> {tol:.3g} ({what})",
                          f"x ({case.n} x {case.d}), slices {shown}:\n{_rows(x, honest)}\n"
                          f"whole   = {_fmt(y)}\nsharded = {_fmt(z)}")
        exact, worst = exact and same, max(worst, diff)
    return _held(name, exact, worst, tol, f"{len(parts)} slices in threads")


PROPERTIES: dict[str, Callable[[_Case], Result]] = {
    "output shape and dtype": _shape,
    "deterministic": _deterministic,
    "input unchanged": _input_unchanged,
    "permutation invariance": _permutation,
    "identical rows give that row": _identical,
    "bounded with f bad rows": _bounded,
    "coordinate-wise (column slices)": _coordinatewise,
    "sharded (whole-row sums)": _sharded,
}


def _run(prop: str, case: _Case) -> Result:
    try:
        return PROPERTIES[prop](case)
    except _Failed as failure:
        return Result(prop, "failed", failure.detail, failure.example)
    except _Raised as raised:
        return Result(prop, "failed", str(raised), f"x ({raised.x.shape[0]} x {raised.x.shape[1]}):\n"
                                                   f"{_rows(raised.x)}")
    except Exception as exc:  # noqa: BLE001 - an output the check cannot use: "output shape and dtype" says why
        return Result(prop, "failed", f"the output cannot be checked: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------
# check_rule
# --------------------------------------------------------------------------

def default_f(entry: registry.Entry, n: int, params: Mapping[str, Any] | None = None) -> int:
    """The largest f <= n/4 that the rule accepts with n rows (bulyan's n >= 4f + 3 fits n = 11, f = 2)."""
    accepted = [f for f in range(n // 4 + 1) if not (entry.check and entry.check(n, f, **dict(params or {})))]
    if not accepted:
        raise ValueError(entry.check(n, 0, **dict(params or {})))
    return max(accepted)


def check_rule(name: str, *, n: int = 11, d: int = 8, f: int | None = None,
               params: Mapping[str, Any] | None = None, seed: int = 0) -> Report:
    """Run every property on the registered rule ``name`` with n rows of d columns, f of them bad.

    f=None: the largest f <= n/4 the rule accepts. Raises ``KeyError`` for an unknown rule and
    ``ValueError`` when the rule's check refuses (n, f, params). A failure is reported again on
    d = 3 columns when it shows there too, so that its example stays small.
    """
    entry = registry.rules.entry(name)
    params = dict(params or {})
    if n < 1 or d < 1:
        raise ValueError(f"n and d must be >= 1, got n={n}, d={d}")
    f = default_f(entry, n, params) if f is None else f
    problem = entry.check(n, f, **params) if entry.check else None
    if problem:
        raise ValueError(problem)
    case = _Case(name, registry.rules[name], n, d, f, params, seed, entry)
    try:
        first = case.call(case.block())
        case = replace(case, vote=bool(isinstance(first, torch.Tensor) and first.numel()
                                       and (first.abs() == 1).all()))
    except _Raised:
        pass  # every property reports it
    results = []
    for prop in PROPERTIES:
        result = _run(prop, case)
        if result.status == "failed" and d > 3:
            small = _run(prop, replace(case, d=3))
            if small.status == "failed" and small.example:
                result = replace(result, example=f"(the same failure on d=3 columns)\n{small.example}")
        results.append(result)
    return Report(name, n, d, f, params, tuple(results), dict(entry.properties), entry.origin)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

PROG = "python -m mpisim.testing"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Check a registered rule (a built-in or a plugin's) for the properties every "
                               "built-in rule passes. Exit 0 when none failed, 1 when one did, 2 on bad input.")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    rule = kinds.add_parser("rule", prog=f"{PROG} rule", help="an aggregation rule (aggregator.name)",
                            epilog="--params.KEY VALUE sets a parameter of the rule, read as TOML "
                                   "(like --aggregator.params.KEY VALUE); repeat for several.")
    rule.add_argument("name", metavar="NAME", help="the rule's registered name")
    rule.add_argument("--run.plugins", dest="plugins", default="", metavar="FILE[,FILE]",
                      help="plugin files or modules to import first (comma-separated)")
    rule.add_argument("--n", type=int, default=11, help="rows (default 11)")
    rule.add_argument("--d", type=int, default=8, help="columns (default 8)")
    rule.add_argument("--f", type=int, default=None, help="bad rows (default: the largest f <= n/4 accepted)")
    rule.add_argument("--seed", type=int, default=0, help="seed of the random blocks (default 0)")
    return parser


def _params(parser: argparse.ArgumentParser, rest: list[str]) -> dict[str, Any]:
    params, i = {}, 0
    while i < len(rest):
        key, has_value, value = rest[i].partition("=")
        if not key.startswith("--params.") or key == "--params.":
            parser.error(f"unrecognized argument {rest[i]!r} (parameters are --params.KEY VALUE)")
        if not has_value:
            if i + 1 >= len(rest):
                parser.error(f"{key} needs a value")
            value, i = rest[i + 1], i + 1
        params[key.removeprefix("--params.")] = _parse_literal(value)
        i += 1
    return params


def main(argv: list[str] | None = None) -> int:
    """``python -m mpisim.testing``: 0 all held, 1 a property failed, 2 bad input (one message on stderr)."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    params = _params(parser, rest)
    try:
        plugins.load([s.strip() for s in args.plugins.split(",") if s.strip()])
        report = check_rule(args.name, n=args.n, d=args.d, f=args.f, params=params, seed=args.seed)
    except plugins.PluginError as exc:
        print(f"mpisim.testing: run.plugins: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"mpisim.testing: {exc.args[0]}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"mpisim.testing: cannot check {args.name!r}: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
