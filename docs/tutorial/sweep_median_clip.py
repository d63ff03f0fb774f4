"""The tutorial's sweep: median_clip and three built-in rules, each under four faults (docs/tutorial.md).

    python docs/tutorial/sweep_median_clip.py [--rounds 100] [--check | --list-cells | --cell K | --merge]

Server mode, LeNet on the built-in MNIST digits (no download), n = 10
agents packed 5 to each of 2 agent ranks (3 ranks a cell), agents' faults
from the seed, every rule set to tolerate f = 2, step 0.1. Results go to
RESULTS/median_clip_sweep.json, RESULTS being benchmarks/results unless
MPISIM_RESULTS says otherwise. On SLURM, one cell per array task:

    launch/slurm/submit_sweep.sh docs/tutorial/sweep_median_clip.py --rounds 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import accuracy_cell, add_cluster_options, markdown_table, run_grid, save_json  # noqa: E402
from mpisim import plugins  # noqa: E402

PLUGIN = str(Path(__file__).resolve().parent / "median_clip.py")
RULES = ["median_clip", "cwtm", "median", "mean"]
FAULTS = ["none", "sign_flip", "alie", "ipm"]
N, F = 10, 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--fresh", action="store_true", help="ignore cells already in the JSON")
    parser.add_argument("--check", action="store_true", help="validate every job's configuration and exit")
    add_cluster_options(parser)
    args = parser.parse_args()
    # The jobs import the plugin themselves (--run.plugins); this process imports it too, so that
    # run_grid can check every cell's configuration, median_clip included, before any job starts.
    plugins.load([PLUGIN])
    job = ["--run.plugins", PLUGIN, "--agents.n", str(N), "--agents.per_rank", "5", "--aggregator.f", str(F),
           "--optim.lr", "0.1", "--run.rounds", str(args.rounds), "--run.eval_every", str(args.rounds)]
    cells = {f"{rule}|{fault}": [*job, "--aggregator.name", rule, "--byzantine.fault", fault,
                                 "--byzantine.count", str(F)]
             for rule in RULES for fault in FAULTS}
    results = run_grid("median_clip_sweep.json", cells, nprocs=3, settings={"rounds": args.rounds},
                       fresh=args.fresh, check_only=args.check)
    table = markdown_table(["fault \\ rule", *RULES],
                           [[fault, *[accuracy_cell(results.get(f"{rule}|{fault}")) for rule in RULES]]
                            for fault in FAULTS])
    print(f"\nfinal test accuracy (%) after {args.rounds} rounds, built-in test digits (2,000):\n\n{table}")
    save_json("median_clip_sweep.json", {"benchmark": "the tutorial's sweep of median_clip", "cells": results,
                                         "table": table})


if __name__ == "__main__":
    main()
