"""Step-size schedules, one place for every protocol.

A schedule maps the 0-based round (or iteration) index t to the step size
eta_t used in that round's update ``w <- w - eta_t * direction``:

- ``constant``: eta_t = lr.
- ``inverse``: eta_t = lr / (1 + t / t0), computed as lr * t0 / (t0 + t).
  BRIDGE's rho(t) = 1 / (lambda (t0 + t)) (BRIDGE paper, Algorithm 1 and
  Section 5.1) is this schedule with lr = 1 / (lambda t0).
- ``power``: eta_t = lr * (t + 1) ** (-p) with p in (1/2, 1]: the decay of
  Corollary 4.1 of the BRSGD paper (alpha_k proportional to (k + 1)^-p),
  which takes p in (1/2, 1); p = 1 is the classical 1/t decay.

Schedules are plain functions of t, with no state: a resumed run gets the
same step sizes from the round number alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["SCHEDULES", "check", "build"]

SCHEDULES = ("constant", "inverse", "power")


def check(schedule: str, *, lr: float, t0: float, power: float) -> tuple[str, str] | None:
    """(field, message) when the schedule's settings are impossible, else None.

    Fields are named as in the configuration (``optim.*``); only the
    parameters the chosen schedule uses are checked.
    """
    if schedule not in SCHEDULES:
        return "optim.schedule", f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}"
    if not (math.isfinite(lr) and lr > 0):
        return "optim.lr", f"the step size must be a positive number, got {lr}"
    if schedule == "inverse" and not (math.isfinite(t0) and t0 > 0):
        return "optim.t0", f"the inverse schedule lr / (1 + t / t0) needs t0 > 0, got {t0}"
    if schedule == "power" and not (0.5 < power <= 1.0):
        return "optim.power", (f"the power schedule lr (t + 1)^-p needs p in (1/2, 1] "
                               f"(BRSGD paper, Corollary 4.1), got {power}")
    return None


def build(schedule: str, *, lr: float, t0: float = 1.0, power: float = 1.0) -> Callable[[int], float]:
    """The function t -> eta_t of ``schedule`` (see the module docstring); ValueError if impossible."""
    problem = check(schedule, lr=lr, t0=t0, power=power)
    if problem:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    if schedule == "constant":
        return lambda t: lr
    if schedule == "inverse":
        # lr * t0 / (t0 + t) rather than lr / (1 + t / t0): with lr = 1 / (lambda t0)
        # the product lr * t0 is exactly 1 / lambda for BRIDGE's usual settings
        # (lambda = 1, t0 = 500), so rho(t) = 1 / (t0 + t) to the last bit.
        scale = lr * t0
        return lambda t: scale / (t0 + t)
    return lambda t: lr * (t + 1) ** (-power)
