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
import types
import typing
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

try:  # the standard library's from Python 3.11; tomli, its origin, before
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration that cannot run; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _frozen_map(value: Mapping | None = None) -> Mapping:
    return types.MappingProxyType(dict(value or {}))


def option(default, help_text: str, **kwargs):
    """A dataclass field with its help text (shown by --help)."""
    if isinstance(default, (dict, types.MappingProxyType)):
        return field(default_factory=lambda: _frozen_map(default), metadata={"help": help_text}, **kwargs)
    return field(default=default, metadata={"help": help_text}, **kwargs)


# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class RunConfig:
    """[run]: the run as a whole: its seed, length, evaluation schedule and results."""

    seed: int = option(0, "seed of every random stream of the run (same seed, same results)")
    rounds: int = option(300, "number of rounds (iterations of the decentralized mode)")
    eval_every: int = option(25, "evaluate on the test set every this many rounds (and at the last one)")
    out_dir: str = option("results", "parent directory of the run directories (created if missing)")
    name: str = option("", "run directory name under out_dir, one path component, not in use yet (default: made from "
                           "the config and the time, with -2, -3... if taken)")
    progress: bool = option(True, "progress bar on rank 0 (only when stderr is a terminal)")
    save_model: bool = option(False, "write the final model(s) as flat float32 rows (the wire layout): model.npy "
                                     "(server mode) or models.npy (decentralized: every node's, rows in node order)")
    checkpoint_every: int = option(0, "write a checkpoint of the whole run every this many rounds and at the last "
                                      "(0: only when SIGTERM or SIGUSR1 arrives)")
    plugins: tuple[str, ...] = option((), "plugins imported on every rank before the configuration is checked: .py "
                                          "files or module names, e.g. --run.plugins my_defence.py,mypkg.attacks")
    plugin_sha256: Mapping[str, Any] = option({}, "recorded by the run, not set by you: each plugin's file and its "
                                                  "SHA-256 when the run started (a resume refuses a changed one)")
    checkpoint_keep: int = option(2, "checkpoints kept in the run directory (the newest ones); more than one leaves "
                                     "an older one for --run.resume_fallback if the newest is damaged")
    resume: str = option("", "a run directory to go on with from its newest checkpoint, into the same directory; its "
                             "config.toml is the base, and only run.rounds (which may grow), run.checkpoint_every, "
                             "run.checkpoint_keep, run.resume_fallback, run.round_timeout and run.progress may "
                             "differ")
    round_timeout: float = option(0.0, "seconds a round may take (evaluation and checkpoint included) before the job "
                                       "is ended with the ranks and hosts that stopped answering named, exit code 3 "
                                       "(0: no watchdog); set it well above the slowest round")
    resume_fallback: bool = option(False, "when the newest checkpoint fails its checks, go on from the newest intact "
                                          "one (the damaged ones are set aside, not deleted); without it such a "
                                          "resume stops with exit code 2")


@dataclass(frozen=True)
class DataConfig:
    """[data]: the data set, its split across agents or nodes, and the batches."""

    name: str = option("mnist-small", "data set: mnist-small (built in), mnist, fashion-mnist, cifar10, "
                                      "synthetic_regression, or a plugin's (the data sets page of the docs)")
    root: str = option("", "directory holding the data set's files (mnist-small and synthetic_regression need none)")
    params: Mapping[str, Any] = option({}, "the data set's own parameters, e.g. --data.params.samples 4000 for "
                                           "synthetic_regression")
    batch_size: int = option(16, "samples per agent or node and round, drawn with replacement (k of the CGE paper's "
                                 "eq 8); 0: the whole local shard (full local gradient)")
    batch_fraction: float = option(0.0, "instead of batch_size: this fraction of the local shard, in (0, 1], drawn "
                                        "afresh without replacement every round (Yin et al. Section 7: 0.1); 0: use "
                                        "batch_size")
    train_size: int = option(0, "use a seeded random subset of this many training samples (0: all)")
    test_size: int = option(0, "evaluate on the first this many test samples (0: all)")
    partition: str = option("iid", "split of the training set across agents or nodes: iid, dirichlet (per-class "
                                   "proportions ~ Dirichlet(alpha)), label_shards (sort by label, deal shards), or a "
                                   "plugin's")
    partition_params: Mapping[str, Any] = option({}, "the partition's own parameters, e.g. "
                                                     "--data.partition_params.alpha 0.1 (dirichlet, default 0.5: "
                                                     "large near iid, small skewed), "
                                                     "--data.partition_params.shards_per_agent 3 (label_shards, "
                                                     "default 2)")


