"""Robust aggregation rules: an (n, d) block of agent vectors -> one (d,) vector.

Every rule is a pure function ``rule(x, *, f, **params)``: ``x`` holds one
row per agent (float32, shape (n, d)), ``f`` is the number of rows that may be
Byzantine, and the result has shape (d,) and the dtype of ``x``. No rule
modifies ``x``. Rules are looked up by their config name in :data:`REGISTRY`;
each carries ``rule.check(n, f, **params)``, which returns a message naming n
and f (or the offending parameter) when the setting is impossible and None
otherwise. A rule called on an impossible setting raises ``ValueError`` with
that message: f is never lowered quietly.

Pre-aggregation steps (:data:`PRE_REGISTRY`: nearest-neighbour mixing,
bucketing) map (n, d) rows to (n2, d) rows and may be chained in front of any
rule with :func:`build`; :func:`check_pipeline` validates such a chain.

Conventions shared by all rules
-------------------------------
* Output scale follows each rule's paper: ``cge`` SUMS the n - f rows it keeps
  (CGE paper eq 7), every other rule returns an average-scale vector. The
  server's step size has to be chosen accordingly.
* Non-finite input. For every robust rule (all but ``mean``) a row holding NaN
  or +/-inf counts as infinitely far away / infinitely large: norm-based rules
  see a norm of +inf, distance-based rules see distances of +inf, and
  coordinate-wise rules treat a NaN entry as +inf, so it is trimmed as an
  extreme (-inf is trimmed from the bottom). With at most f such rows the
  output is finite. With more than f it can be non-finite, because the
  rule's definition then keeps one of them (geomed, mom and cc leave such
  rows out entirely and stay finite while any finite row is left).
* Huge finite rows (1e30 and beyond) do not overflow the selection: norms are
  recomputed in float64 where float32 overflows, and pairwise distances come
  from a float64 Gram matrix.
* Ties (equal norms, scores or distances) are broken by the lower row index,
  so the result is invariant to permuting the rows except when such a tie
  decides which of two different rows is kept. In the per-coordinate stage
  of meamed and bulyan, values equally far from the median go to the lower
  value, which depends on the values only.

Speed. Coordinate-wise rules need order statistics of each column. torch's
``kthvalue``/``topk``/``sort``/``median`` along dim 0 cost 50-90 ms on a
10 x 431,080 float32 block on one core (about 50x a plain sum), so the
columns are ordered here in one of two ways, chosen by n: for n <= 56 a
Batcher sorting network pruned to the outputs the rule needs, run as
elementwise min/max over row segments of a column chunk (no per-coordinate
work in Python; ~5 ms for cwtm or median on 10 x 431,080); for larger n
numpy's SIMD row sort on transposed column chunks (~0.2 s on 100 x 10^6).
Both read the torch storage through numpy views, without copying the input.
Row-based rules use one float64 Gram matrix (Krum, Bulyan, geomed, mom,
nnm) or float32 norms with a float64 fallback (cge, norm_threshold, cc).

Sharded columns. Every rule also takes ``sharding`` (:class:`Sharding`):
when x is one rank's slice of the columns (the sharded server), the
whole-row quantities (squared norms, the Gram matrix) are summed over the
slices through it, and the rule returns its slice of the unsharded output;
coordinate-wise rules never need it.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .. import registry

__all__ = [
    "REGISTRY",
    "PRE_REGISTRY",
    "register",
    "register_pre",
    "check",
    "check_pipeline",
    "param_defaults",
    "build",
    "set_threads",
    "Sharding",
    "WHOLE",
    # rules
    "mean",
    "cge",
    "cwtm",
    "trimmed_mean",
    "median",
    "meamed",
    "geomed",
    "mom",
    "multikrum",
    "krum",
    "bulyan",
    "norm_threshold",
    "threshold_on_norms",
    "majority_vote",
    "cc",
    "mda",
    "smea",
    "caf",
    "monna",
    "dnc",
    # pre-aggregation
    "nnm",
    "bucketing",
]

Tensor = torch.Tensor

#: config name -> rule ``fn(x, *, f, **params) -> Tensor``; each has ``fn.check``
#: (:data:`mpisim.registry.rules`: the one registry, built-ins and plugins alike).
REGISTRY = registry.rules
#: config name -> step ``pre(x, *, f, rng, **params) -> (x2, f2)`` (:data:`mpisim.registry.pre_aggregators`).
PRE_REGISTRY = registry.pre_aggregators


# --------------------------------------------------------------------------
# Where the columns live
# --------------------------------------------------------------------------

class Sharding:
    """Where the columns of a rule's block live: all of them here (:data:`WHOLE`, the default),
    or one contiguous slice on each of several ranks (the sharded server, ``server.ranks``).

    A rule that needs a quantity of whole rows (squared norms, a Gram matrix, a count of
    non-finite rows) computes its slice's part and passes it to :meth:`sum`, which returns the
    sum of every slice's part, the same on every rank; with one slice that is the part itself.
    Everything else a rule does is per column, or a combination of rows with weights that
    every slice derives alike from those sums, so a sharded rule returns its slice of the
    unsharded output: bit for bit for the coordinate-wise rules, to float rounding for the
    others (their sums are added in another order).

    A rule that draws columns at random (``dnc``) must also know where its slice lies:
    ``index``, this slice's position in column order (:func:`_slice_columns`).
    """

    slices = 1
    index = 0

    def sum(self, part: Tensor) -> Tensor:
        """The float64 ``part`` summed over the slices (here: one slice, itself)."""
        return part


WHOLE = Sharding()


def _takes_sharding(fn: Callable) -> bool:
    return "sharding" in inspect.signature(fn).parameters


def _takes_rng(fn: Callable) -> bool:
    return "rng" in inspect.signature(fn).parameters


# --------------------------------------------------------------------------
# Parameter validation
# --------------------------------------------------------------------------
# A validator takes (rule name, parameter name, value) and returns a message
# or None. They only look at the value; bounds that depend on n and f live in
# each rule's own check.

def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _v_choice(*options: str):
    def validate(rule, key, v):
        if v not in options:
            allowed = ", ".join(repr(o) for o in options)
            return f"{rule}: {key} must be one of {allowed}, got {v!r}"
        return None
    return validate


def _v_int(lo: int, *, allow_none: bool = False):
    def validate(rule, key, v):
        if v is None and allow_none:
            return None
        if not _is_int(v) or v < lo:
            extra = " or None" if allow_none else ""
            return f"{rule}: {key} must be an integer >= {lo}{extra}, got {v!r}"
        return None
    return validate


def _v_positive(rule, key, v):
    if not _is_real(v) or not (v > 0) or not math.isfinite(v):
        return f"{rule}: {key} must be a finite number > 0, got {v!r}"
    return None


def _v_fraction_below_half(rule, key, v):
    if v is None:
        return None
    if not _is_real(v) or not (0 <= v < 0.5):
        return f"{rule}: {key} must be a fraction in [0, 1/2) or None, got {v!r}"
    return None


def _v_center(rule, key, v):
    if v is None or v in ("median", "zero") or isinstance(v, torch.Tensor):
        return None
    return f"{rule}: {key} must be None, 'median', 'zero' or a (d,) tensor, got {v!r}"


def _param_problems(rule: str, defaults: Mapping[str, Any],
                    validators: Mapping[str, Callable], params: Mapping[str, Any]) -> str | None:
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        accepted = ", ".join(defaults) if defaults else "none"
        return (f"{rule}: unknown parameter {unknown[0]!r}; "
                f"accepted parameters: {accepted}")
    for key, value in params.items():
        validate = validators.get(key)
        msg = validate(rule, key, value) if validate else None
        if msg:
            return msg
    return None


def _nf_problems(rule: str, n: Any, f: Any) -> str | None:
    if not _is_int(n) or n < 1:
        return f"{rule}: n must be an integer >= 1, got n={n!r}"
    if not _is_int(f) or f < 0:
        return f"{rule}: f must be an integer >= 0, got f={f!r}"
    return None


def _as_matrix(rule: str, x: Any) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{rule}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"{rule}: x must have shape (n, d) with n >= 1, got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{rule}: x must be float32 (or float64), got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{rule}: x must live on the CPU, got {x.device}")
    return x.detach()


# --------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------

def register(name: str, *, check: Callable[..., str | None], coordinatewise: bool,
             validators: Mapping[str, Callable] | None = None, reference: str = "", description: str = ""):
    """Register an aggregation rule under its config name (:data:`mpisim.registry.rules`).

    ``check(n, f, **params)`` receives every keyword parameter (defaults filled
    in) after n, f and the parameter values have passed the generic checks,
    and returns a message or None. The decorated function gains
    ``fn.check(n, f, **params)`` and ``fn.defaults``, validates before it runs
    and raises ``ValueError`` on an impossible setting.

    A rule that draws random numbers takes ``rng`` (a ``torch.Generator``, keyword-only,
    default None): :func:`build` passes it the server's generator. The others ignore ``rng``.
    A rule that takes ``root`` gets the server's own gradient on its root set (FLTrust;
    ``server.root_samples``), which the server mode computes every round. Neither is a
    parameter a configuration sets.

    ``coordinatewise`` promises that output column j depends on input column j
    alone: such a rule runs on a sharded server rank's slice as it is. A rule
    that is not coordinate-wise must take ``sharding`` (:class:`Sharding`) to
    run on a sharded server; one that does neither is refused there
    (:func:`sharding_problem`).
    """
    validators = dict(validators or {})

    def deco(impl: Callable[..., Tensor]) -> Callable[..., Tensor]:
        defaults = registry.keyword_defaults(impl, skip=("f", "sharding", "rng", "root"))
        whole_rows = _takes_sharding(impl)  # coordinate-wise rules never need the other slices
        draws = _takes_rng(impl)
        rooted = "root" in inspect.signature(impl).parameters

        def check_fn(n: int, f: int, **params) -> str | None:
            return (_param_problems(name, defaults, validators, params)
                    or _nf_problems(name, n, f)
                    or check(n, f, **{**defaults, **params}))

        @functools.wraps(impl)
        def rule(x: Tensor, *, f: int, sharding: Sharding = WHOLE,
                 rng: torch.Generator | None = None, root: Tensor | None = None, **params) -> Tensor:
            x = _as_matrix(name, x)
            msg = check_fn(x.shape[0], f, **params)
            if msg:
                raise ValueError(msg)
            where = {"sharding": sharding} if whole_rows else {}
            if draws:
                where["rng"] = rng
            if rooted:
                where["root"] = root
            return impl(x, f=f, **where, **{**defaults, **params})

        rule.check = check_fn
        rule.takes_rng = draws  # build passes the server's generator to such a rule
        rule.takes_root = rooted  # the server mode passes its own gradient (FLTrust)
        rule.defaults = dict(defaults)
        rule.validators = validators
        rule.config_name = name
        REGISTRY.add(registry.Entry(
            kind="rule", name=name, obj=rule, params=dict(defaults), check=check_fn,
            description=description or registry.first_line(impl), reference=reference,
            properties={"coordinatewise": coordinatewise, "sharding": whole_rows},
            origin=registry.current_origin(impl)))
        return rule

    return deco


def register_pre(name: str, *, check: Callable[..., str | None],
                 out: Callable[..., tuple[int, int]], coordinatewise: bool,
                 validators: Mapping[str, Callable] | None = None, reference: str = "", description: str = ""):
    """Register a pre-aggregation step (:data:`mpisim.registry.pre_aggregators`); like
    :func:`register`, plus ``out(n, f, **params) -> (n2, f2)``: the number of rows after the
    step and the bound on how many of them may be bad. ``coordinatewise``: as for rules
    (bucketing is: every slice draws the same shuffle).

    A step whose implementation takes the keyword ``overwrite`` may write its result into x
    when it is True (and return x); :func:`build` passes True only for a block the pipeline
    owns. The registered step's ``overwrite`` defaults to False: x is left as it is."""
    validators = dict(validators or {})

    def deco(impl):
        defaults = registry.keyword_defaults(impl, skip=("f", "rng", "sharding", "overwrite"))
        whole_rows = _takes_sharding(impl)
        in_place = "overwrite" in inspect.signature(impl).parameters

        def check_fn(n: int, f: int, **params) -> str | None:
            return (_param_problems(name, defaults, validators, params)
                    or _nf_problems(name, n, f)
                    or check(n, f, **{**defaults, **params}))

        @functools.wraps(impl)
        def step(x: Tensor, *, f: int, rng: torch.Generator | None = None,
                 sharding: Sharding = WHOLE, overwrite: bool = False, **params) -> tuple[Tensor, int]:
            x = _as_matrix(name, x)
            msg = check_fn(x.shape[0], f, **params)
            if msg:
                raise ValueError(msg)
            where = {"sharding": sharding} if whole_rows else {}
            if in_place:
                where["overwrite"] = overwrite
            return impl(x, f=f, rng=rng, **where, **{**defaults, **params})

        step.check = check_fn
        step.out = lambda n, f, **params: out(n, f, **{**defaults, **params})
        step.defaults = dict(defaults)
        step.validators = validators
        step.config_name = name
        PRE_REGISTRY.add(registry.Entry(
            kind="pre_aggregator", name=name, obj=step, params=dict(defaults), check=check_fn,
            description=description or registry.first_line(impl), reference=reference,
            properties={"coordinatewise": coordinatewise, "sharding": whole_rows, "out": step.out},
            origin=registry.current_origin(impl)))
        return step

    return deco


