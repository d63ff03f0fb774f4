"""Decentralized mode: BRIDGE over a checked graph (graph.kind), every rank hosting graph nodes.

No server. Every rank builds the same graph from the run's seed and checks
it (minimum honest degree as the screening needs, honest subgraph
connected, Assumption 4 on reduced graphs where affordable) before any
training; then, per iteration t = 1, 2, ... (BRIDGE paper, Algorithm 1):

1. every node sends its model to its neighbours: one neighbourhood
   collective (``Ineighbor_alltoallw`` on a distributed-graph communicator)
   moves the rows each rank's nodes send to the nodes of the other ranks;
   edges between two nodes of one rank are memory reads;
2. every honest node screens what it received (``screening.name``: BRIDGE-T
   trimmed mean, eq 7, or the median / Krum / Bulyan variants, or plain
   averaging for DGD) together with its own model;
3. local step: ``w_j(t+1) = screened - eta_t grad f_j(w_j(t))`` with eta_t
   from ``[optim]`` (BRIDGE's rho(t) = 1/(lambda (t0 + t)) is the inverse
   schedule, the default; ``local.order = screen_then_step``), or a local
   step first and then the exchange and screening (``step_then_screen``;
   with ``local.method = adam`` the CNN experiment of Section 5.2).

Byzantine nodes broadcast random vectors (or any non-omniscient message
fault of the rule library, or ``init_random``: a fresh draw from the model's
own initialization, Section 5.2); with ``byzantine.two_faced`` each
neighbour gets a different one. Their own model only takes local steps.

Evaluations: the honest nodes' test metrics (mean, min and max over the
nodes, reduced to rank 0) and the consensus distance
``max_j ||w_j - mean_honest(w)||``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from .. import seeding
from ..config import ConfigError
from ..graphs import topology
from ..graphs.exchange import GraphPlan, MessagePool
from ..learning import projection, schedules
from ..mpi import comm as mpi
from ..placement import Placement
from ..rules import attacks, screening
from . import driver
from .decentralized_config import DecentralizedConfig, validate_decentralized
from .state import Node

# Consensus counts as reached when max_j ||w_j - mean|| <= CONSENSUS_TOL * ||mean||,
# both finite, and no honest node's model has diverged.
CONSENSUS_TOL = 1e-2


def _graph(cfg: DecentralizedConfig, b: int, ids) -> tuple[np.ndarray, topology.GraphReport, int]:
    """The run's graph of graph.kind, its check and the attempt that gave it (raises GraphError).

    An Erdős–Rényi graph is drawn again (graph.redraw) until it passes; the other kinds are fixed by
    their parameters and pass or fail as they are. ``graph.unchecked`` runs on a graph that fails
    (the first draw), recorded in its report. The report carries the kind and the spectral gap of
    the graph's Metropolis-Hastings weights."""
    graph, scr = cfg.graph, cfg.screening
    checks = dict(b=b, byzantine=ids, max_reduced_graphs=graph.max_reduced_graphs, samples=graph.samples,
                  min_degree=screening.min_degree(scr.name, scr.b), screen=screening.describe(scr.name))
    attempt = 0
    if graph.kind == "erdos_renyi":
        try:
            adj, report, attempt = topology.draw_checked(cfg.nodes.n, graph.p, seed=cfg.run.seed,
                                                         redraw=graph.redraw, **checks)
        except topology.GraphError:
            if not graph.unchecked:
                raise
            adj = topology.erdos_renyi(cfg.nodes.n, graph.p, seeding.numpy_generator(cfg.run.seed, seeding.GRAPH, 0))
            report = topology.check(adj, p=graph.p, rng=seeding.numpy_generator(cfg.run.seed, seeding.GRAPH, 0, 1),
                                    **checks)
    else:
        adj = topology.build(graph.kind, cfg.nodes.n, hops=graph.hops, rows=graph.rows,
                             bridge_nodes=graph.bridge_nodes, extra_edges=graph.extra_edges, file=graph.file,
                             rng=seeding.numpy_generator(cfg.run.seed, seeding.GRAPH, 0))
        report = topology.check(adj, rng=seeding.numpy_generator(cfg.run.seed, seeding.GRAPH, 0, 1), **checks)
        if not report.ok and not graph.unchecked:
            raise topology.GraphError(
                f"the {graph.kind} graph of {cfg.nodes.n} nodes (degrees {min(report.degrees)} to "
                f"{max(report.degrees)}) fails the check for b={b}: {'; '.join(report.failures())}. Choose "
                f"another graph, lower screening.b, or run on it anyway with graph.unchecked true")
    gap = topology.spectral_gap(topology.metropolis_weights(adj))
    return adj, dataclasses.replace(report, kind=graph.kind, spectral_gap=gap, unchecked=not report.ok), attempt


