"""What is learned and how it is measured: one task per kind of data set.

A task turns a trained :class:`~mpisim.learning.models.FlatModel` and a test
set into named numbers (``dict[str, float]``). Two kinds, the same two as a
model's :attr:`~mpisim.learning.models.ModelSpec.kind`:

- :class:`Classification`: targets are class indices; ``test_loss`` (the
  model's own loss averaged over the test set) and ``test_accuracy`` (the
  fraction of samples whose highest score is their label). Headline:
  ``test_accuracy``, higher is better.
- :class:`Regression`: targets are reals; ``test_loss`` (the model's squared
  loss averaged over the test set) and, when the data set knows the
  parameters w* it was generated from, ``distance_to_optimum`` =
  ||w - w*||_2, the error metric of Ghosh et al., Section 7. Headline:
  ``distance_to_optimum`` when w* is known, else ``test_loss``; lower is
  better.

Every metric is NaN when the model has a NaN or infinite parameter: such a
model predicts nothing, and the argmax of NaN logits (class 0) would
otherwise read as a chance-level accuracy.

:func:`make` picks the task from the data set's kind and refuses a model of
the other kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import models

NAN = float("nan")


def _is_finite(model: models.FlatModel) -> bool:
    return bool(torch.isfinite(model.flat).all())


def _check_test_set(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be an integer >= 1, got {batch_size!r}")
    if len(y) == 0:
        raise ValueError("evaluate: the test set is empty")
    if len(x) != len(y):
        raise ValueError(f"evaluate: {len(x)} inputs but {len(y)} targets")


def _outputs_by_batch(model: models.FlatModel, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(outputs, targets) of consecutive slices of ``batch_size`` samples.

    Batching bounds the memory of a forward pass over a whole test set; the
    slices are the ones ``FlatModel.evaluate`` has always used, so the sums
    below add the same float32 partial sums in the same order.
    """
    for start in range(0, len(y), batch_size):
        yield model.module(x[start:start + batch_size]), y[start:start + batch_size]


@dataclass(frozen=True)
class Classification:
    """Loss and accuracy of a classifier: targets are class indices (N,) int64.

    test_loss = (1/N) sum_i loss_i, with loss_i the model's own per-sample
    loss (cross-entropy, or BRIDGE's one-vs-all squared hinge for
    ``linear``); test_accuracy = (1/N) #{i : argmax_c scores[i, c] = y_i},
    ties going to the lowest class index (``torch.argmax``). The loss of each
    batch is summed in float32 and the batch sums in Python floats.
    """

    kind = "classification"
    metric_names = ("test_loss", "test_accuracy")
    headline = "test_accuracy"
    higher_is_better = True

    @torch.no_grad()
    def evaluate(self, model: models.FlatModel, x: torch.Tensor, y: torch.Tensor, *,
                 batch_size: int = 1000) -> dict[str, float]:
        """``{"test_loss", "test_accuracy"}`` of ``model`` on (x, y); NaN if the model is not finite."""
        _check_test_set(x, y, batch_size)
        if not _is_finite(model):
            return dict.fromkeys(self.metric_names, NAN)
        total_loss, correct = 0.0, 0
        for scores, labels in _outputs_by_batch(model, x, y, batch_size):
            total_loss += float(model.loss(scores, labels, reduction="sum"))
            correct += int((scores.argmax(1) == labels).sum())
        return {"test_loss": total_loss / len(y), "test_accuracy": correct / len(y)}


@dataclass(frozen=True, eq=False)
class Regression:
    """Squared loss of a regression model and, if w* is known, its distance to w*.

    Targets are reals (N,) float32. test_loss = (1/N) sum_i loss_i with the
    model's own loss, for ``least_squares`` the half squared error
    (1/2)(a_i^T w - b_i)^2 it is trained on. ``optimum`` is w* (d,), e.g. the
    vector a synthetic data set's targets b = A w* were generated from;
    distance_to_optimum = ||w - w*||_2, computed in float64 from the float32
    parameters (Ghosh et al., Section 7, plot ||w_t - w*||).
    """

    optimum: Any = None

    kind = "regression"
    higher_is_better = False

    def __post_init__(self):
        if self.optimum is None:
            return
        # A float64 copy: later changes to the caller's array cannot move w*,
        # and the distance is taken at the precision it is reported in.
        optimum = torch.as_tensor(self.optimum, dtype=torch.float64).detach().clone()
        if optimum.dim() != 1:
            raise ValueError(f"Regression: optimum must be a (d,) vector, got shape "
                             f"{tuple(optimum.shape)}")
        if not bool(torch.isfinite(optimum).all()):
            raise ValueError("Regression: optimum has a NaN or infinite coordinate")
        object.__setattr__(self, "optimum", optimum)

    @property
    def metric_names(self) -> tuple[str, ...]:
        if self.optimum is None:
            return ("test_loss",)
        return ("test_loss", "distance_to_optimum")

    @property
    def headline(self) -> str:
        return "test_loss" if self.optimum is None else "distance_to_optimum"

    @torch.no_grad()
    def evaluate(self, model: models.FlatModel, x: torch.Tensor, y: torch.Tensor, *,
                 batch_size: int = 1000) -> dict[str, float]:
        """``{"test_loss"}``, and ``"distance_to_optimum"`` if w* is known; NaN if the model
        is not finite."""
        if self.optimum is not None and self.optimum.numel() != model.d:
            raise ValueError(f"Regression: optimum has {self.optimum.numel()} coordinates, "
                             f"the model {model.d}")
        _check_test_set(x, y, batch_size)
        if not _is_finite(model):
            return dict.fromkeys(self.metric_names, NAN)
        total_loss = 0.0
        for predictions, targets in _outputs_by_batch(model, x, y, batch_size):
            total_loss += float(model.loss(predictions, targets, reduction="sum"))
        metrics = {"test_loss": total_loss / len(y)}
        if self.optimum is not None:
            metrics["distance_to_optimum"] = float(
                torch.linalg.vector_norm(model.flat.double() - self.optimum))
        return metrics


Task = Classification | Regression


def make(*, kind: str, model_name: str, optimum: Any = None) -> Task:
    """The task for a data set of ``kind`` learned by model ``model_name``.

    ``kind`` is the data set's: "classification" or "regression". The model's
    kind (:data:`mpisim.learning.models.MODELS`) must be the same, since a
    classifier cannot fit real targets nor a regression model class labels.
    ``optimum`` is w*, when a regression data set knows it; a classification
    data set has none.
    """
    if kind not in models.KINDS:
        raise ValueError(f"unknown data set kind {kind!r}; known: {', '.join(models.KINDS)}")
    spec = models.MODELS.get(model_name)
    if spec is None:
        raise ValueError(f"unknown model {model_name!r}; known: {', '.join(models.MODELS)}")
    if spec.kind != kind:
        fitting = [name for name, other in models.MODELS.items() if other.kind == kind]
        raise ValueError(f"model {model_name!r} is a {spec.kind} model but the data set is a "
                         f"{kind} data set; {kind} models: {', '.join(fitting)}")
    if kind == "classification":
        if optimum is not None:
            raise ValueError("a classification data set has no optimum w*, but one was given")
        return Classification()
    return Regression(optimum=optimum)
