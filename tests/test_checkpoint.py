"""Checkpoint files, the run directory's lock and the checks a resume makes (pure; no MPI)."""

import hashlib
import os
import time

import pytest
import torch

from mpisim import checkpoint, config, metrics, signals
from mpisim.config import ConfigError
from mpisim.protocols import driver
from mpisim.protocols.server_config import ServerModeConfig


def parse(argv):
    return config.parse_args(ServerModeConfig, argv, prog="t", description="t")


def write_checkpoint(run_dir, t, states, *, keep=2, log=None):
    """Round t's checkpoint of ``states`` (one per rank), as the driver writes it."""
    log = log or metrics.RunLog(run_dir, "", append=(run_dir / "metrics.jsonl").exists())
    log.log({"round": t})
    digests = [checkpoint.write_rank(run_dir, t, r, s) for r, s in enumerate(states)]
    files = {checkpoint.rank_file(r): {"bytes": g.bytes, "sha256": g.sha256} for r, g in enumerate(digests)}
    checkpoint.commit(run_dir, checkpoint.Meta(round=t, world_size=len(states), seconds=1.5,
                                               metrics_lines=log.records, metrics_bytes=log.bytes,
                                               metrics_sha256=log.sha256(), files=files), keep=keep)
    return log


STATES = [{"model": torch.arange(10.0), "rng": torch.Generator().manual_seed(3).get_state()},
          {"agents": {0: {"id": 0, "sampler": {"rng": {"state": {"state": 2**100 + 7, "inc": 3}}}}}}]


def test_a_checkpoint_reads_back_what_was_written(tmp_path):
    write_checkpoint(tmp_path, 10, STATES)
    meta = checkpoint.read_meta(tmp_path, 10)
    assert meta.round == 10 and meta.world_size == 2 and meta.metrics_lines == 1
    for r, state in enumerate(STATES):
        back = checkpoint.decode(checkpoint.read_rank_bytes(tmp_path, meta, r), "x")
        assert torch.equal(back.get("model", torch.zeros(0)), state.get("model", torch.zeros(0)))
    assert checkpoint.decode(checkpoint.read_rank_bytes(tmp_path, meta, 1), "x") == STATES[1]
    checkpoint.check_metrics(tmp_path, meta)


def test_commit_keeps_the_newest_checkpoints_and_removes_nothing_but_round_directories(tmp_path):
    log = write_checkpoint(tmp_path, 10, STATES)
    root = tmp_path / "checkpoint"
    (root / "backup-of-10").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("keep me")
    (root / "round-000010.damaged").mkdir()
    for t in (20, 30, 40):
        write_checkpoint(tmp_path, t, STATES, log=log)
    assert checkpoint.rounds(tmp_path) == [40, 30]
    assert (root / "notes" / "todo.txt").read_text() == "keep me"
    assert (root / "backup-of-10").is_dir() and (root / "round-000010.damaged").is_dir()
    write_checkpoint(tmp_path, 50, STATES, log=log, keep=1)
    assert checkpoint.rounds(tmp_path) == [50]


def test_a_symlinked_round_directory_is_neither_read_nor_removed(tmp_path):
    write_checkpoint(tmp_path, 10, STATES)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("x")
    (tmp_path / "checkpoint" / "round-000099").symlink_to(elsewhere)
    assert checkpoint.rounds(tmp_path) == [10]
    write_checkpoint(tmp_path, 20, STATES, keep=1)
    assert (elsewhere / "precious").read_text() == "x"


def test_damage_is_named_file_and_reason(tmp_path):
    write_checkpoint(tmp_path, 10, STATES)
    meta = checkpoint.read_meta(tmp_path, 10)
    rank1 = tmp_path / "checkpoint" / "round-000010" / "rank-0001.pt"
    good = rank1.read_bytes()

    rank1.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(checkpoint.Damaged, match="rank-0001.pt: its SHA-256 differs"):
        checkpoint.read_rank_bytes(tmp_path, meta, 1)
    rank1.write_bytes(good[:50])
    with pytest.raises(checkpoint.Damaged, match=r"rank-0001.pt: has 50 bytes.*\(truncated\)"):
        checkpoint.read_rank_bytes(tmp_path, meta, 1)
    rank1.unlink()
    with pytest.raises(checkpoint.Damaged, match="rank-0001.pt: is missing"):
        checkpoint.read_rank_bytes(tmp_path, meta, 1)
    with pytest.raises(checkpoint.Damaged, match="records no file for rank 2"):
        checkpoint.read_rank_bytes(tmp_path, meta, 2)

    path = tmp_path / "checkpoint" / "round-000010" / "meta.json"
    path.write_text(path.read_text().replace('"seconds": 1.5', '"seconds": 2.5'))
    with pytest.raises(checkpoint.Damaged, match="meta.json: its fields do not match"):
        checkpoint.read_meta(tmp_path, 10)
    path.write_text("")
    with pytest.raises(checkpoint.Damaged, match="meta.json: is not a checkpoint's meta.json"):
        checkpoint.read_meta(tmp_path, 10)
    assert checkpoint.latest(tmp_path) is None


def test_a_meta_json_moved_to_another_round_is_refused(tmp_path):
    write_checkpoint(tmp_path, 10, STATES)
    os.rename(tmp_path / "checkpoint" / "round-000010", tmp_path / "checkpoint" / "round-000030")
    with pytest.raises(checkpoint.Damaged, match="says round 10, but lies in round-000030"):
        checkpoint.read_meta(tmp_path, 30)


