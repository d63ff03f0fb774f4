"""Time every aggregation rule of mpisim.rules.aggregators on one CPU thread.

    .venv/bin/python benchmarks/bench_aggregators.py            # full grid
    .venv/bin/python benchmarks/bench_aggregators.py --quick    # small subset

Grid: n in {10, 50, 100} rows, d in {10^4, 431,080, 10^6} columns (431,080
is the CGE paper's LeNet on MNIST), float32 standard-normal
rows. f = floor((n - 1) / 4), lowered to the largest f the rule accepts where
it accepts less (bulyan: n >= 4f + 3). Each time is the median of several
calls after one warm-up call. A combination whose warm-up call exceeds the
time budget, or whose estimated memory exceeds the memory budget, is skipped
and reported as such.

Writes PREFIX.json (atomically) and PREFIX.png (time vs n*d, log-log), with
PREFIX = benchmarks/results/aggregators (aggregators_quick for --quick), and
prints a table plus the exponents of a least-squares fit
log t = a + b log n + c log d for every rule.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine  # noqa: E402
from mpisim.metrics import atomic_write  # noqa: E402
from mpisim.rules import aggregators as A  # noqa: E402

FULL_N = (10, 50, 100)
FULL_D = (10_000, 431_080, 1_000_000)
QUICK_N = (10, 50)
QUICK_D = (10_000, 100_000)
PRE_STEPS = ("nnm", "bucketing")          # timed too, as "pre:<name>"

# Extra memory a call allocates, in multiples of the input's size (rough
# upper bounds from the implementation), for the memory budget.
EXTRA_COPIES = {"nnm": 2.0, "bucketing": 1.5, "cc": 2.0, "bulyan": 1.0, "mom": 0.5}


def choose_f(check, n: int) -> int:
    """floor((n - 1) / 4), or the largest f that ``check(n, f)`` accepts if smaller."""
    f = (n - 1) // 4
    while f > 0 and check(n, f) is not None:
        f -= 1
    return f


def time_call(fn, *, budget_s: float, min_reps: int, max_reps: int) -> tuple[list[float], str]:
    """Warm up once, then time repetitions; returns (times in ms, status)."""
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    if warm > budget_s:
        return [warm * 1e3], f"skipped: warm-up took {warm:.1f} s > budget {budget_s:.0f} s"
    reps = int(min(max_reps, max(min_reps, 2.0 / max(warm, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, "ok"


def fit_exponents(rows: list[dict]) -> dict:
    """Least-squares fit of log t = a + b log n + c log d per rule."""
    fits = {}
    for rule in sorted({r["rule"] for r in rows}):
        pts = [r for r in rows if r["rule"] == rule and r["status"] == "ok"]
        ns = {r["n"] for r in pts}
        ds = {r["d"] for r in pts}
        if len(ns) < 2 or len(ds) < 2:
            continue
        X = np.array([[1.0, math.log(r["n"]), math.log(r["d"])] for r in pts])
        y = np.array([math.log(r["median_ms"]) for r in pts])
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        fits[rule] = {"exp_n": round(float(coef[1]), 2), "exp_d": round(float(coef[2]), 2)}
    return fits


def plot(rows: list[dict], path: Path) -> None:
    """One log-log panel per rule: time vs n*d, one line per n (shared axes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    rules = sorted({r["rule"] for r in ok})
    ns = sorted({r["n"] for r in ok})
    cols = 4
    nrows = max(1, math.ceil(len(rules) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows),
                             sharex=True, sharey=True, squeeze=False)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(ns), 1)))
    for ax, rule in zip(axes.flat, rules):
        for colour, n in zip(colours, ns):
            pts = sorted((r["n"] * r["d"], r["median_ms"]) for r in ok
                         if r["rule"] == rule and r["n"] == n)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=4, lw=1.2, color=colour, label=f"n={n}")
        ax.set_title(rule, fontsize=10)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(rules):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("n * d")
    for ax in axes[:, 0]:
        ax.set_ylabel("ms per call")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("mpisim.rules.aggregators: time per call (median, 1 thread) vs n * d")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small subset: n in {10, 50}, d in {1e4, 1e5}")
    ap.add_argument("--out", type=Path, default=None,
                    help="output prefix (default benchmarks/results/aggregators[_quick])")
    ap.add_argument("--rules", nargs="*", default=None,
                    help="only these rules, e.g. cwtm median pre:nnm (default: all, and both pre steps)")
    ap.add_argument("--budget-s", type=float, default=30.0,
                    help="skip the repetitions of a combination whose warm-up call takes longer")
    ap.add_argument("--mem-budget-gb", type=float, default=8.0,
                    help="skip combinations whose estimated memory use exceeds this")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    if load > 1.0:
        print(f"warning: load average {load:.2f} at start; other processes will inflate the "
              f"times (this benchmark uses one core)", file=sys.stderr)
    ns, ds = (QUICK_N, QUICK_D) if args.quick else (FULL_N, FULL_D)
    prefix = args.out or ROOT / "benchmarks" / "results" / ("aggregators_quick" if args.quick
                                                            else "aggregators")
    wanted = args.rules or sorted(A.REGISTRY) + [f"pre:{p}" for p in PRE_STEPS]
    unknown = [r for r in wanted if r not in A.REGISTRY and r.removeprefix("pre:") not in A.PRE_REGISTRY]
    if unknown:
        ap.error(f"unknown rule {unknown[0]!r}; known: {', '.join(sorted(A.REGISTRY))}, "
                 f"{', '.join('pre:' + p for p in sorted(A.PRE_REGISTRY))}")
    rules = [r for r in wanted if r in A.REGISTRY]
    pres = [r.removeprefix("pre:") for r in wanted if r.startswith("pre:")]

    machine_info_at_start = {**machine(), "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
                             "load_average_at_start": os.getloadavg()}
    rows = []
    header = f"{'rule':16s} {'n':>4s} {'d':>9s} {'f':>3s} {'median ms':>11s} {'reps':>4s}  status"
    print(header)
    print("-" * len(header))
    for n in ns:
        for d in ds:
            gen = torch.Generator().manual_seed(n * 1_000_003 + d)
            x = torch.randn(n, d, generator=gen)
            # The jobs read x when they are called, all before the `del x` below (which is what F821 sees).
            jobs = []
            for r in rules:
                f = choose_f(A.REGISTRY[r].check, n)
                jobs.append((r, f, lambda r=r, f=f: A.REGISTRY[r](x, f=f)))  # noqa: F821
            for p in pres:
                f = choose_f(A.PRE_REGISTRY[p].check, n)
                rng = torch.Generator().manual_seed(0)
                jobs.append((f"pre:{p}", f, lambda p=p, f=f, rng=rng: A.PRE_REGISTRY[p](x, f=f, rng=rng)))  # noqa: F821
            for name, f, call in jobs:
                base = name.split(":")[-1]
                mem_gb = n * d * 4 * (1 + EXTRA_COPIES.get(base, 0.25)) / 1e9
                if mem_gb > args.mem_budget_gb:
                    times, status = [], f"skipped: estimated {mem_gb:.1f} GB > {args.mem_budget_gb} GB"
                else:
                    times, status = time_call(call, budget_s=args.budget_s, min_reps=3, max_reps=15)
                med = statistics.median(times) if times else None
                rows.append({"rule": name, "n": n, "d": d, "f": f, "status": status,
                             "median_ms": med, "times_ms": [round(v, 3) for v in times]})
                shown = f"{med:11.2f}" if med is not None else f"{'-':>11s}"
                print(f"{name:16s} {n:4d} {d:9d} {f:3d} {shown} {len(times):4d}  {status}", flush=True)
            del x

    fits = fit_exponents(rows)
    if fits:
        print("\nfitted growth exponents (log t = a + b log n + c log d):")
        for rule, e in fits.items():
            print(f"  {rule:16s} n^{e['exp_n']:<5} d^{e['exp_d']}")

    payload = {
        "benchmark": "mpisim.rules.aggregators time per call",
        "command": " ".join(["benchmarks/bench_aggregators.py"] + (argv if argv is not None else sys.argv[1:])),
        "machine": {**machine_info_at_start, "load_average_at_end": os.getloadavg()},
        "f_policy": "floor((n-1)/4), lowered to the largest f the rule accepts",
        "data": "float32 standard normal, torch.randn seeded per (n, d)",
        "timing": "median of 3-15 calls (about 2 s worth) after one warm-up call",
        "grid": {"n": list(ns), "d": list(ds)},
        "results": rows,
        "fits": fits,
    }
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = prefix.with_suffix(".json")
    atomic_write(json_path, json.dumps(payload, indent=1) + "\n")
    png_path = prefix.with_suffix(".png")
    plot(rows, png_path)
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
