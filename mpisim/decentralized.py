"""Decentralized mode: BRIDGE over an Erdős–Rényi graph, every rank hosting graph nodes.

    mpiexec -n 20 python -m mpisim.decentralized [--config FILE] [--section.field VALUE ...]

No server. Every rank builds the same graph from the run's seed and checks
it (minimum honest degree > 2b, honest subgraph connected, Assumption 4 on
reduced graphs where affordable) before any training; then, per iteration
(BRIDGE paper, Algorithm 1):

1. every node sends its model to its neighbours: one neighbourhood
   collective (``Ineighbor_alltoallw`` on a distributed-graph communicator)
   moves the rows each rank's nodes send to the nodes of the other ranks;
   edges between two nodes of one rank are memory reads;
2. every honest node screens what it received (``screening.name``: BRIDGE-T
   trimmed mean, eq 7, or the median / Krum / Bulyan variants, or plain
   averaging for DGD) together with its own model;
3. local step: ``w_j(t+1) = screened - rho(t) grad f_j(w_j(t))`` with
   ``rho(t) = 1/(lam (t0 + t))`` (``local.order = screen_then_step``), or,
   for the CNN experiment of Section 5.2, a local Adam step first and then
   the exchange and screening (``step_then_screen``).

Byzantine nodes broadcast random vectors (or any non-omniscient message
fault of the rule library, or ``init_random``: a fresh draw from the model's
own initialization, Section 5.2); with ``byzantine.two_faced`` each
neighbour gets a different one.

Every ``run.eval_every`` iterations the honest nodes evaluate on the test
set; mean/min/max accuracy and loss, and the consensus distance
``max_j ||w_j - mean_honest(w)||``, are reduced to rank 0 (one Allreduce,
a few Reduce calls) and logged.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import config, datasets as data, entry, metrics, seeding
from .graphs import topology
from .learning import models
from .mpi import comm as mpi
from .rules import attacks, screening
from .mpi.comm import MPI
from .config import ConfigError, DecentralizedConfig

ROOT = 0


@dataclass(frozen=True)
class Plan:
    """Who hosts which node, which nodes are Byzantine, and the graph; the same on every rank."""

    n: int
    per_rank: int
    byzantine: frozenset[int]
    two_faced: bool
    adj: np.ndarray  # (n, n) bool, symmetric

    @property
    def num_ranks(self) -> int:
        return math.ceil(self.n / self.per_rank)

    def nodes_of(self, rank: int) -> range:
        start = rank * self.per_rank
        return range(start, min(start + self.per_rank, self.n))

    def rank_of(self, node: int) -> int:
        return node // self.per_rank

    def neighbours(self, node: int) -> np.ndarray:
        return np.flatnonzero(self.adj[node])

    def honest(self) -> list[int]:
        return [j for j in range(self.n) if j not in self.byzantine]

    def messages_of(self, node: int, to: Sequence[int]) -> list[tuple[int, int]]:
        """The distinct messages ``node`` sends to the nodes ``to``: (node, -1) for one vector to
        all, (node, j) for the vector meant for j alone (two-faced Byzantine nodes)."""
        if node in self.byzantine and self.two_faced:
            return [(node, int(j)) for j in to]
        return [(node, -1)] if len(to) else []


class RankState:
    """The models and message rows of one rank's nodes, in one float32 pool.

    Pool rows: [models of the hosted nodes | outgoing Byzantine messages |
    rows received from other ranks]. Models are row views, so the exchange
    sends straight from them.
    """

    def __init__(self, plan: Plan, rank: int, d: int):
        self.plan, self.rank, self.d = plan, rank, d
        self.nodes = list(plan.nodes_of(rank))
        self.local = {j: k for k, j in enumerate(self.nodes)}
        row = len(self.nodes)
        # Outgoing Byzantine messages, one row per distinct message.
        self.message_row: dict[tuple[int, int], int] = {}
        for i in self.nodes:
            if i in plan.byzantine:
                for key in plan.messages_of(i, plan.neighbours(i)):
                    self.message_row[key] = row
                    row += 1
        self.num_out = row
        # What goes to each other rank, and what comes from it, in a canonical order.
        send_rows: dict[int, list[int]] = {}
        recv_keys: dict[int, list[tuple[int, int]]] = {}
        for s in range(plan.num_ranks):
            if s == rank:
                continue
            theirs = set(plan.nodes_of(s))
            out = []
            for i in self.nodes:
                targets = [j for j in plan.neighbours(i) if j in theirs]
                for key in plan.messages_of(i, targets):
                    out.append(self.row_of_message(key))
            if out:
                send_rows[s] = out
            incoming = []
            for i in plan.nodes_of(s):
                targets = [j for j in plan.neighbours(i) if j in self.local]
                incoming += plan.messages_of(i, targets)
            if incoming:
                recv_keys[s] = incoming
        self.send_rows = send_rows
        self.recv_keys = recv_keys
        num_in = sum(len(k) for k in recv_keys.values())
        self.pool = torch.zeros((self.num_out + num_in, d), dtype=torch.float32)
        self.models = self.pool[:len(self.nodes)]
        self.outgoing = self.pool[:self.num_out]
        self.incoming = self.pool[self.num_out:]
        self.exchange: mpi.NeighbourExchange | None = None
        # Pool row of every message a hosted node receives, in ascending neighbour id.
        remote_row = {}
        base = self.num_out
        for s in sorted(recv_keys):
            for key in recv_keys[s]:
                remote_row[key] = base
                base += 1
        self.inbox: dict[int, torch.Tensor] = {}
        for j in self.nodes:
            rows = []
            for i in plan.neighbours(j):
                key = (int(i), j) if (i in plan.byzantine and plan.two_faced) else (int(i), -1)
                rows.append(self.row_of_message(key) if i in self.local else remote_row[key])
            self.inbox[j] = torch.tensor(rows, dtype=torch.long)

    def row_of_message(self, key: tuple[int, int]) -> int:
        """Pool row holding a message sent by a node of this rank."""
        sender = key[0]
        if sender in self.plan.byzantine:
            return self.message_row[key]
        return self.local[sender]

    def connect(self, world: MPI.Comm) -> None:
        """Create the neighbourhood communicator (collective over ``world``)."""
        recv_rows = {s: len(keys) for s, keys in self.recv_keys.items()}
        self.exchange = mpi.NeighbourExchange(world, d=self.d, send_rows=self.send_rows,
                                              recv_rows=recv_rows)

    def received(self, node: int) -> torch.Tensor:
        """(degree, d) matrix of what ``node`` received, rows in ascending neighbour id."""
        return self.pool.index_select(0, self.inbox[node])


class Byzantine:
    """Fills the outgoing rows of a rank's Byzantine nodes every iteration."""

    def __init__(self, cfg: DecentralizedConfig, plan: Plan, state: RankState, model: models.FlatModel):
        self.fault = cfg.byzantine.fault
        self.params = dict(cfg.byzantine.params)
        self.attack = attacks.REGISTRY.get(self.fault)
        self.model = model
        self.state = state
        self.num_byzantine = len(plan.byzantine)
        # One generator per Byzantine node: the same draws whatever the packing.
        self.rngs = {i: seeding.torch_generator(cfg.run.seed, seeding.ATTACK, i)
                     for i in state.nodes if i in plan.byzantine}
        self.keys = {i: [k for k in state.message_row if k[0] == i] for i in self.rngs}

    def fill(self) -> None:
        for i, rng in self.rngs.items():
            keys = self.keys[i]
            rows = torch.tensor([self.state.message_row[k] for k in keys])
            if self.fault == "init_random":
                messages = torch.stack([self.model.init_sample(rng) for _ in keys])
            else:
                own = self.state.models[self.state.local[i]].expand(len(keys), -1)
                messages = self.attack.fn(own, honest=None, f=self.num_byzantine, rngs=[rng] * len(keys),
                                          **self.params)
            self.state.pool.index_copy_(0, rows, messages.to(torch.float32))


