"""MPI tier: run directories you can trust (issue 17). Every test here failed on commit cd96fce.

A resumed run never hands back a wrong model without a word: a finished sharded run resumed keeps its
model; a damaged, edited or foreign checkpoint stops every rank with exit code 2 and a message naming
the file (an older intact one is taken only with --run.resume_fallback); a rank file never runs code;
one job writes a run directory at a time; stop signals always end in a checkpoint and exit 75.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from mpisim import checkpoint, metrics
from mpisim.mpi import launcher
from test_resume import CASES, finish, ranks, resume, start

pytestmark = pytest.mark.processes

# A short server-mode run: 3 ranks (2 agent ranks), checkpoints at rounds 10 and 20.
SHORT = ["-m", "mpisim.server_mode", "--agents.n", "4", "--agents.per_rank", "2", "--run.rounds", "20",
         "--run.eval_every", "10", "--run.checkpoint_every", "10", "--run.save_model", "true",
         "--aggregator.name", "cwtm", "--byzantine.fault", "alie", "--byzantine.count", "1"]


def finished_run(tmp_path, name="run", args=SHORT):
    code, _, err = finish(start(args, tmp_path, name))
    assert code == 0, err[-3000:]
    return tmp_path / name


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One finished SHORT run (checkpoints at rounds 10 and 20), never changed: tests damage copies."""
    return finished_run(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def copy_of(pristine, tmp_path):
    """A copy of the pristine run, as if killed after its last checkpoint (no summary, no model)."""
    run_dir = tmp_path / "run"
    shutil.copytree(pristine, run_dir, symlinks=True)
    (run_dir / "summary.json").unlink()
    (run_dir / "model.npy").unlink()
    return run_dir


def wait_for_records(proc, run_dir, count, timeout=120):
    """Wait until the running job has written ``count`` records to metrics.jsonl."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "metrics.jsonl").exists() or len(metrics.read_jsonl(run_dir / "metrics.jsonl")) < count:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.02)


def refused(result, *words):
    """The resume stopped every rank with exit code 2 and a message holding ``words``, no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for word in words:
        assert word in result.stderr, (word, result.stderr[-3000:])


def rewrite_meta(run_dir, t, **changes):
    """Edit a checkpoint's meta.json as a malicious or careless hand would: fields changed, its own
    digest recomputed, so only the other checks can catch it."""
    path = run_dir / "checkpoint" / f"round-{t:06d}" / "meta.json"
    fields = json.loads(path.read_text())
    signed = fields.pop("meta_sha256", None) is not None
    fields.update(changes)
    if signed:  # the SHA-256 of the fields as canonical JSON (sorted keys), as documented
        fields["meta_sha256"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(fields))


# ---------------------------------------------------------------- item 1: finished sharded runs


def test_a_finished_sharded_run_resumed_keeps_its_model(tmp_path):
    # Three server ranks: slices of unequal sizes, two of them stale on rank 0 (cd96fce left
    # 267,966 coordinates of the model at their initial values).
    args = [*SHORT, "--aggregator.name", "cc", "--server.ranks", "3"]
    run_dir = finished_run(tmp_path, args=args)
    model = (run_dir / "model.npy").read_bytes()

    # Finished (summary.json written): nothing to do, nothing touched.
    again = resume(run_dir, nprocs=ranks(args))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stdout
    assert (run_dir / "model.npy").read_bytes() == model

    # Killed after the final checkpoint, before the summary: the resume runs no round and must
    # still write the whole model (every server rank's slice), not rank 0's stale copy.
    (run_dir / "summary.json").unlink()
    (run_dir / "model.npy").unlink()
    again = resume(run_dir, nprocs=ranks(args))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run_dir / "model.npy").read_bytes() == model
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 20


# ---------------------------------------------------------------- items 2 and 5: damaged checkpoints


def flip_bytes(path, at=3000, count=16):
    data = bytearray(path.read_bytes())
    data[at:at + count] = bytes(b ^ 0xFF for b in data[at:at + count])
    path.write_bytes(bytes(data))


