"""MPI tier: python -m mpisim.server_mode for real, at 3+ ranks, on the built-in data set.

Every job is small (a few rounds of 4-6 agents) and runs under a timeout;
starting torch on many ranks at once dominates their cost, so they are few.
"""

import json

import numpy as np
import pytest

from mpisim import config, metrics
from mpisim.protocols import server_config

pytestmark = pytest.mark.processes

ENTRY = ["-m", "mpisim.server_mode"]
SMALL = ["--run.progress", "false", "--data.test_size", "300"]


def run_job(mpirun, tmp_path, nprocs, *args, name="run", timeout=240):
    result = mpirun(nprocs, [*ENTRY, *SMALL, "--run.out_dir", str(tmp_path), "--run.name", name, *args],
                    timeout=timeout)
    return result, tmp_path / name


def test_entry_point_trains_and_writes_its_run_directory(mpirun, tmp_path):
    result, run_dir = run_job(mpirun, tmp_path, 4, "--agents.n", "6", "--agents.per_rank", "2",
                              "--run.rounds", "40", "--run.eval_every", "20")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "final test accuracy" in result.stdout and str(run_dir) in result.stdout
    records = metrics.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 20, 40]
    assert records[-1]["test_loss"] < records[0]["test_loss"]
    assert records[-1]["test_accuracy"] > 0.5
    moved = records[-1]["bytes"]
    assert moved["server_sent"] == 40 * 431_080 * 4 * 3  # one model to each of the 3 agent ranks a round
    assert moved["agents_sent"] == moved["server_received"] == 40 * 431_080 * 4 * 6  # a gradient per agent
    assert moved["adversary_sent"] == 0  # gradient_reverse needs no collusion
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["byzantine_ids"] and summary["fault"] == "gradient_reverse"
    assert len(summary["ranks"]) == 4 and all(r["peak_rss"] > 0 for r in summary["ranks"])
    saved, _ = config.parse_args(server_config.ServerModeConfig, ["--config", str(run_dir / "config.toml")],
                                 prog="t", description="t")
    assert saved.agents.n == 6 and saved.run.rounds == 40


@pytest.mark.parametrize("fault", ["coordinate_wise", "random"])
def test_packing_gives_the_same_model_at_every_round(mpirun, tmp_path, fault):
    # coordinate_wise exercises the omniscient collusion (gather on the
    # leader, scatter back); random the per-agent attack streams.
    common = ["--agents.n", "5", "--run.rounds", "6", "--run.eval_every", "1", "--run.save_model", "true",
              "--aggregator.name", "cwtm", "--byzantine.fault", fault, "--byzantine.count", "2",
              "--aggregator.f", "2", "--aggregator.averaging", "0.3", "--run.seed", "3"]
    spread, spread_dir = run_job(mpirun, tmp_path, 6, *common, "--agents.per_rank", "1", name="spread")
    packed, packed_dir = run_job(mpirun, tmp_path, 3, *common, "--agents.per_rank", "3", name="packed")

    assert spread.returncode == 0, spread.stderr[-3000:]
    assert packed.returncode == 0, packed.stderr[-3000:]
    a = metrics.read_jsonl(spread_dir / "metrics.jsonl")
    b = metrics.read_jsonl(packed_dir / "metrics.jsonl")
    assert [r["round"] for r in a] == list(range(7))
    np.testing.assert_allclose([r["test_loss"] for r in a], [r["test_loss"] for r in b], rtol=1e-4)
    np.testing.assert_allclose(np.load(spread_dir / "model.npy"), np.load(packed_dir / "model.npy"),
                               rtol=1e-4, atol=1e-6)
    if fault == "coordinate_wise":  # the faulty agents' extra collective is counted apart
        assert a[-1]["bytes"]["adversary_sent"] > 0 and b[-1]["bytes"]["adversary_sent"] > 0
    else:
        assert a[-1]["bytes"]["adversary_sent"] == 0