def check(name: str, n: int, f: int, params: Mapping[str, Any] | None = None) -> str | None:
    """Message explaining why rule ``name`` cannot run with n rows, f faulty
    and ``params``; None when it can."""
    rule = REGISTRY.get(name)
    if rule is None:
        return f"unknown aggregator {name!r}; known aggregators: {', '.join(sorted(REGISTRY))}"
    return rule.check(n, f, **dict(params or {}))


def sharding_problem(name: str, pre: Sequence[str] = ()) -> str | None:
    """Why rule ``name`` after the steps ``pre`` cannot run on a sharded server (None if it can):
    each must be coordinate-wise or take the whole-row sums (``sharding``). Without either, it
    would be computed on each slice of the columns alone, a different rule, without a word."""
    for kind, registered, key in (("pre-aggregation step", PRE_REGISTRY, s) for s in pre):
        if key in registered:
            props = registered.entry(key).properties
            if not (props["coordinatewise"] or props["sharding"]):
                return (f"{kind} {key!r} is neither coordinate-wise nor takes the whole-row sums "
                        f"(a 'sharding' argument), so it cannot run on a server split into slices")
    if name in REGISTRY:
        props = REGISTRY.entry(name).properties
        if not (props["coordinatewise"] or props["sharding"]):
            return (f"rule {name!r} is neither coordinate-wise nor takes the whole-row sums (a 'sharding' "
                    f"argument), so it cannot run on a server split into slices: use --server.ranks 1, or "
                    f"register it with coordinatewise=True if its output column j depends on column j alone")
    return None


def param_defaults(name: str) -> dict[str, Any]:
    """Keyword parameters of rule (or pre-aggregation step) ``name`` with
    their defaults, e.g. ``{'reduce': 'sum'}`` for ``'cge'``."""
    fn = REGISTRY.get(name) or PRE_REGISTRY.get(name)
    if fn is None:
        known = ", ".join(sorted(REGISTRY) + sorted(PRE_REGISTRY))
        raise KeyError(f"unknown aggregator or pre-aggregation {name!r}; known: {known}")
    return dict(fn.defaults)


def _needs_honest_majority(rule: str):
    def check_fn(n, f, **_):
        if n <= 2 * f:
            return f"{rule}: needs n > 2f, got n={n}, f={f}"
        return None
    return check_fn


def _count_of_fraction(beta: float, n: int, rounding: str) -> int:
    """floor or ceil of beta * n, with a 1e-9 slack so that beta = f/n gives
    exactly f despite binary rounding (0.3 * 10 == 3.0000000000000004)."""
    v = beta * n
    return math.floor(v + 1e-9) if rounding == "floor" else math.ceil(v - 1e-9)


# --------------------------------------------------------------------------
# Row helpers: norms, weighted sums, float64 Gram matrix
# --------------------------------------------------------------------------

def _row_norms(x: Tensor, sharding: Sharding = WHOLE) -> Tensor:
    """Euclidean norm of every (whole) row as float64; +inf for rows with NaN/inf.

    A float32 norm squares in float32 and overflows for entries beyond about
    1e19 (and underflows below 1e-19), so rows whose float32 norm is not a
    normal-range number are recomputed in float64; the common case costs one
    float32 pass. Sharded, the slices' squared norms are summed in float64.
    """
    fast = torch.linalg.vector_norm(x, dim=1).to(torch.float64)
    suspect = ~torch.isfinite(fast) | (fast < 1e-18)
    if bool(suspect.any()):
        idx = suspect.nonzero().flatten()
        fast[idx] = torch.linalg.vector_norm(x[idx], dim=1, dtype=torch.float64)
    fast.masked_fill_(torch.isnan(fast), math.inf)
    return fast if sharding.slices == 1 else sharding.sum(fast.square_()).sqrt_()


def _combine(x: Tensor, w: Tensor, ok: Tensor) -> Tensor:
    """sum_i w[i] * x[i] in x's dtype; ``ok[i]`` says whether row i is finite.

    When some row is not finite, rows with zero weight are skipped rather
    than multiplied by 0, because 0 * NaN is NaN: a discarded non-finite row
    must not reach the result. Otherwise this is one matrix-vector product.
    """
    w = w.to(x.dtype)
    if bool(ok.all()):
        return w @ x
    keep = w != 0
    idx = keep.nonzero().flatten()
    if idx.numel() == 0:
        return torch.zeros(x.shape[1], dtype=x.dtype)
    return w[idx] @ x.index_select(0, idx)


