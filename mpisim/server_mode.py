"""Server mode: D-SGD with a robust gradient filter, one MPI process per role.

    mpiexec -n 11 python -m mpisim.server_mode [--config FILE] [--section.field VALUE ...]

Rank 0 is the parameter server; ranks 1.. are agent ranks, each hosting
``agents.per_rank`` agents (the last one possibly fewer). One round (CGE
paper, Section 2.1, steps S1 and S2):

1. the server broadcasts the flat model w (``Bcast`` of d float32);
2. every agent draws k samples from its own shard and computes its
   stochastic gradient (eq 8); a faulty agent with a data fault does so on
   corrupted labels;
3. omniscient faults: the agent ranks gather every true gradient on the
   rank of the first faulty agent (the "leader"), which computes the faulty
   agents' colluding messages and scatters them back; these bytes are
   counted as adversary traffic, apart from the protocol's;
4. the agents' messages are gathered into one (n, d) buffer on the server
   (``Gatherv``, rows in agent order);
5. the server optionally applies gradient averaging (eq 25), then the
   filter, and steps: w <- w - eta * filtered.

Every ``run.eval_every`` rounds the server evaluates on the test set and
appends a line to ``metrics.jsonl`` in the run directory.
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
from .learning import models
from .mpi import comm as mpi
from .mpi.comm import MPI
from .rules import aggregators, attacks
from .config import ServerModeConfig

SERVER = 0


@dataclass(frozen=True)
class Layout:
    """Who hosts which agent, and which agents are faulty; the same on every rank."""

    n: int
    per_rank: int
    byzantine: tuple[int, ...]

    @property
    def num_agent_ranks(self) -> int:
        return math.ceil(self.n / self.per_rank)

    def agents_of(self, rank: int) -> range:
        """Agent ids hosted by world rank ``rank`` (empty for the server)."""
        if rank == SERVER:
            return range(0)
        start = (rank - 1) * self.per_rank
        return range(start, min(start + self.per_rank, self.n))

    def rows_per_rank(self) -> list[int]:
        """Number of agents of each world rank, the server's 0 first."""
        return [len(self.agents_of(r)) for r in range(1 + self.num_agent_ranks)]

    @property
    def honest(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n) if i not in self.byzantine)


def make_layout(cfg: ServerModeConfig) -> Layout:
    byz = cfg.byzantine
    faulty = byz.fault != "none" and byz.count > 0
    ids = seeding.byzantine_ids(cfg.run.seed, cfg.agents.n, byz.count, byz.ids) if faulty else ()
    return Layout(cfg.agents.n, cfg.agents.per_rank, ids)


def _run_name(cfg: ServerModeConfig) -> str:
    if cfg.run.name:
        return cfg.run.name
    fault = cfg.byzantine.fault if cfg.byzantine.fault != "none" and cfg.byzantine.count else "nofault"
    return metrics.default_run_name(
        ["server", cfg.aggregator.name, f"f{cfg.aggregator.f}", fault, f"s{cfg.run.seed}"])


def _eval_rounds(cfg: ServerModeConfig) -> set[int]:
    """Rounds after which the server evaluates (0 is the initial model)."""
    rounds = set(range(0, cfg.run.rounds + 1, cfg.run.eval_every))
    rounds.add(cfg.run.rounds)
    return rounds


# ---------------------------------------------------------------- server


