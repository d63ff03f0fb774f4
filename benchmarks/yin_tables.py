"""Yin et al. 2018, Tables 2-4: robust distributed GD and the robust one-round algorithm on MNIST.

    python benchmarks/yin_tables.py table2 [--seeds 3] [--lr 0.04] [--rounds 1000]
    python benchmarks/yin_tables.py table3 [--seeds 3] [--lr 0.1] [--rounds 500]
    python benchmarks/yin_tables.py table4 [--seeds 3] [--l2 1e-4]
    python benchmarks/yin_tables.py sweep2 [--seeds 3] [--rounds 300]   # Table 2's cells against the step size
    python benchmarks/yin_tables.py sweep3 [--seeds 1] [--rounds 200]   # Table 3's cells against the step size
    python benchmarks/yin_tables.py sweep4 [--seeds 1]                  # Table 4's cells against erm.l2

Yin et al., Section 7: MNIST's 60,000 training digits split at random into
m equal shards; Byzantine workers chosen at random (here: drawn from the
seed). Table 2: multinomial logistic regression, full-batch GD
(Algorithm 1), m = 40, 2 label-flipping workers (y -> 9 - y), trimmed mean
with beta = 0.05. Table 3: a CNN, each worker's gradient on 10% of its data
drawn afresh every iteration, m = 10, 1 label-flipping worker, beta = 0.1.
Table 4: the one-round algorithm (Algorithm 2), logistic regression,
m = 10, 1 worker training on i.i.d. uniform random labels. Every cell is
run over seeds 0.. (partition, Byzantine ids, initial model for the CNN);
the table gives mean +- standard deviation over the seeds, beside the
paper's number. Choices the paper leaves open are the options above; the
README states the ones used.

Results go to benchmarks/results/yin_table{2,3,4}.json and
yin_sweep{2,3,4}.json (resumable, one cell at a time; --check validates every
job and stops).
"""

from __future__ import annotations

import argparse
import statistics

from common import MNIST_DIR, add_cluster_options, made_by, markdown_table, run_grid, save_json

PAPER = {
    "table2": {"mean, no fault": 88.0, "mean": 76.8, "median": 87.2, "trimmed mean": 86.9},
    "table3": {"mean, no fault": 94.3, "mean": 77.3, "median": 87.4, "trimmed mean": 90.7},
    "table4": {"mean, no fault": 91.8, "mean": 83.7, "median": 89.0},
}


def gd_settings(m: int, faulty: int, beta: float) -> dict[str, list[str]]:
    """Algorithm 1's four settings: mean without faults, then mean / median / trimmed mean with them."""
    fault = ["--byzantine.fault", "label_flip", "--byzantine.count", str(faulty)]
    return {
        "mean, no fault": ["--aggregator.name", "mean", "--aggregator.f", "0", "--byzantine.fault", "none"],
        "mean": ["--aggregator.name", "mean", "--aggregator.f", "0", *fault],
        "median": ["--aggregator.name", "median", "--aggregator.f", str(faulty), *fault],
        "trimmed mean": ["--aggregator.name", "trimmed_mean", "--aggregator.f", str(faulty),
                         "--aggregator.params.beta", str(beta), *fault],
    }


def one_round_settings() -> dict[str, list[str]]:
    fault = ["--byzantine.fault", "random_labels", "--byzantine.count", "1"]
    return {
        "mean, no fault": ["--aggregator.name", "mean", "--aggregator.f", "0", "--byzantine.fault", "none"],
        "mean": ["--aggregator.name", "mean", "--aggregator.f", "0", *fault],
        "median": ["--aggregator.name", "median", "--aggregator.f", "1", *fault],
    }


