"""Template of an attack: copy this file, rename the attack, write what the faulty agents send.

    cp templates/attack_template.py my_attack.py
    mpiexec -n 3 python -m mpisim.server_mode --run.plugins my_attack.py \
        --agents.per_rank 5 --byzantine.fault my_shifted_mean --byzantine.count 2 --aggregator.f 2

A message attack receives ``own`` (a, d), the a faulty agents' true
gradients of this round, and returns their messages (a, d). With
``omniscient=True`` it also receives ``honest`` (h, d), the honest agents'
gradients; with ``colludes=True`` all faulty agents' messages are computed
together, by one of them, from the same inputs (an omniscient attack
should usually collude). ``rngs`` holds one torch.Generator per faulty
agent (its own seeded stream: the same numbers wherever the agent runs).
Every parameter is keyword-only with a default (--byzantine.params.NAME).

A data attack (``kind="data"``) is ``fn(labels, *, num_classes, rng,
**params)`` and returns the labels the faulty agent trains on.
"""

import torch

from mpisim import register


@register.attack("my_shifted_mean", omniscient=True, colludes=True,
                 check=lambda n, num_byzantine, z: None if z >= 0 else f"z must be >= 0, got {z}",
                 reference="after Baruch et al. 2019 (A Little Is Enough): mean - z std")
def my_shifted_mean(own: torch.Tensor, *, honest: torch.Tensor, f: int, rngs, z: float = 1.0) -> torch.Tensor:
    """Every faulty agent sends the honest mean minus z honest standard deviations, per coordinate."""
    message = honest.mean(dim=0) - z * honest.std(dim=0, unbiased=False)
    return message.expand(own.shape[0], -1).clone()