def _gram64(x: Tensor, rows: Tensor, norms: Tensor,
            sharding: Sharding = WHOLE) -> tuple[Tensor, Tensor, float]:
    """Float64 Gram matrix of the rows ``rows`` of x, centred at one of them.

    The centre c is the selected row with the median norm. Centring keeps the
    Gram entries at the scale of the spread of the rows rather than of their
    common offset, so that distances recovered as G_ii + G_jj - 2 G_ij keep
    their precision; because at least half the rows have a norm no larger
    than c's, a single huge row cannot be chosen as the centre.

    Returns (G, h, cc) with G[i, j] = <x_i - c, x_j - c>, h[i] = <c, x_i - c>
    and cc = <c, c>, i.e. enough to express any affine combination of rows.
    The float64 copy is made one column chunk at a time (about 16 MB), so the
    extra memory does not grow with d. Sharded, the centre is the same row on every slice
    (``norms`` are whole-row norms), and G, h and cc are the sums of the slices' parts.
    """
    xs = x.index_select(0, rows) if rows.numel() < x.shape[0] else x
    m, d = xs.shape
    order = torch.sort(norms[rows], stable=True).indices
    centre = xs[order[(m - 1) // 2]]
    G = torch.zeros(m, m, dtype=torch.float64)
    h = torch.zeros(m, dtype=torch.float64)
    cc = 0.0
    width = max(1, min(d, (1 << 21) // m))
    buf = torch.empty(m, width, dtype=torch.float64)
    cbuf = torch.empty(width, dtype=torch.float64)
    for j in range(0, d, width):
        k = min(width, d - j)
        b, cb = buf[:, :k], cbuf[:k]
        b.copy_(xs[:, j:j + k])
        cb.copy_(centre[j:j + k])
        b.sub_(cb)
        G.addmm_(b, b.T)
        h.add_(b @ cb)
        cc += float(cb @ cb)
    if sharding.slices > 1:
        total = sharding.sum(torch.cat([G.flatten(), h, torch.tensor([cc], dtype=torch.float64)]))
        G, h, cc = total[:m * m].reshape(m, m), total[m * m:-1], float(total[-1])
    return G, h, cc


def _pairwise_sq_dists(x: Tensor, norms: Tensor, sharding: Sharding = WHOLE) -> Tensor:
    """(n, n) float64 squared distances; +inf wherever a row is non-finite
    (also on the diagonal of such rows); the other diagonal entries are 0."""
    n = x.shape[0]
    ok = torch.isfinite(norms)
    D = torch.full((n, n), math.inf, dtype=torch.float64)
    rows = ok.nonzero().flatten()
    if rows.numel():
        G, _, _ = _gram64(x, rows, norms, sharding)
        diag = G.diagonal()
        sub = (diag[:, None] + diag[None, :] - 2.0 * G).clamp_min_(0.0)
        # Exactly symmetric: a product's rounding may differ between G_ij and G_ji, and then
        # an exact tie (Bulyan's last picks score both rows by their one distance) would go
        # to whichever side rounded lower instead of to the lower index.
        sub = sub.add_(sub.T.clone()).mul_(0.5)
        sub.fill_diagonal_(0.0)
        D[rows[:, None], rows[None, :]] = sub
    return D


# --------------------------------------------------------------------------
# Column order statistics: pruned sorting networks and chunked numpy sorts
# --------------------------------------------------------------------------

_NETWORK_MAX_N = 56        # above this the numpy row sort is faster (measured)
_SORT_CHUNK = 4096         # columns per chunk for the numpy sort path
_THREADS = 1               # threads over the column chunks (set_threads)
_POOL: ThreadPoolExecutor | None = None


def set_threads(count: int) -> None:
    """Order the columns of the coordinate-wise rules on ``count`` threads (default 1).

    The column chunks are independent, so every count gives the same result
    bit for bit; numpy releases the GIL inside its min/max and sort loops.
    The server mode sets it (``server.threads``): while the server filters,
    the agents wait, and their cores would be idle. torch's own thread count
    is not changed.
    """
    global _THREADS, _POOL
    if count < 1:
        raise ValueError(f"threads must be >= 1, got {count}")
    if count != _THREADS and _POOL is not None:
        _POOL.shutdown()
        _POOL = None
    _THREADS = count
    if count > 1:
        _POOL = ThreadPoolExecutor(max_workers=count, thread_name_prefix="mpisim-rule")


_THREADED_MIN = 1 << 21   # entries below which one thread is faster (handing out chunks costs ~0.2 ms)


def _over_chunks(starts: Sequence[int], work: Callable[[Sequence[int]], None], entries: int) -> None:
    """``work(part)`` for the chunks' starts, dealt round-robin to the threads (one part each)."""
    if _THREADS == 1 or len(starts) < 2 or entries < _THREADED_MIN:
        work(starts)
        return
    parts = [starts[i::_THREADS] for i in range(min(_THREADS, len(starts)))]
    for future in [_POOL.submit(work, part) for part in parts]:
        future.result()


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators (lo, hi) of Batcher's odd-even merge sort for n wires.

    The network is built for the next power of two and every comparator that
    touches a wire >= n is dropped: those wires can be thought of as holding
    +inf, which such comparators never move.
    """
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@functools.lru_cache(maxsize=512)
def _network_program(n: int, exact: tuple[int, ...], span: tuple[int, int] | None):
    """Compile the sorting network for n wires, pruned to what is asked for.

    ``exact``: sorted positions whose values are needed individually; ``span``
    (a, b): positions whose values are only needed through their sum.
    Working backwards, a comparator is dropped when neither output is needed,
    or when both outputs only feed the span sum (swapping them cannot change
    the sum); when only one output is needed only that one is computed.

    Returns (ops, slots, n_buffers). Each op is (use_max, src_a, src_b, dst)
    over slots, where slots 0..n-1 are the input rows (read only) and slots
    >= n are scratch rows; ``slots[k]`` is where sorted position k ends up.
    """
    EXACT, SUM = 1, 2
    state = [0] * n
    if span is not None:
        for k in range(*span):
            state[k] = SUM
    for k in exact:
        state[k] = EXACT
    live = []
    for lo, hi in reversed(_batcher_pairs(n)):
        a, b = state[lo], state[hi]
        if (a == 0 and b == 0) or (a == SUM and b == SUM):
            continue
        live.append((lo, hi, a != 0, b != 0))
        state[lo] = state[hi] = EXACT
    live.reverse()

    slot = list(range(n))          # wire -> slot holding its current value
    free: list[int] = []
    n_buf = 0

    def fresh() -> int:
        nonlocal n_buf
        if free:
            return free.pop()
        n_buf += 1
        return n + n_buf - 1

    ops = []
    for lo, hi, need_min, need_max in live:
        sa, sb = slot[lo], slot[hi]
        dmin = dmax = None
        if need_max:
            # The max may overwrite its hi input in place, provided the min
            # is computed first (into a fresh row).
            dmax = sb if sb >= n else (sa if sa >= n and not need_min else None)
        if need_min:
            if need_max:
                dmin = fresh()
            else:
                dmin = sa if sa >= n else (sb if sb >= n else fresh())
        if need_max and dmax is None:
            dmax = fresh()
        if need_min:
            ops.append((False, sa, sb, dmin))
        if need_max:
            ops.append((True, sa, sb, dmax))
        for s in (sa, sb):
            if s >= n and s != dmin and s != dmax:
                free.append(s)
        slot[lo] = dmin if need_min else -1
        slot[hi] = dmax if need_max else -1
    return ops, slot, n_buf


def _network_chunk_width(n: int, d: int) -> int:
    # About 1.5M values (6 MB of float32) of input per chunk, plus as much
    # scratch: small enough to stay in cache between the network's passes,
    # large enough that the per-call overhead of the ufuncs is negligible.
    # (Measured on 10 x 10^6: 10 ms per call, against 21 ms with whole rows.)
    width = max(4096, (3 << 19) // n)
    if _THREADS > 1 and n * d >= _THREADED_MIN:  # 4 chunks a thread or more: they finish together
        width = min(width, max(1 << 15, -(-d // (4 * _THREADS))))
    return max(1, min(d, width))


def _sorted_reduce(xn: np.ndarray, *, exact: Sequence[int] = (),
                   span: tuple[int, int] | None = None,
                   reduce: Callable[[Callable[[int], np.ndarray], Callable[[], np.ndarray]], np.ndarray]
                   ) -> np.ndarray:
    """Apply ``reduce(get, span_sum)`` to the columns of xn once they are sorted.

    ``get(k)`` returns the k-th smallest value (0-based) of every column of
    the current chunk, ``span_sum()`` the sum of the values at sorted
    positions span[0]..span[1]-1. Only positions listed in ``exact`` (or in
    the span) may be requested. Returns the (d,) array of results.
    NaN must already be replaced (see :func:`_columnwise`).
    """
    n, d = xn.shape
    out = np.empty(d, dtype=xn.dtype)
    exact = tuple(sorted(set(exact)))
    with np.errstate(invalid="ignore", over="ignore"):
        if n <= _NETWORK_MAX_N:
            ops, slots, n_buf = _network_program(n, exact, span)
            width = _network_chunk_width(n, d)

            def network(starts):
                scratch = np.empty((max(n_buf, 1) + 1, width), dtype=xn.dtype)
                for j in starts:
                    k = min(width, d - j)
                    rows = list(xn[:, j:j + k]) + list(scratch[:n_buf, :k])
                    acc = scratch[n_buf, :k]
                    for use_max, a, b, dst in ops:
                        (np.maximum if use_max else np.minimum)(rows[a], rows[b], out=rows[dst])

                    def span_sum(rows=rows, acc=acc):
                        lo, hi = span
                        np.copyto(acc, rows[slots[lo]])
                        for p in range(lo + 1, hi):
                            np.add(acc, rows[slots[p]], out=acc)
                        return acc

                    out[j:j + k] = reduce(lambda p, rows=rows: rows[slots[p]], span_sum)

            _over_chunks(range(0, d, width), network, n * d)
        else:
            ones = np.ones(span[1] - span[0] if span else 0, dtype=xn.dtype)

            def row_sort(starts):
                buf = np.empty((_SORT_CHUNK, n), dtype=xn.dtype)
                for j in starts:
                    k = min(_SORT_CHUNK, d - j)
                    b = buf[:k]
                    # Transpose 16 input rows at a time: fewer concurrent memory
                    # streams than all n at once (measured ~15% faster at n=100).
                    for r in range(0, n, 16):
                        np.copyto(b[:, r:r + 16], xn[r:r + 16, j:j + k].T)
                    b.sort(axis=1)
                    out[j:j + k] = reduce(lambda p, b=b: b[:, p],
                                          lambda b=b: b[:, span[0]:span[1]] @ ones)

            _over_chunks(range(0, d, _SORT_CHUNK), row_sort, n * d)
    return out


def _columnwise(x: Tensor, *, exact: Sequence[int] = (), span: tuple[int, int] | None = None,
                reduce) -> Tensor:
    """Run :func:`_sorted_reduce` on x, treating NaN entries as +inf.

    Sorting networks built from min/max would spread a NaN to both outputs of
    every comparator it meets, so inputs with NaN are detected from a
    non-finite result and recomputed on a copy with NaN replaced by +inf
    (clean inputs pay nothing).
    """
    xn = x.contiguous().numpy()
    out = _sorted_reduce(xn, exact=exact, span=span, reduce=reduce)
    if not np.isfinite(out).all() and np.isnan(xn).any():
        clean = np.where(np.isnan(xn), np.inf, xn).astype(xn.dtype, copy=False)
        out = _sorted_reduce(clean, exact=exact, span=span, reduce=reduce)
    return torch.from_numpy(out)


def _midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # (a + b) / 2 in float64, then rounded once: no overflow for float32 near
    # its maximum, and correctly rounded.
    return ((a.astype(np.float64) + b) * 0.5).astype(a.dtype)


def _median_positions(n: int) -> tuple[int, ...]:
    return ((n - 1) // 2,) if n % 2 else (n // 2 - 1, n // 2)


def _median_of(get, n: int) -> np.ndarray:
    if n % 2:
        return get((n - 1) // 2)
    return _midpoint(get(n // 2 - 1), get(n // 2))


def _trimmed_mean_columns(x: Tensor, k: int) -> Tensor:
    """Per column: drop the k smallest and k largest values, average the rest."""
    n = x.shape[0]
    if k == 0:
        return _mean_rows(x)
    if n - 2 * k == 1:
        return _columnwise(x, exact=(k,), reduce=lambda get, _: get(k))
    keep = n - 2 * k
    return _columnwise(x, span=(k, n - k), reduce=lambda _, total: total() / keep)


def _mean_around_median_columns(x: Tensor, drop: int) -> Tensor:
    """Per column: the mean of the n - drop values closest to the median.

    The n - drop values closest to the median are a run of consecutive
    values in sorted order, so only the drop + 1 runs [j, j + n - drop),
    j = 0..drop, are candidates. A run qualifies when its farthest member is
    no farther from the median than the nearest value left out on either
    side; the first qualifying run (lowest j) is taken, i.e. between values
    equally far below and above the median the lower one is kept. That
    keeps the result a function of the values alone, not of row order.
    """
    n = x.shape[0]
    keep = n - drop
    if drop == 0:
        return _mean_rows(x)
    lows = tuple(range(drop + 1))                    # lower ends of the runs
    highs = tuple(range(keep - 1, n))                # upper ends of the runs

    def best_run(get):
        med = _median_of(get, n)
        lo = np.stack([get(p) for p in lows])         # lo[j] = a_j, (drop + 1, chunk)
        hi = np.stack([get(p) for p in highs])        # hi[j] = a_{j + keep - 1}
        inside = np.maximum(med - lo, hi - med)       # farthest member of run j
        outside = np.full_like(lo, np.inf)            # nearest value left out
        outside[1:] = med - lo[:-1]                   # a_{j-1}, below the run
        np.minimum(outside[:-1], hi[1:] - med, out=outside[:-1])   # a_{j+keep}, above
        j = np.argmax(inside <= outside, axis=0)      # first qualifying run
        return lo, hi, j[None, :]

    if keep > drop:
        # Every run contains [drop, keep): sum that once, then add the
        # values of run j outside it, lo[j:drop] and hi[1:j+1]. (No running
        # differences of prefix sums: a 1e30 value would cancel the rest.)
        def reduce(get, common_sum):
            lo, hi, j = best_run(get)
            below = np.zeros_like(lo)             # below[j] = lo[j] + ... + lo[drop-1]
            above = np.zeros_like(hi)             # above[j] = hi[1] + ... + hi[j]
            for i in range(drop - 1, -1, -1):     # (row-wise: numpy's cumsum along
                np.add(below[i + 1], lo[i], out=below[i])   # axis 0 is ~5x slower)
            for i in range(1, drop + 1):
                np.add(above[i - 1], hi[i], out=above[i])
            extra = np.take_along_axis(below, j, axis=0) + np.take_along_axis(above, j, axis=0)
            return (common_sum() + extra[0]) / keep

        exact = lows + highs + _median_positions(n)
        return _columnwise(x, exact=exact, span=(drop, keep), reduce=reduce)

    # Short runs (keep <= drop, e.g. Bulyan with n < 6f + 1): sum every
    # candidate run directly, keep slices of drop + 1 rows.
    def reduce_short(get, _):
        _, _, j = best_run(get)
        s = np.stack([get(p) for p in range(n)])      # (n, chunk), sorted
        runs = s[0:drop + 1].copy()
        for t in range(1, keep):
            runs += s[t:t + drop + 1]
        return np.take_along_axis(runs, j, axis=0)[0] / keep

    return _columnwise(x, exact=tuple(range(n)), reduce=reduce_short)


def _median_columns(x: Tensor) -> Tensor:
    n = x.shape[0]
    if n == 1:
        return x[0].clone()
    return _columnwise(x, exact=_median_positions(n), reduce=lambda get, _: _median_of(get, n))


# --------------------------------------------------------------------------
# Rules from the CGE paper (Gupta, Liu, Vaidya; Sections 2.1 and 3.2)
# --------------------------------------------------------------------------

# Where each built-in comes from (its registry entry's reference).
_REFERENCES = {
    "mean": "the non-robust baseline of every paper (D-SGD, CGE paper eq 2)",
    "cge": "Gupta, Liu, Vaidya (CGE paper), Section 2.1 (comparative gradient elimination)",
    "cwtm": ("CGE paper, Section 3.4 (coordinate-wise trimmed mean); Yin, Chen, Ramchandran, Bartlett, ICML "
        "2018"),
    "trimmed_mean": ("Yin, Chen, Ramchandran, Bartlett, Byzantine-Robust Distributed Learning: Towards Optimal "
        "Statistical Rates, ICML 2018, Definition 2"),
    "geomed": ("Chen, Su, Xu, Distributed Statistical Machine Learning in Adversarial Settings, POMACS 2017 "
        "(geometric median); CGE paper, Section 3.4"),
    "mom": ("Chen, Su, Xu, Distributed Statistical Machine Learning in Adversarial Settings, POMACS 2017 "
        "(geometric median of means)"),
    "multikrum": ("Blanchard, El Mhamdi, Guerraoui, Stainer, Machine Learning with Adversaries: Byzantine Tolerant "
        "Gradient Descent, NeurIPS 2017"),
    "krum": ("Blanchard, El Mhamdi, Guerraoui, Stainer, Machine Learning with Adversaries: Byzantine Tolerant "
        "Gradient Descent, NeurIPS 2017"),
    "median": "Yin, Chen, Ramchandran, Bartlett, ICML 2018, Definition 1",
    "meamed": "Xie, Koyejo, Gupta, Generalized Byzantine-tolerant SGD, arXiv:1802.10116, 2018",
    "bulyan": ("El Mhamdi, Guerraoui, Rouault, The Hidden Vulnerability of Distributed Learning in Byzantium, "
        "ICML 2018"),
    "norm_threshold": ("Ghosh, Maity, Kadhe, Mazumdar, Ramchandran, Communication-Efficient and Byzantine-Robust "
        "Distributed Learning, Algorithms 1-2"),
    "majority_vote": ("Bernstein, Zhao, Azizzadenesheli, Anandkumar, signSGD with Majority Vote is Communication "
        "Efficient and Fault Tolerant, ICLR 2019"),
    "cc": "Karimireddy, He, Jaggi, Learning from History for Byzantine Robust Optimization, ICML 2021",
    "nnm": "Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, Fixing by Mixing, AISTATS 2023",
    "bucketing": ("Karimireddy, He, Jaggi, Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing, ICLR "
        "2022"),
    "mda": ("El Mhamdi, Guerraoui, Rouault, Distributed Momentum for Byzantine-resilient Stochastic Gradient "
        "Descent, ICLR 2021 (minimum-diameter averaging); El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "
        "Genuinely Distributed Byzantine Machine Learning, PODC 2020"),
    "smea": ("Allouah, Guerraoui, Gupta, Pinot, Stephan, On the Privacy-Robustness-Utility Trilemma in "
        "Distributed Learning, ICML 2023 (smallest maximum eigenvalue averaging)"),
    "caf": ("Allouah, Guerraoui, Stephan, Towards Trustworthy Federated Learning with Untrusted Participants, "
        "ICML 2025, Algorithm 2 (covariance-bound agnostic filter)"),
    "monna": ("Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, Robust Collaborative Learning with Linear "
        "Gradient Overhead, ICML 2023, arXiv:2209.10931 (MoNNA)"),
    "dnc": ("Shejwalkar, Houmansadr, Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses "
        "for Federated Learning, NDSS 2021, Algorithm 2 (divide-and-conquer)"),
}


@register("mean", reference=_REFERENCES["mean"],
          coordinatewise=True, check=lambda n, f: None)
def mean(x: Tensor, *, f: int) -> Tensor:
    """Plain average of the rows: D-SGD without a filter (not robust).

    x: (n, d) -> (d,). out = (1/n) sum_i x_i. The CGE paper's D-SGD update
    (eq 3) SUMS the n gradients; this returns their average, so it matches
    every other rule here except ``cge``. f is accepted and ignored (any
    f >= 0): this is the non-robust baseline, and a single NaN or huge row
    passes straight through. The rows are added in a fixed order, one after
    another within groups of 32 and then the groups' sums (numpy's reduction
    along axis 0), so every column's sum is the same whatever block of
    columns it is computed in (torch's ``mean(dim=0)`` is not: the sharded
    server's slices would differ from one block in the last bit), with an
    error that grows as n / 32 + 32 rather than n.
    """
    return _mean_rows(x)


_MEAN_GROUP = 32  # rows summed in order before the groups' sums are added


def _mean_rows(x: Tensor) -> Tensor:
    """The average of the rows, added in the fixed order ``mean`` describes."""
    xn = x.numpy()
    n = xn.shape[0]
    if n <= _MEAN_GROUP:
        total = np.add.reduce(xn, axis=0)
    else:
        starts = range(0, n, _MEAN_GROUP)
        groups = np.empty((len(starts), xn.shape[1]), dtype=xn.dtype)
        for g, i in enumerate(starts):
            np.add.reduce(xn[i:i + _MEAN_GROUP], axis=0, out=groups[g])
        total = np.add.reduce(groups, axis=0)
    return torch.from_numpy(total).div_(n)


@register("cge", reference=_REFERENCES["cge"],
          coordinatewise=False, check=_needs_honest_majority("cge"),
          validators={"reduce": _v_choice("sum", "mean")})
def cge(x: Tensor, *, f: int, reduce: str = "sum", sharding: Sharding = WHOLE) -> Tensor:
    """Comparative gradient elimination: keep the n - f smallest-norm rows.

    x: (n, d) -> (d,). Rows are ordered by Euclidean norm; the f with the
    largest norms are dropped and the remaining n - f are SUMMED, as in the
    CGE paper, Section 2.1, eq (7) (``reduce="sum"``, the paper's scale:
    about n - f times a gradient). ``reduce="mean"`` divides by n - f.
    A row with NaN/inf has norm +inf and is among the first dropped; norms
    are float64 where float32 would overflow. Needs n > 2f.
    """
    n = x.shape[0]
    norms = _row_norms(x, sharding)
    kept = torch.sort(norms, stable=True).indices[: n - f]
    w = torch.zeros(n, dtype=torch.float64)
    w[kept] = 1.0 if reduce == "sum" else 1.0 / (n - f)
    return _combine(x, w, torch.isfinite(norms))


@register("cwtm", reference=_REFERENCES["cwtm"],
          coordinatewise=True, check=_needs_honest_majority("cwtm"))
def cwtm(x: Tensor, *, f: int) -> Tensor:
    """Coordinate-wise f-trimmed mean.

    x: (n, d) -> (d,). For each coordinate, sort the n values, drop the f
    smallest and the f largest, and average the n - 2f left (CGE paper,
    Section 3.2, eq 24). f = 0 is the mean. Output: average scale. NaN
    counts as +inf and is trimmed from the top, -inf from the bottom. Needs
    n > 2f. See also ``trimmed_mean`` (Yin et al.'s fraction-based form).
    """
    return _trimmed_mean_columns(x, f)


@register("trimmed_mean", reference=_REFERENCES["trimmed_mean"],
          coordinatewise=True, check=lambda n, f, beta: (
    _needs_honest_majority("trimmed_mean")(n, f) if beta is None else None),
    validators={"beta": _v_fraction_below_half})
def trimmed_mean(x: Tensor, *, f: int, beta: float | None = None) -> Tensor:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018, Definition 2).

    x: (n, d) -> (d,). For each coordinate remove the largest and the
    smallest beta fraction of the n values, k = floor(beta * n) from each
    side, and average the n - 2k left. beta is in [0, 1/2); None means
    beta = f/n, i.e. k = f and the same result as ``cwtm``.

    Rounding: the definition removes "the beta fraction" without saying how
    to round; floor keeps at least one value for every beta < 1/2. Yin et
    al. divide the kept sum by (1 - 2 beta) n, which equals the number of
    kept values only when beta * n is an integer; this divides by the number
    of kept values, so the output is a true average (average scale).
    The definition does not require beta * n >= f (their Theorem 4 asks
    beta >= the fraction of Byzantine rows for its guarantee), so that is not
    enforced; the output is guaranteed finite with up to k non-finite rows.
    Needs beta < 1/2 (and n > 2f when beta is None).
    """
    k = f if beta is None else _count_of_fraction(beta, x.shape[0], "floor")
    return _trimmed_mean_columns(x, k)


def _mom_groups(n: int, f: int, groups: int | None) -> int | None:
    if groups is not None:
        return groups
    return next((g for g in range(2 * f + 1, n + 1) if n % g == 0), None)


def _mom_check(n, f, groups, **_):
    g = _mom_groups(n, f, groups)
    if g is None:
        return (f"mom: no divisor of n is >= 2f + 1 = {2 * f + 1} (needed for the default "
                f"number of groups), got n={n}, f={f}")
    if n % g:
        return f"mom: groups must divide n, got groups={g}, n={n}, f={f}"
    if g <= 2 * f:
        return f"mom: needs groups > 2f, got groups={g}, n={n}, f={f}"
    return None


_GEOMED_VALIDATORS = {"tol": _v_positive, "max_iter": _v_int(1), "eps": _v_positive}


def _geometric_median(x: Tensor, tol: float, max_iter: int, eps: float,
                      sharding: Sharding = WHOLE) -> Tensor:
    """Weiszfeld's iteration, run on the Gram matrix of the rows.

    The estimate is kept as y = sum_j a_j x_j with sum_j a_j = 1, so its
    distance to every row follows from the float64 Gram matrix in O(n^2) per
    step; only forming the Gram matrix (O(n^2 d), once) and the final
    combination touch the d coordinates. Many steps are therefore cheap.
    """
    n, d = x.shape
    norms = _row_norms(x, sharding)
    rows = torch.isfinite(norms).nonzero().flatten()
    m = rows.numel()
    if m == 0:
        return torch.full((d,), math.nan, dtype=x.dtype)
    G, h, cc = _gram64(x, rows, norms, sharding)
    diag = G.diagonal()
    pair = (diag[:, None] + diag[None, :] - 2.0 * G).clamp_min(0.0).sqrt()
    if m > 1:
        off = pair.masked_fill(torch.eye(m, dtype=torch.bool), math.nan)
        spread = float(off.nanmedian(dim=1).values.median())
    else:
        spread = 0.0
    if spread == 0.0:
        # More than half the rows coincide: that point is the geometric median.
        a = torch.zeros(m, dtype=torch.float64)
        a[int(pair.sum(dim=1).argmin())] = 1.0
    else:
        floor = eps * spread
        a = torch.full((m,), 1.0 / m, dtype=torch.float64)
        converged = False
        for _ in range(max_iter):
            Ga = G @ a
            dist = (diag - 2.0 * Ga + a @ Ga).clamp_min(0.0).sqrt()
            w = 1.0 / dist.clamp_min(floor)
            new = w / w.sum()
            step = new - a
            change = math.sqrt(max(float(step @ G @ step), 0.0))
            size = math.sqrt(max(cc + 2.0 * float(new @ h) + float(new @ G @ new), 0.0))
            a = new
            if change <= tol * max(size, spread):
                converged = True
                break
        if not converged:
            warnings.warn(f"geomed: Weiszfeld did not reach tol={tol} in max_iter={max_iter} "
                          f"steps; returning the last estimate", RuntimeWarning, stacklevel=3)
    w = torch.zeros(n, dtype=torch.float64)
    w[rows] = a
    return _combine(x, w, torch.isfinite(norms))


@register("geomed", reference=_REFERENCES["geomed"],
          coordinatewise=False, check=_needs_honest_majority("geomed"), validators=_GEOMED_VALIDATORS)
def geomed(x: Tensor, *, f: int, tol: float = 1e-7, max_iter: int = 1000,
           eps: float = 1e-10, sharding: Sharding = WHOLE) -> Tensor:
    """Geometric median: the point minimising the sum of distances to the rows.

    x: (n, d) -> (d,). argmin_y sum_j ||y - x_j|| (CGE paper, Section 3.2,
    eq 23; also BRSGD eq 2.8), computed by Weiszfeld's iteration
    y <- (sum_j x_j / ||y - x_j||) / (sum_j 1 / ||y - x_j||) started from the
    mean of the rows, run until the estimate moves by at most
    tol * max(||y||, s) in one step (at most ``max_iter`` steps; a
    RuntimeWarning says so if that cap is hit). s is a robust spread of the
    rows: the median over rows of the median distance to the other rows.
    tol = 1e-7 is about float32 resolution; steps cost O(n^2) (see below),
    so a tight tolerance is cheap.

    Landing on a row: distances below eps * s are raised to eps * s
    (smoothed Weiszfeld), so the weights stay finite; the estimate then
    settles within about eps * s of that row if it is the median. When more
    than half the rows coincide, that point is returned directly.

    Rows with NaN/inf are infinitely far away and are left out (a finite
    but huge row still pulls with unit force, as in the definition).
    Distances come from a float64 Gram matrix of the centred rows.
    Output: average scale. Breakdown point 1/2: needs n > 2f.
    """
    return _geometric_median(x, tol, max_iter, eps, sharding)


@register("mom", reference=_REFERENCES["mom"],
          coordinatewise=False, check=_mom_check,
          validators={"groups": _v_int(1, allow_none=True), **_GEOMED_VALIDATORS})
def mom(x: Tensor, *, f: int, groups: int | None = None, tol: float = 1e-7,
        max_iter: int = 1000, eps: float = 1e-10, sharding: Sharding = WHOLE) -> Tensor:
    """Geometric median of means.

    x: (n, d) -> (d,). The agents are split a priori into l = ``groups``
    contiguous groups of b = n / l (agents 1..b form group 1, and so on),
    each group is averaged, and the geometric median of the l means is
    returned (CGE paper, Section 3.2, with eq 23; the paper assumes l
    divides n, and so does this). Default l: the smallest divisor of n that
    is >= 2f + 1, so that the at most f groups holding a faulty agent are a
    minority. A group with a NaN/inf row has a non-finite mean and is left
    out by the geometric median. ``tol``, ``max_iter``, ``eps``: as for
    ``geomed``. Output: average scale. Needs l | n and l > 2f.
    """
    n, d = x.shape
    l = _mom_groups(n, f, groups)  # noqa: E741 - the paper's name for the number of groups
    means = x.reshape(l, n // l, d).mean(dim=1)
    return _geometric_median(means, tol, max_iter, eps, sharding)


def _krum_neighbours(r: int, f: int, neighbours: str) -> int:
    return r - f - 2 if neighbours == "n-f-2" else r - f - 1


def _krum_check(rule):
    def check_fn(n, f, neighbours, m=None):
        if neighbours == "n-f-2" and n <= 2 * f + 2:
            return f"{rule}: needs n > 2f + 2 (with neighbours='n-f-2'), got n={n}, f={f}"
        if neighbours == "n-f-1" and n <= 2 * f + 1:
            return f"{rule}: needs n > 2f + 1 (with neighbours='n-f-1'), got n={n}, f={f}"
        if m is not None and not (1 <= m <= n - f):
            return f"{rule}: needs 1 <= m <= n - f, got m={m}, n={n}, f={f}"
        return None
    return check_fn


def _krum_scores(D: Tensor, k: int) -> Tensor:
    """Sum of the k smallest entries of each row of D, the row's own entry
    excluded (D's diagonal is set to +inf on a copy)."""
    D = D.clone()
    D.fill_diagonal_(math.inf)
    return torch.topk(D, k, dim=1, largest=False).values.sum(dim=1)


@register("multikrum", reference=_REFERENCES["multikrum"],
          coordinatewise=False, check=_krum_check("multikrum"),
          validators={"m": _v_int(1, allow_none=True),
                      "neighbours": _v_choice("n-f-2", "n-f-1")})
def multikrum(x: Tensor, *, f: int, m: int | None = None, neighbours: str = "n-f-2",
              sharding: Sharding = WHOLE) -> Tensor:
    """Multi-Krum: average the m rows with the smallest Krum scores.

    x: (n, d) -> (d,). The Krum score of a row is the sum of its squared
    Euclidean distances to its k nearest other rows (Blanchard et al. 2017,
    Section 4); the m rows with the smallest scores are averaged (CGE paper,
    Section 3.2, "multi-KRUM"; m defaults to n - f, the largest it allows).

    ``neighbours``: k = n - f - 2 is Blanchard et al.'s definition (the
    default); k = n - f - 1 is the other published convention (e.g. ByzFL),
    which counts one more neighbour, so it can rank rows differently. Needs
    n > 2f + 2 with n - f - 2 and n > 2f + 1 with n - f - 1 (either way the
    k neighbours outnumber the f faulty rows), and 1 <= m <= n - f.
    A row with NaN/inf is at distance +inf from all rows and is never
    selected while m <= n - f. Distances come from a float64 Gram matrix,
    so 1e30-scale rows neither overflow nor hide the honest distances.
    Ties in score go to the lower row index. Output: average scale.
    """
    n = x.shape[0]
    m = n - f if m is None else m
    norms = _row_norms(x, sharding)
    scores = _krum_scores(_pairwise_sq_dists(x, norms, sharding), _krum_neighbours(n, f, neighbours))
    chosen = torch.sort(scores, stable=True).indices[:m]
    w = torch.zeros(n, dtype=torch.float64)
    w[chosen] = 1.0 / m
    return _combine(x, w, torch.isfinite(norms))


@register("krum", reference=_REFERENCES["krum"],
          coordinatewise=False, check=_krum_check("krum"),
          validators={"neighbours": _v_choice("n-f-2", "n-f-1")})
def krum(x: Tensor, *, f: int, neighbours: str = "n-f-2", sharding: Sharding = WHOLE) -> Tensor:
    """Krum: the row with the smallest Krum score (multikrum with m = 1).

    x: (n, d) -> (d,), one of the rows. Score and ``neighbours``: see
    ``multikrum`` (Blanchard et al. 2017, k = n - f - 2 by default; BRSGD
    paper, Section 2.2). Needs n > 2f + 2 (n > 2f + 1 with 'n-f-1').
    """
    return multikrum.__wrapped__(x, f=f, m=1, neighbours=neighbours, sharding=sharding)


# --------------------------------------------------------------------------
# Rules from Yin et al. (Definitions 1-2) and the BRSGD paper (Section 2.2)
# --------------------------------------------------------------------------

@register("median", reference=_REFERENCES["median"],
          coordinatewise=True, check=_needs_honest_majority("median"))
def median(x: Tensor, *, f: int) -> Tensor:
    """Coordinate-wise median (Yin et al. 2018, Definition 1).

    x: (n, d) -> (d,). Each coordinate is the usual one-dimensional median
    of the n values; for even n that is the average of the two middle values
    (not torch.median's lower one). NaN counts as +inf. f does not enter the
    formula; it is checked: needs n > 2f. Output: average scale.
    """
    return _median_columns(x)


@register("meamed", reference=_REFERENCES["meamed"],
          coordinatewise=True, check=_needs_honest_majority("meamed"))
def meamed(x: Tensor, *, f: int) -> Tensor:
    """Mean around the median, coordinate-wise.

    x: (n, d) -> (d,). For each coordinate, the average of the n - f values
    closest to the coordinate's median (the "mean-around-median" of the
    BRSGD paper, Section 2.2, from Xie et al. 2018 and El Mhamdi et al.
    2018; it is also Bulyan's second stage). The median is Yin et al.'s
    (even n: mean of the two middle values). Between two values equally
    close on either side of the median, the lower one is kept. NaN counts
    as +inf. Needs n > 2f. Output: average scale.
    """
    return _mean_around_median_columns(x, f)


def _bulyan_check(n, f, neighbours):
    if n < 4 * f + 3:
        return f"bulyan: needs n >= 4f + 3, got n={n}, f={f}"
    return None


@register("bulyan", reference=_REFERENCES["bulyan"],
          coordinatewise=False, check=_bulyan_check,
          validators={"neighbours": _v_choice("n-f-2", "n-f-1")})
def bulyan(x: Tensor, *, f: int, neighbours: str = "n-f-2", sharding: Sharding = WHOLE) -> Tensor:
    """Bulyan over Krum (El Mhamdi, Guerraoui, Rouault 2018).

    x: (n, d) -> (d,). Stage 1: pick theta = n - 2f rows one at a time, each
    time the row with the smallest Krum score among the rows not yet
    picked, scores recomputed within that shrinking set (r rows: k = r-f-2
    neighbours, or r-f-1 with ``neighbours='n-f-1'``; the paper applies Krum
    to the shrinking set without saying what happens once that count drops
    below 1, which it does in the last picks when f <= 1, so k is kept at
    >= 1). Stage 2: for each coordinate, average the beta = theta - 2f
    values of the picked rows closest to their coordinate-wise median (as in
    ``meamed``). BRSGD paper, Section 2.2. Needs n >= 4f + 3.
    Output: average scale. Distances: float64 Gram matrix, +inf for rows
    with NaN/inf; ties go to the lower row index.
    """
    n = x.shape[0]
    theta = n - 2 * f
    D = _pairwise_sq_dists(x, _row_norms(x, sharding), sharding)
    D.fill_diagonal_(math.inf)
    remaining = list(range(n))
    picked = []
    for _ in range(theta):
        r = len(remaining)
        if r == 1:
            best = 0
        else:
            idx = torch.tensor(remaining)
            sub = D.index_select(0, idx).index_select(1, idx)
            k = max(1, _krum_neighbours(r, f, neighbours))
            scores = torch.topk(sub, k, dim=1, largest=False).values.sum(dim=1)
            best = int(torch.sort(scores, stable=True).indices[0])
        picked.append(remaining.pop(best))
    chosen = x.index_select(0, torch.tensor(sorted(picked)))
    return _mean_around_median_columns(chosen, 2 * f)


# --------------------------------------------------------------------------
# Ghosh et al. (Algorithms 1-2) and centered clipping
# --------------------------------------------------------------------------

@register("norm_threshold", reference=_REFERENCES["norm_threshold"],
          coordinatewise=False, check=lambda n, f, beta: (
    _needs_honest_majority("norm_threshold")(n, f) if beta is None else None),
    validators={"beta": _v_fraction_below_half})
def norm_threshold(x: Tensor, *, f: int, beta: float | None = None,
                   sharding: Sharding = WHOLE) -> Tensor:
    """Norm thresholding: drop the beta fraction of largest-norm rows, average the rest.

    x: (n, d) -> (d,). Rows are sorted by Euclidean norm; the ceil(beta * n)
    largest are dropped and the others AVERAGED (Ghosh et al., Algorithms 1
    and 2: w_{t+1} = w_t - gamma / |U_t| * sum over the kept set U_t).
    Unlike ``cge``, which sums, the output is average scale. beta in
    [0, 1/2) (their Theorems 1-2); None means beta = f/n, i.e. exactly f rows
    dropped.

    Rounding: the paper keeps "the first 1 - beta fraction" with beta * m an
    integer in its experiments; its analysis needs the dropped part to cover
    the Byzantine fraction alpha <= beta, so the dropped count is rounded UP
    (rounding down could drop fewer rows than beta * n faulty ones).
    beta * n >= f is not enforced; with a smaller beta fewer than f rows
    are dropped and robustness is the caller's choice. NaN/inf rows have
    norm +inf and go first.
    """
    norms = _row_norms(x, sharding)
    return _average_smallest(x, norms, torch.isfinite(norms), f=f, beta=beta)


def threshold_on_norms(x: Tensor, norms: Tensor, *, f: int, beta: float | None = None,
                       sharding: Sharding = WHOLE) -> Tensor:
    """:func:`norm_threshold` with the norms given: average the rows of the (1 - beta) n smallest.

    x: (n, d), norms: (n,) -> (d,). Ghosh et al.'s Algorithm 1 sorts the
    norms the agents *sent* beside their compressed vectors (which a faulty
    agent may forge), not the norms of the rows received; Algorithm 2 and
    ``norm_threshold`` sort the rows' own norms. Same count and rounding as
    :func:`norm_threshold`; ties keep the lower index; NaN norms count as +inf.
    """
    norms = norms.to(torch.float64).masked_fill(torch.isnan(norms), math.inf)
    bad = sharding.sum((~torch.isfinite(x).all(dim=1)).to(torch.float64))  # in any slice
    return _average_smallest(x, norms, bad == 0, f=f, beta=beta)


def _average_smallest(x: Tensor, norms: Tensor, ok: Tensor, *, f: int, beta: float | None) -> Tensor:
    n = x.shape[0]
    drop = f if beta is None else _count_of_fraction(beta, n, "ceil")
    kept = torch.sort(norms, stable=True).indices[: n - drop]
    w = torch.zeros(n, dtype=torch.float64)
    w[kept] = 1.0 / (n - drop)
    return _combine(x, w, ok)


# --------------------------------------------------------------------------
# signSGD with majority vote (Bernstein et al. 2019)
# --------------------------------------------------------------------------

@register("majority_vote", reference=_REFERENCES["majority_vote"],
          coordinatewise=True, check=_needs_honest_majority("majority_vote"))
def majority_vote(x: Tensor, *, f: int) -> Tensor:
    """signSGD's majority vote: the sign of each column's sum of signs, ties to +1.

    x: (n, d) -> (d,) of +1.0 / -1.0. Row i votes -1 on coordinate j where
    x_ij < 0 and +1 elsewhere (0, -0.0 and NaN vote +1, as the ``sign``
    codec encodes them, so rows of decoded signs vote as they are); the
    output is -1 where more than half the votes are -1. A tie (possible for
    even n) goes to +1 because the downlink carries one bit a coordinate and
    has no 0 (Bernstein et al. 2019 leave ties open). The vote uses no f:
    its robustness is that of a majority, so f is only checked against it
    (n > 2f). In server mode this rule turns the downlink into the vote
    itself (``ceil(d / 8)`` bytes) and the agents step their replicas.
    """
    negative = (x < 0).sum(dim=0, dtype=torch.int64)
    return torch.where(2 * negative > x.shape[0], -1.0, 1.0).to(x.dtype)


@register("cc", reference=_REFERENCES["cc"],
          coordinatewise=False, check=_needs_honest_majority("cc"),
          validators={"tau": _v_positive, "iters": _v_int(1), "center": _v_center})
def cc(x: Tensor, *, f: int, tau: float = 10.0, iters: int = 1,
       center: Any = None, sharding: Sharding = WHOLE) -> Tensor:
    """Centered clipping (Karimireddy, He, Jaggi 2021).

    x: (n, d) -> (d,). Starting from a reference point v, repeat ``iters``
    times: v <- v + (1/n) sum_i clip(x_i - v, tau), where clip(z, tau) =
    z * min(1, tau / ||z||) shortens z to length at most tau.

    ``center``: the starting v. In the paper it is the previous round's
    aggregate (the server's momentum); calls here are stateless, so the
    caller may pass that vector as a (d,) tensor. None or 'median' (the
    default) starts from the coordinate-wise median of the rows, a robust
    point available without state; 'zero' starts from 0. tau (default 10)
    and iters (default 1, as in the paper's experiments) are the clipping
    radius and the number of steps.

    A finite far row moves v by at most tau / n. A row with NaN/inf has no
    direction, so its clipped contribution is taken as 0. Needs n > 2f.
    Output: average scale. Translation-equivariant with the median centre.
    """
    n, d = x.shape
    if isinstance(center, torch.Tensor):
        if center.shape != (d,):
            raise ValueError(f"cc: center must have shape ({d},), got {tuple(center.shape)}")
        v = center.detach().to(x.dtype).clone()
    elif center == "zero":
        v = torch.zeros(d, dtype=x.dtype)
    else:
        v = _median_columns(x)
    for _ in range(iters):
        diff = x - v
        r = _row_norms(diff, sharding)
        scale = torch.where(r > tau, tau / r, torch.ones_like(r))
        scale = torch.where(torch.isfinite(r), scale, torch.zeros_like(r))
        v = v + _combine(diff, scale / n, torch.isfinite(r))
    return v


# --------------------------------------------------------------------------
# Subset searches (MDA, SMEA), filters (CAF, DnC) and MoNNA
# --------------------------------------------------------------------------

_MAX_SUBSETS = 10 ** 6


def _subset_check(rule: str):
    def check_fn(n, f, max_subsets, **_):
        msg = _needs_honest_majority(rule)(n, f)
        if msg:
            return msg
        count = math.comb(n, f)
        if count > max_subsets:
            return (f"{rule}: the search is over C(n, f) = {count} subsets of n - f rows, more than "
                    f"max_subsets={max_subsets} (raise max_subsets to allow it), got n={n}, f={f}")
        return None
    return check_fn


def _finite_gram(x: Tensor, sharding: Sharding) -> tuple[Tensor, Tensor, Tensor | None]:
    """(norms, indices of the finite rows, their float64 Gram matrix (centred at one of them) or None)."""
    norms = _row_norms(x, sharding)
    rows = torch.isfinite(norms).nonzero().flatten()
    G = _gram64(x, rows, norms, sharding)[0] if rows.numel() else None
    return norms, rows, G


def _average_of(x: Tensor, kept: Tensor, norms: Tensor) -> Tensor:
    w = torch.zeros(x.shape[0], dtype=torch.float64)
    w[kept] = 1.0 / kept.numel()
    return _combine(x, w, torch.isfinite(norms))


def _has_cover(A: np.ndarray, budget: int) -> bool:
    """Whether at most ``budget`` vertices touch every edge of the graph A (boolean adjacency).

    Bounded search tree: a vertex of degree > budget must be in the cover; then either the
    vertex u of largest degree is in it, or all of u's neighbours are. At most 2^budget nodes.
    """
    A = A.copy()
    while True:
        deg = A.sum(axis=1)
        high = deg > budget
        if not high.any():
            break
        budget -= int(high.sum())
        if budget < 0:
            return False
        A[high] = False
        A[:, high] = False
    edges = int(deg.sum()) // 2
    if edges == 0:
        return True
    if budget == 0 or edges > budget * budget:   # each vertex covers at most budget edges
        return False
    u = int(deg.argmax())
    if deg[u] == 1:                               # a matching: one vertex per edge
        return edges <= budget
    B = A.copy()
    B[u] = False
    B[:, u] = False
    if _has_cover(B, budget - 1):
        return True
    nb = A[u]
    B = A.copy()
    B[nb] = False
    B[:, nb] = False
    return _has_cover(B, budget - int(deg[u]))


def _fits(A: np.ndarray, f: int, kept: list[int], removed: list[int]) -> bool:
    """Whether f rows, ``removed`` among them and none of ``kept``, cover every edge of A."""
    forced = np.zeros(len(A), dtype=bool)
    forced[removed] = True
    if kept:
        forced |= A[kept].any(axis=0)             # a kept row's conflicts must all go
        if forced[kept].any():
            return False
    budget = f - int(forced.sum())
    if budget < 0:
        return False
    B = A.copy()
    B[forced] = False
    B[:, forced] = False
    return _has_cover(B, budget)


def _min_diameter_subset(D: np.ndarray, f: int) -> list[int]:
    """The lexicographically first set of n - f rows whose largest pairwise entry of D is smallest.

    A set of n - f rows has diameter <= t exactly when the f rows left out cover every pair at
    distance > t (a vertex cover of size f of that "conflict" graph). The smallest such t is
    found by bisection over the distinct distances, then rows 0, 1, ... are kept greedily
    whenever a cover that spares them still exists, which gives the first set in lexicographic
    order among the optimal ones.
    """
    n = len(D)
    if f == 0:
        return list(range(n))
    levels = np.unique(D[np.triu_indices(n, 1)])
    off = ~np.eye(n, dtype=bool)
    lo, hi = 0, len(levels) - 1                   # above the largest distance nothing conflicts
    while lo < hi:
        mid = (lo + hi) // 2
        if _has_cover((D > levels[mid]) & off, f):
            hi = mid
        else:
            lo = mid + 1
    A = (D > levels[lo]) & off
    kept: list[int] = []
    removed: list[int] = []
    for i in range(n):
        if len(kept) < n - f and _fits(A, f, kept + [i], removed):
            kept.append(i)
        else:
            removed.append(i)
    return kept


@register("mda", reference=_REFERENCES["mda"],
          coordinatewise=False, check=_subset_check("mda"), validators={"max_subsets": _v_int(1)})
def mda(x: Tensor, *, f: int, max_subsets: int = _MAX_SUBSETS, sharding: Sharding = WHOLE) -> Tensor:
    """Minimum-diameter averaging: the average of the n - f rows of smallest diameter.

    x: (n, d) -> (d,). Among all subsets S of n - f rows, the one minimising the diameter
    max_{i, j in S} ||x_i - x_j||, averaged (El Mhamdi, Guerraoui, Rouault, ICLR 2021; the
    minimum-volume-ellipsoid idea of Rousseeuw with a ball's diameter). The search is exact
    and is not an enumeration: the f rows left out must cover every pair farther apart than
    the diameter, so the smallest diameter is found by bisection over the pairwise distances,
    each step a bounded search for f such rows (at most 2^f nodes, usually far fewer; ByzFL
    scores all C(n, f) subsets). ``check`` still refuses C(n, f) > ``max_subsets``, the bound
    shared with ``smea``. Ties: the lexicographically first subset (lower indices kept).
    Distances: float64 Gram matrix; a NaN/inf row is at +inf from every row, so it is left
    out while at most f rows are bad. Needs n > 2f. Output: average scale.
    """
    norms = _row_norms(x, sharding)
    D = _pairwise_sq_dists(x, norms, sharding)    # squared: the same order as the distances
    kept = _min_diameter_subset(D.numpy(), f)
    return _average_of(x, torch.tensor(kept), norms)


_SMEA_CHUNK = 1 << 14      # subsets whose bounds are computed at once
_SMEA_EXACT = 256          # subsets whose eigenvalue is computed at once
_SMEA_SLACK = 1e-7         # relative margin of the screening test against rounding


def _scatter_top(Z: Tensor, lam: Tensor, R: Tensor, k: int) -> Tensor:
    """Largest eigenvalue of the scatter matrix of the rows left when the rows R are removed.

    Z: (m, r) coordinates of m centred rows with Z^T Z = diag(lam); R: (B, q) removed rows.
    Scatter of the k kept rows = diag(lam) - Z_R^T Z_R - s s^T / k, s = the sum of Z_R's rows.
    """
    ZR = Z[R]                                         # (B, q, r)
    s = ZR.sum(dim=1)
    S = torch.diag_embed(lam.expand(len(R), -1)) - ZR.transpose(1, 2) @ ZR - (s[:, :, None] * s[:, None, :]) / k
    return torch.linalg.eigvalsh(S)[:, -1]


def _scatter_below(Z: Tensor, lam: Tensor, R: Tensor, k: int, t: float) -> Tensor:
    """Whether the largest scatter eigenvalue of each subset (as in :func:`_scatter_top`) is < t.

    The scatter is diag(lam) - V V^T with V = [Z_R^T, s / sqrt(k)] of rank <= q + 1, so
    t I - scatter = diag(a) + V V^T, a = t - lam, is positive definite iff its Schur
    complement on the coordinates where a <= 0 (at most q + 1 of them, or never) is:
    diag(a_N) + V_N (I + V_P^T diag(1/a_P) V_P)^{-1} V_N^T. Small matrices per subset.
    """
    a = t - lam
    neg = a <= 0
    B, q = R.shape
    if int(neg.sum()) > q + 1:
        return torch.zeros(B, dtype=torch.bool)
    ZR = Z[R]
    V = torch.cat([ZR.transpose(1, 2), ZR.sum(dim=1)[:, :, None] / math.sqrt(k)], dim=2)   # (B, r, q+1)
    if not bool(neg.any()):
        return torch.ones(B, dtype=torch.bool)
    VP, VN = V[:, ~neg], V[:, neg]
    W = VP.transpose(1, 2) @ (VP / a[~neg][None, :, None])
    W.diagonal(dim1=1, dim2=2).add_(1.0)
    X = torch.linalg.solve(W, VN.transpose(1, 2))
    S = VN @ X
    S.diagonal(dim1=1, dim2=2).add_(a[neg])
    return torch.linalg.cholesky_ex(S).info == 0


def _smallest_max_eigenvalue_subset(G: Tensor, k: int) -> Tensor:
    """The lexicographically first k of the m rows whose covariance has the smallest top eigenvalue.

    G: (m, m) float64 Gram matrix. The rows are given coordinates Z (m, r) in their own span
    (eigh of the centred Gram matrix), so every subset's scatter is an r x r matrix built from
    the q = m - k rows it leaves out. Exact search in three passes over the C(m, q) subsets:
    a lower bound for each (the largest diagonal entry of its scatter), exact eigenvalues of
    the subsets with the lowest bounds (the best so far), then a screening test
    (:func:`_scatter_below`) that discards every subset whose top eigenvalue is not below the
    best, repeated on the survivors until few are left; those are computed exactly.
    """
    m = G.shape[0]
    q = m - k
    if q == 0:
        return torch.arange(m)
    J = G - G.mean(dim=0, keepdim=True) - G.mean(dim=1, keepdim=True) + G.mean()
    lam, U = torch.linalg.eigh((J + J.T) / 2)
    big = lam > 1e-12 * float(lam.max().clamp_min(0.0))
    if not bool(big.any()):                          # all rows coincide: every subset ties at 0
        return torch.arange(k)
    lam, Z = lam[big], U[:, big] * lam[big].sqrt()
    count = math.comb(m, q)
    R = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(m), q)),
                                     dtype=np.int64, count=count * q).reshape(count, q))
    def rayleigh(P: Tensor) -> Tensor:
        """(count, p): v^T scatter v of every subset for the p directions whose projections
        of the rows are the columns of P (m, p), from the rows it leaves out alone."""
        out = torch.empty(count, P.shape[1], dtype=torch.float64)
        P2 = P.square()
        for i in range(0, count, _SMEA_CHUNK):
            part = R[i:i + _SMEA_CHUNK]
            sq, sm = P2[part[:, 0]], P[part[:, 0]]
            for j in range(1, q):
                sq += P2[part[:, j]]
                sm += P[part[:, j]]
            out[i:i + _SMEA_CHUNK] = P2.sum(dim=0) - sq - sm.square_() / k
        return out

    # Lower bounds: a subset's top eigenvalue is at least v^T scatter v for any unit v; first
    # along the 8 axes of Z of largest variance, then along the top eigenvectors of the 16
    # subsets of lowest bound (in practice close to the best subset's).
    bound = rayleigh(Z[:, -8:]).max(dim=1).values
    first = torch.sort(bound, stable=True).indices[:16]
    ZR = Z[R[first]]
    sm = ZR.sum(dim=1)
    S = torch.diag_embed(lam.expand(len(first), -1)) - ZR.transpose(1, 2) @ ZR - sm[:, :, None] * sm[:, None, :] / k
    vecs = torch.linalg.eigh(S).eigenvectors[:, :, -1]          # (16, r) unit vectors
    bound = torch.maximum(bound, rayleigh(Z @ vecs.T).max(dim=1).values)
    order = torch.sort(bound, stable=True).indices
    value = torch.full((count,), math.inf, dtype=torch.float64)   # exact top eigenvalues
    done = torch.zeros(count, dtype=torch.bool)

    def evaluate(idx: Tensor) -> None:
        for i in range(0, idx.numel(), _SMEA_EXACT):
            part = idx[i:i + _SMEA_EXACT]
            value[part] = _scatter_top(Z, lam, R[part], k)
            done[part] = True

    evaluate(order[:16])
    scale = float(lam.max())
    alive = order
    while True:
        best = float(value.min())
        t = best + _SMEA_SLACK * abs(best) + 1e-12 * scale
        alive = alive[bound[alive] < t]
        alive = torch.cat([alive[i:i + _SMEA_CHUNK][_scatter_below(Z, lam, R[alive[i:i + _SMEA_CHUNK]], k, t)]
                           for i in range(0, alive.numel(), _SMEA_CHUNK)] + [alive[:0]])
        pending = alive[~done[alive]]
        if pending.numel() <= 2 * _SMEA_EXACT:
            evaluate(pending)
            break
        evaluate(pending[:_SMEA_EXACT])          # the lowest bounds first: a better best
    best = float(value.min())
    tied = (value <= best + 1e-12 * scale).nonzero().flatten()
    # The last removal set in itertools' order leaves the lexicographically first kept set.
    removed = R[int(tied.max())]
    mask = torch.ones(m, dtype=torch.bool)
    mask[removed] = False
    return mask.nonzero().flatten()


@register("smea", reference=_REFERENCES["smea"],
          coordinatewise=False, check=_subset_check("smea"), validators={"max_subsets": _v_int(1)})
def smea(x: Tensor, *, f: int, max_subsets: int = _MAX_SUBSETS, sharding: Sharding = WHOLE) -> Tensor:
    """Smallest maximum eigenvalue averaging: the n - f rows of least spread in every direction.

    x: (n, d) -> (d,). Among all subsets S of n - f rows, the one whose empirical covariance
    (1/|S|) sum_{i in S} (x_i - mu_S)(x_i - mu_S)^T has the smallest largest eigenvalue,
    averaged (Allouah et al., ICML 2023). The eigenvalues are EXACT: the covariance of S has
    the nonzero eigenvalues of its centred Gram matrix, which comes from one float64 n x n
    Gram matrix (whole-row sums), so no step touches d after it. ByzFL estimates each
    subset's eigenvalue with one power iteration from a random start, which can rank the
    subsets wrongly and differs from call to call. The search is exact over all C(n, f)
    subsets (refused above ``max_subsets``), pruned by bounds (see
    ``_smallest_max_eigenvalue_subset``). Ties (to 1e-12 of the largest eigenvalue, float
    rounding): the lexicographically first subset. A NaN/inf row makes a subset's eigenvalue
    +inf, so it is left out while at most f rows are bad. Needs n > 2f. Output: average scale.
    """
    n = x.shape[0]
    norms, rows, G = _finite_gram(x, sharding)
    if rows.numel() < n - f:                     # every subset keeps a bad row: the first one
        return _average_of(x, torch.arange(n - f), norms)
    return _average_of(x, rows[_smallest_max_eigenvalue_subset(G, n - f)], norms)


def _caf_weights(G: Tensor, n: int, f: int, tau_max: str) -> Tensor:
    """CAF's weights on the m finite rows (summing to 1), from their (m, m) float64 Gram matrix.

    With a = c / sum(c), the rows centred at mu_c = sum_i a_i x_i have the Gram matrix
    C = (I - 1 a^T) G (I - a 1^T), and Sigma_c = Y^T diag(a) Y has the nonzero eigenvalues
    of K = diag(sqrt a) C diag(sqrt a). With K u = lambda u, the unit top eigenvector of
    Sigma_c is v = Y^T diag(sqrt a) u / sqrt(lambda), so the projections are
    <x_i - mu_c, v> = (C diag(sqrt a) u)_i / sqrt(lambda): everything is m x m.
    """
    m = G.shape[0]
    c = torch.ones(m, dtype=torch.float64)
    best, best_a = math.inf, None
    while float(c.sum()) > n - 2 * f:
        a = c / c.sum()
        Ga = G @ a
        C = G - Ga[None, :] - Ga[:, None] + a @ Ga
        C = (C + C.T) / 2
        s = a.sqrt()
        lam, U = torch.linalg.eigh(s[:, None] * C * s[None, :])
        top = float(lam[-1])
        if top < best:
            best, best_a = top, a
        if top <= 0.0:                           # the weighted rows coincide: nothing beats this
            break
        tau = (C @ (s * U[:, -1])).square() / top
        top_tau = float((tau[c > 0] if tau_max == "weighted" else tau).max())
        if top_tau <= 0.0:
            break
        c = (c * (1.0 - tau / top_tau)).clamp_min_(0.0)
    return best_a


@register("caf", reference=_REFERENCES["caf"],
          coordinatewise=False, check=_needs_honest_majority("caf"),
          validators={"tau_max": _v_choice("weighted", "all")})
def caf(x: Tensor, *, f: int, tau_max: str = "weighted", sharding: Sharding = WHOLE) -> Tensor:
    """Covariance-bound agnostic filter: down-weight rows along the top eigenvector, keep the best mean.

    x: (n, d) -> (d,). Weights c_i = 1; while sum_i c_i > n - 2f: mu_c = sum c_i x_i / sum c_i,
    Sigma_c = sum c_i (x_i - mu_c)(x_i - mu_c)^T / sum c_i with top eigenpair (lambda, v),
    tau_i = <x_i - mu_c, v>^2, c_i <- c_i (1 - tau_i / max_j tau_j). The output is the mu_c
    of the smallest lambda met (the first one on ties). Allouah, Guerraoui, Stephan, ICML 2025,
    Algorithm 2, as ByzFL states it.

    Exact where ByzFL approximates: ByzFL takes (lambda, v) from ONE power iteration from a
    random start; here they are exact, from the eigendecomposition of an n x n matrix built
    from one float64 Gram matrix (whole-row sums; the output is a weighted sum of rows, so
    a sharded server needs no d-sized exchange). Choices: max_j tau_j is over the rows
    still weighted (``tau_max="weighted"``, as in the weighted filters CAF builds on: every
    step then zeroes a row, so at most n steps run); ``tau_max="all"`` takes it over all
    rows as ByzFL's code does, which differs when a row already at weight 0 projects
    farthest (it then slows every later step); a step whose lambda is 0 (the weighted
    rows coincide) ends the loop, its mean being optimal; with f = 0 no step runs and the
    output is the mean (ByzFL returns None).
    A NaN/inf row starts at weight 0 (the limit of an infinitely far row: the first step
    zeroes it and its lambda is +inf). Needs n > 2f. Output: average scale.
    """
    n = x.shape[0]
    norms, rows, G = _finite_gram(x, sharding)
    if f == 0 or rows.numel() <= n - 2 * f:      # no step runs: the plain mean
        return _mean_rows(x)
    w = torch.zeros(n, dtype=torch.float64)
    w[rows] = _caf_weights(G, n, f, tau_max)
    return _combine(x, w, torch.isfinite(norms))


def _monna_check(n, f, idx):
    msg = _needs_honest_majority("monna")(n, f)
    if msg:
        return msg
    if idx >= n:
        return f"monna: needs idx < n, got idx={idx}, n={n}, f={f}"
    return None


@register("monna", reference=_REFERENCES["monna"],
          coordinatewise=False, check=_monna_check, validators={"idx": _v_int(0)})
def monna(x: Tensor, *, f: int, idx: int = 0, sharding: Sharding = WHOLE) -> Tensor:
    """MoNNA's aggregation: the average of the n - f rows nearest to row ``idx``, itself included.

    x: (n, d) -> (d,). In the peer-to-peer MoNNA algorithm (Farhadkhani et al., ICML 2023)
    an honest node averages the n - f vectors closest to its own; ``idx`` is the row of that
    trusted vector (default 0, as in ByzFL). Not invariant to permuting the rows, by
    definition: row ``idx`` is the reference. Distances ||x_i - x_idx|| are computed
    directly in float64 (no overflow; sharded, summed over the slices); a NaN/inf row is at
    +inf and left out while at most f rows are bad (if row idx itself is bad, the output is
    not finite). Ties: the lower row index (ByzFL's argpartition leaves them unspecified).
    Needs n > 2f and idx < n. Output: average scale.
    """
    n, d = x.shape
    sq = torch.zeros(n, dtype=torch.float64)
    width = max(1, min(d, (1 << 21) // n))
    for j in range(0, d, width):                 # float64 a column chunk at a time: no overflow
        chunk = x[:, j:j + width].to(torch.float64)
        sq += (chunk - chunk[idx]).square_().sum(dim=1)
    total = sharding.sum(sq)                     # squared distances: the same order
    dist = total.masked_fill(torch.isnan(total), math.inf)
    ok = torch.isfinite(dist)
    dist[idx] = 0.0                              # itself first, even when not finite
    near = torch.sort(dist, stable=True).indices[: n - f]
    w = torch.zeros(n, dtype=torch.float64)
    w[near] = 1.0 / (n - f)
    return _combine(x, w, ok)


def _dnc_removed(f: int, c: float) -> int:
    return _count_of_fraction(c, f, "floor")


def _dnc_check(n, f, niters, b, c):
    msg = _needs_honest_majority("dnc")(n, f)
    if msg:
        return msg
    if _dnc_removed(f, c) >= n:
        return f"dnc: removes floor(c f) = {_dnc_removed(f, c)} rows a round, needs fewer than n, got n={n}, f={f}"
    return None


def _v_nonnegative(rule, key, v):
    if not _is_real(v) or not (v >= 0) or not math.isfinite(v):
        return f"{rule}: {key} must be a finite number >= 0, got {v!r}"
    return None


def _slice_columns(width: int, sharding: Sharding) -> tuple[int, int]:
    """(first column of this slice, number of columns of the whole rows).

    Every slice calls this (it sums through ``sharding``). The slice's position is
    ``sharding.index``; a slice that gives none, or positions that collide, stop the rule
    rather than draw different columns on different slices.
    """
    k = sharding.slices
    if k == 1:
        return 0, width
    index = sharding.index
    part = torch.zeros(2 * k, dtype=torch.float64)
    if index is not None and 0 <= index < k:
        part[index] = width
        part[k + index] = 1.0
    total = sharding.sum(part)
    if not bool((total[k:] == 1).all()):
        raise ValueError("dnc: the slices must know their positions in column order (sharding.index) to "
                         "draw the same columns")
    widths = total[:k].round().long()
    return int(widths[:index].sum()), int(widths.sum())


def _sample_columns(d: int, b: int, gen: torch.Generator) -> Tensor:
    """b distinct column indices out of d, uniformly at random: the first b distinct values
    of a stream of uniform draws (randperm for large b / d, where repeats would be common)."""
    if 4 * b >= d:
        return torch.randperm(d, generator=gen)[:b]
    stream = np.empty(0, dtype=np.int64)
    while True:
        stream = np.concatenate([stream, torch.randint(d, (2 * b,), generator=gen).numpy()])
        _, first = np.unique(stream, return_index=True)
        if first.size >= b:
            return torch.from_numpy(stream[np.sort(first)[:b]])


@register("dnc", reference=_REFERENCES["dnc"],
          coordinatewise=False, check=_dnc_check,
          validators={"niters": _v_int(1), "b": _v_int(1), "c": _v_nonnegative})
def dnc(x: Tensor, *, f: int, niters: int = 1, b: int = 10000, c: float = 1.0,
        rng: torch.Generator | None = None, sharding: Sharding = WHOLE) -> Tensor:
    """Divide-and-conquer (Shejwalkar and Houmansadr, NDSS 2021, Algorithm 2).

    x: (n, d) -> (d,). ``niters`` rounds, each: draw b of the d coordinates uniformly without
    replacement (all of them when b >= d), centre the rows on those coordinates at their
    mean, take the top right singular vector v of that (n, b) block, score row i by
    <x_i - mean, v>^2 and keep the n - floor(c f) lowest scores. The output is the mean of
    the rows kept in every round (the intersection); should that be empty, which needs
    niters * floor(c f) >= n, the rows kept in the most rounds are averaged instead (the
    paper leaves that case open). Defaults: niters = 1, b = 10000, c = 1.0, those of the
    Blades implementation (the paper takes them as inputs; ByzFL has no DnC). c f is
    rounded down.

    The scores need only the (n, n) Gram matrix of the centred sub-block: with eigenpair
    (lambda, u) on top, the projections are sqrt(lambda) u, so score_i = lambda u_i^2. Sharded,
    the draw is over the whole d from the same generator on every slice; each slice uses
    the drawn columns it holds and the Gram matrices are summed. ``rng``: the server's
    generator (``build`` passes it); None draws from a generator seeded with 0, so direct
    calls are deterministic. A NaN/inf row (anywhere, not only in the drawn columns) scores
    +inf and is removed first. Ties: the lower row index. Needs n > 2f. Output: average scale.
    """
    n, width = x.shape
    gen = rng if rng is not None else torch.Generator().manual_seed(0)
    offset, d = _slice_columns(width, sharding)
    norms = _row_norms(x, sharding)
    rows = torch.isfinite(norms).nonzero().flatten()
    xs = x.index_select(0, rows)
    kept_rounds = torch.zeros(n, dtype=torch.int64)
    for _ in range(niters if rows.numel() else 0):
        if b >= d:
            block = xs.to(torch.float64)
        else:
            cols = _sample_columns(d, b, gen)
            mine = cols[(cols >= offset) & (cols < offset + width)] - offset
            block = xs.index_select(1, mine).to(torch.float64)
        block -= block.mean(dim=0, keepdim=True)  # per column: the same on every slice
        G = sharding.sum(block @ block.T)
        lam, U = torch.linalg.eigh((G + G.T) / 2)
        scores = torch.full((n,), math.inf, dtype=torch.float64)
        scores[rows] = lam[-1].clamp_min(0.0) * U[:, -1].square()
        kept_rounds[torch.sort(scores, stable=True).indices[: n - _dnc_removed(f, c)]] += 1
    if not rows.numel():                         # no finite row: the first n - floor(c f)
        kept_rounds[: n - _dnc_removed(f, c)] = 1
    kept = (kept_rounds == kept_rounds.max()).nonzero().flatten()
    return _average_of(x, kept, norms)


# --------------------------------------------------------------------------
# Pre-aggregation
# --------------------------------------------------------------------------

@register_pre("nnm", reference=_REFERENCES["nnm"],
              coordinatewise=False, check=_needs_honest_majority("nnm"), out=lambda n, f: (n, f))
def nnm(x: Tensor, *, f: int, rng: torch.Generator | None = None,
        sharding: Sharding = WHOLE) -> tuple[Tensor, int]:
    """Nearest-neighbour mixing (Allouah et al. 2023, "Fixing by Mixing").

    x: (n, d) -> ((n, d), f). Each row is replaced by the average of its
    n - f nearest rows in Euclidean distance, itself included (distance 0).
    Returns f unchanged as the bound on bad rows: every mixed row may hold a
    share of a faulty row, and Allouah et al. run the following rule with
    the same f. Rows with NaN/inf are infinitely far from the others, so
    while at most f rows are bad no finite row mixes them in; a mixed row
    that does include one is set to NaN (it stays one bad row). ``rng`` is
    unused. Needs n > 2f.
    """
    n = x.shape[0]
    norms = _row_norms(x, sharding)
    D = _pairwise_sq_dists(x, norms, sharding)
    bad = ~torch.isfinite(norms)
    # A row is always its own nearest neighbour (distance 0), bad rows too.
    D.fill_diagonal_(0.0)
    # Stable order so that ties go to the lower row index.
    near = torch.sort(D, dim=1, stable=True).indices[:, : n - f]
    M = torch.zeros(n, n, dtype=x.dtype)
    M.scatter_(1, near, 1.0 / (n - f))
    if not bool(bad.any()):
        return M @ x, f
    good = (~bad).nonzero().flatten()
    out = M[:, good] @ x.index_select(0, good)
    out[(M[:, bad] != 0).any(dim=1)] = math.nan
    return out, f


def _bucket_count(n: int, s: int) -> int:
    return -(-n // s)


@register_pre("bucketing", reference=_REFERENCES["bucketing"],
              coordinatewise=True, check=lambda n, f, s: None,
              out=lambda n, f, s: (_bucket_count(n, s), min(f, _bucket_count(n, s))),
              validators={"s": _v_int(1)})
def bucketing(x: Tensor, *, f: int, rng: torch.Generator | None = None,
              s: int = 2) -> tuple[Tensor, int]:
    """Bucketing (Karimireddy, He, Jaggi 2022).

    x: (n, d) -> ((ceil(n/s), d), f2). The rows are shuffled with a random
    permutation drawn from ``rng`` (a seeded torch.Generator; required, so
    that runs are reproducible) and cut into consecutive buckets of s rows,
    the last one smaller when s does not divide n; each bucket is replaced by
    its mean. The paper's formula divides every bucket sum by s; here the
    last, smaller bucket is divided by its own size, so it too is a mean
    (identical when s divides n). f2 = min(f, number of buckets): each faulty
    row lands in exactly one bucket.
    """
    if rng is None:
        raise ValueError("bucketing: needs a torch.Generator rng (seeded by the caller)")
    n, d = x.shape
    perm = torch.randperm(n, generator=rng)
    shuffled = x.index_select(0, perm)
    full = n // s
    parts = []
    if full:
        parts.append(shuffled[: full * s].reshape(full, s, d).mean(dim=1))
    if n % s:
        parts.append(shuffled[full * s:].mean(dim=0, keepdim=True))
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    return out, min(f, out.shape[0])


# --------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------

def _pre_param_map(pre: Sequence[str], pre_params: Mapping[str, Mapping] | None) -> dict:
    pre_params = dict(pre_params or {})
    stray = sorted(set(pre_params) - set(pre))
    if stray:
        raise ValueError(f"pre_params given for {stray[0]!r}, which is not a pre-aggregation "
                         f"step of this pipeline (pre={list(pre)})")
    return pre_params


def check_pipeline(name: str, n: int, f: int, params: Mapping[str, Any] | None = None,
                   pre: Sequence[str] = (), pre_params: Mapping[str, Mapping] | None = None
                   ) -> str | None:
    """Validate pre-aggregation steps ``pre`` (in order) followed by rule
    ``name``, tracking (n, f) through each step; None when all is well.
    ``pre_params`` maps a step name to its parameters."""
    if isinstance(pre, str):
        return f"pre must be a sequence of step names, got the string {pre!r}"
    try:
        step_params = _pre_param_map(pre, pre_params)
    except ValueError as err:
        return str(err)
    where = ""
    for step_name in pre:
        step = PRE_REGISTRY.get(step_name)
        if step is None:
            return (f"unknown pre-aggregation {step_name!r}; known: "
                    f"{', '.join(sorted(PRE_REGISTRY))}")
        p = dict(step_params.get(step_name) or {})
        msg = step.check(n, f, **p)
        if msg:
            return where + msg
        n, f = step.out(n, f, **p)
        shown = ", ".join(f"{k}={v}" for k, v in {**step.defaults, **p}.items())
        where += f"after {step_name}({shown}) n={n}, f={f}: "
    msg = check(name, n, f, params)
    return where + msg if msg else None


def build(name: str, *, f: int, params: Mapping[str, Any] | None = None,
          pre: Sequence[str] = (), pre_params: Mapping[str, Mapping] | None = None,
          sharding: Sharding = WHOLE, overwrite: bool = False) -> Callable[[Tensor, torch.Generator | None], Tensor]:
    """The aggregator ``agg(x, rng=None) -> (d,)``: steps ``pre`` then rule ``name``.

    Names and parameters are validated now (``ValueError``); bounds that
    depend on n are checked with :func:`check_pipeline` on every call.
    ``rng`` is passed to every step and to a rule that draws (``dnc``; bucketing needs one;
    sharded, every slice's rank holds the same generator, so all draw the same).
    ``sharding``: x is this rank's slice of the columns (see :class:`Sharding`).
    ``overwrite``: the caller gives up x (the server's inbox, which the next round rewrites), so
    the steps that can (``clipping``, ``arc``) scale it in place instead of writing a new block.
    Either way a step may work in place on a block an earlier step made.
    """
    params = dict(params or {})
    if isinstance(pre, str):
        raise ValueError(f"pre must be a sequence of step names, got the string {pre!r}")
    pre = tuple(pre)
    step_params = _pre_param_map(pre, pre_params)
    rule = REGISTRY.get(name)
    if rule is None:
        raise ValueError(check(name, 1, 0))
    msg = _param_problems(name, rule.defaults, rule.validators, params) or _nf_problems(name, 1, f)
    if msg:
        raise ValueError(msg)
    steps = []
    for step_name in pre:
        step = PRE_REGISTRY.get(step_name)
        if step is None:
            raise ValueError(f"unknown pre-aggregation {step_name!r}; known: "
                             f"{', '.join(sorted(PRE_REGISTRY))}")
        p = dict(step_params.get(step_name) or {})
        msg = _param_problems(step_name, step.defaults, step.validators, p)
        if msg:
            raise ValueError(msg)
        steps.append((step, p))

    def aggregate(x: Tensor, rng: torch.Generator | None = None, root: Tensor | None = None) -> Tensor:
        msg = check_pipeline(name, x.shape[0], f, params, pre, step_params)
        if msg:
            raise ValueError(msg)
        f_now, owned = f, overwrite
        for step, p in steps:
            y, f_now = step(x, f=f_now, rng=rng, sharding=sharding, overwrite=owned, **p)
            owned = owned or y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
            x = y
        given = {"rng": rng} if getattr(rule, "takes_rng", False) else {}
        if getattr(rule, "takes_root", False):
            given["root"] = root
        return rule(x, f=f_now, sharding=sharding, **given, **params)

    aggregate.__name__ = "+".join(pre + (name,))
    aggregate.__doc__ = f"Pipeline {' -> '.join(pre + (name,))} with f={f}."
    return aggregate


# The rules and steps of their own modules register here too, so that importing this module
# (the protocols do) gives the whole registry.
from . import clipping, fltrust  # noqa: E402,F401
