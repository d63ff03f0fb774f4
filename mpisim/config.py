"""Run configuration: frozen dataclasses, loaded from TOML with command-line overrides.

A configuration is a tree of frozen dataclasses, one per TOML table::

    [aggregator]
    name = "cge"
    f = 1

The same field is overridden on the command line as ``--aggregator.f 2`` (or
``--aggregator.f=2``); free-form parameter tables take sub-keys, as
``--aggregator.params.m 2``. ``--config FILE`` loads a TOML file first.

:func:`validate` checks a configuration against the size of the MPI job
before any rank starts work, raising :class:`ConfigError` that names the
field and the constraint.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import io
import math
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import tomli_w


class ConfigError(ValueError):
    """A configuration that cannot run; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _frozen_map(value: Mapping | None = None) -> Mapping:
    return types.MappingProxyType(dict(value or {}))


def _opt(default, help_text: str, **kwargs):
    """A dataclass field with its help text (shown by --help)."""
    if isinstance(default, (dict, types.MappingProxyType)):
        return field(default_factory=lambda: _frozen_map(default), metadata={"help": help_text}, **kwargs)
    return field(default=default, metadata={"help": help_text}, **kwargs)


# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class RunConfig:
    seed: int = _opt(0, "seed of every random stream of the run (same seed, same results)")
    rounds: int = _opt(300, "number of rounds (server mode) or iterations (decentralized mode)")
    eval_every: int = _opt(25, "evaluate on the test set every this many rounds (and at the last one)")
    out_dir: str = _opt("results", "parent directory of the run directories")
    name: str = _opt("", "run directory name under out_dir (default: made from the config and the time)")
    progress: bool = _opt(True, "progress bar on rank 0 (only when stderr is a terminal)")
    save_model: bool = _opt(False, "write the final model to model.npy in the run directory "
                                   "(flat float32 vector, the wire layout)")


@dataclass(frozen=True)
class DataConfig:
    name: str = _opt("mnist-small", "data set: mnist-small (built in), mnist, fashion-mnist")
    root: str = _opt("", "directory holding the data set's IDX files (mnist-small needs none)")
    batch_size: int = _opt(16, "samples per agent (server mode: k of the CGE paper's eq 8) or per node "
                               "and step (decentralized mode; 0: the whole local shard)")
    train_size: int = _opt(0, "use a seeded random subset of this many training samples (0: all)")
    test_size: int = _opt(0, "evaluate on the first this many test samples (0: all)")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _opt("lenet", "model: lenet (CGE paper), linear (one-vs-all squared hinge), cnn (BRIDGE 5.2)")
    init: str = _opt("default", "initial parameters: default (PyTorch's per-layer init) or zero")


@dataclass(frozen=True)
class AgentsConfig:
    n: int = _opt(10, "number of agents (workers)")
    per_rank: int = _opt(1, "agents hosted by each agent rank; the job needs 1 + ceil(n / per_rank) ranks")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _opt(0.01, "step size eta of the server's update w <- w - eta * filtered "
                           "(CGE sums n-f gradients, eq 7: 0.01 there is about 0.1 on the mean scale)")


@dataclass(frozen=True)
class AggregatorConfig:
    name: str = _opt("cge", "gradient filter (see the README's table of rules)")
    f: int = _opt(1, "number of faulty agents the filter is set to tolerate")
    params: Mapping[str, Any] = _opt({}, "the filter's own parameters, e.g. --aggregator.params.m 2")
    pre: tuple[str, ...] = _opt((), "pre-aggregation steps applied in order before the filter, e.g. nnm")
    pre_params: Mapping[str, Any] = _opt({}, "parameters of the pre-aggregation steps, keyed by step name")
    averaging: float = _opt(0.0, "alpha of gradient averaging h_i = alpha h_i + (1 - alpha) g_i "
                                 "(CGE paper eq 25); 0 disables it")


