"""Partitions of a training set into one shard per agent (``data.partition`` in the config).

- ``iid``: a seeded permutation cut into near-equal contiguous pieces.
- ``dirichlet``: label distribution skew, each class spread over the agents
  in proportions drawn from a symmetric Dirichlet (Hsu, Qi, Brown 2019).
- ``label_shards``: McMahan et al.'s pathological non-IID split, the
  samples sorted by label and dealt out in a few contiguous shards each.

Every partition depends only on the seed, the labels and its arguments,
so every rank computes the same one without talking to the others. Its
random numbers come from the PARTITION family of :mod:`mpisim.seeding`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import seeding
from .base import DataError

PARTITIONS = ("iid", "dirichlet", "label_shards")

# Dirichlet redraws at most this many times to give every agent min_size samples.
MAX_ATTEMPTS = 100

# Sub-streams of PARTITION. The bare (PARTITION,) stream is iid's permutation
# and the subset choice, as it always was; the others hang below it.
_DIRICHLET, _LABEL_SHARDS = 1, 2


@dataclass(frozen=True)
class Partition:
    """The shards of a partition: ``shards[i]`` are agent i's sample indices (sorted int64).

    ``attempt`` is the draw that was kept (dirichlet redraws until every
    agent has ``min_size`` samples; 0 for the others), so a log can say how
    the partition was obtained.
    """

    shards: list[np.ndarray]
    attempt: int = 0

    def sizes(self) -> np.ndarray:
        """The number of samples of each agent, (num_agents,) int64."""
        return np.array([len(s) for s in self.shards], dtype=np.int64)


def partition(name: str, *, num_samples: int, labels: np.ndarray | None, num_agents: int, seed: int,
              subset: int = 0, alpha: float = 0.5, shards_per_agent: int = 2,
              min_size: int = 1) -> Partition:
    """Split the training set (or a seeded subset of it) into ``num_agents`` disjoint shards.

    ``name`` is one of :data:`PARTITIONS`. With ``subset`` > 0 only a seeded
    random subset of ``subset`` samples is shared out: the first ``subset``
    entries of the permutation ``numpy_generator(seed, PARTITION)`` of
    ``range(num_samples)``, the same subset for every scheme. ``labels``
    (num_samples,) are the class labels, needed by ``dirichlet`` and
    ``label_shards`` (``iid`` ignores them). ``alpha`` is dirichlet's
    concentration, ``shards_per_agent`` label_shards' shard count per agent.
    The shards are disjoint and together cover the (sub)set.

    Raises ValueError for bad arguments, and DataError (a ValueError too)
    when the data cannot be split so: a subset larger than the data, fewer
    samples than agents or shards, or a shard with fewer than ``min_size``
    samples (the message names the agent and what to change).
    """
    if name not in PARTITIONS:
        raise ValueError(f"unknown partition {name!r}; known: {', '.join(PARTITIONS)}")
    if isinstance(num_agents, bool) or not isinstance(num_agents, (int, np.integer)) or num_agents < 1:
        raise ValueError(f"num_agents must be an integer >= 1, got {num_agents!r}")
    if subset < 0 or min_size < 0:
        raise ValueError(f"subset and min_size must be >= 0, got subset={subset}, min_size={min_size}")
    if name != "iid":
        if labels is None:
            raise ValueError(f"the {name} partition needs the labels of the training set")
        labels = np.asarray(labels)
        if labels.shape != (num_samples,):
            raise ValueError(f"labels must have shape ({num_samples},), got {labels.shape}")
    total = subset or num_samples
    if total > num_samples:
        raise DataError(f"a subset of {subset} samples is larger than the {num_samples} available")
    if total < num_agents:
        raise DataError(f"{total} samples cannot give each of {num_agents} agents a shard")
    if name == "iid":
        result = Partition(_iid(num_samples, total, num_agents, seed))
    elif name == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        return _dirichlet(_pool(num_samples, total, seed), labels, num_agents, seed,
                          alpha=alpha, min_size=min_size)
    else:
        if isinstance(shards_per_agent, bool) or not isinstance(shards_per_agent, (int, np.integer)) \
                or shards_per_agent < 1:
            raise ValueError(f"shards_per_agent must be an integer >= 1, got {shards_per_agent!r}")
        result = Partition(_label_shards(_pool(num_samples, total, seed), labels, num_agents, seed,
                                         shards_per_agent=shards_per_agent))
    _check_min_size(result.sizes(), min_size, name)
    return result


def _permutation(num_samples: int, seed: int) -> np.ndarray:
    return seeding.numpy_generator(seed, seeding.PARTITION).permutation(num_samples)


def _pool(num_samples: int, total: int, seed: int) -> np.ndarray:
    """The sorted indices that are shared out: all of them, or the seeded subset."""
    if total == num_samples:
        return np.arange(num_samples, dtype=np.int64)
    return np.sort(_permutation(num_samples, seed)[:total])


def _iid(num_samples: int, total: int, num_agents: int, seed: int) -> list[np.ndarray]:
    # A permutation cut into contiguous pieces whose sizes differ by at most
    # one (the first num_samples % num_agents pieces are the larger ones).
    # Kept exactly as it was: runs are compared bit for bit across versions.
    perm = _permutation(num_samples, seed)[:total]
    return [np.sort(part) for part in np.array_split(perm, num_agents)]


def _group(indices: np.ndarray, owner: np.ndarray, num_agents: int) -> list[np.ndarray]:
    """Shards from an owner per index: shard i holds the indices whose owner is i, sorted."""
    order = np.lexsort((indices, owner))  # by owner, then by index
    sizes = np.bincount(owner, minlength=num_agents)
    return np.split(indices[order], np.cumsum(sizes)[:-1])


def _dirichlet(pool: np.ndarray, labels: np.ndarray, num_agents: int, seed: int, *, alpha: float,
               min_size: int) -> Partition:
    """Label distribution skew (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", Section 3.1).

    For each class c: proportions p_c ~ Dirichlet(alpha * 1_n) over the n
    agents, and class c's samples, in a seeded random order, are cut into
    consecutive runs of floor(cumsum(p_c) * |c|) boundaries, run i going to
    agent i (the cutting of NIID-Bench, Li et al. 2022, without its
    re-balancing step that stops giving to agents above N/n samples). Small
    alpha gives each agent few classes; large alpha approaches iid.
    A draw that leaves an agent with fewer than ``min_size`` samples is
    drawn again from the next stream (PARTITION, 1, attempt), at most
    :data:`MAX_ATTEMPTS` times.
    """
    best_size, best_agent = -1, 0
    for attempt in range(MAX_ATTEMPTS):
        rng = seeding.numpy_generator(seed, seeding.PARTITION, _DIRICHLET, attempt)
        # A seeded shuffle, then a stable sort by label: the classes one after
        # the other, each in random order.
        order = pool[rng.permutation(len(pool))]
        order = order[np.argsort(labels[order], kind="stable")]
        classes, per_class = np.unique(labels[order], return_counts=True)
        proportions = rng.dirichlet(np.full(num_agents, float(alpha)), size=len(classes))
        bounds = np.floor(np.cumsum(proportions, axis=1) * per_class[:, None]).astype(np.int64)
        bounds = np.minimum(bounds, per_class[:, None])
        bounds[:, -1] = per_class  # the last agent takes what rounding left over
        counts = np.diff(bounds, axis=1, prepend=0)  # (classes, agents), all >= 0
        owner = np.repeat(np.tile(np.arange(num_agents), len(classes)), counts.ravel())
        sizes = counts.sum(axis=0)
        if sizes.min() >= min_size:
            return Partition(_group(order, owner, num_agents), attempt)
        if sizes.min() > best_size:
            best_size, best_agent = int(sizes.min()), int(np.argmin(sizes))
    raise DataError(f"dirichlet partition: in the best of {MAX_ATTEMPTS} draws agent {best_agent} "
                    f"still has only {best_size} samples, fewer than min_size {min_size}, with "
                    f"alpha {alpha} and {num_agents} agents; raise data.alpha, use fewer agents "
                    f"or more samples, or lower min_size")


def _label_shards(pool: np.ndarray, labels: np.ndarray, num_agents: int, seed: int, *,
                  shards_per_agent: int) -> list[np.ndarray]:
    """McMahan et al.'s pathological non-IID partition (McMahan, Moore, Ramage, Hampson,
    Agüera y Arcas, "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017, Section 3: 60,000 MNIST digits sorted by label, 200 shards of
    300, 2 shards per client).

    The samples are sorted by label (stable, so ties keep index order), cut
    into ``num_agents * shards_per_agent`` contiguous shards of near-equal
    size (differing by at most one), and agent i gets the shards at positions
    ``i * shards_per_agent`` .. ``(i + 1) * shards_per_agent - 1`` of a seeded
    permutation of the shards (stream (PARTITION, 2)). A shard that straddles
    a class boundary holds two classes, so an agent can get more than
    ``shards_per_agent`` classes, as in the paper.
    """
    count = num_agents * shards_per_agent
    if count > len(pool):
        raise DataError(f"label_shards: {num_agents} agents x {shards_per_agent} shards = {count} "
                        f"shards, more than the {len(pool)} samples")
    order = pool[np.argsort(labels[pool], kind="stable")]
    base, extra = divmod(len(pool), count)
    shard_sizes = np.full(count, base, dtype=np.int64)
    shard_sizes[:extra] += 1
    deal = seeding.numpy_generator(seed, seeding.PARTITION, _LABEL_SHARDS).permutation(count)
    owner_of_shard = np.empty(count, dtype=np.int64)
    owner_of_shard[deal] = np.arange(count) // shards_per_agent
    owner = np.repeat(owner_of_shard, shard_sizes)
    return _group(order, owner, num_agents)


def _check_min_size(sizes: np.ndarray, min_size: int, name: str) -> None:
    if len(sizes) and sizes.min() < min_size:
        agent = int(np.argmin(sizes))
        raise DataError(f"{name} partition: agent {agent} gets {int(sizes[agent])} samples, fewer "
                        f"than min_size {min_size}; use fewer agents or more samples, or lower "
                        f"min_size")
