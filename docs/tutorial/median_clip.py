"""median_clip: the defence of the tutorial "Test your own defence" (docs/tutorial.md).

    python -m mpisim.testing rule median_clip --run.plugins docs/tutorial/median_clip.py
    mpiexec -n 3 python -m mpisim.server_mode --run.plugins docs/tutorial/median_clip.py \
        --agents.per_rank 5 --aggregator.name median_clip --aggregator.f 2 \
        --byzantine.fault alie --byzantine.count 2 --optim.lr 0.1 --run.rounds 100

Each agent's row is scaled down, if need be, to `scale` times the median of
the rows' l2 norms, and the scaled rows are averaged. With fewer than half
the rows faulty, the median norm is that of an honest row, so no faulty row
can pull the average further than a typical honest one.
"""

import torch

from mpisim import register


def _check(n: int, f: int, *, scale: float) -> str | None:
    """Why the setting is impossible, or None."""
    if not scale > 0:
        return f"median_clip: scale must be > 0, got {scale}"
    if n <= 2 * f:
        return f"median_clip: needs n > 2f (the median norm must be an honest one), got n={n}, f={f}"
    return None


@register.rule("median_clip", coordinatewise=False, check=lambda n, f, scale: _check(n, f, scale=scale),
               reference="the mpisim tutorial (norm clipping at the median norm)")
def median_clip(x: torch.Tensor, *, f: int, scale: float = 1.0, sharding=None) -> torch.Tensor:
    """Average of the rows, each scaled down to at most scale times the median row norm.

    x: (n, d) -> (d,). Row i is multiplied by min(1, scale * m / ||x_i||), m the
    median (the lower one for even n) of the n l2 norms, and the rows are
    averaged in float64. A row holding NaN or +-inf has an infinite norm and
    counts as 0. Whole rows: on a sharded server, each rank holds some columns
    and the squared norms are summed over the ranks through ``sharding``.
    """
    x64 = x.double()
    squares = torch.nan_to_num(x64.square().sum(dim=1), nan=float("inf"))  # a NaN row is infinitely long
    if sharding is not None:
        squares = sharding.sum(squares)
    norms = squares.sqrt()
    bound = scale * norms.median()
    factors = torch.where(norms > bound, bound / norms, torch.ones_like(norms))  # bound / inf = 0
    finite = torch.nan_to_num(x64, nan=0.0, posinf=0.0, neginf=0.0)
    return (factors[:, None] * finite).mean(dim=0).float()
