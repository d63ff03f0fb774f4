"""Bytes on the wire against the bytes mpisim reports, on test hosts (launch/hosts.sh; root).

    sudo python benchmarks/bench_wire.py [--dim 100000] [--rounds 20] [--agents 10]

The server runs alone on host mpisim-h1, its agents on mpisim-h2 and mpisim-h3 (one agent a rank,
half on each), so every protocol byte between the server and an agent crosses a veth. For each
case the byte and packet counters of the three hosts' interfaces (read from the bridge side,
``/sys/class/net/mpisim-vK/statistics``) are taken before and after the run and set beside what
the run's summary says each rank sent and received, by category (protocol, adversary). Cases:
the dense uplink, the codecs sign, scaled_sign, topk and qsgd (vanilla compressed GD, the mean),
and an omniscient fault (ALIE under the trimmed mean), whose colluding agents' own exchange is
counted apart as adversary bytes. Then the decentralized mode (BRIDGE-T, 12 nodes of a dense
Erdos-Renyi graph, four on each of the three hosts, one rank a host): every byte its
neighbourhood exchange sends to another rank crosses a veth. Least squares on synthetic data of
``--dim`` coordinates, so that the payloads dwarf the control messages. The hosts are started if
none are up, and removed at the end if this script started them. Saves
benchmarks/results/wire_bytes.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine, markdown_table, save_json
from mpisim.mpi import launcher

HOSTS = ROOT / "launch" / "hosts.sh"
NET = "10.77.0"

CASES = {  # label -> extra arguments
    "dense, sign_flip under cwtm": ["--aggregator.name", "cwtm", "--byzantine.fault", "sign_flip"],
    "sign (1 bit)": ["--compression.codec", "sign", "--aggregator.name", "mean", "--byzantine.fault", "sign_flip"],
    "scaled_sign": ["--compression.codec", "scaled_sign", "--aggregator.name", "mean",
                    "--byzantine.fault", "sign_flip"],
    "topk (k = 1%)": ["--compression.codec", "topk", "--compression.params.ratio", "0.01",
                      "--aggregator.name", "mean", "--byzantine.fault", "sign_flip"],
    "qsgd": ["--compression.codec", "qsgd", "--aggregator.name", "mean", "--byzantine.fault", "sign_flip"],
    "dense, ALIE under cwtm (omniscient)": ["--aggregator.name", "cwtm", "--byzantine.fault", "alie"],
}


def counters(k: int) -> dict[str, int]:
    """Host k's traffic, from the bridge side of its veth: what it sent is what the bridge received."""
    base = Path(f"/sys/class/net/mpisim-v{k}/statistics")
    read = {name: int((base / name).read_text()) for name in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}
    return {"sent": read["rx_bytes"], "received": read["tx_bytes"],
            "packets_sent": read["rx_packets"], "packets_received": read["tx_packets"]}


def hosts_up() -> bool:
    return "mpisim-h1" in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def run_job(layout: str, nprocs: int, module: str, run_args: list[str], out: Path,
            name: str) -> tuple[dict, dict[int, dict]]:
    """One job across the hosts (LAYOUT: hydra's -hosts list); its summary and each host's wire bytes."""
    mpiexec = [*launcher.mpiexec_command(), "-launcher", "rsh", "-launcher-exec", str(ROOT / "launch" / "hosts-enter"),
               "-localhost", f"{NET}.1", "-hosts", layout]
    cmd = [*mpiexec, "-n", str(nprocs), sys.executable, "-m", module, *run_args, "--run.progress", "false",
           "--run.out_dir", str(out), "--run.name", name]
    before = {k: counters(k) for k in (1, 2, 3)}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
    after = {k: counters(k) for k in (1, 2, 3)}
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    wire = {k: {key: after[k][key] - before[k][key] for key in after[k]} for k in after}
    return json.loads((out / name / "summary.json").read_text()), wire


def regression(args, samples: int) -> list[str]:
    return ["--data.name", "synthetic_regression", "--data.params.samples", str(samples), "--data.params.dim",
            str(args.dim), "--data.params.test_samples", "20", "--model.name", "least_squares",
            "--run.rounds", str(args.rounds), "--run.eval_every", str(args.rounds)]


def run_case(args, extra: list[str], out: Path, name: str) -> tuple[dict, dict[int, dict]]:
    half = args.agents // 2
    layout = f"{NET}.11:1,{NET}.12:{half},{NET}.13:{args.agents - half}"
    return run_job(layout, args.agents + 1, "mpisim.server_mode", [
        *regression(args, 20 * args.agents), "--optim.lr", "0.01", "--agents.n", str(args.agents),
        "--agents.per_rank", "1", "--aggregator.f", "2", "--byzantine.count", "2", "--byzantine.ids", "0,1",
        *extra], out, name)