@dataclass(frozen=True)
class ByzantineConfig:
    fault: str = _opt("gradient_reverse", "fault type of the faulty agents, or none")
    count: int = _opt(1, "number of faulty agents (ignored when fault is none)")
    ids: tuple[int, ...] = _opt((), "ids (0-based) of the faulty agents; default: drawn from the seed")
    params: Mapping[str, Any] = _opt({}, "the fault's own parameters, e.g. --byzantine.params.std 200")


@dataclass(frozen=True)
class ServerModeConfig:
    """Configuration of ``python -m mpisim.server_mode``."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)


@dataclass(frozen=True)
class NodesConfig:
    n: int = _opt(20, "number of nodes of the graph")
    per_rank: int = _opt(1, "nodes hosted by each rank; the job needs ceil(n / per_rank) ranks")


@dataclass(frozen=True)
class GraphConfig:
    p: float = _opt(0.5, "Erdős–Rényi edge probability")
    redraw: int = _opt(0, "draw again up to this many times when a graph fails the check (0: fail)")
    max_reduced_graphs: int = _opt(200_000, "check Assumption 4 on every reduced graph when there are "
                                            "at most this many")
    samples: int = _opt(2_000, "otherwise check this many random reduced graphs (0: skip)")


@dataclass(frozen=True)
class ScreeningConfig:
    name: str = _opt("bridge_t", "bridge_t (trimmed mean, eq 7), bridge_m, bridge_k, bridge_b, "
                                 "dgd (plain average, eq 3), local (no exchange)")
    b: int = _opt(2, "number of Byzantine neighbours screened out per side (BRIDGE's b)")


@dataclass(frozen=True)
class LocalConfig:
    method: str = _opt("gd", "local update: gd (w <- screened - rho(t) grad, rho(t) = 1/(lam (t0 + t))) "
                             "or adam (BRIDGE Section 5.2)")
    lam: float = _opt(1.0, "lambda of the step-size sequence rho(t) = 1/(lam (t0 + t))")
    t0: float = _opt(500.0, "t0 of the step-size sequence rho(t) = 1/(lam (t0 + t))")
    l2: float = _opt(0.0, "weight of (l2 / 2) ||w||^2 added to every node's loss (strong convexity)")
    lr: float = _opt(1e-3, "Adam's step size (method adam)")
    order: str = _opt("screen_then_step", "screen_then_step: screen w(t) and subtract rho(t) grad f(w(t)) "
                                          "(eq 7); step_then_screen: local step, then exchange and "
                                          "screen (Section 5.2)")


@dataclass(frozen=True)
class NodeByzantineConfig:
    fault: str = _opt("random", "what Byzantine nodes broadcast: init_random (a fresh draw from the "
                                "model's initialization), a message fault of the rule library "
                                "(random, sign_flip, gaussian, nan, inf, huge, ...), or none")
    count: int = _opt(2, "number of Byzantine nodes (ignored when fault is none)")
    ids: tuple[int, ...] = _opt((), "ids (0-based) of the Byzantine nodes; default: drawn from the seed")
    two_faced: bool = _opt(False, "send a different vector to each neighbour")
    params: Mapping[str, Any] = _opt({}, "the fault's own parameters, e.g. --byzantine.params.std 1")


def _decentralized_data() -> DataConfig:
    return DataConfig(batch_size=0)


def _decentralized_model() -> ModelConfig:
    return ModelConfig(name="linear", init="zero")


@dataclass(frozen=True)
class DecentralizedConfig:
    """Configuration of ``python -m mpisim.decentralized``."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=_decentralized_data)
    model: ModelConfig = field(default_factory=_decentralized_model)
    nodes: NodesConfig = field(default_factory=NodesConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    byzantine: NodeByzantineConfig = field(default_factory=NodeByzantineConfig)


# ---------------------------------------------------------------- reading values


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_literal(text: str) -> Any:
    """A TOML value (number, boolean, quoted string, array); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(name: str, annotation: Any, value: Any, *, from_text: bool) -> Any:
    """Convert ``value`` to the field's type or raise ConfigError naming the field."""
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if from_text:
                return _parse_bool(value)
            if isinstance(value, bool):
                return value
        elif annotation is int:
            value = int(value, 0) if from_text else value
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif annotation is float:
            value = float(value) if from_text else value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif annotation is str:
            if isinstance(value, str):
                return value
        elif origin is tuple:
            item_type = typing.get_args(annotation)[0]
            if from_text:
                parsed = _parse_literal(value) if value.strip().startswith("[") else \
                    [part for part in value.split(",") if part.strip()]
                value = [_coerce(name, item_type, item, from_text=isinstance(item, str))
                         for item in parsed]
            if isinstance(value, (list, tuple)):
                return tuple(_coerce(name, item_type, item, from_text=False) for item in value)
        elif origin in (Mapping, collections.abc.Mapping, dict) or annotation is Mapping:
            if isinstance(value, Mapping):
                return _frozen_map(value)
    except ValueError as exc:
        raise ConfigError(name, f"cannot read {value!r}: {exc}") from None
    type_name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(name, f"expected a value of type {type_name}, got {value!r}")


def _sections(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _fields(section_cls) -> dict[str, tuple[Any, dataclasses.Field]]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(section_cls)}


def _build(cls, tables: Mapping[str, Mapping[str, Any]], *, from_text: bool = False):
    """Instantiate config class ``cls`` from {section: {field: value}}."""
    sections = _sections(cls)
    unknown = set(tables) - set(sections)
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(name, f"unknown section; known sections: {', '.join(sections)}")
    defaults = cls()  # a mode's own defaults (e.g. decentralized: model.name = "linear")
    built = {}
    for section, section_cls in sections.items():
        given = tables.get(section, {})
        if not isinstance(given, Mapping):
            raise ConfigError(section, "expected a table")
        fields = _fields(section_cls)
        unknown = set(given) - set(fields)
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(f"{section}.{name}",
                              f"unknown field; fields of [{section}]: {', '.join(fields)}")
        kwargs = {name: _coerce(f"{section}.{name}", fields[name][0], value, from_text=from_text)
                  for name, value in given.items()}
        built[section] = dataclasses.replace(getattr(defaults, section), **kwargs)
    return cls(**built)


def _merge(base: dict, overrides: Mapping) -> dict:
    merged = {key: dict(value) if isinstance(value, Mapping) else value for key, value in base.items()}
    for section, values in overrides.items():
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(section, "expected a table")
        for key, value in values.items():
            if isinstance(value, Mapping) and isinstance(target.get(key), Mapping):
                target[key] = {**target[key], **value}
            else:
                target[key] = value
    return merged


def to_dict(cfg) -> dict:
    """Plain nested dict (lists for tuples, dicts for maps), ready for TOML or JSON."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def dumps(cfg) -> str:
    """The configuration as TOML text (loadable with ``--config``)."""
    return tomli_w.dumps(to_dict(cfg))


def load_toml(path: str | Path) -> dict:
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError("--config", f"file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None


# ---------------------------------------------------------------- command line


def _help_text(cls) -> str:
    out = io.StringIO()
    out.write("configuration fields (TOML table.field, or --table.field VALUE on the command line):\n")
    defaults = cls()
    for section, section_cls in _sections(cls).items():
        out.write(f"\n  [{section}]\n")
        for name, (annotation, fld) in _fields(section_cls).items():
            default = getattr(getattr(defaults, section), name)
            shown = dict(default) if isinstance(default, Mapping) else default
            shown = list(shown) if isinstance(shown, tuple) else shown
            out.write(f"  --{section}.{name} (default {shown!r})\n")
            out.write(f"      {fld.metadata.get('help', '')}\n")
    return out.getvalue()


def parse_args(cls, argv: list[str] | None, *, prog: str, description: str, extra_help: str = ""):
    """Build config ``cls`` from ``--config FILE`` and ``--section.field value`` overrides.

    Raises ConfigError for any unknown or ill-typed field. ``--help`` prints
    every field with its default and exits.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_help_text(cls) + extra_help, allow_abbrev=False)
    parser.add_argument("--config", metavar="FILE", help="TOML file with any of the fields below")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration as TOML and exit")
    known, rest = parser.parse_known_args(argv)

    overrides: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--") or "." not in token:
            raise ConfigError(token, "expected --section.field VALUE (see --help)")
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if i + 1 >= len(rest):
                raise ConfigError(key, "missing value")
            value = rest[i + 1]
            i += 1
        i += 1
        section, _, name = key.partition(".")
        if "." in name:  # a key inside a parameter table: --aggregator.params.m 2
            table, _, sub = name.partition(".")
            overrides.setdefault(section, {}).setdefault(table, {})[sub] = _parse_literal(value)
        else:
            overrides.setdefault(section, {})[name] = value

    tables = load_toml(known.config) if known.config else {}
    text_overrides = _typed_overrides(cls, overrides)
    cfg = _build(cls, _merge(tables, text_overrides))
    return cfg, known.print_config