def table2_job(args, lr: float, rounds: int) -> list[str]:
    return ["--data.name", "mnist", "--data.root", str(MNIST_DIR), "--model.name", "logreg",
            "--model.init", "zero", "--data.batch_size", "0", "--agents.n", "40", "--agents.per_rank",
            str(-(-40 // (args.ranks - 1))), "--optim.lr", str(lr), "--run.rounds", str(rounds),
            "--run.eval_every", str(max(1, rounds // 10))]


def table3_job(args, lr: float) -> list[str]:
    return ["--data.name", "mnist", "--data.root", str(MNIST_DIR), "--model.name", args.model,
            "--data.batch_fraction", "0.1", "--agents.n", "10", "--agents.per_rank",
            str(-(-10 // (args.ranks - 1))), "--optim.lr", str(lr), "--run.rounds", str(args.rounds),
            "--run.eval_every", str(max(1, args.rounds // 10))]


def table4_job(args, l2: float) -> list[str]:
    return ["--data.name", "mnist", "--data.root", str(MNIST_DIR), "--model.name", "logreg",
            "--model.init", "zero", "--agents.n", "10", "--agents.per_rank", str(-(-10 // (args.ranks - 1))),
            "--erm.l2", str(l2), "--erm.tol", str(args.tol), "--erm.max_iter", str(args.max_iter)]


def keep(summary: dict, records: list[dict]) -> dict:
    out = {"final_test_accuracy": summary["final"]["test_accuracy"],
           "final_test_loss": summary["final"]["test_loss"],
           "rounds_per_second": summary["rounds_per_second"], "loop_seconds": summary["loop_seconds"],
           "byzantine_ids": summary["byzantine_ids"],
           "curve": [(r["round"], r["test_accuracy"]) for r in records]}
    if "erm" in summary:
        honest = [e for i, e in enumerate(summary["erm"]) if i not in summary["byzantine_ids"]]
        out["erm_max_grad_norm_honest"] = summary["erm_max_grad_norm_honest"]
        out["erm_converged_honest"] = summary["erm_all_converged_honest"]
        out["erm_norm_honest_median"] = statistics.median(e["norm"] for e in honest)
        out["erm_norm_byzantine"] = [summary["erm"][i]["norm"] for i in summary["byzantine_ids"]]
    return out


def spread(results: dict, key: str, seeds: int) -> tuple[str, list[float]]:
    """'mean +- std' in % over the seeds that have a result, and the values."""
    values = [100 * results[f"{key}|seed {s}"]["final_test_accuracy"] for s in range(seeds)
              if f"{key}|seed {s}" in results and results[f"{key}|seed {s}"]["final_test_accuracy"] is not None]
    if not values:
        return "-", []
    text = f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")
    return text, values


# The options each command uses: a cell is run again when one of them changes.
USES = {"table2": ("ranks", "lr", "rounds"), "table3": ("ranks", "lr", "rounds", "model"),
        "table4": ("ranks", "l2", "tol", "max_iter"), "sweep2": ("ranks", "rounds"),
        "sweep3": ("ranks", "rounds", "model"), "sweep4": ("ranks", "tol", "max_iter")}


def _setup(args) -> dict:
    return {k: getattr(args, k) for k in USES[args.command]}


def run_table(args, name: str, settings: dict[str, list[str]], job: list[str], module: str) -> None:
    cells = {f"{label}|seed {s}": [*job, *extra, "--run.seed", str(s)]
             for s in range(args.seeds) for label, extra in settings.items()}
    setup = _setup(args)
    results = run_grid(f"yin_{name}.json", cells, nprocs=args.ranks, settings=setup, fresh=args.fresh,
                       module=module, keep=keep, check_only=args.check)
    rows = []
    for label in settings:
        text, values = spread(results, label, args.seeds)
        paper = PAPER[name][label]
        gap = f"{statistics.mean(values) - paper:+.1f}" if values else "-"
        rows.append([label, text, len(values), paper, gap])
    table = markdown_table(["setting", "accuracy % (mean ± std over seeds)", "seeds", "paper", "ours - paper"],
                           rows)
    seconds = [r["loop_seconds"] for r in results.values()]
    print(f"\n{name}, {setup}:\n\n{table}\n\n{len(seconds)} runs, {sum(seconds):.0f} s of rounds in all")
    save_json(f"yin_{name}.json", {
        "benchmark": f"Yin et al. {name}", "command": f"python benchmarks/yin_tables.py {args.command} "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in setup.items()),
        "made_on": made_by(results), "settings": setup, "cells": results, "table": table})


def run_sweep(args, name: str, values: list, make_job, settings: dict[str, list[str]], module: str,
              label: str) -> None:
    cells = {f"{label} {v}|{setting}|seed {s}": [*make_job(v), *extra, "--run.seed", str(s)]
             for v in values for setting, extra in settings.items() for s in range(args.seeds)}
    setup = _setup(args)
    results = run_grid(f"yin_{name}.json", cells, nprocs=args.ranks, settings=setup, fresh=args.fresh,
                       module=module, keep=keep, check_only=args.check)
    rows = [[f"{label} = {v}", *[spread(results, f"{label} {v}|{setting}", args.seeds)[0] for setting in settings]]
            for v in values]
    table = markdown_table([label, *settings], rows)
    print(f"\n{name} (accuracy %, mean ± std over {args.seeds} seeds):\n\n{table}")
    save_json(f"yin_{name}.json", {
        "benchmark": f"Yin et al. {name}", "command": f"python benchmarks/yin_tables.py {args.command} "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in setup.items()),
        "made_on": made_by(results), "settings": setup, "cells": results, "table": table})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["table2", "table3", "table4", "sweep2", "sweep3", "sweep4"])
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (3; sweep3, sweep4: 1)")
    parser.add_argument("--ranks", type=int, default=3, help="MPI ranks: 1 server + agent ranks (packed)")
    parser.add_argument("--lr", type=float, default=None, help="step size (table2: 0.04 = 1/L_F; table3: 0.1)")
    parser.add_argument("--rounds", type=int, default=None, help="iterations (table2: 1000; table3: 500; "
                                                                   "sweep2: 300; sweep3: 200)")
    parser.add_argument("--model", default="cnn", help="table3: the CNN (mpisim model name)")
    parser.add_argument("--l2", type=float, default=1e-4, help="table4: the local ERMs' l2 penalty")
    parser.add_argument("--tol", type=float, default=1e-5, help="table4: L-BFGS gradient-norm tolerance")
    parser.add_argument("--max-iter", type=int, default=1000, help="table4: L-BFGS iteration cap")
    parser.add_argument("--fresh", action="store_true", help="ignore cells already in the JSON")
    parser.add_argument("--check", action="store_true", help="validate every job's configuration and exit")
    add_cluster_options(parser)
    args = parser.parse_args()
    args.seeds = args.seeds or (1 if args.command in ("sweep3", "sweep4") else 3)
    if args.command == "table2":
        args.lr, args.rounds = args.lr or 0.04, args.rounds or 1000
        run_table(args, "table2", gd_settings(40, 2, 0.05), table2_job(args, args.lr, args.rounds),
                  "mpisim.server_mode")
    elif args.command == "table3":
        args.lr, args.rounds = args.lr or 0.1, args.rounds or 500
        run_table(args, "table3", gd_settings(10, 1, 0.1), table3_job(args, args.lr), "mpisim.server_mode")
    elif args.command == "table4":
        run_table(args, "table4", one_round_settings(), table4_job(args, args.l2), "mpisim.one_round")
    elif args.command == "sweep2":
        args.rounds = args.rounds or 300
        run_sweep(args, "sweep2", [0.01, 0.04, 0.1, 0.3, 1.0], lambda lr: table2_job(args, lr, args.rounds),
                  gd_settings(40, 2, 0.05), "mpisim.server_mode", "lr")
    elif args.command == "sweep3":
        args.rounds = args.rounds or 200
        run_sweep(args, "sweep3", [0.03, 0.1, 0.3, 1.0], lambda lr: table3_job(args, lr),
                  gd_settings(10, 1, 0.1), "mpisim.server_mode", "lr")
    else:
        run_sweep(args, "sweep4", [0.0, 1e-5, 1e-4, 1e-3, 1e-2], lambda l2: table4_job(args, l2),
                  one_round_settings(), "mpisim.one_round", "l2")


if __name__ == "__main__":
    main()
