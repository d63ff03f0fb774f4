"""Models over one flat parameter buffer."""

import math

import pytest
import torch
import torch.nn.functional as F

from mpisim.learning import models, tasks


def test_lenet_has_the_papers_parameter_counts():
    mnist = models.build("lenet", input_shape=(1, 28, 28), num_classes=10, seed=0)
    cifar = models.build("lenet", input_shape=(3, 32, 32), num_classes=10, seed=0)

    assert mnist.d == 431_080
    assert cifar.d == 657_080


def test_parameters_are_views_of_the_flat_buffer():
    model = models.build("lenet", input_shape=(1, 28, 28), num_classes=10, seed=0)
    x = torch.randn(4, 1, 28, 28)
    before = model.module(x).detach().clone()

    model.flat.mul_(0.0)

    assert all(p.abs().sum() == 0 for p in model.module.parameters())
    assert not torch.equal(before, model.module(x).detach())


def test_same_seed_same_initial_model():
    a = models.build("lenet", input_shape=(1, 28, 28), num_classes=10, seed=3)
    b = models.build("lenet", input_shape=(1, 28, 28), num_classes=10, seed=3)
    c = models.build("lenet", input_shape=(1, 28, 28), num_classes=10, seed=4)

    assert torch.equal(a.flat, b.flat)
    assert not torch.equal(a.flat, c.flat)


def test_gradient_rows_match_plain_autograd():
    model = models.build("lenet", input_shape=(1, 28, 28), num_classes=10, seed=0)
    reference = models.LeNet()
    reference.load_state_dict({k: v.detach().contiguous() for k, v in model.module.named_parameters()})
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(5, 1, 28, 28, generator=gen), torch.randint(0, 10, (5,), generator=gen))
               for _ in range(3)]
    out = torch.full((3, model.d), 7.0)  # stale content must be overwritten

    losses = model.gradients(batches, out)

    for i, (x, y) in enumerate(batches):
        reference.zero_grad()
        loss = F.cross_entropy(reference(x), y)
        loss.backward()
        mine = dict(zip([n for n, _ in model.module.named_parameters()], model._grad_views(out[i])))
        for name, param in reference.named_parameters():
            torch.testing.assert_close(mine[name], param.grad, rtol=1e-5, atol=1e-6)
        assert losses[i] == pytest.approx(loss.item(), rel=1e-6)
    assert all(p.grad is None for p in model.module.parameters())


def test_evaluate_counts_correct_predictions():
    model = models.build("lenet", input_shape=(1, 28, 28), num_classes=10, seed=0)
    x = torch.randn(7, 1, 28, 28)
    predicted = model.module(x).argmax(1)
    labels = predicted.clone()
    labels[:3] = (labels[:3] + 1) % 10

    loss, accuracy = tasks.Classification().evaluate(model, x, labels, batch_size=3).values()

    assert accuracy == pytest.approx(4 / 7)
    assert loss == pytest.approx(F.cross_entropy(model.module(x), labels).item(), rel=1e-5)


def test_a_model_that_is_not_finite_has_no_accuracy():
    # Its logits are NaN; their argmax (class 0) must not read as chance-level accuracy.
    model = models.build("linear", input_shape=(1, 28, 28), num_classes=10, seed=0)
    x, labels = torch.randn(5, 1, 28, 28), torch.zeros(5, dtype=torch.long)
    model.flat[3] = float("nan")

    loss, accuracy = tasks.Classification().evaluate(model, x, labels).values()

    assert math.isnan(loss) and math.isnan(accuracy)


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.build("resnet", input_shape=(1, 28, 28), num_classes=10, seed=0)


# --------------------------------------------------------------------------
# The registry and model.params
# --------------------------------------------------------------------------

MNIST = dict(input_shape=(1, 28, 28), num_classes=10)


@pytest.mark.parametrize("name,kwargs,d", [
    ("lenet", MNIST, 431_080),
    ("linear", MNIST, 7_850),
    ("cnn", MNIST, 21_840),
    ("logreg", MNIST, 7_850),                       # 10 x 784 + 10
    ("mlp", MNIST, 795_010),                        # 784 x 1000 + 1000 + 1000 x 10 + 10
    ("least_squares", dict(input_shape=(1000,), num_classes=None), 1000),
    ("least_squares", dict(input_shape=(7,), num_classes=None), 7),
])
def test_every_model_has_its_parameter_count(name, kwargs, d):
    assert models.build(name, seed=0, **kwargs).d == d


def test_mlp_hidden_width_comes_from_params():
    model = models.build("mlp", seed=0, params={"hidden": 10}, **MNIST)

    assert model.d == 7_960                          # 784 x 10 + 10 + 10 x 10 + 10
    assert [p.numel() for p in model.module.parameters()] == [7840, 10, 100, 10]


