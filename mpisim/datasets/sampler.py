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

    ``fraction`` > 0 (in (0, 1]) replaces ``batch_size``: every batch is a
    fresh sample *without* replacement of max(1, round(fraction * shard))
    of the shard's samples (Yin et al., Section 7: "in every iteration, each
    worker machine computes the gradient using 10% of its local data").
    ``all()`` is the whole shard prepared, cached the same way (BRIDGE's
    full local gradient). Callers must not modify the returned tensors in
    place.

    The shard stays in its storage form (uint8 images: a quarter of
    float32), and the sampler keeps only the shard and the normalization
    constants, never the data set, so the caller can free the full set.
    """

    def __init__(self, dataset: Dataset, shard: np.ndarray, *, agent_id: int, seed: int, batch_size: int,
                 fraction: float = 0.0):
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1] (0: use batch_size), got {fraction}")
        shard = np.asarray(shard)
        if len(shard) == 0:
            raise ValueError(f"agent {agent_id} has an empty shard")
        self.mean, self.std = dataset.mean, dataset.std
        # Fancy indexing copies, so the shard does not keep the data set alive.
        self.inputs = torch.from_numpy(dataset.inputs[shard])
        self.targets = torch.from_numpy(dataset.targets[shard])
        self.batch_size = batch_size
        self.fraction = fraction
        self.fraction_size = max(1, round(fraction * len(shard))) if fraction else 0
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
        if self.fraction_size:
            idx = torch.from_numpy(self.rng.choice(len(self.targets), self.fraction_size, replace=False))
        elif self.batch_size == 0:
            return self.all()
        else:
            idx = torch.from_numpy(self.rng.integers(0, len(self.targets), self.batch_size))
        return (prepare_inputs(self.inputs.index_select(0, idx), self.mean, self.std),
                self.targets.index_select(0, idx))

    def state_dict(self) -> dict:
        """The sampler's position in its stream (plain ints and strings: JSON- and pickle-able).

        A sampler built on the same shard and given this state by
        :meth:`load_state_dict` draws the same batches this one draws next.
        """
        return {"shard_size": len(self), "batch_size": self.batch_size, "fraction": self.fraction,
                "rng": copy.deepcopy(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from a :meth:`state_dict`; refuses one taken on a shard of another size."""
        mine = (len(self), self.batch_size, self.fraction)
        theirs = (state["shard_size"], state["batch_size"], state.get("fraction", 0.0))
        if theirs != mine:
            raise ValueError(f"state of a sampler with (samples, batch size, fraction) {theirs}, "
                             f"but this one has {mine}")
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])