def screen_all(state: RankState, screen, *, b: int, exchanging: bool, out: torch.Tensor) -> None:
    """``out[k]``: what node k of this rank screens out of its own and its neighbours' models.

    Byzantine nodes only broadcast: their own model just takes local steps
    (faults such as sign_flip start from it), since the graph check only
    guarantees honest nodes enough neighbours to screen. Without exchange
    (the local baseline) every node keeps its own model.
    """
    for k, j in enumerate(state.nodes):
        own = state.models[k]
        if exchanging and j not in state.plan.byzantine:
            out[k] = screen(own, state.received(j), b=b)
        else:
            out[k] = own


def make_plan(cfg: DecentralizedConfig) -> tuple[Plan, topology.GraphReport, int]:
    """Byzantine set, graph and its check; the same on every rank (raises GraphError)."""
    byz = cfg.byzantine
    faulty = byz.fault != "none" and byz.count > 0
    ids = seeding.byzantine_ids(cfg.run.seed, cfg.nodes.n, byz.count, byz.ids) if faulty else ()
    b = cfg.screening.b if cfg.screening.name != "local" else 0
    adj, report, attempt = topology.draw_checked(
        cfg.nodes.n, cfg.graph.p, b=b, byzantine=ids, seed=cfg.run.seed, redraw=cfg.graph.redraw,
        max_reduced_graphs=cfg.graph.max_reduced_graphs, samples=cfg.graph.samples)
    plan = Plan(cfg.nodes.n, cfg.nodes.per_rank, frozenset(ids), cfg.byzantine.two_faced, adj)
    if cfg.screening.name not in ("local", "dgd"):
        for j in plan.honest():
            message = screening.check(cfg.screening.name, len(plan.neighbours(j)), cfg.screening.b)
            if message:
                raise ConfigError("screening.b", f"node {j}: {message}")
    return plan, report, attempt


