"""``mpisim sweep GRID.toml``: a grid of runs from one file, run, resumed, merged and reported.

    mpisim sweep grid.toml --check          # every cell's configuration checked, nothing run
    mpisim sweep grid.toml --list           # the cells, numbered, with their status
    mpisim sweep grid.toml --jobs 2         # run what is missing here, two jobs at a time
    mpisim sweep grid.toml --cell 7         # run cell 7 only (a SLURM array task)
    mpisim sweep grid.toml --merge          # gather the results; the --array that runs the rest
    mpisim sweep grid.toml --report         # worst cases, max-min selection, heatmaps

The grid file (TOML)::

    [sweep]
    mode = "server"                  # server | decentralized | one-round
    ranks = 2                        # MPI ranks of every cell's job
    out_dir = "runs"                 # the cells' run directories (relative to the grid file)
    seeds = [0, 1]                   # run.seed of every setting
    timeout = 3600                   # seconds one cell may take (default: no limit)

    [base]                           # any configuration, as in a --config file
    data.name = "mnist"
    run.rounds = 100

    [axes]                           # crossed: every combination is a cell
    "aggregator.name" = ["cwtm", "median"]
    "byzantine.fault" = ["alie", "ipm"]

    [[zip]]                          # fields that vary together (lists of one length)
    rule = ["cwtm", "nnm+cwtm"]      # a key without a dot: the steps' names in reports, not a field
    "aggregator.pre" = [[], ["nnm"]]
    "optim.lr" = [0.1, 0.05]

    [select]                         # hyperparameter candidates: chosen by max-min, not reported
    "optim.lr" = [0.05, 0.1]

    [report]
    metric = "final_test_accuracy"   # or best_test_accuracy, final_test_loss, final_train_loss, ...
    worst_over = ["byzantine.fault"] # the worst case is taken over these axes (the attacks)
    heatmaps = [["aggregator.f", "data.partition_params.alpha"]]

A field is ``section.field``, or deeper into a parameter table (``aggregator.params.m``). A cell
is one combination of the axes, the zipped groups, the candidates and a seed; its run directory
is ``out_dir/NAME``, NAME made of its values and a short hash of them. A cell is done when that
directory holds a ``summary.json`` and a ``config.toml`` equal to the cell's resolved
configuration (plugin hashes included); a sweep started again runs only what is missing, and
moves aside (``NAME.old-N``) a directory left by a crashed or changed cell instead of writing
into it. Every cell's configuration is checked before any job starts: an error names the cell
and the field, and the command exits 2. A failed cell is reported with its message
(``out_dir/failures.json``) and does not stop the others.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tomllib

from . import config, metrics, plugins
from .config import ConfigError

__all__ = ["Grid", "Cell", "GridError", "load", "cells", "resolve", "status", "run_cell", "merge",
           "report", "array_spec", "main"]

#: mode -> (module run under mpiexec, config class path, validator path)
MODES = {
    "server": ("mpisim.server_mode", "server_config", "ServerModeConfig", "validate_server_mode"),
    "decentralized": ("mpisim.decentralized", "decentralized_config", "DecentralizedConfig",
                      "validate_decentralized"),
    "one-round": ("mpisim.one_round", "one_round_config", "OneRoundConfig", "validate_one_round"),
}
SWEEP_KEYS = {"mode", "ranks", "out_dir", "seeds", "timeout", "block"}
REPORT_KEYS = {"metric", "worst_over", "heatmaps", "tables", "curves"}
TOP_KEYS = {"sweep", "base", "axes", "zip", "select", "report"}
#: metric -> (how it is read from a run, whether larger is better)
METRICS = {
    "final_test_accuracy": (("final", "test_accuracy"), True),
    "final_test_loss": (("final", "test_loss"), False),
    "final_train_loss": (("final", "train_loss"), False),
    "best_test_accuracy": (("best", "test_accuracy"), True),
    "lowest_test_accuracy_second_half": (("late", "lowest_test_accuracy"), True),
    "final_distance_to_optimum": (("final", "distance_to_optimum"), False),
    "rounds_per_second": (("rounds_per_second",), True),
}


class GridError(ValueError):
    """A grid file that cannot be run: the message names the key (or the cell and the field)."""


@dataclasses.dataclass(frozen=True)
class Axis:
    """Fields that vary together (one field for a crossed axis) and their values, one tuple per step."""
    fields: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]


@dataclasses.dataclass(frozen=True)
class Grid:
    path: Path
    mode: str
    ranks: int
    out_dir: Path
    seeds: tuple[int, ...]
    timeout: float | None
    block: int                    # cells per MPI job (1: one mpiexec per cell)
    base: dict
    axes: tuple[Axis, ...]        # crossed axes and zipped groups, in file order
    select: tuple[Axis, ...]      # hyperparameter candidates
    metric: str
    worst_over: tuple[str, ...]
    heatmaps: tuple[tuple[str, str], ...]
    tables: tuple[tuple[str, ...], ...] = ()     # (row field, column field[, metric]) pivot tables
    curves: tuple[dict, ...] = ()                # {group, x, y}: curves of the reported cells

    @property
    def module(self) -> str:
        return MODES[self.mode][0]

    @property
    def setting_fields(self) -> tuple[str, ...]:
        """The fields of the axes a report keeps apart (all but the worst-case ones)."""
        return tuple(f for axis in self.axes for f in axis.fields if f not in self.worst_over)

    @property
    def select_fields(self) -> tuple[str, ...]:
        return tuple(f for axis in self.select for f in axis.fields)


@dataclasses.dataclass(frozen=True)
class Cell:
    index: int
    name: str
    values: dict            # field -> value, "run.seed" last

    def key(self, fields: Sequence[str]) -> tuple:
        return tuple(_hashable(self.values[f]) for f in fields)


# ---------------------------------------------------------------------------- the grid file


def is_label(name: str) -> bool:
    """A key of a [[zip]] group without a dot names its steps in reports ("rule" = ["mean", "nnm+cwtm"]);
    it is not a configuration field."""
    return "." not in name


def _field(name: Any, where: str, *, label_ok: bool = False) -> str:
    if label_ok and isinstance(name, str) and name.isidentifier():
        return name
    if not isinstance(name, str) or len(name.split(".")) < 2 or not all(name.split(".")):
        raise GridError(f"{where}: {name!r} is not a field; write \"section.field\" (e.g. \"aggregator.name\")")
    if name.split(".")[0] == "run" and name.split(".")[1] in ("name", "out_dir", "resume", "seed"):
        raise GridError(f"{where}: {name} is set by the sweep (run.seed from [sweep] seeds)")
    return name


def _values(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise GridError(f"{where}: expected a non-empty list of values, got {value!r}")
    return value


def _axes_of(table: Any, where: str, *, zipped: bool) -> list[Axis]:
    if not isinstance(table, dict):
        raise GridError(f"[{where}] must be a table of \"section.field\" = [values]")
    if zipped:
        fields = [_field(k, f"[[{where}]]", label_ok=True) for k in table]
        if all(is_label(f) for f in fields):
            raise GridError(f"[[{where}]]: a group of labels only ({', '.join(fields)}) sets no field")
        if not fields:
            raise GridError(f"[[{where}]]: an empty group")
        lists = [_values(table[k], f"[[{where}]] {k}") for k in table]
        if len({len(v) for v in lists}) != 1:
            raise GridError(f"[[{where}]]: the zipped lists must have one length, got "
                            + ", ".join(f"{k}: {len(v)}" for k, v in zip(fields, lists)))
        return [Axis(tuple(fields), tuple(zip(*lists)))]
    return [Axis((_field(k, f"[{where}]"),), tuple((v,) for v in _values(table[k], f"[{where}] {k}")))
            for k in table]


def _unknown(table: dict, known: set, where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise GridError(f"{where}: unknown key {extra[0]!r}; known: {', '.join(sorted(known))}")


def load(path: str | Path, *, out_dir: str | Path | None = None) -> Grid:
    """Read and check a grid file (its keys and shapes; :func:`resolve` checks every cell's configuration).
    ``out_dir`` replaces ``[sweep] out_dir`` (relative to the current directory, not the file)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise GridError(f"cannot read the grid file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{path} is not valid TOML: {exc}") from None
    _unknown(doc, TOP_KEYS, f"{path}")
    sweep = doc.get("sweep", {})
    _unknown(sweep, SWEEP_KEYS, "[sweep]")
    mode = sweep.get("mode", "server")
    if mode not in MODES:
        raise GridError(f"[sweep] mode: must be one of {', '.join(MODES)}, got {mode!r}")
    ranks = sweep.get("ranks")
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 2:
        raise GridError(f"[sweep] ranks: the MPI ranks of every cell's job, an integer >= 2, got {ranks!r}")
    seeds = sweep.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise GridError(f"[sweep] seeds: a list of distinct integers >= 0, got {seeds!r}")
    timeout = sweep.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise GridError(f"[sweep] timeout: seconds > 0, got {timeout!r}")
    block = sweep.get("block", 1)
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise GridError(f"[sweep] block: cells per MPI job, an integer >= 1, got {block!r}")
    out_dir_override, out_dir = out_dir, Path(sweep.get("out_dir", f"runs/{path.stem}"))
    base = doc.get("base", {})
    if not isinstance(base, dict):
        raise GridError("[base] must be a table of configuration sections")
    axes = _axes_of(doc.get("axes", {}), "axes", zipped=False)
    zips = doc.get("zip", [])
    if not isinstance(zips, list):
        raise GridError("zip: write each group as [[zip]]")
    for group in zips:
        axes += _axes_of(group, "zip", zipped=True)
    select = _axes_of(doc.get("select", {}), "select", zipped=False)
    fields = [f for axis in (*axes, *select) for f in axis.fields]
    twice = sorted({f for f in fields if fields.count(f) > 1})
    if twice:
        raise GridError(f"{twice[0]} is in more than one axis (or in [axes] and [select])")
    rep = doc.get("report", {})
    _unknown(rep, REPORT_KEYS, "[report]")
    metric = rep.get("metric", "final_test_accuracy")
    if metric not in METRICS:
        raise GridError(f"[report] metric: one of {', '.join(METRICS)}, got {metric!r}")
    worst_over = tuple(rep.get("worst_over", []))
    heatmaps = tuple(tuple(h) for h in rep.get("heatmaps", []))
    axis_fields = [f for axis in axes for f in axis.fields]
    for f in worst_over:
        if f not in axis_fields:
            raise GridError(f"[report] worst_over: {f!r} is not a field of [axes] or [[zip]]")
    tables = tuple(tuple(t) for t in rep.get("tables", []))
    for t in tables:  # [down, across] or [down, across, metric]
        if len(t) == 3 and t[2] not in METRICS:
            raise GridError(f"[report] tables: the third entry is a metric, one of {', '.join(METRICS)}, got {t[2]!r}")
    for key, pairs in (("heatmaps", heatmaps), ("tables", tuple(t[:2] if len(t) == 3 else t for t in tables))):
        for pair in pairs:
            if len(pair) != 2 or pair[0] == pair[1] or any(f not in axis_fields or f in worst_over for f in pair):
                raise GridError(f"[report] {key}: pairs of two fields of the axes that the worst case is not "
                                f"taken over, got {list(pair)!r}")
    curves = tuple(dict(c) for c in rep.get("curves", []))
    for c in curves:
        from .plot import X_AXES, Y_METRICS

        extra = sorted(set(c) - {"group", "x", "y"})
        if extra or c.get("group") not in axis_fields or c.get("group") in worst_over:
            raise GridError(f"[report] curves: tables {{group = FIELD, x = ..., y = ...}} with group a field of the "
                            f"axes that the worst case is not taken over, got {c!r}")
        if c.setdefault("x", "round") not in X_AXES or c.setdefault("y", "test_accuracy") not in Y_METRICS:
            raise GridError(f"[report] curves: x one of {', '.join(X_AXES)}, y one of {', '.join(Y_METRICS)}, "
                            f"got {c!r}")
    where = Path(out_dir_override).resolve() if out_dir_override is not None else (path.parent / out_dir).resolve()
    return Grid(path=path, mode=mode, ranks=ranks, out_dir=where,
                seeds=tuple(seeds), timeout=None if timeout is None else float(timeout), block=block, base=base,
                axes=tuple(axes), select=tuple(select), metric=metric, worst_over=worst_over,
                heatmaps=heatmaps, tables=tables, curves=curves)


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple((k, _hashable(v)) for k, v in sorted(value.items()))
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def _label(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_label(v) for v in value) or "none"
    if isinstance(value, dict):
        return "+".join(f"{k}={_label(v)}" for k, v in value.items()) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def label(value: Any) -> str:
    """How a value is written in cell names and reports: lists joined with +, tables as key=value
    joined with +, an empty list or table 'none'."""
    return _label(value)


def _name(values: dict) -> str:
    text = "_".join(_label(v) for v in values.values())
    safe = "".join(c if c.isalnum() or c in "._+-" else "-" for c in text)[:100]
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
    return f"{safe}-{digest}"


def cells(grid: Grid) -> list[Cell]:
    """Every cell, in a fixed order: the axes (file order, the last varying fastest), the candidates, the seed."""
    out = []
    groups = [*grid.axes, *grid.select]
    for steps in itertools.product(*(axis.values for axis in groups)):
        for seed in grid.seeds:
            values = {f: v for axis, step in zip(groups, steps) for f, v in zip(axis.fields, step)}
            values["run.seed"] = seed
            out.append(Cell(len(out), _name(values), values))
    return out


# ---------------------------------------------------------------------------- configurations


def _nest(field: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(field.split(".")):
        out = {part: out}
    return out


def _protocol(mode: str):
    import importlib

    _, module, cls, validator = MODES[mode]
    mod = importlib.import_module(f"mpisim.protocols.{module}")
    return getattr(mod, cls), getattr(mod, validator)


def resolve(grid: Grid, cell: Cell):
    """The cell's configuration, validated for ``grid.ranks`` ranks, plugins loaded and hashed.

    Raises GridError naming the cell and the field."""
    cls, validate = _protocol(grid.mode)
    tables = grid.base
    for field, value in cell.values.items():
        if not is_label(field):
            tables = config._deep_merge(tables, _nest(field, value))
    tables = config._deep_merge(tables, {"run": {"out_dir": str(grid.out_dir), "name": cell.name,
                                                 "progress": False}})
    try:
        cfg = plugins.configure(config._build(cls, tables))
        # checked as a new run (a done cell's directory exists; the sweep decides what to do with it)
        validate(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name="")), grid.ranks)
    except ConfigError as exc:
        raise GridError(f"cell {cell.index} ({cell.name}): config error: {exc}") from None
    return cfg