def _typed_overrides(cls, overrides: Mapping[str, Mapping[str, Any]]) -> dict:
    """Convert command-line strings to the fields' types (tables stay as parsed)."""
    sections = _sections(cls)
    typed: dict[str, dict[str, Any]] = {}
    for section, values in overrides.items():
        if section not in sections:
            raise ConfigError(section, f"unknown section; known sections: {', '.join(sections)}")
        fields = _fields(sections[section])
        for name, value in values.items():
            if name not in fields:
                raise ConfigError(f"{section}.{name}",
                                  f"unknown field; fields of [{section}]: {', '.join(fields)}")
            annotation = fields[name][0]
            if isinstance(value, dict):
                typed.setdefault(section, {})[name] = value
            else:
                typed.setdefault(section, {})[name] = _coerce(
                    f"{section}.{name}", annotation, value, from_text=True)
    return typed


# ---------------------------------------------------------------- validation


def require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(field_name, message)


def validate_run(run: RunConfig) -> None:
    require(run.seed >= 0, "run.seed", f"must be >= 0, got {run.seed}")
    require(run.rounds >= 1, "run.rounds", f"must be >= 1, got {run.rounds}")
    require(run.eval_every >= 1, "run.eval_every", f"must be >= 1, got {run.eval_every}")


def validate_model(model_cfg: ModelConfig) -> None:
    from .learning import models

    require(model_cfg.name in models.MODELS, "model.name",
            f"unknown model {model_cfg.name!r}; known: {', '.join(models.MODELS)}")
    require(model_cfg.init in ("default", "zero"), "model.init",
            f"must be default or zero, got {model_cfg.init!r}")