def run_decentralized(args, out: Path) -> dict:
    """12 nodes, 4 a rank, one rank a host: the exchange's bytes to other ranks all cross a veth."""
    summary, wire = run_job(f"{NET}.11:1,{NET}.12:1,{NET}.13:1", 3, "mpisim.decentralized", [
        *regression(args, 240), "--optim.lr", "0.01", "--nodes.n", "12", "--nodes.per_rank", "4",
        "--graph.p", "0.8", "--screening.b", "1", "--byzantine.count", "1"], out, "decentralized")
    sent = {r["host"]: r["traffic"]["sent"].get("protocol", 0) for r in summary["ranks"]}
    on_wire = {f"mpisim-h{k}": wire[k]["sent"] for k in wire}
    packets = sum(wire[k]["packets_sent"] for k in wire)
    beyond = sum(on_wire.values()) - sum(sent.values())
    return {"reported_sent": sent, "wire_sent": on_wire, "extra_bytes": beyond, "packets": packets,
            "summary_bytes": summary["bytes"], "wire": wire}


def reported(summary: dict, host: str, direction: str, category: str) -> int:
    return sum(r["traffic"][direction].get(category, 0) for r in summary["ranks"] if r["host"] == host)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--agents", type=int, default=10)
    args = parser.parse_args()
    started = False
    if not hosts_up():
        subprocess.run(["bash", str(HOSTS), "start", "3"], check=True, capture_output=True)
        started = True
    rows, results = [], {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label, extra in CASES.items():
                name = "".join(c if c.isalnum() else "-" for c in label)
                summary, wire = run_case(args, extra, Path(tmp), name)
                server_sent = reported(summary, "mpisim-h1", "sent", "protocol")
                server_received = reported(summary, "mpisim-h1", "received", "protocol")
                adversary = sum(reported(summary, f"mpisim-h{k}", "sent", "adversary") for k in (2, 3))
                on_wire_out, on_wire_in = wire[1]["sent"], wire[1]["received"]
                packets = wire[1]["packets_sent"] + wire[1]["packets_received"]
                extra_bytes = on_wire_out + on_wire_in - server_sent - server_received
                results[label] = {"summary_bytes": summary["bytes"], "server_reported_sent": server_sent,
                                  "server_reported_received": server_received, "adversary_reported": adversary,
                                  "wire": wire, "extra_bytes": extra_bytes, "packets": packets}
                rows.append([label, f"{server_sent:,}", f"{on_wire_out:,}", f"{server_received:,}", f"{on_wire_in:,}",
                             f"{100 * extra_bytes / (server_sent + server_received):.2f}%",
                             f"{extra_bytes / packets:.1f}", f"{adversary:,}",
                             f"{wire[2]['sent'] + wire[3]['sent'] - on_wire_in:,}"])
                print(f"  {label}: server sent {server_sent:,} B, its host's wire {on_wire_out:,} B; received "
                      f"{server_received:,} B, wire {on_wire_in:,} B", flush=True)
            decentralized = run_decentralized(args, Path(tmp))
            results["decentralized"] = decentralized
    finally:
        if started:
            subprocess.run(["bash", str(HOSTS), "stop"], capture_output=True)
    header = ["case", "server sent (mpisim)", "h1 wire out", "server received (mpisim)", "h1 wire in",
              "wire beyond mpisim", "per packet (B)", "adversary (mpisim)", "h2+h3 out, not to h1"]
    table = markdown_table(header, rows)
    print(table)
    dec_rows = [[host, f"{decentralized['reported_sent'][host]:,}", f"{decentralized['wire_sent'][host]:,}",
                 f"{decentralized['wire_sent'][host] - decentralized['reported_sent'][host]:,}"]
                for host in sorted(decentralized["wire_sent"])]
    dec_table = markdown_table(["host (one rank, 4 nodes)", "exchange sent (mpisim)", "wire out", "beyond"],
                               dec_rows)
    print(dec_table)
    print(f"decentralized: {decentralized['extra_bytes']:,} B beyond mpisim's count in "
          f"{decentralized['packets']:,} packets")
    path = save_json("wire_bytes.json", {
        "benchmark": __doc__.split("\n\n")[0],
        "command": f"python benchmarks/bench_wire.py --dim {args.dim} --rounds {args.rounds} --agents {args.agents}",
        "machine": machine(), "results": results, "table": table, "decentralized_table": dec_table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
