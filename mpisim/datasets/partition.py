"""Partitions of a training set into one shard per agent (``data.partition`` in the config).

Each is a function in :data:`mpisim.registry.partitions`, its parameters
(``data.partition_params``) keyword-only with their defaults:

- ``iid``: the seeded pool cut into near-equal contiguous pieces.
- ``dirichlet`` (``alpha=0.5``): label distribution skew, each class spread
  over the agents in proportions drawn from a symmetric Dirichlet (Hsu, Qi,
  Brown 2019).
- ``label_shards`` (``shards_per_agent=2``): McMahan et al.'s pathological
  non-IID split, the samples sorted by label and dealt out in a few
  contiguous shards each.

A partition is ``fn(pool, labels, num_agents, seed, **params)`` returning
``num_agents`` arrays of sample indices that are disjoint and together hold
the pool (or a :class:`Partition`, to record a redraw): ``pool`` (m,) int64
are the indices shared out, all of the training set or the seeded subset of
``data.train_size``, in a seeded random order (the first m entries of the
permutation ``numpy_generator(seed, PARTITION)`` of the training set; sort it
for a start that does not depend on the seed); ``labels`` (num_samples,) the
class labels of the whole training set (None for a data set without labels,
given only to a partition registered with ``needs_labels=False``); a partition
that takes keyword ``min_size`` gets the fewest samples a shard may hold and
may redraw (every shard is checked against it afterwards in any case).
:func:`partition` checks the arguments, the parameters and the shards, for
the built-ins and a plugin's alike (``mpisim.register.partition``).

Every partition depends only on the seed, the labels and its arguments, so
every rank computes the same one without talking to the others. Its random
numbers come from the PARTITION family of :mod:`mpisim.seeding`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import registry, seeding
from .base import DataError

# Dirichlet redraws at most this many times to give every agent min_size samples.
MAX_ATTEMPTS = 100

# Sub-streams of PARTITION. The bare (PARTITION,) stream is the pool's order
# (iid's permutation and the subset choice, as they always were); the others
# hang below it.
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


#: config name -> partition function (:data:`mpisim.registry.partitions`: built-ins and plugins alike)
PARTITIONS = registry.partitions


def add(name: str, fn: Callable, *, needs_labels: bool,
        check: Callable[[Mapping[str, Any]], tuple[str, str] | None] | None = None,
        description: str = "", reference: str = "", origin: str | None = None) -> Callable:
    """Register partition ``fn`` under ``name`` (:data:`mpisim.registry.partitions`;
    ``mpisim.register.partition`` calls this too) and return it.

    Its keyword-only parameters (but ``min_size``) are its ``data.partition_params``,
    each with a default. ``check(params) -> (key, message) | None`` gets them all,
    defaults filled in, and names the first one whose value it cannot use.
    """
    if not isinstance(needs_labels, bool):
        raise registry.RegistryError(f"partition {name!r}: needs_labels must be True or False, "
                                     f"got {needs_labels!r}")
    registry.partitions.add(registry.Entry(
        kind="partition", name=name, obj=fn, params=registry.keyword_defaults(fn, skip=("min_size",)),
        check=check, description=description or registry.first_line(fn), reference=reference,
        properties={"needs_labels": needs_labels, "min_size": "min_size" in inspect.signature(fn).parameters},
        origin=origin or registry.current_origin(fn)))
    return fn


def check_params(name: str, params: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(config field, message) for an unknown partition, unknown parameter or bad value; else None.

    The field is ``data.partition`` for an unknown partition and
    ``data.partition_params.KEY`` for a parameter; an unknown key's message
    lists the accepted ones with their defaults.
    """
    if name not in PARTITIONS:
        return "data.partition", PARTITIONS.unknown(name)
    return registry.parameter_problem(PARTITIONS.entry(name), params, field="data.partition_params",
                                      noun="partition")


