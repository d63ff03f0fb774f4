"""Template of a robust rule: copy this file, rename the rule, fill in the formula.

    cp templates/rule_template.py my_rule.py
    python -m mpisim.testing rule my_trimmed_mean --run.plugins my_rule.py      # the properties
    mpiexec -n 3 python -m mpisim.server_mode --run.plugins my_rule.py \
        --agents.per_rank 5 --aggregator.name my_trimmed_mean --aggregator.f 2

A rule maps the (n, d) float32 block of the agents' messages to one (d,)
vector. Keep it a pure function of tensors (no MPI, no files); every
parameter keyword-only with a default (it becomes --aggregator.params.NAME).
Say in the docstring what the formula is and which paper and equation it
comes from; where papers differ, say which one this is.
"""

import torch

from mpisim import register


def _check(n: int, f: int, *, trim: int) -> str | None:
    """Why the setting is impossible (a message naming n, f and the parameter), or None."""
    if trim < 0:
        return f"my_trimmed_mean: trim must be >= 0, got {trim}"
    if n <= 2 * (f + trim):
        return f"my_trimmed_mean: needs n > 2(f + trim), got n={n}, f={f}, trim={trim}"
    return None


@register.rule("my_trimmed_mean", coordinatewise=True, check=lambda n, f, trim: _check(n, f, trim=trim),
               reference="Yin et al. 2018, Definition 2 (here with f + trim values removed each side)")
def my_trimmed_mean(x: torch.Tensor, *, f: int, trim: int = 0) -> torch.Tensor:
    """Per coordinate, the mean of the values left once the f + trim largest and smallest are removed.

    x: (n, d) -> (d,). Coordinate-wise (output column j depends on column j alone), so it
    runs as it is on each rank of a sharded server. A NaN sorts as the largest value and is
    removed first, as in the built-in trimmed means.
    """
    k = f + trim
    values = torch.where(torch.isnan(x), torch.full_like(x, float("inf")), x).sort(dim=0).values
    return values[k:x.shape[0] - k].mean(dim=0)
