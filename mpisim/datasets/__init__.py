"""Data sets, partitions across agents, and per-agent batch sampling.

Data sets are looked up by name (``data.name`` in the config) in
:data:`mpisim.registry.datasets` (:data:`REGISTRY` here), where the built-ins
below and a plugin's (``mpisim.register.dataset``) are alike: a :class:`Spec`
each, saying which ``data.params`` it accepts.

- ``mnist-small``: the built-in default, 6,000 training and 2,000 test digits
  drawn from MNIST, shipped inside the package in the original IDX format
  (see ``mpisim/datasets/mnist-small/README.md``); needs no download.
- ``mnist``: the full MNIST set, read from the standard IDX files (gzipped or
  not) in the directory ``data.root``.
- ``fashion-mnist``: the same format (Debian's ``dataset-fashion-mnist`` puts
  it in ``/usr/share/datasets/fashion-mnist``, the default root).
- ``cifar10``: CIFAR-10's original python-pickle batches, in ``data.root``
  or its ``cifar-10-batches-py`` folder.
- ``synthetic_regression``: Ghosh et al.'s least-squares problem, generated
  from the run's seed; no files.

``python -m mpisim.datasets.fetch NAME DIR`` downloads the original files and
checks their published checksums. Images stay uint8 in memory until a batch
or a shard is prepared for the model (:mod:`.base`); partitions across agents
are :func:`mpisim.datasets.partition.partition` (``data.partition``, in
:data:`mpisim.registry.partitions`), the per-agent batch sampler
:class:`mpisim.datasets.sampler.Sampler`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .. import registry

# ``partition`` and ``sampler`` stay the modules (``datasets.partition.partition(...)``,
# ``datasets.sampler.Sampler``): binding the function ``partition`` here would hide its module.
from . import cifar, idx, partition, sampler, synthetic
from .base import DataError, Dataset, normalize, prepare_inputs
from .idx import idx_shape, read_idx
from .partition import PARTITIONS, Partition
from .sampler import Sampler

BUILTIN_DIR = Path(__file__).resolve().parent

SPLITS = ("train", "test")

# Per-channel mean and standard deviation of the training images (scaled to
# [0, 1]) used to normalize inputs; unchanged, runs are compared across versions.
_MNIST_STATS = ((0.1307,), (0.3081,))
_FASHION_STATS = ((0.2860,), (0.3530,))

KINDS = ("classification", "regression")


@dataclass(frozen=True)
class Spec:
    """One data set of :data:`REGISTRY`: what it is and how to read it.

    - ``name``: the ``data.name`` that selects it; ``kind``:
      ``"classification"`` or ``"regression"``; ``description``: one line.
    - ``params``: the ``data.params`` keys it accepts, with their defaults.
    - ``needs_root``: whether it is read from files in a directory
      (``data.root``, or ``default_root`` when that is empty); generated
      sets ignore ``data.root``.
    - ``default_root``: where its files are when ``data.root`` is empty, or
      None (then ``data.root`` must be set).
    - ``load(root, split, params, seed) -> Dataset``,
      ``num_samples(root, split, params, seed) -> int`` (cheap where it can
      be) and ``labels(root, split, params, seed) -> ndarray | None``;
      ``root`` is the resolved directory (None when ``needs_root`` is
      False), ``params`` the defaults updated with the user's. Without
      ``num_samples`` or ``labels``, the split is loaded and counted, or
      its targets taken (None for regression).
    - ``check(params) -> (key, message) | None``: the value checks of its
      parameters (None when it has none).
    """

    name: str
    kind: str
    description: str
    load: Callable[[Path | None, str, Mapping[str, Any], int], Dataset]
    num_samples: Callable[[Path | None, str, Mapping[str, Any], int], int] | None = None
    labels: Callable[[Path | None, str, Mapping[str, Any], int], np.ndarray | None] | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    needs_root: bool = True
    default_root: Path | None = None
    check: Callable[[Mapping[str, Any]], tuple[str, str] | None] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise registry.RegistryError(f"data set {self.name!r}: kind must be one of {', '.join(KINDS)}, "
                                         f"got {self.kind!r}")
        # Frozen all the way down: a registry entry is shared by every run.
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        if self.num_samples is None:
            object.__setattr__(self, "num_samples", lambda root, split, params, seed:
                               len(self.load(root, split, params, seed)))
        if self.labels is None:
            object.__setattr__(self, "labels", lambda root, split, params, seed:
                               self.load(root, split, params, seed).targets
                               if self.kind == "classification" else None)


def add(spec: Spec, *, reference: str = "", origin: str | None = None) -> Spec:
    """Register data set ``spec`` (:data:`mpisim.registry.datasets`; ``mpisim.register.dataset``
    calls this too) and return it."""
    registry.datasets.add(registry.Entry(
        kind="dataset", name=spec.name, obj=spec, params=dict(spec.params), check=spec.check,
        description=spec.description, reference=reference,
        properties={"kind": spec.kind, "needs_root": spec.needs_root, "default_root": spec.default_root},
        origin=origin or registry.current_origin(spec.load)))
    return spec


#: config name -> :class:`Spec` (:data:`mpisim.registry.datasets`: built-ins and plugins alike)
REGISTRY = registry.datasets


def _idx_spec(name: str, description: str, stats, default_root: Path | None) -> Spec:
    mean, std = stats
    return Spec(
        name=name, kind="classification", description=description,
        load=lambda root, split, params, seed: idx.load(root, split, mean=mean, std=std),
        num_samples=lambda root, split, params, seed: idx.num_samples(root, split),
        labels=lambda root, split, params, seed: idx.labels(root, split),
        default_root=default_root)


for _builtin, _reference in (
        (_idx_spec("mnist", "MNIST handwritten digits, 60,000 + 10,000 28x28 grey images, IDX files",
                   _MNIST_STATS, None),
         "LeCun, Bottou, Bengio, Haffner, Gradient-Based Learning Applied to Document Recognition, 1998"),
        (_idx_spec("mnist-small", "built-in seeded subset of MNIST, 6,000 + 2,000 digits, no download",
                   _MNIST_STATS, BUILTIN_DIR / "mnist-small"),
         "a subset of MNIST (mpisim/datasets/mnist-small/README.md)"),
        (_idx_spec("fashion-mnist", "Fashion-MNIST (Zalando), 60,000 + 10,000 28x28 grey images, IDX files",
                   _FASHION_STATS, Path("/usr/share/datasets/fashion-mnist")),
         "Xiao, Rasul, Vollgraf, Fashion-MNIST, arXiv:1708.07747, 2017"),
        (Spec(name="cifar10", kind="classification",
              description="CIFAR-10, 50,000 + 10,000 32x32 colour images, original python batches",
              load=lambda root, split, params, seed: cifar.load(root, split),
              num_samples=lambda root, split, params, seed: cifar.num_samples(root, split),
              labels=lambda root, split, params, seed: cifar.labels(root, split)),
         "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009"),
        (Spec(name="synthetic_regression", kind="regression",
              description="least squares b = A w* (+ noise), A and w* standard normal (Ghosh et al. Sec. 7)",
              load=lambda root, split, params, seed: synthetic.load(split, params, seed),
              num_samples=lambda root, split, params, seed: synthetic.num_samples(split, params),
              labels=lambda root, split, params, seed: None,
              params=synthetic.PARAMS, needs_root=False, check=synthetic.check),
         "Ghosh, Maity, Kadhe, Mazumdar, Ramchandran, Communication-Efficient and Byzantine-Robust "
         "Distributed Learning with Error Feedback, Section 7"),
):
    add(_builtin, reference=_reference, origin="mpisim")


def _spec(name: str) -> Spec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(REGISTRY)}") from None


def check_params(name: str, params: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(config field, message) for an unknown data set, unknown parameter or bad value; else None.

    The field is ``data.name`` for an unknown set and ``data.params.KEY``
    for a parameter; an unknown key's message lists the accepted ones with
    their defaults.
    """
    if name not in REGISTRY:
        return "data.name", f"unknown data set {name!r}; known: {', '.join(REGISTRY)}"
    return registry.parameter_problem(REGISTRY.entry(name), params, field="data.params", noun="data set")


