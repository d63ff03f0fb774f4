"""Every filter under every fault: the CGE paper's MNIST experiment (Figures 2 and 3).

    python benchmarks/cge_table.py [--rounds 500] [--per-rank 5] [--only cge,mean]

Setup of the CGE paper, Sections 3.1-3.4: LeNet on MNIST (d = 431,080),
n = 10 agents, batch k = 16, f = 1 faulty agent (agent 1 of the paper, id 0
here), step 0.1 for every filter, the faulty agent running each of the five
fault types, plus the fault-free run. Filters: plain mean (D-SGD), CGE,
geometric median, median of means, coordinate-wise trimmed mean, multi-Krum
with m = 2.

CGE's eq (7) sums the n - f kept gradients while the other filters average,
so at the common step 0.1 CGE would move 9 times further (it diverges on
LeNet: see the README). The paper's curves at step 0.1 match the average of
the kept gradients, which is CGE at step 0.1 / (n - f): that is what this
table runs.

Results are kept in benchmarks/results/cge_table.json, one cell at a time
(a rerun skips the cells already there, unless --fresh); the table is
printed in Markdown for the README.
"""

from __future__ import annotations

import argparse

from common import MNIST_DIR, accuracy_cell, machine, markdown_table, run_grid, save_json

N, F, STEP = 10, 1, 0.1

FILTERS = {  # column label -> extra arguments
    "mean": ["--aggregator.name", "mean"],
    "cge": ["--aggregator.name", "cge", "--optim.lr", str(STEP / (N - F))],
    "geomed": ["--aggregator.name", "geomed"],
    "mom": ["--aggregator.name", "mom"],
    "cwtm": ["--aggregator.name", "cwtm"],
    "multikrum (m=2)": ["--aggregator.name", "multikrum", "--aggregator.params.m", "2"],
}
FAULTS = ["none", "gradient_reverse", "coordinate_wise", "norm_confusing", "label_flip", "random"]
OUT = "cge_table.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--per-rank", type=int, default=5, help="agents per rank (10 agents)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated filter labels to run")
    parser.add_argument("--fresh", action="store_true", help="ignore cells already in the JSON")
    args = parser.parse_args()

    settings = {"rounds": args.rounds, "per_rank": args.per_rank, "seed": args.seed}
    wanted = [f for f in FILTERS if not args.only or f in args.only.split(",")]
    cells = {
        f"{label}|{fault}": [
            "--data.name", "mnist", "--data.root", str(MNIST_DIR),
            "--agents.n", str(N), "--agents.per_rank", str(args.per_rank), "--data.batch_size", "16",
            "--aggregator.f", str(F), "--optim.lr", str(STEP), *FILTERS[label],
            "--byzantine.fault", fault, "--byzantine.count", "1", "--byzantine.ids", "0",
            "--run.rounds", str(args.rounds), "--run.eval_every", str(max(1, args.rounds // 5)),
            "--run.seed", str(args.seed),
        ]
        for label in wanted for fault in FAULTS
    }
    results = run_grid(OUT, cells, nprocs=1 + -(-N // args.per_rank), settings=settings,
                       fresh=args.fresh)

    table = markdown_table(["fault \\ filter", *FILTERS],
                           [[fault, *[accuracy_cell(results.get(f"{label}|{fault}")) for label in FILTERS]]
                            for fault in FAULTS])
    print(f"\nfinal test accuracy (%) after {args.rounds} rounds, MNIST test set (10,000):\n")
    print(table)
    save_json(OUT, {
        "benchmark": "CGE paper Figures 2-3: filter x fault, LeNet-MNIST, n=10, k=16, f=1, step 0.1",
        "command": f"python benchmarks/cge_table.py --rounds {args.rounds} --per-rank {args.per_rank}",
        "machine": machine(), "cells": results, "table": table})


if __name__ == "__main__":
    main()
