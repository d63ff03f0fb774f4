"""Fault types of the Byzantine agents: pure functions of tensors, looked up by name.

Two kinds of fault:

- **message** attacks replace the gradient a faulty agent sends.
  ``fn(own, *, honest, f, rngs, **params) -> Tensor (a, d)``

  ``own`` (a, d) holds the true stochastic gradients of the ``a`` faulty agents
  being processed; ``f`` is the number of Byzantine agents in the run; ``rngs``
  is a list of ``a`` ``torch.Generator``, one per faulty agent, seeded from the
  run seed and the agent id (so independent of how agents sit on ranks).

  * Non-omniscient attacks (``omniscient=False``) run on each faulty agent's own
    rank, over the faulty agents hosted there, with ``honest=None``. They are
    *row-independent*: row i of the result depends only on ``own[i]`` and
    ``rngs[i]``, so packing agents differently on ranks cannot change a message.
  * Omniscient attacks (``omniscient=True``) run once per round on one leader
    rank, over *all* faulty agents (they may collude), with ``honest`` (h, d) the
    true gradients of the h honest agents of the round.
  * An attack that also takes the keyword ``ctx`` receives the round's
    :class:`Context`: the server's pipeline as a callable on an (n, d) block,
    the current model, the round and the step size. That is what attacks
    that adapt to the defence need.

- **data** attacks corrupt the labels of a faulty agent's batch before it
  computes its gradient: ``fn(labels, *, num_classes, rng, **params) -> LongTensor``.

Every function returns a new tensor and leaves its inputs untouched. Attack
hyperparameters are the keyword-only parameters with defaults after the
interface arguments above; ``param_defaults(name)`` lists them and
``check(name, n, num_byzantine, params)`` validates a configuration before
any rank starts work.

Where the papers leave a choice open, the docstring of the attack says which
reading is implemented (and offers the other as a parameter where it matters).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import torch

from .. import registry

__all__ = [
    "Attack",
    "Context",
    "REGISTRY",
    "add",
    "alie_z",
    "check",
    "param_defaults",
]

# Arguments the simulator passes to every attack of a kind; everything else in
# the keyword-only signature is a user-settable hyperparameter.
_MESSAGE_ARGS = ("honest", "f", "rngs", "ctx")
_DATA_ARGS = ("num_classes", "rng", "ctx")

# Messages travel as float32 buffers: a finite value beyond this would arrive as inf.
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


# --------------------------------------------------------------------------- #
# Helpers shared by the attacks and their checks

def _need_rngs(own: torch.Tensor, rngs) -> None:
    if rngs is None or len(rngs) != own.shape[0]:
        got = "None" if rngs is None else len(rngs)
        raise ValueError(f"need one generator per faulty agent: own has {own.shape[0]} rows, "
                         f"got {got} generators")


def _need_honest(honest, own: torch.Tensor, attack: str) -> torch.Tensor:
    if honest is None:
        raise ValueError(f"{attack} is omniscient: pass the honest agents' gradients as honest=")
    if honest.dim() != 2 or honest.shape[1] != own.shape[1]:
        raise ValueError(f"{attack}: honest must be (h, {own.shape[1]}), got {tuple(honest.shape)}")
    return honest


def _need_2d(own: torch.Tensor) -> None:
    if own.dim() != 2:
        raise ValueError(f"own must be (a, d), got shape {tuple(own.shape)}")


def _not_finite(name: str, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    return None


def _not_nonnegative(name: str, value) -> str | None:
    return _not_finite(name, value) or (f"{name} must be >= 0, got {value!r}" if value < 0 else None)


def _setting(n: int, f: int) -> str:
    return f"n={n} agents with f={f} Byzantine ({n - f} honest)"


def _ok(n: int, num_byzantine: int, **params) -> str | None:
    return None


def _repeat(row: torch.Tensor, a: int, dtype: torch.dtype) -> torch.Tensor:
    """One (d,) vector sent by all ``a`` colluding agents, as a fresh (a, d) tensor."""
    return row.to(dtype).unsqueeze(0).repeat(a, 1)


# --------------------------------------------------------------------------- #
# CGE paper (Gupta, Liu, Vaidya), Section 3.3: the five fault types

def gradient_reverse(own: torch.Tensor, *, honest=None, f: int, rngs=None,
                     scale: float = 100.0) -> torch.Tensor:
    """Gradient-reverse fault: send the own true gradient reversed and scaled.

    Shapes: own (a, d) -> (a, d). Row i is ``-scale * own[i]`` (scale = 100 in
    the paper).

    Reference: CGE paper, Section 3.3, "Gradient-reverse faults": g_j = -100 s_j.
    The paper groups this fault with the omniscient Byzantine ones, but the
    formula uses only the agent's own correct gradient, so here it is
    declared non-omniscient: it runs on the faulty agent's rank with no
    exchange of gradients. No collusion.
    """
    _need_2d(own)
    return -scale * own


def coordinate_wise(own: torch.Tensor, *, honest: torch.Tensor, f: int, rngs=None) -> torch.Tensor:
    """Coordinate-wise fault: every coordinate is the f-th smallest honest value there.

    Shapes: own (a, d), honest (h, d) -> (a, d). For each coordinate l, the
    honest agents' values at l are sorted increasingly and the f-th of them
    (1-based, f = number of Byzantine agents) is taken; ties count with
    multiplicity. Needs h >= f.

    Reference: CGE paper, Section 3.3, "Coordinate-wise faults". Omniscient
    (needs the honest gradients); all faulty agents collude on one vector.
    ``own`` only gives the number of rows.
    """
    _need_2d(own)
    honest = _need_honest(honest, own, "coordinate_wise")
    h = honest.shape[0]
    if not 1 <= f <= h:
        raise ValueError(f"coordinate_wise needs 1 <= f <= number of honest agents; "
                         f"got f={f} with {h} honest")
    kth = torch.kthvalue(honest, f, dim=0).values
    return _repeat(kth, own.shape[0], own.dtype)


def _check_coordinate_wise(n: int, num_byzantine: int) -> str | None:
    f = num_byzantine
    if f > 0 and n - f < f:
        return (f"coordinate_wise takes the f-th smallest honest value, so it needs at least "
                f"f={f} honest agents; {_setting(n, f)}")
    return None


def norm_confusing(own: torch.Tensor, *, honest: torch.Tensor, f: int, rngs=None) -> torch.Tensor:
    """Norm-confusing fault: own gradient reversed, rescaled to the (f+1)-th largest honest norm.

    Shapes: own (a, d), honest (h, d) -> (a, d). Let r be the (f+1)-th largest
    Euclidean norm among the h honest gradients (needs h >= f+1). Row i is
    ``-(r / ||own[i]||) * own[i]``: opposite direction, norm r, so that a
    filter dropping the f largest norms keeps it.

    A zero own gradient has no direction to reverse; its row stays zero
    (the paper's formula divides by zero there).

    Reference: CGE paper, Section 3.3, "Norm-confusing faults". Omniscient
    (needs the honest norms); no collusion: each agent scales its own gradient.
    """
    _need_2d(own)
    honest = _need_honest(honest, own, "norm_confusing")
    h = honest.shape[0]
    if not 0 <= f < h:
        raise ValueError(f"norm_confusing needs at least f+1 honest agents; got f={f} with {h} honest")
    honest_norms = torch.linalg.vector_norm(honest, dim=1)
    target = torch.topk(honest_norms, f + 1).values[-1]
    own_norms = torch.linalg.vector_norm(own, dim=1, keepdim=True)
    factor = torch.where(own_norms > 0, target / own_norms, torch.zeros_like(own_norms))
    return (-factor * own).to(own.dtype)


def _check_norm_confusing(n: int, num_byzantine: int) -> str | None:
    f = num_byzantine
    if f > 0 and n - f < f + 1:
        return (f"norm_confusing uses the (f+1)-th largest honest norm, so it needs at least "
                f"f+1={f + 1} honest agents; {_setting(n, f)}")
    return None


def label_flip(labels: torch.Tensor, *, num_classes: int, rng=None) -> torch.Tensor:
    """Label-flipping fault: label y becomes (num_classes - 1) - y.

    Shapes: labels (k,) integer -> (k,) int64. With 10 classes (MNIST,
    CIFAR-10) this is 9 - y: 0 <-> 9, 1 <-> 8, ...

    Reference: CGE paper, Section 3.3, "Label-flipping faults"; the same 9 - y
    in Yin et al., Section 7 (first experiment) and Ghosh et al., Section 7.
    Data attack, not omniscient; the generator is not used.
    """
    _need_labels(labels, num_classes)
    return (num_classes - 1) - labels.long()


def random_fault(own: torch.Tensor, *, honest=None, f: int, rngs, std: float = 200.0) -> torch.Tensor:
    """Random fault: an i.i.d. Gaussian vector N(0, std^2 I), ignoring the true gradient.

    Shapes: own (a, d) -> (a, d); ``own`` only gives the shape and dtype. Row i
    is drawn from ``rngs[i]`` alone (one (d,) draw per agent).

    Reference: CGE paper, Section 3.3, "Random faults": mean 0, isotropic
    covariance, standard deviation 200 (so ``std`` is the per-coordinate
    standard deviation, variance std^2). Not omniscient, no collusion.
    """
    _need_2d(own)
    _need_rngs(own, rngs)
    d = own.shape[1]
    rows = [torch.randn(d, generator=g, dtype=own.dtype, device=own.device) for g in rngs]
    return std * torch.stack(rows) if rows else own.new_empty(own.shape)


# --------------------------------------------------------------------------- #
# Other papers and current practice

def sign_flip(own: torch.Tensor, *, honest=None, f: int, rngs=None, scale: float = 1.0) -> torch.Tensor:
    """Sign-flip fault: send ``-scale * own`` (scale 1 by default).

    Shapes: own (a, d) -> (a, d). The same formula as ``gradient_reverse`` with
    a milder default; kept as its own name because configurations in the
    literature call it so. Not omniscient, no collusion.
    """
    _need_2d(own)
    return -scale * own


def gaussian(own: torch.Tensor, *, honest=None, f: int, rngs, var: float = 10.0) -> torch.Tensor:
    """Gaussian-noise fault: own true gradient plus N(0, var * I).

    Shapes: own (a, d) -> (a, d). Row i is ``own[i] + sqrt(var) * z_i`` with z_i
    standard normal drawn from ``rngs[i]``.

    Reference: Ghosh et al., Section 7 (least squares): Byzantine workers add
    i.i.d. N(0, 10 I_d) to their gradient. The 10 is the covariance scale, so
    the parameter is the *variance* (``var=10``, standard deviation sqrt(10)
    ~ 3.16), not the standard deviation. Not omniscient, no collusion.
    """
    _need_2d(own)
    _need_rngs(own, rngs)
    d = own.shape[1]
    noise = [torch.randn(d, generator=g, dtype=own.dtype, device=own.device) for g in rngs]
    if not noise:
        return own.clone()
    return own + math.sqrt(var) * torch.stack(noise)


def random_labels(labels: torch.Tensor, *, num_classes: int, rng: torch.Generator) -> torch.Tensor:
    """Random-label fault: every label replaced by a uniform label in {0, ..., num_classes-1}.

    Shapes: labels (k,) integer -> (k,) int64, drawn i.i.d. from ``rng`` (the
    agent's own generator).

    Reference: Yin et al., Section 7 (one-round experiment: labels i.i.d.
    uniform on {0, ..., 9}); Ghosh et al., Section 7 (MNIST, "random label").
    Data attack, not omniscient.
    """
    _need_labels(labels, num_classes)
    return torch.randint(num_classes, tuple(labels.shape), generator=rng, dtype=torch.long,
                         device=labels.device)


def alie_z(n: int, f: int) -> float:
    """The z_max of "A Little Is Enough" for n agents of which f are Byzantine.

    s = floor(n/2 + 1) - f is the number of honest agents the attackers must
    win over to reach a majority, and z = Phi^-1((n - s) / n), with Phi the
    standard normal CDF (Baruch et al. 2019, the z_max of their
    convergence-prevention attack). Needs 1 <= s <= n - 1 for a finite z.
    """
    s = n // 2 + 1 - f   # floor(n/2 + 1) for an integer n
    if not 1 <= s <= n - 1:
        raise ValueError(f"ALIE z_max is infinite for {_setting(n, f)}: "
                         f"s = floor(n/2 + 1) - f = {s} must be between 1 and n-1")
    return NormalDist().inv_cdf((n - s) / n)


def alie(own: torch.Tensor, *, honest: torch.Tensor, f: int, rngs=None,
         z: float | None = None, stats: str = "honest", unbiased: bool = True) -> torch.Tensor:
    """A Little Is Enough: per coordinate, the mean minus z standard deviations.

    Shapes: own (a, d), honest (h, d) -> (a, d). Per coordinate j, mu_j and
    sigma_j are the mean and standard deviation of the gradients named by
    ``stats``; every faulty agent sends ``mu - z * sigma``. ``z`` defaults to
    ``alie_z(n, f)`` with n = f + h.

    Reference: Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing
    Defenses For Distributed Learning", NeurIPS 2019 (convergence-prevention
    attack and its z_max). Omniscient; all faulty agents collude on one vector.

    Choices: the paper estimates mu and sigma from the corrupted workers' own
    correct gradients (its "non-omniscient" setting); common practice
    (Karimireddy et al.; ByzFL) uses the honest gradients, which is the
    default here (``stats="honest"``; ``stats="faulty"`` gives the paper's
    estimate from ``own``). The paper allows any value in mu +- z sigma; the
    minus sign is used. sigma is the Bessel-corrected sample standard
    deviation (``unbiased=True``, as torch.std and as ByzFL 0.0.11's
    ``ALittleIsEnough``, whose variance has ddof=1 on both back ends);
    ``unbiased=False`` divides by the count instead.
    """
    _need_2d(own)
    honest = _need_honest(honest, own, "alie")
    sample = honest if stats == "honest" else own if stats == "faulty" else None
    if sample is None:
        raise ValueError(f"alie: stats must be 'honest' or 'faulty', got {stats!r}")
    if sample.shape[0] < (2 if unbiased else 1):
        raise ValueError(f"alie: too few {stats} gradients ({sample.shape[0]}) for a standard deviation")
    if z is None:
        z = alie_z(f + honest.shape[0], f)
    mu = sample.mean(dim=0)
    sigma = sample.std(dim=0, correction=1 if unbiased else 0)
    return _repeat(mu - z * sigma, own.shape[0], own.dtype)


def _check_alie(n: int, num_byzantine: int, *, z, stats, unbiased) -> str | None:
    f = num_byzantine
    if stats not in ("honest", "faulty"):
        return f"alie: stats must be 'honest' or 'faulty', got {stats!r}"
    if not isinstance(unbiased, bool):
        return f"alie: unbiased must be True or False, got {unbiased!r}"
    if z is not None:
        bad = _not_finite("z", z)
        if bad:
            return bad
    if f == 0:
        return None
    count = n - f if stats == "honest" else f
    need = 2 if unbiased else 1
    if count < need:
        return (f"alie with stats={stats!r} and unbiased={unbiased} needs at least {need} "
                f"{stats} agents for a standard deviation; {_setting(n, f)}")
    if z is None:
        s = n // 2 + 1 - f
        if not 1 <= s <= n - 1:
            return (f"alie: z_max = Phi^-1((n - s)/n) with s = floor(n/2 + 1) - f = {s} is not finite; "
                    f"{_setting(n, f)}; give z explicitly")
    return None


def ipm(own: torch.Tensor, *, honest: torch.Tensor, f: int, rngs=None,
        epsilon: float = 0.1) -> torch.Tensor:
    """Inner-product manipulation: every faulty agent sends -epsilon times the honest mean.

    Shapes: own (a, d), honest (h, d) -> (a, d); row i is
    ``-epsilon * mean(honest)`` for every i. A small epsilon keeps the vector
    inside the honest cloud while making the inner product of the aggregate
    with the true gradient negative.

    Reference: Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant
    SGD by Inner Product Manipulation", UAI 2020. Omniscient; all faulty
    agents collude on one vector.
    """
    _need_2d(own)
    honest = _need_honest(honest, own, "ipm")
    if honest.shape[0] < 1:
        raise ValueError("ipm needs at least one honest gradient")
    return _repeat(-epsilon * honest.mean(dim=0), own.shape[0], own.dtype)


def _check_ipm(n: int, num_byzantine: int, *, epsilon) -> str | None:
    f = num_byzantine
    bad = _not_finite("epsilon", epsilon)
    if bad:
        return bad
    if f > 0 and n - f < 1:
        return f"ipm averages the honest gradients, so it needs at least 1 honest agent; {_setting(n, f)}"
    return None


def mimic(own: torch.Tensor, *, honest: torch.Tensor, f: int, rngs=None, target: int = 0) -> torch.Tensor:
    """Mimic: every faulty agent sends a copy of one honest agent's gradient.

    Shapes: own (a, d), honest (h, d) -> (a, d); every row is
    ``honest[target]``, ``target`` being an index among the honest agents
    (0 <= target < h), fixed for the whole run.

    Reference: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on
    Heterogeneous Datasets via Bucketing", ICLR 2022 (mimic attack). There the
    target is chosen by a heuristic during a warm-up phase; here it is a
    parameter. Omniscient; all faulty agents collude on one vector.
    """
    _need_2d(own)
    honest = _need_honest(honest, own, "mimic")
    if not 0 <= target < honest.shape[0]:
        raise ValueError(f"mimic: target={target} is not an honest index in [0, {honest.shape[0]})")
    return _repeat(honest[target], own.shape[0], own.dtype)


def _check_mimic(n: int, num_byzantine: int, *, target) -> str | None:
    f = num_byzantine
    if isinstance(target, bool) or not isinstance(target, int):
        return f"mimic: target must be an integer index among the honest agents, got {target!r}"
    if f > 0 and not 0 <= target < n - f:
        return f"mimic: target={target} must be an honest index in [0, {n - f}); {_setting(n, f)}"
    return None


# --------------------------------------------------------------------------- #
# Attacks that choose their factor every round

def _not_search(evals, start, step, ratio) -> str | None:
    """The line search's parameters (:func:`_line_search`), each named as a config gives it."""
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 1:
        return f"byzantine.params.evals must be an integer >= 1, got {evals!r}"
    for key, value in (("start", start), ("step", step), ("ratio", ratio)):
        if _not_finite(key, value):
            return f"byzantine.params.{key} must be a finite number, got {value!r}"
    if step == 0:
        return "byzantine.params.step must not be 0"
    if not 0 < ratio < 1:
        return f"byzantine.params.ratio must lie strictly between 0 and 1, got {ratio!r}"
    return None


def _line_search(objective: Callable[[float], float], *, evals: int, start: float, step: float,
                 ratio: float) -> float:
    """The x maximising ``objective`` found by ByzFL 0.0.11's line search (its Optimal_* attacks).

    Expansion: from x = start, try best + delta with delta = step, doubling delta after each
    improvement, until a try does not improve; delta is then multiplied by ``ratio``.
    Contraction: try best + delta, keep it if it improves, multiply delta by ``ratio``; repeat.
    ``evals`` evaluations in all (start included). An improvement is a strictly larger value,
    so ties keep the earlier x; a NaN value counts as -inf. Like ByzFL's, the search only ever
    moves in the direction of ``step``: it never tries a point between the previous best and
    the current one.
    """
    def value(x: float) -> float:
        y = float(objective(x))
        return -math.inf if math.isnan(y) else y

    best_x, best_y = start, value(start)
    delta, left = step, evals - 1
    while left > 0:                      # expansion
        x = best_x + delta
        y, left = value(x), left - 1
        if y > best_y:
            best_x, best_y, delta = x, y, 2 * delta
        else:
            delta *= ratio
            break
    while left > 0:                      # contraction
        x = best_x + delta
        y, left = value(x), left - 1
        if y > best_y:
            best_x, best_y = x, y
        delta *= ratio
    return best_x


def _need_pipeline(ctx, attack: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if ctx is None or getattr(ctx, "aggregate", None) is None:
        raise ValueError(f"{attack} adapts to the server's rule: it needs the round's Context with the "
                         f"server's pipeline (ctx.aggregate), which only the server mode has")
    return ctx.aggregate


def _search_factor(honest: torch.Tensor, a: int, make: Callable[[float], torch.Tensor], aggregate,
                   **search) -> float:
    """The factor x for which ``a`` copies of ``make(x)`` move the aggregate farthest from the honest mean.

    The block aggregated is the h honest rows followed by the a Byzantine ones, whatever the
    agents' real order: for a rule that is invariant to permuting its rows (all built-ins but
    for which of two tied rows is kept) the aggregate is the same. The distance is float64."""
    target = honest.to(torch.float64).mean(dim=0)

    def damage(x: float) -> float:
        block = torch.cat([honest, make(x).to(honest.dtype).unsqueeze(0).expand(a, -1)])
        return float(torch.linalg.vector_norm(aggregate(block).to(torch.float64) - target))

    return _line_search(damage, **search)


def opt_alie(own: torch.Tensor, *, honest: torch.Tensor, f: int, rngs=None, ctx: Context | None = None,
             evals: int = 20, start: float = 0.0, step: float = 10.0, ratio: float = 0.8) -> torch.Tensor:
    """ALIE with its factor chosen every round against the server's rule: mu - z sigma, z by line search.

    Shapes: own (a, d), honest (h, d) -> (a, d). mu and sigma are the honest gradients'
    coordinate-wise mean and Bessel-corrected standard deviation (as ``alie``); every faulty
    agent sends mu - z sigma, where z maximises || ctx.aggregate([honest; a copies]) - mu ||,
    searched by ByzFL 0.0.11's line search (:func:`_line_search`: ``evals`` = 20 evaluations
    from ``start`` = 0 with first step ``step`` = 10 and contraction ``ratio`` = 0.8).

    Reference: ByzFL 0.0.11 ``Optimal_ALittleIsEnough`` (Allouah et al., Fixing by Mixing,
    AISTATS 2023, use it), on Baruch et al.'s ALIE. ByzFL sends mu + z sigma; the minus sign of
    ``alie`` is kept here, so with the same search z >= 0 moves against the mean's direction
    as ``alie`` does. The aggregate is the server's whole pipeline (pre-aggregation steps, rule,
    f) from ``ctx``; ByzFL takes the aggregator and pre-aggregators as arguments. Omniscient,
    colluding, rule-aware: server mode only. Needs h >= 2.
    """
    _need_2d(own)
    honest = _need_honest(honest, own, "opt_alie")
    if honest.shape[0] < 2:
        raise ValueError(f"opt_alie: needs at least 2 honest gradients for a standard deviation, "
                         f"got {honest.shape[0]}")
    aggregate = _need_pipeline(ctx, "opt_alie")
    a = own.shape[0]
    if a == 0:
        return own.new_empty(own.shape)
    mu, sigma = honest.mean(dim=0), honest.std(dim=0, correction=1)
    z = _search_factor(honest, a, lambda x: mu - x * sigma, aggregate,
                       evals=evals, start=start, step=step, ratio=ratio)
    return _repeat(mu - z * sigma, a, own.dtype)


def opt_ipm(own: torch.Tensor, *, honest: torch.Tensor, f: int, rngs=None, ctx: Context | None = None,
            evals: int = 20, start: float = 0.0, step: float = 10.0, ratio: float = 0.8) -> torch.Tensor:
    """IPM with its epsilon chosen every round against the server's rule by line search.

    Shapes: own (a, d), honest (h, d) -> (a, d). Every faulty agent sends -epsilon * mu, mu the
    honest mean, where epsilon maximises || ctx.aggregate([honest; a copies]) - mu ||, searched
    as in :func:`opt_alie` (ByzFL 0.0.11's line search, 20 evaluations, start 0, step 10,
    ratio 0.8).

    Reference: ByzFL 0.0.11 ``Optimal_InnerProductManipulation`` (the same formula,
    -tau * mean), on Xie, Koyejo, Gupta's IPM (UAI 2020). Omniscient, colluding, rule-aware:
    server mode only. Needs h >= 1.
    """
    _need_2d(own)
    honest = _need_honest(honest, own, "opt_ipm")
    if honest.shape[0] < 1:
        raise ValueError("opt_ipm needs at least one honest gradient")
    aggregate = _need_pipeline(ctx, "opt_ipm")
    a = own.shape[0]
    if a == 0:
        return own.new_empty(own.shape)
    mu = honest.mean(dim=0)
    eps = _search_factor(honest, a, lambda x: -x * mu, aggregate,
                         evals=evals, start=start, step=step, ratio=ratio)
    return _repeat(-eps * mu, a, own.dtype)


def _check_searched(least: int, why: str):
    """The check of an attack whose factor is searched: the search's parameters, and at least ``least``
    honest agents (``why`` says what for)."""
    def check_fn(n: int, num_byzantine: int, *, evals, start, step, ratio) -> str | None:
        f = num_byzantine
        bad = _not_search(evals, start, step, ratio)
        if bad:
            return bad
        if f > 0 and n - f < least:
            return f"{why}; {_setting(n, f)}"
        return None

    return check_fn


_check_opt_alie = _check_searched(2, "opt_alie needs at least 2 honest agents for a standard deviation")
_check_opt_ipm = _check_searched(1, "opt_ipm averages the honest gradients, so it needs at least 1 honest agent")


_PERTURBATIONS = ("std", "unit", "sign")


def _gamma_search(feasible: Callable[[float], bool], gamma_init: float, tau: float) -> float:
    """Shejwalkar and Houmansadr's search for the largest feasible gamma (their Algorithm 1 and code).

    gamma = gamma_init, step = gamma_init, good = 0; while |good - gamma| > tau: if gamma is
    feasible, good = gamma and gamma += step / 2, else gamma -= step / 2; then step /= 2.
    The last gamma found feasible is returned (0 if none). Every gamma tried is good plus
    the current step, so the search ends with good + 2 * step infeasible (or never tried when
    it is 2 * gamma_init: gamma never exceeds 2 * gamma_init) and 2 * step <= 2 * tau.
    """
    gamma, step, good = float(gamma_init), float(gamma_init), 0.0
    while abs(good - gamma) > tau:
        if feasible(gamma):
            good, gamma = gamma, gamma + step / 2
        else:
            gamma -= step / 2
        step /= 2
    return good


def _min_attack(own: torch.Tensor, honest: torch.Tensor, attack: str, perturbation: str,
                gamma_init: float, tau: float, bound: str) -> torch.Tensor:
    """mu + gamma p, with gamma from :func:`_gamma_search` on MinMax's or MinSum's constraint."""
    _need_2d(own)
    honest = _need_honest(honest, own, attack)
    if perturbation not in _PERTURBATIONS:
        raise ValueError(f"{attack}: perturbation must be one of {', '.join(map(repr, _PERTURBATIONS))}, "
                         f"got {perturbation!r}")
    h = honest.shape[0]
    if h < (2 if perturbation == "std" else 1):
        raise ValueError(f"{attack}: too few honest gradients ({h}) for perturbation={perturbation!r}")
    g = honest.to(torch.float64)
    mu = g.mean(dim=0)
    if perturbation == "std":
        p = -g.std(dim=0, correction=1)
    elif perturbation == "unit":
        norm = torch.linalg.vector_norm(mu)
        p = -mu / norm if norm > 0 else torch.zeros_like(mu)
    else:
        p = -torch.sign(mu)
    # Everything in distances from mu: ||mu + gamma p - g_i||^2 = gamma^2 <p,p> - 2 gamma <p,c_i> + <c_i,c_i>.
    c = g - mu
    gram = c @ c.T
    sq = gram.diagonal()
    pairwise = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min_(0.0)
    pc, pp = c @ p, float(p @ p)

    def to_m(gamma: float) -> torch.Tensor:   # the h squared distances from mu + gamma p
        return (gamma * gamma * pp - 2 * gamma * pc + sq).clamp_min(0.0)

    if attack == "minmax":          # max_i ||m - g_i||^2 <= max_{i,j} ||g_i - g_j||^2
        limit, combine = float(pairwise.max()), torch.max
    else:                           # sum_i ||m - g_i||^2 <= max_j (or min_j) sum_i ||g_j - g_i||^2
        scores = pairwise.sum(dim=1)
        limit, combine = float(scores.max() if bound == "max" else scores.min()), torch.sum

    def feasible(gamma: float) -> bool:
        return float(combine(to_m(gamma))) <= limit

    gamma = _gamma_search(feasible, gamma_init, tau)
    return _repeat(mu + gamma * p, own.shape[0], own.dtype)


def minmax(own: torch.Tensor, *, honest: torch.Tensor, f: int, rngs=None, perturbation: str = "std",
           gamma_init: float = 10.0, tau: float = 1e-5) -> torch.Tensor:
    """Min-Max: mu + gamma p, no farther from any honest gradient than two honest gradients are apart.

    Shapes: own (a, d), honest (h, d) -> (a, d). mu is the honest mean and p the perturbation:
    ``"std"`` p = -sigma, the honest coordinate-wise (Bessel-corrected) standard deviation;
    ``"unit"`` p = -mu / ||mu|| (0 when mu = 0); ``"sign"`` p = -sign(mu). gamma is the largest
    value the paper's search finds with max_i ||m - g_i|| <= max_{i,j} ||g_i - g_j|| over the
    honest g_i (:func:`_gamma_search`: from ``gamma_init`` = 10, halving the step until it is
    below ``tau`` = 1e-5, as the authors' code; gamma never exceeds 2 * gamma_init).
    Computed in float64 from the distances to mu.

    Reference: Shejwalkar, Houmansadr, Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning, NDSS 2021, AGR-agnostic Min-Max, with full
    knowledge of the honest gradients. Omniscient; all faulty agents collude on one vector.
    Needs h >= 2 for ``"std"``, h >= 1 otherwise.
    """
    return _min_attack(own, honest, "minmax", perturbation, gamma_init, tau, "max")


def minsum(own: torch.Tensor, *, honest: torch.Tensor, f: int, rngs=None, perturbation: str = "std",
           gamma_init: float = 10.0, tau: float = 1e-5, bound: str = "max") -> torch.Tensor:
    """Min-Sum: mu + gamma p, whose squared distances to the honest gradients sum to at most an honest one's.

    Shapes: own (a, d), honest (h, d) -> (a, d). mu, p, ``perturbation``, ``gamma_init``, ``tau``
    and the search as in :func:`minmax`; the constraint is sum_i ||m - g_i||^2 <=
    max_j sum_i ||g_j - g_i||^2 (``bound="max"``, the paper's formula). The authors' released
    code bounds by the smallest such sum instead (``min_score``): ``bound="min"``, a smaller
    gamma. Since the honest c_i = g_i - mu sum to 0, the constraint reads gamma ||p|| <=
    max_j ||g_j - mu|| (or min_j): the search approximates that gamma from below.

    Reference: Shejwalkar, Houmansadr, NDSS 2021, AGR-agnostic Min-Sum, full knowledge.
    Omniscient; all faulty agents collude on one vector. Needs h >= 2 for ``"std"``.
    """
    if bound not in ("max", "min"):
        raise ValueError(f"minsum: bound must be 'max' or 'min', got {bound!r}")
    return _min_attack(own, honest, "minsum", perturbation, gamma_init, tau, bound)


def _check_min_attack(attack: str, n: int, f: int, perturbation, gamma_init, tau) -> str | None:
    if perturbation not in _PERTURBATIONS:
        return (f"{attack}: byzantine.params.perturbation must be one of "
                f"{', '.join(map(repr, _PERTURBATIONS))}, got {perturbation!r}")
    for key, value in (("gamma_init", gamma_init), ("tau", tau)):
        if _not_finite(key, value) or not value > 0:
            return f"{attack}: byzantine.params.{key} must be a finite number > 0, got {value!r}"
    need = 2 if perturbation == "std" else 1
    if f > 0 and n - f < need:
        return (f"{attack} with perturbation={perturbation!r} needs at least {need} honest agent"
                f"{'s' if need > 1 else ''}; {_setting(n, f)}")
    return None


def _check_minmax(n: int, num_byzantine: int, *, perturbation, gamma_init, tau) -> str | None:
    return _check_min_attack("minmax", n, num_byzantine, perturbation, gamma_init, tau)


def _check_minsum(n: int, num_byzantine: int, *, perturbation, gamma_init, tau, bound) -> str | None:
    if bound not in ("max", "min"):
        return f"minsum: byzantine.params.bound must be 'max' or 'min', got {bound!r}"
    return _check_min_attack("minsum", n, num_byzantine, perturbation, gamma_init, tau)


def nan(own: torch.Tensor, *, honest=None, f: int, rngs=None) -> torch.Tensor:
    """NaN fault: every coordinate is NaN (a crashed or corrupted computation).

    Shapes: own (a, d) -> (a, d). Tests that the filter and the server survive
    non-finite input. Not omniscient, no collusion.
    """
    _need_2d(own)
    return torch.full_like(own, float("nan"))


def inf(own: torch.Tensor, *, honest=None, f: int, rngs=None, sign: int = 1) -> torch.Tensor:
    """Infinite fault: every coordinate is ``sign * inf`` (sign = +1 or -1).

    Shapes: own (a, d) -> (a, d). Not omniscient, no collusion.
    """
    _need_2d(own)
    return torch.full_like(own, math.copysign(math.inf, sign))


def huge(own: torch.Tensor, *, honest=None, f: int, rngs=None, value: float = 1e30) -> torch.Tensor:
    """Overflow fault: every coordinate equals ``value`` (1e30 by default).

    Shapes: own (a, d) -> (a, d). Each coordinate is finite in float32, but the
    squared norm (d * 1e60) overflows float32, which catches filters that
    compute norms or distances naively. Not omniscient, no collusion.
    """
    _need_2d(own)
    return torch.full_like(own, value)


def _need_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")


# --------------------------------------------------------------------------- #
# Value checks of the non-omniscient attacks' parameters

def _check_scale(n: int, num_byzantine: int, *, scale) -> str | None:
    return _not_finite("scale", scale)


def _check_std(n: int, num_byzantine: int, *, std) -> str | None:
    return _not_nonnegative("std", std)


def _check_var(n: int, num_byzantine: int, *, var) -> str | None:
    return _not_nonnegative("var", var)


def _check_sign(n: int, num_byzantine: int, *, sign) -> str | None:
    if isinstance(sign, bool) or sign not in (1, -1):
        return f"sign must be +1 or -1, got {sign!r}"
    return None


def _check_value(n: int, num_byzantine: int, *, value) -> str | None:
    bad = _not_finite("value", value)
    if bad:
        return bad
    if abs(value) > _FLOAT32_MAX:
        return (f"|value| = {value!r} exceeds the float32 maximum {_FLOAT32_MAX:.4g} "
                f"and would arrive as inf; use the 'inf' attack for that")
    return None


# --------------------------------------------------------------------------- #
# Registry

@dataclass(frozen=True)
class Context:
    """The round as a rule-aware attack sees it: passed as ``ctx=`` to an attack that takes ``ctx``.

    - ``aggregate(x) -> (d,)``: the server's pipeline on an (n, d) float32
      block: the run's pre-aggregation steps, then its rule, with the run's
      f and parameters, on whole rows (also when the server is sharded). Its
      randomness (bucketing's shuffle) comes from its own stream, the same at
      every call of a round, so the attacker's draws never move the server's.
      Not included: the server-side gradient averaging of the CGE paper
      (``aggregator.averaging``, state the server keeps) and a thresholding
      on compressed norms. None in the decentralized mode (no server).
    - ``model``: a copy of the model the round's gradients are computed at.
    - ``round``: the round, from 1; ``step_size``: the eta_t the server will
      step by (None when the aggregate replaces the model: one-round).
    - ``n``: the agents (or nodes); ``f``: the rule's f; ``rule``: its name.
    """

    aggregate: Callable[[torch.Tensor], torch.Tensor] | None
    model: torch.Tensor
    round: int
    step_size: float | None
    n: int
    f: int
    rule: str


def pipeline(cfg, seed: int) -> Callable[[int], Callable[[torch.Tensor], torch.Tensor]]:
    """``for_round(t)``: the server's pipeline of ``cfg.aggregator`` as :attr:`Context.aggregate` for
    round t (the rule is built once; each call draws from the stream (ATTACK_PIPELINE, t))."""
    from .. import seeding
    from . import aggregators

    agg = cfg.aggregator
    rule = aggregators.build(agg.name, f=agg.f, params=dict(agg.params), pre=agg.pre,
                             pre_params={k: dict(v) for k, v in agg.pre_params.items()})

    def for_round(t: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def aggregate(x: torch.Tensor) -> torch.Tensor:
            return rule(x.to(torch.float32), seeding.torch_generator(seed, seeding.ATTACK_PIPELINE, t))

        return aggregate

    return for_round


@dataclass(frozen=True)
class Attack:
    """One fault type: its config name, how the simulator runs it, and where it is defined.

    ``fn`` follows the calling convention of its ``kind`` (module docstring).
    ``check(n, num_byzantine, **params)`` receives every parameter (defaults
    filled in) and returns a message naming n and the number of Byzantine
    agents when the setting is impossible, else None. ``colludes`` is True
    when all faulty agents send one shared vector chosen together.
    """

    name: str
    kind: str                      # "message" or "data"
    omniscient: bool               # needs the honest agents' gradients of the round
    colludes: bool                 # all faulty agents send one jointly chosen vector
    fn: Callable
    check: Callable[..., str | None]
    reference: str                 # paper and section/equation

    @property
    def wants_ctx(self) -> bool:
        """Whether ``fn`` takes the round's :class:`Context` (keyword ``ctx``)."""
        return "ctx" in inspect.signature(self.fn).parameters

    @property
    def summary(self) -> str:
        """First line of the function's docstring."""
        return registry.first_line(self.fn)


def add(name: str, kind: str, omniscient: bool, colludes: bool, fn: Callable, reference: str,
        check_fn: Callable[..., str | None] | None = None) -> Attack:
    """Register fault ``name`` (:data:`mpisim.registry.attacks`; ``mpisim.register.attack`` calls
    this too) and return its :class:`Attack`."""
    if kind not in ("message", "data"):
        raise registry.RegistryError(f"attack {name!r}: kind must be 'message' or 'data', got {kind!r}")
    if colludes and not omniscient:
        raise registry.RegistryError(f"attack {name!r}: a colluding attack is omniscient (it is computed "
                                     f"from every agent's gradient)")
    attack = Attack(name=name, kind=kind, omniscient=omniscient, colludes=colludes, fn=fn,
                    check=check_fn or _ok, reference=reference)
    interface = _MESSAGE_ARGS if kind == "message" else _DATA_ARGS
    registry.attacks.add(registry.Entry(
        kind="attack", name=name, obj=attack, params=registry.keyword_defaults(fn, skip=interface),
        check=attack.check, description=attack.summary, reference=reference,
        properties={"kind": kind, "omniscient": omniscient, "colludes": colludes},
        origin=registry.current_origin(fn)))
    return attack


def _structural_only(check_fn):
    """Adapts a check that needs no parameters to the check(n, num_byzantine, **params) form."""
    def wrapped(n: int, num_byzantine: int, **params) -> str | None:
        return check_fn(n, num_byzantine)
    return wrapped


_CGE = "Gupta, Liu, Vaidya (CGE paper), Section 3.3"

for _args in [
    ("gradient_reverse", "message", False, False, gradient_reverse,
     f"{_CGE}, gradient-reverse faults (g = -100 s)", _check_scale),
    ("coordinate_wise", "message", True, True, coordinate_wise,
     f"{_CGE}, coordinate-wise faults", _structural_only(_check_coordinate_wise)),
    ("norm_confusing", "message", True, False, norm_confusing,
     f"{_CGE}, norm-confusing faults", _structural_only(_check_norm_confusing)),
    ("label_flip", "data", False, False, label_flip,
     f"{_CGE}, label-flipping faults (9 - y); Yin et al. Section 7; Ghosh et al. Section 7"),
    ("random", "message", False, False, random_fault,
     f"{_CGE}, random faults (N(0, 200^2 I))", _check_std),
    ("sign_flip", "message", False, False, sign_flip,
     "common practice (-g); same formula as gradient_reverse with scale 1", _check_scale),
    ("gaussian", "message", False, False, gaussian,
     "Ghosh et al., Section 7 (gradient + N(0, 10 I_d))", _check_var),
    ("random_labels", "data", False, False, random_labels,
     "Yin et al., Section 7 (one-round experiment); Ghosh et al., Section 7"),
    ("alie", "message", True, True, alie,
     "Baruch, Baruch, Goldberg, A Little Is Enough, NeurIPS 2019", _check_alie),
    ("ipm", "message", True, True, ipm,
     "Xie, Koyejo, Gupta, Fall of Empires (inner-product manipulation), UAI 2020", _check_ipm),
    ("mimic", "message", True, True, mimic,
     "Karimireddy, He, Jaggi, Byzantine-Robust Learning on Heterogeneous Datasets "
     "via Bucketing, ICLR 2022", _check_mimic),
    ("opt_alie", "message", True, True, opt_alie,
     "ByzFL 0.0.11 Optimal_ALittleIsEnough (line search of ALIE's factor against the rule)", _check_opt_alie),
    ("opt_ipm", "message", True, True, opt_ipm,
     "ByzFL 0.0.11 Optimal_InnerProductManipulation (line search of IPM's epsilon against the rule)",
     _check_opt_ipm),
    ("minmax", "message", True, True, minmax,
     "Shejwalkar, Houmansadr, Manipulating the Byzantine, NDSS 2021 (AGR-agnostic Min-Max)", _check_minmax),
    ("minsum", "message", True, True, minsum,
     "Shejwalkar, Houmansadr, Manipulating the Byzantine, NDSS 2021 (AGR-agnostic Min-Sum)", _check_minsum),
    ("nan", "message", False, False, nan, "robustness test (non-finite message)"),
    ("inf", "message", False, False, inf, "robustness test (non-finite message)", _check_sign),
    ("huge", "message", False, False, huge, "robustness test (float32 overflow)", _check_value),
]:
    add(*_args)

#: config name -> :class:`Attack` (:data:`mpisim.registry.attacks`: built-ins and plugins alike)
REGISTRY = registry.attacks


def _params(attack: Attack) -> dict[str, inspect.Parameter]:
    interface = _MESSAGE_ARGS if attack.kind == "message" else _DATA_ARGS
    return {p.name: p for p in inspect.signature(attack.fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in interface}


def _lookup(name: str) -> Attack:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(_unknown(name)) from None


def _unknown(name) -> str:
    return f"unknown attack {name!r}; known attacks: {', '.join(sorted(REGISTRY))}"


def param_defaults(name: str) -> dict:
    """The hyperparameters of attack ``name`` and their defaults, e.g. ``{"scale": 100.0}``."""
    return {k: p.default for k, p in _params(_lookup(name)).items()}


def check(name: str, n: int, num_byzantine: int, params: dict | None = None) -> str | None:
    """Validate an attack configuration; return a message saying what is wrong, or None.

    Catches an unknown attack name (and lists the known ones), unknown
    parameters (and lists the accepted ones), bad parameter values, and
    settings the fault cannot run in for n agents of which ``num_byzantine``
    are Byzantine (e.g. norm_confusing needs at least f+1 honest agents).
    Never adjusts anything quietly.
    """
    if name not in REGISTRY:
        return _unknown(name)
    attack = REGISTRY[name]
    accepted = param_defaults(name)
    params = dict(params or {})
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        return f"attack {name!r} has no parameter {', '.join(map(repr, unknown))}; accepted: {listed}"
    for label, value in (("n", n), ("num_byzantine", num_byzantine)):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{label} must be an integer, got {value!r}"
    if n < 1 or not 0 <= num_byzantine <= n:
        return f"need n >= 1 and 0 <= f <= n; got n={n}, f={num_byzantine}"
    message = attack.check(n, num_byzantine, **{**accepted, **params})
    if message is not None and not message.startswith(name):
        message = f"{name}: {message}"
    return message
