"""Where a server-mode round's time goes, and how much memory each rank needs.

    python benchmarks/bench_round.py [--rounds 200] [--quick] [--aggregator cwtm] [--fault sign_flip]

LeNet on MNIST (d = 431,080), n = 10 agents, k = 16, the coordinate-wise
trimmed mean with f = 1 and one sign-flipping agent (the setting of the
performance issue), at several packings (agents per rank). Each job runs
with an evaluation at the start and at the end only; their time is left out.

The **compute bound**, measured in the same run (before the jobs and again
after them, on this process, one thread): the time to compute all n agents'
gradients of one round, one after another, on their own batches from the
same data and model, divided by the cores the agent ranks can use,
min(cores, agent ranks). No round can be faster than that; the
**efficiency** of a placement is bound / round time.

Per round, from the timers every rank keeps (summary.json):

- round: wall time of the training loop / rounds;
- compute: the slowest agent rank's gradient computation (the critical path;
  the mean over agent ranks is shown too);
- filter: the server's filter plus its update step;
- communication: round - compute - filter, i.e. the broadcast, the gather and
  every wait that is not computation;
- peak RSS: the largest resident set of the server and of the agent ranks.

Prints a table and saves benchmarks/results/round_breakdown.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import MNIST_DIR, machine, markdown_table, run_job, save_json

PACKINGS = [  # (agents per rank, MPI ranks) for 10 agents
    (1, 11),
    (5, 3),
    (10, 2),
]


def breakdown(summary: dict) -> dict:
    rounds = summary["rounds"]
    server = summary["server_phases"]
    agents = [r for r in summary["ranks"] if r["rank"] != 0]
    loop = summary["loop_seconds"] - server.get("eval", 0.0)
    compute = [r["phases"]["compute"] / rounds for r in agents]
    per_round = loop / rounds
    filt = (server["filter"] + server["step"]) / rounds
    comm = per_round - max(compute) - filt
    return {
        "rounds": rounds,
        "rounds_per_second": 1.0 / per_round,
        "round_ms": 1e3 * per_round,
        "compute_ms": 1e3 * max(compute),
        "compute_mean_ms": 1e3 * sum(compute) / len(compute),
        "filter_ms": 1e3 * filt,
        "communication_ms": 1e3 * comm,
        "server_bcast_ms": 1e3 * server["bcast"] / rounds,
        "server_gather_ms": 1e3 * server["gather"] / rounds,
        "comm_plus_filter_share": (comm + filt) / per_round,
        "peak_rss_server_mb": summary["ranks"][0]["peak_rss"] / 2**20,
        "peak_rss_agent_max_mb": max(r["peak_rss"] for r in agents) / 2**20,
        "final_test_accuracy": summary["final"]["test_accuracy"],
    }


def job_args(args, per_rank: int, rounds: int) -> list[str]:
    return ["--data.name", "mnist", "--data.root", str(MNIST_DIR), "--agents.n", str(args.n),
            "--agents.per_rank", str(per_rank), "--data.batch_size", "16",
            "--aggregator.name", args.aggregator, "--aggregator.f", "1",
            "--byzantine.fault", args.fault, "--byzantine.count", "1", "--optim.lr", "0.01",
            "--run.rounds", str(rounds), "--run.eval_every", str(rounds)]


def compute_bound(args, rounds: int) -> dict:
    """Seconds a round of all n agents' gradients takes in one process on one thread (median over
    ``rounds`` rounds after 3 warm-up rounds), the model stepping as in a run."""
    import torch

    from mpisim import config
    from mpisim.protocols import driver, server_config

    torch.set_num_threads(1)
    cfg, _ = config.parse_args(server_config.ServerModeConfig, job_args(args, args.n, rounds), prog="bound",
                               description="")
    problem = driver.load_problem(cfg, num_shards=args.n, train=True, test=False)
    samplers = [problem.sampler(i, cfg) for i in range(args.n)]
    model = problem.model
    out = torch.empty(args.n, model.d)
    times = []
    for t in range(rounds + 3):
        start = time.perf_counter()
        model.gradients([s.batch() for s in samplers], out)
        elapsed = time.perf_counter() - start
        model.flat.sub_(out.mean(dim=0), alpha=0.01)
        if t >= 3:
            times.append(elapsed)
    return {"all_gradients_ms": 1e3 * statistics.median(times),
            "all_gradients_ms_p10_p90": [1e3 * sorted(times)[len(times) // 10],
                                         1e3 * sorted(times)[9 * len(times) // 10]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="40 rounds")
    parser.add_argument("--aggregator", default="cwtm")
    parser.add_argument("--fault", default="sign_flip", help="the one faulty agent's fault")
    parser.add_argument("--n", type=int, default=10, help="agents")
    parser.add_argument("--repeat", type=int, default=1, help="jobs per placement (alternated)")
    parser.add_argument("--out", default="round_breakdown.json", help="result file under benchmarks/results")
    args = parser.parse_args()
    rounds = 40 if args.quick else args.rounds
    cores = os.cpu_count() or 1

    bounds = [compute_bound(args, rounds)]
    print(f"  compute bound: all {args.n} gradients in {bounds[0]['all_gradients_ms']:.1f} ms on one thread",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeat):
            for per_rank, nprocs in PACKINGS:
                summary = run_job(nprocs, job_args(args, per_rank, rounds), out_dir=Path(tmp),
                                  name=f"pack{per_rank}-{repeat}")
                row = {"agents_per_rank": per_rank, "ranks": nprocs, "repeat": repeat, **breakdown(summary)}
                results.append(row)
                print(f"  {per_rank} agents/rank on {nprocs} ranks: {row['rounds_per_second']:.2f} rounds/s",
                      flush=True)
    bounds.append(compute_bound(args, rounds))
    all_ms = statistics.mean(b["all_gradients_ms"] for b in bounds)
    for row in results:
        row["bound_ms"] = all_ms / min(cores, row["ranks"] - 1)
        row["efficiency"] = row["bound_ms"] / row["round_ms"]

    header = ["agents/rank", "ranks", "rounds/s", "round ms", "bound ms", "efficiency", "compute ms",
              "comm ms", "filter ms", "comm+filter share", "peak RSS server MB", "peak RSS agent MB"]
    table = markdown_table(header, [[
        r["agents_per_rank"], r["ranks"], f"{r['rounds_per_second']:.2f}", f"{r['round_ms']:.1f}",
        f"{r['bound_ms']:.1f}", f"{r['efficiency']:.2f}", f"{r['compute_ms']:.1f}",
        f"{r['communication_ms']:.1f}", f"{r['filter_ms']:.1f}",
        f"{100 * r['comm_plus_filter_share']:.1f}%", f"{r['peak_rss_server_mb']:.0f}",
        f"{r['peak_rss_agent_max_mb']:.0f}"] for r in results])
    print(f"compute bound: all {args.n} agents' gradients {bounds[0]['all_gradients_ms']:.1f} ms before the "
          f"jobs, {bounds[1]['all_gradients_ms']:.1f} ms after, one thread; {cores} cores\n")
    print(table)
    path = save_json(args.out, {
        "benchmark": f"server-mode round breakdown and efficiency, LeNet-MNIST, n={args.n}, k=16, "
                     f"{args.aggregator} f=1, one {args.fault} agent",
        "command": f"python benchmarks/bench_round.py --rounds {rounds} --aggregator {args.aggregator} "
                   f"--fault {args.fault} --repeat {args.repeat}",
        "machine": machine(), "compute_bound": bounds, "cores": cores, "results": results, "table": table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
