"""Local empirical risk minimisation: each worker's step of the one-round algorithm.

Yin et al. 2018, Algorithm 2: every normal worker computes
    w_i = argmin_w F_i(w) + (l2 / 2) ||w||^2,
F_i the mean loss of the model over the worker's whole shard, and sends it
once. Two solvers:

- ``least_squares`` (the squared loss (1/2)(a^T w - b)^2): the exact
  solution of the normal equations (A^T A / n + l2 I) w = A^T b / n, in
  float64 (a least-squares solve, the minimum-norm solution when l2 = 0 and
  A has fewer rows than columns);
- any other model: L-BFGS (torch.optim.LBFGS with a strong-Wolfe line
  search, history 20) in float64, from the model's initial parameters,
  until the l2 norm of the objective's gradient is below ``tol`` or
  ``max_iter`` iterations are done. The model's own float32 parameters are
  not touched: its module is called with float64 copies of them.

The result is rounded to float32 (the wire format) and comes with what the
run records: the final gradient norm, the iterations and the final loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.func import functional_call

from .models import FlatModel, flat_views

__all__ = ["ErmResult", "minimise", "least_squares"]

# L-BFGS iterations between two checks of the gradient norm.
_CHECK_EVERY = 10


@dataclass(frozen=True)
class ErmResult:
    """A local minimiser and how it was reached."""

    w: torch.Tensor          # (d,) float32
    grad_norm: float         # ||grad (F_i + l2/2 ||w||^2)|| at w, in float64
    iterations: int          # L-BFGS iterations (0 for the exact solution)
    loss: float              # F_i(w) + (l2/2) ||w||^2
    converged: bool          # grad_norm <= tol (always True for the exact solution)

    def as_dict(self) -> dict:
        return {"grad_norm": self.grad_norm, "iterations": self.iterations, "loss": self.loss,
                "converged": self.converged, "norm": float(torch.linalg.vector_norm(self.w.double()))}


def least_squares(x: torch.Tensor, y: torch.Tensor, *, l2: float = 0.0) -> torch.Tensor:
    """argmin_w (1/2n) ||x w - y||^2 + (l2/2) ||w||^2 in float64, x (n, d), y (n,)."""
    a, b = x.double(), y.double()
    n, d = a.shape
    if l2 > 0:
        return torch.linalg.solve(a.T @ a / n + l2 * torch.eye(d, dtype=torch.float64), a.T @ b / n)
    return torch.linalg.lstsq(a, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)


def _objective(model: FlatModel, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, l2: float):
    params = dict(zip([name for name, _ in model.module.named_parameters()], flat_views(model, w)))
    loss = model.loss(functional_call(model.module, params, (x,)), y)
    return loss + 0.5 * l2 * w.dot(w) if l2 else loss


def _gradient(model: FlatModel, w: torch.Tensor, x, y, l2: float) -> tuple[float, torch.Tensor]:
    w = w.detach().requires_grad_(True)
    loss = _objective(model, w, x, y, l2)
    (grad,) = torch.autograd.grad(loss, w)
    return float(loss.detach()), grad


def minimise(model: FlatModel, x: torch.Tensor, y: torch.Tensor, *, l2: float = 0.0, tol: float = 1e-5,
             max_iter: int = 1000, exact: bool | None = None) -> ErmResult:
    """The local ERM of ``model``'s loss on (x, y) (see the module docstring).

    ``exact`` (default: whether the model is least squares) chooses the
    linear solve; otherwise L-BFGS starts from ``model.flat``.
    """
    exact = model.name == "least_squares" if exact is None else exact
    x64 = x.double()
    y64 = y.double() if y.dtype.is_floating_point else y
    if exact:
        w = least_squares(x64.flatten(1), y64, l2=l2)
        loss, grad = _gradient(model, w, x64, y64, l2)
        return ErmResult(w.float(), float(torch.linalg.vector_norm(grad)), 0, loss, True)

    w = model.flat.detach().double().clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([w], lr=1.0, max_iter=_CHECK_EVERY, history_size=20,
                                  tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = _objective(model, w, x64, y64, l2)
        loss.backward()
        return loss

    done = 0
    loss, grad = _gradient(model, w, x64, y64, l2)
    norm = float(torch.linalg.vector_norm(grad))
    while norm > tol and done < max_iter and math.isfinite(norm):
        before = w.detach().clone()
        optimiser.param_groups[0]["max_iter"] = min(_CHECK_EVERY, max_iter - done)
        optimiser.step(closure)
        done = optimiser.state[w]["n_iter"]
        loss, grad = _gradient(model, w, x64, y64, l2)
        norm = float(torch.linalg.vector_norm(grad))
        if torch.equal(before, w.detach()):  # the line search found no decrease: as far as it goes
            break
    return ErmResult(w.detach().float(), norm, done, loss, norm <= tol)
