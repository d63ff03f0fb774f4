"""Tasks: what is measured on a trained model, for classification and regression."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpisim.learning import models, tasks


def _tiny_classifier():
    """Scores = (x0, x1, 0): a FlatModel over nn.Linear(2, 3) with hand-set weights."""
    model = models.FlatModel(nn.Linear(2, 3), F.cross_entropy)
    model.flat.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0,    # W rows
                                   0.0, 0.0, 0.0]))                 # bias
    return model


def _tiny_regression(w):
    model = models.build("least_squares", input_shape=(len(w),), num_classes=None, seed=0)
    model.flat.copy_(torch.tensor(w))
    return model


# --------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1000, 3, 1])
def test_classification_metrics_on_a_hand_worked_example(batch_size):
    model = _tiny_classifier()
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 2, 2])
    # scores (2, 0, 0), (0, 3, 0), (-1, -1, 0), (1, 1, 0); the predictions
    # 0, 1, 2 and 0 (a tie goes to the lowest class): 3 of 4 right.
    # Cross-entropy: log sum exp(scores) - score of the label.
    expected_loss = (math.log(math.exp(2) + 2) - 2 + math.log(math.exp(3) + 2) - 3
                     + math.log(2 * math.exp(-1) + 1) + math.log(2 * math.e + 1)) / 4

    metrics = tasks.Classification().evaluate(model, x, y, batch_size=batch_size)

    assert set(metrics) == {"test_loss", "test_accuracy"}
    assert metrics["test_accuracy"] == 0.75
    assert metrics["test_loss"] == pytest.approx(expected_loss, rel=1e-6)


def test_classification_is_bit_identical_to_the_old_flat_model_evaluate():
    model = models.build("lenet", input_shape=(1, 28, 28), num_classes=10, seed=0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(11, 1, 28, 28, generator=gen), torch.randint(0, 10, (11,), generator=gen)
    # The loop FlatModel.evaluate ran before tasks existed, written out.
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, 11, 4):
            logits = model.module(x[start:start + 4])
            labels = y[start:start + 4]
            total_loss += float(model.loss(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())

    metrics = tasks.Classification().evaluate(model, x, y, batch_size=4)

    assert metrics == {"test_loss": total_loss / 11, "test_accuracy": correct / 11}


def test_classification_names_its_headline():
    task = tasks.Classification()

    assert task.kind == "classification"
    assert task.metric_names == ("test_loss", "test_accuracy")
    assert task.headline == "test_accuracy" and task.higher_is_better is True


# --------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------

def test_regression_loss_and_distance_on_a_hand_worked_example():
    model = _tiny_regression([1.0, -1.0])
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([0.0, 0.0, 1.0])
    # predictions (1, -1, 0), residuals (1, -1, -1): each loss 1/2, mean 1/2.
    # w - w* = (1, -1) - (4, 3) = (-3, -4): distance 5.
    task = tasks.Regression(optimum=np.array([4.0, 3.0]))

    metrics = task.evaluate(model, a, b, batch_size=2)

    assert metrics == {"test_loss": 0.5, "distance_to_optimum": 5.0}


def test_regression_without_optimum_reports_the_loss_alone():
    task = tasks.Regression()
    model = _tiny_regression([2.0])

    metrics = task.evaluate(model, torch.tensor([[1.0], [0.0]]), torch.tensor([0.0, 1.0]))

    assert metrics == {"test_loss": 1.25}                         # (4 / 2 + 1 / 2) / 2
    assert task.metric_names == ("test_loss",)
    assert task.headline == "test_loss" and task.higher_is_better is False


def test_regression_with_optimum_heads_with_the_distance():
    task = tasks.Regression(optimum=[0.0, 0.0])

    assert task.kind == "regression"
    assert task.metric_names == ("test_loss", "distance_to_optimum")
    assert task.headline == "distance_to_optimum" and task.higher_is_better is False


def test_distance_to_optimum_is_taken_in_float64():
    # float32(0.1) - 0.1 is about 1.5e-9: lost entirely in float32 arithmetic.
    model = _tiny_regression([0.1])
    task = tasks.Regression(optimum=torch.tensor([0.1], dtype=torch.float64))

    distance = task.evaluate(model, torch.ones(1, 1), torch.zeros(1))["distance_to_optimum"]

    assert distance == abs(float(np.float32(0.1)) - 0.1)
    assert distance > 0


def test_the_optimum_is_a_copy():
    w_star = np.array([1.0, 2.0])
    task = tasks.Regression(optimum=w_star)

    w_star[:] = 0.0

    assert task.optimum.tolist() == [1.0, 2.0] and task.optimum.dtype == torch.float64


def test_an_optimum_of_the_wrong_size_or_shape_is_refused():
    model = _tiny_regression([1.0, 2.0])

    with pytest.raises(ValueError, match="optimum has 3 coordinates, the model 2"):
        tasks.Regression(optimum=[0.0, 0.0, 0.0]).evaluate(model, torch.ones(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match=r"must be a \(d,\) vector"):
        tasks.Regression(optimum=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        tasks.Regression(optimum=[0.0, math.inf])


# --------------------------------------------------------------------------
# Both
# --------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_every_metric_is_nan_for_a_model_that_is_not_finite(bad):
    classifier = _tiny_classifier()
    classifier.flat[4] = bad
    regression = _tiny_regression([1.0, 2.0])
    regression.flat[0] = bad

    scores = tasks.Classification().evaluate(classifier, torch.ones(3, 2), torch.zeros(3, dtype=torch.long))
    errors = tasks.Regression(optimum=[0.0, 0.0]).evaluate(regression, torch.ones(3, 2), torch.zeros(3))

    assert set(scores) == {"test_loss", "test_accuracy"}
    assert set(errors) == {"test_loss", "distance_to_optimum"}
    assert all(math.isnan(v) for v in [*scores.values(), *errors.values()])


def test_evaluate_refuses_an_empty_or_ragged_test_set_and_bad_batch_sizes():
    model = _tiny_classifier()
    labels = torch.zeros(2, dtype=torch.long)

    with pytest.raises(ValueError, match="the test set is empty"):
        tasks.Classification().evaluate(model, torch.ones(0, 2), labels[:0])
    with pytest.raises(ValueError, match="3 inputs but 2 targets"):
        tasks.Classification().evaluate(model, torch.ones(3, 2), labels)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        tasks.Classification().evaluate(model, torch.ones(2, 2), labels, batch_size=0)


# --------------------------------------------------------------------------
# make
# --------------------------------------------------------------------------

def test_make_gives_the_task_of_the_data_sets_kind():
    assert isinstance(tasks.make(kind="classification", model_name="lenet"), tasks.Classification)
    assert isinstance(tasks.make(kind="classification", model_name="mlp"), tasks.Classification)
    task = tasks.make(kind="regression", model_name="least_squares", optimum=[1.0, 2.0])
    assert isinstance(task, tasks.Regression) and task.optimum.tolist() == [1.0, 2.0]
    assert tasks.make(kind="regression", model_name="least_squares").optimum is None


def test_make_refuses_a_regression_model_on_classification_data():
    with pytest.raises(ValueError, match="model 'least_squares' is a regression model but the "
                                         "data set is a classification data set"):
        tasks.make(kind="classification", model_name="least_squares")


def test_make_refuses_a_classifier_on_regression_data():
    with pytest.raises(ValueError, match="model 'lenet' is a classification model but the data "
                                         "set is a regression data set; regression models: least_squares"):
        tasks.make(kind="regression", model_name="lenet")


def test_make_refuses_unknown_kinds_models_and_a_stray_optimum():
    with pytest.raises(ValueError, match="unknown data set kind 'ranking'"):
        tasks.make(kind="ranking", model_name="lenet")
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        tasks.make(kind="classification", model_name="resnet")
    with pytest.raises(ValueError, match="classification data set has no optimum"):
        tasks.make(kind="classification", model_name="lenet", optimum=[0.0])
