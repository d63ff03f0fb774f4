"""Clipping pre-aggregation steps: static clipping and adaptive robust clipping (ARC).

Both scale each row x_i by a factor s_i in [0, 1] computed from whole-row norms, and keep the
number of rows and f. Sharded, the squared norms are summed over the slices
(:class:`~mpisim.rules.aggregators.Sharding`), so every slice applies the same factors. A row
holding NaN or +/-inf has norm +inf (the module conventions of :mod:`~mpisim.rules.aggregators`)
and no direction to keep: when it is clipped it becomes a zero row, as ``cc`` takes a
non-finite row's clipped contribution as 0. The following rule then sees a zero row, which
counts among its f bad ones.
"""

from __future__ import annotations

import warnings

import torch

from . import aggregators
from .aggregators import WHOLE, Sharding

__all__ = ["clipping", "arc", "arc_count"]

Tensor = torch.Tensor

_REFERENCES = {
    "clipping": ("static clipping, as ByzFL 0.0.11's Clipping (c = 2); Allouah, Guerraoui, Gupta, Jellouli, "
                 "Rizk, Stephan, Adaptive Gradient Clipping for Robust Federated Learning, ICLR 2025"),
    "arc": ("Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, Adaptive Gradient Clipping for Robust "
            "Federated Learning, ICLR 2025 (arXiv:2405.14432), Algorithm 1 (ARC)"),
}


# A factor below this is computed in float64 on its row: in float32 it would lose digits (subnormal).
_TINY_FACTOR = 1e-30


def _scaled(x: Tensor, norms: Tensor, limit: Tensor, clipped: Tensor, overwrite: bool) -> Tensor:
    """x with each row i where ``clipped[i]`` scaled by min(1, limit[i] / ||x_i||); non-finite rows -> 0.

    One float32 pass over the rows that change: into x itself when ``overwrite`` (only those rows
    are written; when most rows change, one multiply of the whole block by factors of 1 and the
    rest is cheaper than picking rows), else into a new block. The rows whose factor would be a
    float32 subnormal (a row of 1e38 scaled to a small norm) are done in float64, and rows with
    NaN or inf, which have no direction (0 * NaN would be NaN), are set to zero."""
    over = clipped & (norms > limit)
    factor = torch.where(over, limit / torch.where(over, norms, 1.0), 1.0)  # 0 where norms is inf
    careful = over & ((factor < _TINY_FACTOR) | ~torch.isfinite(norms))
    if bool(careful.any()):  # rare: handled first, then left at factor 1 in the pass below
        idx = careful.nonzero().flatten()
        rows = (x[idx].to(torch.float64) * factor[idx, None]).to(x.dtype)
        rows[~torch.isfinite(norms[idx])] = 0.0
        x = x if overwrite else x.clone()
        x[idx] = rows
        factor[idx] = 1.0
        over &= ~careful
        overwrite = True
    count = int(over.sum())
    if not overwrite:
        return torch.mul(x, factor.to(x.dtype)[:, None]) if count else x.clone()
    if 2 * count > x.shape[0]:
        return x.mul_(factor.to(x.dtype)[:, None])
    if count:
        idx = over.nonzero().flatten()
        with warnings.catch_warnings():  # index_reduce_ is "beta" in torch 2.13 (its API, not its results)
            warnings.simplefilter("ignore", UserWarning)
            x.index_reduce_(0, idx, factor[idx].to(x.dtype)[:, None].expand(count, x.shape[1]), "prod")
    return x


@aggregators.register_pre("clipping", reference=_REFERENCES["clipping"], coordinatewise=False,
                          check=lambda n, f, c: None, out=lambda n, f, c: (n, f),
                          validators={"c": aggregators._v_positive})
def clipping(x: Tensor, *, f: int, rng: torch.Generator | None = None, c: float = 2.0,
             sharding: Sharding = WHOLE, overwrite: bool = False) -> tuple[Tensor, int]:
    """Static clipping: every row longer than c is scaled down to norm c.

    x: (n, d) -> ((n, d), f). x_i <- min(1, c / ||x_i||) x_i (Euclidean norm of the whole row;
    c = 2 by default, as ByzFL 0.0.11's ``Clipping``). A zero row stays zero. A row with NaN or
    +/-inf becomes a zero row (ByzFL leaves a NaN row as it is and turns an inf row into NaN):
    every output row then has norm at most c. f is returned unchanged; ``rng`` is unused.
    ``overwrite``: scale x in place (see :func:`mpisim.rules.aggregators.build`).
    """
    norms = aggregators._row_norms(x, sharding)
    limit = torch.full_like(norms, float(c))
    return _scaled(x, norms, limit, torch.ones_like(norms, dtype=torch.bool), overwrite), f


def arc_count(n: int, f: int) -> int:
    """k = floor(2 (f / n) (n - f)), the number of rows ARC clips, in exact integer arithmetic."""
    return (2 * f * (n - f)) // n


@aggregators.register_pre("arc", reference=_REFERENCES["arc"], coordinatewise=False,
                          check=aggregators._needs_honest_majority("arc"), out=lambda n, f: (n, f))
def arc(x: Tensor, *, f: int, rng: torch.Generator | None = None,
        sharding: Sharding = WHOLE, overwrite: bool = False) -> tuple[Tensor, int]:
    """Adaptive robust clipping: the k largest rows are clipped to the norm of the (k+1)-th largest.

    x: (n, d) -> ((n, d), f). With k = floor(2 (f / n) (n - f)) (Allouah et al. 2025, Algorithm
    1), sort the rows by Euclidean norm in non-increasing order; the k first are clipped,
    x_i <- min(1, C / ||x_i||) x_i, to C = the norm of the (k+1)-th. Needs n > 2f (the paper's
    setting), so k <= n/2 < n and C exists; with f = 0, k = 0 and x is returned unchanged.

    Ties between equal norms go to the lower row index, but a row clipped to its own norm is
    unchanged, so the output does not depend on the order of the rows. k >= f when n > 2f,
    so with at most f rows holding NaN or +/-inf (norm +inf) every one of them is clipped and
    becomes a zero row; more than k such rows make C = +inf, and then all of them stay as
    they are (the rule after ARC sees more bad rows than its f, as it would without ARC).

    k is computed in integers, as the paper's formula says. ByzFL 0.0.11's ``ARC`` computes
    int((2 f / n) (n - f)) in floating point, which falls one short where the product is an
    exact integer that rounds below itself: 254 settings with n <= 10,000 and n > 2f, the
    smallest n = 242, f = 33 (k = 57 here, 56 there). f is returned unchanged; ``rng`` is unused.
    ``overwrite``: scale x in place (see :func:`mpisim.rules.aggregators.build`).
    """
    n = x.shape[0]
    k = arc_count(n, f)
    if k == 0:
        return (x if overwrite else x.clone()), f
    norms = aggregators._row_norms(x, sharding)
    order = torch.sort(norms, descending=True, stable=True).indices
    clipped = torch.zeros(n, dtype=torch.bool)
    clipped[order[:k]] = True
    limit = norms[order[k]].expand(n)
    return _scaled(x, norms, limit, clipped, overwrite), f
