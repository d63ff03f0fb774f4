"""A sweep of two tiny cells, to try launch/slurm/sweep.sbatch end to end (the SLURM tests run it).

    python launch/slurm/examples/tiny_sweep.py [--rounds 3] [--list-cells | --cell K | --merge]

Least squares on synthetic data (300 samples, d = 20), 4 agents, 2 a rank,
one of them faulty (gradient reverse), on 3 ranks; the cells differ only in
the filter (cge, cwtm). Results go to RESULTS/tiny_sweep.json, RESULTS being
benchmarks/results unless MPISIM_RESULTS says otherwise. A real sweep
script (benchmarks/*.py) has the same shape: cells, run_grid, a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from common import add_cluster_options, markdown_table, run_grid, save_json  # noqa: E402

FILTERS = ("cge", "cwtm")


def keep(summary: dict, records: list[dict]) -> dict:
    return {"final_test_accuracy": None, "distance_to_optimum": summary["final"]["distance_to_optimum"],
            "world_size": summary["world_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="ignore cells already in the JSON")
    parser.add_argument("--check", action="store_true", help="validate every job's configuration and exit")
    add_cluster_options(parser)
    args = parser.parse_args()
    job = ["--data.name", "synthetic_regression", "--data.params.samples", "300", "--data.params.dim", "20",
           "--model.name", "least_squares", "--agents.n", "4", "--agents.per_rank", "2",
           "--run.rounds", str(args.rounds), "--run.eval_every", "1"]
    cells = {name: [*job, "--aggregator.name", name] for name in FILTERS}
    results = run_grid("tiny_sweep.json", cells, nprocs=3, settings={"rounds": args.rounds}, fresh=args.fresh,
                       keep=keep, check_only=args.check)
    table = markdown_table(["filter", "||w - w*||", "ranks"],
                           [[name, f"{results[name]['distance_to_optimum']:.4g}" if name in results else "-",
                             results[name]["world_size"] if name in results else "-"] for name in FILTERS])
    print(f"\n{table}")
    save_json("tiny_sweep.json", {"benchmark": "tiny sweep", "cells": results, "table": table})


if __name__ == "__main__":
    main()