@dataclass(frozen=True)
class ModelConfig:
    """[model]: what is trained, and from where it starts (every rank builds it from the run's seed,
    so all start from one model)."""

    name: str = option("lenet", "model: lenet, linear (one-vs-all squared hinge), cnn, logreg, mlp, least_squares, "
                                "or a plugin's (the models page of the docs)")
    init: str = option("default", "initial parameters: default (PyTorch's per-layer init) or zero")
    params: Mapping[str, Any] = option({}, "the model's own parameters, e.g. --model.params.hidden 1000 (mlp)")


@dataclass(frozen=True)
class OptimConfig:
    """[optim]: the step size eta_t of every update (mpisim.learning.schedules)."""

    lr: float = option(0.01, "step size eta (at round 0 for a decaying schedule); server mode: w <- w - eta_t * "
                             "filtered (CGE sums n-f gradients, eq 7: 0.01 there is about 0.1 on the mean scale); "
                             "decentralized: the local step")
    schedule: str = option("constant", "constant (eta_t = lr), inverse (lr / (1 + t / t0)), power (lr (t + 1)^-p)")
    t0: float = option(500.0, "t0 of the inverse schedule (BRIDGE's 1/(lambda (t0 + t)) is inverse with lr = "
                              "1/(lambda t0))")
    power: float = option(1.0, "p of the power schedule, in (1/2, 1] (BRSGD paper, Corollary 4.1)")
    project_radius: float = option(math.inf, "after every step, project the model onto the l2 ball of this radius "
                                             "around 0 (Yin et al.'s W); inf: no projection")


@dataclass(frozen=True)
class HostsConfig:
    """[agents] or [nodes]: how many learners there are and how many each rank hosts."""

    n: int = option(10, "number of agents (workers) or graph nodes")
    per_rank: int = option(1, "agents or nodes hosted by each rank; the job needs ceil(n / per_rank) ranks, plus 1 "
                              "for the server in server mode")


@dataclass(frozen=True)
class AggregatorConfig:
    """[aggregator]: the server's robust rule, what comes before it (pre-aggregation,
    gradient averaging), and the number of faulty agents it is set to tolerate."""

    name: str = option("cge", "gradient filter: a rule of the registry (the rules page of the docs lists them)")
    f: int = option(1, "number of faulty agents the filter is set to tolerate")
    params: Mapping[str, Any] = option({}, "the filter's own parameters, e.g. --aggregator.params.m 2")
    pre: tuple[str, ...] = option((), "pre-aggregation steps applied in order before the filter, e.g. nnm")
    pre_params: Mapping[str, Any] = option({}, "parameters of the pre-aggregation steps, one table per step, e.g. "
                                               "--aggregator.pre_params.bucketing.s 3")
    averaging: float = option(0.0, "alpha of gradient averaging h_i = alpha h_i + (1 - alpha) g_i (CGE paper eq 25); "
                                   "0 disables it")


@dataclass(frozen=True)
class ByzantineConfig:
    """[byzantine]: which agents are faulty and what they send."""

    fault: str = option("gradient_reverse", "fault type of the faulty agents, or none")
    count: int = option(1, "number of faulty agents (ignored when fault is none)")
    ids: tuple[int, ...] = option((), "ids (0-based) of the faulty agents; default: drawn from the seed")
    params: Mapping[str, Any] = option({}, "the fault's own parameters, e.g. --byzantine.params.std 200")


