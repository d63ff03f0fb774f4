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
    batch_size: int = _opt(16, "k, samples per agent per round (CGE paper eq 8)")
    test_size: int = _opt(0, "evaluate on the first this many test samples (0: all)")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _opt("lenet", "model: lenet")


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
        built[section] = section_cls(**kwargs)
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
    for section, section_cls in _sections(cls).items():
        out.write(f"\n  [{section}]\n")
        for name, (annotation, fld) in _fields(section_cls).items():
            default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
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


def validate_data(data_cfg: DataConfig, *, num_shards: int) -> int:
    """Check the data set exists and can give ``num_shards`` shards; returns the training set size."""
    from . import data  # local: keeps `import mpisim.config` light

    require(data_cfg.name in data.DATASETS, "data.name",
            f"unknown data set {data_cfg.name!r}; known: {', '.join(data.DATASETS)}")
    require(data_cfg.batch_size >= 1, "data.batch_size", f"must be >= 1, got {data_cfg.batch_size}")
    require(data_cfg.test_size >= 0, "data.test_size", f"must be >= 0, got {data_cfg.test_size}")
    try:
        train = data.num_samples(data_cfg.name, data_cfg.root, "train")
        data.num_samples(data_cfg.name, data_cfg.root, "test")
    except (data.DataError, OSError) as exc:
        raise ConfigError("data.root", f"cannot read data set {data_cfg.name!r}: {exc}") from None
    require(train >= num_shards, "data.name",
            f"{train} training samples cannot give each of {num_shards} shards a sample")
    return train


def validate_server_mode(cfg: ServerModeConfig, world_size: int) -> None:
    """Raise ConfigError if ``cfg`` cannot run on ``world_size`` ranks."""
    from . import aggregators, attacks, models

    validate_run(cfg.run)
    n = cfg.agents.n
    require(n >= 1, "agents.n", f"must be >= 1, got {n}")
    require(cfg.agents.per_rank >= 1, "agents.per_rank", f"must be >= 1, got {cfg.agents.per_rank}")
    needed = 1 + math.ceil(n / cfg.agents.per_rank)
    require(world_size == needed, "agents.per_rank",
            f"{n} agents at {cfg.agents.per_rank} per rank need {needed} MPI ranks "
            f"(1 server + {needed - 1} agent ranks), but the job has {world_size}; "
            f"run with mpiexec -n {needed}, or change agents.n / agents.per_rank")
    require(cfg.model.name in models.MODELS, "model.name",
            f"unknown model {cfg.model.name!r}; known: {', '.join(models.MODELS)}")
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
    from . import aggregators

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
