"""Pure tier: the server mode's compressed uplink (mpisim.protocols.uplink), without MPI.

Error feedback's memory, the faulty agents' forged norms, the server's
decoding and Algorithm 1's thresholding on the sent norms; signSGD's vote.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from mpisim import compression, datasets
from mpisim.datasets.sampler import Sampler
from mpisim.protocols import server_config, uplink
from mpisim.protocols.state import Agent
from mpisim.rules import aggregators as A


def make_cfg(**compression_fields):
    cfg = server_config.ServerModeConfig()
    return dataclasses.replace(cfg, compression=dataclasses.replace(cfg.compression, **compression_fields))


def make_agents(ids, faulty=()):
    data = datasets.Dataset(inputs=np.zeros((4, 3), dtype=np.float32), targets=np.zeros(4, dtype=np.float32),
                            num_classes=None, mean=None, std=None)
    return [Agent(i, Sampler(data, np.arange(4), agent_id=i, seed=0, batch_size=1),
                  fault_rng=torch.Generator() if i in faulty else None) for i in ids]


@pytest.mark.parametrize("codec, params", [("scaled_sign", {}), ("topk", {"k": 3}), ("qsgd", {"s": 2})])
def test_error_feedback_memory_is_the_running_sum_of_what_was_not_sent(codec, params):
    d, rounds, lr = 23, 7, 0.1
    agents = make_agents([0, 1, 2])
    up = uplink.AgentUplink(make_cfg(codec=codec, params=params, error_feedback=True), agents, d,
                            step_size=lambda t: lr)
    gen = torch.Generator().manual_seed(0)
    wanted = torch.zeros(3, d, dtype=torch.float64)
    sent = torch.zeros(3, d, dtype=torch.float64)
    for t in range(1, rounds + 1):
        g = torch.randn(3, d, generator=gen)
        wanted += lr * g.double()
        payload = up.encode(g.clone(), t)
        sent += up.codec.decode_rows(payload, d).double()
        # e_{t+1} = sum_s eta g_s - sum_s Q(p_s), and each agent's memory is its row.
        torch.testing.assert_close(up.error.double(), wanted - sent, rtol=0, atol=1e-5)
        for j, agent in enumerate(agents):
            assert torch.equal(agent.memory["error"], up.error[j])


def test_memory_is_restored_into_the_block_that_the_uplink_uses():
    agents = make_agents([0, 1])
    up = uplink.AgentUplink(make_cfg(codec="sign", error_feedback=True), agents, 5, step_size=lambda t: 1.0)
    up.encode(torch.randn(2, 5), 1)
    saved = [a.state_dict() for a in agents]
    up.encode(torch.randn(2, 5), 2)
    for agent, state in zip(agents, saved):
        agent.load_state_dict(state)
    assert torch.equal(up.error, torch.stack([s["memory"]["error"] for s in saved]))


def test_a_stochastic_codec_draws_from_each_agents_own_stream():
    cfg = make_cfg(codec="qsgd", params={"s": 1})
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    together = uplink.AgentUplink(cfg, make_agents([4, 5, 6]), 40, step_size=lambda t: 1.0).encode(x.clone(), 1)
    alone = uplink.AgentUplink(cfg, make_agents([5]), 40, step_size=lambda t: 1.0).encode(x[1:2].clone(), 1)
    assert np.array_equal(together[1], alone[0])


def test_faulty_agents_forge_the_side_norm_and_algorithm_1_keeps_them():
    d = 16
    cfg = make_cfg(codec="sign", side_norm=2, faulty_norm=0.0)
    agents = make_agents([0, 1, 2, 3], faulty=(3,))
    x = torch.ones(4, d)
    x[3] = -1000.0  # a huge message with a forged (zero) norm
    payload = uplink.AgentUplink(cfg, agents, d, step_size=lambda t: 1.0).encode(x, 1)
    server = uplink.ServerUplink(cfg, 4, d)
    server.received[:] = payload
    block = torch.empty(4, d)
    server.decode(block)

    assert server.norms.tolist() == [4.0, 4.0, 4.0, 0.0]  # ||x||_2 = sqrt(16) for the honest ones
    assert torch.equal(block[3], -torch.ones(d))          # the sign survives, not the size
    kept = A.threshold_on_norms(block, server.norms, f=1)  # drops the largest sent norm: an honest one
    assert torch.allclose(kept, torch.full((d,), 1 / 3))


def test_algorithm_2_sorts_on_the_decoded_vectors_so_a_forged_scale_only_shrinks_the_message():
    d = 16
    cfg = make_cfg(codec="qsgd", params={"s": 4}, faulty_norm=1e-3)
    agents = make_agents([0, 1, 2], faulty=(2,))
    x = torch.ones(3, d)
    x[2] = 500.0
    payload = uplink.AgentUplink(cfg, agents, d, step_size=lambda t: 1.0).encode(x, 1)
    decoded = compression.REGISTRY["qsgd"](s=4).decode_rows(payload, d)
    assert torch.allclose(decoded[2], torch.full((d,), 500.0 * 1e-3))


def test_majority_vote_on_a_hand_worked_example():
    signs = torch.tensor([[1., -1., 1., -1.],
                          [1., -1., -1., 1.],
                          [-1., -1., 1., 1.],
                          [1., 1., -1., -1.]])
    # column sums 2, -2, 0, 0: the ties go to +1
    assert A.majority_vote(signs, f=1).tolist() == [1.0, -1.0, 1.0, 1.0]
    assert A.majority_vote(signs[:3], f=1).tolist() == [1.0, -1.0, 1.0, 1.0]
    # a row votes -1 only where it is < 0: 0 and NaN vote +1, as the sign codec sends them
    assert A.majority_vote(torch.tensor([[0.0, -2.0], [-3.0, 0.5], [-1.0, math.nan]]), f=1).tolist() == [-1.0, 1.0]
    assert A.majority_vote(torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0]]), f=1).tolist() == [-1.0, 1.0]


def test_threshold_on_norms_uses_the_given_norms_not_the_rows():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [100.0, 100.0]])
    assert A.threshold_on_norms(x, torch.tensor([3.0, 2.0, 1.0]), f=1).tolist() == [50.0, 51.0]
    assert A.threshold_on_norms(x, torch.tensor([1.0, math.nan, 2.0]), f=1).tolist() == [50.5, 50.0]
    # norm_threshold is the same with the rows' own norms
    assert torch.equal(A.norm_threshold(x, f=1), A.threshold_on_norms(x, x.norm(dim=1), f=1))
