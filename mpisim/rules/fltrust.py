"""FLTrust (Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping", NDSS 2021): the server's own gradient on a small clean root set is the yardstick.

Every round the server computes g0, its own message on the root set (``server.root_samples``
samples drawn from the training data with the server's own stream; the server mode passes it as
``root``). Each agent's row x_i gets the trust score TS_i = ReLU(cos(x_i, g0)), is rescaled to the
norm of g0, and the aggregate is

    sum_i TS_i (||g0|| / ||x_i||) x_i / sum_j TS_j,

the paper's eq (5)-(6) (Algorithm 1's server step, before the learning rate). The rows that point
away from g0 weigh nothing, and no row outweighs g0 by its norm. When every score is 0 the
aggregate is 0 (the server does not move). f plays no part in the rule; a row with NaN or inf, or a
zero row, has no direction and gets the score 0. On a sharded server the dot products and squared
norms are whole-row sums (:meth:`Sharding.sum`); the scores, the same on every slice, weigh each
slice's columns.
"""

from __future__ import annotations

import torch

from .aggregators import WHOLE, Sharding, _combine, _row_norms, register

__all__ = ["fltrust"]

Tensor = torch.Tensor


@register("fltrust", coordinatewise=False, check=lambda n, f: None,
          reference="Cao, Fang, Liu, Gong, FLTrust: Byzantine-robust Federated Learning via Trust "
                    "Bootstrapping, NDSS 2021, eqs 4-6")
def fltrust(x: Tensor, *, f: int, root: Tensor | None = None, sharding: Sharding = WHOLE) -> Tensor:
    """FLTrust: rows weighted by ReLU(cos(row, g0)) and rescaled to ||g0|| (g0: ``root``, the server's own).

    x: (n, d) -> (d,); ``root``: the server's gradient g0 on its root set, (d,) (on a sharded server,
    this rank's slice of it). Average scale (a convex combination of rows rescaled to ||g0||).
    """
    if root is None:
        raise ValueError("fltrust: needs the server's own gradient on its root set (root=, from "
                         "server.root_samples)")
    if root.shape != (x.shape[1],):
        raise ValueError(f"fltrust: root must have shape ({x.shape[1]},), got {tuple(root.shape)}")
    g0 = root.to(torch.float64)
    norms = _row_norms(x, sharding)
    root_norm = _row_norms(root[None], sharding)[0]
    dots = torch.nan_to_num(x.to(torch.float64) @ g0, nan=0.0, posinf=0.0, neginf=0.0)
    if sharding.slices > 1:
        dots = sharding.sum(dots)
    ok = torch.isfinite(norms) & (norms > 0)
    cos = torch.where(ok, dots / (norms * root_norm), torch.zeros_like(dots))
    trust = torch.clamp(cos, min=0.0).masked_fill_(~ok, 0.0)
    total = trust.sum()
    if not (bool(total > 0) and bool(torch.isfinite(root_norm)) and bool(root_norm > 0)):
        return torch.zeros(x.shape[1], dtype=x.dtype)  # no row to trust, or a root gradient with no direction
    weights = trust * (root_norm / torch.where(ok, norms, torch.ones_like(norms))) / total
    return _combine(x, weights, torch.isfinite(norms))
