"""The BRIDGE paper's Tables 1 and 2, in decentralized mode.

    python benchmarks/bridge_tables.py table1 [--iterations 500] [--ranks 4]
    python benchmarks/bridge_tables.py table2 [--iterations 1000] [--trials 5] [--ranks 2]

Table 1 (Section 5.1): 100 nodes, Erdős–Rényi p = 0.5, b = 10, the
one-vs-all linear classifier with the squared hinge loss on the whole MNIST
training set (600 samples a node), full local gradients, step
rho(t) = 1/(t0 + t) (the inverse schedule with lr = 1/t0), 10 Byzantine nodes broadcasting N(0, I) vectors. Rows:
DGD without faults, DGD with 10 Byzantine nodes, local training only, and
BRIDGE-T/M/K/B with 10 Byzantine nodes (BRIDGE-B needs every honest node to
have at least 4b + 2 = 42 neighbours; when the graph cannot give that it is
run on a denser graph and the table says so).

Table 2 (Section 5.2): 10 nodes, 500 training samples each, p = 0.5, b = 1,
the CNN, local Adam steps on batches of 50 followed by the exchange and the
screening, one Byzantine node broadcasting draws from the model's own
initialization, several independent trials (seeds: graph, data, Byzantine
node, initialization).

Results go to benchmarks/results/bridge_table1.json / bridge_table2.json
(resumable, one cell at a time); the tables are printed in Markdown and the
honest nodes' mean test accuracy against the iteration is drawn in
bridge_table1.png / bridge_table2.png (Table 2: the mean over the trials and
a min-max band). ``--plot-only`` draws a figure from the saved JSON without
running any job.
"""

from __future__ import annotations

import argparse
import statistics

from common import (
    MNIST_DIR,
    RESULTS,
    add_cluster_options,
    curve_series,
    load_results,
    made_by,
    markdown_table,
    run_grid,
    save_json,
)

DECENTRALIZED = "mpisim.decentralized"


def keep(summary: dict, records: list[dict]) -> dict:
    final = summary["final"]
    return {
        "final_test_accuracy": final["test_accuracy"],
        "accuracy_min": final["test_accuracy_min"],
        "accuracy_max": final["test_accuracy_max"],
        "consensus_distance": final.get("consensus_distance"),
        "consensus_relative": final.get("consensus_relative"),
        "consensus_reached": summary["consensus_reached"],
        "graph": {k: summary["graph"][k] for k in ("min_honest_degree", "assumption4", "ok")},
        "graph_p": summary["graph"]["p"],
        "byzantine_ids": summary["byzantine_ids"],
        "iterations_per_second": summary["rounds_per_second"],
        "curve": [(r["round"], r["test_accuracy"]) for r in records],
    }


def consensus_cell(result: dict) -> str:
    """Reached or not, with the final distance relative to the mean model's norm."""
    relative = result["consensus_relative"]
    verdict = "yes" if result["consensus_reached"] else "no"
    return verdict if relative is None else f"{verdict} ({relative:.1e})"


def pct(value) -> str:
    return "diverged" if value is None else f"{100 * value:.1f}%"


