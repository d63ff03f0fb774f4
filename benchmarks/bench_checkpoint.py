"""What the checkpoint's checks cost: write and read times of a whole checkpoint, two commits alternated.

    python benchmarks/bench_checkpoint.py --old CLONE_OF_OLD [--repeat 3]

Each repeat runs this script's worker once under the old tree and once under
the new (this one), alternated, so both see the same machine. The worker
writes every rank's file of one checkpoint and commits it as the driver
does (new: each file's SHA-256 and size into meta.json; the newest two
kept, against one before), six times in a row as a run does, then reads
every rank's file of the last one back as a resume does, six times (new:
size and SHA-256 checked, then ``torch.load(weights_only=True)``; old:
``torch.load(weights_only=False)``).
The states have the shapes of the real ranks' states (server mode, LeNet,
d = 431,080): the server's model and generator (and its averaging memory,
n x d float32, in the 200-agent setting, where the server's file is 345 MB),
and the agent ranks' samplers and generators.

Settings: ``lenet-10``: 10 agents on 10 agent ranks, no averaging (11
files); ``lenet-200``: 200 agents, 100 a rank, averaging 0.9 (3 files).
One process writes and reads every file in turn (in a job, the ranks do
it at once). Times are the median of 5 after a warm-up; the files go to a
temporary directory on the disk of ``--dir`` (default: the system's).
Prints a table; JSON in benchmarks/results/checkpoint_checks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

D = 431_080
SETTINGS = {"lenet-10": dict(n=10, per_rank=1, averaging=False),
            "lenet-200": dict(n=200, per_rank=100, averaging=True)}


def states(n: int, per_rank: int, averaging: bool) -> list[dict]:
    """One state per rank, shaped like the server mode's."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    server = {"model": torch.randn(D, generator=g), "rng": g.get_state(),
              "averaging": torch.randn(n, D, generator=g) if averaging else None, "memory": {}}
    traffic = {"sent": {"protocol": 123456789}, "received": {"protocol": 987654321}}
    out = [{"role": {"server": server}, "traffic": traffic, "phases": {"filter": 1.5, "step": 0.5}}]
    for first in range(0, n, per_rank):
        agents = {}
        for i in range(first, min(n, first + per_rank)):
            rng = np.random.Generator(np.random.PCG64(i))
            agents[i] = {"id": i, "sampler": {"shard_size": 600, "batch_size": 16, "fraction": 0.0,
                                              "rng": rng.bit_generator.state},
                         "fault_rng": None, "losses": {"total": 1.25, "count": 3}, "memory": {},
                         "codec_rng": None}
        out.append({"role": {"agents": agents, "coalition": None, "replica": None}, "traffic": traffic,
                    "phases": {"compute": 2.5}})
    return out


def worker(setting: str, directory: str) -> dict:
    """Write and read one checkpoint of ``setting`` with the mpisim on PYTHONPATH (old or new API)."""
    from mpisim import checkpoint

    new = hasattr(checkpoint, "read_rank_bytes")
    ranks = states(**SETTINGS[setting])
    run_dir = Path(tempfile.mkdtemp(dir=directory))
    (run_dir / "metrics.jsonl").write_text('{"round": 0}\n')

    def write(t: int) -> None:
        digests = [checkpoint.write_rank(run_dir, t, r, s) for r, s in enumerate(ranks)]
        if new:
            files = {checkpoint.rank_file(r): {"bytes": g.bytes, "sha256": g.sha256}
                     for r, g in enumerate(digests)}
            meta = checkpoint.Meta(round=t, world_size=len(ranks), seconds=1.0, metrics_lines=1,
                                   metrics_bytes=13, metrics_sha256="", files=files)
        else:
            meta = checkpoint.Meta(round=t, world_size=len(ranks), seconds=1.0, metrics_lines=1)
        checkpoint.commit(run_dir, meta)

    def read(t: int) -> None:
        if new:
            meta = checkpoint.read_meta(run_dir, t)
            for r in range(len(ranks)):
                checkpoint.decode(checkpoint.read_rank_bytes(run_dir, meta, r), "")
        else:
            meta = checkpoint.latest(run_dir)
            for r in range(len(ranks)):
                checkpoint.read_rank(run_dir, meta, r)

    # As in a job: checkpoints written one after the other during the run, read at a resume.
    times = {"write": [], "read": []}
    for t in range(1, 7):  # the first of each is a warm-up
        start = time.perf_counter()
        write(t)
        times["write"].append(time.perf_counter() - start)
    for _ in range(6):
        start = time.perf_counter()
        read(6)
        times["read"].append(time.perf_counter() - start)
    size = sum(f.stat().st_size for f in (run_dir / "checkpoint" / f"round-{6:06d}").glob("rank-*.pt"))
    shutil.rmtree(run_dir)
    return {"write_ms": 1e3 * statistics.median(times["write"][1:]),
            "read_ms": 1e3 * statistics.median(times["read"][1:]), "bytes": size, "files": len(ranks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="a checkout of the commit before the checks")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the checkpoints are written")
    parser.add_argument("--worker", nargs=2, metavar=("SETTING", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "checkpoint_checks.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    new_tree = str(Path(__file__).resolve().parents[1])
    directory = args.dir or tempfile.gettempdir()
    runs = []
    for repeat in range(args.repeat):
        for setting in SETTINGS:
            for label, tree in (("old", args.old), ("new", new_tree)):
                out = subprocess.run([sys.executable, __file__, "--old", args.old, "--worker", setting, directory],
                                     env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True,
                                     check=True, timeout=1800)
                runs.append({"repeat": repeat, "setting": setting, "code": label, **json.loads(out.stdout)})
                print(f"{repeat} {setting:10} {label}: write {runs[-1]['write_ms']:9.1f} ms, "
                      f"read {runs[-1]['read_ms']:9.1f} ms ({runs[-1]['bytes'] / 1e6:.1f} MB in "
                      f"{runs[-1]['files']} files)", flush=True)
    print(f"\n{'setting':10} {'':5} {'write ms (old -> new)':>28} {'read ms (old -> new)':>28}")
    for setting in SETTINGS:
        row = lambda code, key: [r[key] for r in runs if r["setting"] == setting and r["code"] == code]  # noqa: E731
        w_old, w_new, r_old, r_new = row("old", "write_ms"), row("new", "write_ms"), row("old", "read_ms"), \
            row("new", "read_ms")
        print(f"{setting:10} {'':5} {min(w_old):9.1f}-{max(w_old):<7.1f} -> {min(w_new):7.1f}-{max(w_new):<7.1f}"
              f" {min(r_old):9.1f}-{max(r_old):<7.1f} -> {min(r_new):7.1f}-{max(r_new):<7.1f}")
    Path(args.out).write_text(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "runs": runs}, indent=1) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
