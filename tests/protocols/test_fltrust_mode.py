"""FLTrust in the server mode (issue 19): the server's root set and its own gradient every round, the
same model however the agents are packed (and, to float rounding, on a sharded server), a resumed run
that draws the same root batches, and the root set refused where it cannot serve."""

import numpy as np
import pytest

from conftest import run_mpi
from mpisim import config
from mpisim.protocols import server_config

BASE = ["-m", "mpisim.server_mode", "--data.train_size", "600", "--data.test_size", "100", "--model.name", "logreg",
        "--agents.n", "4", "--data.batch_size", "8", "--aggregator.name", "fltrust", "--server.root_samples", "50",
        "--byzantine.fault", "sign_flip", "--byzantine.params.scale", "5", "--byzantine.count", "1",
        "--optim.lr", "0.05", "--run.rounds", "8", "--run.eval_every", "4", "--run.progress", "false",
        "--run.save_model", "true"]


def job(tmp_path, name, nprocs, *args):
    result = run_mpi(nprocs, [*BASE, *args, "--run.out_dir", str(tmp_path), "--run.name", name], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(tmp_path / name / "model.npy")


@pytest.mark.processes
def test_fltrust_runs_to_one_model_packed_unpacked_and_sharded(tmp_path):
    packed = job(tmp_path, "packed", 3, "--agents.per_rank", "2")
    assert job(tmp_path, "unpacked", 5, "--agents.per_rank", "1").tobytes() == packed.tobytes()
    sharded = job(tmp_path, "sharded", 4, "--agents.per_rank", "2", "--server.ranks", "2")
    np.testing.assert_allclose(sharded, packed, rtol=1e-4, atol=1e-6)  # whole-row sums in another order
    mean = job(tmp_path, "mean", 3, "--agents.per_rank", "2", "--aggregator.name", "mean",
               "--server.root_samples", "0")
    assert not np.allclose(mean, packed)


@pytest.mark.parametrize("args, field", [
    (["--aggregator.name", "fltrust"], "server.root_samples"),
    (["--aggregator.name", "fltrust", "--server.root_samples", "7000"], "server.root_samples"),
    (["--aggregator.name", "cwtm", "--server.root_samples", "10"], "server.root_samples"),
    (["--aggregator.name", "fltrust", "--server.root_samples", "10", "--agents.local_steps", "2"],
     "server.root_samples"),
])
def test_a_root_set_that_cannot_serve_is_refused_by_field(args, field):
    cfg, _ = config.parse_args(server_config.ServerModeConfig, args, prog="t", description="t")
    with pytest.raises(config.ConfigError) as caught:
        server_config.validate_server_mode(cfg, world_size=None)
    assert caught.value.field == field, caught.value