def validate_data(data_cfg: DataConfig, *, num_shards: int, min_batch: int = 1) -> int:
    """Check the data set exists and can give ``num_shards`` shards; returns the training set size."""
    from . import datasets as data  # local: keeps `import mpisim.config` light

    require(data_cfg.name in data.DATASETS, "data.name",
            f"unknown data set {data_cfg.name!r}; known: {', '.join(data.DATASETS)}")
    require(data_cfg.batch_size >= min_batch, "data.batch_size",
            f"must be >= {min_batch}, got {data_cfg.batch_size}")
    require(data_cfg.test_size >= 0, "data.test_size", f"must be >= 0, got {data_cfg.test_size}")
    require(data_cfg.train_size >= 0, "data.train_size", f"must be >= 0, got {data_cfg.train_size}")
    try:
        train = data.num_samples(data_cfg.name, data_cfg.root, "train")
        data.num_samples(data_cfg.name, data_cfg.root, "test")
    except (data.DataError, OSError) as exc:
        raise ConfigError("data.root", f"cannot read data set {data_cfg.name!r}: {exc}") from None
    if data_cfg.train_size:
        require(data_cfg.train_size <= train, "data.train_size",
                f"the training set has {train} samples, fewer than {data_cfg.train_size}")
        train = data_cfg.train_size
    require(train >= num_shards, "data.train_size" if data_cfg.train_size else "data.name",
            f"{train} training samples cannot give each of {num_shards} shards a sample")
    return train