def table1(args) -> None:
    n, b = 100, 10
    common = ["--data.name", "mnist", "--data.root", str(MNIST_DIR), "--model.name", "linear",
              "--model.init", "zero", "--nodes.n", str(n), "--nodes.per_rank", str(-(-n // args.ranks)),
              "--graph.p", "0.5", "--screening.b", str(b), "--optim.schedule", "inverse",
              "--optim.lr", "0.002", "--optim.t0", "500",
              "--run.rounds", str(args.iterations), "--run.eval_every", str(max(1, args.iterations // 5)),
              "--run.seed", str(args.seed), "--graph.samples", "200"]
    byzantine = ["--byzantine.fault", "random", "--byzantine.count", str(b), "--byzantine.params.std", "1"]
    none = ["--byzantine.fault", "none"]
    rows = {  # label -> (paper's accuracy, arguments)
        "DGD, no fault": ("89.8%", [*none, "--screening.name", "dgd"]),
        "DGD, 10 Byzantine": ("10.3%", [*byzantine, "--screening.name", "dgd"]),
        "local only": ("84.3%", [*none, "--screening.name", "local"]),
        "BRIDGE-T, 10 Byzantine": ("89.3%", [*byzantine, "--screening.name", "bridge_t"]),
        "BRIDGE-M, 10 Byzantine": ("-", [*byzantine, "--screening.name", "bridge_m"]),
        "BRIDGE-K, 10 Byzantine": ("-", [*byzantine, "--screening.name", "bridge_k"]),
        "BRIDGE-B, 10 Byzantine (p = 0.7)": ("-", [*byzantine, "--screening.name", "bridge_b",
                                                  "--graph.p", "0.7"]),
    }
    cells = {label: [*common, *extra] for label, (_, extra) in rows.items()}
    settings = {"iterations": args.iterations, "ranks": args.ranks, "seed": args.seed}
    results = run_grid("bridge_table1.json", cells, nprocs=args.ranks, settings=settings,
                       fresh=args.fresh, module=DECENTRALIZED, keep=keep,
                       check_only=args.check)
    table = markdown_table(
        ["algorithm", "Byzantine", "accuracy (mean / min over honest nodes)", "consensus", "paper"],
        [[label, "10" if "10 Byzantine" in label else "0",
          f"{pct(r['final_test_accuracy'])} / {pct(r['accuracy_min'])}",
          consensus_cell(r) if label != "local only" else "n/a", rows[label][0]]
         for label, r in results.items() if label in rows])
    print(f"\nBRIDGE Table 1 setup, {args.iterations} iterations:\n\n{table}")
    save_json("bridge_table1.json", {
        "benchmark": "BRIDGE Table 1: 100 nodes, p=0.5, b=10, linear squared hinge one-vs-all, MNIST",
        "command": f"python benchmarks/bridge_tables.py table1 --iterations {args.iterations} "
                   f"--ranks {args.ranks}",
        "made_on": made_by(results), "cells": results, "table": table})
    plot_table1()


def plot_table1() -> None:
    """The Table 1 cells' curves: every row in full, and a zoom on the rows that learn."""
    saved = load_results("bridge_table1.json")
    series = [curve_series(label, cell["curve"]) for label, cell in saved["cells"].items()]
    iterations = sorted({cell["settings"]["iterations"] for cell in saved["cells"].values()})
    draw_with_zoom(series, "bridge_table1.png", zoom=("from iteration 100", (85, 91), (80, 520)),
                   title=f"BRIDGE Table 1 setup: 100 nodes, Erdős–Rényi p = 0.5, b = 10, linear squared "
                         f"hinge on MNIST, {'/'.join(map(str, iterations))} iterations")


def draw_with_zoom(series, name: str, *, zoom: tuple, title: str, legend_title: str | None = None) -> None:
    """Accuracy curves in full beside a zoom (``zoom``: its title, y range and x range)."""
    from mpisim import plot

    label, ylim, xlim = zoom
    out = RESULTS / name
    plot.draw_panels([plot.Panel("every row", series, ylim=(0, 100)),
                      plot.Panel(f"zoom: {label}, {ylim[0]}-{ylim[1]}%", series, ylim=ylim, xlim=xlim)],
                     xlabel="iteration", ylabel="test accuracy (%), mean over honest nodes", out=out,
                     title=title, legend_title=legend_title, ncols=2, sharey=False, size=(11.0, 4.8))
    print(f"figure: {out}")


def plot_table2() -> None:
    """The Table 2 rows' curves: the mean over the trials, a min-max band."""
    from mpisim import plot

    saved = load_results("bridge_table2.json")
    trials: dict[str, list] = {}
    for key, cell in saved["cells"].items():
        label = key.rsplit("|seed ", 1)[0]
        trials.setdefault(label, []).append(curve_series(label, cell["curve"]))
    series = [plot.mean_band(runs, label=f"{label} ({len(runs)} trials)") for label, runs in trials.items()]
    iterations = sorted({cell["settings"]["iterations"] for cell in saved["cells"].values()})
    draw_with_zoom(series, "bridge_table2.png", zoom=("from iteration 200", (90, 98), (160, 1040)),
                   title=f"BRIDGE Table 2 setup: 10 nodes, p = 0.5, b = 1, CNN, local Adam, "
                         f"{'/'.join(map(str, iterations))} iterations",
                   legend_title="lines: mean over trials; band: min-max over trials")


def table2(args) -> None:
    n, b = 10, 1
    common = ["--data.name", "mnist", "--data.root", str(MNIST_DIR), "--data.train_size", "5000",
              "--model.name", "cnn", "--model.init", "default", "--nodes.n", str(n),
              "--nodes.per_rank", str(-(-n // args.ranks)), "--graph.p", "0.5", "--graph.redraw", "50",
              "--screening.b", str(b), "--local.method", "adam", "--optim.lr", "0.001",
              "--optim.schedule", "constant",
              "--data.batch_size", "50", "--run.rounds", str(args.iterations),
              "--run.eval_every", str(max(1, args.iterations // 5))]
    byzantine = ["--byzantine.fault", "init_random", "--byzantine.count", "1"]
    none = ["--byzantine.fault", "none"]
    rows = {
        "Dis-Adam, no fault": ("96.2%", [*none, "--screening.name", "dgd"]),
        "local Adam": ("92.3%", [*none, "--screening.name", "local"]),
        "Dis-Adam, 1 Byzantine": ("10.3%", [*byzantine, "--screening.name", "dgd"]),
        "BRIDGE-T, 1 Byzantine": ("95.8%", [*byzantine, "--screening.name", "bridge_t"]),
    }
    cells = {f"{label}|seed {seed}": [*common, *extra, "--run.seed", str(seed)]
             for seed in range(args.trials) for label, (_, extra) in rows.items()}
    settings = {"iterations": args.iterations, "ranks": args.ranks}
    results = run_grid("bridge_table2.json", cells, nprocs=args.ranks, settings=settings,
                       fresh=args.fresh, module=DECENTRALIZED, keep=keep,
                       check_only=args.check)
    lines = []
    for label, (paper, _) in rows.items():
        trials = [results[f"{label}|seed {s}"] for s in range(args.trials) if f"{label}|seed {s}" in results]
        accs = [t["final_test_accuracy"] for t in trials if t["final_test_accuracy"] is not None]
        reached = sum(bool(t["consensus_reached"]) for t in trials)
        spread = f" ± {100 * statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
        lines.append([label, "1" if "1 Byzantine" in label else "0",
                      f"{100 * statistics.mean(accs):.1f}%{spread}" if accs else "diverged",
                      "n/a" if label == "local Adam" else f"{reached}/{len(trials)}", len(trials), paper])
    table = markdown_table(["algorithm", "Byzantine", "accuracy (mean ± std over trials)",
                            "consensus reached", "trials", "paper"], lines)
    print(f"\nBRIDGE Table 2 setup, {args.iterations} iterations, {args.trials} trials:\n\n{table}")
    save_json("bridge_table2.json", {
        "benchmark": "BRIDGE Table 2: 10 nodes x 500 samples, p=0.5, b=1, CNN, local Adam batch 50",
        "command": f"python benchmarks/bridge_tables.py table2 --iterations {args.iterations} "
                   f"--trials {args.trials} --ranks {args.ranks}",
        "made_on": made_by(results), "cells": results, "table": table})
    plot_table2()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=["table1", "table2"])
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--ranks", type=int, default=None, help="MPI ranks (nodes are packed on them)")
    parser.add_argument("--trials", type=int, default=5, help="table2: independent trials")
    parser.add_argument("--seed", type=int, default=0, help="table1: the run's seed")
    parser.add_argument("--fresh", action="store_true", help="ignore cells already in the JSON")
    parser.add_argument("--check", action="store_true", help="validate every job's configuration and exit")
    parser.add_argument("--plot-only", action="store_true",
                        help="only draw the table's figure from its saved JSON (runs no job)")
    add_cluster_options(parser)
    args = parser.parse_args()
    if args.plot_only:
        plot_table1() if args.table == "table1" else plot_table2()
        return
    if args.table == "table1":
        args.iterations = args.iterations or 500
        args.ranks = args.ranks or 4
        table1(args)
    else:
        args.iterations = args.iterations or 1000
        args.ranks = args.ranks or 2
        table2(args)


if __name__ == "__main__":
    main()
