"""Checkpoints of a run: every rank's state at the end of a round, in the run directory; no MPI.

Layout, inside the run directory::

    .lock                    held by the job that writes the directory (see :class:`Lock`)
    checkpoint/
      latest                 "round-000120": the last committed checkpoint (for people and scripts)
      round-000120/
        meta.json            round, world size, clock, the metrics log's prefix, every rank
                             file's size and SHA-256, and a SHA-256 of meta.json's own fields
        rank-0000.pt ...     each rank's state (torch.save of dicts of tensors, numbers, strings)
      round-000110/          the one before (``run.checkpoint_keep``, default 2)

A checkpoint is written in two steps so that a crash at any moment leaves
the previous one usable: every rank writes its file into
``round-XXXXXX.tmp/`` (each file atomically) and reports its size and
SHA-256; rank 0 then writes ``meta.json``, renames the directory to its
final name and replaces ``latest`` atomically; only then are the
checkpoints beyond the newest ``keep`` removed. Nothing but ``round-*``
directories is ever removed, and nothing is followed through a symbolic
link.

A resumed run trusts nothing it has not checked (:func:`read_meta`,
:func:`read_rank_bytes`, :func:`check_metrics`): the newest ``round-*``
directory's ``meta.json`` must hash to its recorded digest and name its own
round, every rank file must have the recorded size and SHA-256, and the
first ``metrics_bytes`` bytes of ``metrics.jsonl`` must hash to the
recorded digest; only then is a file unpickled, and only with
``torch.load(weights_only=True)``, which builds tensors and plain
containers and never runs code from the file. A failed check raises
:class:`Damaged`, naming the file and what is wrong.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import metrics

DIRECTORY = "checkpoint"
LATEST = "latest"
LOCK = ".lock"
META = "meta.json"

#: exit code of a run that wrote a checkpoint on SIGTERM / SIGUSR1 and stopped (EX_TEMPFAIL)
EXIT_CHECKPOINTED = 75

_ROUND_DIR = re.compile(r"round-(\d{6,})")


class Damaged(Exception):
    """A checkpoint file that fails a check: ``path`` (relative to the run directory) and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class Digest:
    """Size and SHA-256 of one file of a checkpoint."""

    bytes: int
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(len(data), hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class Meta:
    """What rank 0 records of a checkpoint (``meta.json``)."""

    round: int
    world_size: int
    seconds: float        # seconds of rounds before the checkpoint (the metrics' clock goes on from here)
    metrics_lines: int    # records of metrics.jsonl that belong to rounds <= round ...
    metrics_bytes: int    # ... the bytes they take at the start of the file ...
    metrics_sha256: str   # ... and their SHA-256
    files: dict = field(default_factory=dict)  # rank file name -> {"bytes": int, "sha256": hex}

    def to_json(self) -> str:
        fields = asdict(self)
        return json.dumps({**fields, "meta_sha256": _fields_digest(fields)}, indent=1) + "\n"


def _fields_digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def name(t: int) -> str:
    """The directory name of round t's checkpoint."""
    return f"round-{t:06d}"


def rank_file(r: int) -> str:
    return f"rank-{r:04d}.pt"


def _root(run_dir: str | os.PathLike) -> Path:
    """``run_dir/checkpoint``, refused if it is a symbolic link (nothing is followed inside a run)."""
    root = Path(run_dir) / DIRECTORY
    if root.is_symlink():
        raise Damaged(DIRECTORY, "is a symbolic link; mpisim never follows links inside a run directory")
    return root


# ---------------------------------------------------------------- writing


def encode(state: dict) -> bytes:
    """A rank's state as the bytes of its file (torch's zip format)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def staging(run_dir: str | os.PathLike, t: int) -> Path:
    """The directory every rank writes its round-t state into (created if missing)."""
    path = _root(run_dir) / f"{name(t)}.tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_rank(run_dir: str | os.PathLike, t: int, rank: int, state: dict) -> Digest:
    """Rank ``rank``'s state for round t, written atomically into the staging directory; its digest.

    The SHA-256 is computed on a thread while the file is written and flushed (hashlib and
    the writes release the GIL): 345 MB take 0.2 s to hash here, hidden behind the disk."""
    data = encode(state)
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(Digest.of, data)
        metrics.atomic_write(staging(run_dir, t) / rank_file(rank), data)
        return digest.result()


def commit(run_dir: str | os.PathLike, meta: Meta, *, keep: int = 2) -> None:
    """Rank 0, once every rank's file is written: make round ``meta.round`` the latest checkpoint,
    then remove the ``round-*`` checkpoints beyond the newest ``keep``."""
    root = _root(run_dir)
    tmp, final = root / f"{name(meta.round)}.tmp", root / name(meta.round)
    missing = [r for r in range(meta.world_size) if rank_file(r) not in meta.files
               or not (tmp / rank_file(r)).is_file()]
    if missing:
        raise RuntimeError(f"checkpoint of round {meta.round}: no state from ranks {missing}")
    metrics.atomic_write(tmp / META, meta.to_json())
    if final.is_dir() and not final.is_symlink():  # a checkpoint of the same round from before a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    metrics.atomic_write(root / LATEST, name(meta.round) + "\n")
    for t in rounds(run_dir)[keep:]:
        shutil.rmtree(root / name(t), ignore_errors=True)


# ---------------------------------------------------------------- reading


def rounds(run_dir: str | os.PathLike) -> list[int]:
    """Rounds of the committed checkpoints (``round-XXXXXX`` directories, not links), newest first."""
    root = _root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in os.scandir(root):
        match = _ROUND_DIR.fullmatch(entry.name)
        if match and entry.is_dir(follow_symlinks=False):
            found.append(int(match.group(1)))
    return sorted(found, reverse=True)


def read_file(run_dir: str | os.PathLike, relative: str) -> bytes:
    """A file of the run directory, never through a symbolic link; Damaged if it cannot be read."""
    try:
        fd = os.open(Path(run_dir) / relative, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise Damaged(relative, "is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Damaged(relative, "is a symbolic link; mpisim never follows links inside a run "
                                    "directory") from None
        raise Damaged(relative, f"cannot be read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as stream:
        return stream.read()


def read_meta(run_dir: str | os.PathLike, t: int) -> Meta:
    """The checked ``meta.json`` of round t's checkpoint; Damaged if it is not what rank 0 wrote."""
    path = f"{DIRECTORY}/{name(t)}/{META}"
    try:
        fields = json.loads(read_file(run_dir, path))
        recorded = fields.pop("meta_sha256")
        meta = Meta(**fields)
    except Damaged:
        raise
    except (ValueError, TypeError, KeyError, AttributeError):
        raise Damaged(path, "is not a checkpoint's meta.json (not JSON, or fields missing or unknown; "
                            "written by an mpisim without checksums?)") from None
    if _fields_digest(fields) != recorded:
        raise Damaged(path, "its fields do not match its own SHA-256 (the file was changed)")
    if meta.round != t:
        raise Damaged(path, f"says round {meta.round}, but lies in {name(t)}/")
    return meta


def read_rank_bytes(run_dir: str | os.PathLike, meta: Meta, rank: int) -> bytes:
    """Rank ``rank``'s file of checkpoint ``meta``, checked against its size and SHA-256."""
    path = f"{DIRECTORY}/{name(meta.round)}/{rank_file(rank)}"
    expected = meta.files.get(rank_file(rank))
    if expected is None:
        raise Damaged(f"{DIRECTORY}/{name(meta.round)}/{META}", f"records no file for rank {rank}")
    data = read_file(run_dir, path)
    if len(data) != expected["bytes"]:
        raise Damaged(path, f"has {len(data):,} bytes, the checkpoint recorded {expected['bytes']:,} "
                            f"({'truncated' if len(data) < expected['bytes'] else 'grown'})")
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise Damaged(path, "its SHA-256 differs from the one recorded (the bytes were changed)")
    return data


def decode(data: bytes, path: str) -> dict:
    """A rank's state from its checked bytes; tensors and plain containers only (no code runs)."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is a damaged file
        raise Damaged(path, f"cannot be loaded as tensors and plain values: {exc}") from None


def check_metrics(run_dir: str | os.PathLike, meta: Meta) -> bytes:
    """The first ``meta.metrics_bytes`` bytes of metrics.jsonl, checked against the checkpoint."""
    data = read_file(run_dir, "metrics.jsonl")
    prefix = data[:meta.metrics_bytes]
    if len(prefix) < meta.metrics_bytes:
        raise Damaged("metrics.jsonl", f"has {len(data):,} bytes, the checkpoint of round {meta.round} "
                                       f"needs its first {meta.metrics_bytes:,}")
    if hashlib.sha256(prefix).hexdigest() != meta.metrics_sha256 or prefix.count(b"\n") != meta.metrics_lines:
        raise Damaged("metrics.jsonl", f"its first {meta.metrics_lines} records (up to round {meta.round}) "
                                       f"differ from those the checkpoint recorded")
    return prefix


def latest(run_dir: str | os.PathLike) -> Meta | None:
    """The newest committed checkpoint whose meta.json passes its checks, or None (files unchecked)."""
    try:
        for t in rounds(run_dir):
            try:
                return read_meta(run_dir, t)
            except Damaged:
                continue
    except (Damaged, OSError):
        pass
    return None


def set_aside(run_dir: str | os.PathLike, t: int) -> str:
    """Rename a damaged checkpoint out of the way (never deleted: it may be looked at); its new name."""
    root = _root(run_dir)
    target = root / f"{name(t)}.damaged"
    suffix = 1
    while target.exists() or target.is_symlink():
        suffix += 1
        target = root / f"{name(t)}.damaged-{suffix}"
    os.replace(root / name(t), target)
    return f"{DIRECTORY}/{target.name}"


def sweep_incomplete(run_dir: str | os.PathLike) -> None:
    """Remove staging directories of checkpoints that never completed (rank 0, on resume)."""
    root = _root(run_dir)
    if root.is_dir():
        for entry in os.scandir(root):
            if entry.name.endswith(".tmp") and _ROUND_DIR.fullmatch(entry.name[:-4]) \
                    and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)


# ---------------------------------------------------------------- one writer at a time


class Lock:
    """An exclusive ``flock`` on ``run_dir/.lock``, held by rank 0 for the whole job.

    The kernel releases it when the process ends, however it ends (kill -9
    too), so a stale lock cannot outlive its job. The file records the
    holder's host, pid and start time, for the message a second job gets.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LockError(f"{self.path} is a symbolic link; mpisim never follows links inside a run "
                                f"directory") from None
            raise LockError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 4096, 0).decode("utf-8", "replace")
            os.close(self.fd)
            raise LockError(f"{run_dir} is in use by another job ({describe_holder(holder)}): one job "
                            f"writes a run directory at a time") from None
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S %z")})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, record.encode() + b"\n", 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = -1


class LockError(Exception):
    pass


def describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on host {holder['host']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