def run_server(world: MPI.Comm, cfg: ServerModeConfig, layout: Layout) -> dict:
    """Rank 0: broadcast, gather, filter, step; evaluate and log. Returns the summary."""
    timer, traffic = metrics.PhaseTimer(), mpi.Traffic()
    start = time.perf_counter()
    test = data.load(cfg.data.name, cfg.data.root, "test")
    index = np.arange(min(cfg.data.test_size or len(test), len(test)))
    x_test, y_test = test.tensors(index)
    model = models.build(cfg.model.name, input_shape=test.input_shape,
                         num_classes=test.num_classes, seed=cfg.run.seed)
    w, d, n = model.flat, model.d, layout.n

    received = np.empty((n, d), dtype=np.float32)  # reused every round
    gradients = torch.from_numpy(received)
    nothing = np.empty((0, d), dtype=np.float32)
    agg = cfg.aggregator
    rule = aggregators.build(agg.name, f=agg.f, params=dict(agg.params), pre=agg.pre,
                             pre_params={k: dict(v) for k, v in agg.pre_params.items()})
    server_rng = seeding.torch_generator(cfg.run.seed, seeding.SERVER)
    averaged = torch.zeros((n, d)) if agg.averaging > 0 else None

    run_dir = metrics.unique_dir(cfg.run.out_dir, _run_name(cfg))
    log = metrics.RunLog(run_dir, config.dumps(cfg))
    eval_rounds = _eval_rounds(cfg)
    rows = layout.rows_per_rank()
    honest_rows = list(layout.honest)
    setup_time = time.perf_counter() - start

    def evaluate(round_: int, train_loss: float | None, agent_traffic: list[dict]) -> dict:
        with timer("eval"):
            test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=500)
        record = {
            "round": round_,
            "time": time.perf_counter() - loop_start,
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "bytes": bytes_by_role(traffic, agent_traffic),
        }
        log.log(record)
        return record

    world.Barrier()  # every rank is set up: the clock starts for all
    loop_start = time.perf_counter()
    last = evaluate(0, None, [])
    progress = entry.progress_bar(cfg.run.rounds, cfg.run.progress)
    for round_ in range(1, cfg.run.rounds + 1):
        with timer("bcast"):
            mpi.bcast(world, w.numpy(), root=SERVER, traffic=traffic)
        with timer("gather"):
            mpi.gatherv_rows(world, nothing, received, rows_per_rank=rows, root=SERVER,
                             traffic=traffic)
        with timer("filter"):
            if averaged is not None:
                averaged.mul_(agg.averaging).add_(gradients, alpha=1.0 - agg.averaging)
                filtered = rule(averaged, server_rng)
            else:
                filtered = rule(gradients, server_rng)
        with timer("step"):
            w.sub_(filtered, alpha=cfg.optim.lr)
        if round_ in eval_rounds:
            # Small control message: each agent rank's mean losses and byte counts.
            reports = world.gather(None, root=SERVER)[1:]
            per_agent = dict(pair for losses, _ in reports for pair in losses)
            train_loss = float(np.mean([per_agent[i] for i in honest_rows])) if honest_rows else None
            last = evaluate(round_, train_loss, [t for _, t in reports])
            progress.set_postfix(acc=f"{last['test_accuracy']:.4f}", refresh=False)
        progress.update(1)
    progress.close()
    loop_time = time.perf_counter() - loop_start

    per_rank = world.gather({"rank": SERVER, "peak_rss": metrics.peak_rss_bytes(),
                             "phases": timer.totals, "traffic": traffic.as_dict()}, root=SERVER)
    summary = {
        "mode": "server",
        "run_dir": str(run_dir),
        "rounds": cfg.run.rounds,
        "n": n,
        "d": d,
        "world_size": world.Get_size(),
        "agents_per_rank": layout.per_rank,
        "byzantine_ids": list(layout.byzantine),
        "aggregator": agg.name,
        "f": agg.f,
        "fault": cfg.byzantine.fault if layout.byzantine else "none",
        "final": {k: last[k] for k in ("round", "train_loss", "test_loss", "test_accuracy")},
        "diverged": not math.isfinite(last["test_loss"]),
        "test_samples": len(y_test),
        "setup_seconds": setup_time,
        "loop_seconds": loop_time,
        "rounds_per_second": cfg.run.rounds / loop_time,
        "server_phases": timer.totals,
        "ranks": per_rank,
    }
    if cfg.run.save_model:
        log.save_array("model", w.numpy())
    log.summary(summary)
    return summary


def bytes_by_role(server: mpi.Traffic, agents: list[dict]) -> dict:
    """Bytes moved so far: by the server, by the agents (protocol), among faulty agents (adversary)."""
    def total(direction, category):
        return sum(t[direction].get(category, 0) for t in agents)

    return {
        "server_sent": server.sent.get("protocol", 0),
        "server_received": server.received.get("protocol", 0),
        "agents_sent": total("sent", "protocol"),
        "agents_received": total("received", "protocol"),
        "adversary_sent": total("sent", "adversary"),
        "adversary_received": total("received", "adversary"),
    }


# ---------------------------------------------------------------- agents


