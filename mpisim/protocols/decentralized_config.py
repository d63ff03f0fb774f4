"""The decentralized mode's own configuration: [nodes], [graph], [screening], [local], its
[byzantine] and its validator (the shared sections are :mod:`mpisim.config`'s)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from .. import config
from ..config import ByzantineConfig, DataConfig, HostsConfig, ModelConfig, OptimConfig, RunSections, option, require

__all__ = ["GraphConfig", "ScreeningConfig", "LocalConfig", "NodeByzantineConfig", "DecentralizedConfig",
           "validate_decentralized", "FAULTS_EXTRA"]


@dataclass(frozen=True)
class GraphConfig:
    """[graph]: the communication graph and how hard it is checked (BRIDGE, Assumption 4)."""

    kind: str = option("erdos_renyi", "erdos_renyi (G(n, p)), ring (graph.hops), torus (2-D, graph.rows), complete, "
                                      "two_cliques (joined by a path of graph.bridge_nodes nodes), dumbbell (two "
                                      "cliques, one edge and graph.extra_edges random ones between them), file "
                                      "(graph.file)")
    p: float = option(0.5, "Erdős–Rényi edge probability")
    hops: int = option(1, "ring: each node is joined to the nodes within this many steps (degree 2 hops)")
    rows: int = option(0, "torus: rows of the grid, a divisor of nodes.n (0: the most square shape, both sides >= 3)")
    bridge_nodes: int = option(0, "two_cliques: nodes on the path between the two cliques (0: one edge)")
    extra_edges: int = option(0, "dumbbell: random edges between the two cliques beyond the bridge {0, n-1}")
    file: str = option("", "file: an edge list, one edge 'i j' a line (node ids 0..nodes.n-1, '#' comments)")
    unchecked: bool = option(False, "run on a graph that fails the check (degrees, connectivity, Assumption 4), "
                                    "recorded in the summary; a screening still needs its neighbours")
    redraw: int = option(0, "erdos_renyi: draw again up to this many times when a graph fails the check (0: fail)")
    max_reduced_graphs: int = option(200_000, "check Assumption 4 on every reduced graph when there are at most this "
                                              "many")
    samples: int = option(2_000, "otherwise check this many random reduced graphs (0: skip)")


@dataclass(frozen=True)
class ScreeningConfig:
    """[screening]: how a node combines its neighbours' models (BRIDGE, eq 7 and variants)."""

    name: str = option("bridge_t", "bridge_t (trimmed mean, eq 7), bridge_m, bridge_k, bridge_b, scclip "
                                   "(self-centred clipping), dgd (plain average, eq 3), local (no exchange)")
    b: int = option(2, "number of Byzantine neighbours screened out per side (BRIDGE's b)")
    tau: float = option(0.0, "scclip: the clipping radius (0: the authors' adaptive radius, the second largest "
                             "distance from the node to a neighbour)")


@dataclass(frozen=True)
class LocalConfig:
    """[local]: each node's local update and its order with the exchange."""

    method: str = option("gd", "local update: gd (w <- screened - eta_t grad, eta_t from [optim]) or adam (BRIDGE "
                               "Section 5.2, learning rate eta_t from [optim])")
    l2: float = option(0.0, "weight of (l2 / 2) ||w||^2 added to every node's loss (strong convexity)")
    order: str = option("screen_then_step", "screen_then_step: screen w(t) and subtract eta_t grad f(w(t)) (eq 7); "
                                            "step_then_screen: local step, then exchange and screen (Section 5.2)")


@dataclass(frozen=True)
class NodeByzantineConfig(ByzantineConfig):
    """[byzantine] of the decentralized mode: Byzantine nodes, and whether they are two-faced."""

    fault: str = option("random", "what Byzantine nodes broadcast: init_random (a fresh draw from the model's "
                                  "initialization), a message fault of the rule library (random, sign_flip, "
                                  "gaussian, nan, inf, huge, ...), or none")
    count: int = option(2, "number of Byzantine nodes (ignored when fault is none)")
    ids: tuple[int, ...] = option((), "ids (0-based) of the Byzantine nodes; default: drawn from the seed")
    two_faced: bool = option(False, "send a different vector to each neighbour")


def _decentralized_data() -> DataConfig:
    return DataConfig(batch_size=0)


def _decentralized_model() -> ModelConfig:
    return ModelConfig(name="linear", init="zero")


def _decentralized_optim() -> OptimConfig:
    # BRIDGE's rho(t) = 1 / (lambda (t0 + t)) with lambda = 1, t0 = 500.
    return OptimConfig(lr=0.002, schedule="inverse", t0=500.0)


@dataclass(frozen=True)
class DecentralizedConfig(RunSections):
    """Configuration of ``python -m mpisim.decentralized``."""

    data: DataConfig = field(default_factory=_decentralized_data)
    model: ModelConfig = field(default_factory=_decentralized_model)
    optim: OptimConfig = field(default_factory=_decentralized_optim)
    nodes: HostsConfig = field(default_factory=lambda: HostsConfig(n=20))
    graph: GraphConfig = field(default_factory=GraphConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    byzantine: NodeByzantineConfig = field(default_factory=NodeByzantineConfig)

    # Fields that moved, with where they went: a user's old command line gets told.
    moved: ClassVar[Mapping[str, str]] = {
        "local.lam": "the step size is [optim]: BRIDGE's rho(t) = 1/(lam (t0 + t)) is --optim.schedule "
                     "inverse --optim.lr 1/(lam t0) --optim.t0 t0 (the default: lam = 1, t0 = 500)",
        "local.t0": "it is --optim.t0 (with --optim.schedule inverse, the default here)",
        "local.lr": "Adam's learning rate is --optim.lr (with --optim.schedule constant for a fixed one)",
    }


FAULTS_EXTRA = ("init_random",)  # faults of the decentralized mode itself


def _prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, math.isqrt(n) + 1))


