"""Partial participation (agents.sample, issue 19): m of the n agents take part in each round, drawn
from the seed and the round alone. The same model however the agents are packed, whichever transport
carries the rows and however many server ranks there are; only the drawn agents send; the drawn
Byzantine agents are logged; bad settings refused by field."""

import json

import numpy as np
import pytest

from conftest import run_mpi
from mpisim import config, seeding
from mpisim.protocols import server_config

N, M, ROUNDS = 6, 4, 6
BASE = ["-m", "mpisim.server_mode", "--data.train_size", "600", "--data.test_size", "100", "--model.name", "logreg",
        "--agents.n", str(N), "--agents.sample", str(M), "--data.batch_size", "8", "--aggregator.name", "cwtm",
        "--aggregator.f", "1", "--byzantine.fault", "alie", "--byzantine.count", "2", "--agents.momentum", "0.5",
        "--optim.lr", "0.05", "--run.rounds", str(ROUNDS), "--run.eval_every", "3", "--run.progress", "false",
        "--run.save_model", "true"]


def job(tmp_path, name, nprocs, *args, env=None):
    result = run_mpi(nprocs, [*BASE, *args, "--run.out_dir", str(tmp_path), "--run.name", name], timeout=180,
                     env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return (tmp_path / name / "model.npy").read_bytes()


@pytest.mark.processes
def test_sampled_rounds_give_one_model_across_packings_transports_and_server_ranks(tmp_path):
    packed = job(tmp_path, "packed", 3, "--agents.per_rank", "3")
    assert job(tmp_path, "unpacked", 4, "--agents.per_rank", "2") == packed
    assert job(tmp_path, "collectives", 3, "--agents.per_rank", "3",
               env={"MPISIM_TRANSPORT": "collectives"}) == packed
    assert job(tmp_path, "sharded", 4, "--agents.per_rank", "3", "--server.ranks", "2") == packed
    assert job(tmp_path, "everyone", 3, "--agents.per_rank", "3", "--agents.sample", str(N)) != packed

    summary = json.loads((tmp_path / "packed" / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "packed" / "metrics.jsonl").read_text().splitlines()]
    byzantine = summary["byzantine_ids"]
    drawn = [np.sort(seeding.numpy_generator(0, seeding.SAMPLE, t).choice(N, M, replace=False))
             for t in range(1, ROUNDS + 1)]
    logged = [count for record in records for count in record["byzantine_drawn"]]
    assert logged == [int(np.isin(d, byzantine).sum()) for d in drawn]
    # only the drawn agents send: M rows of d float32 a round (the agent ranks' protocol bytes)
    sent = records[-1]["bytes"]["agents_sent"]
    assert sent == ROUNDS * M * summary["d"] * 4


@pytest.mark.parametrize("args, field", [
    (["--agents.sample", "11"], "agents.sample"),
    (["--agents.sample", "-1"], "agents.sample"),
    (["--agents.sample", "2", "--aggregator.name", "cwtm", "--aggregator.f", "1"], "agents.sample"),
    (["--agents.sample", "5", "--aggregator.averaging", "0.5"], "agents.sample"),
    (["--agents.sample", "5", "--compression.codec", "sign"], "agents.sample"),
])
def test_a_sample_the_rule_cannot_run_on_is_refused_by_field(args, field):
    cfg, _ = config.parse_args(server_config.ServerModeConfig, args, prog="t", description="t")
    with pytest.raises(config.ConfigError) as caught:
        server_config.validate_server_mode(cfg, world_size=None)
    assert caught.value.field == field, caught.value
