"""Euclidean projection onto the parameter space W (Yin et al. 2018, Algorithm 1).

W is the l2 ball of radius R around 0 (``optim.project_radius``; infinite:
W = R^d, no projection). The projection of w is w itself inside the ball
and w R / ||w|| outside: the closest point of the ball.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["project_ball_"]


def project_ball_(w: torch.Tensor, radius: float,
                  total: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Project w (d,), or every row of w (k, d), onto {||v||_2 <= radius}, in place; returns w.

    The norm is taken in float64 so that a large w does not overflow; an
    infinite radius leaves w untouched. ``total``: when w is one slice of the
    coordinates (the sharded server), it sums the slices' squared norms.
    """
    if math.isinf(radius):
        return w
    if not radius > 0:
        raise ValueError(f"the radius of W must be positive, got {radius}")
    rows = w if w.dim() == 2 else w.unsqueeze(0)
    norms = torch.linalg.vector_norm(rows.double(), dim=1)
    if total is not None:
        norms = total(norms.square()).sqrt()
    scale = torch.where(norms > radius, radius / norms, torch.ones_like(norms))
    rows.mul_(scale.to(rows.dtype).unsqueeze(1))
    return w
