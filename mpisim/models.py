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
a CPU. Every rule in :mod:`mpisim.aggregators` treats coordinates alike, so
the order of coordinates never changes a result.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from . import seeding


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


# name -> builder(input_shape, num_classes) -> (module, loss(logits, labels))
MODELS: dict[str, Callable] = {
    "lenet": _lenet,
}


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
        """Mean loss and accuracy of the current model on (x, y)."""
        total_loss, correct = 0.0, 0
        for start in range(0, len(y), batch_size):
            logits = self.module(x[start:start + batch_size])
            labels = y[start:start + batch_size]
            total_loss += float(self.loss(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
        return total_loss / len(y), correct / len(y)


def build(name: str, *, input_shape: tuple[int, ...], num_classes: int, seed: int) -> FlatModel:
    """Model ``name`` with its initial parameters drawn from the run's seed.

    The initialization is PyTorch's default for each layer (Kaiming uniform,
    as in the CGE paper's Section 3.1), drawn from a generator seeded by the
    run's seed, so every rank that builds it gets the same model.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    state = torch.random.get_rng_state()
    torch.manual_seed(int(seeding.numpy_generator(seed, seeding.MODEL_INIT).integers(2**62)))
    try:
        module, loss = MODELS[name](tuple(input_shape), num_classes)
    finally:
        torch.random.set_rng_state(state)
    return FlatModel(module, loss)
