"""Server mode: D-SGD with a robust gradient filter (CGE paper, Section 2.1).

Rank 0 is the parameter server; ranks 1.. host ``agents.per_rank`` agents
each (the last one possibly fewer). One round, t = 1, 2, ...:

1. the server broadcasts the flat model w (``Bcast`` of d float32);
2. every agent draws its batch from its own shard and computes its
   stochastic gradient (eq 8; ``data.batch_size 0``: the gradient of its
   whole local loss); a faulty agent with a data fault does so on
   corrupted labels;
3. omniscient faults: the agent ranks gather every true gradient on the
   rank of the first faulty agent (the "leader"), which computes the
   faulty agents' colluding messages and scatters them back; these bytes
   are counted as adversary traffic, apart from the protocol's;
4. the agents' messages are gathered into one (n, d) buffer on the server
   (``Gatherv``, rows in agent order);
5. the server optionally applies gradient averaging (eq 25), then the
   filter, and steps: w <- Pi_W(w - eta_t * filtered), with Pi_W the
   projection onto the ball of radius ``optim.project_radius`` (Yin et al.,
   Algorithm 1; none by default).

With ``[compression]`` (Ghosh et al.; :mod:`mpisim.protocols.uplink`) the
agents' rows are encoded before step 4 and gathered as uint8 payloads of
the codec's size, and the server decodes them before step 5; under error
feedback the agents have applied eta_t already, so the server steps by the
filtered vector itself. With the rule ``majority_vote`` (signSGD) the
downlink is the vote: instead of step 1, the server broadcasts
sign(sum of signs) packed one bit a coordinate after its step, and every
agent rank applies the same step w <- Pi_W(w - eta_t vote) to its replica
of the model, which therefore stays equal to the server's bit for bit.

With ``server.ranks S > 1`` the server is ranks 0..S-1 and the agents start
at rank S (the sharded server). Server rank s owns the coordinates
[b_s, b_{s+1}) of the model and of every message (contiguous slices, as
even as can be): step 1 is an ``Allgatherv`` from the S slices
(:func:`mpisim.mpi.comm.allgather_slices`), step 4 one ``Alltoallw`` in
which every agent rank sends each server rank its slice of its rows
(:class:`mpisim.mpi.comm.ColumnSlices`, strided datatypes, no copy), and
step 5 runs the rule on the (n, b_{s+1} - b_s) slice: coordinate-wise rules
alone, the others with the whole-row sums they need (squared norms, Gram
matrices) added over the server ranks by an ``Allreduce``
(:class:`.transport.SliceSums`). Each server rank steps its slice; rank 0 gathers the
slices to evaluate. Compressed uplinks and the vote need whole vectors and
are refused with S > 1.

On one node, the plain rounds (float32 messages, S = 1, not the vote) do
steps 1 and 4 through shared-memory windows instead: the same data, the
same bytes counted, only one-byte notes through MPI. The three ways
(collectives, shared windows, sharded slices) are :mod:`.transport`,
chosen once when the run is created; the rounds below do not branch on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .. import compression, seeding
from ..datasets.sampler import Sampler
from ..learning import projection, schedules
from ..mpi import comm as mpi
from ..placement import Placement
from ..rules import aggregators, attacks
from . import driver, transport, uplink
from .server_config import ServerModeConfig, server_ranks, validate_server_mode
from .state import Agent, Server, generator_states, load_generator_states

SERVER = 0


@dataclass(frozen=True)
class ServerPlan:
    """Which rank hosts which agent, and which agents are faulty; the same on every rank."""

    placement: Placement     # agents on ranks S..
    byzantine: tuple[int, ...]
    servers: int = 1         # S: the server's ranks, 0..S-1

    @property
    def honest(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.placement.n) if i not in self.byzantine)


class ServerMode(driver.Protocol):
    mode = "server"
    config_class = ServerModeConfig
    prog = "python -m mpisim.server_mode"
    description = "Server mode: D-SGD with a robust gradient filter, one MPI process per role."
    traffic = ("protocol", "adversary")
    validate = staticmethod(validate_server_mode)

    @classmethod
    def plan(cls, cfg: ServerModeConfig) -> ServerPlan:
        servers = server_ranks(cfg)
        return ServerPlan(Placement(cfg.agents.n, cfg.agents.per_rank, first=servers),
                          driver.faulty_ids(cfg, cfg.agents.n), servers)

    @classmethod
    def run_name(cls, cfg: ServerModeConfig, plan: ServerPlan) -> list[str]:
        fault = cfg.byzantine.fault if plan.byzantine else "nofault"
        codec = [uplink.build_codec(cfg).name] if uplink.active(cfg) else []
        return ["server", cfg.aggregator.name, f"f{cfg.aggregator.f}", fault, *codec, f"s{cfg.run.seed}"]

    @classmethod
    def create(cls, world: mpi.Comm, cfg: ServerModeConfig, plan: ServerPlan) -> driver.Role:
        rank, servers = world.Get_rank(), plan.servers
        # The agents' own communicator, for colluding faults, and the server ranks' one (sharded).
        # Every rank calls Split.
        agents_comm = mpi.split(world, None if rank < servers else 1, key=rank)
        server_comm = mpi.split(world, 0 if rank < servers else None, key=rank) if servers > 1 else None
        plain = not uplink.active(cfg) and cfg.aggregator.name != "majority_vote"
        way = transport.choose(world, plan, plain=plain)
        if rank < servers:
            return ServerRole(world, cfg, plan, way, server_comm)
        return AgentHost(world, agents_comm, cfg, plan, way)

    @classmethod
    def headline(cls, s: dict) -> str:
        byz = s["byzantine_ids"]
        servers = s.get("server_ranks", 1)
        return (f"mpisim server mode: {s['rounds']} rounds of {s['n']} agents on {s['world_size'] - servers} "
                f"agent ranks" + (f" and {servers} server ranks" if servers > 1 else "")
                + f", filter {s['aggregator']} (f={s['f']}), fault {s['fault']}"
                + (f" on agents {byz}" if byz else "")
                + (f", uplink {s['codec']} ({s['payload_bytes']:,} bytes an agent)" if "codec" in s else ""))


def describe_final(final: dict, test_samples: int) -> str:
    """One line with the task's final test metrics ("n/a" for a non-finite model)."""
    def fmt(key, value):
        if not driver.finite(value):
            return "n/a (model not finite)"
        return f"{100 * value:.2f}%" if key == "test_accuracy" else f"{value:.4g}"

    if "test_accuracy" in final:
        head = f"final test accuracy {fmt('test_accuracy', final['test_accuracy'])}"
    else:
        head = f"final distance to the optimum {fmt('d', final.get('distance_to_optimum'))}"
    return f"{head} on {test_samples} test samples, test loss {fmt('test_loss', final['test_loss'])}"