def partition(name: str, *, num_samples: int, labels: np.ndarray | None, num_agents: int, seed: int,
              subset: int = 0, min_size: int = 1, params: Mapping[str, Any] | None = None) -> Partition:
    """Split the training set (or a seeded subset of it) into ``num_agents`` disjoint shards.

    ``name`` is a registered partition (:data:`PARTITIONS`), ``params`` its
    parameters (``data.partition_params``) over its defaults. With ``subset``
    > 0 only a seeded random subset of ``subset`` samples is shared out: the
    first ``subset`` entries of the permutation ``numpy_generator(seed,
    PARTITION)`` of ``range(num_samples)``, the same subset for every scheme.
    ``labels`` (num_samples,) are the class labels, needed by a partition
    registered with ``needs_labels`` (dirichlet, label_shards). The shards
    are disjoint, cover the (sub)set, and each holds at least ``min_size``
    samples.

    Raises ValueError for bad arguments (an unknown partition or parameter,
    a parameter value its check refuses, missing labels), and DataError (a
    ValueError too) when the data cannot be split so: a subset larger than
    the data, fewer samples than agents or shards, a shard with fewer than
    ``min_size`` samples (the message names the agent and what to change),
    or shards that are not ``num_agents`` disjoint pieces of the (sub)set.
    """
    if name not in PARTITIONS:
        raise ValueError(PARTITIONS.unknown(name))
    entry = PARTITIONS.entry(name)
    if isinstance(num_agents, bool) or not isinstance(num_agents, (int, np.integer)) or num_agents < 1:
        raise ValueError(f"num_agents must be an integer >= 1, got {num_agents!r}")
    if subset < 0 or min_size < 0:
        raise ValueError(f"subset and min_size must be >= 0, got subset={subset}, min_size={min_size}")
    problem = check_params(name, params)
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    if labels is None:
        if entry.properties["needs_labels"]:
            raise ValueError(f"the {name} partition needs the labels of the training set")
    else:
        labels = np.asarray(labels)
        if labels.shape != (num_samples,):
            raise ValueError(f"labels must have shape ({num_samples},), got {labels.shape}")
    total = subset or num_samples
    if total > num_samples:
        raise DataError(f"a subset of {subset} samples is larger than the {num_samples} available")
    if total < num_agents:
        raise DataError(f"{total} samples cannot give each of {num_agents} agents a shard")
    pool = _permutation(num_samples, seed)[:total]
    kwargs = {**entry.params, **(params or {})}
    if entry.properties["min_size"]:
        kwargs["min_size"] = min_size
    result = entry.obj(pool, labels, num_agents, seed, **kwargs)
    shards, attempt = (result.shards, result.attempt) if isinstance(result, Partition) else (result, 0)
    out = Partition(_checked_shards(name, shards, pool, num_agents), attempt)
    _check_min_size(out.sizes(), min_size, name)
    return out


def _permutation(num_samples: int, seed: int) -> np.ndarray:
    return seeding.numpy_generator(seed, seeding.PARTITION).permutation(num_samples)


def _checked_shards(name: str, shards, pool: np.ndarray, num_agents: int) -> list[np.ndarray]:
    """The shards as sorted int64 arrays, or DataError when they are not ``num_agents`` disjoint
    pieces that together hold the pool (a plugin's partition is held to this like a built-in)."""
    shards = [np.asarray(s) for s in shards]
    if len(shards) != num_agents:
        raise DataError(f"partition {name!r} returned {len(shards)} shards for {num_agents} agents")
    if any(s.ndim != 1 or (s.size and s.dtype.kind not in "iu") for s in shards):
        raise DataError(f"partition {name!r} returned a shard that is not a 1-d array of sample indices")
    shards = [np.sort(s.astype(np.int64, copy=False)) for s in shards]
    if not np.array_equal(np.sort(np.concatenate(shards)), np.sort(pool)):
        raise DataError(f"partition {name!r} returned shards that are not disjoint or do not hold exactly "
                        f"the {len(pool)} samples shared out")
    return shards


def _check_min_size(sizes: np.ndarray, min_size: int, name: str) -> None:
    if len(sizes) and sizes.min() < min_size:
        agent = int(np.argmin(sizes))
        raise DataError(f"{name} partition: agent {agent} gets {int(sizes[agent])} samples, fewer "
                        f"than min_size {min_size}; use fewer agents or more samples, or lower "
                        f"min_size")