def run_rank(world: MPI.Comm, cfg: DecentralizedConfig, plan: Plan, report: topology.GraphReport,
             attempt: int) -> dict | None:
    """One rank: its nodes' data, models, exchange, screening and local steps. Returns the summary on rank 0."""
    rank = world.Get_rank()
    timer, traffic = metrics.PhaseTimer(), mpi.Traffic()
    start = time.perf_counter()
    train = data.load(cfg.data.name, cfg.data.root, "train")
    test = data.load(cfg.data.name, cfg.data.root, "test")
    shards = data.iid_partition(len(train), plan.n, cfg.run.seed, subset=cfg.data.train_size)
    index = np.arange(min(cfg.data.test_size or len(test), len(test)))
    x_test, y_test = test.tensors(index)
    model = models.build(cfg.model.name, input_shape=train.input_shape, num_classes=train.num_classes,
                         seed=cfg.run.seed, init=cfg.model.init)
    d = model.d
    state = RankState(plan, rank, d)
    for k in range(len(state.nodes)):
        state.models[k].copy_(model.flat)  # every node starts from the same w(0)
    nodes = state.nodes
    batch = cfg.data.batch_size
    local_data = [data.AgentData(train, shards[j], agent_id=j, seed=cfg.run.seed,
                                 batch_size=batch or len(shards[j])) for j in nodes]
    full_batches = [None if batch else local_data[k].all() for k in range(len(nodes))]
    del train
    byzantine = Byzantine(cfg, plan, state, model)
    honest_local = [k for k, j in enumerate(nodes) if j not in plan.byzantine]
    exchanging = cfg.screening.name != "local"
    screen = screening.SCREENS[cfg.screening.name]
    b = cfg.screening.b
    local = cfg.local
    grads = torch.zeros((len(nodes), d))
    fresh = torch.zeros((len(nodes), d))
    optimizers = []
    if local.method == "adam":
        for k in range(len(nodes)):
            param = torch.nn.Parameter(state.models[k], requires_grad=False)
            optimizers.append((param, torch.optim.Adam([param], lr=local.lr)))
    state.connect(world)

    run_dir, log = None, None
    if rank == ROOT:
        name = cfg.run.name or metrics.default_run_name(
            ["bridge", cfg.screening.name, f"b{b}", cfg.byzantine.fault if plan.byzantine else "nofault",
             f"s{cfg.run.seed}"])
        run_dir = metrics.unique_dir(cfg.run.out_dir, name)
        log = metrics.RunLog(run_dir, config.dumps(cfg))
        metrics.atomic_write(run_dir / "graph.json", metrics.to_json(
            {"attempt": attempt, "edges": np.argwhere(np.triu(plan.adj)).tolist(),
             "report": report.as_dict()}, indent=1) + "\n")

    def gradients() -> None:
        """grads[k] = gradient of node k's local loss at its own model (plus the l2 term)."""
        for k in range(len(nodes)):
            model.flat.copy_(state.models[k])
            model.gradients([full_batches[k] or local_data[k].batch()], grads[k:k + 1])
        if local.l2:
            grads.add_(state.models, alpha=local.l2)

    def adam_step() -> None:
        gradients()
        for k, (param, optimizer) in enumerate(optimizers):
            param.grad = grads[k]
            optimizer.step()

    def exchange_and_screen(step: float | None) -> None:
        if exchanging:
            byzantine.fill()
            with timer("exchange"):
                state.exchange.exchange(state.pool.numpy(), state.incoming.numpy(), traffic=traffic)
        with timer("screening"):
            screen_all(state, screen, b=b, exchanging=exchanging, out=fresh)
            if step is not None:
                fresh.sub_(grads, alpha=step)
            state.models.copy_(fresh)

    def evaluate(iteration: int) -> dict:
        with timer("eval"):
            accs, losses = [], []
            for k in honest_local:
                model.flat.copy_(state.models[k])
                loss, acc = model.evaluate(x_test, y_test, batch_size=1000)
                accs.append(acc)
                losses.append(loss)
            stats = _reduce_stats(world, accs, losses, len(plan.honest()))
            consensus = _consensus(world, state.models[honest_local] if honest_local else None,
                                   len(plan.honest()), d)
        if rank != ROOT:
            return {}
        record = {"iteration": iteration, "time": time.perf_counter() - loop_start, **stats, **consensus,
                  "bytes_sent": traffic.sent.get("protocol", 0)}
        log.log(record)
        return record

    setup_time = time.perf_counter() - start
    world.Barrier()
    loop_start = time.perf_counter()
    eval_at = set(range(0, cfg.run.rounds + 1, cfg.run.eval_every)) | {cfg.run.rounds}
    last = evaluate(0)
    progress = entry.progress_bar(cfg.run.rounds, rank == ROOT and cfg.run.progress, unit="it")
    for t in range(cfg.run.rounds):
        if local.method == "adam":
            with timer("local_step"):
                adam_step()
            exchange_and_screen(step=None)
        elif local.order == "step_then_screen":
            rho = 1.0 / (local.lam * (local.t0 + t))
            with timer("local_step"):
                gradients()
                state.models.sub_(grads, alpha=rho)
            exchange_and_screen(step=None)
        else:
            rho = 1.0 / (local.lam * (local.t0 + t))
            with timer("local_step"):
                gradients()
            exchange_and_screen(step=rho)
        if t + 1 in eval_at:
            last = evaluate(t + 1) or last
            if last:
                progress.set_postfix(acc=f"{last['accuracy_mean']:.4f}", refresh=False)
        progress.update(1)
    progress.close()
    loop_time = time.perf_counter() - loop_start
    per_rank = world.gather({"rank": rank, "nodes": nodes, "peak_rss": metrics.peak_rss_bytes(),
                             "phases": timer.totals, "traffic": traffic.as_dict()}, root=ROOT)
    state.exchange.free()
    if cfg.run.save_model:  # every node's final model, rows in node order
        every = np.empty((plan.n, d), dtype=np.float32) if rank == ROOT else None
        mpi.gatherv_rows(world, state.models.numpy(), every, root=ROOT,
                         rows_per_rank=[len(plan.nodes_of(r)) for r in range(plan.num_ranks)])
        if rank == ROOT:
            log.save_array("models", every)
    if rank != ROOT:
        return None
    summary = {
        "mode": "decentralized",
        "run_dir": str(run_dir),
        "iterations": cfg.run.rounds,
        "n": plan.n,
        "d": d,
        "world_size": world.Get_size(),
        "nodes_per_rank": plan.per_rank,
        "screening": cfg.screening.name,
        "b": b,
        "byzantine_ids": sorted(plan.byzantine),
        "fault": cfg.byzantine.fault if plan.byzantine else "none",
        "two_faced": plan.two_faced,
        "order": "adam_then_screen" if local.method == "adam" else local.order,
        "graph": report.as_dict(),
        "graph_attempt": attempt,
        "final": last,
        "consensus_reached": last.get("consensus_relative") is not None
        and last["consensus_relative"] < CONSENSUS_TOL,
        "test_samples": len(y_test),
        "setup_seconds": setup_time,
        "loop_seconds": loop_time,
        "iterations_per_second": cfg.run.rounds / loop_time,
        "ranks": per_rank,
    }
    log.summary(summary)
    return summary


