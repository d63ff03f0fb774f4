"""Run directories: the resolved config, a JSON-lines log, a summary; all written atomically.

A run directory holds

- ``config.toml``: the resolved configuration (reload it with ``--config``);
- ``metrics.jsonl``: one JSON object per evaluation (round, wall time, losses,
  accuracies, bytes moved so far, ...);
- ``summary.json``: final figures, timings per phase, peak memory per rank.

Every file is replaced atomically (written to a temporary file in the same
directory, flushed to disk, then renamed over the old one), so a crash at any
moment leaves either the previous complete file or the new complete one.
Non-finite floats (a diverged model) are written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable


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
    """``parent/name``, or ``parent/name-2``, ``-3``... if taken; created empty."""
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


class RunLog:
    """The files of one run directory (written by one rank only)."""

    def __init__(self, directory: str | os.PathLike, config_toml: str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        atomic_write(self.dir / "config.toml", config_toml)
        atomic_write(self.dir / "metrics.jsonl", "")

    def log(self, record: dict) -> None:
        """Append one evaluation record to metrics.jsonl (rewritten atomically)."""
        self.records.append(finite_or_none(record))
        atomic_write(self.dir / "metrics.jsonl", "".join(to_json(r) + "\n" for r in self.records))

    def summary(self, summary: dict) -> None:
        atomic_write(self.dir / "summary.json", to_json(summary, indent=2) + "\n")

    def save_array(self, name: str, array) -> None:
        """Write ``array`` as NAME.npy (numpy's format)."""
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write(self.dir / f"{name}.npy", buffer.getvalue())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line) for line in stream if line.strip()]


def default_run_name(parts: Iterable[str]) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return "-".join([stamp, *[p for p in parts if p]])


class PhaseTimer:
    """Wall-clock seconds accumulated per named phase (``with timer("filter"): ...``)."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self._phase: str | None = None
        self._start = 0.0

    def __call__(self, phase: str) -> "PhaseTimer":
        self._phase = phase
        return self

    def __enter__(self) -> "PhaseTimer":
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