DAMAGE = {
    "16 flipped bytes": (lambda d: flip_bytes(d / "checkpoint/round-000020/rank-0000.pt"),
                         "round-000020/rank-0000.pt", "SHA-256"),
    "truncated": (lambda d: os.truncate(d / "checkpoint/round-000020/rank-0001.pt", 100),
                  "round-000020/rank-0001.pt", "truncated"),
    "empty": (lambda d: os.truncate(d / "checkpoint/round-000020/rank-0002.pt", 0),
              "round-000020/rank-0002.pt", "truncated"),
    "missing": (lambda d: (d / "checkpoint/round-000020/rank-0001.pt").unlink(),
                "round-000020/rank-0001.pt", "is missing"),
    "meta.json of another round": (lambda d: rewrite_meta(d, 20, round=30),
                                   "round-000020/meta.json", "says round 30"),
    "meta.json edited": (lambda d: (d / "checkpoint/round-000020/meta.json").write_text(
        (d / "checkpoint/round-000020/meta.json").read_text().replace('"round": 20', '"round": 10')),
                         "round-000020/meta.json", "do not match"),
    "meta.json garbled": (lambda d: (d / "checkpoint/round-000020/meta.json").write_text("{garbage"),
                          "round-000020/meta.json", "not a checkpoint's meta.json"),
    "a garbled metrics line": (lambda d: (d / "metrics.jsonl").write_text(
        (d / "metrics.jsonl").read_text().replace('"round": 10', '"rou#d": 10')),
                               "metrics.jsonl", "differ from those the checkpoint recorded"),
}


# The fallback is the same for every kind of damage: run through for three of them (time).
FALLBACK = ("16 flipped bytes", "missing", "meta.json of another round")


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_refused_then_taken_over_by_the_older_one_on_request(
        pristine, copy_of, damage):
    run_dir = copy_of
    hurt, where, why = DAMAGE[damage]
    hurt(run_dir)

    result = resume(run_dir)
    refused(result, "config error: run.resume", where, why)
    if damage == "a garbled metrics line":
        return  # the log before both checkpoints is damaged: no checkpoint can go on from it
    assert "--run.resume_fallback true" in result.stderr
    if damage not in FALLBACK:
        return

    fallback = resume(run_dir, "--run.resume_fallback", "true")
    assert fallback.returncode == 0, fallback.stderr[-3000:]
    assert "skipped the damaged checkpoint of round 20" in fallback.stderr
    assert (run_dir / "checkpoint" / "round-000020.damaged").is_dir()  # set aside, not deleted
    assert (run_dir / "model.npy").read_bytes() == (pristine / "model.npy").read_bytes()
    records = metrics.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 10, 20]


def test_a_garbled_latest_pointer_does_not_hide_an_intact_checkpoint(pristine, copy_of):
    run_dir = copy_of
    (run_dir / "checkpoint" / "latest").write_text("\x00garbage")
    again = resume(run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run_dir / "model.npy").read_bytes() == (pristine / "model.npy").read_bytes()