# Consensus counts as reached when max_j ||w_j - mean|| <= CONSENSUS_TOL * ||mean||.
CONSENSUS_TOL = 1e-2


def _reduce_stats(world: MPI.Comm, accs: list[float], losses: list[float], honest: int) -> dict:
    """Mean/min/max of the honest nodes' accuracy and loss on rank 0 (every rank calls it)."""
    local = np.array([sum(accs), sum(losses)], dtype=np.float64)
    total = np.zeros(2) if world.Get_rank() == ROOT else None
    world.Reduce(local, total, op=MPI.SUM, root=ROOT)
    low = np.array([min(accs, default=np.inf), min(losses, default=np.inf)])
    high = np.array([max(accs, default=-np.inf), max(losses, default=-np.inf)])
    lows = np.zeros(2) if world.Get_rank() == ROOT else None
    highs = np.zeros(2) if world.Get_rank() == ROOT else None
    world.Reduce(low, lows, op=MPI.MIN, root=ROOT)
    world.Reduce(high, highs, op=MPI.MAX, root=ROOT)
    if world.Get_rank() != ROOT:
        return {}
    return {"accuracy_mean": total[0] / honest, "accuracy_min": lows[0], "accuracy_max": highs[0],
            "loss_mean": total[1] / honest, "loss_min": lows[1], "loss_max": highs[1]}