def test_every_entry_names_its_kind_defaults_and_paper():
    assert set(models.MODELS) == {"lenet", "linear", "cnn", "logreg", "mlp", "least_squares"}
    for name, spec in models.MODELS.items():
        assert spec.name == name
        assert spec.kind in models.KINDS
        assert "Section" in spec.description
    assert dict(models.MODELS["mlp"].params) == {"hidden": 1000}
    assert models.MODELS["least_squares"].kind == "regression"
    assert all(not spec.params for name, spec in models.MODELS.items() if name != "mlp")


def test_a_registry_entry_cannot_be_changed():
    spec = models.MODELS["mlp"]

    with pytest.raises(AttributeError):
        spec.kind = "regression"
    with pytest.raises(TypeError):
        spec.params["hidden"] = 5


def test_check_params_accepts_good_settings():
    assert models.check_params("mlp", {"hidden": 10}) is None
    assert models.check_params("mlp", {}) is None
    assert models.check_params("lenet", None) is None


def test_check_params_names_an_unknown_key():
    assert models.check_params("mlp", {"width": 10}) == (
        "model.params.width", "mlp has no parameter 'width'; its parameters: hidden")
    assert models.check_params("lenet", {"hidden": 10}) == (
        "model.params.hidden", "lenet has no parameter 'hidden'; its parameters: none")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_check_params_names_a_bad_hidden_width(bad):
    assert models.check_params("mlp", {"hidden": bad}) == (
        "model.params.hidden", f"mlp: hidden must be an integer >= 1, got {bad!r}")


def test_check_params_names_an_unknown_model():
    field, message = models.check_params("resnet", {})

    assert field == "model.name" and message.startswith("unknown model 'resnet'; known: lenet")


def test_build_refuses_bad_params():
    with pytest.raises(ValueError, match="mlp: hidden must be an integer >= 1, got 0"):
        models.build("mlp", seed=0, params={"hidden": 0}, **MNIST)
    with pytest.raises(ValueError, match="cnn has no parameter 'hidden'"):
        models.build("cnn", seed=0, params={"hidden": 5}, **MNIST)


def test_build_wants_classes_exactly_for_classification():
    with pytest.raises(ValueError, match="logreg is a classification model and needs num_classes"):
        models.build("logreg", input_shape=(1, 28, 28), num_classes=None, seed=0)
    with pytest.raises(ValueError, match="least_squares is a regression model: num_classes must be None"):
        models.build("least_squares", input_shape=(5,), num_classes=10, seed=0)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_loss_takes_the_three_reductions(name):
    gen = torch.Generator().manual_seed(0)
    if models.MODELS[name].kind == "regression":
        model = models.build(name, input_shape=(5,), num_classes=None, seed=0)
        x, y = torch.randn(6, 5, generator=gen), torch.randn(6, generator=gen)
    else:
        model = models.build(name, seed=0, params={"hidden": 8} if name == "mlp" else None, **MNIST)
        x, y = torch.randn(6, 1, 28, 28, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    out = model.module(x).detach()

    per_sample = model.loss(out, y, reduction="none")

    assert per_sample.shape == (6,)
    torch.testing.assert_close(model.loss(out, y, reduction="sum"), per_sample.sum())
    torch.testing.assert_close(model.loss(out, y, reduction="mean"), per_sample.mean())
    torch.testing.assert_close(model.loss(out, y), per_sample.mean())


# --------------------------------------------------------------------------
# logreg and mlp
# --------------------------------------------------------------------------

def _named_grads(model, row):
    return dict(zip([n for n, _ in model.module.named_parameters()], model._grad_views(row)))


def _check_against_reference(model, reference, x, y):
    """Gradient row and loss of ``model`` against autograd on an ordinary nn.Module."""
    out = torch.full((1, model.d), 3.0)  # stale content must be overwritten

    losses = model.gradients([(x, y)], out)

    loss = F.cross_entropy(reference(x), y)
    loss.backward()
    mine = _named_grads(model, out[0])
    for name, param in reference.named_parameters():
        torch.testing.assert_close(mine[name], param.grad, rtol=1e-5, atol=1e-6)
    assert losses[0] == pytest.approx(loss.item(), rel=1e-6)


def test_logreg_gradient_rows_match_plain_autograd():
    model = models.build("logreg", seed=0, **MNIST)
    reference = torch.nn.Sequential()
    reference.add_module("flatten", torch.nn.Flatten())
    reference.add_module("fc", torch.nn.Linear(784, 10))
    reference.fc.load_state_dict({"weight": model.module.fc.weight.detach().clone(),
                                  "bias": model.module.fc.bias.detach().clone()})
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (6,), generator=gen)

    _check_against_reference(model, reference, x, y)


@pytest.mark.parametrize("hidden", [1000, 10])
def test_mlp_gradient_rows_match_plain_autograd(hidden):
    model = models.build("mlp", seed=0, params={"hidden": hidden}, **MNIST)
    reference = torch.nn.Sequential()
    reference.add_module("flatten", torch.nn.Flatten())
    reference.add_module("fc1", torch.nn.Linear(784, hidden))
    reference.add_module("relu", torch.nn.ReLU())
    reference.add_module("fc2", torch.nn.Linear(hidden, 10))
    reference.load_state_dict({k: v.detach().clone() for k, v in model.module.named_parameters()})
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (5,), generator=gen)

    _check_against_reference(model, reference, x, y)