def _group(indices: np.ndarray, owner: np.ndarray, num_agents: int) -> list[np.ndarray]:
    """Shards from an owner per index: shard i holds the indices whose owner is i, sorted."""
    order = np.lexsort((indices, owner))  # by owner, then by index
    sizes = np.bincount(owner, minlength=num_agents)
    return np.split(indices[order], np.cumsum(sizes)[:-1])


# ---------------------------------------------------------------- the built-ins


def iid(pool: np.ndarray, labels: np.ndarray | None, num_agents: int, seed: int) -> list[np.ndarray]:
    """IID: the seeded pool cut into near-equal contiguous pieces.

    The sizes differ by at most one, the first ``len(pool) % num_agents``
    pieces being the larger. Kept exactly as it was: runs are compared bit
    for bit across versions.
    """
    return [np.sort(part) for part in np.array_split(pool, num_agents)]


def dirichlet(pool: np.ndarray, labels: np.ndarray, num_agents: int, seed: int, *, alpha: float = 0.5,
              min_size: int = 1) -> Partition:
    """Label skew: each class spread over the agents in proportions ~ Dirichlet(alpha).

    Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", Section 3.1. For each
    class c: proportions p_c ~ Dirichlet(alpha * 1_n) over the n agents, and
    class c's samples, in a seeded random order, are cut into consecutive
    runs of floor(cumsum(p_c) * |c|) boundaries, run i going to agent i (the
    cutting of NIID-Bench, Li et al. 2022, without its re-balancing step that
    stops giving to agents above N/n samples). Small alpha gives each agent
    few classes; large alpha approaches iid. A draw that leaves an agent with
    fewer than ``min_size`` samples is drawn again from the next stream
    (PARTITION, 1, attempt), at most :data:`MAX_ATTEMPTS` times.
    """
    pool = np.sort(pool)
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
                    f"alpha {alpha} and {num_agents} agents; raise data.partition_params.alpha, use "
                    f"fewer agents or more samples, or lower min_size")


def label_shards(pool: np.ndarray, labels: np.ndarray, num_agents: int, seed: int, *,
                 shards_per_agent: int = 2) -> list[np.ndarray]:
    """Pathological non-IID: sort by label, cut into shards, deal ``shards_per_agent`` to each agent.

    McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data", AISTATS 2017,
    Section 3 (60,000 MNIST digits sorted by label, 200 shards of 300, 2
    shards per client). The samples are sorted by label (stable, so ties keep
    index order), cut into ``num_agents * shards_per_agent`` contiguous shards
    of near-equal size (differing by at most one), and agent i gets the
    shards at positions ``i * shards_per_agent`` .. ``(i + 1) *
    shards_per_agent - 1`` of a seeded permutation of the shards (stream
    (PARTITION, 2)). A shard that straddles a class boundary holds two
    classes, so an agent can get more than ``shards_per_agent`` classes, as
    in the paper.
    """
    pool = np.sort(pool)
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


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def _check_dirichlet(params: Mapping[str, Any]) -> tuple[str, str] | None:
    alpha = params["alpha"]
    if not (_is_number(alpha) and math.isfinite(alpha) and alpha > 0):
        return "alpha", f"must be a positive number, got {alpha!r}"
    return None


def _check_label_shards(params: Mapping[str, Any]) -> tuple[str, str] | None:
    count = params["shards_per_agent"]
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        return "shards_per_agent", f"must be an integer >= 1, got {count!r}"
    return None


add("iid", iid, needs_labels=False, origin="mpisim",
    reference="the i.i.d. split of every paper here (CGE paper Section 3.2; BRIDGE Section 5)")
add("dirichlet", dirichlet, needs_labels=True, check=_check_dirichlet, origin="mpisim",
    reference="Hsu, Qi, Brown 2019, Measuring the Effects of Non-Identical Data Distribution for "
              "Federated Visual Classification, Section 3.1")
add("label_shards", label_shards, needs_labels=True, check=_check_label_shards, origin="mpisim",
    reference="McMahan et al., Communication-Efficient Learning of Deep Networks from Decentralized "
              "Data, AISTATS 2017, Section 3")
