"""Cells per hour of ``mpisim sweep``: one ``mpiexec`` per cell against many cells per job (``--block``).

    python benchmarks/bench_sweep.py [--cells 6] [--ranks 11] [--rounds 20] [--pairs 2]

A grid of small server-mode cells (LeNet on the built-in mnist-small, 10
agents, one a rank with 11 ranks, ``--rounds`` rounds, seeds 0..cells-1) is
run whole, alternately with ``block = 1`` (every cell its own job: every rank
imports torch and reads the data again) and ``block = cells`` (one job), in
fresh directories, ``--pairs`` times; the time of each whole sweep is
measured from the outside. The models of the two ways are checked equal
(bit for bit). Saves benchmarks/results/sweep_blocks.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, machine, markdown_table, save_json

GRID = """
[sweep]
mode = "server"
ranks = {ranks}
seeds = {seeds}

[base]
data.name = "mnist-small"
model.name = "lenet"
agents.n = 10
agents.per_rank = {per_rank}
aggregator.name = "cwtm"
aggregator.f = 1
byzantine.fault = "alie"
byzantine.count = 1
run.rounds = {rounds}
run.eval_every = {rounds}
run.save_model = true
"""


def sweep(grid: Path, out: Path, block: int) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mpisim.sweep", str(grid), "--out-dir", str(out), "--block",
                           str(block)], cwd=ROOT, capture_output=True, text=True, timeout=7200,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{done.stdout}\n{done.stderr}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=6)
    parser.add_argument("--ranks", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    per_rank = -(-10 // (args.ranks - 1))
    times: dict[str, list[float]] = {"one job per cell": [], "one job": []}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        grid = Path(tmp) / "grid.toml"
        grid.write_text(GRID.format(ranks=args.ranks, seeds=list(range(args.cells)), per_rank=per_rank,
                                    rounds=args.rounds))
        for pair in range(args.pairs):
            for label, block in (("one job per cell", 1), ("one job", args.cells)):
                out = Path(tmp) / f"{block}-{pair}"
                times[label].append(sweep(grid, out, block))
                print(f"  {label:<17} pair {pair}: {times[label][-1]:.1f} s", flush=True)
        models = {}
        for block in (1, args.cells):
            runs = sorted((Path(tmp) / f"{block}-0").glob("*/model.npy"))
            models[block] = [np.load(p) for p in runs]
        same = all(np.array_equal(a, b) for a, b in zip(models[1], models[args.cells]))
        if not same or len(models[1]) != args.cells:
            raise SystemExit("the two ways gave different models")
    rows, per_hour = [], {}
    for label, walls in times.items():
        median = statistics.median(walls)
        per_hour[label] = 3600 * args.cells / median
        rows.append([label, ", ".join(f"{w:.1f}" for w in walls), f"{median / args.cells:.2f}",
                     f"{per_hour[label]:.0f}"])
    ratio = per_hour["one job"] / per_hour["one job per cell"]
    table = markdown_table(["launch", "whole sweep (s), each pair", "s per cell", "cells per hour"], rows)
    print(table)
    print(f"\none job: {ratio:.2f}x the cells per hour; models equal bit for bit")
    path = save_json("sweep_blocks.json", {
        "benchmark": __doc__.split("\n\n")[0],
        "command": f"python benchmarks/bench_sweep.py --cells {args.cells} --ranks {args.ranks} "
                   f"--rounds {args.rounds} --pairs {args.pairs}",
        "machine": machine(), "times": times, "cells_per_hour": per_hour, "ratio": ratio, "table": table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
