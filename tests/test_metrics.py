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


def test_metrics_lines_are_appended_never_rewritten(tmp_path):
    log = metrics.RunLog(tmp_path / "run", "")
    path = tmp_path / "run" / "metrics.jsonl"
    log.log({"round": 0})
    inode, first = os.stat(path).st_ino, path.read_bytes()

    log.log({"round": 1})

    assert os.stat(path).st_ino == inode  # the same file, not a replacement
    assert path.read_bytes().startswith(first) and path.read_bytes().count(b"\n") == 2
    log.close()


def test_a_torn_last_line_is_dropped_by_the_reader_and_cut_off_on_reopening(tmp_path):
    log = metrics.RunLog(tmp_path / "run", "")
    log.log({"round": 0, "test_loss": 1.0})
    log.log({"round": 5, "test_loss": 0.5})
    log.close()
    path = tmp_path / "run" / "metrics.jsonl"
    with open(path, "ab") as stream:  # a crash in the middle of the third line
        stream.write(b'{"round": 10, "test_lo')

    assert [r["round"] for r in metrics.read_jsonl(path)] == [0, 5]

    again = metrics.RunLog(tmp_path / "run", "", append=True)
    again.log({"round": 10, "test_loss": 0.25})
    again.close()
    assert [r["round"] for r in metrics.read_jsonl(path)] == [0, 5, 10]
    assert path.read_text().count("\n") == 3


def test_a_last_line_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"round": 0}\n{"round": 1}')

    assert [r["round"] for r in metrics.read_jsonl(path)] == [0, 1]


def test_a_named_run_directory_is_never_reused(tmp_path):
    first = metrics.make_run_dir(tmp_path / "new" / "parent", "exp", "default")

    assert first == tmp_path / "new" / "parent" / "exp" and first.is_dir()
    with pytest.raises(FileExistsError):
        metrics.make_run_dir(tmp_path / "new" / "parent", "exp", "default")
    assert metrics.make_run_dir(tmp_path, "", "stamp").name == "stamp"
    assert metrics.make_run_dir(tmp_path, "", "stamp").name == "stamp-2"
