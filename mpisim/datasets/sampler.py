"""One agent's shard and its batch sampler."""

from __future__ import annotations

import copy

import numpy as np
import torch

from .. import seeding
from .base import Dataset, prepare_inputs


class Sampler:
    """An agent's shard, kept raw, and the batches it draws from it.

    ``batch()`` draws ``batch_size`` indices i.i.d. uniformly from the shard,
    with replacement, and returns the prepared (inputs, targets): the CGE
    paper's eq (8), k points sampled i.i.d. from the agent's data
    distribution, here the shard's empirical one. The indices come from the
    agent's own stream ``numpy_generator(seed, SAMPLING, agent_id)``, so they
    depend only on (seed, agent id), not on the rank that holds the agent.

    ``batch_size == 0`` means full batches: ``batch()`` returns the whole
    shard, prepared once at the first call and returned as the same tensors
    every round (no copy, no resampling; the stream is never used).
    ``all()`` is the whole shard prepared, cached the same way (BRIDGE's
    full local gradient). Callers must not modify the returned tensors in
    place.

    The shard stays in its storage form (uint8 images: a quarter of
    float32), and the sampler keeps only the shard and the normalization
    constants, never the data set, so the caller can free the full set.
    """

    def __init__(self, dataset: Dataset, shard: np.ndarray, *, agent_id: int, seed: int, batch_size: int):
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        shard = np.asarray(shard)
        if len(shard) == 0:
            raise ValueError(f"agent {agent_id} has an empty shard")
        self.mean, self.std = dataset.mean, dataset.std
        # Fancy indexing copies, so the shard does not keep the data set alive.
        self.inputs = torch.from_numpy(dataset.inputs[shard])
        self.targets = torch.from_numpy(dataset.targets[shard])
        self.batch_size = batch_size
        self.rng = seeding.numpy_generator(seed, seeding.SAMPLING, agent_id)
        self._whole: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole shard, prepared (computed at the first call, then the same tensors)."""
        if self._whole is None:
            self._whole = prepare_inputs(self.inputs, self.mean, self.std), self.targets
        return self._whole

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch (inputs, targets); the whole shard when ``batch_size`` is 0."""
        if self.batch_size == 0:
            return self.all()
        idx = torch.from_numpy(self.rng.integers(0, len(self.targets), self.batch_size))
        return (prepare_inputs(self.inputs.index_select(0, idx), self.mean, self.std),
                self.targets.index_select(0, idx))

    def state_dict(self) -> dict:
        """The sampler's position in its stream (plain ints and strings: JSON- and pickle-able).

        A sampler built on the same shard and given this state by
        :meth:`load_state_dict` draws the same batches this one draws next.
        """
        return {"shard_size": len(self), "batch_size": self.batch_size,
                "rng": copy.deepcopy(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from a :meth:`state_dict`; refuses one taken on a shard of another size."""
        if state["shard_size"] != len(self) or state["batch_size"] != self.batch_size:
            raise ValueError(f"state of a sampler with {state['shard_size']} samples and batch size "
                             f"{state['batch_size']}, but this one has {len(self)} and {self.batch_size}")
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])


