"""MPISIM_COLLECTIVES: the blocking way of waiting moves the same bytes as the polled one, and
MPISIM_TRANSPORT: the server mode's shared-memory windows give the models of the collectives (MPI tier)."""

import numpy as np
import pytest

pytestmark = pytest.mark.processes

SMALL = ["--run.progress", "false", "--data.test_size", "300", "--run.save_model", "true"]


WAYS = {"polled": {"MPISIM_COLLECTIVES": "polled", "MPISIM_TRANSPORT": "collectives"},
        "blocking": {"MPISIM_COLLECTIVES": "blocking", "MPISIM_TRANSPORT": "collectives"}}


def run_both(mpirun, tmp_path, nprocs, args, model_file, ways=WAYS):
    models = {}
    for mode, env in ways.items():
        result = mpirun(nprocs, [*args, *SMALL, "--run.out_dir", str(tmp_path), "--run.name", mode],
                        timeout=240, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        models[mode] = np.load(tmp_path / mode / model_file)
    return models


def test_server_mode_gives_the_same_model_either_way(mpirun, tmp_path):
    # coordinate_wise is omniscient: the faulty agents' scatter is exercised as well as the gather;
    # arc scales the server's inbox (the shared window itself on that path) in place.
    args = ["-m", "mpisim.server_mode", "--agents.n", "6", "--agents.per_rank", "2", "--run.rounds", "4",
            "--run.eval_every", "4", "--aggregator.name", "cwtm", "--aggregator.f", "2", "--aggregator.pre", "arc",
            "--byzantine.fault", "coordinate_wise", "--byzantine.count", "2"]
    models = run_both(mpirun, tmp_path, 4, args, "model.npy",
                      ways={**WAYS, "shared": {"MPISIM_TRANSPORT": "shared"}})

    assert np.isfinite(models["polled"]).all()
    np.testing.assert_array_equal(models["polled"], models["blocking"])
    np.testing.assert_array_equal(models["polled"], models["shared"])


def test_shared_windows_move_the_bytes_the_collectives_would(mpirun, tmp_path):
    import json

    args = ["-m", "mpisim.server_mode", "--agents.n", "5", "--agents.per_rank", "2", "--run.rounds", "3",
            "--run.eval_every", "3", "--byzantine.fault", "sign_flip"]
    run_both(mpirun, tmp_path, 4, args, "model.npy",
             ways={"collectives": {"MPISIM_TRANSPORT": "collectives"}, "shared": {"MPISIM_TRANSPORT": "shared"}})
    summaries = {way: json.loads((tmp_path / way / "summary.json").read_text()) for way in ("collectives", "shared")}

    assert summaries["shared"]["bytes"] == summaries["collectives"]["bytes"]
    assert summaries["shared"]["bytes"]["agents_sent"] == 3 * 5 * 4 * summaries["shared"]["d"]


def test_decentralized_mode_gives_the_same_models_either_way(mpirun, tmp_path):
    args = ["-m", "mpisim.decentralized", "--nodes.n", "6", "--nodes.per_rank", "2", "--screening.b", "1",
            "--byzantine.count", "1", "--byzantine.two_faced", "true", "--graph.p", "0.9",
            "--graph.redraw", "5", "--run.rounds", "6", "--run.eval_every", "6", "--run.seed", "2"]
    models = run_both(mpirun, tmp_path, 3, args, "models.npy")

    assert np.abs(models["polled"]).sum() > 0
    np.testing.assert_array_equal(models["polled"], models["blocking"])


def test_an_unknown_mode_is_refused_on_every_rank(mpirun, tmp_path):
    result = mpirun(3, ["-m", "mpisim.server_mode", "--agents.n", "2", *SMALL, "--run.out_dir", str(tmp_path)],
                    timeout=120, env={"MPISIM_COLLECTIVES": "fast"})

    assert result.returncode != 0
    assert "MPISIM_COLLECTIVES must be 'polled' or 'blocking', got 'fast'" in result.stderr