def validate_server_mode(cfg: ServerModeConfig, world_size: int) -> None:
    """Raise ConfigError if ``cfg`` cannot run on ``world_size`` ranks."""
    from .rules import attacks

    validate_run(cfg.run)
    n = cfg.agents.n
    require(n >= 1, "agents.n", f"must be >= 1, got {n}")
    require(cfg.agents.per_rank >= 1, "agents.per_rank", f"must be >= 1, got {cfg.agents.per_rank}")
    needed = 1 + math.ceil(n / cfg.agents.per_rank)
    require(world_size == needed, "agents.per_rank",
            f"{n} agents at {cfg.agents.per_rank} per rank need {needed} MPI ranks "
            f"(1 server + {needed - 1} agent ranks), but the job has {world_size}; "
            f"run with mpiexec -n {needed}, or change agents.n / agents.per_rank")
    validate_model(cfg.model)
    require(math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0, "optim.lr",
            f"the step size must be a positive number, got {cfg.optim.lr}")
    validate_data(cfg.data, num_shards=n)

    agg = cfg.aggregator
    require(agg.f >= 0, "aggregator.f", f"must be >= 0, got {agg.f}")
    require(0.0 <= agg.averaging < 1.0, "aggregator.averaging",
            f"alpha must be in [0, 1), got {agg.averaging}")
    _validate_aggregator(agg, n)

    byz = cfg.byzantine
    if byz.fault == "none":
        return
    require(byz.fault in attacks.REGISTRY, "byzantine.fault",
            f"unknown fault {byz.fault!r}; known: none, {', '.join(attacks.REGISTRY)}")
    require(0 <= byz.count < n, "byzantine.count",
            f"must be in [0, n-1] so that at least one agent is honest, got {byz.count} with n={n}")
    if byz.ids:
        require(len(byz.ids) == byz.count, "byzantine.ids",
                f"lists {len(byz.ids)} agents but byzantine.count is {byz.count}")
        require(len(set(byz.ids)) == len(byz.ids), "byzantine.ids", f"repeats an id: {list(byz.ids)}")
        require(all(0 <= i < n for i in byz.ids), "byzantine.ids",
                f"ids must be in [0, {n - 1}], got {list(byz.ids)}")
    message = attacks.check(byz.fault, n, byz.count, params=dict(byz.params))
    if message:
        raise ConfigError("byzantine.params" if "param" in message else "byzantine.fault", message)


def _validate_aggregator(agg: AggregatorConfig, n: int) -> None:
    """Name the field at fault: the rule, a pre-aggregation step, a parameter, or f."""
    from .rules import aggregators

    require(agg.name in aggregators.REGISTRY, "aggregator.name",
            f"unknown rule {agg.name!r}; known: {', '.join(sorted(aggregators.REGISTRY))}")
    for step in agg.pre:
        require(step in aggregators.PRE_REGISTRY, "aggregator.pre",
                f"unknown pre-aggregation step {step!r}; known: {', '.join(sorted(aggregators.PRE_REGISTRY))}")
    accepted = aggregators.param_defaults(agg.name)
    for key in agg.params:
        require(key in accepted, f"aggregator.params.{key}",
                f"{agg.name} has no parameter {key!r}; its parameters: {', '.join(accepted) or 'none'}")
    params = dict(agg.params)
    pre_params = {k: dict(v) for k, v in agg.pre_params.items()}
    message = aggregators.check_pipeline(agg.name, n, agg.f, params=params, pre=agg.pre,
                                         pre_params=pre_params)
    if message:
        # The same setting with f = 0 passing means f is what makes it impossible.
        blame_f = aggregators.check_pipeline(agg.name, n, 0, params=params, pre=agg.pre,
                                             pre_params=pre_params) is None
        raise ConfigError("aggregator.f" if blame_f else
                          "aggregator.pre_params" if agg.pre_params else "aggregator.params", message)