def _expected_toml(cfg) -> str:
    return config.dumps(config.for_run_dir(cfg))


def status(grid: Grid, cell: Cell, cfg) -> str:
    """'done', 'missing', 'incomplete' (a directory without a summary: crashed or running) or
    'changed' (a summary of another configuration)."""
    run_dir = grid.out_dir / cell.name
    if not run_dir.exists():
        return "missing"
    if not (run_dir / "summary.json").is_file():
        return "incomplete"
    try:
        same = (run_dir / "config.toml").read_text() == _expected_toml(cfg)
    except OSError:
        same = False
    return "done" if same else "changed"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics.atomic_write(path, text.encode())


def _move_aside(run_dir: Path) -> Path:
    for k in itertools.count(1):
        target = run_dir.with_name(f"{run_dir.name}.old-{k}")
        if not target.exists():
            run_dir.rename(target)
            return target
    raise AssertionError("unreachable")


def _prepare(grid: Grid, cell: Cell, cfg) -> Path:
    """Move a crashed or changed run's directory aside and write the cell's configuration file."""
    run_dir = grid.out_dir / cell.name
    if run_dir.exists():
        _move_aside(run_dir)
    cfg_file = grid.out_dir / ".configs" / f"{cell.name}.toml"
    _write_atomic(cfg_file, config.dumps(cfg))
    return cfg_file


