"""The coordinate-wise rules (and Krum) against ByzFL's, in one session, on one thread.

    pip download --no-deps byzfl==0.0.11 -d /tmp/byzfl && python -m zipfile -e /tmp/byzfl/*.whl /tmp/byzfl/pkg
    pip install --target /tmp/byzfl/deps scipy          # what its aggregators import, kept out of .venv
    .venv/bin/python benchmarks/compare_byzfl.py --byzfl /tmp/byzfl/pkg --deps /tmp/byzfl/deps

ByzFL (EPFL's Byzantine-robust FL library, https://github.com/LPD-EPFL/byzfl)
is loaded from an unpacked wheel without its package ``__init__`` (which
imports torchvision for its federated framework), so that only its
aggregators run. Grid: the rule benchmark's, n in {10, 50, 100} and d in
{10^4, 431,080, 10^6}, float32 standard-normal rows, f = floor((n - 1) / 4).
For every size the calls alternate (ours, theirs with torch tensors, theirs
with numpy arrays, one memory pass) for ``--rounds`` rounds and each time is
the median; "best" is the faster of ByzFL's two back ends. The memory pass
is a sum of the rows (numpy's reduction along axis 0: every entry read once).

Pairs: cwtm / TrMean(f), median / Median, meamed / Meamed(f) (the same
definitions: TrMean sorts each column and averages the middle n - 2f, Median
takes numpy's or torch's median (torch's is the lower middle value for even
n, ours and numpy's the midpoint), Meamed averages the n - f values closest
to the median), and krum / Krum(f) with neighbours n - f - 1 (ByzFL's count).

Prints a table and saves benchmarks/results/byzfl_comparison.json.
"""

from __future__ import annotations

import argparse
import importlib
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

GRID_N, GRID_D = (10, 50, 100), (10_000, 431_080, 1_000_000)


def load_byzfl(root: Path, deps: Path | None):
    """ByzFL's aggregators module, imported without running the package's __init__."""
    if deps is not None:
        sys.path.insert(0, str(deps))
    package = types.ModuleType("byzfl")
    package.__path__ = [str(root / "byzfl")]
    sys.modules["byzfl"] = package
    return importlib.import_module("byzfl.aggregators.aggregators")


def pairs(B, f: int) -> dict:
    """rule -> (ours, theirs): each a function of the (torch, numpy) block."""
    return {
        "cwtm": (lambda x: A.cwtm(x, f=f), B.TrMean(f=f)),
        "median": (lambda x: A.median(x, f=f), B.Median()),
        "meamed": (lambda x: A.meamed(x, f=f), B.Meamed(f=f)),
        "krum": (lambda x: A.krum(x, f=f, neighbours="n-f-1"), B.Krum(f=f)),
    }


def timed(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return 1e3 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--byzfl", type=Path, required=True, help="directory of the unpacked ByzFL wheel")
    parser.add_argument("--deps", type=Path, default=None, help="directory with scipy (pip --target)")
    parser.add_argument("--rounds", type=int, default=5, help="alternated calls of each per size")
    parser.add_argument("--rules", default="cwtm,median,meamed,krum")
    parser.add_argument("--n", default=",".join(map(str, GRID_N)), help="row counts (default: the grid's)")
    args = parser.parse_args()
    B = load_byzfl(args.byzfl, args.deps)
    torch.set_num_threads(1)
    wanted = args.rules.split(",")
    rows = []
    for n, d in [(n, d) for n in map(int, args.n.split(",")) for d in GRID_D]:
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(n * 1_000_003 + d))
        xn = x.numpy()
        f = (n - 1) // 4
        calls = pairs(B, f)
        for rule in wanted:
            ours, theirs = calls[rule]
            # The same result first: every column but those where an exact tie between two values
            # equally far from the median is broken another way (meamed; about 1 in 10^6).
            got, ref = ours(x), torch.as_tensor(np.asarray(theirs(xn)), dtype=torch.float32)
            differ = int((~torch.isclose(got, ref, rtol=1e-4, atol=1e-5)).sum())
            if differ > d // 10**5:
                raise SystemExit(f"{rule} at n={n}, d={d}: {differ} columns differ from ByzFL's")
            for fn, arg in ((ours, x), (theirs, x), (theirs, xn)):
                fn(arg)  # warm-up
            times = {"ours": [], "byzfl_torch": [], "byzfl_numpy": [], "pass": []}
            for _ in range(args.rounds):
                times["ours"].append(timed(ours, x))
                times["byzfl_torch"].append(timed(theirs, x))
                times["byzfl_numpy"].append(timed(theirs, xn))
                times["pass"].append(timed(lambda a: np.add.reduce(a, axis=0), xn))
            med = {k: statistics.median(v) for k, v in times.items()}
            best = min(med["byzfl_torch"], med["byzfl_numpy"])
            rows.append({"rule": rule, "n": n, "d": d, "f": f, **{f"{k}_ms": v for k, v in med.items()},
                         "byzfl_best_ms": best, "speedup": best / med["ours"],
                         "vs_memory_pass": med["ours"] / med["pass"]})
            r = rows[-1]
            print(f"  {rule:7s} n={n:3d} d={d:9,d}: ours {r['ours_ms']:8.1f} ms, ByzFL {best:8.1f} ms "
                  f"({r['speedup']:.1f}x), {r['vs_memory_pass']:.1f} memory passes", flush=True)
        del x, xn
    header = ["rule", "n", "d", "ours ms", "ByzFL torch ms", "ByzFL numpy ms", "speed-up vs best",
              "ours / one memory pass"]
    table = markdown_table(header, [[r["rule"], r["n"], f"{r['d']:,}", f"{r['ours_ms']:.1f}",
                                     f"{r['byzfl_torch_ms']:.1f}", f"{r['byzfl_numpy_ms']:.1f}",
                                     f"{r['speedup']:.1f}x", f"{r['vs_memory_pass']:.1f}"] for r in rows])
    print(table)
    path = save_json("byzfl_comparison.json", {
        "benchmark": "coordinate-wise rules and krum against ByzFL 0.0.11, one thread",
        "command": "python benchmarks/compare_byzfl.py --byzfl DIR --deps DIR "
                   f"--rounds {args.rounds} --rules {args.rules} --n {args.n}",
        "machine": {**machine(), "load_average": os.getloadavg()}, "results": rows, "table": table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
