"""Checkpoints of a run: every rank's state at the end of a round, in the run directory; no MPI.

Layout, inside the run directory::

    checkpoint/
      latest                 "round-000120": the last complete checkpoint
      round-000120/
        meta.json            round, world size, seconds of rounds so far, metrics lines
        rank-0000.pt ...     each rank's state (torch.save of plain dicts and tensors)

A checkpoint is written in two steps so that a crash at any moment leaves
the previous one usable: every rank writes its file into
``round-XXXXXX.tmp/`` (each file atomically), then, once all have (the
driver's barrier), rank 0 writes ``meta.json``, renames the directory to
its final name and replaces ``latest`` atomically; only then are older
checkpoints removed. A resumed run reads ``latest`` and nothing else, and
``.tmp`` directories (a checkpoint that never completed) are swept away.

What a rank's file holds is its role's ``state_dict()`` (the state objects
of the agents, nodes and server it hosts: models, samplers, every
generator, memories) and its byte counters and phase timers, so that a
resumed run goes on exactly where the checkpoint was taken.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from . import metrics

DIRECTORY = "checkpoint"
LATEST = "latest"

#: exit code of a run that wrote a checkpoint on SIGTERM / SIGUSR1 and stopped (EX_TEMPFAIL)
EXIT_CHECKPOINTED = 75


@dataclass(frozen=True)
class Meta:
    """What rank 0 records of a checkpoint."""

    round: int
    world_size: int
    seconds: float        # seconds of rounds before the checkpoint (the metrics' clock goes on from here)
    metrics_lines: int    # records of metrics.jsonl that belong to rounds <= round


def _name(t: int) -> str:
    return f"round-{t:06d}"


def _rank_file(r: int) -> str:
    return f"rank-{r:04d}.pt"


def staging(run_dir: str | os.PathLike, t: int) -> Path:
    """The directory every rank writes its round-t state into (created if missing)."""
    path = Path(run_dir) / DIRECTORY / f"{_name(t)}.tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_rank(run_dir: str | os.PathLike, t: int, rank: int, state: dict) -> None:
    """Rank ``rank``'s state for round t, written atomically into the staging directory."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    metrics.atomic_write(staging(run_dir, t) / _rank_file(rank), buffer.getvalue())


def commit(run_dir: str | os.PathLike, meta: Meta) -> None:
    """Rank 0, once every rank's file is written: make round ``meta.round`` the latest checkpoint."""
    root = Path(run_dir) / DIRECTORY
    tmp, final = root / f"{_name(meta.round)}.tmp", root / _name(meta.round)
    missing = [r for r in range(meta.world_size) if not (tmp / _rank_file(r)).is_file()]
    if missing:
        raise RuntimeError(f"checkpoint of round {meta.round}: no state from ranks {missing}")
    metrics.atomic_write(tmp / "meta.json", json.dumps(meta.__dict__) + "\n")
    if final.exists():  # a checkpoint of the same round from before a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    metrics.atomic_write(root / LATEST, _name(meta.round) + "\n")
    for old in root.iterdir():
        if old.name != _name(meta.round) and old.name != LATEST and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: str | os.PathLike) -> Meta | None:
    """The last complete checkpoint of a run directory, or None."""
    root = Path(run_dir) / DIRECTORY
    try:
        name = (root / LATEST).read_text().strip()
        return Meta(**json.loads((root / name / "meta.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def read_rank(run_dir: str | os.PathLike, meta: Meta, rank: int) -> dict:
    """Rank ``rank``'s state of checkpoint ``meta``."""
    path = Path(run_dir) / DIRECTORY / _name(meta.round) / _rank_file(rank)
    return torch.load(path, weights_only=False)


def sweep_incomplete(run_dir: str | os.PathLike) -> None:
    """Remove staging directories of checkpoints that never completed (rank 0, on resume)."""
    root = Path(run_dir) / DIRECTORY
    if root.is_dir():
        for path in root.glob("*.tmp"):
            shutil.rmtree(path, ignore_errors=True)
