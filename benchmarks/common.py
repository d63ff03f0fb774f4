"""Shared pieces of the benchmark scripts: machine description, JSON output, job runs."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MNIST_DIR = Path(os.environ.get("MPISIM_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))

sys.path.insert(0, str(ROOT))

from mpisim import launcher, metrics  # noqa: E402


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


def run_server_mode(nprocs: int, args: list[str], *, out_dir: Path, name: str,
                    timeout: float = 3600) -> dict:
    """Run one server-mode job and return its summary.json (raises on failure)."""
    full = ["-m", "mpisim.server_mode", *args, "--run.out_dir", str(out_dir), "--run.name", name,
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


def run_grid(out_name: str, cells: dict[str, list[str]], *, nprocs: int, settings: dict,
             fresh: bool = False) -> dict:
    """Run one server-mode job per cell, keeping results in benchmarks/results/OUT_NAME.

    ``cells`` maps a key to the job's arguments. A cell already in the file
    with the same ``settings`` is not run again (a long sweep can be resumed);
    the file is rewritten after every cell. Returns {key: result}.
    """
    import tempfile

    path = RESULTS / out_name
    done = {} if fresh or not path.exists() else json.loads(path.read_text()).get("cells", {})
    with tempfile.TemporaryDirectory() as tmp:
        for key, args in cells.items():
            if key in done and done[key].get("settings") == settings:
                continue
            name = "".join(c if c.isalnum() else "-" for c in key)
            summary = run_server_mode(nprocs, args, out_dir=Path(tmp), name=name)
            curve = metrics.read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")
            done[key] = {
                "settings": settings,
                "final_test_accuracy": summary["final"]["test_accuracy"],
                "final_test_loss": summary["final"]["test_loss"],
                "rounds_per_second": summary["rounds_per_second"],
                "curve": [(r["round"], r["test_accuracy"]) for r in curve],
            }
            acc = done[key]["final_test_accuracy"]
            print(f"  {key:<45} {'diverged' if acc is None else f'{100 * acc:.2f}%'}", flush=True)
            save_json(out_name, {"cells": done})
    return done


def accuracy_cell(result: dict | None) -> str:
    if result is None:
        return "-"
    acc = result["final_test_accuracy"]
    return "diverged" if acc is None else f"{100 * acc:.1f}"