class Decentralized(driver.Protocol):
    mode = "decentralized"
    config_class = DecentralizedConfig
    prog = "python -m mpisim.decentralized"
    description = "Decentralized mode: BRIDGE over a checked graph, every rank hosting graph nodes."
    unit = "iteration"
    traffic = ("protocol",)
    validate = staticmethod(validate_decentralized)

    @classmethod
    def plan(cls, cfg: DecentralizedConfig) -> tuple[GraphPlan, topology.GraphReport, int]:
        """Byzantine set, graph and its check; the same on every rank (raises GraphError)."""
        ids = driver.faulty_ids(cfg, cfg.nodes.n)
        scr = cfg.screening
        b = scr.b if scr.name != "local" else 0
        adj, report, attempt = _graph(cfg, b, ids)
        plan = GraphPlan(Placement(cfg.nodes.n, cfg.nodes.per_rank), frozenset(ids),
                         cfg.byzantine.two_faced, adj)
        if scr.name not in ("local", "dgd"):
            for j in plan.honest():
                message = screening.check(scr.name, len(plan.neighbours(j)), scr.b)
                if message:
                    raise ConfigError("screening.b", f"node {j}: {message}")
        return plan, report, attempt

    @classmethod
    def run_name(cls, cfg: DecentralizedConfig, plan) -> list[str]:
        graph_plan = plan[0]
        fault = cfg.byzantine.fault if graph_plan.byzantine else "nofault"
        return ["bridge", cfg.screening.name, f"b{cfg.screening.b}", fault, f"s{cfg.run.seed}"]

    @classmethod
    def create(cls, world: mpi.Comm, cfg: DecentralizedConfig, plan) -> driver.Role:
        return NodeHost(world, cfg, *plan)

    @classmethod
    def headline(cls, s: dict) -> str:
        byz = s["byzantine_ids"]
        return (f"mpisim decentralized mode: {s['rounds']} iterations of {s['n']} nodes on "
                f"{s['world_size']} ranks, screening {s['screening']} (b={s['b']}), fault {s['fault']}"
                + (f" on nodes {byz}" + (" (two-faced)" if s["two_faced"] else "") if byz else ""))


class ByzantineMessages:
    """Fills the outgoing rows of a rank's Byzantine nodes every iteration."""

    def __init__(self, cfg: DecentralizedConfig, pool: MessagePool, nodes: dict[int, Node], model):
        self.fault = cfg.byzantine.fault
        self.params = dict(cfg.byzantine.params)
        self.attack = attacks.REGISTRY.get(self.fault)
        self.model, self.pool = model, pool
        self.num_byzantine = len(pool.plan.byzantine)
        self.senders = [node for node in nodes.values() if node.byzantine]
        self.rows = {node.id: torch.tensor([pool.message_row[k] for k in pool.message_row if k[0] == node.id])
                     for node in self.senders}
        self.wants_ctx = self.attack is not None and self.attack.wants_ctx
        self.screening = cfg.screening

    def _extra(self, node, t: int, eta: float) -> dict:
        """A rule-aware attack's context: no server pipeline here (None), the node's own model."""
        if not self.wants_ctx:
            return {}
        return {"ctx": attacks.Context(aggregate=None, model=node.model.clone(), round=t, step_size=eta,
                                       n=self.pool.plan.n, f=self.screening.b, rule=self.screening.name)}

    def fill(self, t: int, eta: float) -> None:
        for node in self.senders:
            rows, rng = self.rows[node.id], node.fault_rng
            if self.fault == "init_random":
                messages = torch.stack([self.model.init_sample(rng) for _ in range(len(rows))])
            else:
                own = node.model.expand(len(rows), -1)
                messages = self.attack.fn(own, honest=None, f=self.num_byzantine, rngs=[rng] * len(rows),
                                          **self.params, **self._extra(node, t, eta))
            self.pool.pool.index_copy_(0, rows, messages.to(torch.float32))


