"""mpisim's rules, pre-aggregators and adaptive attacks against ByzFL's: speed, and agreement on seeded inputs.

    pip download --no-deps byzfl==0.0.11 -d /tmp/byzfl && python -m zipfile -e /tmp/byzfl/*.whl /tmp/byzfl/pkg
    pip install --target /tmp/byzfl/deps scipy          # what its aggregators import, kept out of .venv
    .venv/bin/python benchmarks/compare_byzfl.py --byzfl /tmp/byzfl/pkg --deps /tmp/byzfl/deps
    .venv/bin/python benchmarks/compare_byzfl.py --byzfl /tmp/byzfl/pkg --deps /tmp/byzfl/deps --mode agreement

ByzFL (EPFL's Byzantine-robust FL library, https://github.com/LPD-EPFL/byzfl)
is loaded from an unpacked wheel without its package ``__init__`` (which
imports torchvision for its federated framework), so that only its
aggregators, pre-aggregators and attacks run.

``--mode speed`` (the default). Grid: the rule benchmark's, n in {10, 50, 100}
and d in {10^4, 431,080, 10^6}, float32 standard-normal rows, f = floor((n - 1)
/ 4); the exhaustive subset searches (mda, smea) on n in {10, 15} (``--subset-n``;
f = 2, 3: C(n, f) = 45, 455 subsets, where ByzFL's enumeration is feasible). For
every size the calls alternate (ours, theirs with torch tensors, theirs with
numpy arrays, one memory pass) for ``--rounds`` rounds and each time is the
median; "best" is the faster of ByzFL's two back ends. A size whose warm-up
calls together take longer than ``--budget`` seconds gets fewer rounds (as many
as fit, at least the warm-up itself, which then is the one sample). The memory
pass is a sum of the rows (numpy's reduction along axis 0: every entry read once).
ByzFL's Clipping and ARC overwrite their input, and so do ours as the server
runs them (``overwrite=True``: the inbox is rewritten every round), so both get
a fresh copy made outside the timed call.

Pairs: cwtm / TrMean(f), median / Median, meamed / Meamed(f) (the same
definitions: TrMean sorts each column and averages the middle n - 2f, Median
takes numpy's or torch's median (torch's is the lower middle value for even
n, ours and numpy's the midpoint), Meamed averages the n - f values closest
to the median), krum / Krum(f) with neighbours n - f - 1 (ByzFL's count),
clipping (c = 2) / Clipping(2.0), arc / ARC(f), monna / MoNNA(f) (idx 0),
caf / CAF(f), mda / MDA(f), smea / SMEA(f). Before timing, the outputs are
checked equal, except caf and smea: ByzFL estimates their top eigenvalues with
one power iteration from a random start (``--mode agreement`` compares them).
Saves benchmarks/results/byzfl_comparison.json (``--out``).

``--mode agreement``: outputs on seeded inputs, n in {10, 20}, d in {10, 1000},
f in {1, 3}, ``--seeds`` seeds: honest rows N(0.5, 1), f rows N(-2, 9), shuffled.
clipping / Clipping at c = 2 and at the median row norm, arc / ARC, mda / MDA,
monna / MoNNA (idx 0 and n - 1) on both of ByzFL's back ends; opt_alie /
Optimal_ALittleIsEnough and opt_ipm / Optimal_InnerProductManipulation against
three pipelines (clipping + mean, cwtm, median) on the n - f honest rows;
smea and caf against exact references written here (smea: every subset's
d x d covariance, or its centred Gram matrix when d > n, through
``torch.linalg.eigvalsh``; caf: Algorithm 2 with a d x d ``torch.linalg.eigh``
each step, for both readings of max_j tau_j), and ByzFL's SMEA / CAF against
the same references (how often they pick another subset or mean, and how far).
Then edge cases where the definitions differ on purpose. Saves
benchmarks/results/byzfl_agreement.json.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import math
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from common import machine, markdown_table, save_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mpisim.rules import aggregators as A  # noqa: E402
from mpisim.rules import attacks as ATT  # noqa: E402

GRID_N, GRID_D = (10, 50, 100), (10_000, 431_080, 1_000_000)
SUBSET_N = (10, 15)
EXHAUSTIVE = ("mda", "smea")
RULES = ("cwtm", "median", "meamed", "krum", "clipping", "arc", "monna", "caf", "mda", "smea")
APPROXIMATE = ("caf", "smea")     # ByzFL's result depends on a random start: no equality check


def load_byzfl(root: Path, deps: Path | None) -> types.SimpleNamespace:
    """ByzFL's aggregators, pre-aggregators and attacks, imported without running the package's __init__."""
    if deps is not None:
        sys.path.insert(0, str(deps))
    package = types.ModuleType("byzfl")
    package.__path__ = [str(root / "byzfl")]
    sys.modules["byzfl"] = package
    return types.SimpleNamespace(agg=importlib.import_module("byzfl.aggregators.aggregators"),
                                 pre=importlib.import_module("byzfl.aggregators.preaggregators"),
                                 attacks=importlib.import_module("byzfl.attacks.attacks"))


def ours_pre(name: str, **params):
    step = A.PRE_REGISTRY[name]
    return lambda x, f: step(x, f=f, **params)[0]


def pairs(Z, f: int) -> dict:
    """rule -> (ours, theirs, both overwrite their input): each a function of the (torch, numpy) block.
    ByzFL's Clipping and ARC scale their input in place; ours do too when told, as the server's
    pipeline tells them (its inbox is rewritten every round)."""
    B, P = Z.agg, Z.pre
    clip, arc = ours_pre("clipping", c=2.0, overwrite=True), ours_pre("arc", overwrite=True)
    return {
        "cwtm": (lambda x: A.cwtm(x, f=f), B.TrMean(f=f), False),
        "median": (lambda x: A.median(x, f=f), B.Median(), False),
        "meamed": (lambda x: A.meamed(x, f=f), B.Meamed(f=f), False),
        "krum": (lambda x: A.krum(x, f=f, neighbours="n-f-1"), B.Krum(f=f), False),
        "clipping": (lambda x: clip(x, f), P.Clipping(2.0), True),
        "arc": (lambda x: arc(x, f), P.ARC(f=f), True),
        "monna": (lambda x: A.monna(x, f=f), B.MoNNA(f=f), False),
        "caf": (lambda x: A.caf(x, f=f), B.CAF(f=f), False),
        "mda": (lambda x: A.mda(x, f=f), B.MDA(f=f), False),
        "smea": (lambda x: A.smea(x, f=f), B.SMEA(f=f), False),
    }


def fresh(arg, copy: bool):
    if not copy:
        return arg
    return arg.copy() if isinstance(arg, np.ndarray) else arg.clone()


def timed(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return 1e3 * (time.perf_counter() - start)


def as_tensor(v) -> torch.Tensor:
    return torch.as_tensor(np.asarray(v), dtype=torch.float64)


# --------------------------------------------------------------------------- #
# Speed

def run_speed(Z, args) -> None:
    torch.set_num_threads(1)
    wanted = args.only.split(",")
    unknown = set(wanted) - set(RULES)
    if unknown:
        raise SystemExit(f"unknown rules {sorted(unknown)}; known: {', '.join(RULES)}")
    plan: dict[tuple[int, int], list[str]] = {}
    for ns, rules in ((args.n, [r for r in wanted if r not in EXHAUSTIVE]),
                      (args.subset_n, [r for r in wanted if r in EXHAUSTIVE])):
        for n, d in itertools.product(map(int, ns.split(",")), GRID_D):
            if rules:
                plan.setdefault((n, d), []).extend(rules)
    rows = []
    for (n, d), here in sorted(plan.items()):
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(n * 1_000_003 + d))
        xn = x.numpy()
        f = (n - 1) // 4
        calls = pairs(Z, f)
        for rule in here:
            ours, theirs, copies = calls[rule]
            if rule not in APPROXIMATE:
                # The same result first: every entry but those where an exact tie between two values
                # equally far from the median is broken another way (meamed; about 1 in 10^6).
                got, ref = ours(fresh(x, copies)), as_tensor(theirs(fresh(xn, copies))).to(torch.float32)
                differ = int((~torch.isclose(got, ref, rtol=1e-4, atol=1e-5)).sum())
                if differ > got.numel() // 10**5:
                    raise SystemExit(f"{rule} at n={n}, d={d}: {differ} entries differ from ByzFL's")
            callers = {"ours": (ours, x, copies), "byzfl_torch": (theirs, x, copies),
                       "byzfl_numpy": (theirs, xn, copies),
                       "pass": (lambda a: np.add.reduce(a, axis=0), xn, False)}
            torch.manual_seed(0)
            np.random.seed(0)
            warm = {k: timed(fn, fresh(a, c)) for k, (fn, a, c) in callers.items()}
            rounds = min(args.rounds, int(1e3 * args.budget // sum(warm.values())))
            times = {k: [] for k in callers} if rounds else {k: [v] for k, v in warm.items()}
            for _ in range(rounds):
                for k, (fn, a, c) in callers.items():
                    times[k].append(timed(fn, fresh(a, c)))
            med = {k: statistics.median(v) for k, v in times.items()}
            best = min(med["byzfl_torch"], med["byzfl_numpy"])
            rows.append({"rule": rule, "n": n, "d": d, "f": f, "rounds": max(rounds, 1),
                         **{f"{k}_ms": v for k, v in med.items()},
                         "byzfl_best_ms": best, "speedup": best / med["ours"],
                         "vs_memory_pass": med["ours"] / med["pass"]})
            r = rows[-1]
            print(f"  {rule:8s} n={n:3d} d={d:9,d}: ours {r['ours_ms']:9.1f} ms, ByzFL {best:9.1f} ms "
                  f"({r['speedup']:.1f}x), {r['vs_memory_pass']:.1f} memory passes, {r['rounds']} rounds",
                  flush=True)
        del x, xn
    rows.sort(key=lambda r: (RULES.index(r["rule"]), r["n"], r["d"]))
    header = ["rule", "n", "d", "ours ms", "ByzFL torch ms", "ByzFL numpy ms", "speed-up vs best",
              "ours / one memory pass"]
    table = markdown_table(header, [[r["rule"], r["n"], f"{r['d']:,}", f"{r['ours_ms']:.1f}",
                                     f"{r['byzfl_torch_ms']:.1f}", f"{r['byzfl_numpy_ms']:.1f}",
                                     f"{r['speedup']:.1f}x", f"{r['vs_memory_pass']:.1f}"] for r in rows])
    print(table)
    path = save_json(args.out or "byzfl_comparison.json", {
        "benchmark": "rules and pre-aggregators against ByzFL 0.0.11, one thread",
        "command": "python benchmarks/compare_byzfl.py --byzfl DIR --deps DIR "
                   f"--rounds {args.rounds} --budget {args.budget} --only {args.only} --n {args.n} "
                   f"--subset-n {args.subset_n}",
        "machine": {**machine(), "load_average": os.getloadavg()}, "results": rows, "table": table})
    print(f"saved {path}")


# --------------------------------------------------------------------------- #
# Exact references for smea and caf

def smea_exact(x: torch.Tensor, f: int) -> tuple[torch.Tensor, tuple[int, ...], float]:
    """Mean of the lexicographically first n - f rows whose covariance has the smallest top
    eigenvalue, by brute force: every subset's d x d covariance (or, when d > n, its centred
    (n - f) x (n - f) Gram matrix, which has the same nonzero eigenvalues), float64 eigvalsh.
    Also the relative gap between the best and the second-best eigenvalue."""
    n, d = x.shape
    k = n - f
    x64 = x.to(torch.float64)
    subsets = list(itertools.combinations(range(n), k))
    idx = torch.tensor(subsets)
    values = []
    for i in range(0, len(subsets), 512):
        Y = x64[idx[i:i + 512]]                              # (B, k, d)
        Y = Y - Y.mean(dim=1, keepdim=True)
        M = Y.transpose(1, 2) @ Y if d <= n else Y @ Y.transpose(1, 2)
        values.append(torch.linalg.eigvalsh(M / k)[:, -1])
    values = torch.cat(values)
    best = int(torch.argmin(values))                        # the first minimum: lexicographic order
    top2 = torch.sort(values).values[:2]
    gap = float((top2[1] - top2[0]) / top2[0]) if len(values) > 1 else math.inf
    return x64[idx[best]].mean(dim=0), subsets[best], gap


def caf_exact(x: torch.Tensor, f: int, tau_max: str) -> torch.Tensor:
    """CAF (Allouah, Guerraoui, Stephan, ICML 2025, Algorithm 2) with the exact top eigenpair of the
    d x d weighted covariance (float64 torch.linalg.eigh) at every step. max_j tau_j over the
    rows still weighted (``weighted``) or over all rows (``all``, ByzFL's code)."""
    n, d = x.shape
    x64 = x.to(torch.float64)
    c = torch.ones(n, dtype=torch.float64)
    best, best_mu = math.inf, None
    while float(c.sum()) > n - 2 * f:
        mu = (c[:, None] * x64).sum(dim=0) / c.sum()
        D = x64 - mu
        S = (D * c[:, None]).T @ D / c.sum()
        lam, V = torch.linalg.eigh((S + S.T) / 2)
        if float(lam[-1]) < best:
            best, best_mu = float(lam[-1]), mu
        tau = (D @ V[:, -1]).square()
        top = float((tau[c > 0] if tau_max == "weighted" else tau).max())
        if top <= 0:
            break
        c = (c * (1 - tau / top)).clamp_min(0.0)
    return best_mu


# --------------------------------------------------------------------------- #
# Agreement

def sample(n: int, d: int, f: int, seed: int) -> torch.Tensor:
    """n - f rows N(0.5, 1) and f rows N(-2, 9), in a seeded random order (float32)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + n * 10_007 + d * 101 + f)
    x = torch.cat([torch.randn(n - f, d, generator=g) + 0.5, 3 * torch.randn(f, d, generator=g) - 2])
    return x[torch.randperm(n, generator=g)]


def honest_rows(n: int, d: int, f: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + n * 10_007 + d * 101 + f + 7)
    return torch.randn(n - f, d, generator=g) + 0.5


def diff(a, b) -> float:
    return float((as_tensor(a) - as_tensor(b)).abs().max())


def tol(ref) -> float:
    """Float32 tolerance for outputs of the scale of ref."""
    return 1e-5 * (1.0 + float(as_tensor(ref).abs().max()))


class Tally:
    """Per compared item: cases, how many agree, the largest difference, the cases that do not."""

    def __init__(self):
        self.items: dict[str, dict] = {}

    def add(self, item: str, ours: str, theirs: str, case: dict, d_abs: float, ok: bool, extra=None):
        t = self.items.setdefault(item, {"item": item, "ours": ours, "byzfl": theirs, "cases": 0, "agree": 0,
                                         "max_abs_diff": 0.0, "disagreements": []})
        t["cases"] += 1
        t["agree"] += bool(ok)
        t["max_abs_diff"] = max(t["max_abs_diff"], d_abs)
        if not ok:
            t["disagreements"].append({**case, "max_abs_diff": d_abs, **(extra or {})})


def both_backends(theirs, x: torch.Tensor, copies: bool = False, seed: int | None = None):
    """ByzFL's output on numpy and on torch input (seeded first if it draws)."""
    out = {}
    for name, arg in (("numpy", x.numpy()), ("torch", x)):
        if seed is not None:
            np.random.seed(seed)
            torch.manual_seed(seed)
        out[name] = theirs(fresh(arg, copies))
    return out


def attack_pipelines(Z, f: int):
    """name -> (our aggregate of a block, ByzFL's (agg, pre_agg_list) factory)."""
    B, P = Z.agg, Z.pre
    ours = {"clipping+mean": A.build("mean", f=f, pre=["clipping"], pre_params={"clipping": {"c": 2.0}}),
            "cwtm": A.build("cwtm", f=f), "median": A.build("median", f=f)}
    theirs = {"clipping+mean": lambda: (B.Average(), [P.Clipping(2.0)]),
              "cwtm": lambda: (B.TrMean(f=f), []), "median": lambda: (B.Median(), [])}
    return {k: (ours[k], theirs[k]) for k in ours}


def traced_ours(name: str, own, honest, f: int, ctx, step: float):
    """Our attack's row and its line search's (x, objective) pairs."""
    trace, search = [], ATT._line_search

    def recording(objective, **kw):
        def obj(x):
            y = float(objective(x))
            trace.append((x, y))
            return y
        return search(obj, **kw)

    ATT._line_search = recording
    try:
        got = ATT.REGISTRY[name].fn(own, honest=honest, f=f, rngs=None, ctx=ctx, step=step)
    finally:
        ATT._line_search = search
    assert bool((got == got[0]).all())
    return got[0], trace


def traced_theirs(attack, honest):
    """ByzFL's attack vector and its line search's (tau, objective) pairs."""
    trace, evaluate = [], attack._evaluate

    def recording(h, avg, tau):
        y = evaluate(h, avg, tau)
        trace.append((tau, y))
        return y

    attack._evaluate = recording
    return attack(honest), trace


def first_split(ours: list, theirs: list, sign: float) -> dict:
    """Where two line searches part: the first evaluation (of the same x) that one counts as an
    improvement and the other not, its objective and the best before it in each. Relative margins
    below ~1e-6 mean float rounding decided (a plateau of the objective, as where clipping saturates)."""
    best_o = best_t = -math.inf
    for i, ((xo, yo), (xt, yt)) in enumerate(zip(ours, theirs)):
        if not math.isclose(xo, sign * xt, rel_tol=1e-9, abs_tol=1e-12):
            return {"split_after_eval": i, "note": "different x tried without a different decision"}
        if (yo > best_o) != (yt > best_t):
            mo = (yo - best_o) / abs(best_o) if math.isfinite(best_o) and best_o else math.inf
            mt = (yt - best_t) / abs(best_t) if math.isfinite(best_t) and best_t else math.inf
            return {"split_at_eval": i, "x": xo, "ours_y": yo, "ours_best_before": best_o, "byzfl_y": yt,
                    "byzfl_best_before": best_t, "ours_margin": mo, "byzfl_margin": mt,
                    "float_tie": max(abs(mo), abs(mt)) < 1e-6}
        best_o, best_t = max(best_o, yo), max(best_t, yt)
    return {"split_at_eval": None}


def run_agreement(Z, args) -> None:
    torch.set_num_threads(1)
    B, P, T = Z.agg, Z.pre, Z.attacks
    tally = Tally()
    notes_smea, notes_caf = [], []
    for n, d, f, seed in itertools.product((10, 20), (10, 1000), (1, 3), range(args.seeds)):
        case = {"n": n, "d": d, "f": f, "seed": seed}
        x = sample(n, d, f, seed)
        norms = x.norm(dim=1)

        def check(item, ours_name, theirs_name, got, outs, **extra):
            for backend, ref in outs.items():
                dd = diff(got, ref)
                tally.add(item, ours_name, theirs_name, {**case, "backend": backend, **extra}, dd, dd <= tol(ref))

        # Pre-aggregators (ByzFL's overwrite their input: a copy each).
        for c in (2.0, float(norms.median())):
            label = "c = 2" if c == 2.0 else "c = median norm"
            got = A.PRE_REGISTRY["clipping"](x, f=f, c=c)[0]
            check(f"clipping ({label})", "clipping", "Clipping", got,
                  both_backends(P.Clipping(c), x, copies=True))
        check("arc", "arc", "ARC", A.PRE_REGISTRY["arc"](x, f=f)[0], both_backends(P.ARC(f=f), x, copies=True))
        # Rules with the same definition.
        check("mda", "mda", "MDA", A.mda(x, f=f), both_backends(B.MDA(f=f), x))
        for idx in (0, n - 1):
            check(f"monna (idx = {'0' if idx == 0 else 'n - 1'})", "monna", "MoNNA",
                  A.monna(x, f=f, idx=idx), both_backends(B.MoNNA(f=f, idx=idx), x))
        # smea and caf against exact references; ByzFL's against the same.
        ref, subset, gap = smea_exact(x, f)
        dd = diff(A.smea(x, f=f), ref)
        tally.add("smea vs exact (brute force)", "smea", "exact reference", case, dd, dd <= tol(ref),
                  {"relative_gap": gap})
        for backend, out in both_backends(B.SMEA(f=f), x, seed=seed).items():
            dd = diff(out, ref)
            tally.add("ByzFL SMEA vs exact (brute force)", "exact reference", "SMEA",
                      {**case, "backend": backend}, dd, dd <= tol(ref), {"relative_gap": gap})
        notes_smea.append(gap)
        for tau_max in ("weighted", "all"):
            ref = caf_exact(x, f, tau_max)
            dd = diff(A.caf(x, f=f, tau_max=tau_max), ref)
            tally.add(f"caf (tau_max = {tau_max}) vs exact", f"caf(tau_max={tau_max})", "exact reference",
                      case, dd, dd <= tol(ref))
        ref_all, ref_w = caf_exact(x, f, "all"), caf_exact(x, f, "weighted")
        notes_caf.append(diff(ref_all, ref_w))
        for backend, out in both_backends(B.CAF(f=f), x, seed=seed).items():
            dd = diff(out, ref_all)
            tally.add("ByzFL CAF vs exact (tau_max = all)", "exact reference", "CAF",
                      {**case, "backend": backend}, dd, dd <= tol(ref_all))
        # Attacks on the n - f honest rows against three pipelines.
        honest = honest_rows(n, d, f, seed)
        own = torch.zeros(f, d)
        for pname, (agg, make) in attack_pipelines(Z, f).items():
            ctx = ATT.Context(aggregate=lambda b, agg=agg: agg(b, torch.Generator().manual_seed(0)),
                              model=torch.zeros(d), round=1, step_size=0.1, n=n, f=f, rule=pname)
            for ours_name, cls, step, label in (
                    ("opt_alie", T.Optimal_ALittleIsEnough, -10.0, "opt_alie (step = -10: mu + z sigma)"),
                    ("opt_alie", T.Optimal_ALittleIsEnough, 10.0, "opt_alie (default: mu - z sigma)"),
                    ("opt_ipm", T.Optimal_InnerProductManipulation, 10.0, "opt_ipm")):
                got, ours_trace = traced_ours(ours_name, own, honest, f, ctx, step)
                outs, traces = {}, {}
                for backend, arg in (("numpy", honest.numpy().copy()), ("torch", honest.clone())):
                    a, pre = make()
                    outs[backend], traces[backend] = traced_theirs(cls(agg=a, pre_agg_list=pre, f=f), arg)
                sign = -1.0 if step < 0 else 1.0    # ours tries x where ByzFL tries -x (step -10)
                for backend, ref in outs.items():
                    dd = diff(got, ref)
                    ok = dd <= tol(ref)
                    extra = {} if ok else {"pipeline": pname, **first_split(ours_trace, traces[backend], sign)}
                    if not ok and step > 0 and ours_name == "opt_alie":
                        extra = {"pipeline": pname, "why": "definition: ours mu - z sigma, ByzFL mu + z sigma"}
                    tally.add(f"{label} / {pname}", ours_name, cls.__name__, {**case, "backend": backend},
                              dd, ok, extra)
    items = list(tally.items.values())
    for t in items:
        if any("float_tie" in c for c in t["disagreements"]):
            t["disagreements_decided_by_a_float_tie"] = sum(bool(c.get("float_tie")) for c in t["disagreements"])
    edge = edge_cases(Z)
    header = ["compared", "ours", "ByzFL / reference", "cases", "agree", "max abs difference"]
    table = markdown_table(header, [[t["item"], f"`{t['ours']}`", f"`{t['byzfl']}`", t["cases"],
                                     t["agree"], f"{t['max_abs_diff']:.2e}"] for t in items])
    print(table)
    edge_table = markdown_table(["edge case", "ours", "ByzFL", "max abs difference", "why"],
                                [[e["case"], e["ours"], e["byzfl"], f"{e['max_abs_diff']:.3g}", e["why"]]
                                 for e in edge])
    print(edge_table)
    for t in items:
        if t["disagreements"]:
            print(f"{t['item']}: {len(t['disagreements'])} disagreements, first: {t['disagreements'][:3]}")
    path = save_json("byzfl_agreement.json", {
        "benchmark": "agreement of rules, pre-aggregators and adaptive attacks with ByzFL 0.0.11 "
                     "and with exact references (smea, caf) on seeded inputs",
        "command": f"python benchmarks/compare_byzfl.py --byzfl DIR --deps DIR --mode agreement --seeds {args.seeds}",
        "grid": {"n": [10, 20], "d": [10, 1000], "f": [1, 3], "seeds": list(range(args.seeds)),
                 "inputs": "n - f rows N(0.5, 1), f rows N(-2, 9), shuffled (float32); attacks: n - f "
                           "honest rows N(0.5, 1)",
                 "tolerance": "max |ours - theirs| <= 1e-5 (1 + max |theirs|)"},
        "smea_relative_gap_min": min(notes_smea), "caf_all_vs_weighted_max_abs_diff": max(notes_caf),
        "machine": {**machine(), "load_average": os.getloadavg()},
        "results": items, "edge_cases": edge, "table": table, "edge_table": edge_table})
    print(f"saved {path}")


def edge_cases(Z) -> list[dict]:
    """Inputs where the definitions differ on purpose (the docstrings of mpisim's rules say so)."""
    B, P = Z.agg, Z.pre
    out = []
    # ARC's k: floor(2 f (n - f) / n) in integers here, int((2 f / n) (n - f)) in floating point there.
    n, f = 242, 33
    x = torch.arange(1, n + 1, dtype=torch.float32)[:, None] * torch.ones(1, 4)
    got, ref = A.PRE_REGISTRY["arc"](x, f=f)[0], P.ARC(f=f)(x.numpy().copy())
    out.append({"case": "arc, n = 242, f = 33, row i = i (1, 1, 1, 1)", "ours": "k = 57 rows clipped",
                "byzfl": f"k = {int((2 * f / n) * (n - f))} rows clipped", "max_abs_diff": diff(got, ref),
                "why": "ByzFL's k is int((2f/n)(n-f)) in floating point: 56.99999... -> 56"})
    # Clipping a NaN row and an inf row.
    x = torch.tensor([[3.0, 4.0], [float("nan"), 1.0], [float("inf"), 1.0]])
    got, ref = A.PRE_REGISTRY["clipping"](x, f=1, c=2.0)[0], P.Clipping(2.0)(x.numpy().copy())
    out.append({"case": "clipping, rows (3, 4), (NaN, 1), (inf, 1)", "ours": str(got.tolist()),
                "byzfl": str(np.asarray(ref).tolist()), "max_abs_diff": float("nan"),
                "why": "a non-finite row has no direction: ours becomes 0; ByzFL keeps NaN, inf -> NaN"})
    # MDA with tied diameters (1-d points 0..4, f = 1): both keep the lexicographically first set.
    x = torch.arange(5, dtype=torch.float32)[:, None]
    got, ref = A.mda(x, f=1), B.MDA(f=1)(x.numpy())
    out.append({"case": "mda, rows 0, 1, 2, 3, 4 (d = 1), f = 1: two sets of diameter 3",
                "ours": str(got.tolist()), "byzfl": str(np.asarray(ref).tolist()),
                "max_abs_diff": diff(got, ref), "why": "the same: the first set in lexicographic order"})
    # MoNNA with two rows at the same distance from row 0 across the n - f boundary.
    x = torch.tensor([[0.0], [1.0], [-1.0], [5.0], [2.0]])
    got, ref = A.monna(x, f=2), B.MoNNA(f=2)(x.numpy())
    out.append({"case": "monna, rows 0, 1, -1, 5, 2 (d = 1), f = 2: rows 1 and -1 tie",
                "ours": str(got.tolist()), "byzfl": str(np.asarray(ref).tolist()),
                "max_abs_diff": diff(got, ref), "why": "ties: ours keeps the lower index; ByzFL's argpartition "
                                                       "leaves them unspecified (here both keep both)"})
    # CAF with f = 0: ours the mean, ByzFL None.
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    ref = B.CAF(f=0)(x.numpy())
    out.append({"case": "caf, f = 0", "ours": "the mean", "byzfl": str(ref), "max_abs_diff": float("nan"),
                "why": "no step runs; ByzFL returns its initial best_mu_c = None"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--byzfl", type=Path, required=True, help="directory of the unpacked ByzFL wheel")
    parser.add_argument("--deps", type=Path, default=None, help="directory with scipy (pip --target)")
    parser.add_argument("--mode", choices=("speed", "agreement"), default="speed")
    parser.add_argument("--rounds", type=int, default=5, help="alternated calls of each per size")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds of calls per rule and size: fewer rounds where ByzFL is slow")
    parser.add_argument("--only", "--rules", dest="only", default=",".join(RULES),
                        help=f"rules to time (default: all of {','.join(RULES)})")
    parser.add_argument("--n", default=",".join(map(str, GRID_N)), help="row counts (default: the grid's)")
    parser.add_argument("--subset-n", default=",".join(map(str, SUBSET_N)),
                        help="row counts of the exhaustive rules mda and smea")
    parser.add_argument("--out", default=None, help="result file of the speed mode (default byzfl_comparison.json)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per (n, d, f) in the agreement mode")
    args = parser.parse_args()
    Z = load_byzfl(args.byzfl, args.deps)
    if args.mode == "speed":
        run_speed(Z, args)
    else:
        run_agreement(Z, args)


if __name__ == "__main__":
    main()
