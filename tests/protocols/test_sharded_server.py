"""MPI tier: the sharded server (``server.ranks S``) gives the model of the one-rank server.

One job per S (1, 2, 3 server ranks + 3 agent ranks: 4 to 6 ranks) runs
every rule in turn (tests/sharded_runs.py), with an omniscient fault (ALIE)
on least squares and a data fault on LeNet; the models must match the S = 1
ones: bit for bit where the rule is coordinate-wise, to float rounding
otherwise.
"""

import json

import numpy as np
import pytest

from conftest import ROOT
from mpisim import metrics
from sharded_runs import SETTINGS

pytestmark = pytest.mark.processes

RUNS = [*SETTINGS, "lenet_cwtm"]
EXACT = {name for name, (_, exact) in SETTINGS.items() if exact} | {"lenet_cwtm"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import run_mpi

    out = tmp_path_factory.mktemp("sharded")
    for servers in (1, 2, 3):
        result = run_mpi(servers + 3, [str(ROOT / "tests" / "sharded_runs.py"), str(out / f"s{servers}"),
                                       str(servers)], timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.parametrize("name", RUNS)
@pytest.mark.parametrize("servers", [2, 3])
def test_sharded_server_gives_the_model_of_one_server_rank(runs, name, servers):
    one = np.load(runs / "s1" / name / "model.npy")
    sharded = np.load(runs / f"s{servers}" / name / "model.npy")

    if name in EXACT:
        assert np.array_equal(sharded, one)
    else:
        np.testing.assert_allclose(sharded, one, rtol=1e-5, atol=1e-6)
    assert np.isfinite(one).all() and np.abs(one).max() > 0


@pytest.mark.parametrize("servers", [2, 3])
def test_sharded_server_reports_its_slices_and_the_bytes_moved(runs, servers):
    run_dir = runs / f"s{servers}" / "krum"
    summary = json.loads((run_dir / "summary.json").read_text())
    d, n, rounds, world = summary["d"], summary["n"], summary["rounds"], summary["world_size"]
    assert summary["server_ranks"] == servers and world == servers + 3
    slices = summary["server_slices"]
    assert slices[0] == 0 and slices[-1] == d and len(slices) == servers + 1
    assert max(np.diff(slices)) - min(np.diff(slices)) <= 1
    assert summary["server_reduce_bytes"] > 0  # krum's Gram matrices and norms
    moved = metrics.read_jsonl(run_dir / "metrics.jsonl")[-1]["bytes"]
    # Every agent's whole row goes up, cut into the slices; every slice goes to every other rank,
    # so each server rank also receives the S - 1 slices it does not own.
    assert moved["agents_sent"] == rounds * n * 4 * d
    assert moved["server_received"] == rounds * (n + servers - 1) * 4 * d
    assert moved["agents_received"] == rounds * 3 * 4 * d
    assert moved["server_sent"] == rounds * 4 * d * (world - 1)
    # The metrics (test loss every 2 rounds) are those of the one-rank server, to rounding.
    one = metrics.read_jsonl(runs / "s1" / "krum" / "metrics.jsonl")
    here = metrics.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in here] == [r["round"] for r in one] == [0, 2, 4]
    np.testing.assert_allclose([r["test_loss"] for r in here], [r["test_loss"] for r in one], rtol=1e-5)
