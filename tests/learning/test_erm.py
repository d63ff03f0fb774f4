"""Local ERM of the one-round algorithm: the exact least-squares solution, L-BFGS to a gradient tolerance."""

import numpy as np
import torch

from mpisim.learning import erm, models


def test_least_squares_is_solved_exactly():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((40, 5))).float()
    w_star = torch.from_numpy(rng.standard_normal(5)).float()
    model = models.build("least_squares", input_shape=(5,), num_classes=None, seed=0)

    result = erm.minimise(model, a, a @ w_star)

    torch.testing.assert_close(result.w, w_star, rtol=0, atol=1e-5)
    assert result.iterations == 0 and result.converged and result.grad_norm < 1e-6


def test_the_l2_penalty_enters_the_normal_equations():
    a, b = torch.eye(3), torch.tensor([1.0, 2.0, 3.0])

    w = erm.least_squares(a, b, l2=1.0)  # (I/3 + I) w = b/3, so w = b/4

    torch.testing.assert_close(w, b.double() / 4)


def test_lbfgs_reaches_the_tolerance_on_regularised_logistic_regression():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((200, 1, 4, 4))).float()
    y = torch.from_numpy(rng.integers(0, 3, 200))
    model = models.build("logreg", input_shape=(1, 4, 4), num_classes=3, seed=0, init="zero")

    result = erm.minimise(model, x, y, l2=1e-2, tol=1e-6, max_iter=500)

    assert result.converged and result.grad_norm <= 1e-6 and 0 < result.iterations < 500
    assert torch.count_nonzero(model.flat) == 0  # the model's own parameters are not touched
    # At the minimiser the gradient of the penalised loss vanishes: check with plain autograd.
    w = result.w.double().requires_grad_(True)
    logits = x.double().flatten(1) @ w[: 3 * 16].view(3, 16).T + w[3 * 16:]
    loss = torch.nn.functional.cross_entropy(logits, y) + 0.5e-2 * w.dot(w)
    (grad,) = torch.autograd.grad(loss, w)
    assert float(grad.norm()) < 1e-5


def test_lbfgs_stops_at_its_cap_and_says_it_did_not_converge():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((100, 1, 4, 4))).float()
    y = torch.from_numpy(rng.integers(0, 3, 100))
    model = models.build("logreg", input_shape=(1, 4, 4), num_classes=3, seed=0, init="zero")

    result = erm.minimise(model, x, y, tol=1e-12, max_iter=7)

    assert result.iterations == 7 and not result.converged and result.grad_norm > 1e-12
