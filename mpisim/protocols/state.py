"""The state of a run, one object per agent, node and server, keyed by id; no MPI.

Every object owns what its role carries from one round to the next (its
data sampler, its fault's generator, its memories) and can be saved and
restored with ``state_dict()`` / ``load_state_dict()``: plain dicts of
tensors, arrays and numbers, so a checkpoint is the dicts of every object
(issue: resumable runs). Generators are created from (seed, stream, id)
alone (:mod:`mpisim.seeding`), so the same object, wherever it is hosted,
draws the same numbers.

Later protocols add their memories (error feedback, momentum) to
``memory``: a dict of tensors saved and restored with the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..datasets.sampler import Sampler

__all__ = ["LossWindow", "Learner", "Agent", "Node", "Server", "generator_states", "load_generator_states"]


class LossWindow:
    """Sum and count of the training losses since the last evaluation."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, loss: float) -> None:
        self.total += float(loss)
        self.count += 1

    def take(self) -> tuple[float, int]:
        """(sum, count) so far; starts a new window."""
        out = (self.total, self.count)
        self.total, self.count = 0.0, 0
        return out

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])


def generator_states(generators: dict[int, torch.Generator]) -> dict[int, torch.Tensor]:
    return {i: g.get_state() for i, g in generators.items()}


def load_generator_states(generators: dict[int, torch.Generator], states: dict) -> None:
    for i, g in generators.items():
        g.set_state(states[i])


def _memory_state(memory: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in memory.items()}


def _load_memory(memory: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        if name in memory:
            memory[name].copy_(tensor)
        else:
            memory[name] = tensor.clone()


class Learner:
    """What an agent and a node both carry: an id, a batch sampler over its shard, its fault's
    generator (faulty ones only), its training losses since the last evaluation, and the
    memories later protocols add."""

    kind = "learner"

    def __init__(self, learner_id: int, sampler: Sampler, *, fault_rng: torch.Generator | None = None):
        self.id = learner_id
        self.sampler = sampler
        self.fault_rng = fault_rng
        self.losses = LossWindow()
        self.memory: dict[str, torch.Tensor] = {}

    @property
    def faulty(self) -> bool:
        return self.fault_rng is not None

    def state_dict(self) -> dict:
        return {"id": self.id, "sampler": self.sampler.state_dict(),
                "fault_rng": None if self.fault_rng is None else self.fault_rng.get_state(),
                "losses": self.losses.state_dict(), "memory": _memory_state(self.memory)}

    def load_state_dict(self, state: dict) -> None:
        if state["id"] != self.id:
            raise ValueError(f"state of {self.kind} {state['id']} loaded into {self.kind} {self.id}")
        self.sampler.load_state_dict(state["sampler"])
        if self.fault_rng is not None:
            self.fault_rng.set_state(state["fault_rng"])
        self.losses.load_state_dict(state["losses"])
        _load_memory(self.memory, state["memory"])


class Agent(Learner):
    """One agent of the server mode.

    Its ``fault_rng`` feeds the faults that run on the agent's own rank
    (message faults that see only its gradient, and data faults); colluding
    faults draw from the coalition's generators instead. ``codec_rng`` feeds
    a stochastic compressor (QSGD's rounding); its error-feedback memory is
    ``memory["error"]``.
    """

    kind = "agent"

    def __init__(self, agent_id: int, sampler: Sampler, *, fault_rng: torch.Generator | None = None):
        super().__init__(agent_id, sampler, fault_rng=fault_rng)
        self.codec_rng: torch.Generator | None = None

    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "codec_rng": None if self.codec_rng is None else self.codec_rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.codec_rng is not None:
            self.codec_rng.set_state(state["codec_rng"])


class Node(Learner):
    """One node of the decentralized mode.

    ``model`` is its row of the rank's message pool (a view: the exchange
    sends it from there); ``optimizer`` its local Adam state when the local
    method is Adam (over a parameter that shares the row's storage);
    ``fault_rng`` the generator of a Byzantine node's messages.
    """

    kind = "node"

    def __init__(self, node_id: int, sampler: Sampler, model: torch.Tensor, *,
                 fault_rng: torch.Generator | None = None,
                 optimizer: Callable[[list], torch.optim.Optimizer] | None = None):
        super().__init__(node_id, sampler, fault_rng=fault_rng)
        self.model = model
        self.param = self.optimizer = None
        if optimizer is not None:
            # nn.Parameter shares the row's storage: the optimizer steps the pool row in place.
            self.param = torch.nn.Parameter(model, requires_grad=False)
            self.optimizer = optimizer([self.param])

    @property
    def byzantine(self) -> bool:
        return self.faulty

    def state_dict(self) -> dict:
        return {**super().state_dict(), "model": self.model.clone(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.model.copy_(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])


class Server:
    """The parameter server's state: the model, the rule's generator, the averaging memory.

    ``averaging`` (n, d), when gradient averaging is on, holds h_i for every
    agent i, row i: the CGE paper's Section 3.5 has the *server* average each
    agent's gradients (eq 25), so a faulty agent cannot opt out of it.
    ``rng`` feeds randomized rules (bucketing).
    """

    def __init__(self, model: torch.Tensor, rng: torch.Generator, *, n: int, averaging: float):
        self.model = model
        self.rng = rng
        self.alpha = averaging
        self.averaging = torch.zeros((n, model.shape[0])) if averaging > 0 else None
        self.memory: dict[str, torch.Tensor] = {}

    def filter(self, gradients: torch.Tensor, rule) -> torch.Tensor:
        """The rule's output on this round's (n, d) gradients, averaged first when averaging is on."""
        if self.averaging is None:
            return rule(gradients, self.rng)
        self.averaging.mul_(self.alpha).add_(gradients, alpha=1.0 - self.alpha)
        return rule(self.averaging, self.rng)

    def state_dict(self) -> dict:
        return {"model": self.model.clone(), "rng": self.rng.get_state(),
                "averaging": None if self.averaging is None else self.averaging.clone(),
                "memory": _memory_state(self.memory)}

    def load_state_dict(self, state: dict) -> None:
        self.model.copy_(state["model"])
        self.rng.set_state(state["rng"])
        if self.averaging is not None:
            self.averaging.copy_(state["averaging"])
        _load_memory(self.memory, state["memory"])
