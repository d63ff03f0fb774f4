"""The decentralized mode's models: BRIDGE's linear classifier and CNN."""

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpisim.learning import models, tasks

MNIST = dict(input_shape=(1, 28, 28), num_classes=10)

# 1 / sqrt(fan_in) of every layer, written out from the layer sizes.
BOUNDS = {
    "linear": {"fc.weight": 1 / 28, "fc.bias": 1 / 28},                   # fan_in 784
    "cnn": {"conv1.weight": 1 / 5, "conv1.bias": 1 / 5,                   # 1 * 5 * 5
            "conv2.weight": 1 / math.sqrt(250), "conv2.bias": 1 / math.sqrt(250),   # 10 * 25
            "fc1.weight": 1 / math.sqrt(320), "fc1.bias": 1 / math.sqrt(320),
            "fc2.weight": 1 / math.sqrt(50), "fc2.bias": 1 / math.sqrt(50)},
    "lenet": {"conv1.weight": 1 / 5, "conv1.bias": 1 / 5,
              "conv2.weight": 1 / math.sqrt(500), "conv2.bias": 1 / math.sqrt(500),
              "fc1.weight": 1 / math.sqrt(800), "fc1.bias": 1 / math.sqrt(800),
              "fc2.weight": 1 / math.sqrt(500), "fc2.bias": 1 / math.sqrt(500)},
}


def _views(model, flat):
    names = [n for n, _ in model.module.named_parameters()]
    return dict(zip(names, model._grad_views(flat)))


# --------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------

def test_parameter_counts():
    linear = models.build("linear", seed=0, **MNIST)
    cnn = models.build("cnn", seed=0, **MNIST)

    assert linear.d == 7_850
    assert cnn.d == 21_840
    assert [p.numel() for p in cnn.module.parameters()] == [250, 10, 5000, 20, 16000, 50, 500, 10]


def test_models_give_one_score_per_class():
    x = torch.randn(3, 1, 28, 28)

    for name in ("linear", "cnn"):
        assert models.build(name, seed=0, **MNIST).module(x).shape == (3, 10)


# --------------------------------------------------------------------------
# Squared hinge loss, one vs all
# --------------------------------------------------------------------------

def test_squared_hinge_on_a_hand_worked_example():
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.0, -2.0, 0.5]])
    labels = torch.tensor([0, 2])
    # sample 0: t = (+1, -1, -1), margins 1 - t s = (-1, 1.5, 0) -> 0 + 2.25 + 0
    # sample 1: t = (-1, -1, +1), margins (1, -1, 0.5)           -> 1 + 0 + 0.25

    per_sample = models.squared_hinge_ova(scores, labels, reduction="none")
    total = models.squared_hinge_ova(scores, labels, reduction="sum")
    mean = models.squared_hinge_ova(scores, labels)

    assert per_sample.tolist() == [2.25, 1.25]
    assert total.item() == 3.5
    assert mean.item() == 1.75


def test_squared_hinge_gradient_on_the_hand_worked_example():
    # d mean / d s_ic = -2 t_ic max(0, 1 - t_ic s_ic) / N, N = 2.
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.0, -2.0, 0.5]], requires_grad=True)

    models.squared_hinge_ova(scores, torch.tensor([0, 2])).backward()

    assert scores.grad.tolist() == [[0.0, 1.5, 0.0], [1.0, 0.0, -0.5]]


def test_squared_hinge_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 10, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.randint(0, 10, (6,), generator=gen)

    assert torch.autograd.gradcheck(lambda s: models.squared_hinge_ova(s, labels), (scores,))


def test_squared_hinge_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction must be"):
        models.squared_hinge_ova(torch.zeros(1, 2), torch.tensor([0]), reduction="avg")


def test_linear_model_gradient_rows_match_the_closed_form():
    model = models.build("linear", seed=0, **MNIST)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    out = torch.full((1, model.d), 5.0)

    losses = model.gradients([(x, y)], out)

    # Reference without autograd: loss = mean_i sum_c max(0, 1 - t s)^2.
    W, c = (p.detach() for p in model.module.parameters())
    X = x.reshape(8, 784)
    s = X @ W.T + c
    t = 2.0 * F.one_hot(y, 10).float() - 1.0
    margin = (1 - t * s).clamp_min(0)
    G = -2.0 * t * margin / 8                       # d loss / d s
    grads = _views(model, out[0])
    torch.testing.assert_close(grads["fc.weight"], G.T @ X, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads["fc.bias"], G.sum(0), rtol=1e-5, atol=1e-6)
    assert losses[0] == pytest.approx(float((margin ** 2).sum(1).mean()), rel=1e-5)


def test_cnn_gradient_rows_match_plain_autograd():
    model = models.build("cnn", seed=0, **MNIST)
    reference = models.SmallCNN()
    reference.load_state_dict({k: v.detach().contiguous() for k, v in model.module.named_parameters()})
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (5,), generator=gen)
    out = torch.zeros(1, model.d)

    model.gradients([(x, y)], out)

    F.cross_entropy(reference(x), y).backward()
    mine = _views(model, out[0])
    for name, param in reference.named_parameters():
        torch.testing.assert_close(mine[name], param.grad, rtol=1e-5, atol=1e-6)


