"""Where a server-mode round's time goes, and how much memory each rank needs.

    python benchmarks/bench_round.py [--rounds 300] [--quick]

LeNet on MNIST (d = 431,080), n = 10 agents, k = 16, CGE with f = 1, no
fault, at several packings (agents per rank). Each job runs with an
evaluation at the start and at the end only; their time is left out.

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
import tempfile
from pathlib import Path

from common import MNIST_DIR, machine, markdown_table, run_job, save_json

PACKINGS = [  # (agents per rank, MPI ranks)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="60 rounds")
    parser.add_argument("--aggregator", default="cge")
    args = parser.parse_args()
    rounds = 60 if args.quick else args.rounds

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for per_rank, nprocs in PACKINGS:
            summary = run_job(nprocs, [
                "--data.name", "mnist", "--data.root", str(MNIST_DIR), "--agents.n", "10",
                "--agents.per_rank", str(per_rank), "--data.batch_size", "16",
                "--aggregator.name", args.aggregator, "--aggregator.f", "1",
                "--byzantine.fault", "none", "--optim.lr", "0.01",
                "--run.rounds", str(rounds), "--run.eval_every", str(rounds),
            ], out_dir=Path(tmp), name=f"pack{per_rank}")
            row = {"agents_per_rank": per_rank, "ranks": nprocs, **breakdown(summary)}
            results.append(row)
            print(f"  {per_rank} agents/rank on {nprocs} ranks: {row['rounds_per_second']:.2f} rounds/s",
                  flush=True)

    header = ["agents/rank", "ranks", "rounds/s", "round ms", "compute ms", "comm ms", "filter ms",
              "comm+filter share", "peak RSS server MB", "peak RSS agent MB"]
    table = markdown_table(header, [[
        r["agents_per_rank"], r["ranks"], f"{r['rounds_per_second']:.2f}", f"{r['round_ms']:.1f}",
        f"{r['compute_ms']:.1f}", f"{r['communication_ms']:.1f}", f"{r['filter_ms']:.1f}",
        f"{100 * r['comm_plus_filter_share']:.1f}%", f"{r['peak_rss_server_mb']:.0f}",
        f"{r['peak_rss_agent_max_mb']:.0f}"] for r in results])
    print(table)
    path = save_json("round_breakdown.json", {
        "benchmark": "server-mode round breakdown, LeNet-MNIST, n=10, k=16, CGE f=1, no fault",
        "command": f"python benchmarks/bench_round.py --rounds {rounds}",
        "machine": machine(), "results": results, "table": table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
