"""The papers' models and losses, over one flat float32 parameter buffer.

A :class:`FlatModel` owns one contiguous float32 vector ``flat`` of length d;
every torch parameter of its module is a view into it. Writing into ``flat``
(for instance receiving a broadcast into ``flat.numpy()``) updates the model
with no copy, and the buffer is sent as it is.

Gradients are written the same way: before an agent's backward pass, every
parameter's ``.grad`` is set to the matching view into that agent's row of
an (a, d) send buffer, so autograd accumulates the gradient straight into
the row that goes on the wire.

Layout of the flat vector: parameters in the module's order; a 4-d
convolution weight (out, in, kh, kw) is stored in (out, kh, kw, in) order,
the channels-last layout under which oneDNN runs LeNet about 1.6x faster on
a CPU. Every rule in :mod:`mpisim.rules.aggregators` treats coordinates alike, so
the order of coordinates never changes a result.

Models (:data:`MODELS`, one :class:`ModelSpec` per name a config may give as
``model.name``):

- classification (labels are class indices): ``lenet`` (CGE paper,
  Section 3.4); ``linear`` (one-vs-all squared hinge, BRIDGE Section 5.1);
  ``cnn`` (BRIDGE Section 5.2); ``logreg`` (multinomial logistic regression,
  Yin et al. 2018, Section 7); ``mlp`` (one hidden ReLU layer, Ghosh et al.,
  Section 7);
- regression (real targets): ``least_squares`` (Ghosh et al., Section 7).

A model's own settings (``model.params``, e.g. ``hidden`` of ``mlp``) are
checked by :func:`check_params`. :meth:`FlatModel.init_sample` draws a whole
parameter vector from the default initialization, for Byzantine nodes that
send random models. What is measured on a trained model is the business of
:mod:`mpisim.learning.tasks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import registry, seeding

KINDS = ("classification", "regression")

# loss(outputs, targets, *, reduction="mean"|"sum"|"none") -> tensor
Loss = Callable[..., torch.Tensor]


def _reduce(per_sample: torch.Tensor, reduction: str, loss_name: str) -> torch.Tensor:
    """Reduce (N,) per-sample losses as ``F.cross_entropy`` does."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"{loss_name}: reduction must be 'mean', 'sum' or 'none', "
                     f"got {reduction!r}")


# --------------------------------------------------------------------------
# Classification models
# --------------------------------------------------------------------------

