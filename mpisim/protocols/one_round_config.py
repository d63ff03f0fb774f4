"""The one-round algorithm's own configuration: its [erm] section, its defaults and its validator.

It runs on the server mode's server and agents, so it checks them with
:func:`mpisim.protocols.server_config.validate_server_and_agents`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import (
    AggregatorConfig,
    ByzantineConfig,
    DataConfig,
    HostsConfig,
    ModelConfig,
    RunConfig,
    RunSections,
    option,
    require,
)
from .server_config import validate_server_and_agents

__all__ = ["ErmConfig", "OneRoundConfig", "validate_one_round"]


@dataclass(frozen=True)
class ErmConfig:
    """[erm]: how each worker computes its local empirical risk minimiser (one_round)."""

    method: str = option("auto", "auto: the exact solution for least_squares (a linear solve), L-BFGS otherwise; "
                                 "lbfgs: L-BFGS for every model")
    tol: float = option(1e-5, "L-BFGS stops once the l2 norm of the local objective's gradient is below this")
    max_iter: int = option(1000, "L-BFGS stops after this many iterations even if tol is not reached")
    l2: float = option(0.0, "weight of (l2 / 2) ||w||^2 added to every local objective")


def _one_round_run() -> RunConfig:
    return RunConfig(rounds=1, eval_every=1)


def _one_round_model() -> ModelConfig:
    return ModelConfig(name="logreg", init="zero")


def _one_round_byzantine() -> ByzantineConfig:
    return ByzantineConfig(fault="random_labels")


@dataclass(frozen=True)
class OneRoundConfig(RunSections):
    """Configuration of ``python -m mpisim.one_round``."""

    run: RunConfig = field(default_factory=_one_round_run)
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=0))
    model: ModelConfig = field(default_factory=_one_round_model)
    agents: HostsConfig = field(default_factory=HostsConfig)
    erm: ErmConfig = field(default_factory=ErmConfig)
    aggregator: AggregatorConfig = field(default_factory=lambda: AggregatorConfig(name="median"))
    byzantine: ByzantineConfig = field(default_factory=_one_round_byzantine)


def validate_one_round(cfg: OneRoundConfig, world_size: int | None) -> None:
    """Raise ConfigError if ``cfg`` cannot run on ``world_size`` ranks (None: skip the rank count)."""
    require(cfg.run.rounds == 1, "run.rounds", f"the one-round algorithm has one round, got {cfg.run.rounds}")
    erm = cfg.erm
    require(erm.method in ("auto", "lbfgs"), "erm.method", f"must be auto or lbfgs, got {erm.method!r}")
    require(math.isfinite(erm.tol) and erm.tol > 0, "erm.tol", f"must be a positive number, got {erm.tol}")
    require(erm.max_iter >= 1, "erm.max_iter", f"must be >= 1, got {erm.max_iter}")
    require(math.isfinite(erm.l2) and erm.l2 >= 0, "erm.l2", f"must be >= 0, got {erm.l2}")
    validate_server_and_agents(cfg, world_size)