DECENTRALIZED_FAULTS_EXTRA = ("init_random",)  # faults of the decentralized mode itself


def validate_decentralized(cfg: DecentralizedConfig, world_size: int) -> None:
    """Raise ConfigError if ``cfg`` cannot run on ``world_size`` ranks (before the graph is drawn)."""
    from .rules import attacks, screening

    validate_run(cfg.run)
    n = cfg.nodes.n
    require(n >= 2, "nodes.n", f"must be >= 2, got {n}")
    require(cfg.nodes.per_rank >= 1, "nodes.per_rank", f"must be >= 1, got {cfg.nodes.per_rank}")
    needed = math.ceil(n / cfg.nodes.per_rank)
    require(world_size == needed, "nodes.per_rank",
            f"{n} nodes at {cfg.nodes.per_rank} per rank need {needed} MPI ranks, but the job has "
            f"{world_size}; run with mpiexec -n {needed}, or change nodes.n / nodes.per_rank")
    validate_model(cfg.model)
    validate_data(cfg.data, num_shards=n, min_batch=0)

    graph = cfg.graph
    require(0.0 < graph.p <= 1.0, "graph.p", f"edge probability must be in (0, 1], got {graph.p}")
    require(graph.redraw >= 0, "graph.redraw", f"must be >= 0, got {graph.redraw}")
    require(graph.max_reduced_graphs >= 0, "graph.max_reduced_graphs",
            f"must be >= 0, got {graph.max_reduced_graphs}")
    require(graph.samples >= 0, "graph.samples", f"must be >= 0, got {graph.samples}")

    scr = cfg.screening
    require(scr.name in screening.SCREENS, "screening.name",
            f"unknown screening {scr.name!r}; known: {', '.join(screening.SCREENS)}")
    require(scr.b >= 0, "screening.b", f"must be >= 0, got {scr.b}")
    require(2 * scr.b < n - 1, "screening.b",
            f"BRIDGE needs every honest node to have more than 2b = {2 * scr.b} neighbours, "
            f"impossible with n = {n} nodes")

    local = cfg.local
    require(local.method in ("gd", "adam"), "local.method", f"must be gd or adam, got {local.method!r}")
    require(local.order in ("screen_then_step", "step_then_screen"), "local.order",
            f"must be screen_then_step or step_then_screen, got {local.order!r}")
    for name in ("lam", "t0", "lr"):
        value = getattr(local, name)
        require(math.isfinite(value) and value > 0, f"local.{name}", f"must be positive, got {value}")
    require(math.isfinite(local.l2) and local.l2 >= 0, "local.l2", f"must be >= 0, got {local.l2}")

    byz = cfg.byzantine
    if byz.fault == "none":
        return
    usable = [name for name, a in attacks.REGISTRY.items() if a.kind == "message" and not a.omniscient]
    require(byz.fault in usable or byz.fault in DECENTRALIZED_FAULTS_EXTRA, "byzantine.fault",
            f"{byz.fault!r} is not a fault Byzantine nodes can run here; known: none, "
            f"{', '.join(DECENTRALIZED_FAULTS_EXTRA + tuple(usable))} (omniscient and data faults "
            f"are server-mode only)")
    require(0 <= byz.count < n, "byzantine.count", f"must be in [0, {n - 1}], got {byz.count}")
    if byz.ids:
        require(len(byz.ids) == byz.count, "byzantine.ids",
                f"lists {len(byz.ids)} nodes but byzantine.count is {byz.count}")
        require(len(set(byz.ids)) == len(byz.ids), "byzantine.ids", f"repeats an id: {list(byz.ids)}")
        require(all(0 <= i < n for i in byz.ids), "byzantine.ids",
                f"ids must be in [0, {n - 1}], got {list(byz.ids)}")
    if byz.fault in attacks.REGISTRY:
        message = attacks.check(byz.fault, n, byz.count, params=dict(byz.params))
        if message:
            raise ConfigError("byzantine.params", message)
    else:
        require(not byz.params, "byzantine.params", f"{byz.fault} takes no parameters")