def test_the_metrics_prefix_is_checked(tmp_path):
    log = write_checkpoint(tmp_path, 10, STATES)
    log.log({"round": 20})  # written after the checkpoint: not part of it, may differ
    meta = checkpoint.read_meta(tmp_path, 10)
    checkpoint.check_metrics(tmp_path, meta)
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text().replace('{"round": 10}', '{"round": 11}'))
    with pytest.raises(checkpoint.Damaged, match="metrics.jsonl: its first 1 records"):
        checkpoint.check_metrics(tmp_path, meta)
    path.write_text("")
    with pytest.raises(checkpoint.Damaged, match="metrics.jsonl: has 0 bytes"):
        checkpoint.check_metrics(tmp_path, meta)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_loading_a_rank_file_never_runs_code(tmp_path):
    data = checkpoint.encode({"x": _Payload(tmp_path / "pwned")})
    with pytest.raises(checkpoint.Damaged, match="cannot be loaded as tensors and plain values"):
        checkpoint.decode(data, "rank-0000.pt")
    assert not (tmp_path / "pwned").exists()


def test_nothing_is_read_or_written_through_a_symlink(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").symlink_to(target)
    with pytest.raises(OSError):
        metrics.RunLog(run_dir, "", append=True, keep_bytes=0)
    with pytest.raises(checkpoint.Damaged, match="symbolic link"):
        checkpoint.read_file(run_dir, "metrics.jsonl")
    assert target.read_text() == "precious\n"
    (run_dir / "checkpoint").symlink_to(tmp_path)
    with pytest.raises(checkpoint.Damaged, match="checkpoint: is a symbolic link"):
        checkpoint.rounds(run_dir)


def test_the_lock_admits_one_holder_and_names_it(tmp_path):
    held = checkpoint.Lock(tmp_path)
    with pytest.raises(checkpoint.LockError, match=rf"in use by another job \(pid {os.getpid()} on host "):
        checkpoint.Lock(tmp_path)  # another open file description: refused, as another process would be
    held.release()
    checkpoint.Lock(tmp_path).release()  # free again


def test_the_lock_is_released_when_its_holder_dies(tmp_path):
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies without releasing it
        checkpoint.Lock(tmp_path)
        os._exit(0)
    os.waitpid(pid, 0)
    checkpoint.Lock(tmp_path).release()


def test_the_metrics_log_hashes_what_it_wrote_and_what_it_kept(tmp_path):
    log = metrics.RunLog(tmp_path, "")
    for t in range(3):
        log.log({"round": t})
    data = (tmp_path / "metrics.jsonl").read_bytes()
    assert (log.records, log.bytes, log.sha256()) == (3, len(data), hashlib.sha256(data).hexdigest())
    log.close()
    first = data[:data.index(b"\n") + 1]
    again = metrics.RunLog(tmp_path, "", append=True, keep_bytes=len(first))
    assert (again.records, again.bytes, again.sha256()) == (1, len(first), hashlib.sha256(first).hexdigest())
    assert (tmp_path / "metrics.jsonl").read_bytes() == first


def test_the_evaluation_schedule_is_a_test_not_a_set():
    run = ServerModeConfig().run.__class__(rounds=10**12, eval_every=25)
    started = time.perf_counter()
    assert driver.evaluated(0, run) and driver.evaluated(25, run) and driver.evaluated(10**12, run)
    assert not driver.evaluated(26, run)
    assert time.perf_counter() - started < 1.0  # no set of 4e10 rounds


def test_a_run_directorys_config_never_resumes():
    cfg, _ = parse(["--run.resume", "somewhere", "--run.resume_fallback", "true"])
    saved = config.dumps(config.for_run_dir(cfg))
    assert 'resume = ""' in saved and "resume_fallback = false" in saved


@pytest.mark.parametrize("name", ["a\nb", "a\x1b[31mred", "tab\there", "nul\x7f"])
def test_a_run_name_with_control_characters_is_refused(name):
    cfg, _ = parse(["--run.name", name])
    with pytest.raises(ConfigError, match="run.name: must not hold control characters"):
        config.validate_run(cfg.run)


def test_an_out_dir_longer_than_the_system_allows_is_a_config_error():
    cfg, _ = parse(["--run.out_dir", "/tmp/" + "a/" * 3000])
    with pytest.raises(ConfigError, match="run.out_dir: cannot use .*File name too long"):
        config.validate_run(cfg.run)


def test_a_toml_file_nested_too_deep_is_a_config_error(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("[data.params]\nx = " + "{a = " * 500 + "1" + "}" * 500 + "\n")
    with pytest.raises(ConfigError, match="--config: .* nests tables or arrays too deep"):
        parse(["--config", str(path)])


def test_stop_signals_once_stopping_are_ignored():
    stops = signals.catch()
    try:
        os.kill(os.getpid(), signals.SIGNALS[0])
        assert stops.seen == signals.SIGNALS[0]
        stops.ignore()
        os.kill(os.getpid(), signals.SIGNALS[0])  # would end the process with the default handler
        os.kill(os.getpid(), signals.SIGNALS[1])
    finally:
        signals.release()
