"""Shared pieces of the benchmark scripts: machine description, JSON output, job runs."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# MPISIM_RESULTS moves every result file (the tests point it at a directory of their own).
RESULTS = Path(os.environ.get("MPISIM_RESULTS") or ROOT / "benchmarks" / "results")
MNIST_DIR = Path(os.environ.get("MPISIM_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))

sys.path.insert(0, str(ROOT))

from mpisim import metrics  # noqa: E402
from mpisim.mpi import launcher  # noqa: E402
from mpisim.protocols import decentralized_config, one_round_config, server_config  # noqa: E402

# The exit status of a job that saved a checkpoint and stopped (EX_TEMPFAIL):
# launch/slurm/ requeues it, and the next attempt resumes.
EXIT_CHECKPOINTED = 75


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
        # which SIMD kernels torch runs: results of chaotic runs differ between machines that differ here
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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


class JobFailed(RuntimeError):
    """A job of a sweep ended with a non-zero exit status (``returncode``)."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


def run_job(nprocs: int, args: list[str], *, out_dir: Path, name: str,
                    timeout: float | None = 3600, module: str = "mpisim.server_mode", resume: bool = False,
                    stream: bool = False) -> dict:
    """Run one job (server mode unless ``module`` says otherwise); return its summary.json.

    The run directory is OUT_DIR/NAME (``resume``: continue the run already
    there). ``stream`` lets the job's output through to ours (a SLURM log),
    progress lines included, instead of keeping it for the error message.
    Raises JobFailed with the job's output on failure.
    """
    run_dir = out_dir / name
    where = ["--run.resume", str(run_dir)] if resume else ["--run.name", name]
    full = ["-m", module, *args, "--run.out_dir", str(out_dir), *where,
            *([] if stream else ["--run.progress", "false"])]
    result = launcher.run(nprocs, full, timeout=timeout, cwd=ROOT, capture=not stream)
    if result.returncode != 0:
        output = ("its output is above" if stream else f"\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        raise JobFailed(f"job failed ({'timeout' if result.timed_out else result.returncode}): "
                        f"{' '.join(result.command)}\n{output}", result.returncode)
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
        "mpisim.server_mode": (server_config.ServerModeConfig, server_config.validate_server_mode),
        "mpisim.decentralized": (decentralized_config.DecentralizedConfig, decentralized_config.validate_decentralized),
        "mpisim.one_round": (one_round_config.OneRoundConfig, one_round_config.validate_one_round),
    }[module]
    for key, args in cells.items():
        try:
            cfg, _ = config.parse_args(cls, args, prog=module, description="")
            validate(cfg, nprocs)
        except config.ConfigError as exc:
            raise SystemExit(f"benchmark job {key!r}: config error: {exc}") from None


def run_grid(out_name: str, cells: dict[str, list[str]], *, nprocs: int, settings: dict,
             fresh: bool = False, module: str = "mpisim.server_mode", keep=None,
             check_only: bool = False, modules: dict[str, str] | None = None, cluster=None) -> dict:
    """Run one job per cell, keeping results in benchmarks/results/OUT_NAME.

    ``cells`` maps a key to the job's arguments; all of them are validated
    first (:func:`check_jobs`), so that a typo stops a sweep before it
    starts rather than an hour into it; ``check_only`` stops there. A cell
    already in the file with the same ``settings`` is not run again (a long
    sweep can be resumed); the file is rewritten after every cell, and each
    cell records the machine, commit and start date of the sweep that made
    it (``made_on``). ``keep(summary, records)`` picks what to store of a job
    (default: the server mode's final accuracy and curve). Every job runs
    ``module``, or ``modules[key]`` where given. Returns {key: result}.

    On a cluster (``cluster``, default: the options that
    :func:`add_cluster_options` parsed), ``list_cells`` prints the cells
    and stops, ``cell`` K runs only the K-th cell (0-based, in the order of
    ``cells``) into a file of its own and stops, and ``merge`` gathers the
    cells' files into OUT_NAME and returns as if the grid had run (see
    :func:`run_one_cell` and :func:`merge_cells`).
    """
    import tempfile

    cluster = CLUSTER if cluster is None else cluster
    module_of = {key: (modules or {}).get(key, module) for key in cells}
    for name in dict.fromkeys(module_of.values()):
        check_jobs({k: a for k, a in cells.items() if module_of[k] == name}, nprocs=nprocs, module=name)
    if check_only:
        print(f"{len(cells)} jobs checked: every configuration is valid on {nprocs} ranks")
        raise SystemExit(0)
    if getattr(cluster, "list_cells", False):
        list_cells(out_name, cells, nprocs=nprocs, modules=module_of)
        raise SystemExit(0)
    if getattr(cluster, "merge", False):
        return merge_cells(out_name, cells, settings=settings, fresh=fresh)
    if getattr(cluster, "cell", None) is not None:
        run_one_cell(out_name, cells, cluster.cell, nprocs=nprocs, settings=settings, fresh=fresh,
                     module=module_of, keep=keep)
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
            summary = run_job(nprocs, args, out_dir=Path(tmp), name=name, module=module_of[key])
            wall = time.perf_counter() - started  # the job's own wall time, launch included
            records = metrics.read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")
            done[key] = {"settings": settings, "made_on": made_on, "wall_seconds": wall,
                         **(keep or _keep_server)(summary, records)}
            print(f"  {key:<45} {_headline(done[key], summary)}", flush=True)
            save_json(out_name, {"cells": done, "made_on": made_by(done)})
    return done