def _resolved(spec: Spec, params: Mapping[str, Any] | None) -> dict[str, Any]:
    problem = check_params(spec.name, params)
    if problem is not None:
        raise DataError(f"{problem[0]}: {problem[1]}")
    return {**spec.params, **(params or {})}


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def resolve_root(name: str, root: str | os.PathLike = "") -> Path:
    """The directory holding data set ``name``: ``root`` if given, else its default place."""
    if root:
        return Path(root).expanduser()
    default = REGISTRY[name].default_root if name in REGISTRY else None
    if default is not None:
        return default
    raise DataError(f"data set {name!r} has no default location: set data.root to the "
                    f"directory holding its files")


def _root(spec: Spec, root: str | os.PathLike) -> Path | None:
    return resolve_root(spec.name, root) if spec.needs_root else None


# (name, root, split, params, seed of a generated set) -> the Dataset, while keep_loaded is on.
_KEPT: dict[tuple, Dataset] | None = None


def keep_loaded(on: bool = True) -> None:
    """Keep every split :func:`load` reads, and give it again to the next call with the same
    arguments (``mpisim sweep`` with ``block``: the runs of one job read MNIST once). The runs
    only read their data sets, so sharing one is the same as reading it again."""
    global _KEPT
    _KEPT = {} if on else None