class LeNet(nn.Module):
    """The LeNet of the CGE paper (Section 3.4): conv 20@5x5, max-pool 2, conv 50@5x5,
    max-pool 2, fully connected 500, fully connected 10, ReLU activations.

    431,080 parameters on 1x28x28 inputs (MNIST), 657,080 on 3x32x32 (CIFAR-10).
    """

    def __init__(self, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        flat_h, flat_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(50 * flat_h * flat_w, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        # Flatten in (C, H, W) order whatever the memory layout, as nn.Flatten does.
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class LinearClassifier(nn.Module):
    """A linear classifier on the flattened image: scores = W x + c.

    One weight row and one bias per class: 10 x 784 + 10 = 7,850 parameters
    on 1x28x28 inputs. With :func:`squared_hinge_ova` these are the ten
    one-vs-all linear classifiers of BRIDGE, Section 5.1, side by side
    (``linear``); with softmax cross-entropy, the multinomial logistic
    regression of Yin et al. 2018, Section 7 (``logreg``).
    """

    def __init__(self, input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        self.fc = nn.Linear(int(np.prod(input_shape)), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def squared_hinge_ova(scores: torch.Tensor, labels: torch.Tensor, *,
                      reduction: str = "mean") -> torch.Tensor:
    """One-vs-all squared hinge loss (BRIDGE, Section 5.1).

    scores (N, C), labels (N,) of class indices. For sample i and class c the
    target is t_ic = +1 if labels[i] == c else -1, and the sample's loss is

        l_i = sum over the C classes of max(0, 1 - t_ic * scores[i, c])^2,

    SUMMED over classes (not averaged), so that each class's weights get
    exactly the gradient of their own binary one-vs-all problem. ``reduction``
    works as in ``F.cross_entropy``: "mean" (the default) averages l_i over the
    N samples, "sum" adds them, "none" returns the (N,) vector. No
    regularization term is included.
    """
    targets = F.one_hot(labels, scores.shape[1]).to(scores.dtype).mul_(2).sub_(1)
    per_sample = (1 - targets * scores).clamp_min(0).square().sum(dim=1)
    return _reduce(per_sample, reduction, "squared_hinge_ova")


class SmallCNN(nn.Module):
    """The CNN of BRIDGE, Section 5.2: two convolutions, each followed by max
    pooling, then two fully connected layers.

    The paper gives no layer sizes; these are the classic small MNIST CNN's:
    conv 10@5x5, max-pool 2, ReLU, conv 20@5x5, max-pool 2, ReLU, fully
    connected 320 -> 50, ReLU, fully connected 50 -> 10. 21,840 parameters on
    1x28x28 inputs (260 + 5,020 + 16,050 + 510). Trained with cross-entropy,
    which on the paper's one-hot labels is the usual softmax log-loss.
    """

    def __init__(self, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        flat_h, flat_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(20 * flat_h * flat_w, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class MLP(nn.Module):
    """A fully connected network with one hidden ReLU layer (Ghosh et al., Section 7).

    scores = W2 relu(W1 x + c1) + c2 on the flattened input, with ``hidden``
    units in the hidden layer; the paper uses 1000 on MNIST, which gives
    784 x 1000 + 1000 + 1000 x 10 + 10 = 795,010 parameters. Trained with
    cross-entropy, as in the paper.
    """

    def __init__(self, input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10, *,
                 hidden: int = 1000):
        super().__init__()
        self.fc1 = nn.Linear(int(np.prod(input_shape)), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


# --------------------------------------------------------------------------
# Regression models
# --------------------------------------------------------------------------

class LinearPredictor(nn.Module):
    """The linear prediction a^T w of a least-squares problem: no bias, d parameters.

    Inputs (N, d), outputs (N,). The weight is kept as an ``nn.Linear(d, 1,
    bias=False)`` so that its (1, d) matrix is stored in the flat buffer as w
    itself, coordinate for coordinate, and :meth:`FlatModel.init_sample` knows
    its default initialization (uniform in +/- 1/sqrt(d)).
    """

    def __init__(self, input_shape: tuple[int, ...]):
        super().__init__()
        self.fc = nn.Linear(int(np.prod(input_shape)), 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)).squeeze(1)


def half_squared_error(predictions: torch.Tensor, targets: torch.Tensor, *,
                       reduction: str = "mean") -> torch.Tensor:
    """Squared loss with a factor 1/2: l_i = (1/2) (predictions[i] - targets[i])^2.

    predictions and targets have the same shape (N,). With "mean" (the
    default) the loss of a batch (A, b) of k rows is (1/2k) ||A w - b||^2 and
    its gradient in w is A^T (A w - b) / k: the 1/2 cancels the 2 of the
    square, as in the least-squares problem of Ghosh et al., Section 7 (whose
    minimizer, argmin_w ||A w - b||_2, is the same). "sum" adds the l_i,
    "none" returns them.
    """
    if predictions.shape != targets.shape:
        # (N,) against (N, 1) would broadcast to an (N, N) matrix of wrong losses.
        raise ValueError(f"half_squared_error: predictions {tuple(predictions.shape)} and "
                         f"targets {tuple(targets.shape)} must have the same shape")
    per_sample = (predictions - targets).square().mul_(0.5)
    return _reduce(per_sample, reduction, "half_squared_error")


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

def _positive_int(value: Any) -> str | None:
    # bool is an int in Python; hidden=True is a typo, not 1 unit.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        return f"must be an integer >= 1, got {value!r}"
    return None


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One entry of :data:`MODELS`: what a config's ``model.name`` builds.

    ``kind`` is "classification" (outputs one score per class, targets are
    class indices) or "regression" (one real output per sample).
    ``params`` holds the defaults of the model's own settings
    (``model.params``), ``checks`` a validator per key returning a message
    or None. ``builder(input_shape, num_classes, params)`` returns
    ``(module, loss)`` with every key of ``params`` filled in; ``num_classes``
    is None for regression. ``description`` is one line naming the paper.
    """

    name: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    builder: Callable[[tuple[int, ...], int | None, Mapping[str, Any]], tuple[nn.Module, Loss]]
    description: str
    checks: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model {self.name!r}: kind must be one of {', '.join(KINDS)}, "
                             f"got {self.kind!r}")
        # Frozen all the way down: a registry entry is shared by every run.
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "checks", MappingProxyType(dict(self.checks)))


def add(spec: ModelSpec, *, reference: str = "", origin: str | None = None) -> ModelSpec:
    """Register model ``spec`` (:data:`mpisim.registry.models`; ``mpisim.register.model`` calls
    this too) and return it."""
    registry.models.add(registry.Entry(
        kind="model", name=spec.name, obj=spec, params=dict(spec.params), description=spec.description,
        reference=reference, properties={"kind": spec.kind},
        origin=origin or registry.current_origin(spec.builder)))
    return spec


#: config name -> :class:`ModelSpec` (:data:`mpisim.registry.models`: built-ins and plugins alike)
MODELS = registry.models

_REFERENCES = {
    "lenet": "LeCun, Bottou, Bengio, Haffner, Proc. IEEE 1998; the model of the CGE paper's experiments",
    "linear": "Fang, Yang, Bajwa, BRIDGE, IEEE TSIPN 2022, Section 5.1",
    "cnn": "Fang, Yang, Bajwa, BRIDGE, IEEE TSIPN 2022, Section 5.2",
    "logreg": "Yin, Chen, Ramchandran, Bartlett, ICML 2018, Section 7",
    "mlp": "Ghosh, Maity, Kadhe, Mazumdar, Ramchandran, 2021, Section 7",
    "least_squares": "Ghosh, Maity, Kadhe, Mazumdar, Ramchandran, 2021, Section 7",
}
for _spec in (
    ModelSpec(
        name="lenet", kind="classification",
        builder=lambda shape, classes, _: (LeNet(shape, classes), F.cross_entropy),
        description="LeNet, conv 20 and 50 @5x5, fc 500, cross-entropy (CGE paper, Section 3.4)"),
    ModelSpec(
        name="linear", kind="classification",
        builder=lambda shape, classes, _: (LinearClassifier(shape, classes), squared_hinge_ova),
        description="linear one-vs-all classifiers, squared hinge loss (BRIDGE, Section 5.1)"),
    ModelSpec(
        name="cnn", kind="classification",
        builder=lambda shape, classes, _: (SmallCNN(shape, classes), F.cross_entropy),
        description="small CNN, conv 10 and 20 @5x5, fc 50, cross-entropy (BRIDGE, Section 5.2)"),
    ModelSpec(
        name="logreg", kind="classification",
        builder=lambda shape, classes, _: (LinearClassifier(shape, classes), F.cross_entropy),
        description="multinomial logistic regression, softmax cross-entropy "
                    "(Yin et al. 2018, Section 7)"),
    ModelSpec(
        name="mlp", kind="classification", params={"hidden": 1000},
        checks={"hidden": _positive_int},
        builder=lambda shape, classes, p: (MLP(shape, classes, hidden=int(p["hidden"])),
                                           F.cross_entropy),
        description="one hidden ReLU layer of `hidden` units, cross-entropy "
                    "(Ghosh et al., Section 7)"),
    ModelSpec(
        name="least_squares", kind="regression",
        builder=lambda shape, _, __: (LinearPredictor(shape), half_squared_error),
        description="linear prediction a^T w, loss (1/2)(a^T w - b)^2 "
                    "(Ghosh et al., Section 7)"),
):
    add(_spec, reference=_REFERENCES[_spec.name], origin="mpisim")

INITS = ("default", "zero")


def check_params(name: str, params: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(field, message)`` for the first thing wrong with model ``name`` and
    its ``model.params``, None when they are fine.

    The field is ``model.name`` for an unknown model and
    ``model.params.KEY`` for an unknown key or a bad value, so a config
    error can point at the line to change.
    """
    spec = MODELS.get(name)
    if spec is None:
        return "model.name", f"unknown model {name!r}; known: {', '.join(MODELS)}"
    for key, value in (params or {}).items():
        if key not in spec.params:
            return (f"model.params.{key}",
                    f"{name} has no parameter {key!r}; its parameters: "
                    f"{', '.join(spec.params) or 'none'}")
        check = spec.checks.get(key)
        problem = check(value) if check else None
        if problem:
            return f"model.params.{key}", f"{name}: {key} {problem}"
    return None

# --------------------------------------------------------------------------
# The flat buffer
# --------------------------------------------------------------------------

# Samples per forward pass when one batch is larger (a full local gradient):
# bounds the activations held at once (LeNet: about 30 MB per 4,096 samples).
GRADIENT_CHUNK = 4096


def _flat_view(flat: torch.Tensor, offset: int, shape: torch.Size) -> torch.Tensor:
    """A view of ``flat[offset: offset + numel]`` with the given shape (channels-last for 4-d)."""
    numel = int(np.prod(shape))
    chunk = flat[offset:offset + numel]
    if len(shape) == 4:
        out_c, in_c, kh, kw = shape
        return chunk.view(out_c, kh, kw, in_c).permute(0, 3, 1, 2)
    return chunk.view(shape)


def flat_views(model: FlatModel, flat: torch.Tensor) -> list[torch.Tensor]:
    """Views of a flat vector (d,), any dtype, shaped as ``model``'s parameters in their order
    (the layout of ``model.flat``): gradient rows, or float64 copies of the parameters."""
    views, offset = [], 0
    for shape in model._shapes:
        views.append(_flat_view(flat, offset, shape))
        offset += int(np.prod(shape))
    return views


class FlatModel:
    """A model whose parameters live in one flat float32 buffer (see the module docstring)."""

    def __init__(self, module: nn.Module, loss: Loss, *, name: str = ""):
        self.module = module
        self.loss = loss
        self.name = name  # the registry name it was built under (mpisim.learning.erm reads it)
        self._shapes = [p.shape for p in module.parameters()]
        self.d = sum(int(np.prod(s)) for s in self._shapes)
        self.flat = torch.empty(self.d, dtype=torch.float32)
        offset = 0
        for param in module.parameters():
            view = _flat_view(self.flat, offset, param.shape)
            view.copy_(param.detach())
            param.data = view
            offset += param.numel()
        self._bounds: torch.Tensor | None = None   # filled by the first init_sample

    def _init_bounds(self) -> torch.Tensor:
        """(d,) float32: for every coordinate, the half-width of the uniform
        distribution PyTorch's default initialization draws it from."""
        if self._bounds is None:
            owner = {}
            for mod in self.module.modules():
                for param in mod.parameters(recurse=False):
                    owner[id(param)] = mod
            bounds = torch.empty(self.d, dtype=torch.float32)
            offset = 0
            for param in self.module.parameters():
                mod = owner[id(param)]
                if not isinstance(mod, (nn.Linear, nn.Conv2d)):
                    raise NotImplementedError(
                        f"init_sample: no default initialization known for "
                        f"{type(mod).__name__} (only nn.Linear and nn.Conv2d)")
                # fan_in of the layer's weight: in_features, or in/groups * kh * kw.
                shape = mod.weight.shape
                fan_in = int(np.prod(shape[1:]))
                bounds[offset:offset + param.numel()] = 1.0 / np.sqrt(fan_in) if fan_in else 0.0
                offset += param.numel()
            self._bounds = bounds
        return self._bounds

    def init_sample(self, generator: torch.Generator) -> torch.Tensor:
        """A fresh (d,) float32 draw of all parameters from the model's initial distribution.

        Layer by layer this is PyTorch's default for nn.Linear and nn.Conv2d:
        weights from kaiming_uniform_(a=sqrt(5)), i.e. uniform in
        +/- 1/sqrt(fan_in), and biases uniform in +/- 1/sqrt(fan_in), with
        fan_in the weight's in_features (or in_channels/groups * kh * kw).
        Every coordinate is independent, so the flat layout (channels-last
        conv weights) changes nothing but where each draw lands. Drawn only
        from ``generator`` (the global RNG is not touched), in one vectorized
        pass. This is the distribution of ``build(..., init="default")``
        whatever init the model itself was built with; BRIDGE's Byzantine
        nodes in Section 5.2 send such draws.
        """
        bounds = self._init_bounds()
        sample = torch.empty(self.d, dtype=torch.float32)
        sample.uniform_(-1.0, 1.0, generator=generator)
        return sample.mul_(bounds)

    def _grad_views(self, row: torch.Tensor) -> list[torch.Tensor]:
        return flat_views(self, row)

    def gradients(self, batches, out: torch.Tensor, *, chunk: int = GRADIENT_CHUNK) -> np.ndarray:
        """Mean-loss gradient of each batch ``(x, y)`` into row i of ``out`` (a, d); returns the losses.

        Row i is overwritten with the gradient at the current ``flat`` of the
        average loss over batch i (eq 8 of the CGE paper; with a whole shard
        as the batch, the full local gradient of Yin et al.'s Algorithm 1).
        A batch of more than ``chunk`` samples is taken ``chunk`` samples at a
        time: each piece's summed loss, divided by the batch size, is
        back-propagated into the same row, so the activations held at once
        stay bounded whatever the shard's size (smaller batches take one pass,
        as they always did).
        """
        losses = np.empty(len(batches))
        params = list(self.module.parameters())
        for i, (x, y) in enumerate(batches):
            row = out[i]
            row.zero_()
            for param, view in zip(params, self._grad_views(row)):
                param.grad = view
            if len(y) <= chunk:
                loss = self.loss(self.module(x), y)
                loss.backward()
                losses[i] = loss.item()
                continue
            total = 0.0
            for start in range(0, len(y), chunk):
                piece = self.loss(self.module(x[start:start + chunk]), y[start:start + chunk],
                                  reduction="sum") / len(y)
                piece.backward()
                total += piece.item()
            losses[i] = total
        for param in params:
            param.grad = None
        return losses


def build(name: str, *, input_shape: tuple[int, ...], num_classes: int | None, seed: int,
          init: str = "default", params: Mapping[str, Any] | None = None) -> FlatModel:
    """Model ``name`` with its initial parameters drawn from the run's seed.

    ``num_classes`` is the number of classes for a classification model and
    None for a regression model. ``params`` overrides the defaults of the
    model's own settings (:attr:`ModelSpec.params`); it is checked by
    :func:`check_params` first.

    ``init="default"``: PyTorch's default for each layer (Kaiming uniform,
    as in the CGE paper's Section 3.1), drawn from a generator seeded by the
    run's seed, so every rank that builds it gets the same model.
    ``init="zero"``: every parameter is 0 (BRIDGE, Algorithm 1, line 1:
    w_j(0) = 0).
    """
    problem = check_params(name, params)
    if problem:
        raise ValueError(problem[1])
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; known: {', '.join(INITS)}")
    spec = MODELS[name]
    if spec.kind == "classification" and num_classes is None:
        raise ValueError(f"{name} is a classification model and needs num_classes")
    if spec.kind == "regression" and num_classes is not None:
        raise ValueError(f"{name} is a regression model: num_classes must be None, "
                         f"got {num_classes!r}")
    state = torch.random.get_rng_state()
    torch.manual_seed(int(seeding.numpy_generator(seed, seeding.MODEL_INIT).integers(2**62)))
    try:
        module, loss = spec.builder(tuple(input_shape), num_classes, {**spec.params, **(params or {})})
    finally:
        torch.random.set_rng_state(state)
    model = FlatModel(module, loss, name=name)
    if init == "zero":
        model.flat.zero_()
    return model
