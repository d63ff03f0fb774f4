"""Run directories: the resolved config, a JSON-lines log, a summary; all written atomically.

A run directory holds

- ``config.toml``: the resolved configuration (reload it with ``--config``);
- ``metrics.jsonl``: one JSON object per evaluation (round, wall time, losses,
  test metrics, bytes moved so far, ...), appended one line at a time;
- ``summary.json``: final figures, timings per phase, peak memory per rank.

Every other file is replaced atomically (written to a temporary file in the
same directory, flushed to disk, then renamed over the old one), so a crash
at any moment leaves either the previous complete file or the new complete
one; the metrics log is append-only (see :class:`RunLog`). Non-finite floats
(a diverged model) are written as ``null``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, content: str | bytes) -> None:
    """Replace ``path`` with ``content`` so that readers see the old or the new file, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(content.encode("utf-8") if isinstance(content, str) else content)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def finite_or_none(value: Any) -> Any:
    """Recursively replace NaN and infinities by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def to_json(value: Any, **kwargs) -> str:
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def unique_dir(parent: str | os.PathLike, name: str) -> Path:
    """``parent/name``, or ``parent/name-2``, ``-3``... if taken; created empty (``parent`` too)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    candidate, suffix = parent / name, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = parent / f"{name}-{suffix}"


def make_run_dir(out_dir: str | os.PathLike, name: str, default_name: str) -> Path:
    """Create the run directory: ``out_dir/name`` (which must not exist yet), or, with no name,
    ``out_dir/default_name`` made unique with a -2, -3... suffix. Raises OSError."""
    if name:
        parent = Path(out_dir).expanduser()
        parent.mkdir(parents=True, exist_ok=True)
        (parent / name).mkdir()  # FileExistsError if taken: runs never share a directory
        return parent / name
    return unique_dir(Path(out_dir).expanduser(), default_name)


class RunLog:
    """The files of one run directory (written by one rank only).

    ``metrics.jsonl`` is appended to one line at a time: each record is one
    ``write`` of the whole line on a file opened in append mode, followed by
    ``fdatasync``, so the cost of a line does not grow with the log and a
    crash can at worst leave the last line incomplete, which
    :func:`read_jsonl` drops (and which is cut off when the log is reopened).
    """

    def __init__(self, directory: str | os.PathLike, config_toml: str, *, append: bool = False,
                 keep_bytes: int | None = None):
        """``append``: go on with an existing log (a resumed run), keeping only its first
        ``keep_bytes`` bytes when that is given (the records written after the checkpoint the
        run resumes from are cut off, to be written again). The log is never opened through a
        symbolic link (OSError ELOOP)."""
        self.dir = Path(directory)
        self.lock = None  # the directory's lock (mpisim.checkpoint.Lock), released by close()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / "config.toml", config_toml)
        path = self.dir / "metrics.jsonl"
        flags = (os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW  # RDWR: to find a torn tail
                 | (0 if append else os.O_TRUNC))
        self._fd = os.open(path, flags, 0o666)
        if append:
            _drop_torn_tail(self._fd)
            if keep_bytes is not None:
                _keep_bytes(self._fd, keep_bytes)
        # The records so far: their count, bytes and running SHA-256 (a checkpoint records them,
        # so that a resume can tell whether the log it goes on with is the one it left).
        kept = os.pread(self._fd, os.fstat(self._fd).st_size, 0) if append else b""
        self.records, self.bytes = kept.count(b"\n"), len(kept)
        self._sha = hashlib.sha256(kept)

    def log(self, record: dict) -> None:
        """Append one evaluation record to metrics.jsonl, durably."""
        line = (to_json(record) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):  # a short write (disk full): cut it off, then fail loudly
            _drop_torn_tail(self._fd)
            raise OSError(f"metrics.jsonl: wrote {written} of {len(line)} bytes")
        os.fdatasync(self._fd) if hasattr(os, "fdatasync") else os.fsync(self._fd)
        self.records, self.bytes = self.records + 1, self.bytes + len(line)
        self._sha.update(line)

    def sha256(self) -> str:
        """SHA-256 of the records written so far (O(1): a running hash)."""
        return self._sha.hexdigest()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def summary(self, summary: dict) -> None:
        atomic_write(self.dir / "summary.json", to_json(summary, indent=2) + "\n")

    def save_json(self, name: str, value) -> None:
        """Write NAME (a JSON file of the run) atomically."""
        atomic_write(self.dir / name, to_json(value, indent=1) + "\n")

    def save_array(self, name: str, array) -> None:
        """Write ``array`` as NAME.npy (numpy's format)."""
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write(self.dir / f"{name}.npy", buffer.getvalue())


def _drop_torn_tail(fd: int) -> None:
    """Truncate the file open at ``fd`` after its last newline (an incomplete last line)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    keep, step = size, 4096
    while keep > 0:
        start = max(0, keep - step)
        chunk = os.pread(fd, keep - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        keep = start
    if keep != size:
        os.ftruncate(fd, keep)


def _keep_bytes(fd: int, size: int) -> None:
    """Truncate the file open at ``fd`` to its first ``size`` bytes (durably)."""
    if os.fstat(fd).st_size < size:
        raise ValueError(f"metrics.jsonl has fewer than the {size} bytes of its checkpoint")
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)
        os.fsync(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file; an incomplete last line (a crash mid-write) is dropped."""
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # tail: after the last newline ("" if the file is whole)
    records = [json.loads(line) for line in complete if line.strip()]
    if tail.strip():
        try:
            records.append(json.loads(tail))  # written whole, only the newline missing
        except json.JSONDecodeError:
            pass
    return records


def default_run_name(parts: Iterable[str]) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return "-".join([stamp, *[p for p in parts if p]])


class PhaseTimer:
    """Wall-clock seconds accumulated per named phase (``with timer("filter"): ...``)."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self._phase: str | None = None
        self._start = 0.0

    def __call__(self, phase: str) -> PhaseTimer:
        self._phase = phase
        return self

    def __enter__(self) -> PhaseTimer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        elapsed = time.perf_counter() - self._start
        self.totals[self._phase] = self.totals.get(self._phase, 0.0) + elapsed


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