def load(name: str, root: str | os.PathLike, split: str, *, params: Mapping[str, Any] | None = None,
         seed: int = 0) -> Dataset:
    """Split ``train`` or ``test`` of data set ``name`` (see the module docstring).

    ``root`` is the directory of its files ("" for the default place),
    ``params`` its ``data.params`` and ``seed`` the run's seed (generated
    sets only). Raises DataError with a clear message for an unknown set,
    bad parameters and missing or corrupt files.
    """
    spec = _spec(name)
    resolved = _resolved(spec, params)
    key = (name, str(_root(spec, root)), _split(split), repr(sorted(resolved.items())),
           seed if not spec.needs_root else None)
    if _KEPT is not None and key in _KEPT:
        return _KEPT[key]
    data = spec.load(_root(spec, root), _split(split), resolved, seed)
    if _KEPT is not None:
        _KEPT[key] = data
    # A plugin's loader is held to its registration like a built-in's.
    if not isinstance(data, Dataset) or data.kind != spec.kind:
        got = f"a {data.kind} Dataset" if isinstance(data, Dataset) else type(data).__name__
        raise DataError(f"data set {name!r} is registered as {spec.kind} but its load returned {got}")
    return data


def num_samples(name: str, root: str | os.PathLike, split: str, *,
                params: Mapping[str, Any] | None = None, seed: int = 0) -> int:
    """Number of samples of a split, cheaply where possible (IDX: headers only; generated: params)."""
    spec = _spec(name)
    resolved = _resolved(spec, params)
    return spec.num_samples(_root(spec, root), _split(split), resolved, seed)


def labels(name: str, root: str | os.PathLike, split: str, *, params: Mapping[str, Any] | None = None,
           seed: int = 0) -> np.ndarray | None:
    """The split's class labels (N,) int64, or None for a regression set.

    Cheap for IDX sets (only the labels file is read), so that validation
    can compute a partition and refuse one that starves an agent.
    """
    spec = _spec(name)
    resolved = _resolved(spec, params)
    return spec.labels(_root(spec, root), _split(split), resolved, seed)


def idx_files(name: str, root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files of one split, or DataError naming what is missing."""
    return idx.split_files(resolve_root(name, root), _split(split))


__all__ = [
    "BUILTIN_DIR", "DataError", "Dataset", "KINDS", "PARTITIONS", "Partition",
    "REGISTRY", "add", "SPLITS", "Sampler", "Spec", "check_params", "idx_files", "idx_shape",
    "labels", "load", "normalize", "num_samples", "partition", "prepare_inputs",
    "read_idx", "resolve_root", "sampler",
]
