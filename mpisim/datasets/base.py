"""The in-memory data set every loader returns, and how raw rows become model inputs.

A :class:`Dataset` holds one split as numpy arrays in their storage form:
images stay uint8 (a quarter of the memory of float32) and are turned into
normalized float32 only when a batch or a shard is prepared for the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class DataError(ValueError):
    """A data set, file or partition that cannot be found, read or used as asked.

    A subclass of ValueError, so callers that catch ValueError see it too.
    """


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 images (k, C, H, W) -> float32 ``(x / 255 - mean[c]) / std[c]``, channels-last memory.

    The operations and their order (cast, divide by 255, subtract, divide) are
    fixed: training runs are compared bit for bit across versions. The result
    is stored channels-last because the convolutions run faster on it on CPU;
    the values do not depend on the memory format.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = images.to(torch.float32).div_(255.0).sub_(mean_t).div_(std_t)
    return x.contiguous(memory_format=torch.channels_last)


def prepare_inputs(raw: torch.Tensor, mean: tuple[float, ...] | None,
                   std: tuple[float, ...] | None) -> torch.Tensor:
    """Model inputs (float32) from raw rows: :func:`normalize` for images, a cast otherwise.

    With ``mean`` and ``std`` given, ``raw`` is uint8 images (k, C, H, W);
    with both None, ``raw`` is features used as they are, cast to float32
    (no copy when they already are float32). A free function rather than
    only a method so that a sampler can keep the constants without keeping
    the whole data set alive.
    """
    if mean is None:
        return raw.to(torch.float32)
    return normalize(raw, mean, std)


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a data set: inputs, targets, and how to prepare inputs for a model.

    - ``inputs``: (N, *input_shape) numpy array, either uint8 images
      (N, C, H, W) or float32 features (N, d).
    - ``targets``: (N,) int64 class labels in ``[0, num_classes)``, or
      float32 values for regression.
    - ``num_classes``: the number of classes, None for regression.
    - ``mean``, ``std``: per-channel normalization constants of uint8
      images (each a tuple of C floats, on the [0, 1] scale), or None when
      the inputs are used as they are.
    - ``optimum``: regression only, the parameter vector w* that generated
      the targets (None when unknown or for classification).

    ``eq=False``: two data sets compare by identity (comparing arrays
    element-wise in ``==`` would be slow and ambiguous).
    """

    inputs: np.ndarray
    targets: np.ndarray
    num_classes: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    optimum: np.ndarray | None = None

    def __post_init__(self):
        if len(self.inputs) != len(self.targets):
            raise DataError(f"{len(self.inputs)} inputs but {len(self.targets)} targets")
        if (self.mean is None) != (self.std is None):
            raise DataError("give both mean and std, or neither")
        if self.mean is not None:
            if self.inputs.dtype != np.uint8 or self.inputs.ndim != 4:
                raise DataError(f"normalization constants need uint8 images (N, C, H, W), got "
                                f"{self.inputs.dtype} of shape {self.inputs.shape}")
            if not len(self.mean) == len(self.std) == self.inputs.shape[1]:
                raise DataError(f"{self.inputs.shape[1]} channels but {len(self.mean)} means "
                                f"and {len(self.std)} standard deviations")
        expected = np.int64 if self.num_classes is not None else np.float32
        if self.targets.dtype != expected:
            raise DataError(f"{self.kind} targets must be {np.dtype(expected)}, got {self.targets.dtype}")

    @property
    def kind(self) -> str:
        """``"classification"`` when there are classes, else ``"regression"``."""
        return "classification" if self.num_classes is not None else "regression"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input row, e.g. (1, 28, 28) or (d,)."""
        return tuple(self.inputs.shape[1:])

    def __len__(self) -> int:
        return len(self.targets)

    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        """float32 model inputs from raw rows of :attr:`inputs` (see :func:`prepare_inputs`)."""
        return prepare_inputs(raw, self.mean, self.std)

    def tensors(self, index: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepared inputs and targets of rows ``index`` (all rows if None), as new tensors.

        The inputs are float32 (normalized, channels-last, for images); the
        targets int64 for classification, float32 for regression.
        """
        inputs = self.inputs if index is None else self.inputs[index]
        targets = self.targets if index is None else self.targets[index]
        # np.array copies, so the tensors never share memory with the data set.
        return self.prepare(torch.from_numpy(np.array(inputs))), torch.from_numpy(np.array(targets))
