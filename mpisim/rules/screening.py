"""BRIDGE screening: how a node combines its own model with its neighbours'.

In the decentralized mode (BRIDGE, Algorithm 1) every node j broadcasts its
model w_j(t) and receives w_i(t) from each neighbour i in N_j. Before its
local step it replaces w_j(t) by a screened combination of its own vector and
the m = |N_j| received ones. Every screen here is a pure function

    fn(own, received, *, b) -> Tensor

``own`` has shape (d,), ``received`` has shape (m, d) with one row per
neighbour in ascending neighbour id, and b is the number of Byzantine
neighbours the screen must tolerate. The result has shape (d,) and the dtype
of the inputs; neither input is modified. The local gradient step of eq (7)
is not part of the screen: the caller applies it to the result.

Screens are looked up by their config name in :data:`SCREENS`. Each carries
``fn.check(m, b)``, which returns a message naming the degree m and b when
the screen cannot run on a node of degree m with tolerance b, and None
otherwise; calling a screen on such a setting raises ``ValueError`` with that
message (b is never lowered quietly). The bounds of the robust screens come
from the checks of the matching rules in :mod:`mpisim.rules.aggregators`.
``fn.min_degree(b)`` is the smallest m that ``fn.check`` accepts, found by
asking the check itself (:func:`min_degree`), so that the graph check of the
decentralized mode and the config validation use the very same bound.

Non-finite input. The robust screens inherit the rule library's treatment of
NaN, +/-inf and 1e30-scale rows: with at most b such rows among the received
ones, the result is finite (as long as ``own`` is). ``dgd`` is not robust and
passes them through.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .. import registry
from . import aggregators

__all__ = [
    "SCREENS",
    "check",
    "min_degree",
    "describe",
    "screen",
    "bridge_t",
    "bridge_m",
    "bridge_k",
    "bridge_b",
    "dgd",
    "local",
    "scclip",
]

Tensor = torch.Tensor

#: config name -> screen ``fn(own, received, *, b) -> Tensor``; each has ``fn.check(m, b)``,
#: ``fn.min_degree(b)``, and for messages ``fn.title`` and ``fn.bound`` (None when any m works);
#: :data:`mpisim.registry.screenings`, built-ins and plugins alike.
SCREENS = registry.screenings

# min_degree gives up beyond this degree: a check that rejects every m is a
# bug in the check (ByzFL's CenteredClipping), to be reported, not searched.
_DEGREE_LIMIT = 1 << 40


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _mb_problems(name: str, m: Any, b: Any) -> str | None:
    if not _is_int(m) or m < 0:
        return f"{name}: the degree m must be an integer >= 0, got m={m!r}"
    if not _is_int(b) or b < 0:
        return f"{name}: b must be an integer >= 0, got b={b!r}"
    return None


def _as_inputs(name: str, own: Any, received: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(own, torch.Tensor) or not isinstance(received, torch.Tensor):
        raise TypeError(f"{name}: own and received must be torch.Tensors, got "
                        f"{type(own).__name__} and {type(received).__name__}")
    if own.dim() != 1:
        raise ValueError(f"{name}: own must have shape (d,), got {tuple(own.shape)}")
    d = own.shape[0]
    if received.dim() != 2 or received.shape[1] != d:
        raise ValueError(f"{name}: received must have shape (m, {d}) to match own, "
                         f"got {tuple(received.shape)}")
    if own.dtype not in (torch.float32, torch.float64) or received.dtype != own.dtype:
        raise ValueError(f"{name}: own and received must both be float32 (or both float64), "
                         f"got {own.dtype} and {received.dtype}")
    if own.device.type != "cpu" or received.device.type != "cpu":
        raise ValueError(f"{name}: own and received must live on the CPU")
    return own.detach(), received.detach()


def _first_passing_degree(name: str, check_fn: Callable[[int, int], str | None], b: int) -> int:
    """The smallest m >= 0 with ``check_fn(m, b)`` None: doubling, then bisection.

    Relies on the check being monotone in m (a node that can screen m
    neighbours can screen m + 1: more rows only help every rule here); the
    tests compare the result with a scan over m.
    """
    if check_fn(0, b) is None:
        return 0
    hi = 1
    while check_fn(hi, b) is not None:
        if hi >= _DEGREE_LIMIT:
            raise ValueError(f"{name}: no degree m up to {_DEGREE_LIMIT:,} passes its check "
                             f"for b={b}; the check rejects every degree")
        hi *= 2
    lo = hi // 2                       # check(lo) fails, check(hi) passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if check_fn(mid, b) is None:
            hi = mid
        else:
            lo = mid
    return hi


def register(name: str, *, title: str, rule: str | None = None, bound: str | None = None,
             with_own: bool = False, check: Callable[[int, int], str | None] | None = None,
             reference: str = "", weighted: bool = False):
    """Register a screen under its config name (:data:`mpisim.registry.screenings`;
    ``mpisim.register.screening`` calls this too).

    A screen built on aggregator ``rule`` (with f = b, on own + received
    when ``with_own``, else on the received rows) takes its check from that
    rule; ``bound`` is the same condition written in m and b, for messages.
    Otherwise ``check(m, b)`` (a message or None), or every m is allowed.
    A ``weighted`` screen also takes ``weights``, the node's row of the graph's
    mixing matrix: (m + 1,), its own weight first, then its neighbours' in the
    order of the received rows (ascending neighbour id). Keyword arguments
    beyond b (a screen's own parameters, e.g. scclip's tau) pass through.
    Adds ``fn.check(m, b)``, ``fn.min_degree(b)``, ``fn.title`` and
    ``fn.bound``, and makes the function validate its inputs and (m, b)
    before it runs.
    """
    if rule is not None:
        check = _rule_check(name, rule, bound, with_own=with_own)
    check = check or (lambda m, b: None)

    def deco(impl: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def check_fn(m: int, b: int) -> str | None:
            return _mb_problems(name, m, b) or check(m, b)

        def min_degree_fn(b: int) -> int:
            msg = _mb_problems(name, 0, b)
            if msg:
                raise ValueError(msg)
            return _first_passing_degree(name, check_fn, b)

        @functools.wraps(impl)
        def screen_fn(own: Tensor, received: Tensor, *, b: int, **params) -> Tensor:
            own, received = _as_inputs(name, own, received)
            msg = check_fn(received.shape[0], b)
            if msg:
                raise ValueError(msg)
            if weighted and (params.get("weights") is None or len(params["weights"]) != received.shape[0] + 1):
                raise ValueError(f"{name}: needs weights, the node's row of the mixing matrix: "
                                 f"{received.shape[0] + 1} values, its own weight first")
            return impl(own, received, b=b, **params)

        screen_fn.check = check_fn
        screen_fn.min_degree = min_degree_fn
        screen_fn.config_name = name
        screen_fn.title = title
        screen_fn.bound = bound
        screen_fn.weighted = weighted
        SCREENS.add(registry.Entry(
            kind="screening", name=name, obj=screen_fn, check=check_fn, description=title,
            reference=reference, properties={"rule": rule, "bound": bound, "with_own": with_own, "weighted": weighted},
            origin=registry.current_origin(impl)))
        return screen_fn

    return deco


def _rule_check(name: str, rule: str, bound: str, *, with_own: bool):
    """check(m, b) of a screen that runs aggregator ``rule`` with f = b on
    the m received rows (``with_own=False``) or on own + received, n = m + 1
    rows. ``bound`` is the same condition written in m and b, for the message."""
    rule_check = aggregators.REGISTRY[rule].check

    def check_fn(m: int, b: int) -> str | None:
        n = m + 1 if with_own else m
        msg = rule_check(n, b)
        if msg:
            rows = "own + m received rows" if with_own else "the m received rows"
            return f"{name}: needs degree {bound}, got m={m}, b={b} ({rule} on {rows}: {msg})"
        return None

    return check_fn


def _with_own(own: Tensor, received: Tensor) -> Tensor:
    """(m + 1, d): own as row 0, then the received rows (a new tensor)."""
    return torch.cat((own.unsqueeze(0), received))


# --------------------------------------------------------------------------
# BRIDGE-T: the conference paper's screen (Algorithm 1, eqs 4-7)
# --------------------------------------------------------------------------

# Where each built-in comes from (its registry entry's reference).
_REFERENCES = {
    "bridge_t": ("Fang, Yang, Bajwa, BRIDGE: Byzantine-Resilient Decentralized Gradient Descent, IEEE TSIPN 2022, "
        "eq 7 (BRIDGE-T)"),
    "bridge_m": ("Fang, Yang, Bajwa, BRIDGE: Byzantine-Resilient Decentralized Gradient Descent, IEEE TSIPN 2022, "
        "Section 3 (BRIDGE-M)"),
    "bridge_k": ("Fang, Yang, Bajwa, BRIDGE: Byzantine-Resilient Decentralized Gradient Descent, IEEE TSIPN 2022, "
        "Section 3 (BRIDGE-K)"),
    "bridge_b": ("Fang, Yang, Bajwa, BRIDGE: Byzantine-Resilient Decentralized Gradient Descent, IEEE TSIPN 2022, "
        "Section 3 (BRIDGE-B)"),
    "dgd": ("Fang, Yang, Bajwa, BRIDGE: Byzantine-Resilient Decentralized Gradient Descent, IEEE TSIPN 2022, "
        "eq 3 (DGD, the non-robust baseline)"),
    "local": ("Fang, Yang, Bajwa, BRIDGE: Byzantine-Resilient Decentralized Gradient Descent, IEEE TSIPN 2022, "
        "Section 5 (local training baseline)"),
    "scclip": ("He, Karimireddy, Jaggi, Byzantine-robust decentralized learning via self-centered clipping, 2022 "
        "(SCClip; tau rule of the authors' code, epfml/byzantine-robust-decentralized-optimizer)"),
}


@register("bridge_t", reference=_REFERENCES["bridge_t"],
          title="trimmed mean", rule="cwtm", bound="m > 2b")
def bridge_t(own: Tensor, received: Tensor, *, b: int) -> Tensor:
    """BRIDGE-T: coordinate-wise trimmed mean of the neighbours, averaged with own.

    own (d,), received (m, d) -> (d,). For each coordinate k, drop the b
    smallest and the b largest of the m received values (the sets of eqs 4
    and 5), add the node's own value to the m - 2b values kept (eq 6) and
    divide by m - 2b + 1: eq (7) of BRIDGE without its gradient term
    (Algorithm 1, line 9). The node's own value is never trimmed.

    Needs m > 2b; m = 2b + 1 keeps a single neighbour value per coordinate,
    averaged with own (divide by 2). b = 0 is the plain average of own and
    all neighbours (``dgd``). The selection is the rule library's ``cwtm``
    on the received rows (NaN counts as +inf and is trimmed from the top,
    -inf from the bottom), so up to b non-finite or huge rows are trimmed
    and cannot reach the result. Computed as a weighted average of own and
    the mean of the kept values, which equals eq (7) up to rounding and
    overflows no sooner than its inputs.
    """
    keep = received.shape[0] - 2 * b
    kept_mean = aggregators.cwtm(received, f=b)
    return torch.add(own * (1.0 / (keep + 1)), kept_mean, alpha=keep / (keep + 1))


# --------------------------------------------------------------------------
# Variants of the journal version (Fang, Yang, Bajwa, IEEE TSIPN 2022)
# --------------------------------------------------------------------------
# The conference text in /work/shared/papers defines only BRIDGE-T. The
# journal version adds screens built on other robust rules; here each one
# runs on the set {own} + received (m + 1 vectors) with f = b.

@register("bridge_m", reference=_REFERENCES["bridge_m"],
          title="median", rule="median", bound="m >= 2b", with_own=True)
def bridge_m(own: Tensor, received: Tensor, *, b: int) -> Tensor:
    """BRIDGE-M: coordinate-wise median of own and the received vectors.

    own (d,), received (m, d) -> (d,). The input set is own + received
    (m + 1 vectors), following the BRIDGE journal version (Fang, Yang,
    Bajwa, IEEE TSIPN 2022); the conference paper defines only BRIDGE-T.
    Per coordinate the one-dimensional median of the m + 1 values; for even
    m + 1 the mean of the two middle values (the rule library's ``median``,
    Yin et al.'s Definition 1). Needs m + 1 > 2b, i.e. m >= 2b.
    """
    return aggregators.median(_with_own(own, received), f=b)


@register("bridge_k", reference=_REFERENCES["bridge_k"],
          title="Krum", rule="krum", bound="m > 2b + 1", with_own=True)
def bridge_k(own: Tensor, received: Tensor, *, b: int) -> Tensor:
    """BRIDGE-K: the Krum choice among own and the received vectors.

    own (d,), received (m, d) -> (d,), one of the m + 1 input vectors. The
    input set is own + received (m + 1 vectors), following the BRIDGE
    journal version (Fang, Yang, Bajwa, IEEE TSIPN 2022); the conference
    paper defines only BRIDGE-T. Each vector's Krum score is the sum of its
    squared distances to its n - f - 2 nearest other vectors, n = m + 1,
    f = b (Blanchard et al. 2017); the vector with the smallest score is
    returned (ties to the lower index: own, then the lower neighbour id).
    Needs m + 1 > 2b + 2, i.e. m > 2b + 1. At the smallest degree with
    b = 0 (m = 2) the score uses one neighbour, and two mutual nearest
    vectors tie exactly.
    """
    return aggregators.krum(_with_own(own, received), f=b)


@register("bridge_b", reference=_REFERENCES["bridge_b"],
          title="Bulyan", rule="bulyan", bound="m >= 4b + 2", with_own=True)
def bridge_b(own: Tensor, received: Tensor, *, b: int) -> Tensor:
    """BRIDGE-B: Bulyan over own and the received vectors.

    own (d,), received (m, d) -> (d,). The input set is own + received
    (m + 1 vectors), following the BRIDGE journal version (Fang, Yang,
    Bajwa, IEEE TSIPN 2022); the conference paper defines only BRIDGE-T.
    Bulyan with n = m + 1 and f = b (El Mhamdi et al. 2018, as in the rule
    library's ``bulyan``): pick n - 2b vectors by repeated Krum, then per
    coordinate average the n - 4b picked values closest to their median.
    Needs m + 1 >= 4b + 3, i.e. m >= 4b + 2.

    Ties: the last picks score each vector over max(1, r - b - 2) nearest
    others (r vectors left), which is 1 when b <= 2; two mutual nearest
    vectors then tie exactly and the lower index wins (own, then the lower
    neighbour id), so for b <= 2 the result may depend on the neighbours'
    ids, not only on their vectors.
    """
    return aggregators.bulyan(_with_own(own, received), f=b)


# --------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------

@register("dgd", reference=_REFERENCES["dgd"],
          title="plain average, not robust")
def dgd(own: Tensor, received: Tensor, *, b: int) -> Tensor:
    """DGD: plain average of own and all received vectors (not robust).

    own (d,), received (m, d) -> (d,). out = (own + sum_i w_i) / (m + 1),
    eq (3) of BRIDGE with equal weights a_j = 1 / (m + 1) and without its
    gradient term. b is accepted and ignored (any b >= 0); a single NaN or
    huge row passes straight through. m = 0 returns a copy of own.
    """
    return received.sum(dim=0).add_(own).div_(received.shape[0] + 1)


@register("local", reference=_REFERENCES["local"],
          title="no exchange")
def local(own: Tensor, received: Tensor, *, b: int) -> Tensor:
    """Local only: return (a copy of) own, ignoring every received vector.

    own (d,), received (m, d) -> (d,). The "local gradient descent / only
    local data" baseline of BRIDGE, Section 5 (Tables 1 and 2): no
    exchange contributes to the model. b is accepted and ignored.
    """
    return own.clone()


# --------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------

def _unknown(name: str) -> str:
    return f"unknown screening {name!r}; known screenings: {', '.join(sorted(SCREENS))}"


def check(name: str, m: int, b: int) -> str | None:
    """Message explaining why screen ``name`` cannot run on a node of degree
    m with tolerance b; None when it can."""
    fn = SCREENS.get(name)
    if fn is None:
        return _unknown(name)
    return fn.check(m, b)


def min_degree(name: str, b: int) -> int:
    """The smallest degree m at which screen ``name`` can run with tolerance b.

    Found by asking ``check(name, m, b)`` (the rules' own checks), never
    from a second copy of the formulas; each screen's docstring states its
    bound, and dgd and local (0) run on any m. This is the screening's bound
    only: the decentralized mode's graph check keeps BRIDGE's rule, degree
    > 2b, as a floor (:func:`mpisim.graphs.topology.required_degree`).
    ``ValueError`` for an unknown name or a b that is not an integer >= 0.
    """
    fn = SCREENS.get(name)
    if fn is None:
        raise ValueError(_unknown(name))
    return fn.min_degree(b)


def describe(name: str) -> str:
    """How messages name screen ``name``: "bridge_b (Bulyan: m >= 4b + 2)",
    "dgd (plain average, not robust)"; ``ValueError`` for an unknown name."""
    fn = SCREENS.get(name)
    if fn is None:
        raise ValueError(_unknown(name))
    return f"{name} ({fn.title}: {fn.bound})" if fn.bound else f"{name} ({fn.title})"


def screen(name: str, own: Tensor, received: Tensor, *, b: int, **params) -> Tensor:
    """Run screen ``name`` on own (d,) and received (m, d), with its own parameters (a weighted
    screen's ``weights``, scclip's ``tau``); ``ValueError`` with the check's message for an unknown
    name or an impossible (m, b)."""
    fn = SCREENS.get(name)
    if fn is None:
        raise ValueError(_unknown(name))
    return fn(own, received, b=b, **params)


# --------------------------------------------------------------------------
# Self-centred clipping (He, Karimireddy and Jaggi, 2022)
# --------------------------------------------------------------------------

@register("scclip", reference=_REFERENCES["scclip"], weighted=True,
          title="self-centred clipping, weighted by the mixing matrix")
def scclip(own: Tensor, received: Tensor, *, b: int, weights: Tensor, tau: float | None = None) -> Tensor:
    """Self-centred clipping: own + sum_j W_ij clip(x_j - own, tau).

    own (d,), received (m, d), weights (m + 1,) the node's row of a doubly
    stochastic mixing matrix (own weight first; the decentralized mode uses
    the Metropolis-Hastings weights of the graph) -> (d,). clip(z, tau) =
    z min(1, tau / ||z||): a neighbour moves the node by at most W_ij tau,
    whatever it sends. ``tau`` None takes the authors' adaptive radius (their
    code's rule, the paper gives a theoretical one that needs the honest
    nodes' spread): the second largest of the m distances ||x_j - own|| (the
    only one when m = 1), so the farthest neighbour is clipped to the
    second farthest. A NaN or infinite difference contributes nothing, as in
    the authors' code. b is accepted and ignored (scclip has no trim);
    m = 0 returns a copy of own.
    """
    if received.shape[0] == 0:
        return own.clone()
    diff = received - own
    norms = torch.linalg.vector_norm(diff, dim=1)
    if tau is None:
        tau = norms.sort().values[-2] if norms.numel() >= 2 else norms[0]
    scale = torch.where(norms > tau, tau / norms, torch.ones_like(norms))
    scale = torch.where(torch.isfinite(norms), scale, torch.zeros_like(scale))
    coeff = torch.as_tensor(weights, dtype=own.dtype)[1:] * scale
    diff = torch.where(torch.isfinite(diff), diff, torch.zeros_like(diff))
    return own + coeff @ diff