def test_same_seed_gives_identical_results(mpirun, tmp_path):
    args = ["--agents.n", "4", "--agents.per_rank", "2", "--run.rounds", "5", "--run.eval_every", "1",
            "--byzantine.fault", "label_flip", "--aggregator.name", "multikrum", "--aggregator.f", "0",
            "--run.save_model", "true"]
    first, first_dir = run_job(mpirun, tmp_path, 3, *args, name="first")
    second, second_dir = run_job(mpirun, tmp_path, 3, *args, name="second")

    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(metrics.read_jsonl(first_dir / "metrics.jsonl")) == \
        strip(metrics.read_jsonl(second_dir / "metrics.jsonl"))
    assert np.array_equal(np.load(first_dir / "model.npy"), np.load(second_dir / "model.npy"))


@pytest.mark.parametrize("args, words", [
    (["--aggregator.f", "3"], "aggregator.f"),                       # cge needs n > 2f with n = 4
    (["--agents.per_rank", "1"], "need 5 MPI ranks"),               # 4 agents at 1 per rank
    (["--aggregator.name", "krumm"], "unknown"),
    (["--optim.lr", "-1"], "optim.lr"),
    (["--data.name", "mnist", "--data.root", "/no/such/dir"], "data.root"),
])
def test_bad_config_exits_nonzero_on_every_rank_with_one_message(mpirun, tmp_path, args, words):
    result, run_dir = run_job(mpirun, tmp_path, 3, "--agents.n", "4", "--agents.per_rank", "2", *args,
                              timeout=120)

    assert result.returncode != 0
    assert result.stderr.count("mpisim: config error:") == 1, result.stderr
    assert words in result.stderr
    assert not run_dir.exists()  # nothing started


def test_help_lists_every_field_once(mpirun):
    result = mpirun(3, [*ENTRY, "--help"], timeout=120)

    assert result.returncode == 0
    assert result.stdout.count("usage: python -m mpisim.server_mode") == 1
    for name in ("--aggregator.name", "--byzantine.fault", "--agents.per_rank", "--aggregator.averaging"):
        assert name in result.stdout


def test_error_during_the_run_aborts_the_job(mpirun, tmp_path):
    # A training file whose header is fine but whose data is cut short passes
    # validation (headers only) and fails when the agent ranks read it.
    source = tmp_path / "data"
    source.mkdir()
    from mpisim import datasets as data

    builtin = data.BUILTIN_DIR / "mnist-small"
    for path in builtin.glob("*.gz"):
        (source / path.name).write_bytes(path.read_bytes())
    import gzip

    images = gzip.decompress((builtin / "train-images-idx3-ubyte.gz").read_bytes())
    (source / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images[: len(images) // 2]))

    result, _ = run_job(mpirun, tmp_path, 3, "--agents.n", "4", "--agents.per_rank", "2",
                        "--data.name", "mnist", "--data.root", str(source), timeout=120)

    assert result.returncode != 0
    assert "uncaught DataError, aborting the job" in result.stderr


@pytest.mark.parametrize("fault, rule", [("nan", "cwtm"), ("huge", "cge")])
def test_non_finite_messages_cannot_break_a_robust_server(mpirun, tmp_path, fault, rule):
    result, run_dir = run_job(mpirun, tmp_path, 3, "--agents.n", "4", "--agents.per_rank", "2",
                              "--byzantine.fault", fault, "--aggregator.name", rule,
                              "--run.rounds", "5", "--run.eval_every", "5", "--run.save_model", "true")

    assert result.returncode == 0, result.stderr[-3000:]
    assert np.isfinite(np.load(run_dir / "model.npy")).all()
    assert metrics.read_jsonl(run_dir / "metrics.jsonl")[-1]["test_loss"] is not None


def test_a_diverged_run_says_so_and_how_to_avoid_it(mpirun, tmp_path):
    # CGE sums the n - f kept gradients: at step 1 on LeNet that blows up.
    result, run_dir = run_job(mpirun, tmp_path, 3, "--agents.n", "4", "--agents.per_rank", "2",
                              "--aggregator.name", "cge", "--optim.lr", "1000",
                              "--run.rounds", "4", "--run.eval_every", "4")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "n/a (model not finite)" in result.stdout or "test loss nan" in result.stdout
    assert "the model diverged" in result.stdout and "--aggregator.params.reduce mean" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["diverged"] is True and summary["final"]["test_loss"] is None