def test_logreg_is_the_linear_model_under_another_loss():
    # Same module, same seed: the same initial parameters, only the loss differs.
    logreg = models.build("logreg", seed=2, **MNIST)
    linear = models.build("linear", seed=2, **MNIST)

    assert torch.equal(logreg.flat, linear.flat)
    assert logreg.loss is F.cross_entropy and linear.loss is models.squared_hinge_ova


# --------------------------------------------------------------------------
# least_squares
# --------------------------------------------------------------------------

def test_half_squared_error_on_a_hand_worked_example():
    predictions = torch.tensor([1.0, 2.0, -1.0, 0.0])
    targets = torch.tensor([0.0, 4.0, -1.0, 1.0])
    # residuals (1, -2, 0, -1) -> halves of their squares (0.5, 2, 0, 0.5)

    assert models.half_squared_error(predictions, targets, reduction="none").tolist() == [0.5, 2.0, 0.0, 0.5]
    assert models.half_squared_error(predictions, targets, reduction="sum").item() == 3.0
    assert models.half_squared_error(predictions, targets).item() == 0.75


def test_half_squared_error_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"predictions \(3,\) and targets \(3, 1\)"):
        models.half_squared_error(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="reduction must be"):
        models.half_squared_error(torch.zeros(3), torch.zeros(3), reduction="avg")


def test_least_squares_flat_buffer_is_w_and_prediction_is_a_dot_w():
    model = models.build("least_squares", input_shape=(3,), num_classes=None, seed=0)
    model.flat.copy_(torch.tensor([1.0, -2.0, 0.5]))
    a = torch.tensor([[1.0, 1.0, 2.0], [0.0, 3.0, -4.0]])

    assert model.module(a).tolist() == [0.0, -8.0]   # 1 - 2 + 1, -6 - 2: no bias


def test_least_squares_gradient_matches_the_closed_form():
    k, d = 9, 6
    model = models.build("least_squares", input_shape=(d,), num_classes=None, seed=1)
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(k, d, generator=gen)
    b = torch.randn(k, generator=gen)
    out = torch.full((1, d), 2.0)

    losses = model.gradients([(a, b)], out)

    # In float64 from the same float32 inputs: grad = A^T (A w - b) / k,
    # loss = ||A w - b||^2 / (2k).
    a64, b64, w64 = a.double(), b.double(), model.flat.double()
    residual = a64 @ w64 - b64
    torch.testing.assert_close(out[0].double(), a64.T @ residual / k, rtol=1e-5, atol=1e-6)
    assert losses[0] == pytest.approx(float(residual @ residual) / (2 * k), rel=1e-5)


@pytest.mark.parametrize("name,kwargs,bounds", [
    ("logreg", MNIST, {"fc.weight": 1 / 28, "fc.bias": 1 / 28}),
    ("mlp", MNIST, {"fc1.weight": 1 / 28, "fc1.bias": 1 / 28,
                    "fc2.weight": 1 / math.sqrt(1000), "fc2.bias": 1 / math.sqrt(1000)}),
    ("least_squares", dict(input_shape=(400,), num_classes=None), {"fc.weight": 1 / 20}),
])
def test_init_sample_of_the_new_models_stays_within_the_default_bounds(name, kwargs, bounds):
    model = models.build(name, seed=0, **kwargs)
    sample = model.init_sample(torch.Generator().manual_seed(0))

    for layer, values in _named_grads(model, sample).items():
        assert values.abs().max() <= bounds[layer], layer
        if values.numel() >= 100:   # enough draws to come near the edge of the range
            assert values.abs().max() > 0.9 * bounds[layer], layer


@pytest.mark.parametrize("name, shape", [("logreg", (1, 28, 28)), ("lenet", (1, 28, 28))])
def test_a_full_batch_gradient_in_chunks_is_the_average_of_per_sample_gradients(name, shape):
    # Yin et al.'s Algorithm 1 sends grad F_i, the average of the per-sample
    # gradients of the whole shard; a large shard is taken in pieces.
    model = models.build(name, input_shape=shape, num_classes=10, seed=0)
    x, y = torch.randn(10, *shape), torch.arange(10) % 10
    per_sample = torch.zeros(10, model.d)
    model.gradients([(x[i:i + 1], y[i:i + 1]) for i in range(10)], per_sample)
    whole, chunked = torch.zeros(1, model.d), torch.zeros(1, model.d)

    losses = model.gradients([(x, y)], whole)
    chunked_losses = model.gradients([(x, y)], chunked, chunk=3)  # pieces of 3, 3, 3 and 1

    torch.testing.assert_close(whole[0], per_sample.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked[0], per_sample.mean(0), rtol=1e-5, atol=1e-6)
    assert chunked_losses[0] == pytest.approx(losses[0], rel=1e-6)
