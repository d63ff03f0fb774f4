"""The server mode's own configuration: its sections ([compression], [server]) and its validator.

The sections every protocol shares, and the TOML and command-line machinery,
are :mod:`mpisim.config`; this module adds what only the server mode (and
the one-round algorithm, which runs on the same server and agents) has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import config
from ..config import (
    AggregatorConfig,
    ByzantineConfig,
    ConfigError,
    HostsConfig,
    OptimConfig,
    RunSections,
    option,
    require,
)

__all__ = ["AgentsConfig", "CompressionConfig", "ServerConfig", "ServerModeConfig", "validate_server_mode",
           "server_ranks", "validate_server_and_agents", "model_size"]


@dataclass(frozen=True)
class CompressionConfig:
    """[compression]: what the agents' uplink carries (Ghosh et al.; mpisim.compression)."""

    codec: str = option("none", "compressor Q of every agent's message: none (float32, as without compression), "
                                "sign, scaled_sign, topk, qsgd, or a plugin's (the codecs page of the docs)")
    params: Mapping[str, Any] = option({}, "the codec's own parameters, e.g. --compression.params.k 100 (topk; or "
                                           "ratio), --compression.params.s 4 (qsgd)")
    side_norm: int = option(0, "q = 1 or 2: every agent sends ||g||_q beside Q(g) (4 bytes) and norm_threshold sorts "
                               "on these sent norms (Algorithm 1); 0: no side norm, norm_threshold sorts on the "
                               "decoded vectors' norms (Algorithm 2)")
    error_feedback: bool = option(False, "Algorithm 3: agent i sends Q(p_i), p_i = eta_t g_i + e_i, keeps e_i <- p_i "
                                         "- Q(p_i); the server steps by the rule's output without a further step size")
    faulty_norm: float = option(1.0, "faulty agents multiply the norm they send (the side norm, or the codec's own "
                                     "norm field: scaled_sign, qsgd) by this; 1: truthful")


@dataclass(frozen=True)
class ServerConfig:
    """[server]: how many ranks the parameter server takes, how it filters, and its own root set (fltrust)."""

    ranks: int = option(1, "ranks of the parameter server (ranks 0..S-1), each owning a contiguous slice of d / S "
                           "coordinates of the model and of every agent's message; the agents start at rank S")
    threads: int = option(2, "threads of each server rank's coordinate-wise filter, over chunks of columns (the "
                             "agents wait while it runs); every count gives the same model")
    root_samples: int = option(0, "fltrust's clean root set: training samples drawn on the server's own stream, its "
                                  "gradient on a batch of them every round (0: none, for every other rule)")


@dataclass(frozen=True)
class AgentsConfig(HostsConfig):
    """[agents] of the server mode: how many, how they are packed, and what each computes before it sends."""

    momentum: float = option(0.0, "beta in [0, 1): every agent sends m_t = beta m_(t-1) + (1 - beta) g_t, m_0 = 0, "
                                  "instead of its gradient g_t (worker momentum, Karimireddy, He, Jaggi, ICML "
                                  "2021); 0: the gradient itself")
    local_steps: int = option(1, "K >= 1 local SGD steps on fresh batches from the broadcast model w; the agent "
                                 "sends (w - w_K) / (K local_lr), so that 1 is the gradient")
    local_lr: float = option(0.0, "step size of the local steps; 0: the round's eta_t")
    sample: int = option(0, "m agents take part in each round, drawn without replacement from the seed and the "
                            "round alone; only they compute and send, and the rule runs on their m rows with "
                            "aggregator.f; 0: all n")