# ---------------------------------------------------------------- sweeps as SLURM job arrays


@dataclass
class ClusterOptions:
    """What --cell / --merge / --list-cells asked for; :func:`run_grid` reads :data:`CLUSTER`."""

    cell: int | None = None
    merge: bool = False
    list_cells: bool = False


# Filled while a parser made by add_cluster_options parses the command line,
# so that the scripts need no other change to pass the options on.
CLUSTER = ClusterOptions()


class _ClusterOption(argparse.Action):
    """Stores the option in the namespace as usual, and in CLUSTER."""

    def __init__(self, option_strings, dest, *, flag: bool = False, **kwargs):
        self.flag = flag
        super().__init__(option_strings, dest, nargs=0 if flag else None, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = True if self.flag else values
        setattr(namespace, self.dest, value)
        setattr(CLUSTER, self.dest, value)


def add_cluster_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --cell K, --merge and --list-cells (launch/slurm/sweep.sbatch) to a sweep's command line.

    Once the parser has parsed them, :func:`run_grid` obeys them with no
    other change to the script. Returns the parser.
    """
    global CLUSTER
    CLUSTER = ClusterOptions()  # a new command line starts from no options
    group = parser.add_argument_group("job arrays (launch/slurm/sweep.sbatch)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--cell", type=int, metavar="K", default=None, action=_ClusterOption,
                        help="run only the K-th cell (0-based; see --list-cells) into a file of its own, "
                             "RESULTS/OUT.cells/K.json, and stop")
    choice.add_argument("--merge", default=False, flag=True, action=_ClusterOption,
                        help="gather the cells' files into the result file, list the missing cells, and "
                             "build the table")
    choice.add_argument("--list-cells", default=False, flag=True, action=_ClusterOption,
                        help="print the number of cells, the ranks each needs, and their keys; stop")
    return parser


def cells_dir(out_name: str) -> Path:
    """Where the cells of OUT_NAME run one by one write their files: RESULTS/OUT_NAME.cells/."""
    return RESULTS / f"{out_name}.cells"


def list_cells(out_name: str, cells: dict[str, list[str]], *, nprocs: int, modules: dict[str, str]) -> None:
    """Print ``N cells, R ranks each, ...`` (the first two words are for scripts), then K and key per line."""
    mixed = len(set(modules.values())) > 1
    lines = [f"{len(cells)} cells, {nprocs} ranks each, results in {RESULTS / out_name}"]
    lines += [f"{index:>5}  {key}" + (f"  ({modules[key]})" if mixed else "") for index, key in enumerate(cells)]
    if cells:
        lines.append(f"submit: sbatch --array=0-{len(cells) - 1}%4 --ntasks={nprocs} launch/slurm/sweep.sbatch "
                     f"SCRIPT [OPTIONS]  (or launch/slurm/submit_sweep.sh SCRIPT [OPTIONS])")
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `--list-cells | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run_one_cell(out_name: str, cells: dict[str, list[str]], index: int, *, nprocs: int, settings: dict,
                 fresh: bool, module: dict[str, str], keep) -> Path:
    """Run the cell number ``index`` alone and write RESULTS/OUT_NAME.cells/INDEX.json (atomically).

    The file holds the cell's key, arguments, module and ``settings`` beside
    the result that run_grid would store; OUT_NAME is neither read nor
    written, so any number of cells may run at once. A cell whose file
    already holds its key with these settings is not run again (unless
    ``fresh``). The job runs in OUT_NAME.cells/runs/, its output going to
    ours; if it exits with 75 (checkpointed and stopped, e.g. on SLURM's
    warning signal), INDEX.resume records its run directory, this exits
    with 75 too, and the next attempt resumes that run.
    """
    import shutil

    keys = list(cells)
    if not 0 <= index < len(keys):
        raise SystemExit(f"--cell {index}: this sweep has {len(keys)} cells, numbered 0 to {len(keys) - 1}")
    key = keys[index]
    folder = cells_dir(out_name)
    path = folder / f"{index}.json"
    if not fresh and path.exists():
        old = json.loads(path.read_text())
        if old.get("key") == key and old.get("settings") == settings:
            print(f"cell {index} ({key}) is already done: {path}")
            return path
    runs = folder / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{index}.resume"
    previous = Path(marker.read_text().strip()) if marker.exists() else None
    if previous is not None and previous.is_dir():
        run_dir, resume = previous, True
    else:  # a name of its own: a failed attempt's directory stays for a look
        attempt = os.environ.get("SLURM_JOB_ID") or str(os.getpid())
        run_dir, resume = runs / f"{index}-{attempt}-{time.strftime('%Y%m%d-%H%M%S')}", False
    print(f"cell {index} of {len(keys)}: {key} ({'resuming ' + str(run_dir) if resume else module[key]})",
          flush=True)
    started = time.perf_counter()
    try:
        # No timeout of our own: the job's time limit is SLURM's.
        summary = run_job(nprocs, cells[key], out_dir=run_dir.parent, name=run_dir.name, module=module[key],
                          resume=resume, stream=True, timeout=None)
    except JobFailed as exc:
        if exc.returncode == EXIT_CHECKPOINTED:
            metrics.atomic_write(marker, f"{run_dir}\n")
            print(f"cell {index} ({key}) checkpointed and stopped: the next attempt resumes {run_dir}",
                  flush=True)
            raise SystemExit(EXIT_CHECKPOINTED) from None
        raise
    wall = time.perf_counter() - started
    records = metrics.read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")
    result = {"settings": settings, "made_on": machine(), "wall_seconds": wall,
              **(keep or _keep_server)(summary, records)}
    metrics.atomic_write(path, json.dumps({"index": index, "key": key, "module": module[key], "args": cells[key],
                                           "settings": settings, "result": result}, indent=2) + "\n")
    marker.unlink(missing_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)  # as run_grid's temporary directory: the file keeps what counts
    print(f"  {key:<45} {_headline(result, summary)}\ncell {index} written to {path}", flush=True)
    return path


def merge_cells(out_name: str, cells: dict[str, list[str]], *, settings: dict, fresh: bool = False) -> dict:
    """Gather RESULTS/OUT_NAME.cells/*.json into RESULTS/OUT_NAME; return {key: result} as run_grid does.

    Cells already in OUT_NAME stay (unless ``fresh``); a cell file counts
    when its key is one of ``cells`` and its settings are ``settings``. The
    cells that have no result with these settings are listed by index and
    key, with the --array that would run just them.
    """
    path = RESULTS / out_name
    before = {} if fresh or not path.exists() else json.loads(path.read_text())
    done = before.get("cells", {})
    merged, stale = 0, 0
    for file in sorted(cells_dir(out_name).glob("*.json")):
        record = json.loads(file.read_text())
        if record.get("key") not in cells or record.get("settings") != settings:
            stale += 1
            continue
        done[record["key"]] = record["result"]
        merged += 1
    missing = [(i, key) for i, key in enumerate(cells)
               if key not in done or done[key].get("settings") != settings]
    print(f"merge: {merged} cell files into {path}" + (f" ({stale} other files ignored: other keys or settings)"
                                                        if stale else ""))
    if missing:
        print(f"merge: {len(missing)} of {len(cells)} cells have no result yet:")
        for index, key in missing:
            print(f"  {index:>5}  {key}")
        print(f"merge: run them with --array={','.join(str(i) for i, _ in missing)}")
    else:
        print(f"merge: all {len(cells)} cells have a result")
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
    return add_cluster_options(parser)


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


# ---------------------------------------------------------------- figures from the saved results


def load_results(name: str) -> dict:
    """benchmarks/results/NAME as a sweep saved it; exits with a message if there is none yet."""
    path = RESULTS / name
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: run the sweep first (without --plot-only)")
    return json.loads(path.read_text())


def curve_series(label: str, curve, *, scale: float = 100.0):
    """A cell's stored curve, ``[(round, value), ...]``, as an :class:`mpisim.plot.Series` of
    ``value * scale`` (percent by default) against the round; a null value leaves a gap."""
    from mpisim import plot

    rounds = [point[0] for point in curve]
    values = [None if point[1] is None else point[1] * scale for point in curve]
    return plot.Series(label, rounds, values)