def screen_all(pool: MessagePool, screen, *, b: int, exchanging: bool, out: torch.Tensor,
               weights: dict[int, torch.Tensor] | None = None) -> None:
    """``out[k]``: what node k of this rank screens out of its own and its neighbours' models.

    Byzantine nodes only broadcast: their own model just takes local steps
    (faults such as sign_flip start from it), since the graph check only
    guarantees honest nodes enough neighbours to screen. Without exchange
    (the local baseline) every node keeps its own model. A weighted screen
    (scclip) gets node j's row of the mixing matrix, ``weights[j]``.
    """
    for k, j in enumerate(pool.nodes):
        own = pool.models[k]
        if exchanging and j not in pool.plan.byzantine:
            if weights is None:
                out[k] = screen(own, pool.received(j), b=b)
            else:
                out[k] = screen(own, pool.received(j), b=b, weights=weights[j])
        else:
            out[k] = own


class NodeHost(driver.Role):
    """One rank: its nodes' data, models, exchange, screening and local steps."""

    role = "nodes"

    def __init__(self, world: mpi.Comm, cfg: DecentralizedConfig, plan: GraphPlan,
                 report: topology.GraphReport, attempt: int):
        super().__init__()
        self.world, self.cfg, self.plan = world, cfg, plan
        self.graph_report, self.attempt = report, attempt
        rank = world.Get_rank()
        problem = driver.load_problem(cfg, num_shards=plan.n, train=True, test=True)
        self.problem, self.model = problem, problem.model
        self.headline = problem.task.headline
        d = self.model.d
        self.pool = MessagePool(plan, rank, d)
        self.pool.models.copy_(self.model.flat.expand(len(self.pool.nodes), -1))  # same w(0) everywhere
        self.ids = self.pool.nodes
        local, optim = cfg.local, cfg.optim
        adam = local.method == "adam"
        seed = cfg.run.seed
        self.nodes = {
            j: Node(j, problem.sampler(j, cfg), self.pool.models[k],
                    fault_rng=seeding.torch_generator(seed, seeding.ATTACK, j) if j in plan.byzantine else None,
                    optimizer=(lambda params: torch.optim.Adam(params, lr=optim.lr)) if adam else None)
            for k, j in enumerate(self.ids)}
        problem.train = None  # each node keeps its own shard only
        self.byzantine = ByzantineMessages(cfg, self.pool, self.nodes, self.model)
        self.honest_rows = [k for k, j in enumerate(self.ids) if j not in plan.byzantine]
        self.exchanging = cfg.screening.name != "local"
        self.screen = screening.SCREENS[cfg.screening.name]
        self.weights = None
        if self.screen.weighted:  # each node's row of the Metropolis-Hastings weights: own, then neighbours
            mixing = torch.from_numpy(topology.metropolis_weights(plan.adj)).to(torch.float32)
            self.weights = {j: mixing[j, [j, *plan.neighbours(j).tolist()]] for j in self.pool.nodes}
        if cfg.screening.name == "scclip":
            self.screen = functools.partial(self.screen, tau=cfg.screening.tau or None)
        self.b = cfg.screening.b
        self.step_size = schedules.build(optim.schedule, lr=optim.lr, t0=optim.t0, power=optim.power)
        self.grads = torch.zeros((len(self.ids), d))
        self.fresh = torch.zeros((len(self.ids), d))
        self.exchange = mpi.NeighbourExchange(world, d=d, send_rows=self.pool.send_rows,
                                              recv_rows=self.pool.recv_counts)

    # ---- one iteration

    def _gradients(self) -> None:
        """grads[k] = gradient of node k's local loss at its own model (plus the l2 term)."""
        for k, node in enumerate(self.nodes.values()):
            self.model.flat.copy_(node.model)
            node.losses.add(self.model.gradients([node.sampler.batch()], self.grads[k:k + 1])[0])
        if self.cfg.local.l2:
            self.grads.add_(self.pool.models, alpha=self.cfg.local.l2)

    def _exchange_and_screen(self, t: int, eta: float, step: float | None) -> None:
        if self.exchanging:
            self.byzantine.fill(t, eta)
            with self.timer("exchange"):
                self.exchange.exchange(self.pool.pool.numpy(), self.pool.incoming.numpy(),
                                       traffic=self.traffic)
        with self.timer("screening"):
            screen_all(self.pool, self.screen, b=self.b, exchanging=self.exchanging, out=self.fresh,
                       weights=self.weights)
            if step is not None:
                self.fresh.sub_(self.grads, alpha=step)
            projection.project_ball_(self.fresh, self.cfg.optim.project_radius)
            self.pool.models.copy_(self.fresh)

    def step(self, t: int) -> None:
        eta = self.step_size(t - 1)
        with self.timer("local_step"):
            self._gradients()
            if self.cfg.local.method == "adam":
                for k, node in enumerate(self.nodes.values()):
                    node.param.grad = self.grads[k]
                    node.optimizer.param_groups[0]["lr"] = eta
                    node.optimizer.step()
            elif self.cfg.local.order == "step_then_screen":
                self.pool.models.sub_(self.grads, alpha=eta)
        screened_step = self.cfg.local.method == "gd" and self.cfg.local.order == "screen_then_step"
        self._exchange_and_screen(t, eta, step=eta if screened_step else None)

    def train_loss(self) -> tuple[float, int]:
        windows = [node.losses.take() for node in self.nodes.values()]
        honest = [w for node, w in zip(self.nodes.values(), windows) if not node.byzantine]
        return sum(w[0] for w in honest), sum(w[1] for w in honest)

    # ---- evaluation

    def evaluate(self) -> dict | None:
        with self.timer("eval"):
            per_node = []
            for k in self.honest_rows:
                self.model.flat.copy_(self.pool.models[k])
                per_node.append(self.problem.evaluate())
            stats = self._reduce_stats(per_node)
            consensus = self._consensus()
        if stats is None:
            return None
        return {**stats, **consensus}

    def _reduce_stats(self, per_node: list[dict]) -> dict | None:
        """Mean, min and max over the honest nodes of every test metric, on rank 0 (collective).

        A non-finite value makes that metric's mean, min and max NaN: MPI's
        MIN and MAX on NaN are not defined, so non-finite values are counted
        apart and replaced by 0 before the reductions.
        """
        names = self.problem.task.metric_names
        values = np.array([[row[m] for m in names] for row in per_node], dtype=np.float64).reshape(-1, len(names))
        bad = ~np.isfinite(values)
        clean = np.where(bad, 0.0, values)
        sums = mpi.reduce_array(self.world, np.concatenate([clean.sum(0), bad.sum(0)]), op="sum")
        lows = mpi.reduce_array(self.world, np.where(bad, np.inf, values).min(0, initial=np.inf), op="min")
        highs = mpi.reduce_array(self.world, np.where(bad, -np.inf, values).max(0, initial=-np.inf), op="max")
        if sums is None:
            return None
        honest = len(self.plan.honest())
        out = {}
        for m, name in enumerate(names):
            broken = sums[len(names) + m] > 0
            out[name] = math.nan if broken else sums[m] / honest
            out[f"{name}_min"] = math.nan if broken else float(lows[m])
            out[f"{name}_max"] = math.nan if broken else float(highs[m])
        return out

    def _consensus(self) -> dict:
        """max_j ||w_j - mean_honest(w)|| from one Allreduce (the mean) and one Reduce (the max)."""
        d = self.model.d
        honest_models = self.pool.models[self.honest_rows] if self.honest_rows else None
        local_sum = (honest_models.double().sum(0) if honest_models is not None
                     else torch.zeros(d, dtype=torch.float64)).numpy()
        mean = mpi.allreduce_array(self.world, local_sum, op="sum") / len(self.plan.honest())
        distance = 0.0
        if honest_models is not None:
            distance = float(torch.linalg.vector_norm(honest_models.double() - torch.from_numpy(mean),
                                                      dim=1).max())
        # NaN compares false in MPI's MAX: send inf for a non-finite distance.
        top = mpi.reduce_array(self.world, np.array([distance if math.isfinite(distance) else math.inf]),
                               op="max")
        if top is None:
            return {}
        norm = float(np.linalg.norm(mean))
        relative = float(top[0]) / norm if norm > 0 and math.isfinite(norm) else math.nan
        return {"consensus_distance": float(top[0]), "consensus_relative": relative}

    # ---- the end of the run

    def final_arrays(self) -> dict[str, np.ndarray]:
        """Every node's final model, rows in node order, on rank 0 (collective)."""
        every = np.empty((self.plan.n, self.model.d), dtype=np.float32) if self.world.Get_rank() == 0 else None
        mpi.gatherv_rows(self.world, self.pool.models.numpy(), every, root=0,
                         rows_per_rank=self.plan.placement.counts())
        return {"models": every} if every is not None else {}

    def artefacts(self) -> dict:
        return {"graph.json": {"attempt": self.attempt, "edges": np.argwhere(np.triu(self.plan.adj)).tolist(),
                               "report": self.graph_report.as_dict()}}

    def summary(self, final: dict, diverged: bool) -> dict:
        cfg, plan = self.cfg, self.plan
        local = cfg.local
        relative = final.get("consensus_relative")
        reached = (not diverged and driver.finite(final.get("consensus_distance"))
                   and driver.finite(relative) and relative < CONSENSUS_TOL)
        return {"n": plan.n, "d": self.model.d, "nodes_per_rank": plan.placement.per_rank,
                "screening": cfg.screening.name, "b": cfg.screening.b,
                "byzantine_ids": sorted(plan.byzantine),
                "fault": cfg.byzantine.fault if plan.byzantine else "none", "two_faced": plan.two_faced,
                "order": "adam_then_screen" if local.method == "adam" else local.order,
                "graph": self.graph_report.as_dict(), "graph_attempt": self.attempt,
                "consensus_reached": reached, "test_samples": len(self.problem.y_test)}

    def describe(self, s: dict) -> list[str]:
        final = s["final"]
        graph = s["graph"]
        how = graph["assumption4_detail"].split(":")[0]
        kind = graph.get("kind", "erdos_renyi")  # summaries written before graph.kind have none
        kind = f"{kind} p={graph['p']}" if kind == "erdos_renyi" else kind
        lines = [f"graph: {kind}, min honest degree {graph['min_honest_degree']}, "
                 f"Assumption 4 {graph['assumption4']}" + (f" ({how})" if how else "")
                 + (f", spectral gap {graph['spectral_gap']:.3g}" if graph.get("spectral_gap") is not None else "")
                 + (" (UNCHECKED: it fails the check)" if graph.get("unchecked") else "")]

        def pct(v):
            return "n/a" if not driver.finite(v) else f"{100 * v:.2f}%"

        def num(v):
            return "n/a" if not driver.finite(v) else f"{v:.4g}"

        if "test_accuracy" in final:
            lines.append(f"honest nodes' test accuracy: mean {pct(final['test_accuracy'])}, "
                         f"min {pct(final['test_accuracy_min'])}, max {pct(final['test_accuracy_max'])}")
        else:
            key = "distance_to_optimum" if "distance_to_optimum" in final else "test_loss"
            lines.append(f"honest nodes' {key.replace('_', ' ')}: mean {num(final[key])}, "
                         f"min {num(final[f'{key}_min'])}, max {num(final[f'{key}_max'])}")
        rel = final.get("consensus_relative")
        if s["diverged"]:
            lines.append("an honest node's model diverged (test loss not finite): lower --optim.lr, or, "
                         "if the screening is dgd, use a robust one against Byzantine nodes")
        lines.append(f"consensus distance {num(final.get('consensus_distance'))} "
                     f"({'n/a' if not driver.finite(rel) else f'{rel:.2e}'} of the mean model's norm; "
                     f"{'reached' if s['consensus_reached'] else 'not reached'})")
        return lines

    def state_dict(self) -> dict:
        return {"nodes": {j: node.state_dict() for j, node in self.nodes.items()}}

    def load_state_dict(self, state: dict) -> None:
        for j, node in self.nodes.items():
            node.load_state_dict(state["nodes"][j])
