"""Register your own components, exactly as the built-ins are registered.

    import torch
    from mpisim import register

    @register.rule("trimmed_norm", coordinatewise=False, reference="my paper, eq 3")
    def trimmed_norm(x: torch.Tensor, *, f: int, keep: float = 0.5) -> torch.Tensor:
        '''Average the rows whose norm is below the keep-quantile.'''
        ...

Each decorator adds an entry to the kind's registry (:mod:`mpisim.registry`)
and returns the callable the protocols will use. A name is taken once: a
name that a built-in or another plugin has is an error.

- :func:`rule`: ``fn(x, *, f, **params) -> Tensor (d,)``, x the (n, d) float32
  block of the agents' messages, every parameter keyword-only with a default.
  ``coordinatewise=True`` promises that output column j depends on input
  column j alone (the rule then runs on a sharded server rank's slice); a
  rule that is not coordinate-wise runs on a sharded server only if it takes
  ``sharding`` (:class:`mpisim.rules.aggregators.Sharding`) and gets its
  whole-row sums through it, and is refused there otherwise (exit 2 naming
  ``server.ranks``). ``check(n, f, **params)`` returns a message when the
  setting is impossible, or None.
- :func:`pre_aggregator`: ``fn(x, *, f, rng, **params) -> (x2, f2)``, with
  ``out(n, f, **params) -> (n2, f2)``, the rows after the step and how many
  of them may be bad.
- :func:`attack`: a message attack ``fn(own, *, honest, f, rngs, **params) ->
  (a, d)`` (``own``: the a faulty agents' true gradients; ``honest``: the
  honest ones', given when ``omniscient``; ``rngs``: one generator per faulty
  agent), or a data attack ``fn(labels, *, num_classes, rng, **params)``
  returning the labels a faulty agent trains on. ``colludes``: the faulty
  agents' messages are computed together, by one of them (implies
  ``omniscient``). ``check(n, num_byzantine, **params)`` as for rules. An
  attack that also takes the keyword ``ctx`` receives the round's
  :class:`mpisim.rules.attacks.Context`: ``ctx.aggregate(x)`` runs the
  server's pipeline (pre-aggregation, rule, the run's f and parameters) on an
  (n, d) block, ``ctx.model`` is the current model, ``ctx.round`` and
  ``ctx.step_size`` the round and its eta_t: what an attack that adapts to
  the defence needs.
- :func:`screening`: a decentralized node's screen ``fn(own, received, *, b)
  -> (d,)`` (``own``: the node's model, ``received``: the (m, d) models of
  its m neighbours, at most b of them Byzantine); ``check(m, b)`` returns a
  message when m neighbours are too few for b.
- :func:`codec`: a subclass of :class:`mpisim.compression.Codec` with
  keyword-only constructor parameters (``compression.params``), a class
  attribute ``embeds_norm`` and the methods ``nbytes(d)``,
  ``_encode_into(X, out, gens)`` and ``_decode_into(P, d, out)`` on numpy
  rows (see the built-ins); ``check(d, **params)`` as for rules.
- :func:`model`: a builder ``fn(input_shape, num_classes, params) -> (module,
  loss)``: a ``torch.nn.Module`` taking a batch of ``input_shape`` inputs,
  and ``loss(outputs, targets, reduction=...)`` (e.g.
  ``torch.nn.functional.cross_entropy``); ``params`` holds ``model.params``
  over the defaults given to the decorator. ``kind`` is "classification"
  (one score per class) or "regression" (``num_classes`` is then None).
  Every rank builds it from the run's seed, so all start from one model.
- :func:`dataset`: a loader ``load(root, split, params, seed) -> Dataset``
  (:class:`mpisim.datasets.Dataset`) of split "train" or "test"; ``root``
  is the directory of its files (``data.root``, else ``default_root``; None
  when ``needs_root=False``), ``params`` holds ``data.params`` over the
  defaults given to the decorator, ``seed`` is the run's seed. ``kind`` is
  "classification" (int64 labels in [0, num_classes)) or "regression".
  ``num_samples`` and ``labels``, with the loader's arguments, are cheaper
  ways to count a split and read its labels (validation computes the whole
  partition from them); without them the split is loaded. ``check(params)
  -> (key, message) | None`` names the first ``data.params`` value it cannot
  use.
- :func:`partition`: ``fn(pool, labels, num_agents, seed, **params) ->
  list[ndarray]``, the sample indices of each of the num_agents shards,
  disjoint and together the pool (``pool``: the (m,) indices to share out, in
  a seeded random order; ``labels``: the whole training set's class labels,
  None for a set without labels, which refuses ``needs_labels``), every parameter
  (``data.partition_params``) keyword-only with a default; one taking
  ``min_size`` gets the fewest samples a shard may hold (see
  :mod:`mpisim.datasets.partition`). ``check(params) -> (key, message) |
  None`` as for data sets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import compression, datasets
from .datasets import partition as partitions
from .learning import models
from .rules import aggregators, attacks
from .rules import screening as screenings

__all__ = ["rule", "pre_aggregator", "attack", "screening", "codec", "model", "dataset", "partition"]


def _no_check(n: int, f: int, **params) -> None:
    return None


def rule(name: str, *, coordinatewise: bool, check: Callable[..., str | None] | None = None,
         reference: str = "", description: str = ""):
    """Register an aggregation rule under the name a config gives (``aggregator.name``)."""
    return aggregators.register(name, check=check or _no_check, coordinatewise=coordinatewise,
                                reference=reference, description=description)


def pre_aggregator(name: str, *, out: Callable[..., tuple[int, int]], coordinatewise: bool = False,
                   check: Callable[..., str | None] | None = None, reference: str = "", description: str = ""):
    """Register a pre-aggregation step under the name a config gives (``aggregator.pre``)."""
    return aggregators.register_pre(name, check=check or _no_check, out=out, coordinatewise=coordinatewise,
                                    reference=reference, description=description)


def attack(name: str, *, omniscient: bool, kind: str = "message", colludes: bool = False,
           check: Callable[..., str | None] | None = None, reference: str = ""):
    """Register a fault under the name a config gives (``byzantine.fault``)."""
    def deco(fn: Callable) -> Callable:
        attacks.add(name, kind, omniscient, colludes, fn, reference, check)
        return fn

    return deco


def model(name: str, *, kind: str = "classification", params: dict | None = None,
          checks: dict[str, Callable] | None = None, description: str = "", reference: str = ""):
    """Register a model under the name a config gives (``model.name``)."""
    def deco(builder: Callable) -> Callable:
        from . import registry

        models.add(models.ModelSpec(name=name, kind=kind, params=dict(params or {}), builder=builder,
                                    checks=dict(checks or {}),
                                    description=description or registry.first_line(builder)),
                   reference=reference)
        return builder

    return deco


def screening(name: str, *, check: Callable[[int, int], str | None] | None = None, description: str = "",
              reference: str = "", weighted: bool = False):
    """Register a screen under the name a config gives (``screening.name``, decentralized mode).

    ``weighted``: the screen also takes ``weights``, the node's row of the graph's Metropolis-Hastings
    mixing matrix (own weight first, then the neighbours' in the order of the received rows)."""
    def deco(fn: Callable) -> Callable:
        from . import registry

        return screenings.register(name, title=description or registry.first_line(fn) or name, check=check,
                                   reference=reference, weighted=weighted)(fn)

    return deco


def codec(name: str, *, check: Callable[..., str | None] | None = None, reference: str = ""):
    """Register a codec class under the name a config gives (``compression.codec``)."""
    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, compression.Codec)):
            raise TypeError(f"codec {name!r}: register a subclass of mpisim.compression.Codec, got {cls!r}")
        cls.name = name
        return compression.add(name, cls, check=check, reference=reference)

    return deco


def dataset(name: str, *, kind: str, params: dict | None = None,
            check: Callable[[Mapping[str, Any]], tuple[str, str] | None] | None = None, description: str = "",
            reference: str = "", needs_root: bool = True, default_root: str | os.PathLike | None = None,
            num_samples: Callable[..., int] | None = None, labels: Callable[..., np.ndarray | None] | None = None):
    """Register a data set's loader under the name a config gives (``data.name``)."""
    def deco(load: Callable) -> Callable:
        from . import registry

        datasets.add(datasets.Spec(
            name=name, kind=kind, description=description or registry.first_line(load), load=load,
            num_samples=num_samples, labels=labels, params=dict(params or {}), needs_root=needs_root,
            default_root=Path(default_root).expanduser() if default_root else None, check=check),
            reference=reference)
        return load

    return deco


def partition(name: str, *, needs_labels: bool,
              check: Callable[[Mapping[str, Any]], tuple[str, str] | None] | None = None, description: str = "",
              reference: str = ""):
    """Register a partition of the training set under the name a config gives (``data.partition``)."""
    def deco(fn: Callable) -> Callable:
        return partitions.add(name, fn, needs_labels=needs_labels, check=check, description=description,
                              reference=reference)

    return deco
