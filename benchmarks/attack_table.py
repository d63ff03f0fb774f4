"""Every rule against the strongest attacks in server mode: n = 10 agents, f = 2 faulty.

    python benchmarks/attack_table.py [--rounds 300] [--per-rank 5] [--only cge,cwtm]

LeNet on MNIST (d = 431,080), k = 16, agents 0 and 1 faulty, every rule set
to tolerate f = 2, step 0.1 on the mean scale (the rules that sum, cge, run
at 0.1 / (n - f)). Attacks: none, sign flipping, random Gaussian (std 200),
label flipping, ALIE, IPM (epsilon 0.1), mimic, and NaN messages. Bulyan is
left out: it needs n >= 4f + 3 = 11.

Results are kept in benchmarks/results/attack_table.json, one cell at a
time (a rerun skips the cells already there, unless --fresh); the table is
printed in Markdown for the README.
"""

from __future__ import annotations

import argparse

from common import MNIST_DIR, accuracy_cell, machine, markdown_table, run_grid, save_json

N, F, STEP = 10, 2, 0.1

RULES = {  # column label -> extra arguments
    "mean": ["--aggregator.name", "mean"],
    "cge": ["--aggregator.name", "cge", "--optim.lr", str(STEP / (N - F))],
    "cwtm": ["--aggregator.name", "cwtm"],
    "median": ["--aggregator.name", "median"],
    "meamed": ["--aggregator.name", "meamed"],
    "geomed": ["--aggregator.name", "geomed"],
    "mom": ["--aggregator.name", "mom"],
    "krum": ["--aggregator.name", "krum"],
    "multikrum": ["--aggregator.name", "multikrum"],
    "norm_threshold": ["--aggregator.name", "norm_threshold"],
    "cc": ["--aggregator.name", "cc"],
    "nnm+cwtm": ["--aggregator.name", "cwtm", "--aggregator.pre", "nnm"],
}
ATTACKS = ["none", "sign_flip", "random", "label_flip", "alie", "ipm", "mimic", "nan"]
OUT = "attack_table.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--per-rank", type=int, default=5, help="agents per rank (10 agents)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated rule labels to run")
    parser.add_argument("--fresh", action="store_true", help="ignore cells already in the JSON")
    args = parser.parse_args()

    settings = {"rounds": args.rounds, "per_rank": args.per_rank, "seed": args.seed}
    wanted = [r for r in RULES if not args.only or r in args.only.split(",")]
    cells = {
        f"{rule}|{attack}": [
            "--data.name", "mnist", "--data.root", str(MNIST_DIR),
            "--agents.n", str(N), "--agents.per_rank", str(args.per_rank), "--data.batch_size", "16",
            "--aggregator.f", str(F), "--optim.lr", str(STEP), *RULES[rule],
            "--byzantine.fault", attack, "--byzantine.count", str(F), "--byzantine.ids", "0,1",
            "--run.rounds", str(args.rounds), "--run.eval_every", str(max(1, args.rounds // 5)),
            "--run.seed", str(args.seed),
        ]
        for rule in wanted for attack in ATTACKS
    }
    results = run_grid(OUT, cells, nprocs=1 + -(-N // args.per_rank), settings=settings,
                       fresh=args.fresh)

    table = markdown_table(["attack \\ rule", *RULES],
                           [[attack, *[accuracy_cell(results.get(f"{rule}|{attack}")) for rule in RULES]]
                            for attack in ATTACKS])
    print(f"\nfinal test accuracy (%) after {args.rounds} rounds, MNIST test set (10,000):\n")
    print(table)
    save_json(OUT, {
        "benchmark": "rule x attack, LeNet-MNIST, n=10, f=2 (agents 0 and 1), k=16, step 0.1 (mean scale)",
        "command": f"python benchmarks/attack_table.py --rounds {args.rounds} --per-rank {args.per_rank}",
        "machine": machine(), "cells": results, "table": table})


if __name__ == "__main__":
    main()