def validate_decentralized(cfg: DecentralizedConfig, world_size: int | None) -> None:
    """Raise ConfigError if ``cfg`` cannot run on ``world_size`` ranks (before the graph is drawn)."""
    from ..graphs import topology
    from ..rules import attacks, screening

    n = cfg.nodes.n
    config.validate_run_of(cfg, world_size, section="nodes", servers=0, least=2)

    graph = cfg.graph
    require(graph.kind in topology.KINDS, "graph.kind",
            f"unknown graph kind {graph.kind!r}; known: {', '.join(topology.KINDS)}")
    require(0.0 < graph.p <= 1.0, "graph.p", f"edge probability must be in (0, 1], got {graph.p}")
    if graph.kind == "ring":
        require(n >= 3 and 1 <= graph.hops and 2 * graph.hops < n, "graph.hops",
                f"a ring of {n} nodes takes hops in [1, {max(1, (n - 1) // 2)}] (degree 2 hops < n), "
                f"got {graph.hops}")
    if graph.kind == "torus":
        require(graph.rows >= 0, "graph.rows", f"must be >= 0 (0: the most square), got {graph.rows}")
        require(topology.torus_shape(n, graph.rows) is not None, "graph.rows" if graph.rows else "graph.kind",
                f"a torus needs rows x cols = nodes.n = {n} with both >= 3"
                + (f"; {graph.rows} rows do not fit" if graph.rows else
                   f"; {n} has no such factors ({'prime' if _prime(n) else 'too small'})"))
    if graph.kind == "two_cliques":
        m = graph.bridge_nodes
        require(m >= 0 and (n - m) % 2 == 0 and (n - m) // 2 >= 2, "graph.bridge_nodes",
                f"nodes.n - bridge_nodes must be even and leave two cliques of at least 2 nodes; got nodes.n = {n}, "
                f"bridge_nodes = {m}")
    if graph.kind == "dumbbell":
        require(n >= 4 and n % 2 == 0, "nodes.n", f"a dumbbell needs an even number of nodes >= 4, got {n}")
        require(0 <= graph.extra_edges <= (n // 2) ** 2 - 1, "graph.extra_edges",
                f"must be in [0, {(n // 2) ** 2 - 1}] for two cliques of {n // 2}, got {graph.extra_edges}")
    if graph.kind == "file":
        require(graph.file != "", "graph.file", "graph.kind file needs an edge list: --graph.file PATH")
        try:
            topology.read_edge_list(graph.file, n)
        except OSError as exc:
            raise config.ConfigError("graph.file", f"cannot read {graph.file}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise config.ConfigError("graph.file", f"{graph.file}: {exc}") from None
    require(graph.redraw >= 0, "graph.redraw", f"must be >= 0, got {graph.redraw}")
    require(graph.max_reduced_graphs >= 0, "graph.max_reduced_graphs",
            f"must be >= 0, got {graph.max_reduced_graphs}")
    require(graph.samples >= 0, "graph.samples", f"must be >= 0, got {graph.samples}")

    scr = cfg.screening
    require(scr.name in screening.SCREENS, "screening.name",
            f"unknown screening {scr.name!r}; known: {', '.join(screening.SCREENS)}")
    require(scr.b >= 0, "screening.b", f"must be >= 0, got {scr.b}")
    require(math.isfinite(scr.tau) and scr.tau >= 0, "screening.tau",
            f"must be a radius >= 0 (0: the adaptive one), got {scr.tau}")
    need = topology.required_degree(scr.b if scr.name != "local" else 0,
                                    min_degree=screening.min_degree(scr.name, scr.b))
    require(need <= n - 1, "screening.b",
            f"{screening.describe(scr.name)} with b={scr.b} needs every honest node to have at least "
            f"{need} neighbours, impossible with n = {n} nodes (at most n - 1 = {n - 1})")
    require(graph.redraw <= topology.MAX_REDRAW, "graph.redraw",
            f"must be at most {topology.MAX_REDRAW:,} (each redraw is a new graph to check), "
            f"got {graph.redraw}")

    local = cfg.local
    require(local.method in ("gd", "adam"), "local.method", f"must be gd or adam, got {local.method!r}")
    require(local.order in ("screen_then_step", "step_then_screen"), "local.order",
            f"must be screen_then_step or step_then_screen, got {local.order!r}")
    require(math.isfinite(local.l2) and local.l2 >= 0, "local.l2", f"must be >= 0, got {local.l2}")

    usable = [name for name, a in attacks.REGISTRY.items() if a.kind == "message" and not a.omniscient]
    config.validate_byzantine(cfg.byzantine, n, noun="nodes", usable=usable, data_kind=config.data_kind(cfg),
                        extra_faults=FAULTS_EXTRA,
                        why_not=" (omniscient and data faults are server-mode only)")
