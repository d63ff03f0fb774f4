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

Models (:data:`MODELS`): ``lenet`` (CGE paper, Section 3.4) for the server
mode; ``linear`` (one-vs-all squared hinge, BRIDGE Section 5.1) and ``cnn``
(BRIDGE Section 5.2) for the decentralized mode. :meth:`FlatModel.init_sample`
draws a whole parameter vector from the default initialization, for
Byzantine nodes that send random models.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .. import seeding


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


def _lenet(input_shape, num_classes):
    return LeNet(input_shape, num_classes), F.cross_entropy


class LinearClassifier(nn.Module):
    """A linear classifier on the flattened image: scores = W x + c.

    One weight row and one bias per class, i.e. the ten one-vs-all linear
    classifiers of BRIDGE, Section 5.1, side by side: 10 x 784 + 10 = 7,850
    parameters on 1x28x28 inputs. Train it with :func:`squared_hinge_ova`.
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
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"squared_hinge_ova: reduction must be 'mean', 'sum' or 'none', "
                     f"got {reduction!r}")


def _linear(input_shape, num_classes):
    return LinearClassifier(input_shape, num_classes), squared_hinge_ova


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


def _cnn(input_shape, num_classes):
    return SmallCNN(input_shape, num_classes), F.cross_entropy


# name -> builder(input_shape, num_classes) -> (module, loss(logits, labels))
# Every loss accepts reduction="sum" (FlatModel.evaluate uses it).
MODELS: dict[str, Callable] = {
    "lenet": _lenet,
    "linear": _linear,
    "cnn": _cnn,
}

INITS = ("default", "zero")


def _flat_view(flat: torch.Tensor, offset: int, shape: torch.Size) -> torch.Tensor:
    """A view of ``flat[offset: offset + numel]`` with the given shape (channels-last for 4-d)."""
    numel = int(np.prod(shape))
    chunk = flat[offset:offset + numel]
    if len(shape) == 4:
        out_c, in_c, kh, kw = shape
        return chunk.view(out_c, kh, kw, in_c).permute(0, 3, 1, 2)
    return chunk.view(shape)


class FlatModel:
    """A model whose parameters live in one flat float32 buffer (see the module docstring)."""

    def __init__(self, module: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.module = module
        self.loss = loss
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
        views, offset = [], 0
        for shape in self._shapes:
            views.append(_flat_view(row, offset, shape))
            offset += int(np.prod(shape))
        return views

    def gradients(self, batches, out: torch.Tensor) -> np.ndarray:
        """Mean-loss gradient of each batch ``(x, y)`` into row i of ``out`` (a, d); returns the losses.

        Row i is overwritten with the gradient at the current ``flat`` of the
        average loss over batch i (eq 8 of the CGE paper).
        """
        losses = np.empty(len(batches))
        params = list(self.module.parameters())
        for i, (x, y) in enumerate(batches):
            row = out[i]
            row.zero_()
            for param, view in zip(params, self._grad_views(row)):
                param.grad = view
            loss = self.loss(self.module(x), y)
            loss.backward()
            losses[i] = loss.item()
        for param in params:
            param.grad = None
        return losses

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
        """Mean loss and accuracy of the current model on (x, y); both NaN if it is not finite.

        A model with a NaN or infinite parameter predicts nothing (the argmax of
        NaN logits is class 0, which would read as a chance-level accuracy).
        """
        if not bool(torch.isfinite(self.flat).all()):
            return float("nan"), float("nan")
        total_loss, correct = 0.0, 0
        for start in range(0, len(y), batch_size):
            logits = self.module(x[start:start + batch_size])
            labels = y[start:start + batch_size]
            total_loss += float(self.loss(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
        return total_loss / len(y), correct / len(y)


def build(name: str, *, input_shape: tuple[int, ...], num_classes: int, seed: int,
          init: str = "default") -> FlatModel:
    """Model ``name`` with its initial parameters drawn from the run's seed.

    ``init="default"``: PyTorch's default for each layer (Kaiming uniform,
    as in the CGE paper's Section 3.1), drawn from a generator seeded by the
    run's seed, so every rank that builds it gets the same model.
    ``init="zero"``: every parameter is 0 (BRIDGE, Algorithm 1, line 1:
    w_j(0) = 0).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; known: {', '.join(INITS)}")
    state = torch.random.get_rng_state()
    torch.manual_seed(int(seeding.numpy_generator(seed, seeding.MODEL_INIT).integers(2**62)))
    try:
        module, loss = MODELS[name](tuple(input_shape), num_classes)
    finally:
        torch.random.set_rng_state(state)
    model = FlatModel(module, loss)
    if init == "zero":
        model.flat.zero_()
    return model
