"""Nothing else changes: the same runs on an older commit and on this tree, in one session.

    python benchmarks/before_after.py --old REV [--pairs 3] [--rounds 200] [--skip-round-time]

Two checks that a refactoring changed nothing a user sees (issue 18, must-show 6):

- **accuracy**: the default job (``./launch/run.sh``: 10 agents, LeNet on
  the built-in data set, cge against one gradient-reversing agent, 300
  rounds) and four cells of the CGE paper's Figures 2-3 (LeNet on MNIST,
  n = 10, f = 1, k = 16; cge at step 0.1 / 9 and cwtm at 0.1, under the
  gradient_reverse and coordinate_wise faults; ``--rounds`` rounds), each run
  once on each side: the final test accuracy and the SHA-256 of the saved
  model, which must be equal;
- **round time**: ``benchmarks/bench_round.py --quick`` of each side,
  alternated ``--pairs`` times (old, new, old, new, ...) so that the
  machine's drift falls on both.

The old side is ``git archive REV`` in a temporary directory, imported
through PYTHONPATH. Saves benchmarks/results/before_after.json (``--out``)
and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import MNIST_DIR, ROOT, machine, markdown_table, save_json

CGE_CELLS = {  # label -> arguments (benchmarks/cge_table.py's setup)
    f"{rule} / {fault}": ["--aggregator.name", rule, "--optim.lr", lr, "--byzantine.fault", fault]
    for rule, lr in (("cge", str(0.1 / 9)), ("cwtm", "0.1"))
    for fault in ("gradient_reverse", "coordinate_wise")
}


def cge_args(rounds: int) -> list[str]:
    return ["--data.name", "mnist", "--data.root", str(MNIST_DIR), "--agents.n", "10", "--agents.per_rank", "5",
            "--data.batch_size", "16", "--aggregator.f", "1", "--byzantine.count", "1", "--byzantine.ids", "0",
            "--run.rounds", str(rounds), "--run.eval_every", str(rounds), "--run.seed", "0"]


def run(tree: Path, nprocs: int, args: list[str], out: Path, name: str) -> dict:
    """One server-mode job with ``tree``'s code; its final accuracy and the model's SHA-256."""
    env = {**os.environ, "PYTHONPATH": str(tree), "MPISIM_MNIST_DIR": str(MNIST_DIR)}
    command = ["mpiexec", "-n", str(nprocs), sys.executable, "-m", "mpisim.server_mode", *args,
               "--run.out_dir", str(out), "--run.name", name, "--run.progress", "false", "--run.save_model", "true"]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"job failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    summary = json.loads((out / name / "summary.json").read_text())
    model = (out / name / "model.npy").read_bytes()
    return {"final_test_accuracy": summary["final"]["test_accuracy"],
            "model_sha256": hashlib.sha256(model).hexdigest(), "wall_s": summary.get("wall_time_s")}


def round_time(tree: Path, out: Path) -> dict:
    """``bench_round.py --quick`` of ``tree``; its JSON result (written under ``out``, not the tree's results)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "MPISIM_MNIST_DIR": str(MNIST_DIR), "MPISIM_RESULTS": str(out)}
    done = subprocess.run([sys.executable, str(tree / "benchmarks" / "bench_round.py"), "--quick"], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"bench_round failed on {tree}:\n{done.stderr[-3000:]}")
    return json.loads((out / "round_breakdown.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the commit to compare with (e.g. the one before a change)")
    parser.add_argument("--pairs", type=int, default=3, help="alternations of the round-time benchmark")
    parser.add_argument("--rounds", type=int, default=200, help="rounds of the CGE cells")
    parser.add_argument("--skip-round-time", action="store_true")
    parser.add_argument("--out", default="before_after.json", help="result file under benchmarks/results/")
    args = parser.parse_args()
    old_rev = subprocess.run(["git", "rev-parse", "--short", args.old], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
    new_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "archive", old_rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        (old.parent / "shared").symlink_to(ROOT.parent / "shared")
        sides = {"old": old, "new": ROOT}
        out = Path(tmp) / "runs"
        jobs = {"default job (300 rounds)": (11, []),
                **{f"CGE Fig. 2-3: {k} ({args.rounds} rounds)": (3, [*cge_args(args.rounds), *v])
                   for k, v in CGE_CELLS.items()}}
        accuracy = []
        for i, (label, (nprocs, job)) in enumerate(jobs.items()):
            pair = {side: run(tree, nprocs, job, out / side, f"job{i}") for side, tree in sides.items()}
            accuracy.append({"job": label, **pair})
            print(f"{label}: {pair['old']['final_test_accuracy']:.4f} / {pair['new']['final_test_accuracy']:.4f}",
                  flush=True)
        timing = []
        for pair in range(0 if args.skip_round_time else args.pairs):
            for side, tree in sides.items():
                result = round_time(tree, out / f"round-{side}-{pair}")
                timing.append({"pair": pair + 1, "side": side, "results": result["results"],
                               "compute_bound": result["compute_bound"]})
                print(f"round time, pair {pair + 1}, {side}: "
                      + ", ".join(f"{r['agents_per_rank']}/rank {r['round_ms']:.1f} ms" for r in result["results"]),
                      flush=True)
    rows = [[a["job"], f"{100 * a['old']['final_test_accuracy']:.2f}%", f"{100 * a['new']['final_test_accuracy']:.2f}%",
             "yes" if a["old"]["model_sha256"] == a["new"]["model_sha256"] else "NO"] for a in accuracy]
    print(markdown_table(["job", f"accuracy at {old_rev}", f"accuracy at {new_rev}", "same model bytes"], rows))
    if timing:
        per_rank = sorted({r["agents_per_rank"] for t in timing for r in t["results"]})
        rows = []
        for k in per_rank:
            ms = {side: [r["round_ms"] for t in timing if t["side"] == side for r in t["results"]
                         if r["agents_per_rank"] == k] for side in sides}
            rows.append([k, *(f"{statistics.median(ms[s]):.1f}" for s in sides),
                         f"{statistics.median(ms['new']) / statistics.median(ms['old']):.3f}"])
        print(markdown_table(["agents per rank", f"round ms at {old_rev} (median)", f"at {new_rev}", "new / old"],
                             rows))
    save_json(args.out, {"command": "python benchmarks/" + " ".join(Path(a).name if i == 0 else a
                                                                           for i, a in enumerate(sys.argv)),
                                    "old": old_rev, "new": new_rev, "machine": machine(),
                                    "accuracy": accuracy, "round_time": timing})


if __name__ == "__main__":
    main()