def _consensus(world: MPI.Comm, honest_models: torch.Tensor | None, honest: int, d: int) -> dict:
    """max_j ||w_j - mean_honest(w)|| from one Allreduce (the mean) and one Reduce (the max)."""
    local_sum = (honest_models.double().sum(0) if honest_models is not None
                 else torch.zeros(d, dtype=torch.float64)).numpy()
    mean = np.empty(d, dtype=np.float64)
    world.Allreduce(local_sum, mean, op=MPI.SUM)
    mean /= honest
    distance = 0.0
    if honest_models is not None:
        distance = float(torch.linalg.vector_norm(honest_models.double() - torch.from_numpy(mean),
                                                  dim=1).max())
    out = np.zeros(1) if world.Get_rank() == ROOT else None
    world.Reduce(np.array([distance]), out, op=MPI.MAX, root=ROOT)
    if world.Get_rank() != ROOT:
        return {}
    norm = float(np.linalg.norm(mean))
    return {"consensus_distance": float(out[0]),
            "consensus_relative": float(out[0]) / norm if norm > 0 else None}


def setup(world: MPI.Comm, argv: Sequence[str] | None):
    """Parse, validate, draw and check the graph on every rank; all exit together on error."""
    cfg = entry.read_config(world, argv, DecentralizedConfig, config.validate_decentralized,
                            prog="python -m mpisim.decentralized",
                            description=(__doc__ or "").split("\n\n")[0])
    error, plan = None, None
    try:
        plan, report, attempt = make_plan(cfg)
    except topology.GraphError as exc:
        error = f"graph error: {exc}"
    except ConfigError as exc:
        error = f"config error: {exc}"
    error = mpi.agree(world, error)
    if error is not None:
        if world.Get_rank() == ROOT:
            print(f"mpisim: {error}", file=sys.stderr)
        sys.exit(2)
    return cfg, plan, report, attempt


@mpi.abort_on_error
def main(argv: Sequence[str] | None = None) -> int:
    world = MPI.COMM_WORLD
    torch.set_num_threads(1)
    cfg, plan, report, attempt = setup(world, argv)
    summary = run_rank(world, cfg, plan, report, attempt)
    if summary is not None:
        _print_summary(summary)
    return 0


def _print_summary(s: dict) -> None:
    final = s["final"]
    byz = s["byzantine_ids"]
    print(f"mpisim decentralized mode: {s['iterations']} iterations of {s['n']} nodes on {s['world_size']} "
          f"ranks, screening {s['screening']} (b={s['b']}), fault {s['fault']}"
          + (f" on nodes {byz}" + (" (two-faced)" if s["two_faced"] else "") if byz else ""))
    graph = s["graph"]
    how = graph["assumption4_detail"].split(":")[0]
    print(f"  graph: p={graph['p']}, min honest degree {graph['min_honest_degree']}, "
          f"Assumption 4 {graph['assumption4']}" + (f" ({how})" if how else ""))

    def pct(v):
        return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"

    print(f"  honest nodes' test accuracy: mean {pct(final.get('accuracy_mean'))}, "
          f"min {pct(final.get('accuracy_min'))}, max {pct(final.get('accuracy_max'))}")
    rel = final.get("consensus_relative")
    print(f"  consensus distance {final.get('consensus_distance', float('nan')):.4g}"
          f" ({'n/a' if rel is None else f'{rel:.2e}'} of the mean model's norm; "
          f"{'reached' if s['consensus_reached'] else 'not reached'})")
    print(f"  wall time {s['loop_seconds']:.1f} s ({s['iterations_per_second']:.2f} iterations/s)"
          f" + {s['setup_seconds']:.1f} s set-up")
    print(f"  results: {s['run_dir']}/ (config.toml, graph.json, metrics.jsonl, summary.json)")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