def test_cnn_forward_matches_a_functional_reference():
    # conv 10@5x5, pool 2, ReLU, conv 20@5x5, pool 2, ReLU, fc 320 -> 50, ReLU, fc 50 -> 10.
    model = models.build("cnn", seed=1, **MNIST)
    p = {k: v.detach() for k, v in model.module.named_parameters()}
    x = torch.randn(4, 1, 28, 28)

    h = F.relu(F.max_pool2d(F.conv2d(x, p["conv1.weight"], p["conv1.bias"]), 2))
    h = F.relu(F.max_pool2d(F.conv2d(h, p["conv2.weight"], p["conv2.bias"]), 2))
    h = F.relu(h.reshape(4, 320) @ p["fc1.weight"].T + p["fc1.bias"])
    expected = h @ p["fc2.weight"].T + p["fc2.bias"]

    torch.testing.assert_close(model.module(x).detach(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,loss", [("linear", models.squared_hinge_ova), ("cnn", F.cross_entropy)])
def test_evaluate_works_for_both_models(name, loss):
    model = models.build(name, seed=0, **MNIST)
    x = torch.randn(7, 1, 28, 28)
    predicted = model.module(x).argmax(1)
    labels = predicted.clone()
    labels[:2] = (labels[:2] + 1) % 10

    mean_loss, accuracy = tasks.Classification().evaluate(model, x, labels, batch_size=3).values()

    assert accuracy == pytest.approx(5 / 7)
    assert mean_loss == pytest.approx(loss(model.module(x), labels).item(), rel=1e-5)


# --------------------------------------------------------------------------
# init_sample
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "cnn", "lenet"])
def test_init_sample_draws_every_layer_uniformly_within_its_bound(name):
    model = models.build(name, seed=0, **MNIST)
    sample = model.init_sample(torch.Generator().manual_seed(0))

    assert sample.shape == (model.d,) and sample.dtype == torch.float32
    for layer, values in _views(model, sample).items():
        bound = BOUNDS[name][layer]
        assert values.abs().max() <= bound, layer
        if values.numel() >= 1000:
            # Fills the whole range, with the uniform's spread bound / sqrt(3).
            assert values.max() > 0.99 * bound and values.min() < -0.99 * bound, layer
            assert values.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), layer
            assert abs(values.mean().item()) < 0.05 * bound, layer


@pytest.mark.parametrize("name", ["linear", "cnn"])
def test_init_sample_matches_the_default_initialization_bounds(name):
    # The model PyTorch initializes with the run's seed lies in the same ranges.
    model = models.build(name, seed=0, **MNIST)

    for layer, param in model.module.named_parameters():
        assert param.detach().abs().max() <= BOUNDS[name][layer], layer


def test_init_sample_is_determined_by_the_generator_alone():
    model = models.build("cnn", seed=0, **MNIST)
    global_state = torch.random.get_rng_state()

    a = model.init_sample(torch.Generator().manual_seed(7))
    b = model.init_sample(torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    first, second = model.init_sample(gen), model.init_sample(gen)
    other = models.build("cnn", seed=5, **MNIST).init_sample(torch.Generator().manual_seed(7))

    assert torch.equal(a, b)
    assert torch.equal(first, a)
    assert not torch.equal(first, second)
    assert torch.equal(other, a)            # the distribution, not the model's values
    assert torch.equal(torch.random.get_rng_state(), global_state)


def test_init_sample_leaves_the_model_alone():
    model = models.build("cnn", seed=0, **MNIST)
    before = model.flat.clone()

    sample = model.init_sample(torch.Generator().manual_seed(0))
    sample.zero_()

    assert torch.equal(model.flat, before)


def test_init_sample_is_fast_on_lenet():
    model = models.build("lenet", seed=0, **MNIST)
    gen = torch.Generator().manual_seed(0)
    model.init_sample(gen)

    start = time.perf_counter()
    for _ in range(5):
        model.init_sample(gen)

    # About 6 ms per draw of 431,080 values here; a Python loop over the
    # elements would take seconds.
    assert time.perf_counter() - start < 2.0


def test_init_sample_refuses_layers_it_does_not_know():
    model = models.FlatModel(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), F.cross_entropy)

    with pytest.raises(NotImplementedError, match="LayerNorm"):
        model.init_sample(torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------
# build(init=...)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "cnn", "lenet"])
def test_zero_init_sets_every_parameter_to_zero(name):
    model = models.build(name, seed=3, init="zero", **MNIST)

    assert model.flat.abs().max() == 0
    assert all(p.abs().max() == 0 for p in model.module.parameters())
    assert model.module(torch.randn(2, 1, 28, 28)).abs().max() == 0


def test_default_init_is_unchanged_by_the_new_keyword():
    plain = models.build("cnn", seed=3, **MNIST)
    explicit = models.build("cnn", seed=3, init="default", **MNIST)

    assert torch.equal(plain.flat, explicit.flat)
    assert plain.flat.abs().max() > 0


def test_unknown_init_is_named():
    with pytest.raises(ValueError, match="unknown init 'ones'; known: default, zero"):
        models.build("linear", seed=0, init="ones", **MNIST)
