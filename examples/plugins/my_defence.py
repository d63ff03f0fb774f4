"""A plugin of one's own: a rule, a pre-aggregator, an attack and a model, registered as the built-ins are.

    mpiexec -n 3 python -m mpisim.server_mode --run.plugins examples/plugins/my_defence.py \
        --agents.per_rank 5 --model.name small_mlp --aggregator.pre shrink_to_median \
        --aggregator.name norm_weighted --aggregator.f 2 --byzantine.fault scaled_negative \
        --byzantine.count 2 --optim.lr 0.1

(83.75% test accuracy after the default 300 rounds on the built-in data set.)

Every name below becomes a value of the configuration (aggregator.name,
aggregator.pre, byzantine.fault, model.name), and every keyword parameter a
field of its params table (--aggregator.params.power 2).
"""

import torch

from mpisim import register


@register.rule("norm_weighted", coordinatewise=False, reference="an example, not a paper",
               check=lambda n, f, power: None if n > 2 * f else f"norm_weighted: needs n > 2f, got n={n}, f={f}")
def norm_weighted(x: torch.Tensor, *, f: int, power: float = 1.0, sharding=None) -> torch.Tensor:
    """Average of the rows weighted by 1 / ||row||^power (whole rows: takes the sharded server's sums)."""
    squares = x.double().square().sum(dim=1)
    if sharding is not None:  # on a sharded server: the squared norms summed over the slices
        squares = sharding.sum(squares)
    weights = squares.sqrt().clamp_min(1e-12).pow(-power)
    weights = torch.where(torch.isfinite(weights), weights, torch.zeros_like(weights))
    return (weights[:, None] * torch.nan_to_num(x.double(), nan=0.0, posinf=0.0, neginf=0.0)).sum(dim=0) \
        .div(weights.sum()).float()


@register.pre_aggregator("shrink_to_median", out=lambda n, f, alpha: (n, f), coordinatewise=True)
def shrink_to_median(x: torch.Tensor, *, f: int, rng, alpha: float = 0.5):
    """Move every row a fraction alpha of the way to the coordinate-wise median."""
    median = x.median(dim=0).values
    return x + alpha * (median - x), f


@register.attack("scaled_negative", omniscient=True, colludes=True)
def scaled_negative(own, *, honest, f, rngs, scale: float = 4.0):
    """All faulty agents send -scale times the honest agents' mean."""
    return (-scale * honest.mean(dim=0)).expand(own.shape[0], -1).clone()


@register.model("small_mlp", params={"hidden": 64})
def small_mlp(input_shape, num_classes, params):
    """One hidden layer of `hidden` ReLU units, cross-entropy."""
    width = 1
    for size in input_shape:
        width *= size
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(width, params["hidden"]), torch.nn.ReLU(),
                                 torch.nn.Linear(params["hidden"], num_classes))
    return module, torch.nn.functional.cross_entropy
