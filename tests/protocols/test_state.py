"""State objects: an agent, node or server restored from its state_dict carries on exactly as the original."""

import copy

import numpy as np
import torch

from mpisim import datasets, seeding
from mpisim.datasets.sampler import Sampler
from mpisim.protocols.state import Agent, Node, Server
from mpisim.rules import aggregators


def small_dataset(n=40):
    rng = np.random.default_rng(0)
    return datasets.Dataset(inputs=rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8),
                            targets=rng.integers(0, 10, n).astype(np.int64), num_classes=10,
                            mean=(0.5,), std=(0.25,))


def make_agent(i=3):
    sampler = Sampler(small_dataset(), np.arange(10, 30), agent_id=i, seed=7, batch_size=4)
    return Agent(i, sampler, fault_rng=seeding.torch_generator(7, seeding.ATTACK, i))


def test_an_agent_restored_from_its_state_draws_what_the_original_draws_next():
    agent = make_agent()
    for _ in range(3):
        agent.sampler.batch()
        torch.randn(5, generator=agent.fault_rng)
    agent.losses.add(0.5)
    agent.memory["error_feedback"] = torch.arange(3.0)
    saved = copy.deepcopy(agent.state_dict())  # what a checkpoint would hold

    restored = make_agent()
    restored.load_state_dict(saved)

    for _ in range(2):
        (x1, y1), (x2, y2) = agent.sampler.batch(), restored.sampler.batch()
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(torch.randn(5, generator=agent.fault_rng), torch.randn(5, generator=restored.fault_rng))
    assert restored.losses.take() == (0.5, 1)
    assert torch.equal(restored.memory["error_feedback"], torch.arange(3.0))


def test_a_node_with_adam_resumes_the_same_steps():
    def make():
        row = torch.zeros(4)
        sampler = Sampler(small_dataset(), np.arange(8), agent_id=1, seed=2, batch_size=0)
        return Node(1, sampler, row, optimizer=lambda p: torch.optim.Adam(p, lr=0.1))

    def adam_step(node, t):
        node.param.grad = torch.tensor([1.0, -2.0, 0.5, 0.0]) * (t + 1)
        node.optimizer.step()

    node = make()
    for t in range(3):
        adam_step(node, t)
    restored = make()
    restored.load_state_dict(copy.deepcopy(node.state_dict()))
    for t in range(3, 5):
        adam_step(node, t)
        adam_step(restored, t)

    assert torch.equal(node.model, restored.model) and node.model.abs().sum() > 0
    assert node.param.data_ptr() == node.model.data_ptr()  # Adam steps the pool row itself


def test_a_server_restored_mid_run_filters_as_the_original():
    rule = aggregators.build("cwtm", f=1, pre=("bucketing",))
    gradients = [torch.randn(6, 5, generator=torch.Generator().manual_seed(k)) for k in range(4)]

    def make():
        return Server(torch.zeros(5), seeding.torch_generator(0, seeding.SERVER), n=6, averaging=0.5)

    server = make()
    for g in gradients[:2]:
        server.model.sub_(server.filter(g, rule), alpha=0.1)
    restored = make()
    restored.load_state_dict(copy.deepcopy(server.state_dict()))
    for g in gradients[2:]:
        server.model.sub_(server.filter(g, rule), alpha=0.1)
        restored.model.sub_(restored.filter(g, rule), alpha=0.1)

    assert torch.equal(server.model, restored.model)
    assert torch.equal(server.averaging, restored.averaging)
