"""Where a decentralized iteration's time goes: exchange, screening, local step.

    python benchmarks/bench_decentralized.py [--iterations 50] [--quick] [--skip-spread-100]

BRIDGE-T on Erdős–Rényi graphs (p = 0.5) of 20 nodes (b = 2) and 100 nodes
(b = 10), 10% of them Byzantine (random vectors), MNIST, for the linear
model (d = 7,850, full local gradients) and the CNN (d = 21,840, local Adam
on batches of 50), with one node per rank and with the nodes packed on 2
ranks (one per core). Per iteration, from every rank's timers: the slowest
rank's exchange (the neighbourhood collective, waits included), screening
and local step, and the wall time of an iteration (evaluations left out).

Prints a table and saves benchmarks/results/decentralized_breakdown.json.

``--efficiency`` measures instead the efficiency of the performance issue:
for 100 nodes packed 50 to each of 2 ranks (the BRIDGE Table 1 setting, the
linear model) and 20 nodes on 20 ranks, the compute bound is the iteration
time of the same job with every node on one rank (one process, one thread:
the nodes' gradients, screenings and steps one after another, and the
neighbourhood exchange with no one), measured before and after the jobs,
divided by min(cores, ranks); efficiency = bound / iteration time. Saves
benchmarks/results/decentralized_efficiency.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import MNIST_DIR, machine, markdown_table, run_job, save_json

MODELS = {
    "linear": ["--model.name", "linear", "--model.init", "zero"],
    "cnn": ["--model.name", "cnn", "--model.init", "default", "--local.method", "adam",
            "--optim.lr", "0.001", "--optim.schedule", "constant", "--data.batch_size", "50"],
}


def breakdown(summary: dict) -> dict:
    its = summary["rounds"]
    ranks = summary["ranks"]
    evals = max(r["phases"].get("eval", 0.0) for r in ranks)
    per_it = (summary["loop_seconds"] - evals) / its

    def slowest(phase):
        return 1e3 * max(r["phases"].get(phase, 0.0) for r in ranks) / its

    return {
        "iterations": its,
        "iterations_per_second": 1.0 / per_it,
        "iteration_ms": 1e3 * per_it,
        "exchange_ms": slowest("exchange"),
        "screening_ms": slowest("screening"),
        "local_step_ms": slowest("local_step"),
        "peak_rss_max_mb": max(r["peak_rss"] for r in ranks) / 2**20,
        "final_accuracy_mean": summary["final"]["test_accuracy"],
    }


def job_args(n: int, b: int, model: str, ranks: int, iterations: int) -> list[str]:
    return ["--data.name", "mnist", "--data.root", str(MNIST_DIR), *MODELS[model],
            "--nodes.n", str(n), "--nodes.per_rank", str(-(-n // ranks)),
            "--graph.p", "0.5", "--graph.redraw", "20", "--graph.samples", "200",
            "--screening.name", "bridge_t", "--screening.b", str(b),
            "--byzantine.fault", "random", "--byzantine.count", str(n // 10),
            "--run.rounds", str(iterations), "--run.eval_every", str(iterations),
            "--data.test_size", "1000"]


def efficiency(args) -> None:
    import os
    import statistics

    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def job(n, b, ranks, name):
            summary = run_job(ranks, job_args(n, b, "linear", ranks, args.iterations), out_dir=Path(tmp),
                              name=name, module="mpisim.decentralized", timeout=3600)
            return breakdown(summary)

        for n, b, ranks in ((100, 10, 2), (20, 2, 20)):
            before = job(n, b, 1, f"bound-n{n}-before")["iteration_ms"]
            runs = [job(n, b, ranks, f"n{n}-r{ranks}-{i}") for i in range(args.repeat)]
            after = job(n, b, 1, f"bound-n{n}-after")["iteration_ms"]
            bound = statistics.mean([before, after]) / min(cores, ranks)
            for i, r in enumerate(runs):
                rows.append({"nodes": n, "ranks": ranks, "repeat": i, "bound_one_rank_ms": [before, after],
                             "bound_ms": bound, **r, "efficiency": bound / r["iteration_ms"]})
                print(f"  {n} nodes on {ranks} ranks: {r['iteration_ms']:.0f} ms an iteration, bound "
                      f"{bound:.0f} ms, efficiency {bound / r['iteration_ms']:.2f}", flush=True)
    header = ["nodes", "ranks", "iteration ms", "one rank ms (before, after)", "bound ms", "efficiency",
              "exchange ms", "screening ms", "local step ms"]
    table = markdown_table(header, [[
        r["nodes"], r["ranks"], f"{r['iteration_ms']:.0f}",
        ", ".join(f"{v:.0f}" for v in r["bound_one_rank_ms"]), f"{r['bound_ms']:.0f}", f"{r['efficiency']:.2f}",
        f"{r['exchange_ms']:.1f}", f"{r['screening_ms']:.1f}", f"{r['local_step_ms']:.1f}"] for r in rows])
    print(table)
    path = save_json("decentralized_efficiency.json", {
        "benchmark": "decentralized efficiency against the one-rank compute bound, BRIDGE-T, linear, p=0.5, "
                     "10% Byzantine (random)",
        "command": f"python benchmarks/bench_decentralized.py --efficiency --iterations {args.iterations} "
                   f"--repeat {args.repeat}",
        "machine": machine(), "cores": cores, "results": rows, "table": table})
    print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="20 nodes only, 10 iterations")
    parser.add_argument("--skip-spread-100", action="store_true",
                        help="leave out 100 ranks of one node each (slow to start on 2 cores)")
    parser.add_argument("--efficiency", action="store_true", help="the efficiency against the compute bound")
    parser.add_argument("--repeat", type=int, default=3, help="with --efficiency: jobs per setting")
    args = parser.parse_args()
    if args.efficiency:
        efficiency(args)
        return
    iterations = 10 if args.quick else args.iterations
    setups = [(20, 2), (100, 10)] if not args.quick else [(20, 2)]

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, b in setups:
            for model in MODELS:
                for ranks in (n, 2):
                    if ranks == 100 and args.skip_spread_100:
                        continue
                    label = f"{n} nodes, {model}, {n // ranks} node(s)/rank on {ranks} ranks"
                    summary = run_job(ranks, job_args(n, b, model, ranks, iterations), out_dir=Path(tmp),
                                      name=f"n{n}-{model}-r{ranks}", module="mpisim.decentralized",
                                      timeout=3600)
                    row = {"nodes": n, "b": b, "model": model, "d": summary["d"], "ranks": ranks,
                           "nodes_per_rank": -(-n // ranks), **breakdown(summary)}
                    results.append(row)
                    print(f"  {label}: {row['iterations_per_second']:.2f} it/s", flush=True)

    header = ["nodes", "model (d)", "nodes/rank", "ranks", "it/s", "iteration ms", "exchange ms",
              "screening ms", "local step ms", "peak RSS MB/rank"]
    table = markdown_table(header, [[
        r["nodes"], f"{r['model']} ({r['d']:,})", r["nodes_per_rank"], r["ranks"],
        f"{r['iterations_per_second']:.2f}", f"{r['iteration_ms']:.0f}", f"{r['exchange_ms']:.1f}",
        f"{r['screening_ms']:.1f}", f"{r['local_step_ms']:.1f}", f"{r['peak_rss_max_mb']:.0f}"]
        for r in results])
    print(table)
    path = save_json("decentralized_breakdown.json", {
        "benchmark": "decentralized iteration breakdown, BRIDGE-T, p=0.5, 10% Byzantine (random)",
        "command": f"python benchmarks/bench_decentralized.py --iterations {iterations}"
                   + (" --skip-spread-100" if args.skip_spread_100 else ""),
        "machine": machine(), "results": results, "table": table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
