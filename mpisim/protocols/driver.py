"""The driver: everything a run does around its protocol's rounds, written once.

    configuration on every rank -> the protocol's plan -> the run directory
    -> the learning problem (data, partition, model, task) -> the rounds,
    with evaluations on a fixed schedule -> summary, per-rank report, arrays

A protocol (:class:`Protocol`) supplies only what differs: its plan (roles,
placement, graph), the object that plays this rank's role, one round of
that role, and its evaluation. The driver never knows a rule's name; a
protocol never opens a file or builds the run directory.

Every bad input stops every rank before any work, with one message naming
the field and exit code 2; an exception during the run aborts the whole
job (:func:`mpisim.mpi.comm.abort_on_error`).

One metrics schema for every protocol, one JSON line per evaluation:
``round``, ``time`` (seconds since the first round started), ``train_loss``
(the honest agents' or nodes' mean training loss since the previous line),
the task's test metrics (``test_loss`` and ``test_accuracy``, or
``test_loss`` and ``distance_to_optimum``), the protocol's extras, and
``bytes`` moved so far by role (``<role>_sent``, ``<role>_received``, and
``adversary_*`` for the faulty agents' own collective).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .. import checkpoint, config, datasets, metrics, plugins, seeding, signals
from ..config import ConfigError
from ..graphs.topology import GraphError
from ..learning import models, tasks
from ..mpi import comm as mpi
from ..mpi.watchdog import Watchdog

ROOT = 0
EVAL_BATCH = 1000  # test samples per forward pass when evaluating


# ---------------------------------------------------------------- what a protocol supplies


class Role:
    """What one rank does in a protocol: built by :meth:`Protocol.create`, driven by :func:`run`.

    Every method marked collective is called by every rank of the job in
    the same order, or the job deadlocks.
    """

    role: str = ""  # "server", "agents", "nodes": the prefix of this rank's byte counts
    ids: Sequence[int] = ()  # the agents or nodes it hosts
    headline: str | None = None  # the test metric the progress bar shows (rank 0)

    def __init__(self):
        self.traffic = mpi.Traffic()
        self.timer = metrics.PhaseTimer()

    def step(self, t: int) -> None:
        """Round t (1, 2, ...); collective."""
        raise NotImplementedError

    def train_loss(self) -> tuple[float, int]:
        """(sum, count) of the honest training losses on this rank since the last call."""
        return 0.0, 0

    def evaluate(self) -> dict | None:
        """The test metrics, on rank 0 (None elsewhere); collective."""
        raise NotImplementedError

    def final_arrays(self) -> dict[str, np.ndarray]:
        """Arrays to save with ``run.save_model`` ({name: array}, on rank 0); collective."""
        return {}

    def artefacts(self) -> dict[str, Any]:
        """JSON files for the run directory ({file name: value}), on rank 0."""
        return {}

    def report(self) -> dict:
        """What this rank adds to its entry of summary.json's per-rank report (small)."""
        return {}

    def record_extra(self) -> dict:
        """Fields rank 0's role adds to each metrics record (small; e.g. what was sampled since the last)."""
        return {}

    def summary(self, final: dict, diverged: bool) -> dict:
        """The protocol's fields of summary.json, on rank 0."""
        return {}

    def describe(self, summary: dict) -> list[str]:
        """Lines printed at the end of the run, on rank 0, after the first (see Protocol.headline)."""
        return []

    def state_dict(self) -> dict:
        """Everything this rank carries from one round to the next (its state objects), for a checkpoint."""
        raise NotImplementedError(f"{type(self).__name__} cannot be checkpointed")

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be resumed")


