"""The sharded server: each server rank's memory and the round's time against S = server.ranks.

    python benchmarks/bench_sharded.py [--n 200] [--agent-ranks 2] [--servers 1,2,3,4] [--rounds 20]

LeNet on MNIST (d = 431,080), n = 200 agents (batch 16) packed on two agent
ranks, one ALIE agent (omniscient), with a coordinate-wise rule (cwtm, f = 1)
and a rule that needs whole-row sums (krum: a Gram matrix reduced over the
server ranks every round). For each S the job runs ``--rounds`` rounds and
reports, per server rank, its peak resident set and the size of its slice
of the (n, d) block, and the server's phases per round (broadcast, gather,
filter, step). On this 2-core machine the S server ranks share the cores
with the agent ranks, so the round time says what sharding costs here, not
what it gains on a cluster; the memory per server rank is what falls as 1/S.

Prints a table and saves benchmarks/results/sharded_server.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import MNIST_DIR, machine, markdown_table, run_job, save_json


def job_args(args, rule: str, servers: int) -> list[str]:
    per_rank = -(-args.n // args.agent_ranks)
    return ["--data.name", "mnist", "--data.root", str(MNIST_DIR), "--model.name", "lenet",
            "--agents.n", str(args.n), "--agents.per_rank", str(per_rank), "--data.batch_size", "16",
            "--aggregator.name", rule, "--aggregator.f", "1", "--byzantine.fault", "alie",
            "--byzantine.count", "1", "--optim.lr", "0.01", "--run.rounds", str(args.rounds),
            "--run.eval_every", str(args.rounds), "--data.test_size", "1000", "--server.ranks", str(servers)]


def row_of(rule: str, servers: int, summary: dict) -> dict:
    rounds, d, n = summary["rounds"], summary["d"], summary["n"]
    phases = summary["server_phases"]  # rank 0's
    server_ranks = [r for r in summary["ranks"] if r["role"] == "server"]
    slices = summary.get("server_slices", [0, d])
    widest = max(b - a for a, b in zip(slices, slices[1:]))
    loop = summary["loop_seconds"] - phases.get("eval", 0.0)
    return {
        "rule": rule, "servers": servers, "n": n, "d": d, "rounds": rounds,
        "round_ms": 1e3 * loop / rounds,
        **{f"server_{k}_ms": 1e3 * phases.get(k, 0.0) / rounds for k in ("bcast", "gather", "filter", "step")},
        "block_mb_per_server_rank": n * widest * 4 / 2**20,
        "peak_rss_server_mb": [r["peak_rss"] / 2**20 for r in server_ranks],
        "peak_rss_agent_mb": max(r["peak_rss"] for r in summary["ranks"] if r["role"] == "agents") / 2**20,
        "reduce_bytes_per_round": summary.get("server_reduce_bytes", 0) / rounds,
        "final_test_accuracy": summary["final"]["test_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="agents")
    parser.add_argument("--agent-ranks", type=int, default=2)
    parser.add_argument("--servers", default="1,2,3,4", help="values of server.ranks")
    parser.add_argument("--rules", default="cwtm,krum")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    servers = [int(s) for s in args.servers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rule in args.rules.split(","):
            for s in servers:
                summary = run_job(s + args.agent_ranks, job_args(args, rule, s), out_dir=Path(tmp),
                                  name=f"{rule}-s{s}")
                rows.append(row_of(rule, s, summary))
                r = rows[-1]
                print(f"  {rule} S={s}: {r['round_ms']:.0f} ms a round, server ranks' peak RSS "
                      f"{', '.join(f'{m:.0f}' for m in r['peak_rss_server_mb'])} MB", flush=True)
    header = ["rule", "S", "round ms", "filter ms", "gather ms", "bcast ms", "block MB / server rank",
              "peak RSS / server rank MB", "reduced / round"]
    table = markdown_table(header, [[
        r["rule"], r["servers"], f"{r['round_ms']:.0f}", f"{r['server_filter_ms']:.1f}",
        f"{r['server_gather_ms']:.1f}", f"{r['server_bcast_ms']:.1f}", f"{r['block_mb_per_server_rank']:.0f}",
        " / ".join(f"{m:.0f}" for m in r["peak_rss_server_mb"]),
        f"{r['reduce_bytes_per_round'] / 1024:.0f} KiB"] for r in rows])
    print(table)
    path = save_json("sharded_server.json", {
        "benchmark": f"sharded server, LeNet-MNIST, n={args.n} on {args.agent_ranks} agent ranks, k=16, "
                     f"one alie agent, {args.rounds} rounds",
        "command": f"python benchmarks/bench_sharded.py --n {args.n} --agent-ranks {args.agent_ranks} "
                   f"--servers {args.servers} --rules {args.rules} --rounds {args.rounds}",
        "machine": machine(), "results": rows, "table": table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