@dataclass(frozen=True)
class RunSections:
    """The sections every protocol has; a mode's config adds its own (and may change defaults)."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


# Fields that moved, with where they went: a user's old command line gets told. A mode's
# configuration class adds its own (``moved``, a class attribute).
MOVED = {
    "data.alpha": "dirichlet's concentration is --data.partition_params.alpha (default 0.5)",
    "data.shards_per_agent": "label_shards' count is --data.partition_params.shards_per_agent (default 2)",
}


# ---------------------------------------------------------------- reading values


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_literal(text: str) -> Any:
    """A TOML value (number, boolean, quoted string, array, inline table); a bare word is a string."""
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
            if from_text and isinstance(value, str):
                value = _parse_literal(value)
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


def _section_fields(cls, section: str, names) -> dict[str, tuple[Any, dataclasses.Field]]:
    """The fields of ``[section]`` of ``cls``; ConfigError naming an unknown section or field."""
    sections = _sections(cls)
    if section not in sections:
        raise ConfigError(section, f"unknown section; known sections: {', '.join(sections)}")
    fields = _fields(sections[section])
    for name in sorted(set(names) - set(fields)):
        key = f"{section}.{name}"
        moved = {**MOVED, **getattr(cls, "moved", {})}
        if key in moved:
            raise ConfigError(key, f"no longer a field: {moved[key]}")
        raise ConfigError(key, f"unknown field; fields of [{section}]: {', '.join(fields)}")
    return fields


def _build(cls, tables: Mapping[str, Mapping[str, Any]], *, from_text: bool = False):
    """Instantiate config class ``cls`` from {section: {field: value}}."""
    defaults = cls()  # a mode's own defaults (e.g. decentralized: model.name = "linear")
    built = {}
    for section in tables:
        _section_fields(cls, section, ())
    for section in _sections(cls):
        given = tables.get(section, {})
        if not isinstance(given, Mapping):
            raise ConfigError(section, "expected a table")
        fields = _section_fields(cls, section, given)
        kwargs = {name: _coerce(f"{section}.{name}", fields[name][0], value, from_text=from_text)
                  for name, value in given.items()}
        built[section] = dataclasses.replace(getattr(defaults, section), **kwargs)
    return cls(**built)


def _deep_merge(base: Mapping, overrides: Mapping) -> dict:
    """``base`` with ``overrides`` laid over it; tables are merged key by key, at every depth."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
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
    """The tables of a TOML file; ConfigError naming ``--config`` for anything unreadable."""
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError("--config", f"file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError("--config", f"{path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("--config", f"{path} is not UTF-8 text (TOML files must be): byte "
                                      f"{exc.start} is {exc.object[exc.start:exc.start + 1]!r}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError("--config", f"{path} nests tables or arrays too deep to read") from None


# ---------------------------------------------------------------- command line


def _help_text(cls) -> str:
    out = io.StringIO()
    out.write("configuration fields (TOML table.field, or --table.field VALUE on the command line):\n")
    defaults = cls()
    for section, section_cls in _sections(cls).items():
        doc = " ".join((section_cls.__doc__ or "").split()).partition(": ")[2]
        out.write(f"\n  [{section}]" + (f"  {doc}" if doc else "") + "\n")
        for name, (_annotation, fld) in _fields(section_cls).items():
            default = getattr(getattr(defaults, section), name)
            shown = dict(default) if isinstance(default, Mapping) else default
            shown = list(shown) if isinstance(shown, tuple) else shown
            out.write(f"  --{section}.{name} (default {shown!r})\n")
            out.write(f"      {fld.metadata.get('help', '')}\n")
    return out.getvalue()


def _nest(path: list[str], value: Any) -> dict:
    """{"a": {"b": value}} from ["a", "b"]."""
    for key in reversed(path):
        value = {key: value}
    return value


def parse_args(cls, argv: list[str] | None, *, prog: str, description: str, extra_help: str = ""):
    """Build config ``cls`` from ``--config FILE`` and ``--section.field value`` overrides.

    A key inside a parameter table is reached with more dots, at any depth:
    ``--aggregator.params.m 2``, ``--aggregator.pre_params.bucketing.s 3``.
    Raises ConfigError for any unknown or ill-typed field. ``--help`` prints
    every field with its default and exits. Returns (config, print_only).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_help_text(cls) + extra_help, allow_abbrev=False)
    parser.add_argument("--config", metavar="FILE", help="TOML file with any of the fields below")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration as TOML and exit (no mpiexec needed)")
    known, rest = parser.parse_known_args(argv)

    overrides: dict[str, Any] = {}
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
        section, name, *inside = key.split(".")
        if not section or not name or not all(inside):
            raise ConfigError(key, "expected --section.field VALUE (see --help)")
        fields = _section_fields(cls, section, [name])
        if inside:  # a key inside a parameter table: --aggregator.params.m 2
            if not _is_table(fields[name][0]):
                raise ConfigError(key, f"{section}.{name} is not a table of parameters")
            value = _parse_literal(value)
        else:
            value = _coerce(key, fields[name][0], value, from_text=True)
        overrides = _deep_merge(overrides, _nest([section, name, *inside], value))

    tables = load_toml(known.config) if known.config else {}
    if known.config and _in_run_dir(Path(known.config)):
        tables = upgrade_saved(tables)
    cfg = _build(cls, _deep_merge(tables, overrides))
    return cfg, known.print_config


def _in_run_dir(path: Path) -> bool:
    """Whether ``path`` is the config.toml of a run directory (beside its metrics.jsonl)."""
    return path.name == "config.toml" and (path.parent / "metrics.jsonl").exists()


def upgrade_saved(tables: Mapping[str, Any]) -> dict:
    """A run directory's config.toml as written by an older mpisim, with moved fields where they went,
    so that ``--run.resume`` goes on with the run as it started (a user's own file gets the
    :data:`MOVED` message instead): ``data.alpha`` and ``data.shards_per_agent`` are the dirichlet and
    label_shards partitions' parameters (``data.partition_params``)."""
    data = dict(tables.get("data", {}))
    moved = {key: data.pop(key) for key in ("alpha", "shards_per_agent") if key in data}
    if not moved:
        return dict(tables)
    own = {"dirichlet": "alpha", "label_shards": "shards_per_agent"}.get(data.get("partition", "iid"))
    if own in moved:
        data["partition_params"] = {own: moved[own], **dict(data.get("partition_params", {}))}
    return {**tables, "data": data}


def _is_table(annotation) -> bool:
    return annotation is Mapping or typing.get_origin(annotation) in (Mapping, collections.abc.Mapping, dict)


# ---------------------------------------------------------------- validation


def require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(field_name, message)


def raise_problem(problem: tuple[str, str] | None) -> None:
    """Raise the (field, message) a library check returned, if any."""
    if problem:
        raise ConfigError(*problem)


def validate_run(run: RunConfig) -> None:
    require(run.seed >= 0, "run.seed", f"must be >= 0, got {run.seed}")
    require(run.rounds >= 1, "run.rounds", f"must be >= 1, got {run.rounds}")
    require(run.eval_every >= 1, "run.eval_every", f"must be >= 1, got {run.eval_every}")
    name = run.name
    require(name == "" or (name not in (".", "..") and not any(c in name for c in "/\\\0")
                           and name.strip() == name), "run.name",
            f"must be a single directory name (no '/', not '.' or '..', no surrounding spaces), "
            f"got {name!r}")
    require(not any(unicodedata.category(c).startswith("C") for c in name), "run.name",
            f"must not hold control characters (newline, tab, escape, ...), got {name!r}")
    require(len(name.encode("utf-8", "surrogateescape")) <= 200, "run.name",
            f"must be at most 200 bytes, got {len(name.encode('utf-8', 'surrogateescape'))}")
    require(run.checkpoint_every >= 0, "run.checkpoint_every",
            f"must be >= 0 (0: only on SIGTERM or SIGUSR1), got {run.checkpoint_every}")
    require(run.checkpoint_keep >= 1, "run.checkpoint_keep", f"must be >= 1, got {run.checkpoint_keep}")
    require(math.isfinite(run.round_timeout) and run.round_timeout >= 0, "run.round_timeout",
            f"must be a number of seconds >= 0 (0: no watchdog), got {run.round_timeout}")
    if run.resume:
        _validate_resume(run)
        return
    require(run.out_dir != "", "run.out_dir", "must name a directory (e.g. results)")
    # What can be seen without creating anything; the driver creates the directory
    # before any work starts and reports what this cannot foresee (permissions, /proc).
    out = Path(run.out_dir).expanduser()
    try:
        for parent in (out, *out.parents):
            if parent.exists() or parent.is_symlink():
                require(parent.is_dir(), "run.out_dir",
                        f"{run.out_dir} is not a directory" if parent == out else
                        f"{run.out_dir} lies under {parent}, which is not a directory")
                break
        if name:
            require(not (out / name).exists(), "run.name",
                    f"{out / name} already exists: runs never write into another run's directory; "
                    f"choose another run.name or remove it")
    except OSError as exc:  # e.g. a path longer than the system allows
        raise ConfigError("run.out_dir", f"cannot use {_shorten(run.out_dir)}: {exc.strerror or exc}") from None


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]} ({len(text)} characters)"


# Fields a resumed run may change: none of them changes what the rounds compute.
RESUMABLE_CHANGES = ("run.rounds", "run.resume", "run.resume_fallback", "run.checkpoint_every",
                     "run.checkpoint_keep", "run.progress", "run.round_timeout")


def resume_base(argv: Sequence[str]) -> str | None:
    """The run directory of ``--run.resume DIR`` (or ``--run.resume=DIR``) in ``argv``, if any."""
    for i, token in enumerate(argv):
        if token == "--run.resume" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--run.resume="):
            return token.partition("=")[2]
    return None


def _validate_resume(run: RunConfig) -> None:
    """What can be seen of a resumed run's directory before the job starts; the driver checks the
    checkpoint itself, under the directory's lock, with every rank (:mod:`mpisim.checkpoint`)."""
    from . import checkpoint

    directory = Path(run.resume).expanduser()
    try:
        require(directory.is_dir(), "run.resume", f"{_shorten(run.resume)} is not a run directory")
        require(not (directory / "config.toml").is_symlink(), "run.resume",
                f"{directory}/config.toml is a symbolic link; mpisim never follows links inside a run directory")
        found = checkpoint.rounds(directory)
    except checkpoint.Damaged as exc:
        raise ConfigError("run.resume", f"{directory}/{exc}") from None
    except OSError as exc:
        raise ConfigError("run.resume", f"cannot read {_shorten(run.resume)}: {exc.strerror or exc}") from None
    require(bool(found), "run.resume",
            f"{run.resume} has no checkpoint (checkpoints are written with --run.checkpoint_every K, "
            f"and when the run gets SIGTERM or SIGUSR1)")


def for_run_dir(cfg):
    """The configuration as its run directory's config.toml records it: without ``run.resume`` and
    ``run.resume_fallback``, which say how this job started, not what the run is (reloading a resumed
    run's config.toml with --config then starts a new run, as it does for any other run)."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume="", resume_fallback=False))


def resume_differences(saved, cfg) -> list[str]:
    """The fields (section.field) where ``cfg`` differs from the ``saved`` configuration of the run
    it resumes, other than :data:`RESUMABLE_CHANGES`; run.rounds may only grow."""
    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict) and prefix == "":
                out.update(flat(value, f"{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(to_dict(saved)), flat(to_dict(cfg))
    differ = [f"{k} ({a.get(k)!r} in the run, {b.get(k)!r} now)" for k in sorted(set(a) | set(b))
              if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES]
    if cfg.run.rounds < saved.run.rounds:
        differ.append(f"run.rounds ({saved.run.rounds} in the run, {cfg.run.rounds} now: it may only grow)")
    return differ


def validate_optim(optim: OptimConfig) -> None:
    from .learning import schedules

    raise_problem(schedules.check(optim.schedule, lr=optim.lr, t0=optim.t0, power=optim.power))
    require(optim.project_radius > 0, "optim.project_radius",
            f"the radius of W must be positive (inf: no projection), got {optim.project_radius}")


def validate_problem(cfg, *, num_shards: int) -> int:
    """Check data set, model and partition together; returns the training set size.

    The data set must exist and give every one of the ``num_shards`` agents
    or nodes at least one batch (the whole partition is computed here, from
    the labels alone); the model must learn what the data set holds
    (classification or regression).
    """
    from . import datasets
    from .datasets import partition
    from .learning import models

    data_cfg, model_cfg = cfg.data, cfg.model
    require(data_cfg.name in datasets.REGISTRY, "data.name",
            f"unknown data set {data_cfg.name!r}; known: {', '.join(datasets.REGISTRY)}")
    raise_problem(datasets.check_params(data_cfg.name, dict(data_cfg.params)))
    require(model_cfg.name in models.MODELS, "model.name",
            f"unknown model {model_cfg.name!r}; known: {', '.join(models.MODELS)}")
    require(model_cfg.init in models.INITS, "model.init",
            f"must be one of {', '.join(models.INITS)}, got {model_cfg.init!r}")
    raise_problem(models.check_params(model_cfg.name, dict(model_cfg.params)))
    spec, model_kind = datasets.REGISTRY[data_cfg.name], models.MODELS[model_cfg.name].kind
    require(spec.kind == model_kind, "model.name",
            f"{model_cfg.name} is a {model_kind} model but {data_cfg.name} is a {spec.kind} data set")
    require(data_cfg.batch_size >= 0, "data.batch_size",
            f"must be >= 0 (0: the whole local shard), got {data_cfg.batch_size}")
    require(data_cfg.batch_fraction == 0 or 0 < data_cfg.batch_fraction <= 1, "data.batch_fraction",
            f"must be in (0, 1] (or 0 to use data.batch_size), got {data_cfg.batch_fraction}")
    raise_problem(partition.check_params(data_cfg.partition, dict(data_cfg.partition_params)))
    needs_labels = partition.PARTITIONS.entry(data_cfg.partition).properties["needs_labels"]
    label_free = ", ".join(e.name for e in partition.PARTITIONS.entries() if not e.properties["needs_labels"])
    require(spec.kind == "classification" or not needs_labels, "data.partition",
            f"{data_cfg.partition} needs class labels, but {data_cfg.name} is a {spec.kind} data set; "
            f"partitions that need none: {label_free}")

    args = dict(params=dict(data_cfg.params), seed=cfg.run.seed)
    try:
        sizes = {split: datasets.num_samples(data_cfg.name, data_cfg.root, split, **args)
                 for split in ("train", "test")}
    except (datasets.DataError, OSError) as exc:
        raise ConfigError("data.root", f"cannot read data set {data_cfg.name!r}: {exc}") from None
    for split, wanted in (("train", data_cfg.train_size), ("test", data_cfg.test_size)):
        require(wanted >= 0, f"data.{split}_size", f"must be >= 0, got {wanted}")
        require(wanted <= sizes[split], f"data.{split}_size",
                f"the {split} set of {data_cfg.name} has {sizes[split]} samples, fewer than {wanted}")
    train = data_cfg.train_size or sizes["train"]
    require(train >= num_shards, "data.train_size" if data_cfg.train_size else "data.name",
            f"{train} training samples cannot give each of {num_shards} shards a sample")
    try:
        make_partition(cfg, num_shards, labels=datasets.labels(data_cfg.name, data_cfg.root, "train", **args),
                       num_samples=sizes["train"])
    except datasets.DataError as exc:
        raise ConfigError("data.partition", f"{exc} (min_size here is data.batch_size, at least 1: "
                                            f"every agent or node draws its batches from its shard)") from None
    return train


def make_partition(cfg, num_shards: int, *, labels, num_samples: int):
    """The partition of the training set a run uses (the same at validation and in the run)."""
    from .datasets import partition

    data_cfg = cfg.data
    return partition.partition(data_cfg.partition, num_samples=num_samples, labels=labels,
                               num_agents=num_shards, seed=cfg.run.seed, subset=data_cfg.train_size,
                               params=dict(data_cfg.partition_params),
                               min_size=1 if data_cfg.batch_fraction else max(1, data_cfg.batch_size))


def validate_run_of(cfg, world_size: int | None, *, section: str, servers: int, least: int) -> None:
    """What every protocol checks: the run, the agents' or nodes' count and placement on
    ``servers`` + ceil(n / per_rank) ranks, the step sizes, and the learning problem."""
    validate_run(cfg.run)
    placement = getattr(cfg, section)
    n, per_rank = placement.n, placement.per_rank
    require(n >= least, f"{section}.n", f"must be >= {least}, got {n}")
    require(per_rank >= 1, f"{section}.per_rank", f"must be >= 1, got {per_rank}")
    needed = servers + math.ceil(n / per_rank)
    if world_size is not None:  # None: --print-config, no job to fit
        server_text = (f"{servers} server + {needed - servers} agent ranks" if servers else f"{needed} ranks")
        require(world_size == needed, f"{section}.per_rank",
                f"{n} {section} at {per_rank} per rank need {needed} MPI ranks ({server_text}), but the "
                f"job has {world_size}; run with mpiexec -n {needed}, or change {section}.n / "
                f"{section}.per_rank")
    if hasattr(cfg, "optim"):
        validate_optim(cfg.optim)
    validate_problem(cfg, num_shards=n)


def data_kind(cfg) -> str:
    """classification or regression (the data set is known to exist by now)."""
    from . import datasets

    return datasets.REGISTRY[cfg.data.name].kind


def validate_byzantine(byz: ByzantineConfig, n: int, *, noun: str, usable: Sequence[str], data_kind: str,
                        extra_faults: Sequence[str] = (), why_not: str = "") -> None:
    """The faulty agents or nodes: a known fault, a count leaving one honest, valid ids and params."""
    from .rules import attacks

    if byz.fault == "none":
        return
    require(byz.fault in usable or byz.fault in extra_faults, "byzantine.fault",
            f"{byz.fault!r} is not a fault {noun} can run here; known: none, "
            f"{', '.join((*extra_faults, *usable))}{why_not}")
    require(0 <= byz.count < n, "byzantine.count",
            f"must be in [0, {n - 1}] so that at least one of the {n} {noun} is honest, got {byz.count}")
    if byz.ids:
        require(len(byz.ids) == byz.count, "byzantine.ids",
                f"lists {len(byz.ids)} {noun} but byzantine.count is {byz.count}")
        require(len(set(byz.ids)) == len(byz.ids), "byzantine.ids", f"repeats an id: {list(byz.ids)}")
        require(all(0 <= i < n for i in byz.ids), "byzantine.ids",
                f"ids must be in [0, {n - 1}], got {list(byz.ids)}")
    if byz.fault in attacks.REGISTRY:
        if attacks.REGISTRY[byz.fault].kind == "data" and data_kind == "regression":
            raise ConfigError("byzantine.fault", f"{byz.fault} changes class labels, and this is a regression "
                                                 f"problem (data.name): use a message fault, e.g. gaussian")
        message = attacks.check(byz.fault, n, byz.count, params=dict(byz.params))
        if message:
            raise ConfigError("byzantine.params" if "param" in message else "byzantine.fault", message)
    else:
        require(not byz.params, "byzantine.params", f"{byz.fault} takes no parameters")


def validate_aggregator(agg: AggregatorConfig, n: int) -> None:
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
    for step, step_params in agg.pre_params.items():
        require(step in agg.pre, f"aggregator.pre_params.{step}",
                f"{step!r} is not one of the pre-aggregation steps {list(agg.pre)} (aggregator.pre)")
        require(isinstance(step_params, Mapping), f"aggregator.pre_params.{step}",
                f"expected a table of {step}'s parameters, e.g. --aggregator.pre_params.{step}.NAME "
                f"VALUE or pre_params = {{{step} = {{NAME = VALUE}}}} in TOML, got {step_params!r}")
        accepted = aggregators.param_defaults(step)
        for key in step_params:
            require(key in accepted, f"aggregator.pre_params.{step}.{key}",
                    f"{step} has no parameter {key!r}; its parameters: {', '.join(accepted) or 'none'}")
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
