"""Ghosh et al., Section 7: compressed gradient descent with norm thresholding, Figures 1-4.

    python benchmarks/ghosh_figures.py regression [--seeds 5] [--rounds 300] [--lr 0.5] [--vote-lr 0.01]
    python benchmarks/ghosh_figures.py mnist [--seeds 1] [--rounds 200] [--lr 0.5] [--batch 32]  # Figure 4
    python benchmarks/ghosh_figures.py lenet [--rounds 300]     # LeNet accuracy against uplink bytes
    python benchmarks/ghosh_figures.py bytes                    # bytes a round per agent, every codec

The paper's setting (Section 7): every agent sends C(x) = {||x||_1 / d,
sign(x)}, which is mpisim's ``scaled_sign`` codec; "robustness comes from
thresholding on the scaling factor", so the server sorts the agents by
that scale, i.e. by the l1 norm of what they compressed. Sorting the
decoded vectors (||x||_1 / d) sign(x) by their l2 norm, (||x||_1 / sqrt(d)),
gives the same order, so the thresholded runs are ``norm_threshold`` on the
decoded vectors (Algorithm 2's server on this codec).

Least squares (Figures 1-3): A (4000 x 1000) and w* standard normal,
b = A w*, 200 workers of 20 rows each, full local gradients, alpha m = 5,
10, 20 Byzantine workers sending their gradient plus N(0, 10 I), thresholds
beta m = 7, 12, 22; metric ||w_t - w*||. Figure 1: thresholding against
the plain average of the compressed gradients; Figure 2: against signSGD
with majority vote; Figure 3: error feedback (Algorithm 3) with
thresholding against plain distributed error feedback.

MNIST (Figure 4): the 1000-unit ReLU net (``mlp``), 200 workers of 300
digits, Byzantine workers training on uniformly random labels (a) or on
9 - y (b, c); (c) is error feedback with thresholding. The paper does not
give the number of Byzantine workers, the threshold, the step, the batch
or the length: the options above, and the README says which were used.

Results: benchmarks/results/ghosh_{regression,mnist,lenet,bytes}.json and
the PNG figures beside them.
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np

from common import MNIST_DIR, RESULTS, add_cluster_options, made_by, markdown_table, run_grid, save_json

# ---------------------------------------------------------------- the methods compared

THRESHOLD = ["--compression.codec", "scaled_sign", "--aggregator.name", "norm_threshold"]
METHODS = {
    "thresholding": THRESHOLD,
    "vanilla": ["--compression.codec", "scaled_sign", "--aggregator.name", "mean", "--aggregator.f", "0"],
    "signSGD-MV": ["--compression.codec", "sign", "--aggregator.name", "majority_vote"],
    "EF + thresholding": [*THRESHOLD, "--compression.error_feedback", "true"],
    "EF": ["--compression.codec", "scaled_sign", "--compression.error_feedback", "true",
           "--aggregator.name", "mean", "--aggregator.f", "0"],
}
FIGURES = {"figure1": ("thresholding", "vanilla"), "figure2": ("thresholding", "signSGD-MV"),
           "figure3": ("EF + thresholding", "EF")}
BYZANTINE = {5: 7, 10: 12, 20: 22}  # alpha m -> beta m (Section 7)


def method_args(method: str, byzantine: int, dropped: int, m: int, vote_lr: float) -> list[str]:
    """The options of ``method`` (after the job's, which they override) with alpha m = ``byzantine``
    faulty agents and beta m = ``dropped`` dropped by the threshold."""
    args = list(METHODS[method])
    if "norm_threshold" in args:
        args += ["--aggregator.f", str(byzantine), "--aggregator.params.beta", repr(dropped / m)]
    elif "majority_vote" in args:  # signSGD steps +-eta a coordinate: a step size of its own
        args += ["--aggregator.f", str(byzantine), "--optim.lr", str(vote_lr)]
    return args


def regression_job(args) -> list[str]:
    return ["--data.name", "synthetic_regression", "--data.params.samples", "4000", "--data.params.dim", "1000",
            "--model.name", "least_squares", "--model.init", "zero", "--data.batch_size", "0",
            "--agents.n", "200", "--agents.per_rank", str(-(-200 // (args.ranks - 1))),
            "--optim.lr", str(args.lr), "--run.rounds", str(args.rounds),
            "--run.eval_every", str(max(1, args.rounds // 60))]


def mnist_job(args) -> list[str]:
    return ["--data.name", "mnist", "--data.root", str(MNIST_DIR), "--model.name", "mlp",
            "--data.batch_size", str(args.batch), "--agents.n", "200",
            "--agents.per_rank", str(-(-200 // (args.ranks - 1))), "--optim.lr", str(args.lr),
            "--run.rounds", str(args.rounds), "--run.eval_every", str(max(1, args.rounds // 30))]


def keep(summary: dict, records: list[dict]) -> dict:
    final = summary["final"]
    out = {"final_test_accuracy": final.get("test_accuracy"), "byzantine_ids": summary["byzantine_ids"],
           "loop_seconds": summary["loop_seconds"], "rounds_per_second": summary["rounds_per_second"],
           "bytes": summary["bytes"], "payload_bytes": summary.get("payload_bytes"),
           "rounds": [r["round"] for r in records],
           "uplink_bytes": [r["bytes"]["agents_sent"] for r in records]}
    for key in ("distance_to_optimum", "test_accuracy", "test_loss", "train_loss"):
        if key in final:
            out[key] = [r.get(key) for r in records]
    return out


# ---------------------------------------------------------------- figures


def band(results: dict, prefix: str, seeds: int, key: str, label: str, x: str = "rounds"):
    """The median over the seeds of one setting with a min-max band (an mpisim.plot Series),
    or None if it has no result."""
    from mpisim import plot

    runs = [results[f"{prefix}|seed {s}"] for s in range(seeds) if f"{prefix}|seed {s}" in results]
    if not runs:
        return None
    values = np.array([[math.nan if v is None else v for v in r[key]] for r in runs], dtype=float)
    return plot.Series(label, runs[0][x], np.median(values, axis=0),
                       band=(values.min(axis=0), values.max(axis=0)))


def final_table(results: dict, cells: list[tuple[str, str]], seeds: int, key: str, scale: float = 1.0):
    rows = []
    for label, prefix in cells:
        values = [results[f"{prefix}|seed {s}"][key][-1] for s in range(seeds) if f"{prefix}|seed {s}" in results]
        values = [scale * v for v in values if v is not None and math.isfinite(v)]
        rows.append([label, f"{statistics.median(values):.3g}" if values else "-",
                     f"{min(values):.3g} - {max(values):.3g}" if values else "-", len(values)])
    return rows


def regression(args) -> None:
    job = regression_job(args)
    cells = {}
    for byz, dropped in BYZANTINE.items():
        for method in METHODS:
            for s in range(args.seeds):
                cells[f"{method}|{byz}|seed {s}"] = [*job, *method_args(method, byz, dropped, 200, args.vote_lr),
                                                     "--byzantine.fault", "gaussian", "--byzantine.count",
                                                     str(byz), "--run.seed", str(s)]
    for s in range(args.seeds):  # the reference: uncompressed GD without faults
        cells[f"GD, no fault|0|seed {s}"] = [*job, "--aggregator.name", "mean", "--aggregator.f", "0",
                                              "--byzantine.fault", "none", "--run.seed", str(s)]
    settings = {"rounds": args.rounds, "lr": args.lr, "vote_lr": args.vote_lr,
                "ranks": args.ranks}
    results = run_grid("ghosh_regression.json", cells, nprocs=args.ranks, settings=settings, fresh=args.fresh,
                       keep=keep, check_only=args.check)
    from mpisim import plot

    reference = band(results, "GD, no fault|0", args.seeds, "distance_to_optimum", "GD, no fault, no compression")
    for figure, methods in FIGURES.items():
        panels = {}
        for byz, dropped in BYZANTINE.items():
            curves = [band(results, f"{m}|{byz}", args.seeds, "distance_to_optimum", m) for m in methods]
            panels[f"alpha m = {byz}, beta m = {dropped}"] = [c for c in [*curves, reference] if c is not None]
        plot.draw_panels(panels, xlabel="iteration", ylabel="||w_t - w*||", logy=True,
                         out=RESULTS / f"ghosh_{figure}.png",
                         title=f"Ghosh et al. {figure.replace('figure', 'Figure ')}: least squares, m = 200",
                         legend_title=f"median over {args.seeds} seeds, band: min-max")
    rows = final_table(results, [(f"{m}, alpha m = {b}", f"{m}|{b}") for b in BYZANTINE for m in METHODS]
                       + [("GD, no fault, no compression", "GD, no fault|0")], args.seeds, "distance_to_optimum")
    table = markdown_table(["method", "final ||w - w*|| (median over seeds)", "min - max", "seeds"], rows)
    print(f"\nleast squares after {args.rounds} iterations, lr {args.lr}:\n\n{table}")
    save_json("ghosh_regression.json", {
        "benchmark": "Ghosh et al. Figures 1-3", "settings": settings, "made_on": made_by(results),
        "command": f"python benchmarks/ghosh_figures.py regression --seeds {args.seeds} --rounds {args.rounds} "
                   f"--lr {args.lr} --vote-lr {args.vote_lr}", "cells": results, "table": table})


MNIST_COUNTS = (10, 20)  # Byzantine workers of 200 (5 % and 10 %); the paper does not say


def mnist(args) -> None:
    job = mnist_job(args)
    panels_spec = {"a": ("random_labels", ("thresholding", "vanilla")),
                   "b": ("label_flip", ("thresholding", "vanilla")),
                   "c": ("label_flip", ("EF + thresholding", "EF"))}
    cells = {}
    for fault, methods in panels_spec.values():
        for byz in MNIST_COUNTS:
            for method in methods:
                for s in range(args.seeds):
                    cells[f"{method}|{fault}|{byz}|seed {s}"] = [
                        *job, *method_args(method, byz, byz + 2, 200, args.vote_lr), "--byzantine.fault", fault,
                        "--byzantine.count", str(byz), "--run.seed", str(s)]
    settings = {"rounds": args.rounds, "lr": args.lr, "batch": args.batch,
                "ranks": args.ranks}
    results = run_grid("ghosh_mnist.json", cells, nprocs=args.ranks, settings=settings, fresh=args.fresh,
                       keep=keep, check_only=args.check)
    from mpisim import plot

    for key, ylabel, log in (("train_loss", "training cross-entropy (honest workers)", True),
                             ("test_accuracy", "test accuracy (fraction of the 10,000 test digits)", False)):
        panels = {}
        for panel, (fault, methods) in panels_spec.items():
            curves = [band(results, f"{m}|{fault}|{byz}", args.seeds, key, f"{m}, {byz} Byzantine")
                      for byz in MNIST_COUNTS for m in methods]
            panels[f"({panel}) {fault}"] = [c for c in curves if c is not None]
        plot.draw_panels(panels, xlabel="iteration", ylabel=ylabel, logy=log, out=RESULTS / f"ghosh_figure4_{key}.png",
                         title="Ghosh et al. Figure 4: MNIST, 1000-unit ReLU net, m = 200",
                         legend_title=f"median over {args.seeds} seed(s)")
    rows = final_table(results, [(f"({p}) {m}, {fault}, {byz} Byzantine", f"{m}|{fault}|{byz}")
                                 for p, (fault, methods) in panels_spec.items() for byz in MNIST_COUNTS
                                 for m in methods], args.seeds, "test_accuracy", scale=100)
    table = markdown_table(["panel, method", "final test accuracy %", "min - max", "seeds"], rows)
    print(f"\nMNIST mlp after {args.rounds} iterations:\n\n{table}")
    save_json("ghosh_mnist.json", {
        "benchmark": "Ghosh et al. Figure 4", "settings": settings, "made_on": made_by(results),
        "command": f"python benchmarks/ghosh_figures.py mnist --seeds {args.seeds} --rounds {args.rounds} "
                   f"--lr {args.lr} --batch {args.batch}", "cells": results, "table": table})


LENET_CODECS = {
    "none": ["--compression.codec", "none", "--compression.side_norm", "2"],
    "scaled_sign": ["--compression.codec", "scaled_sign"],
    "topk (1 %)": ["--compression.codec", "topk", "--compression.params.ratio", "0.01"],
    "qsgd (s = 15)": ["--compression.codec", "qsgd", "--compression.params.s", "15"],
}


def lenet(args) -> None:
    cells = {f"{label}|seed {s}": [
        "--data.name", "mnist", "--data.root", str(MNIST_DIR), "--agents.n", "10", "--agents.per_rank", "5",
        "--data.batch_size", "16", "--optim.lr", str(args.lr), "--run.rounds", str(args.rounds),
        "--run.eval_every", str(max(1, args.rounds // 20)), "--aggregator.name", "norm_threshold",
        "--aggregator.f", "1", "--byzantine.fault", "gaussian", "--byzantine.count", "1", *extra,
        "--run.seed", str(s)] for label, extra in LENET_CODECS.items() for s in range(args.seeds)}
    settings = {"rounds": args.rounds, "lr": args.lr}
    results = run_grid("ghosh_lenet.json", cells, nprocs=3, settings=settings, fresh=args.fresh, keep=keep,
                       check_only=args.check)
    from mpisim import plot

    curves, rows = [], []
    for label in LENET_CODECS:
        runs = [results[f"{label}|seed {s}"] for s in range(args.seeds) if f"{label}|seed {s}" in results]
        if not runs:
            continue
        per_agent = np.array(runs[0]["uplink_bytes"]) / 10
        acc = np.median(np.array([r["test_accuracy"] for r in runs], dtype=float), axis=0)
        curves.append(plot.Series(label, per_agent[1:], 100 * acc[1:]))
        rows.append([label, runs[0]["payload_bytes"], f"{per_agent[-1] / 1e6:.2f}",
                     f"{100 * acc[-1]:.1f}"])
    plot.draw(curves, xlabel="uplink bytes per agent, cumulative", ylabel="test accuracy (%)", logx=True,
              out=RESULTS / "ghosh_lenet_bytes.png", legend_title=f"median over {args.seeds} seeds",
              title=f"LeNet on MNIST, 10 agents, 1 Gaussian fault, norm thresholding ({args.rounds} rounds)")
    table = markdown_table(["codec", "payload bytes a round", "MB per agent in all", "final accuracy %"], rows)
    print(f"\n{table}")
    save_json("ghosh_lenet.json", {
        "benchmark": "LeNet accuracy against uplink bytes", "settings": settings, "made_on": made_by(results),
        "command": f"python benchmarks/ghosh_figures.py lenet --rounds {args.rounds} --lr {args.lr}",
        "cells": results, "table": table})


def byte_table() -> None:
    from mpisim import compression

    codecs = {"none": ("none", {}), "sign": ("sign", {}), "scaled_sign": ("scaled_sign", {}),
              "topk, ratio 0.01": ("topk", {"ratio": 0.01}), "qsgd, s = 1": ("qsgd", {"s": 1}),
              "qsgd, s = 4": ("qsgd", {"s": 4}), "qsgd, s = 15": ("qsgd", {"s": 15})}
    rows, out = [], {}
    for label, (name, params) in codecs.items():
        codec = compression.REGISTRY[name](**params)
        sizes = {d: codec.nbytes(d) for d in (431_080, 1000)}
        side = {d: compression.with_side_norm(codec, 2).nbytes(d) for d in sizes}
        out[label] = {"payload": sizes, "with_side_norm": side}
        rows.append([label, f"{sizes[431_080]:,}", f"{4 * 431_080 / sizes[431_080]:.1f}x",
                     f"{side[431_080]:,}", f"{sizes[1000]:,}", f"{side[1000]:,}"])
    rows.append(["signSGD-MV downlink (the vote)", f"{math.ceil(431_080 / 8):,}", "32.0x", "-",
                 f"{math.ceil(1000 / 8):,}", "-"])
    table = markdown_table(["codec", "bytes, d = 431,080 (LeNet)", "vs float32", "+ side norm",
                            "bytes, d = 1000", "+ side norm"], rows)
    print(table)
    save_json("ghosh_bytes.json", {"benchmark": "bytes a round per agent", "command":
                                   "python benchmarks/ghosh_figures.py bytes", "codecs": out, "table": table})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["regression", "mnist", "lenet", "bytes"])
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (regression 5, mnist 1, lenet 1)")
    parser.add_argument("--rounds", type=int, default=None, help="iterations (regression, lenet 300; mnist 200)")
    parser.add_argument("--lr", type=float, default=None, help="step size (regression 0.5, mnist 0.5, lenet 0.1)")
    parser.add_argument("--vote-lr", type=float, default=0.01, help="regression: signSGD-MV's step size")
    parser.add_argument("--batch", type=int, default=32, help="mnist: samples per worker and iteration")
    parser.add_argument("--ranks", type=int, default=3, help="MPI ranks: 1 server + agent ranks (packed)")
    parser.add_argument("--fresh", action="store_true", help="ignore cells already in the JSON")
    parser.add_argument("--check", action="store_true", help="validate every job's configuration and exit")
    add_cluster_options(parser)
    args = parser.parse_args()
    if args.command == "bytes":
        byte_table()
        return
    args.seeds = args.seeds or (5 if args.command == "regression" else 1)
    args.lr = args.lr or (0.1 if args.command == "lenet" else 0.5)
    args.rounds = args.rounds or (200 if args.command == "mnist" else 300)
    {"regression": regression, "mnist": mnist, "lenet": lenet}[args.command](args)


if __name__ == "__main__":
    main()