# ---------------------------------------------------------------- server


class Participation:
    """Which agents take part in round t (``agents.sample``): all of them, or m drawn without
    replacement from the stream (SAMPLE, t) of the run's seed. The draw is a function of the seed
    and the round alone, so every rank knows it without a message, and a resumed run draws the same.
    """

    def __init__(self, seed: int, placement: Placement, sample: int = 0):
        self.seed, self.placement = seed, placement
        self.n = placement.n
        self.m = sample or placement.n
        self.everyone = np.arange(self.n)
        self._round, self._drawn = None, self.everyone

    @property
    def partial(self) -> bool:
        return self.m < self.n

    def drawn(self, t: int) -> np.ndarray:
        """The agents of round t, sorted."""
        if self.partial and t != self._round:
            rng = seeding.numpy_generator(self.seed, seeding.SAMPLE, t)
            self._round, self._drawn = t, np.sort(rng.choice(self.n, self.m, replace=False))
        return self._drawn

    def counts(self, t: int) -> list[int]:
        """Rows each rank of the job sends in round t (rank 0 first)."""
        if not self.partial:
            return self.placement.counts()
        per_rank = np.bincount(self.drawn(t) // self.placement.per_rank, minlength=self.placement.num_ranks)
        return [0] * self.placement.first + per_rank.tolist()

    def hosted(self, t: int, ids: list[int]) -> list[int]:
        """Positions, among a rank's hosted ``ids``, of the agents of round t."""
        if not self.partial:
            return list(range(len(ids)))
        drawn = set(self.drawn(t).tolist())
        return [j for j, i in enumerate(ids) if i in drawn]


class RootSet:
    """The server's own clean data for FLTrust (``server.root_samples``): samples of the training set
    drawn with the stream (ROOT,) of the seed, and batches of ``data.batch_size`` drawn from them
    as an agent draws its own (the sampler's stream is (SAMPLING, n), the id after the agents').
    :meth:`compute` puts the server's gradient at the current model in :attr:`gradient`."""

    def __init__(self, cfg, problem: driver.Problem, *, seed: int, n: int):
        train = problem.train
        chosen = seeding.numpy_generator(seed, seeding.ROOT).choice(len(train), cfg.server.root_samples,
                                                                    replace=False)
        self.sampler = Sampler(train, np.sort(chosen), agent_id=n, seed=seed, batch_size=cfg.data.batch_size,
                               fraction=cfg.data.batch_fraction)
        problem.train = None  # the server keeps its root set only
        self.rows = torch.zeros((1, problem.model.d))
        self.gradient = self.rows[0]

    def compute(self, model) -> None:
        model.gradients([self.sampler.batch()], self.rows)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class ServerRole(driver.Role):
    """Rank 0 (ranks 0..S-1 when sharded): send the model, gather, filter, step; evaluate.

    The round is one path whatever the transport (:mod:`.transport`, chosen
    once by :meth:`ServerMode.create`). What goes down, and when, is
    :meth:`downlink`; how the filtered vector changes the model is
    :meth:`stepper`: a protocol built on this one (the one-round algorithm)
    replaces those two, not parts of the round.
    """

    role = "server"

    def __init__(self, world: mpi.Comm, cfg: ServerModeConfig, plan: ServerPlan, way: str,
                 server_comm: mpi.Comm | None = None):
        super().__init__()
        self.world, self.cfg, self.plan = world, cfg, plan
        n, rank = plan.placement.n, world.Get_rank()
        root_samples = getattr(getattr(cfg, "server", None), "root_samples", 0)
        self.problem = driver.load_problem(cfg, num_shards=n, train=bool(root_samples), test=True)
        if rank != SERVER:  # only rank 0 evaluates
            self.problem.x_test = self.problem.y_test = None
        self.headline = self.problem.task.headline
        model = self.problem.model
        self.transport = transport.build(way, world, plan, model.d, server_comm)
        own = model.flat[self.transport.own(model.d)]
        self.state = Server(own, seeding.torch_generator(cfg.run.seed, seeding.SERVER),
                            n=n, averaging=cfg.aggregator.averaging)
        rows = self.transport.inbox(own.numel())  # reused every round; the shared window itself
        self.gradients = torch.from_numpy(rows)
        agg = cfg.aggregator
        server = getattr(cfg, "server", None)
        aggregators.set_threads(1 if server is None else server.threads)
        self.rule = aggregators.build(agg.name, f=agg.f, params=dict(agg.params), pre=agg.pre,
                                      pre_params={k: dict(v) for k, v in agg.pre_params.items()},
                                      sharding=self.transport.sums,
                                      overwrite=self.state.averaging is None)  # the inbox is rewritten next round
        self.root = RootSet(cfg, self.problem, seed=cfg.run.seed, n=n) if root_samples else None
        if self.root is not None:  # FLTrust: the rule weighs the rows by the server's own gradient
            pipeline, span = self.rule, self.transport.own(model.d)
            self.rule = lambda x, rng: pipeline(x, rng, root=self.root.gradient[span])
        self.uplink = uplink.ServerUplink(cfg, n, model.d) if uplink.active(cfg) else None
        self.inbox = rows if self.uplink is None else self.uplink.received
        if self.uplink is not None and self.uplink.side_norm:  # Algorithm 1: threshold on the sent norms
            beta = agg.params.get("beta")
            self.rule = lambda x, rng: aggregators.threshold_on_norms(x, self.uplink.norms, f=agg.f, beta=beta)
        self.advance = self.stepper(cfg)
        self.before, self.after = self.downlink(cfg)
        self.whole = True  # whether rank 0's copy of the model is current in every slice
        self.participation = Participation(cfg.run.seed, plan.placement, getattr(cfg.agents, "sample", 0))
        self.byzantine = np.array(plan.byzantine, dtype=np.int64)
        self.drawn_byzantine: list[int] = []  # per round since the last record (agents.sample)

    def downlink(self, cfg):
        """(before the gather, after the step): the model goes out at the start of every round;
        under signSGD's vote (``majority_vote``) the ballot goes out after the step instead."""
        if cfg.aggregator.name == "majority_vote":
            return _nothing, self._send_vote
        return self._send_model, _nothing

    def _send_model(self) -> None:
        with self.timer("bcast"):
            self.transport.share_model(self.problem.model.flat.numpy(), self.traffic)

    def _send_vote(self, filtered: torch.Tensor) -> None:
        with self.timer("bcast"):
            self.transport.share_ballot(compression.pack_signs(filtered[None])[0], self.traffic)

    def stepper(self, cfg):
        """``advance(filtered, t)``: w <- Pi_W(w - eta_t * filtered), the step then the projection onto
        W (if any). Under error feedback the agents' messages already carry eta_t (Algorithm 3:
        w <- w - (1/m) sum of Q(p_i)), so the step is 1."""
        step_size = step_sizes(cfg)
        feedback = self.uplink is not None and cfg.compression.error_feedback
        radius, total = cfg.optim.project_radius, self.transport.total

        def advance(filtered: torch.Tensor, t: int) -> None:
            take_step(self.state.model, filtered, 1.0 if feedback else step_size(t - 1), radius, total=total)

        return advance

    def step(self, t: int) -> None:
        timer = self.timer
        self.before()
        with timer("gather"):
            rows = self.transport.collect(self.inbox, self.traffic, self.participation.counts(t))
        block = self.gradients if self.uplink is not None else torch.from_numpy(rows)
        if self.uplink is not None:
            with timer("decode"):
                self.uplink.decode(self.gradients)
        if self.participation.partial:
            self.drawn_byzantine.append(int(np.isin(self.participation.drawn(t), self.byzantine).sum()))
        if self.root is not None:
            with timer("root"):
                self._gather_whole()  # the server's gradient needs the whole model (a sharded rank has a slice)
                self.root.compute(self.problem.model)
        with timer("filter"):
            filtered = self.state.filter(block, self.rule)
        with timer("step"):
            self.advance(filtered, t)
        self.whole = self.transport.whole  # a sharded rank stepped its slice only
        self.after(filtered)

    def record_extra(self) -> dict:
        """With sampled agents, how many Byzantine agents were drawn in each round since the last record."""
        if not self.participation.partial:
            return {}
        drawn, self.drawn_byzantine = self.drawn_byzantine, []
        return {"byzantine_drawn": drawn}

    def _gather_whole(self) -> None:
        """Give rank 0 every slice of the current model, unless it has them (the server ranks call it
        together; not counted as traffic)."""
        if not self.whole:
            self.transport.assemble(self.problem.model.flat.numpy())
            self.whole = True

    def evaluate(self) -> dict | None:
        with self.timer("eval"):
            self._gather_whole()
            return self.problem.evaluate() if self.world.Get_rank() == SERVER else None

    def final_arrays(self) -> dict[str, np.ndarray]:
        # Not "the last round was evaluated": a resumed run that has no round left evaluates nothing.
        self._gather_whole()
        return {"model": self.problem.model.flat.numpy()} if self.world.Get_rank() == SERVER else {}

    def summary(self, final: dict, diverged: bool) -> dict:
        cfg, plan = self.cfg, self.plan
        return {"n": plan.placement.n, "d": self.problem.model.d,
                "agents_per_rank": plan.placement.per_rank, "byzantine_ids": list(plan.byzantine),
                "aggregator": cfg.aggregator.name, "f": cfg.aggregator.f,
                "fault": cfg.byzantine.fault if plan.byzantine else "none",
                "test_samples": len(self.problem.y_test), "server_phases": self.timer.totals,
                **self.transport.summary(),
                **({} if self.uplink is None else {"codec": self.uplink.codec.name,
                                                   "payload_bytes": self.uplink.received.shape[1]})}

    def describe(self, s: dict) -> list[str]:
        lines = [describe_final(s["final"], s["test_samples"])]
        if s["diverged"]:
            lines.append(f"the model diverged (test loss not finite): {self._divergence_hint(s)}")
        return lines

    def _divergence_hint(self, s: dict) -> str:
        agg = self.cfg.aggregator
        if s["aggregator"] == "mean" and s["byzantine_ids"]:
            return (f"the filter is mean, which passes every message on, and faulty agents "
                    f"{s['byzantine_ids']} send {s['fault']}: use a robust filter (--aggregator.name)")
        hint = "lower --optim.lr"
        if s["aggregator"] == "cge" and agg.params.get("reduce", "sum") == "sum":
            kept = s["n"] - s["f"]
            hint += (f", or average instead of summing with --aggregator.params.reduce mean (cge sums the "
                     f"n - f = {kept} kept gradients, so its step is {kept} times that of an average)")
        return hint

    def state_dict(self) -> dict:
        return {"server": self.state.state_dict(), "drawn_byzantine": list(self.drawn_byzantine),
                "root": None if self.root is None else self.root.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.state.load_state_dict(state["server"])
        self.drawn_byzantine = list(state.get("drawn_byzantine", []))
        if self.root is not None:
            self.root.load_state_dict(state["root"])
        self.whole = self.transport.whole  # a sharded server rank's file holds its own slice only


def _nothing(*args) -> None:
    """A downlink that sends nothing at this point of the round."""


def step_sizes(cfg):
    """eta_t as a function of the 0-based round."""
    optim = cfg.optim
    return schedules.build(optim.schedule, lr=optim.lr, t0=optim.t0, power=optim.power)


def take_step(w: torch.Tensor, direction: torch.Tensor, step: float, radius: float, total=None) -> None:
    """w <- Pi_W(w - step * direction), in place (the server's step, and the vote replicas' step);
    ``total`` sums squared norms over the slices when w is one slice of the model."""
    w.sub_(direction, alpha=step)
    projection.project_ball_(w, radius, total)


# ---------------------------------------------------------------- agents


class Coalition:
    """The faulty agents' collusion for omniscient faults, through the agents' communicator.

    Every agent rank takes part in its collective. The leader (the agent rank
    of the first faulty agent) gathers every agent's true gradient,
    computes the faulty agents' messages with the coalition's generators
    (one per faulty agent, stream (ATTACK, id), whoever hosts it), and
    scatters them back.
    """

    def __init__(self, agents_comm: mpi.Comm, cfg: ServerModeConfig, plan: ServerPlan, attack,
                 rank: int, participation: Participation):
        self.comm, self.attack, self.plan = agents_comm, attack, plan
        self.params = dict(cfg.byzantine.params)
        self.participation, self.ids = participation, list(plan.placement.ids_of(rank))
        self.leader = plan.placement.rank_of(plan.byzantine[0]) - plan.placement.first
        self.is_leader = agents_comm.Get_rank() == self.leader
        self.rngs = ({i: seeding.torch_generator(cfg.run.seed, seeding.ATTACK, i) for i in plan.byzantine}
                     if self.is_leader else {})
        self.everyone = None
        self.byzantine = set(plan.byzantine)

    def corrupt(self, send: np.ndarray, traffic: mpi.Traffic, t: int, extra: dict | None = None) -> None:
        """Replace the faulty agents' rows of ``send`` (the first rows: those of the agents of round t,
        in order) by their messages; every agent rank calls it. The coalition sees the agents of the
        round only. ``extra``: keywords for the attack besides its interface (a rule-aware attack's ``ctx``)."""
        d, first = send.shape[1], self.plan.placement.first
        placement = self.plan.placement
        drawn = self.participation.drawn(t)
        faulty = drawn[np.isin(drawn, self.plan.byzantine)]
        rows = self.participation.counts(t)[first:]
        faulty_rows = np.bincount(faulty // placement.per_rank, minlength=placement.num_ranks).tolist()
        drawn = drawn.tolist()
        mine = [self.ids[j] for j in self.participation.hosted(t, self.ids)]
        local = [p for p, i in enumerate(mine) if i in self.byzantine]
        if self.is_leader and (self.everyone is None or self.everyone.shape[1] != d):
            self.everyone = np.empty((self.plan.placement.n, d), dtype=np.float32)
        gathered = self.everyone[:len(drawn)] if self.is_leader else None
        mpi.gatherv_rows(self.comm, send[:len(mine)], gathered, rows_per_rank=rows, root=self.leader,
                         traffic=traffic, category="adversary")
        messages = None
        if self.is_leader:
            everyone = torch.from_numpy(gathered)
            byz = [p for p, i in enumerate(drawn) if i in self.byzantine]
            honest = [p for p, i in enumerate(drawn) if i not in self.byzantine]
            messages = np.empty((0, d), dtype=np.float32)
            if byz:
                messages = self.attack.fn(everyone[byz], honest=everyone[honest], f=len(byz),
                                          rngs=[self.rngs[drawn[p]] for p in byz], **self.params, **(extra or {}))
                messages = np.ascontiguousarray(messages.numpy(), dtype=np.float32)
        received = np.empty((len(local), d), dtype=np.float32)
        mpi.scatterv_rows(self.comm, messages, received, rows_per_rank=faulty_rows, root=self.leader,
                          traffic=traffic, category="adversary")
        if local:
            send[local] = received

    def state_dict(self) -> dict:
        return {"rngs": generator_states(self.rngs)}

    def load_state_dict(self, state: dict) -> None:
        load_generator_states(self.rngs, state["rngs"])


class Momentum:
    """Worker momentum (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021, in the form ByzFL 0.0.11 uses): every hosted agent keeps
    m_t = beta m_(t-1) + (1 - beta) x_t from m_0 = 0 and sends m_t instead of x_t.

    One (a, d) block for the rank's a agents, updated in place; each agent's row is its
    ``memory["momentum"]`` (a view), so checkpoints save and restore it with the agent. The faulty
    agents keep one too: a data fault follows the protocol on its corrupted labels, momentum
    included, and a message fault then acts on what the agent would have sent.
    """

    def __init__(self, beta: float, agents: list[Agent], d: int):
        self.beta = beta
        self.block = torch.zeros((len(agents), d))
        for j, agent in enumerate(agents):
            agent.memory["momentum"] = self.block[j]

    @classmethod
    def build(cls, beta: float, agents: list[Agent], d: int) -> Momentum | None:
        return cls(beta, agents, d) if beta else None

    def apply(self, rows: torch.Tensor, active: list[int]) -> None:
        """rows <- m = beta m + (1 - beta) rows: ``rows`` are those of the hosted agents at positions
        ``active`` (all of them, or this round's sample; the others' memories stay as they are)."""
        if len(active) == len(self.block):
            self.block.mul_(self.beta).add_(rows, alpha=1.0 - self.beta)
            rows.copy_(self.block)
            return
        index = torch.tensor(active, dtype=torch.long)
        memory = self.block[index].mul_(self.beta).add_(rows, alpha=1.0 - self.beta)
        self.block[index] = memory
        rows.copy_(memory)


class AgentHost(driver.Role):
    """An agent rank: receive w, compute its agents' gradients, (attack,) send them.

    One round whatever the transport; :meth:`downlink` mirrors the server's."""

    role = "agents"

    def __init__(self, world: mpi.Comm, agents_comm: mpi.Comm, cfg: ServerModeConfig, plan: ServerPlan,
                 way: str):
        super().__init__()
        self.world, self.cfg, self.plan = world, cfg, plan
        rank = world.Get_rank()
        self.ids = list(plan.placement.ids_of(rank))
        problem = driver.load_problem(cfg, num_shards=plan.placement.n, train=True, test=False)
        self.num_classes = problem.train.num_classes
        seed = cfg.run.seed
        self.agents = {i: Agent(i, problem.sampler(i, cfg),
                                fault_rng=seeding.torch_generator(seed, seeding.ATTACK, i)
                                if i in plan.byzantine else None)
                       for i in self.ids}
        del problem.train  # each agent keeps its own shard only
        self.model = problem.model
        self.transport = transport.build(way, world, plan, self.model.d)
        self.send = self.transport.outbox(self.model.d)  # with the shared windows: its rows of the block
        self.send_rows = torch.from_numpy(self.send)
        self.attack = attacks.REGISTRY.get(cfg.byzantine.fault) if plan.byzantine else None
        self.params = dict(cfg.byzantine.params)
        omniscient = self.attack is not None and self.attack.kind == "message" and self.attack.omniscient
        self.participation = Participation(seed, plan.placement, getattr(cfg.agents, "sample", 0))
        self.active = list(range(len(self.ids)))  # positions of this round's agents among the hosted ones
        self.coalition = (Coalition(agents_comm, cfg, plan, self.attack, rank, self.participation)
                          if omniscient else None)
        self.before, self.after = self.downlink(cfg)
        self.vote = self.after == self._receive_vote  # this rank steps a replica of the model
        compressed = uplink.active(cfg)
        # eta_t: for error feedback's p = eta_t g + e, and for the vote replicas' step
        self.step_size = step_sizes(cfg) if compressed or self.vote else None
        self.uplink = (uplink.AgentUplink(cfg, list(self.agents.values()), self.model.d,
                                          step_size=self.step_size) if compressed else None)
        self.ballot = np.empty(-(-self.model.d // 8), dtype=np.uint8)
        self.round = 0
        agents = cfg.agents
        self.local_steps = getattr(agents, "local_steps", 1)  # the one-round algorithm's workers take none
        self.local_lr = ((lambda t: agents.local_lr) if getattr(agents, "local_lr", 0.0)
                         else step_sizes(cfg) if self.local_steps > 1 else None)
        self.momentum = Momentum.build(getattr(agents, "momentum", 0.0), list(self.agents.values()), self.model.d)
        # Rule-aware attacks get the round's context (the server's pipeline, the model, eta_t).
        self.pipeline = (attacks.pipeline(cfg, seed) if self.attack is not None and self.attack.wants_ctx
                         else None)
        self.eta = step_sizes(cfg) if self.pipeline is not None and hasattr(cfg, "optim") else None

    def extra(self) -> dict:
        """The keywords an attack takes besides its interface: ``ctx`` for a rule-aware one."""
        if self.pipeline is None:
            return {}
        t = self.round
        return {"ctx": attacks.Context(
            aggregate=self.pipeline(t), model=self.model.flat.clone(), round=t,
            step_size=None if self.eta is None else self.eta(t - 1), n=self.plan.placement.n,
            f=self.cfg.aggregator.f, rule=self.cfg.aggregator.name)}

    def downlink(self, cfg):
        """(before the round, after the gather), as :meth:`ServerRole.downlink`."""
        if cfg.aggregator.name == "majority_vote":
            return _nothing, self._receive_vote
        return self._receive_model, _nothing

    def _receive_model(self) -> None:
        with self.timer("bcast"):
            self.transport.share_model(self.model.flat.numpy(), self.traffic)

    def _receive_vote(self, t: int) -> None:
        with self.timer("bcast"):
            self.transport.share_ballot(self.ballot, self.traffic)
        with self.timer("step"):
            vote = compression.unpack_signs(self.ballot[None], self.model.d)[0]
            take_step(self.model.flat, vote, self.step_size(t - 1), self.cfg.optim.project_radius)

    def _round_agents(self) -> list[Agent]:
        """The hosted agents of this round, in order (all of them without ``agents.sample``)."""
        return [self.agents[self.ids[j]] for j in self.active]

    def _batches(self, whole: bool = False) -> list:
        """The batch of every hosted agent of the round (its whole shard if ``whole``), labels
        corrupted for the faulty agents when the fault is a data fault."""
        agents = self._round_agents()
        batches = [agent.sampler.all() if whole else agent.sampler.batch() for agent in agents]
        if self.attack is not None and self.attack.kind == "data":
            for p, agent in enumerate(agents):
                if agent.faulty:
                    x, y = batches[p]
                    batches[p] = (x, self.attack.fn(y, num_classes=self.num_classes, rng=agent.fault_rng,
                                                    **self.params, **self.extra()))
        return batches

    def compute(self) -> None:
        """Fill the send buffer with the hosted agents' true messages: their gradients at w (or their
        pseudo-gradients after local steps), through their momentum if any."""
        rows = self.send_rows[:len(self.active)]
        if self.local_steps == 1:
            losses = self.model.gradients(self._batches(), rows)
        else:
            losses = self._local_steps(rows)
        for agent, loss in zip(self._round_agents(), losses):
            agent.losses.add(loss)
        if self.momentum is not None:
            self.momentum.apply(rows, self.active)

    def _local_steps(self, rows: torch.Tensor) -> np.ndarray:
        """K local SGD steps of every agent of the round from the broadcast w, each on fresh batches
        (data faults in every step); ``rows`` become (w - w_K) / (K lr). The losses are those at w."""
        steps, lr = self.local_steps, self.local_lr(self.round - 1)
        start = self.model.flat.clone()
        local = start.expand(len(rows), -1).clone()  # row j: agent j's model
        losses = np.empty(len(rows))
        for k in range(steps):
            for j, batch in enumerate(self._batches()):
                self.model.flat.copy_(local[j])
                loss = self.model.gradients([batch], rows[j:j + 1])[0]
                if k == 0:
                    losses[j] = loss
            local.sub_(rows, alpha=lr)
        torch.sub(start, local, out=rows).div_(steps * lr)
        self.model.flat.copy_(start)
        return losses

    def _corrupt(self) -> None:
        if self.coalition is not None:
            self.coalition.corrupt(self.send, self.traffic, self.round, self.extra())
            return
        if self.attack is None or self.attack.kind != "message":
            return
        agents = self._round_agents()
        faulty = [p for p, agent in enumerate(agents) if agent.faulty]  # rows of this round's faulty agents
        if faulty:
            own = torch.from_numpy(self.send[faulty])
            rngs = [agents[p].fault_rng for p in faulty]
            self.send[faulty] = self.attack.fn(own, honest=None, f=len(self.plan.byzantine), rngs=rngs,
                                               **self.params, **self.extra()).numpy()

    def step(self, t: int) -> None:
        timer = self.timer
        self.round = t
        self.active = self.participation.hosted(t, self.ids)
        self.before()
        with timer("compute"):
            self.compute()
        with timer("attack"):
            self._corrupt()
        send = self.send
        if self.uplink is not None:
            with timer("encode"):
                send = self.uplink.encode(self.send_rows, t)
        with timer("gather"):
            self.transport.collect(send, self.traffic, self.participation.counts(t))
        self.after(t)

    def train_loss(self) -> tuple[float, int]:
        windows = [agent.losses.take() for agent in self.agents.values()]
        honest = [w for agent, w in zip(self.agents.values(), windows) if not agent.faulty]
        return sum(w[0] for w in honest), sum(w[1] for w in honest)

    def evaluate(self) -> None:
        return None

    def final_arrays(self) -> dict:
        return {}

    def report(self) -> dict:
        # Under the vote downlink every agent rank steps its own replica of the model:
        # its fingerprint shows that the replicas stayed equal to the server's model.
        if not self.vote:
            return {}
        return {"replica_sha256": hashlib.sha256(self.model.flat.numpy().tobytes()).hexdigest()}

    def state_dict(self) -> dict:
        return {"agents": {i: a.state_dict() for i, a in self.agents.items()},
                "coalition": None if self.coalition is None else self.coalition.state_dict(),
                "replica": self.model.flat.clone() if self.vote else None}

    def load_state_dict(self, state: dict) -> None:
        for i, agent in self.agents.items():
            agent.load_state_dict(state["agents"][i])
        if self.coalition is not None:
            self.coalition.load_state_dict(state["coalition"])
        if self.vote:
            self.model.flat.copy_(state["replica"])