class Adversary:
    """The faulty agents of one agent rank, and their collusion through ``agents_comm``."""

    def __init__(self, cfg: ServerModeConfig, layout: Layout, rank: int, agents_comm: MPI.Comm):
        self.fault = cfg.byzantine.fault
        self.attack = attacks.REGISTRY.get(self.fault) if layout.byzantine else None
        self.params = dict(cfg.byzantine.params)
        self.layout = layout
        self.comm = agents_comm
        mine = layout.agents_of(rank)
        self.local = [j for j, i in enumerate(mine) if i in layout.byzantine]  # rows in the send buffer
        seed = cfg.run.seed
        self.rngs = {i: seeding.torch_generator(seed, seeding.ATTACK, i) for i in layout.byzantine}
        self.local_rngs = [self.rngs[mine[j]] for j in self.local]
        # Omniscient collusion: the leader is the agent rank of the first faulty agent.
        self.omniscient = self.attack is not None and self.attack.kind == "message" and self.attack.omniscient
        if self.omniscient:
            agent_ranks = range(1, 1 + layout.num_agent_ranks)
            self.rows = [len(layout.agents_of(r)) for r in agent_ranks]
            self.faulty_rows = [sum(i in layout.byzantine for i in layout.agents_of(r)) for r in agent_ranks]
            self.leader = next(k for k, r in enumerate(agent_ranks)
                               if any(i in layout.byzantine for i in layout.agents_of(r)))
            if agents_comm.Get_rank() == self.leader:
                self.everyone = np.empty((layout.n, 0), dtype=np.float32)  # sized on first use
            self.received = None

    @property
    def corrupts_labels(self) -> bool:
        return self.attack is not None and self.attack.kind == "data" and bool(self.local)

    def labels(self, row: int, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Labels seen by local agent ``row`` (changed if it is faulty with a data fault)."""
        if row not in self.local:
            return labels
        rng = self.local_rngs[self.local.index(row)]
        return self.attack.fn(labels, num_classes=num_classes, rng=rng, **self.params)

    def corrupt(self, send: np.ndarray, traffic: mpi.Traffic) -> None:
        """Replace the faulty agents' rows of ``send`` by their messages (every agent rank calls it)."""
        if self.attack is None or self.attack.kind != "message":
            return
        f = len(self.layout.byzantine)
        if not self.omniscient:
            if self.local:
                own = torch.from_numpy(send[self.local])
                send[self.local] = self.attack.fn(own, honest=None, f=f, rngs=self.local_rngs,
                                                  **self.params).numpy()
            return
        d = send.shape[1]
        is_leader = self.comm.Get_rank() == self.leader
        if is_leader and self.everyone.shape[1] != d:
            self.everyone = np.empty((self.layout.n, d), dtype=np.float32)
        mpi.gatherv_rows(self.comm, send, self.everyone if is_leader else None, rows_per_rank=self.rows,
                         root=self.leader, traffic=traffic, category="adversary")
        messages = None
        if is_leader:
            everyone = torch.from_numpy(self.everyone)
            byz, honest = list(self.layout.byzantine), list(self.layout.honest)
            messages = self.attack.fn(everyone[byz], honest=everyone[honest], f=f,
                                      rngs=[self.rngs[i] for i in byz], **self.params)
            messages = np.ascontiguousarray(messages.numpy(), dtype=np.float32)
        if self.received is None or self.received.shape[1] != d:
            self.received = np.empty((len(self.local), d), dtype=np.float32)
        mpi.scatterv_rows(self.comm, messages, self.received, rows_per_rank=self.faulty_rows,
                          root=self.leader, traffic=traffic, category="adversary")
        if self.local:
            send[self.local] = self.received


def run_agent(world: MPI.Comm, agents_comm: MPI.Comm, cfg: ServerModeConfig, layout: Layout) -> None:
    """An agent rank: receive w, compute its agents' gradients, (attack,) send them."""
    timer, traffic = metrics.PhaseTimer(), mpi.Traffic()
    rank = world.Get_rank()
    mine = layout.agents_of(rank)
    train = data.load(cfg.data.name, cfg.data.root, "train")
    shards = data.iid_partition(len(train), layout.n, cfg.run.seed, subset=cfg.data.train_size)
    agents = [data.AgentData(train, shards[i], agent_id=i, seed=cfg.run.seed,
                             batch_size=cfg.data.batch_size) for i in mine]
    input_shape, num_classes = train.input_shape, train.num_classes
    del train  # each agent keeps its own shard only
    model = models.build(cfg.model.name, input_shape=input_shape, num_classes=num_classes,
                         seed=cfg.run.seed)
    send = np.empty((len(mine), model.d), dtype=np.float32)
    rows = layout.rows_per_rank()
    adversary = Adversary(cfg, layout, rank, agents_comm)
    honest_local = [j for j, i in enumerate(mine) if i not in layout.byzantine]
    eval_rounds = _eval_rounds(cfg)
    loss_sum, loss_rounds = np.zeros(len(mine)), 0

    world.Barrier()
    for round_ in range(1, cfg.run.rounds + 1):
        with timer("bcast"):
            mpi.bcast(world, model.flat.numpy(), root=SERVER, traffic=traffic)
        with timer("compute"):
            batches = [agent.batch() for agent in agents]
            if adversary.corrupts_labels:
                batches = [(x, adversary.labels(j, y, num_classes)) for j, (x, y) in enumerate(batches)]
            loss_sum += model.gradients(batches, torch.from_numpy(send))
            loss_rounds += 1
        with timer("attack"):
            adversary.corrupt(send, traffic)
        with timer("gather"):
            mpi.gatherv_rows(world, send, None, rows_per_rank=rows, root=SERVER, traffic=traffic)
        if round_ in eval_rounds:
            means = loss_sum / max(loss_rounds, 1)
            world.gather(([(mine[j], float(means[j])) for j in honest_local], traffic.as_dict()),
                         root=SERVER)
            loss_sum[:], loss_rounds = 0.0, 0

    world.gather({"rank": rank, "peak_rss": metrics.peak_rss_bytes(), "phases": timer.totals,
                  "traffic": traffic.as_dict()}, root=SERVER)


# ---------------------------------------------------------------- entry point


def setup(world: MPI.Comm, argv: Sequence[str] | None) -> tuple[ServerModeConfig, Layout]:
    """Parse and validate on every rank; all ranks exit together (code 2) on any error."""
    cfg = entry.read_config(world, argv, ServerModeConfig, config.validate_server_mode,
                            prog="python -m mpisim.server_mode",
                            description=(__doc__ or "").split("\n\n")[0])
    return cfg, make_layout(cfg)


@mpi.abort_on_error
def main(argv: Sequence[str] | None = None) -> int:
    world = MPI.COMM_WORLD
    torch.set_num_threads(1)  # one rank per core; more threads per rank oversubscribe
    cfg, layout = setup(world, argv)
    rank = world.Get_rank()
    # Roles are decided here, once. Every rank calls Split (collective).
    agents_comm = mpi.split(world, None if rank == SERVER else 1, key=rank)
    if rank == SERVER:
        summary = run_server(world, cfg, layout)
        _print_summary(summary, cfg)
    else:
        run_agent(world, agents_comm, cfg, layout)
    return 0


def _print_summary(s: dict, cfg: ServerModeConfig) -> None:
    final = s["final"]
    acc = final["test_accuracy"]
    acc_text = f"{100 * acc:.2f}%" if acc is not None and math.isfinite(acc) else "n/a (model not finite)"
    byz = s["byzantine_ids"]
    print(f"mpisim server mode: {s['rounds']} rounds of {s['n']} agents on {s['world_size'] - 1} "
          f"agent ranks, filter {s['aggregator']} (f={s['f']}), fault {s['fault']}"
          + (f" on agents {byz}" if byz else ""))
    print(f"  final test accuracy {acc_text} on {s['test_samples']} test samples, "
          f"test loss {final['test_loss'] if final['test_loss'] is not None else float('nan'):.4f}")
    print(f"  wall time {s['loop_seconds']:.1f} s for the rounds ({s['rounds_per_second']:.2f} rounds/s)"
          f" + {s['setup_seconds']:.1f} s set-up")
    if s["diverged"]:
        hint = "lower --optim.lr"
        if s["aggregator"] == "cge" and cfg.aggregator.params.get("reduce", "sum") == "sum":
            hint += (f", or average instead of summing with --aggregator.params.reduce mean (cge sums the "
                     f"n - f = {s['n'] - s['f']} kept gradients, so its step is {s['n'] - s['f']} times that "
                     f"of an average)")
        print(f"  the model diverged (test loss not finite): {hint}")
    print(f"  results: {s['run_dir']}/ (config.toml, metrics.jsonl, summary.json)")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