# ---------------------------------------------------------------- item 3: no code, no links


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_rank_file_that_would_run_code_is_refused_without_running_it(tmp_path, copy_of):
    run_dir = copy_of
    marker = tmp_path / "pwned"
    rank_file = run_dir / "checkpoint" / "round-000020" / "rank-0001.pt"
    torch.save({"role": _Payload(marker)}, rank_file)  # pickled, as torch.save does
    data = rank_file.read_bytes()
    # Its digest recorded too: only the loader itself stands between the file and the shell.
    meta = json.loads((run_dir / "checkpoint" / "round-000020" / "meta.json").read_text())
    if "files" in meta:
        files = {**meta["files"], "rank-0001.pt": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
        rewrite_meta(run_dir, 20, files=files)

    refused(resume(run_dir), "round-000020/rank-0001.pt", "cannot be loaded as tensors and plain values")
    assert not marker.exists()


def test_a_symlinked_metrics_log_is_refused_and_its_target_left_alone(tmp_path, copy_of):
    run_dir = copy_of
    target = tmp_path / "precious.txt"
    target.write_bytes((run_dir / "metrics.jsonl").read_bytes() + b"precious lines\n")
    before = target.read_bytes()
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").symlink_to(target)

    refused(resume(run_dir), "metrics.jsonl", "symbolic link")
    assert target.read_bytes() == before


# ---------------------------------------------------------------- item 4: one writer at a time


def test_two_resumes_of_one_directory_at_once_the_second_is_refused_naming_the_first(copy_of):
    run_dir = copy_of
    first = launcher.mpiexec_command()
    cmd = [*first, "-n", "3", sys.executable, "-m", "mpisim.server_mode", "--run.resume", str(run_dir),
           "--run.rounds", "400", "--run.progress", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_records(proc, run_dir, 4)  # the first one is running
        second = resume(run_dir, "--run.rounds", "400")
        refused(second, "is in use by another job", "pid ", "on host ")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == checkpoint.EXIT_CHECKPOINTED, err[-3000:]
    rounds = [r["round"] for r in metrics.read_jsonl(run_dir / "metrics.jsonl")]
    assert rounds == sorted(set(rounds))  # no record twice, none out of order


# ---------------------------------------------------------------- items 7, 8, 9, 13


def test_a_huge_number_of_rounds_runs_until_sigterm(tmp_path):
    args = [*SHORT, "--run.rounds", "1000000000000", "--run.checkpoint_every", "0"]
    proc = start(args, tmp_path, "endless")
    run_dir = tmp_path / "endless"
    wait_for_records(proc, run_dir, 2)
    os.killpg(proc.pid, signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == checkpoint.EXIT_CHECKPOINTED, err[-3000:]
    assert checkpoint.latest(run_dir).round >= 10


def test_one_round_resumed_after_its_checkpoint_reports_like_the_whole_run(tmp_path):
    args = ["-m", "mpisim.one_round", "--agents.n", "4", "--agents.per_rank", "2", "--run.checkpoint_every", "1",
            "--run.save_model", "true"]
    run_dir = finished_run(tmp_path, args=args)
    whole = json.loads((run_dir / "summary.json").read_text())
    again = launcher.run(3, ["-m", "mpisim.one_round", "--run.resume", str(run_dir)], timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-3000:]

    (run_dir / "summary.json").unlink()  # killed after its checkpoint
    again = launcher.run(3, ["-m", "mpisim.one_round", "--run.resume", str(run_dir)], timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["erm"] == whole["erm"] and resumed["final"] == whole["final"]


def test_a_resumed_run_keeps_foreign_directories_and_its_config_does_not_resume_again(tmp_path, copy_of):
    run_dir = copy_of
    for mine in ("backup-of-20", "notes"):  # a user's directories beside the checkpoints (item 11)
        (run_dir / "checkpoint" / mine).mkdir()
        (run_dir / "checkpoint" / mine / "keep.txt").write_text("mine")
    assert resume(run_dir, "--run.rounds", "30").returncode == 0
    assert all((run_dir / "checkpoint" / mine / "keep.txt").read_text() == "mine"
               for mine in ("backup-of-20", "notes"))
    saved = (run_dir / "config.toml").read_text()
    assert 'resume = ""' in saved and "resume_fallback = false" in saved
    reused = launcher.run(3, ["-m", "mpisim.server_mode", "--config", str(run_dir / "config.toml"),
                              "--run.out_dir", str(tmp_path), "--run.name", "new", "--run.rounds", "2"],
                          timeout=120)
    assert reused.returncode == 0, reused.stderr[-3000:]
    assert (tmp_path / "new" / "summary.json").exists()
    assert [r["round"] for r in metrics.read_jsonl(run_dir / "metrics.jsonl")] == [0, 10, 20, 30]


def test_sigusr1_during_set_up_stops_after_the_first_round_with_a_checkpoint(tmp_path, mnist_dir):
    # The whole of MNIST keeps every rank in its set-up (loading the data) for a second or more.
    args = [*SHORT, "--run.checkpoint_every", "0", "--data.name", "mnist", "--data.root", str(mnist_dir),
            "--run.rounds", "50"]
    proc = start(args, tmp_path, "early")
    run_dir = tmp_path / "early"
    deadline = time.monotonic() + 60
    while not (run_dir / "config.toml").exists():  # rank 0 made the directory: set-up under way
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGUSR1)
    code, _, err = finish(proc)
    assert code == checkpoint.EXIT_CHECKPOINTED, err[-3000:]
    assert checkpoint.latest(run_dir).round == 1


def test_three_sigterms_in_a_row_still_end_in_a_checkpoint_and_exit_75(tmp_path):
    args = [*CASES["server, averaging"], "--run.checkpoint_every", "0", "--run.rounds", "400"]
    proc = start(args, tmp_path, "stopped")
    run_dir = tmp_path / "stopped"
    wait_for_records(proc, run_dir, 2)
    for _ in range(3):
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.15)
    code, _, err = finish(proc)
    assert code == checkpoint.EXIT_CHECKPOINTED, err[-3000:]
    assert checkpoint.latest(run_dir) is not None