@dataclass(frozen=True)
class ServerModeConfig(RunSections):
    """Configuration of ``python -m mpisim.server_mode``."""

    agents: AgentsConfig = field(default_factory=AgentsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    server: ServerConfig = field(default_factory=ServerConfig)


def validate_server_mode(cfg: ServerModeConfig, world_size: int | None) -> None:
    """Raise ConfigError if ``cfg`` cannot run on ``world_size`` ranks (None: skip the rank count)."""
    agents = cfg.agents
    require(math.isfinite(agents.momentum) and 0.0 <= agents.momentum < 1.0, "agents.momentum",
            f"beta must be in [0, 1), got {agents.momentum}")
    require(agents.local_steps >= 1, "agents.local_steps", f"must be >= 1, got {agents.local_steps}")
    require(math.isfinite(agents.local_lr) and agents.local_lr >= 0, "agents.local_lr",
            f"must be >= 0 (0: the round's step size), got {agents.local_lr}")
    validate_server_and_agents(cfg, world_size)
    _validate_sample(cfg)
    _validate_root(cfg)
    _validate_compression(cfg)
    _validate_sharding(cfg)


def _validate_root(cfg: ServerModeConfig) -> None:
    """server.root_samples: FLTrust's root set, and only FLTrust's."""
    k, name = cfg.server.root_samples, cfg.aggregator.name
    require(k >= 0, "server.root_samples", f"must be >= 0, got {k}")
    if name == "fltrust":
        require(k >= 1, "server.root_samples", "fltrust weighs the agents' rows by the server's own gradient on "
                                               "a root set: give it some samples, e.g. --server.root_samples 100 "
                                               "(the paper's)")
        from .. import datasets

        train = datasets.num_samples(cfg.data.name, cfg.data.root, "train", params=dict(cfg.data.params),
                                     seed=cfg.run.seed)
        require(k <= train, "server.root_samples", f"the training set has {train} samples, fewer than {k}")
        require(cfg.agents.local_steps == 1, "server.root_samples",
                "fltrust with agents.local_steps > 1 is not supported yet (the server's own message is one gradient)")
    else:
        require(k == 0, "server.root_samples", f"only fltrust uses a root set; {name} would ignore it")


def _validate_sample(cfg: ServerModeConfig) -> None:
    """agents.sample: a count the rule can run on with aggregator.f, and what sampling cannot do yet."""
    from ..rules import aggregators

    m, n, agg = cfg.agents.sample, cfg.agents.n, cfg.aggregator
    require(0 <= m <= n, "agents.sample", f"must be in [1, agents.n = {n}] (0: all agents), got {m}")
    if m in (0, n):
        return
    message = aggregators.check_pipeline(agg.name, m, agg.f, params=dict(agg.params), pre=agg.pre,
                                         pre_params={k: dict(v) for k, v in agg.pre_params.items()})
    require(message is None, "agents.sample", f"the rule runs on the {m} sampled agents' rows: {message}")
    require(agg.averaging == 0, "agents.sample", "gradient averaging (aggregator.averaging) keeps a row per "
                                                 "agent, which a sampled round does not fill: use one or the other")
    c = cfg.compression
    require(c.codec == "none" and not c.side_norm and not c.error_feedback and c.faulty_norm == 1.0,
            "agents.sample", "compressed uplinks ([compression]) with sampled agents are not supported yet")


def server_ranks(cfg) -> int:
    """S, the parameter server's ranks (1 for the one-round algorithm, which has no [server])."""
    server = getattr(cfg, "server", None)
    return 1 if server is None else server.ranks


def _validate_sharding(cfg: ServerModeConfig) -> None:
    """What a server split into S slices of the coordinates cannot do (yet)."""
    S = cfg.server.ranks
    if S == 1:
        return
    require(cfg.compression.codec == "none", "server.ranks",
            f"a compressed uplink ({cfg.compression.codec}) encodes whole vectors, which cannot be cut into "
            f"the server's {S} slices; use --server.ranks 1 with compression")
    require(cfg.aggregator.name != "majority_vote", "server.ranks",
            "majority_vote's downlink is the packed vote of the whole model; use --server.ranks 1")
    from ..rules import aggregators

    problem = aggregators.sharding_problem(cfg.aggregator.name, cfg.aggregator.pre)
    require(problem is None, "server.ranks", f"{S} server ranks: {problem}")
    d = model_size(cfg)
    require(S <= d, "server.ranks", f"{S} server ranks would leave some without a coordinate: the model has "
                                    f"d = {d} parameters")


def model_size(cfg) -> int:
    """d, the model's number of parameters (builds the model on one test sample's shape)."""
    from .. import datasets
    from ..learning import models

    data = datasets.load(cfg.data.name, cfg.data.root, "test", params=dict(cfg.data.params),
                         seed=cfg.run.seed)
    kind = models.MODELS[cfg.model.name].kind
    return models.build(cfg.model.name, input_shape=data.input_shape, seed=0,
                        num_classes=data.num_classes if kind == "classification" else None,
                        params=dict(cfg.model.params)).d


def _validate_compression(cfg: ServerModeConfig) -> None:
    """[compression] against the codec registry, the rule and the faults (Ghosh et al.)."""
    from .. import compression

    c, agg = cfg.compression, cfg.aggregator
    require(c.codec in compression.REGISTRY, "compression.codec",
            f"unknown codec {c.codec!r}; known: {', '.join(compression.REGISTRY)}")
    require(c.side_norm in (0, 1, 2), "compression.side_norm",
            f"must be 0 (no side norm), 1 or 2 (q of the norm sent), got {c.side_norm}")
    require(math.isfinite(c.faulty_norm) and c.faulty_norm >= 0, "compression.faulty_norm",
            f"must be a finite number >= 0, got {c.faulty_norm}")
    if c.codec != "none" or c.params:
        message = compression.check(c.codec, model_size(cfg), dict(c.params))
        if message:
            named = [k for k in c.params if k in message]
            raise ConfigError(f"compression.params.{named[0]}" if named else "compression.params", message)
    codec = compression.REGISTRY[c.codec](**dict(c.params))
    vote = agg.name == "majority_vote"
    if c.side_norm:
        require(agg.name == "norm_threshold", "compression.side_norm",
                f"only aggregator norm_threshold sorts on the sent norms (Ghosh et al., Algorithm 1); "
                f"{agg.name} would receive them and ignore them: use --compression.side_norm 0")
        require(not agg.pre, "compression.side_norm",
                f"the pre-aggregation steps {list(agg.pre)} mix the rows, after which the sent norms "
                f"no longer belong to them")
        require(agg.averaging == 0, "compression.side_norm",
                "gradient averaging replaces the rows by running averages, whose norms were not sent")
    if agg.name == "norm_threshold" and not c.side_norm:
        require(codec.embeds_norm, "compression.codec",
                f"{c.codec} carries no norm: every decoded vector has the same norm (sqrt(d) for sign), "
                f"so norm_threshold on the decoded vectors (Ghosh et al., Algorithm 2) cannot tell "
                f"faulty agents apart; send the norm beside it with --compression.side_norm 2 "
                f"(Algorithm 1) or use a codec that embeds it (scaled_sign, qsgd, topk)")
    if vote:
        require(not c.error_feedback, "compression.error_feedback",
                "signSGD with majority vote (aggregator majority_vote) steps by eta_t times the vote, "
                "error feedback by the agents' eta_t-scaled messages: choose one")
    require(not (c.error_feedback and agg.averaging), "compression.error_feedback",
            "error feedback and gradient averaging (aggregator.averaging) are two memories of the same "
            "messages; choose one")
    if c.faulty_norm != 1.0:
        require(c.side_norm or codec.norm_field, "compression.faulty_norm",
                f"the payload of {c.codec} has no norm field to forge (scaled_sign and qsgd have one, "
                f"and --compression.side_norm adds one)")
        require(cfg.byzantine.fault != "none" and cfg.byzantine.count > 0, "compression.faulty_norm",
                "there are no faulty agents to send a forged norm (byzantine.fault or byzantine.count)")


def validate_server_and_agents(cfg, world_size: int | None) -> None:
    """A server on rank 0 and agents on the other ranks: the server mode and the one-round algorithm."""
    from ..rules import attacks

    n = cfg.agents.n
    servers = server_ranks(cfg)
    require(servers >= 1, "server.ranks", f"must be >= 1, got {servers}")
    threads = getattr(getattr(cfg, "server", None), "threads", 1)
    require(threads >= 1, "server.threads", f"must be >= 1, got {threads}")
    config.validate_run_of(cfg, world_size, section="agents", servers=servers, least=1)

    agg = cfg.aggregator
    require(agg.f >= 0, "aggregator.f", f"must be >= 0, got {agg.f}")
    require(0.0 <= agg.averaging < 1.0, "aggregator.averaging",
            f"alpha must be in [0, 1), got {agg.averaging}")
    config.validate_aggregator(agg, n)
    config.validate_byzantine(cfg.byzantine, n, noun="agents", usable=tuple(attacks.REGISTRY),
                              data_kind=config.data_kind(cfg))
