"""Shared pieces of the benchmark scripts: machine description, JSON output, job runs."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MNIST_DIR = Path(os.environ.get("MPISIM_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))

sys.path.insert(0, str(ROOT))

from mpisim import metrics
from mpisim.mpi import launcher  # noqa: E402


def machine() -> dict:
    """What the numbers were measured on."""
    import torch
    from mpi4py import MPI

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mpi": MPI.Get_library_version().splitlines()[0].strip(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip(),
    }


def save_json(name: str, payload: dict) -> Path:
    """Write benchmarks/results/NAME atomically and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    metrics.atomic_write(path, json.dumps(payload, indent=2) + "\n")
    return path


def run_job(nprocs: int, args: list[str], *, out_dir: Path, name: str,
                    timeout: float = 3600, module: str = "mpisim.server_mode") -> dict:
    """Run one job (server mode unless ``module`` says otherwise); return its summary.json.

    Raises RuntimeError with the job's output on failure.
    """
    full = ["-m", module, *args, "--run.out_dir", str(out_dir), "--run.name", name,
            "--run.progress", "false"]
    result = launcher.run(nprocs, full, timeout=timeout, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"job failed ({'timeout' if result.timed_out else result.returncode}): "
                           f"{' '.join(result.command)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    run_dir = out_dir / name
    return json.loads((run_dir / "summary.json").read_text())


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def check_jobs(cells: dict[str, list[str]], *, nprocs: int, module: str = "mpisim.server_mode") -> None:
    """Parse and validate every job's configuration here, before any job starts.

    Exits with the job's key and the config error (field and constraint) if
    one of them could not run on ``nprocs`` ranks.
    """
    from mpisim import config

    cls, validate = {
        "mpisim.server_mode": (config.ServerModeConfig, config.validate_server_mode),
        "mpisim.decentralized": (config.DecentralizedConfig, config.validate_decentralized),
        "mpisim.one_round": (config.OneRoundConfig, config.validate_one_round),
    }[module]
    for key, args in cells.items():
        try:
            cfg, _ = config.parse_args(cls, args, prog=module, description="")
            validate(cfg, nprocs)
        except config.ConfigError as exc:
            raise SystemExit(f"benchmark job {key!r}: config error: {exc}") from None


def run_grid(out_name: str, cells: dict[str, list[str]], *, nprocs: int, settings: dict,
             fresh: bool = False, module: str = "mpisim.server_mode", keep=None,
             check_only: bool = False) -> dict:
    """Run one job per cell, keeping results in benchmarks/results/OUT_NAME.

    ``cells`` maps a key to the job's arguments; all of them are validated
    first (:func:`check_jobs`), so that a typo stops a sweep before it
    starts rather than an hour into it; ``check_only`` stops there. A cell
    already in the file with the same ``settings`` is not run again (a long
    sweep can be resumed); the file is rewritten after every cell, and each
    cell records the machine, commit and start date of the sweep that made
    it (``made_on``). ``keep(summary, records)`` picks what to store of a job
    (default: the server mode's final accuracy and curve). Returns {key: result}.
    """
    import tempfile

    check_jobs(cells, nprocs=nprocs, module=module)
    if check_only:
        print(f"{len(cells)} jobs checked: every configuration is valid on {nprocs} ranks")
        raise SystemExit(0)
    made_on = machine()  # the cells of one file may come from several runs, machines and commits

    path = RESULTS / out_name
    before = {} if fresh or not path.exists() else json.loads(path.read_text())
    done = before.get("cells", {})
    if "machine" in before:  # cells from before per-cell records: the file's machine made them
        for cell in done.values():
            cell.setdefault("made_on", before["machine"])
    with tempfile.TemporaryDirectory() as tmp:
        for key, args in cells.items():
            if key in done and done[key].get("settings") == settings:
                continue
            name = "".join(c if c.isalnum() else "-" for c in key)
            started = time.perf_counter()
            summary = run_job(nprocs, args, out_dir=Path(tmp), name=name, module=module)
            wall = time.perf_counter() - started  # the job's own wall time, launch included
            records = metrics.read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")
            done[key] = {"settings": settings, "made_on": made_on, "wall_seconds": wall,
                         **(keep or _keep_server)(summary, records)}
            print(f"  {key:<45} {_headline(done[key], summary)}", flush=True)
            save_json(out_name, {"cells": done, "made_on": made_by(done)})
    return done


def _headline(cell: dict, summary: dict) -> str:
    """The final test accuracy of a job, or its distance to the optimum for regression."""
    acc = cell.get("final_test_accuracy", summary["final"].get("test_accuracy"))
    if acc is not None:
        return f"{100 * acc:.2f}%"
    distance = summary["final"].get("distance_to_optimum")
    return "diverged" if distance is None or not math.isfinite(distance) else f"||w - w*|| = {distance:.4g}"


def made_by(results: dict) -> list[dict]:
    """The distinct machines and commits the cells of a sweep were made on (``made_on``)."""
    seen = {json.dumps(r.get("made_on"), sort_keys=True) for r in results.values() if r.get("made_on")}
    return [json.loads(m) for m in sorted(seen)]


def _keep_server(summary: dict, records: list[dict]) -> dict:
    return {
        "final_test_accuracy": summary["final"]["test_accuracy"],
        "final_test_loss": summary["final"]["test_loss"],
        "rounds_per_second": summary["rounds_per_second"],
        "curve": [(r["round"], r["test_accuracy"]) for r in records],
    }


def accuracy_cell(result: dict | None) -> str:
    if result is None:
        return "-"
    acc = result["final_test_accuracy"]
    return "diverged" if acc is None else f"{100 * acc:.1f}"


def sweep_parser(description: str, *, n: int, default_rounds: int, only: str):
    """Command line shared by the server-mode sweeps (cge_table, attack_table, averaging_table)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=default_rounds)
    parser.add_argument("--per-rank", type=int, default=5, help=f"agents per rank ({n} agents)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help=f"comma-separated {only} labels to run")
    parser.add_argument("--fresh", action="store_true", help="ignore cells already in the JSON")
    parser.add_argument("--check", action="store_true", help="validate every job's configuration and exit")
    return parser


def server_job(args, *, n: int, f: int, step: float, fault: str, evaluations: int,
               extra: list[str]) -> list[str]:
    """Arguments of one server-mode sweep job: LeNet on MNIST, n agents with k = 16,
    agents 0..f-1 running ``fault``, the rule set to tolerate f, step ``step``
    (``extra``, which comes later, may override any of these)."""
    return [
        "--data.name", "mnist", "--data.root", str(MNIST_DIR),
        "--agents.n", str(n), "--agents.per_rank", str(args.per_rank), "--data.batch_size", "16",
        "--aggregator.f", str(f), "--optim.lr", str(step),
        "--byzantine.fault", fault, "--byzantine.count", str(f),
        "--byzantine.ids", ",".join(str(i) for i in range(f)),
        "--run.rounds", str(args.rounds), "--run.eval_every", str(max(1, args.rounds // evaluations)),
        "--run.seed", str(args.seed), *extra,
    ]


def rule_by_fault_table(script: str, out_name: str, description: str, *, rules: dict[str, list[str]],
                        faults: list[str], n: int, f: int, step: float, default_rounds: int) -> None:
    """Command line, runs and Markdown table of a server-mode sweep: every rule under every fault.

    LeNet on MNIST, ``n`` agents with k = 16, agents 0..f-1 faulty, every rule
    set to tolerate ``f``, step ``step`` (``rules`` may override it). Shared
    by cge_table.py and attack_table.py.
    """
    args = sweep_parser(description, n=n, default_rounds=default_rounds, only="rule").parse_args()
    settings = {"rounds": args.rounds, "per_rank": args.per_rank, "seed": args.seed}
    wanted = [r for r in rules if not args.only or r in args.only.split(",")]
    cells = {f"{rule}|{fault}": server_job(args, n=n, f=f, step=step, fault=fault, evaluations=5,
                                           extra=rules[rule])
             for rule in wanted for fault in faults}
    results = run_grid(out_name, cells, nprocs=1 + -(-n // args.per_rank), settings=settings,
                       fresh=args.fresh, check_only=args.check)
    table = markdown_table(["fault \\ rule", *rules],
                           [[fault, *[accuracy_cell(results.get(f"{rule}|{fault}")) for rule in rules]]
                            for fault in faults])
    print(f"\nfinal test accuracy (%) after {args.rounds} rounds, MNIST test set (10,000):\n")
    print(table)
    save_json(out_name, {
        "benchmark": description,
        "command": f"python benchmarks/{script} --rounds {args.rounds} --per-rank {args.per_rank}",
        "made_on": made_by(results), "cells": results, "table": table})