class Protocol:
    """A protocol's entry in the driver: its configuration, plan and roles (class methods only)."""

    mode: ClassVar[str]                 # "server", "decentralized": summary["mode"]
    config_class: ClassVar[type]
    prog: ClassVar[str]                 # "python -m mpisim.server_mode"
    description: ClassVar[str]
    unit: ClassVar[str] = "round"       # the progress bar's unit
    traffic: ClassVar[tuple[str, ...]] = ("protocol",)  # byte categories its records report

    @staticmethod
    def validate(cfg, world_size: int | None) -> None:
        raise NotImplementedError

    @classmethod
    def plan(cls, cfg) -> Any:
        """Roles, placement, graph: pure, the same on every rank. May raise ConfigError or GraphError."""
        raise NotImplementedError

    @classmethod
    def run_name(cls, cfg, plan) -> list[str]:
        """Parts of the default run directory name (the driver adds the time)."""
        raise NotImplementedError

    @classmethod
    def create(cls, world: mpi.Comm, cfg, plan) -> Role:
        """This rank's role object; collective (roles are decided here, once)."""
        raise NotImplementedError

    @classmethod
    def headline(cls, summary: dict) -> str:
        """The first line printed at the end of the run."""
        raise NotImplementedError


# ---------------------------------------------------------------- shared pieces


def faulty_ids(cfg, n: int) -> tuple[int, ...]:
    """The faulty agents or nodes: ``byzantine.ids``, or ``byzantine.count`` drawn from the seed."""
    byz = cfg.byzantine
    if byz.fault == "none" or byz.count == 0:
        return ()
    return seeding.byzantine_ids(cfg.run.seed, n, byz.count, byz.ids)


@dataclass
class Problem:
    """The learning problem as one rank needs it (built by :func:`load_problem`).

    ``train`` and ``shards`` when the rank trains, ``x_test`` / ``y_test``
    (the first ``data.test_size`` test samples) when it evaluates; every
    rank gets the same initial ``model`` and the ``task``.
    """

    train: datasets.Dataset | None
    shards: list[np.ndarray] | None
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    model: models.FlatModel
    task: tasks.Task

    def sampler(self, i: int, cfg) -> datasets.sampler.Sampler:
        """Agent or node ``i``'s batch sampler over its shard (its stream: the seed and i only)."""
        return datasets.sampler.Sampler(self.train, self.shards[i], agent_id=i, seed=cfg.run.seed,
                                        batch_size=cfg.data.batch_size, fraction=cfg.data.batch_fraction)

    def evaluate(self) -> dict[str, float]:
        """The task's test metrics of the current ``model.flat``."""
        return self.task.evaluate(self.model, self.x_test, self.y_test, batch_size=EVAL_BATCH)


def load_problem(cfg, *, num_shards: int, train: bool, test: bool) -> Problem:
    """Data set (the splits asked for), partition, initial model and task of ``cfg``."""
    name, root, params, seed = cfg.data.name, cfg.data.root, dict(cfg.data.params), cfg.run.seed
    train_set = datasets.load(name, root, "train", params=params, seed=seed) if train else None
    test_set = datasets.load(name, root, "test", params=params, seed=seed) if test else None
    shards = None
    if train_set is not None:
        shards = config.make_partition(cfg, num_shards, labels=train_set.targets if
                                       train_set.num_classes else None,
                                       num_samples=len(train_set)).shards
    x_test = y_test = None
    if test_set is not None:
        x_test, y_test = test_set.tensors(np.arange(cfg.data.test_size or len(test_set)))
    shape_from = train_set if train_set is not None else test_set
    model = models.build(cfg.model.name, input_shape=shape_from.input_shape,
                         num_classes=shape_from.num_classes, seed=seed, init=cfg.model.init,
                         params=dict(cfg.model.params))
    task = tasks.make(kind=shape_from.kind, model_name=cfg.model.name, optimum=shape_from.optimum)
    return Problem(train_set, shards, x_test, y_test, model, task)


def evaluated(t: int, run_cfg) -> bool:
    """Whether the run evaluates after round t: 0 (the initial model), every eval_every, and the
    last. A test, not a set of rounds: ``run.rounds`` may be huge (run until SIGTERM)."""
    return t % run_cfg.eval_every == 0 or t == run_cfg.rounds


def progress_bar(total: int, show: bool, unit: str = "round", initial: int = 0):
    """Progress on stderr when ``show``: a tqdm bar on a terminal, else (a log file, e.g. SLURM's)
    one short line every 5% (:class:`ProgressLines`)."""
    from tqdm import tqdm

    if show and not sys.stderr.isatty():
        return ProgressLines(total, unit, initial=initial)
    return tqdm(total=total, unit=unit, disable=None if show else True, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, initial=initial)


