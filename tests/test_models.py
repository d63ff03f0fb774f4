"""Models over one flat parameter buffer."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpisim.learning import models


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

    loss, accuracy = model.evaluate(x, labels, batch_size=3)

    assert accuracy == pytest.approx(4 / 7)
    assert loss == pytest.approx(F.cross_entropy(model.module(x), labels).item(), rel=1e-5)


def test_a_model_that_is_not_finite_has_no_accuracy():
    # Its logits are NaN; their argmax (class 0) must not read as chance-level accuracy.
    model = models.build("linear", input_shape=(1, 28, 28), num_classes=10, seed=0)
    x, labels = torch.randn(5, 1, 28, 28), torch.zeros(5, dtype=torch.long)
    model.flat[3] = float("nan")

    loss, accuracy = model.evaluate(x, labels)

    assert math.isnan(loss) and math.isnan(accuracy)


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.build("resnet", input_shape=(1, 28, 28), num_classes=10, seed=0)