def _last_error(result, log: Path) -> str:
    if result.timed_out:
        return f"timed out (log: {log})"
    lines = [ln for ln in (result.stderr or "").splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
    return f"exit {result.returncode}: {last.strip()[:400]} (log: {log})"


def run_cell(grid: Grid, cell: Cell, cfg, *, env: dict | None = None, stream: bool = False) -> str | None:
    """Run one cell under mpiexec (``grid.ranks`` ranks); None when it finished, else the error.

    The job's output goes to ``out_dir/.logs/NAME.log`` (``stream``: to ours instead, as a SLURM
    array task wants it in its log); its configuration file to ``out_dir/.configs/NAME.toml``. A
    directory of a crashed or changed run is moved aside first."""
    return run_block(grid, [cell], {cell.index: cfg}, env=env, stream=stream)[cell.name]


def run_block(grid: Grid, block: Sequence[Cell], configs: dict, *, env: dict | None = None,
              stream: bool = False) -> dict[str, str | None]:
    """Run cells under mpiexec: one cell as ``python -m mpisim.<mode>``, several in one job that
    imports torch and reads the data sets once (``python -m mpisim.sweep --serve``).

    Returns {name: None when it finished, else the error}. In one job, a cell whose configuration
    every rank refuses fails alone; an exception on a rank aborts the job (as in any run), and the
    cells after the one that was running go to a new job, so a failing cell takes no other down."""
    from .mpi import launcher

    out: dict[str, str | None] = {}
    queue = list(block)
    while queue:
        files = [_prepare(grid, cell, configs[cell.index]) for cell in queue]
        first, last = queue[0], queue[-1]
        log = grid.out_dir / ".logs" / (f"{first.name}.log" if len(queue) == 1 else
                                         f"block-{first.index}-{last.index}.log")
        outcome = grid.out_dir / ".logs" / f"block-{first.index}-{last.index}.json"
        if len(block) == 1:
            args = ["-m", grid.module, "--config", str(files[0])]
        else:
            _write_atomic(outcome.with_suffix(".cells.json"), json.dumps(
                {"mode": grid.mode, "outcome": str(outcome),
                 "cells": [{"name": c.name, "index": c.index, "config": str(f)} for c, f in zip(queue, files)]}))
            args = ["-m", "mpisim.sweep", "--serve", str(outcome.with_suffix(".cells.json"))]
        started = time.time()
        timeout = grid.timeout * len(queue) if grid.timeout else None
        result = launcher.run(grid.ranks, args, timeout=timeout, env=env, capture=not stream)
        _write_atomic(log, f"$ {' '.join(result.command)}\n# exit {result.returncode}, "
                           f"{time.time() - started:.1f} s\n{result.stdout}\n--- stderr ---\n{result.stderr}")
        refused = json.loads(outcome.read_text()) if len(block) > 1 and outcome.is_file() else {}
        crashed = None
        for i, cell in enumerate(queue):
            if (grid.out_dir / cell.name / "summary.json").is_file():
                out[cell.name] = None
            elif cell.name in refused:
                out[cell.name] = f"exit {refused[cell.name]}: its configuration was refused (log: {log})"
            else:
                crashed = i
                break
        if crashed is None:
            break
        out[queue[crashed].name] = (f"exit {result.returncode} (its output is above)" if stream
                                    else _last_error(result, log))
        if result.timed_out:  # the job had time for all of them: the rest are not tried again
            for cell in queue[crashed + 1:]:
                out[cell.name] = f"not run: the job timed out on an earlier cell (log: {log})"
            break
        queue = queue[crashed + 1:]
    return out


def serve(cells_file: str) -> int:
    """``python -m mpisim.sweep --serve FILE`` under mpiexec: run the cells FILE lists one after
    another in this job, each as ``python -m mpisim.<mode> --config`` would, with what one run
    makes freed after it (:func:`mpisim.mpi.comm.run_scope`), the data sets read once
    (:func:`mpisim.datasets.keep_loaded`) and torch's global generator back at its start; rank 0
    writes which cells every rank refused (config errors, exit 2) to the file's ``outcome``."""
    import importlib

    import torch

    from . import checkpoint, datasets
    from .mpi import comm as mpi
    from .protocols import driver

    spec = json.loads(Path(cells_file).read_text())
    protocol = importlib.import_module(MODES[spec["mode"]][0]).main.protocol
    start_seed = torch.initial_seed()
    datasets.keep_loaded(True)
    world = mpi.world()
    refused = {}
    for item in spec["cells"]:
        if world.Get_rank() == 0:
            print(f"mpisim sweep: cell {item['index']} ({item['name']})", flush=True)
        torch.manual_seed(start_seed)
        with mpi.run_scope():
            try:
                driver.main(protocol, ["--config", item["config"]])
            except SystemExit as exc:  # every rank exits a refused configuration together
                if exc.code == checkpoint.EXIT_CHECKPOINTED:
                    raise  # stopped by a signal (a SLURM time limit): the job ends, the sweep goes on later
                if exc.code not in (0, None):
                    refused[item["name"]] = exc.code
        if world.Get_rank() == 0:
            _write_atomic(Path(spec["outcome"]), json.dumps(refused))
    return 0


def _record_failures(grid: Grid, failed: dict[str, str], finished: Sequence[str]) -> None:
    path = grid.out_dir / "failures.json"
    if not failed and not path.is_file():
        return
    known = json.loads(path.read_text()) if path.is_file() else {}
    known = {k: v for k, v in known.items() if k not in finished}
    known.update(failed)
    _write_atomic(path, json.dumps(known, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------- results


def _read_run(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    records = metrics.read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    best = {}
    for key in ("test_accuracy",):
        seen = [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if seen:
            best[key] = max(seen)
    rounds = summary.get("rounds") or 0
    late = [r["test_accuracy"] for r in records if r.get("round", -1) >= rounds // 2
            and isinstance(r.get("test_accuracy"), (int, float)) and math.isfinite(r["test_accuracy"])]
    final = summary.get("final") or {}
    return {"final": {k: v for k, v in final.items() if isinstance(v, (int, float))}, "best": best,
            "late": {"lowest_test_accuracy": min(late)} if late else {},
            "rounds": summary.get("rounds"), "diverged": summary.get("diverged", False),
            "rounds_per_second": summary.get("rounds_per_second"), "bytes": summary.get("bytes", {}),
            "wall_seconds": summary.get("loop_seconds")}


def metric_of(result: dict, metric: str) -> float | None:
    """The metric of one cell's result (None when the run has none: diverged, or not evaluated)."""
    path, _ = METRICS[metric]
    value: Any = result
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def array_spec(indices: Sequence[int]) -> str:
    """Indices as a SLURM ``--array`` list: 0-3,7,9-10."""
    parts, run = [], []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def merge(grid: Grid, every: list[Cell], configs: dict[int, Any]) -> dict:
    """``out_dir/results.json``: every done cell's values and result; the missing ones listed."""
    done, missing = {}, []
    for cell in every:
        if status(grid, cell, configs[cell.index]) == "done":
            done[cell.name] = {"index": cell.index, "values": cell.values,
                               **_read_run(grid.out_dir / cell.name)}
        else:
            missing.append(cell.index)
    merged = {"grid": str(grid.path), "mode": grid.mode, "ranks": grid.ranks, "cells": len(every),
              "done": len(done), "missing": missing, "results": done}
    _write_atomic(grid.out_dir / "results.json", json.dumps(merged, indent=1) + "\n")
    return merged


# ---------------------------------------------------------------------------- the report


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not all(map(math.isfinite, values)):  # a diverged seed: the mean is that worst value
        return statistics.fmean(values), math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def worst_cases(grid: Grid, every: list[Cell], results: dict) -> list[dict]:
    """One row per setting (the values of the axes but the worst-case ones): for every candidate of
    [select], the mean over seeds of the metric under each combination of the worst-case axes, the
    worst of those means; the candidate whose worst case is best (max-min, first on a tie) is chosen.
    A setting with a missing cell is reported as incomplete, with what it has."""
    _, larger = METRICS[grid.metric]
    better = max if larger else min
    setting_fields, select_fields = grid.setting_fields, grid.select_fields
    table: dict[tuple, dict[tuple, dict[tuple, list]]] = {}
    expected: dict[tuple, int] = {}
    for cell in every:
        setting, cand, attack = (cell.key(setting_fields), cell.key(select_fields), cell.key(grid.worst_over))
        per_attack = table.setdefault(setting, {}).setdefault(cand, {}).setdefault(attack, [])
        expected[setting] = expected.get(setting, 0) + 1
        result = results.get(cell.name)
        if result is not None:
            per_attack.append((cell.name, metric_of(result, grid.metric), result))
    rows = []
    for setting, cands in table.items():
        have = sum(len(v) for per in cands.values() for v in per.values())
        scored = []
        for cand, per_attack in cands.items():
            by_attack, names = {}, {}
            for attack, runs in per_attack.items():
                got = [m for _, m, _ in runs]
                if not runs:
                    continue
                # a run without the metric (diverged: NaN) counts as the worst value there is
                worst_value = -math.inf if larger else math.inf
                got = [worst_value if m is None else m for m in got]
                by_attack[attack] = (*_mean_sd(got), len(got))
                names[attack] = [name for name, _, _ in runs]
            if not by_attack:
                continue
            pick = (min if larger else max)(by_attack, key=lambda a: by_attack[a][0])
            scored.append((cand, pick, by_attack, names[pick]))
        if not scored:
            rows.append({"setting": dict(zip(setting_fields, setting)), "complete": False, "cells": have,
                         "of": expected[setting]})
            continue
        chosen = better(scored, key=lambda s: s[2][s[1]][0])  # the candidate whose worst mean is best
        cand, attack, by_attack, runs = chosen
        mean, sd, seeds = by_attack[attack]
        rows.append({
            "setting": dict(zip(setting_fields, setting)),
            "chosen": dict(zip(select_fields, cand)),
            "worst": dict(zip(grid.worst_over, attack)),
            "mean": mean, "sd": sd, "seeds": seeds,
            "per_attack": {" ".join(_label(v) for v in a): {"mean": m, "sd": s, "seeds": k}
                           for a, (m, s, k) in by_attack.items()},
            "candidates": {" ".join(_label(v) for v in c) or "-": {"worst": b[p][0], "at": " ".join(map(_label, p))}
                           for c, p, b, _ in scored},
            "runs": runs,
            "complete": have == expected[setting], "cells": have, "of": expected[setting]})
    return rows


def _fmt(value: float, metric: str) -> str:
    if not math.isfinite(value):
        return "diverged"
    return f"{100 * value:.2f}" if "accuracy" in metric else f"{value:.4g}"


def report(grid: Grid, every: list[Cell], results: dict, *, plots: bool = True) -> dict[str, Path]:
    """Write ``out_dir/report.md``, ``report.csv``, ``report.json`` and the heatmaps; return their paths."""
    rows = worst_cases(grid, every, results)
    metric = grid.metric
    unit = " (%)" if "accuracy" in metric else ""
    head = [*grid.setting_fields, *grid.select_fields,
            f"worst {metric}{unit}" if grid.worst_over else f"{metric}{unit}", "sd", "seeds",
            *(["worst case at"] if grid.worst_over else []), "cells"]
    lines = []
    for r in rows:
        if "mean" not in r:
            lines.append([*map(_label, r["setting"].values()), *[""] * len(grid.select_fields), "no result", "",
                          "", *([""] if grid.worst_over else []), f"{r['cells']}/{r['of']}"])
            continue
        lines.append([*map(_label, r["setting"].values()), *map(_label, r["chosen"].values()),
                      _fmt(r["mean"], metric), _fmt(r["sd"], metric) if math.isfinite(r["mean"]) else "",
                      str(r["seeds"]), *([" ".join(map(_label, r["worst"].values()))] if grid.worst_over else []),
                      f"{r['cells']}/{r['of']}" + ("" if r["complete"] else " (incomplete)")])
    md = io.StringIO()
    md.write(f"# {grid.path.stem}: {metric}" + (f", worst case over {', '.join(grid.worst_over)}"
                                                 if grid.worst_over else "") + "\n\n")
    md.write(f"Grid `{grid.path}`, {len(every)} cells, seeds {list(grid.seeds)}, {grid.ranks} ranks each. "
             f"Each value is the mean over the seeds" + (" under the worst case (the worst of the means)" if
                                                       grid.worst_over else "")
             + (f"; the candidates of {', '.join(grid.select_fields)} chosen by max-min (the one whose "
                f"worst case is best)" if grid.select_fields else "") + "; sd over the seeds.\n\n")
    md.write("| " + " | ".join(head) + " |\n| " + " | ".join("---" for _ in head) + " |\n")
    for line in lines:
        md.write("| " + " | ".join(line) + " |\n")
    out = {"md": grid.out_dir / "report.md", "csv": grid.out_dir / "report.csv",
           "json": grid.out_dir / "report.json"}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(head)
    writer.writerows(lines)
    for down, across, *other in grid.tables:
        if other and other[0] != metric:  # the table of another metric
            shown = dataclasses.replace(grid, metric=other[0])
            md.write(_pivot(shown, worst_cases(shown, every, results), (down, across)))
        else:
            md.write(_pivot(grid, rows, (down, across)))
    for spec in grid.curves if plots else ():
        path = _curves(grid, rows, spec)
        if path is not None:
            out[f"curves by {spec['group']}"] = path
            md.write(f"\n![{spec['y']} against {spec['x']} by {spec['group']}]({path.name})\n")
    for heat in grid.heatmaps if plots else ():
        path = _heatmap(grid, rows, heat)
        if path is not None:
            out[f"heatmap {heat[0]} x {heat[1]}"] = path
            md.write(f"\n![{heat[0]} against {heat[1]}]({path.name})\n")
    _write_atomic(out["md"], md.getvalue())
    _write_atomic(out["csv"], buf.getvalue())
    _write_atomic(out["json"], json.dumps({"grid": str(grid.path), "metric": metric,
                                           "worst_over": list(grid.worst_over), "rows": _jsonable(rows)},
                                          indent=1) + "\n")
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _others(grid: Grid, fields: Sequence[str]) -> list[str]:
    """The setting fields that vary apart from ``fields`` (a field zipped with one of them varies with it)."""
    together = {f for axis in grid.axes if set(axis.fields) & set(fields) for f in axis.fields}
    return [f for f in grid.setting_fields if f not in together]


def _by_others(grid: Grid, rows: list[dict], fields: Sequence[str]) -> dict[tuple, list[dict]]:
    """The reported rows grouped by the values of the setting fields that vary apart from ``fields``."""
    others = _others(grid, fields)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "mean" in r:
            groups.setdefault(tuple(_hashable(r["setting"][f]) for f in others), []).append(r)
    return groups


def _title(grid: Grid, fields: Sequence[str], key: tuple) -> str:
    others = _others(grid, fields)
    return ", ".join(f"{f} {_label(v)}" for f, v in zip(others, key))


def _pivot(grid: Grid, rows: list[dict], pair: tuple[str, str]) -> str:
    """Markdown: the reported value with ``pair[0]`` down and ``pair[1]`` across, one table per
    combination of the other setting fields."""
    ya, xa = pair
    text = []
    for key, group in _by_others(grid, rows, pair).items():
        ys = list(dict.fromkeys(_hashable(r["setting"][ya]) for r in group))
        xs = list(dict.fromkeys(_hashable(r["setting"][xa]) for r in group))
        value = {(_hashable(r["setting"][ya]), _hashable(r["setting"][xa])): r["mean"] for r in group}
        title = _title(grid, pair, key)
        text.append(f"\n{grid.metric}" + (" (worst case)" if grid.worst_over else "")
                    + (f", {title}" if title else "") + f": {ya} down, {xa} across\n\n")
        text.append(f"| {ya} \\ {xa} | " + " | ".join(_label(x) for x in xs) + " |\n")
        text.append("| --- | " + " | ".join("---" for _ in xs) + " |\n")
        for y in ys:
            cells = [_fmt(value[(y, x)], grid.metric) if (y, x) in value else "-" for x in xs]
            text.append(f"| {_label(y)} | " + " | ".join(cells) + " |\n")
    return "".join(text)


def _curves(grid: Grid, rows: list[dict], spec: dict) -> Path | None:
    """The reported cells' curves (the chosen candidate under the worst attack, seeds as a band):
    one curve per value of ``spec['group']``, one panel per combination of the other setting fields."""
    from . import plot

    panels = []
    for key, group in _by_others(grid, rows, [spec["group"]]).items():
        series = []
        for r in group:
            runs = [plot.load_run(grid.out_dir / name) for name in r["runs"]]
            label = _label(r["setting"][spec["group"]])
            if grid.worst_over:
                label += f" ({' '.join(map(_label, r['worst'].values()))})"
            series.append(plot.seed_series(runs, x=spec["x"], y=spec["y"], label=label))
        panels.append(plot.Panel(_title(grid, [spec["group"]], key), series))
    if not panels:
        return None
    path = grid.out_dir / f"curves_{spec['group']}_{spec['y']}_{spec['x']}.png"
    first = plot.load_run(grid.out_dir / next(r for r in rows if "mean" in r)["runs"][0])
    plot.draw_panels(panels, xlabel=plot.x_label([first], spec["x"]), ylabel=plot.Y_METRICS[spec["y"]].label,
                     out=path, legend_title=spec["group"] + (" (worst case at)" if grid.worst_over else ""))
    return path


def _heatmap(grid: Grid, rows: list[dict], pair: tuple[str, str]) -> Path | None:
    """One heatmap per combination of the other setting fields: the worst case against ``pair``."""
    from . import plot

    ya, xa = pair
    panels = []
    for key, group in _by_others(grid, rows, pair).items():
        ys = list(dict.fromkeys(_hashable(r["setting"][ya]) for r in group))
        xs = list(dict.fromkeys(_hashable(r["setting"][xa]) for r in group))
        value = {(_hashable(r["setting"][ya]), _hashable(r["setting"][xa])): r["mean"] for r in group}
        panels.append(plot.HeatPanel(_title(grid, pair, key) or grid.metric, [_label(y) for y in ys],
                                     [_label(x) for x in xs], [[value.get((y, x)) for x in xs] for y in ys]))
    if not panels:
        return None
    path = grid.out_dir / f"heatmap_{ya}_{xa}.png"
    plot.heatmaps(path, panels, ylabel=ya, xlabel=xa, scale=100.0 if "accuracy" in grid.metric else 1.0,
                  colorbar=("worst " if grid.worst_over else "") + grid.metric
                  + (" (%)" if "accuracy" in grid.metric else ""))
    return path


# ---------------------------------------------------------------------------- the command


def _configs(grid: Grid, every: list[Cell]) -> dict[int, Any]:
    return {cell.index: resolve(grid, cell) for cell in every}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpisim sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("grid", help="the grid file (TOML)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="check every cell's configuration, run nothing")
    what.add_argument("--list", "--list-cells", action="store_true",
                      help="print the count and ranks, then the cells, numbered, with their status")
    what.add_argument("--cell", type=int, metavar="K", help="run cell K only (0-based; a SLURM array task); "
                                                              "with a block of B cells, block K")
    what.add_argument("--serve", metavar="FILE", help=argparse.SUPPRESS)  # the job that runs a block
    what.add_argument("--merge", action="store_true",
                      help="gather the done cells into out_dir/results.json; list the missing ones")
    what.add_argument("--report", action="store_true", help="merge, then write the report (Markdown, CSV, JSON, "
                                                            "heatmaps)")
    p.add_argument("--jobs", type=int, default=1, metavar="J", help="cells run at a time here (default 1)")
    p.add_argument("--out-dir", metavar="DIR", help="the cells' run directories (instead of [sweep] out_dir)")
    p.add_argument("--block", type=int, metavar="B", help="cells per MPI job (instead of [sweep] block): one job "
                                                         "imports torch and reads the data once for B cells")
    return p


def _blocks(grid: Grid, cells: Sequence[Cell]) -> list[list[Cell]]:
    return [list(cells[i:i + grid.block]) for i in range(0, len(cells), grid.block)]


def _run_missing(grid: Grid, every: list[Cell], configs: dict, jobs: int, *, stream: bool = False) -> int:
    todo = [c for c in every if status(grid, c, configs[c.index]) != "done"]
    print(f"mpisim sweep: {len(every) - len(todo)} of {len(every)} cells done; running {len(todo)}, "
          f"{jobs} job(s) at a time, {grid.ranks} ranks and up to {grid.block} cell(s) each", flush=True)
    failed: dict[str, str] = {}

    def one(block: list[Cell]) -> tuple[list[Cell], dict, float]:
        started = time.perf_counter()
        return block, run_block(grid, block, configs, stream=stream), time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for block, errors, wall in pool.map(one, _blocks(grid, todo)):
            for cell in block:
                error = errors[cell.name]
                if error is None:
                    print(f"  [{cell.index}] {cell.name}: done" + (f" in {wall:.1f} s" if len(block) == 1 else ""),
                          flush=True)
                else:
                    failed[cell.name] = error
                    print(f"  [{cell.index}] {cell.name}: FAILED: {error}", flush=True)
            if len(block) > 1:
                print(f"  (cells {block[0].index}-{block[-1].index} in one job: {wall:.1f} s)", flush=True)
            _record_failures(grid, {k: v for k, v in errors.items() if v}, [k for k, v in errors.items() if not v])
    if failed:
        print(f"mpisim sweep: {len(failed)} cells failed (out_dir/failures.json); the others ran", flush=True)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``mpisim sweep``: exit 0 when everything asked for is done, 1 when a cell failed, 2 for a bad grid."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"] and len(argv) == 2:
        from .mpi import comm as mpi

        return mpi.abort_on_error(serve)(argv[1])
    args = _parser().parse_args(argv)
    try:
        grid = load(args.grid, out_dir=args.out_dir)
        if args.block is not None:
            if args.block < 1:
                raise GridError(f"--block: cells per MPI job, an integer >= 1, got {args.block}")
            grid = dataclasses.replace(grid, block=args.block)
        every = cells(grid)
        tasks = _blocks(grid, every)
        if args.cell is not None and not 0 <= args.cell < len(tasks):
            raise GridError(f"--cell {args.cell}: the grid has {'cells' if grid.block == 1 else 'blocks'} "
                            f"0-{len(tasks) - 1}")
        chosen = tasks[args.cell] if args.cell is not None else every
        configs = _configs(grid, chosen)
    except GridError as exc:
        print(f"mpisim sweep: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"mpisim sweep: {len(every)} cells, every configuration valid on {grid.ranks} ranks")
        return 0
    if args.list:  # the first line's first and third words are for launch/slurm/submit_sweep.sh
        width = len(str(len(every) - 1))
        lines = [f"{len(every)} cells, {grid.ranks} ranks each, run directories in {grid.out_dir}" if grid.block == 1
                 else f"{len(tasks)} blocks, {grid.ranks} ranks each, of up to {grid.block} cells ({len(every)} "
                      f"cells), run directories in {grid.out_dir}"]
        lines += [f"{cell.index:>{width}}  {status(grid, cell, configs[cell.index]):<10}  {cell.name}"
                  for cell in every]
        try:
            print("\n".join(lines), flush=True)
        except BrokenPipeError:  # --list | head: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if args.cell is not None:
        return _run_missing(grid, chosen, configs, 1, stream=True)
    if args.merge or args.report:
        merged = merge(grid, every, configs)
        print(f"mpisim sweep: {merged['done']} of {len(every)} cells done -> {grid.out_dir / 'results.json'}")
        if merged["missing"]:
            tasks_left = sorted({i // grid.block for i in merged["missing"]})
            print(f"  missing: {len(merged['missing'])} cells; on SLURM: --array={array_spec(tasks_left)}"
                  + ("" if grid.block == 1 else f" (blocks of {grid.block} cells)"))
        if args.report:
            for kind, path in report(grid, every, merged["results"]).items():
                print(f"  {kind}: {path}")
        return 0
    code = _run_missing(grid, every, configs, args.jobs)
    merged = merge(grid, every, configs)
    report(grid, every, merged["results"])
    print(f"mpisim sweep: results in {grid.out_dir} (results.json, report.md)")
    return code


if __name__ == "__main__":
    sys.exit(main())
