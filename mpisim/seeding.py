"""Random streams derived from the run's seed.

Every random choice in a run comes from a stream named by a fixed key, for
instance ``(SAMPLING, agent_id)``. A stream depends only on the seed and its
key, never on which rank computes it, so a run gives the same numbers whether
agents are packed several to a rank or spread one per rank.
"""

from __future__ import annotations

import numpy as np
import torch

# Stream families: the first element of every key.
PARTITION = 0      # split of the training set into shards
SAMPLING = 1       # an agent's batch indices
ATTACK = 2         # a faulty agent's random messages / labels
BYZANTINE = 3      # which agents are faulty
MODEL_INIT = 4     # the initial model
SERVER = 5         # server-side randomness (e.g. bucketing)
GRAPH = 6          # decentralized mode: the communication graph
DATA = 7           # generated data sets (synthetic regression)
COMPRESS = 8       # an agent's stochastic compressor (QSGD's rounding)
ATTACK_PIPELINE = 9  # a rule-aware attack's copy of the server's pipeline (bucketing's shuffle), per round
SAMPLE = 10         # which agents take part in a round (agents.sample), per round
ROOT = 11           # the server's root set (server.root_samples, FLTrust)


def numpy_generator(seed: int, *key: int) -> np.random.Generator:
    """A numpy generator for the stream ``key`` of run ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


def torch_generator(seed: int, *key: int) -> torch.Generator:
    """A CPU torch generator for the stream ``key`` of run ``seed``."""
    state = np.random.SeedSequence(seed, spawn_key=tuple(key)).generate_state(2, np.uint32)
    gen = torch.Generator()
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def byzantine_ids(seed: int, n: int, count: int, listed=()) -> tuple[int, ...]:
    """The faulty agents or nodes: ``listed`` if given, else ``count`` ids drawn from the seed."""
    if listed:
        return tuple(sorted(int(i) for i in listed))
    rng = numpy_generator(seed, BYZANTINE)
    return tuple(sorted(int(i) for i in rng.choice(n, count, replace=False)))
