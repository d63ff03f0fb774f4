"""Gradient averaging against coordinate-wise faults: the CGE paper's Section 3.5 on MNIST.

    python benchmarks/averaging_table.py [--rounds 500] [--per-rank 5] [--only cge,cwtm]

The paper's Figures 13-14 (MNIST): LeNet, n = 10 agents, batch k = 16, f
faulty agents (ids 0..f-1) sending coordinate-wise faults, the server
filtering the exponential averages h_i <- alpha h_i + (1 - alpha) g_i of
eq (25) instead of the raw gradients, for alpha in {0, 0.2, 0.4, 0.6}. Under
these faults the learning curves without averaging are erratic (Figure
2(b)); the paper reports that averaging steadies them, more so as alpha
grows. Filters: CGE (at step 0.1 / (n - f) on its sum, as in cge_table.py),
multi-Krum with m = 2 (the paper's Figure 13) and the coordinate-wise
trimmed mean; f in {1, 2}.

Each cell keeps the final test accuracy and the lowest one over the second
half of the run (evaluations every rounds / 10), which is where a dive
shows. Results: benchmarks/results/averaging_table.json (resumable).
"""

from __future__ import annotations

from common import made_by, markdown_table, run_grid, save_json, server_job, sweep_parser

N, STEP = 10, 0.1
ALPHAS = [0.0, 0.2, 0.4, 0.6]
FAULTS = [1, 2]
FILTERS = {  # label -> arguments for f faulty agents
    "cge": lambda f: ["--aggregator.name", "cge", "--optim.lr", str(STEP / (N - f))],
    "multikrum (m=2)": lambda f: ["--aggregator.name", "multikrum", "--aggregator.params.m", "2"],
    "cwtm": lambda f: ["--aggregator.name", "cwtm"],
}


def keep(summary: dict, records: list[dict]) -> dict:
    rounds = summary["rounds"]
    late = [r["test_accuracy"] for r in records if r["round"] >= rounds // 2]
    late = [a for a in late if a is not None]
    return {
        "final_test_accuracy": summary["final"]["test_accuracy"],
        "lowest_second_half": min(late) if late else None,
        "rounds_per_second": summary["rounds_per_second"],
        "curve": [(r["round"], r["test_accuracy"]) for r in records],
    }


def cell_text(result: dict | None) -> str:
    if result is None:
        return "-"
    final, low = result["final_test_accuracy"], result["lowest_second_half"]
    if final is None or low is None:
        return "diverged"
    return f"{100 * final:.1f} / {100 * low:.1f}"


def main() -> None:
    args = sweep_parser(__doc__.split("\n\n")[0], n=N, default_rounds=500, only="filter").parse_args()
    wanted = [name for name in FILTERS if not args.only or name in args.only.split(",")]
    cells = {
        f"{name}|f={f}|alpha={alpha}": server_job(
            args, n=N, f=f, step=STEP, fault="coordinate_wise", evaluations=10,
            extra=[*FILTERS[name](f), "--aggregator.averaging", str(alpha)])
        for name in wanted for f in FAULTS for alpha in ALPHAS
    }
    settings = {"rounds": args.rounds, "per_rank": args.per_rank, "seed": args.seed}
    results = run_grid("averaging_table.json", cells, nprocs=1 + -(-N // args.per_rank),
                       settings=settings, fresh=args.fresh, keep=keep,
                       check_only=args.check)
    table = markdown_table(
        ["filter", "f", *[f"alpha = {alpha}" for alpha in ALPHAS]],
        [[name, f, *[cell_text(results.get(f"{name}|f={f}|alpha={alpha}")) for alpha in ALPHAS]]
         for name in FILTERS for f in FAULTS])
    print(f"\nfinal / lowest test accuracy (%) over rounds {args.rounds // 2}-{args.rounds}, "
          f"coordinate-wise faults, MNIST test set (10,000):\n\n{table}")
    save_json("averaging_table.json", {
        "benchmark": __doc__.split("\n\n")[0],
        "command": f"python benchmarks/averaging_table.py --rounds {args.rounds} --per-rank {args.per_rank}",
        "made_on": made_by(results), "cells": results, "table": table})


if __name__ == "__main__":
    main()
