"""One registry for every kind of component a run is built from; read-only views for users.

Every kind (rules, pre-aggregators, attacks, screenings, codecs, models,
data sets, partitions) is a :class:`Registry` of :class:`Entry` objects,
filled by the built-in modules and by users' plugins in the same way
(:mod:`mpisim.register`). A name is taken once: registering it again, from
a plugin or by mistake, is an error naming both origins, never a silent
replacement of a built-in.

``mpisim.registry.rules["cwtm"]`` is the very callable the protocols call;
``mpisim.registry.rules.entry("cwtm")`` is its :class:`Entry`: parameters
and defaults, check, one-line description, reference, and declared
properties (a rule's ``coordinatewise``, an attack's ``omniscient``...).
This module imports nothing of mpisim and no torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["Entry", "Registry", "RegistryError", "KINDS", "rules", "pre_aggregators", "attacks", "screenings",
           "codecs", "models", "datasets", "partitions", "origin", "keyword_defaults"]


class RegistryError(ValueError):
    """A name registered twice, or an entry that breaks its kind's contract."""


@dataclass(frozen=True)
class Entry:
    """One registered component.

    ``obj`` is what the protocols use (a rule's callable, a codec's class...);
    ``params`` its keyword parameters with their defaults; ``check`` the
    function that explains why a setting is impossible (or None);
    ``properties`` what its kind declares about it; ``origin`` "mpisim" for
    the built-ins, the plugin's name otherwise.
    """

    kind: str
    name: str
    obj: Any
    params: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[..., str | None] | None = None
    description: str = ""
    reference: str = ""
    properties: Mapping[str, Any] = field(default_factory=dict)
    origin: str = "mpisim"


class Registry(Mapping):
    """The entries of one kind, by config name; a read-only mapping name -> ``entry.obj``."""

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> Entry:
        if entry.kind != self.kind:
            raise RegistryError(f"a {entry.kind} entry cannot go into the registry of {self.plural}")
        if not entry.name or not isinstance(entry.name, str):
            raise RegistryError(f"a {self.kind} needs a non-empty name, got {entry.name!r}")
        taken = self._entries.get(entry.name)
        if taken is not None:
            raise RegistryError(f"{self.kind} {entry.name!r} is registered twice: by {taken.origin} and by "
                                f"{entry.origin}; choose another name")
        self._entries[entry.name] = entry
        return entry

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered."""
        return f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(sorted(self._entries))}"

    def remove(self, name: str) -> None:
        """Forget a user's entry (tests that register temporary components); built-ins stay."""
        if self._entries.get(name) is not None and self._entries[name].origin == "mpisim":
            raise RegistryError(f"the built-in {self.kind} {name!r} cannot be removed")
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> Any:
        return self._entries[name].obj

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<registry of {len(self)} {self.plural}: {', '.join(self._entries)}>"


rules = Registry("rule")
pre_aggregators = Registry("pre_aggregator", "pre-aggregators")
attacks = Registry("attack")
screenings = Registry("screening")
codecs = Registry("codec")
models = Registry("model")
datasets = Registry("dataset", "data sets")
partitions = Registry("partition")

#: every kind, by the name ``mpisim.register`` uses
KINDS: Mapping[str, Registry] = MappingProxyType({
    "rule": rules, "pre_aggregator": pre_aggregators, "attack": attacks, "screening": screenings,
    "codec": codecs, "model": models, "dataset": datasets, "partition": partitions})

# Who registers: a plugin's name while it is imported (see :func:`current_origin`).
_origin: list[str] = []


class origin:
    """``with registry.origin("my_defence.py"):`` entries registered inside carry that origin."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        _origin.append(self.name)
        return self

    def __exit__(self, *exc):
        _origin.pop()


def current_origin(fn: Callable) -> str:
    """Who registers ``fn``: the plugin being imported, else "mpisim" for the package's own
    modules, else ``fn``'s module (a user registering from a script or a test)."""
    if _origin:
        return _origin[-1]
    module = getattr(fn, "__module__", "") or ""
    return "mpisim" if module == "mpisim" or module.startswith("mpisim.") else module or "unknown"


def keyword_defaults(fn: Callable, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword-only parameters of ``fn`` (but those in ``skip``) with their defaults: a
    component's parameters, each of which must have a default (what a config leaves out)."""
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name not in skip:
            if p.default is p.empty:
                raise RegistryError(f"parameter {p.name!r} of {fn.__name__} needs a default")
            out[p.name] = p.default
    return out


def parameter_problem(entry: Entry, params: Mapping[str, Any], *, field: str, noun: str) -> tuple[str, str] | None:
    """(``field.KEY``, message) for a parameter ``entry`` does not take, or the one its check refuses
    (``check(params) -> (key, message) | None`` on the defaults updated with ``params``); None when
    all are fine. ``noun`` names the kind in the message ("data set", "partition")."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(entry.params))
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in entry.params.items()) or "none"
        return (f"{field}.{unknown[0]}",
                f"{noun} {entry.name!r} has no parameter {', '.join(map(repr, unknown))}; accepted: {accepted}")
    if entry.check is not None:
        problem = entry.check({**entry.params, **params})
        if problem is not None:
            key, message = problem
            return f"{field}.{key}", message
    return None


def first_line(fn: Callable) -> str:
    """The first line of ``fn``'s docstring (an entry's description when none is given)."""
    doc = inspect.getdoc(fn) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
