"""Yin et al.'s error rates, measured: ||w - w*|| against alpha and n on least squares.

    python benchmarks/yin_rates.py [--seeds 3] [--m 20] [--dim 20] [--rounds 100] [--plot-only]

The paper's bounds for coordinate-wise median GD (Theorem 1), trimmed-mean
GD (Theorem 4) and the one-round median (Theorem 7, quadratic losses) are
O(alpha / sqrt(n) + 1 / sqrt(n m)) (the median with an extra 1 / n), n the
samples per worker, m the workers, alpha the fraction of Byzantine
workers. Here: ``synthetic_regression`` with noise sigma = 1 (b = A w* +
N(0, 1)), dimension d, m workers fixed; Byzantine workers send either a
large constant shift (every coordinate 100: ``huge --byzantine.params.value
100``) or ALIE with z = 3 (omniscient, colluding: mean - 3 std of the honest
messages per coordinate). GD: full local gradients, step 0.5, ``--rounds``
iterations from w = 0; trimmed mean with beta = 0.25 throughout (>= every
alpha swept, as Theorem 4 asks); the one-round median of exact local
least-squares solutions. The final distance to w* is averaged over the
seeds (data, Byzantine ids).

Two sweeps: alpha in 0 .. 0.25 at n = 200, and n in 25 .. 1600 at alpha = 0
and 0.2 (the constant shift). Fits: the slope of log error against log n
(the theory: -1/2), and, for the part the Byzantine workers add, of the
bias sqrt(error^2 - error_0^2) (error_0: the same n with alpha = 0; the
bias and the statistical error add in quadrature, so the plain excess
error - error_0 grows like alpha^2 while the bias is the smaller one)
against log alpha (the theory: 1) and against log n (the theory: -1/2).
Saves benchmarks/results/yin_rates.json and yin_rates.png.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import numpy as np

from common import RESULTS, add_cluster_options, made_by, run_grid, save_json

ALPHAS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]
SIZES = [25, 50, 100, 200, 400, 800, 1600]
N_FOR_ALPHA, ALPHA_FOR_N = 200, 0.2
BETA = 0.25
FAULTS = {"shift": ["--byzantine.fault", "huge", "--byzantine.params.value", "100"],
          "alie": ["--byzantine.fault", "alie", "--byzantine.params.z", "3.0"]}
ALGORITHMS = ("median GD", "trimmed-mean GD", "one-round median")


def job(args, algorithm: str, alpha: float, n: int, fault: str, seed: int) -> tuple[str, list[str]]:
    count = round(alpha * args.m)
    common = ["--data.name", "synthetic_regression", "--data.params.samples", str(n * args.m),
              "--data.params.dim", str(args.dim), "--data.params.noise", "1.0",
              "--data.params.test_samples", "100", "--model.name", "least_squares", "--model.init", "zero",
              "--agents.n", str(args.m), "--agents.per_rank", str(-(-args.m // 2)), "--run.seed", str(seed),
              *(["--byzantine.count", str(count), *FAULTS[fault]] if count else ["--byzantine.fault", "none"])]
    f = str(max(count, 1 if algorithm != "trimmed-mean GD" else 0))
    if algorithm == "one-round median":
        return "mpisim.one_round", [*common, "--aggregator.name", "median", "--aggregator.f", f]
    rule = (["--aggregator.name", "median", "--aggregator.f", f] if algorithm == "median GD" else
            ["--aggregator.name", "trimmed_mean", "--aggregator.f", str(count), "--aggregator.params.beta",
             str(BETA)])
    return "mpisim.server_mode", [*common, *rule, "--data.batch_size", "0", "--optim.lr", "0.5",
                                  "--run.rounds", str(args.rounds), "--run.eval_every", str(args.rounds)]


def cells(args) -> dict[str, dict[str, list[str]]]:
    """{module: {cell key: job arguments}} for both sweeps (shared cells are run once)."""
    out: dict[str, dict[str, list[str]]] = {}
    wanted = set()
    for alpha in ALPHAS:
        for fault in FAULTS:
            wanted.add((alpha if alpha else 0.0, N_FOR_ALPHA, fault if alpha else "none"))
    for n in SIZES:
        for alpha in (0.0, ALPHA_FOR_N):
            wanted.add((alpha, n, "shift" if alpha else "none"))
    for alpha, n, fault in sorted(wanted):
        for algorithm in ALGORITHMS:
            for seed in range(args.seeds):
                module, argv = job(args, algorithm, alpha, n, fault if fault != "none" else "shift", seed)
                out.setdefault(module, {})[key(algorithm, alpha, n, fault, seed)] = argv
    return out


def key(algorithm, alpha, n, fault, seed) -> str:
    return f"{algorithm}|alpha {alpha:g}|n {n}|{fault}|seed {seed}"


def keep(summary: dict, records: list[dict]) -> dict:
    return {"final_test_accuracy": summary["final"]["distance_to_optimum"],  # run_grid prints this key
            "distance_to_optimum": summary["final"]["distance_to_optimum"],
            "loop_seconds": summary["loop_seconds"]}


def mean_error(results, algorithm, alpha, n, fault, seeds) -> float:
    values = [results[k]["distance_to_optimum"] for s in range(seeds)
              if (k := key(algorithm, alpha, n, fault, s)) in results]
    return statistics.mean(values) if values else math.nan


def slope(x, y) -> float:
    x, y = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.polyfit(x[ok], y[ok], 1)[0]) if ok.sum() >= 2 else math.nan


def bias(errors: list[float], clean: list[float]) -> list[float]:
    """sqrt(error^2 - clean^2): what the Byzantine workers add, in quadrature (NaN if below 0)."""
    return [math.sqrt(e * e - c * c) if e > c else math.nan for e, c in zip(errors, clean)]


def analyse(results: dict, seeds: int) -> dict:
    by_n = {a: {alpha: [mean_error(results, a, alpha, n, "shift" if alpha else "none", seeds) for n in SIZES]
                for alpha in (0.0, ALPHA_FOR_N)} for a in ALGORITHMS}
    by_alpha = {a: {fault: [mean_error(results, a, alpha, N_FOR_ALPHA, fault if alpha else "none", seeds)
                            for alpha in ALPHAS] for fault in FAULTS} for a in ALGORITHMS}
    bias_alpha = {a: {fault: bias(errs[1:], [errs[0]] * (len(errs) - 1)) for fault, errs in by_alpha[a].items()}
                  for a in ALGORITHMS}
    bias_n = {a: bias(by_n[a][ALPHA_FOR_N], by_n[a][0.0]) for a in ALGORITHMS}
    fits = {}
    for a in ALGORITHMS:
        fits[a] = {"error_vs_n_alpha0": slope(SIZES, by_n[a][0.0]),
                   f"error_vs_n_alpha{ALPHA_FOR_N:g}": slope(SIZES, by_n[a][ALPHA_FOR_N]),
                   f"bias_vs_n_alpha{ALPHA_FOR_N:g}": slope(SIZES, bias_n[a])}
        for fault in FAULTS:
            fits[a][f"bias_vs_alpha_{fault}"] = slope(ALPHAS[1:], bias_alpha[a][fault])
    return {"by_n": by_n, "by_alpha": by_alpha, "bias_by_alpha": bias_alpha, "bias_by_n": bias_n,
            "fits": fits}


def plot(analysis: dict, path) -> None:
    from mpisim import plot as draw

    left, right = [], []
    for a in ALGORITHMS:
        for alpha in (0.0, ALPHA_FOR_N):
            left.append(draw.Series(f"{a}, alpha = {alpha:g}", SIZES, analysis["by_n"][a][alpha]))
        for fault in ("shift", "alie"):
            right.append(draw.Series(f"{a}, {fault}", ALPHAS[1:], analysis["bias_by_alpha"][a][fault]))
    ref = analysis["by_n"]["median GD"][ALPHA_FOR_N][0]
    left.append(draw.Series("slope -1/2", SIZES, [ref * (SIZES[0] / n) ** 0.5 for n in SIZES]))
    ref = analysis["bias_by_alpha"]["median GD"]["shift"][-1]
    right.append(draw.Series("slope 1", ALPHAS[1:], [ref * alpha / ALPHAS[-1] for alpha in ALPHAS[1:]]))
    draw.draw_panels([draw.Panel("||w - w*|| against n, the samples per worker (m fixed)", left),
                      draw.Panel(f"the faulty workers' share against alpha (n = {N_FOR_ALPHA})", right)],
                     xlabel="n (left), alpha (right)", ylabel="||w - w*|| (left), sqrt(||w - w*||^2 - at alpha 0)",
                     logx=True, logy=True, sharey=False, ncols=2, size=(13, 6.2), out=path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--m", type=int, default=20, help="workers (fixed)")
    parser.add_argument("--dim", type=int, default=20, help="dimension d")
    parser.add_argument("--rounds", type=int, default=100, help="GD iterations")
    parser.add_argument("--plot-only", action="store_true", help="redraw from the saved results")
    parser.add_argument("--fresh", action="store_true", help="ignore cells already in the JSON")
    parser.add_argument("--check", action="store_true", help="validate every job's configuration and exit")
    add_cluster_options(parser)
    args = parser.parse_args()
    settings = {"seeds": args.seeds, "m": args.m, "dim": args.dim, "rounds": args.rounds}
    grids = cells(args)
    if args.plot_only:
        results = json.loads((RESULTS / "yin_rates.json").read_text())["cells"]
    else:  # one grid of both modules' cells, so that --cell K numbers them all
        grid = {key: argv for g in grids.values() for key, argv in g.items()}
        modules = {key: module for module, g in grids.items() for key in g}
        results = run_grid("yin_rates.json", grid, nprocs=3, settings=settings, fresh=args.fresh,
                           modules=modules, keep=keep, check_only=args.check)
    analysis = analyse(results, args.seeds)
    plot(analysis, RESULTS / "yin_rates.png")
    for a, fit in analysis["fits"].items():
        print(f"  {a}: " + ", ".join(f"{k} {v:.2f}" for k, v in fit.items()))
    save_json("yin_rates.json", {
        "benchmark": __doc__.split("\n")[0], "command": "python benchmarks/yin_rates.py " + " ".join(
            f"--{k} {v}" for k, v in settings.items()), "settings": settings, "made_on": made_by(results),
        "cells": results, "analysis": analysis})
    print(f"saved {RESULTS / 'yin_rates.json'} and {RESULTS / 'yin_rates.png'}")


if __name__ == "__main__":
    main()
