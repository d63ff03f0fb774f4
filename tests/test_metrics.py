"""Run directories are written atomically and in strict JSON."""

import json
import os

import pytest

from mpisim import metrics


def test_run_log_writes_config_lines_and_summary(tmp_path):
    log = metrics.RunLog(tmp_path / "run", "[run]\nseed = 1\n")

    log.log({"round": 0, "test_accuracy": 0.1, "test_loss": float("nan")})
    log.log({"round": 5, "test_accuracy": 0.9, "test_loss": float("inf")})
    log.summary({"final": {"test_loss": float("nan")}})

    assert (tmp_path / "run" / "config.toml").read_text() == "[run]\nseed = 1\n"
    lines = metrics.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["round"] for r in lines] == [0, 5]
    assert lines[0]["test_loss"] is None and lines[1]["test_loss"] is None
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"final": {"test_loss": None}}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    metrics.atomic_write(path, "old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        metrics.atomic_write(path, "new")

    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left behind


def test_unique_dir_never_reuses_a_directory(tmp_path):
    first = metrics.unique_dir(tmp_path, "run")
    second = metrics.unique_dir(tmp_path, "run")

    assert first.name == "run" and second.name == "run-2"