class ProgressLines:
    """The progress bar of a run whose stderr is not a terminal: a line every ``step`` of the
    rounds (5%), naming the rank, with the rate and the last test metric; no carriage returns."""

    def __init__(self, total: int, unit: str, *, initial: int = 0, step: float = 0.05, stream=None):
        self.total, self.unit, self.done = total, unit, initial
        self.stride = max(1, math.ceil(step * total))
        self.next = (initial // self.stride + 1) * self.stride
        self.stream = stream or sys.stderr
        self.started, self.first = time.perf_counter(), initial
        self.postfix = ""

    def set_postfix(self, values: dict, refresh: bool = False) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.done >= self.next or self.done == self.total:
            while self.next <= self.done:
                self.next += self.stride
            rate = (self.done - self.first) / max(time.perf_counter() - self.started, 1e-9)
            extra = f", {self.postfix}" if self.postfix else ""
            print(f"[rank {ROOT}] {self.unit} {self.done}/{self.total} "
                  f"({100 * self.done / self.total:.0f}%), {rate:.2f} {self.unit}s/s{extra}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        pass


def say(text: str, stream=None) -> None:
    """Print a line of rank 0's report; in a log file (not a terminal) the line names the rank."""
    stream = stream or sys.stdout
    print(text if stream.isatty() else f"[rank {ROOT}] {text}", file=stream)


def _restore(role: Role, state: dict) -> None:
    """Put a rank's checkpointed state back: its role's state objects, byte counters and timers."""
    role.load_state_dict(state["role"])
    for direction in ("sent", "received"):
        getattr(role.traffic, direction).update(state["traffic"][direction])
    role.timer.totals.update(state["phases"])


def _restored(role: Role, resumed: Resumed) -> str | None:
    """Restore this rank's state; the error every rank exits with if it does not fit the run."""
    try:
        _restore(role, resumed.state)
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        return (f"config error: run.resume: {resumed.directory}/{resumed.path} passes its checks but does "
                f"not fit this run ({type(exc).__name__}: {exc})")
    return None


def bytes_by_role(reports: list[tuple[str, dict]], *, adversary: bool) -> dict[str, int]:
    """Bytes moved so far by every role (summed over its ranks), from each rank's (role, traffic)."""
    out: dict[str, int] = {}
    for role, traffic in reports:
        for direction in ("sent", "received"):
            key = f"{role}_{direction}"
            out[key] = out.get(key, 0) + traffic[direction].get("protocol", 0)
    if adversary:
        for direction in ("sent", "received"):
            out[f"adversary_{direction}"] = sum(t[direction].get("adversary", 0) for _, t in reports)
    return out


def finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


# ---------------------------------------------------------------- set-up on every rank


@contextlib.contextmanager
def _quiet_unless(show: bool):
    """Silence stdout/stderr (argparse's --help and usage errors) on all ranks but one."""
    if show:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def exit_if(world: mpi.Comm, error: str | None) -> None:
    """Every rank calls this: if any rank has an error, rank 0 prints the first one and all exit 2.

    An empty error string means a clean exit (``--help``): code 0, nothing printed.
    """
    error = mpi.agree(world, error)
    if error is None:
        return
    if error and world.Get_rank() == ROOT:
        say(f"mpisim: {error}", sys.stderr)
    sys.exit(2 if error else 0)


def read_config(world: mpi.Comm, argv: Sequence[str] | None, protocol: type[Protocol]):
    """Parse and validate the configuration on every rank; all ranks exit together on any error.

    ``--help`` prints once and exits 0. ``--print-config`` validates all but
    the job's size (it needs no mpiexec), prints the resolved TOML and exits 0.
    """
    rank = world.Get_rank()
    error, cfg, print_only = None, None, False
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        resumed = config.resume_base(argv)
        if resumed is not None and "--config" not in argv and not any(a.startswith("--config=") for a in argv):
            argv = ["--config", str(Path(resumed).expanduser() / "config.toml"), *argv]
        with _quiet_unless(rank == ROOT):
            cfg, print_only = config.parse_args(protocol.config_class, argv, prog=protocol.prog,
                                                description=protocol.description)
        cfg = plugins.configure(cfg)
        protocol.validate(cfg, None if print_only else world.Get_size())
        if cfg.run.resume:
            _check_resumable(cfg, protocol)
    except ConfigError as exc:
        error = f"config error: {exc}"
    except SystemExit as exc:  # --help, or argparse's own usage error
        error = "" if exc.code in (0, None) else "usage error (see --help)"
    exit_if(world, error)
    if print_only:
        if rank == ROOT:
            print(config.dumps(cfg), end="")
        sys.exit(0)
    return cfg


def _check_resumable(cfg, protocol: type[Protocol]) -> None:
    """A resumed run must be the run it resumes: same configuration but for
    :data:`config.RESUMABLE_CHANGES`."""
    directory = Path(cfg.run.resume).expanduser()
    saved, _ = config.parse_args(protocol.config_class, ["--config", str(directory / "config.toml")],
                                 prog=protocol.prog, description=protocol.description)
    differ = config.resume_differences(saved, cfg)
    if differ:
        raise ConfigError("run.resume", f"the configuration differs from that of the run in {directory}: "
                                        f"{'; '.join(differ)}. A resumed run goes on with the same "
                                        f"configuration (only {', '.join(config.RESUMABLE_CHANGES)} may change)")


@dataclass
class Resumed:
    """Where a resumed run goes on from: the checkpoint every rank checked, this rank's state in it,
    and (rank 0) the run directory's lock and whether the run had already finished."""

    directory: Path
    meta: checkpoint.Meta
    state: dict
    path: str                      # this rank's file, for messages
    lock: checkpoint.Lock | None
    finished: bool


def _resume_point(world: mpi.Comm, cfg) -> Resumed:
    """Lock the run directory (rank 0), then find the newest checkpoint whose every file passes its
    checks (every rank checks its own); collective. Any problem stops every rank with exit code 2,
    naming the files and what is wrong with them; an older intact checkpoint is taken only with
    ``run.resume_fallback``."""
    rank, size = world.Get_rank(), world.Get_size()
    directory = Path(cfg.run.resume).expanduser()

    def lock() -> checkpoint.Lock:
        try:
            held = checkpoint.Lock(directory)
        except checkpoint.LockError as exc:
            raise ConfigError("run.resume", str(exc)) from None
        checkpoint.sweep_incomplete(directory)  # staging left by a crash (nobody else writes now)
        return held

    held = _agreed(world, lambda: lock() if rank == ROOT else None)
    skipped: list[tuple[int, list[str]]] = []
    chosen, state, path, error = None, None, "", None
    for t in mpi.bcast_small(world, checkpoint.rounds(directory) if rank == ROOT else None, root=ROOT):
        head = None
        if rank == ROOT:
            try:
                head = checkpoint.read_meta(directory, t)
                checkpoint.check_metrics(directory, head)
            except checkpoint.Damaged as exc:
                head = str(exc)
        head = mpi.bcast_small(world, head, root=ROOT)
        if isinstance(head, str):
            skipped.append((t, [head]))
            continue
        if head.world_size != size:
            error = (f"run.resume: the checkpoint {directory}/{checkpoint.DIRECTORY}/{checkpoint.name(t)} "
                     f"was written by {head.world_size} ranks, this job has {size}")
            break
        problem = None
        path = f"{checkpoint.DIRECTORY}/{checkpoint.name(t)}/{checkpoint.rank_file(rank)}"
        try:
            state = checkpoint.decode(checkpoint.read_rank_bytes(directory, head, rank), path)
        except checkpoint.Damaged as exc:
            problem, state = str(exc), None
        problems = mpi.gather_small(world, problem, root=ROOT)
        problems = mpi.bcast_small(world, None if rank != ROOT else [p for p in problems if p], root=ROOT)
        if problems:
            skipped.append((t, problems))
            continue
        chosen = head
        break
    if rank == ROOT and error is None:
        error = _resume_verdict(cfg, directory, chosen, skipped)
    exit_if(world, None if error is None else f"config error: {error}")

    finished = False
    if rank == ROOT:
        for t, problems in skipped:  # only with run.resume_fallback: set aside, never deleted
            moved = checkpoint.set_aside(directory, t)
            say(f"mpisim: skipped the damaged checkpoint of round {t} ({'; '.join(problems)}); "
                f"moved to {directory}/{moved}/", sys.stderr)
        finished = chosen.round == cfg.run.rounds and _finished(directory, chosen.round)
    finished = mpi.bcast_small(world, finished, root=ROOT)
    return Resumed(directory, chosen, state, path, held, finished)


def _resume_verdict(cfg, directory: Path, chosen, skipped) -> str | None:
    """Rank 0: why the resume cannot go on from ``chosen`` (None if it can)."""
    damaged = "; ".join(f"{directory}/{p}" for _, problems in skipped for p in problems)
    if chosen is None:
        return (f"run.resume: no checkpoint of {directory} passes its checks: {damaged}" if skipped else
                f"run.resume: {directory} has no checkpoint")
    if skipped and not cfg.run.resume_fallback:
        newest = skipped[0][0]
        return (f"run.resume: the newest checkpoint of {directory} (round {newest}) is damaged: {damaged}. "
                f"The newest intact one is round {chosen.round}: go on from it with --run.resume_fallback true "
                f"(the damaged ones are then set aside, not deleted)")
    if cfg.run.rounds < chosen.round:
        return (f"run.rounds: the checkpoint of {directory} is at round {chosen.round}, beyond "
                f"run.rounds = {cfg.run.rounds}")
    return None


def _finished(directory: Path, rounds: int) -> bool:
    """Whether the run in ``directory`` wrote its summary after ``rounds`` rounds."""
    try:
        return json.loads(checkpoint.read_file(directory, "summary.json"))["rounds"] == rounds
    except (checkpoint.Damaged, ValueError, KeyError, TypeError):
        return False


def _agreed(world: mpi.Comm, make: Callable[[], Any]):
    """``make()`` on this rank; a ConfigError or GraphError on any rank stops every rank (exit 2)."""
    error, value = None, None
    try:
        value = make()
    except GraphError as exc:
        error = f"graph error: {exc}"
    except ConfigError as exc:
        error = f"config error: {exc}"
    exit_if(world, error)
    return value


def _run_dir(cfg, parts: list[str], resumed: Resumed | None):
    """Create the run directory, lock it and write config.toml (rank 0); OS errors become config
    errors.

    A resumed run reopens its directory (locked already): the metrics records written after the
    checkpoint it resumes from are cut off (they will be written again)."""
    toml = config.dumps(config.for_run_dir(cfg))
    if resumed is not None:
        try:
            log = metrics.RunLog(resumed.directory, toml, append=True, keep_bytes=resumed.meta.metrics_bytes)
        except (OSError, ValueError) as exc:
            raise ConfigError("run.resume", f"cannot go on with {resumed.directory}/metrics.jsonl: "
                                            f"{getattr(exc, 'strerror', None) or exc}") from None
        log.lock = resumed.lock
        return log
    try:
        run_dir = metrics.make_run_dir(cfg.run.out_dir, cfg.run.name, metrics.default_run_name(parts))
    except FileExistsError:
        raise ConfigError("run.name", f"{cfg.run.out_dir}/{cfg.run.name} already exists: runs never "
                                      f"write into another run's directory") from None
    except OSError as exc:
        raise ConfigError("run.out_dir", f"cannot create the run directory under {cfg.run.out_dir}: "
                                         f"{exc.strerror or exc}") from None
    try:
        lock = checkpoint.Lock(run_dir)
        log = metrics.RunLog(run_dir, toml)
    except checkpoint.LockError as exc:
        raise ConfigError("run.name", str(exc)) from None
    except OSError as exc:
        raise ConfigError("run.out_dir", f"cannot write into {run_dir}: {exc.strerror or exc}") from None
    log.lock = lock
    return log


# ---------------------------------------------------------------- the run


def main(protocol: type[Protocol], argv: Sequence[str] | None = None) -> int:
    """``python -m mpisim.<mode>``: set up on every rank, run the rounds, report. Returns 0."""
    stops = signals.catch()  # before the set-up: a stop signal during it is kept for after round 1
    torch.set_num_threads(1)  # one rank per core; more threads per rank oversubscribe (6x slower)
    world = mpi.world()
    rank = world.Get_rank()
    cfg = read_config(world, argv, protocol)
    plan = _agreed(world, lambda: protocol.plan(cfg))
    resumed = _resume_point(world, cfg) if cfg.run.resume else None
    if resumed is not None and resumed.finished:
        if rank == ROOT:
            say(f"mpisim: the run in {resumed.directory} has finished its {cfg.run.rounds} rounds: nothing "
                f"to do, nothing changed (to go on, resume it with a larger --run.rounds)")
        return 0
    log = _agreed(world, lambda: _run_dir(cfg, protocol.run_name(cfg, plan), resumed) if rank == ROOT else None)
    summary = run(world, protocol, cfg, plan, log, resumed=resumed, stops=stops)
    if rank == ROOT:
        say(protocol.headline(summary))
        for line in summary.pop("_lines"):
            say(f"  {line}")
        sys.stdout.flush()
    return 0


def run(world: mpi.Comm, protocol: type[Protocol], cfg, plan, log: metrics.RunLog | None, *,
        resumed: Resumed | None = None, stops: signals.StopSignals | None = None) -> dict | None:
    """The rounds of one run (every rank calls it); the summary on rank 0, None elsewhere."""
    rank = world.Get_rank()
    stops = stops or signals.catch()
    start = time.perf_counter()
    role = protocol.create(world, cfg, plan)
    if log is not None:
        for name, value in role.artefacts().items():
            log.save_json(name, value)
    setup_seconds = time.perf_counter() - start
    adversary = "adversary" in protocol.traffic

    def record(t: int, clock: float) -> dict | None:
        report = (role.role, role.train_loss(), role.traffic.as_dict())
        reports = mpi.gather_small(world, report, root=ROOT)
        tested = role.evaluate()
        if rank != ROOT:
            return None
        total = sum(r[1][0] for r in reports)
        count = sum(r[1][1] for r in reports)
        line = {"round": t, "time": time.perf_counter() - clock,
                "train_loss": total / count if count else None, **tested, **role.record_extra(),
                "bytes": bytes_by_role([(r[0], r[2]) for r in reports], adversary=adversary)}
        log.log(line)
        return line

    # Where every rank writes its checkpoints (rank 0 made the directory).
    directory = Path(mpi.bcast_small(world, None if log is None else str(log.dir), root=ROOT))
    first, seconds_before = 0, 0.0
    if resumed is not None:
        exit_if(world, _restored(role, resumed))
        first, seconds_before = resumed.meta.round, resumed.meta.seconds
        resumed.state = None  # the tensors are in the role now
    every = cfg.run.checkpoint_every

    def save(t: int, clock: float) -> None:
        """Checkpoint after round t (collective): every rank's file, then rank 0 commits."""
        with role.timer("checkpoint"):
            digest = checkpoint.write_rank(directory, t, rank, {
                "role": role.state_dict(), "traffic": role.traffic.as_dict(), "phases": dict(role.timer.totals)})
            digests = mpi.gather_small(world, digest, root=ROOT)
            if rank == ROOT:
                files = {checkpoint.rank_file(r): {"bytes": g.bytes, "sha256": g.sha256}
                         for r, g in enumerate(digests)}
                checkpoint.commit(directory, checkpoint.Meta(
                    round=t, world_size=world.Get_size(), seconds=time.perf_counter() - clock,
                    metrics_lines=log.records, metrics_bytes=log.bytes, metrics_sha256=log.sha256(),
                    files=files), keep=cfg.run.checkpoint_keep)

    mpi.barrier(world)  # every rank is set up: the clock starts for all
    clock = time.perf_counter() - seconds_before  # a resumed run's clock goes on
    if first == 0:
        last = record(0, clock)
    else:
        last = metrics.read_jsonl(directory / "metrics.jsonl")[-1] if rank == ROOT else None
    progress = progress_bar(cfg.run.rounds, rank == ROOT and cfg.run.progress, unit=protocol.unit,
                            initial=first)
    watchdog = (Watchdog(world, timeout=cfg.run.round_timeout, root=ROOT, unit=protocol.unit, first=first)
                if cfg.run.round_timeout > 0 else None)
    for t in range(first + 1, cfg.run.rounds + 1):
        role.step(t)
        if evaluated(t, cfg.run):
            last = record(t, clock)
            key = role.headline
            if last is not None and key and finite(last.get(key)):
                progress.set_postfix({key.removeprefix("test_"): f"{last[key]:.4g}"}, refresh=False)
        progress.update(1)
        stop = mpi.any_rank(world, stops.seen is not None) and t < cfg.run.rounds
        if stop:
            stops.ignore()  # stopping now: a further signal must not end the process another way
        if stop or (every and (t % every == 0 or t == cfg.run.rounds)):
            save(t, clock)
        if watchdog is not None:
            watchdog.tick(t)
        if stop:
            if watchdog is not None:
                watchdog.close()
            progress.close()
            if rank == ROOT:
                log.close()
                say(f"mpisim: stopped by a signal after round {t}, with a checkpoint: go on with "
                    f"--run.resume {directory}", sys.stderr)
            sys.exit(checkpoint.EXIT_CHECKPOINTED)
    if watchdog is not None:
        watchdog.close()
    signals.release()
    progress.close()
    loop_seconds = time.perf_counter() - clock

    ranks = mpi.gather_small(world, {"rank": rank, "host": mpi.host_name(), "role": role.role, "ids": list(role.ids),
                                     "peak_rss": metrics.peak_rss_bytes(), "phases": role.timer.totals,
                                     "traffic": role.traffic.as_dict(), **role.report()}, root=ROOT)
    arrays = role.final_arrays() if cfg.run.save_model else {}
    if rank != ROOT:
        return None
    final = {k: v for k, v in last.items() if k not in ("time", "bytes")}
    tested = [v for k, v in final.items() if k.startswith("test_") or k == "distance_to_optimum"]
    diverged = not all(finite(v) for v in tested)
    role.ranks = ranks  # the protocol's summary may read the other ranks' reports
    summary = {
        "mode": protocol.mode,
        "run_dir": str(log.dir),
        "rounds": cfg.run.rounds,
        "world_size": world.Get_size(),
        "hosts": len({r["host"] for r in ranks}),
        **role.summary(final, diverged),
        "final": final,
        "diverged": diverged,
        "bytes": last["bytes"],
        "setup_seconds": setup_seconds,
        "loop_seconds": loop_seconds,
        "rounds_per_second": cfg.run.rounds / loop_seconds,
        "plugins": [{"plugin": p.spec, "file": p.path, "sha256": p.sha256} for p in plugins.loaded()],
        "ranks": ranks,
    }
    # The summary first: a full disk then loses the model file, not the record of the run.
    log.summary(summary)
    for name, array in arrays.items():
        log.save_array(name, array)
    log.close()
    files = ", ".join(["config.toml", *role.artefacts(), "metrics.jsonl", "summary.json",
                       *[f"{name}.npy" for name in arrays]])
    summary["_lines"] = [
        *role.describe(summary),
        f"wall time {loop_seconds:.1f} s for the {protocol.unit}s "
        f"({summary['rounds_per_second']:.2f} {protocol.unit}s/s) + {setup_seconds:.1f} s set-up",
        f"results: {log.dir}/ ({files})",
    ]
    return summary


def entry_point(protocol: type[Protocol]) -> Callable[[Sequence[str] | None], int]:
    """``main`` of ``python -m mpisim.<mode>``: the driver under abort-on-error."""

    @mpi.abort_on_error
    def entry(argv: Sequence[str] | None = None) -> int:
        return main(protocol, argv)

    entry.protocol = protocol  # what the docs read a mode's configuration from
    return entry
