"""Pooling of token states into sentence vectors, and L2 normalisation.

The torch functions serve the torch backend, where the states stay on the device.
The numpy functions serve ONNX Runtime, whose outputs are numpy arrays. Both give
the same vectors up to floating-point rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from semsearch.errors import ConfigError
from semsearch.models import Pooling

if TYPE_CHECKING:
    import torch

NORM_EPS = 1e-12


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """Pool token states ``[batch, seq, dim]`` into ``[batch, dim]`` over the mask.

    Padding may be on either side: "cls" takes the first attended position and
    "lasttoken" the last one.
    """
    import torch

    mask = mask.to(hidden.dtype)
    if mode == "mean":
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        # The clamp guards rows whose mask is all zeros.
        counts = mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return summed / counts
    if mode == "max":
        padding = mask.unsqueeze(-1) == 0
        return hidden.masked_fill(padding, float("-inf")).max(dim=1).values

    positions = torch.arange(mask.shape[1], device=mask.device)
    if mode == "cls":
        index = (mask * (mask.shape[1] - positions)).argmax(dim=1)
    elif mode == "lasttoken":
        index = (mask * (positions + 1)).argmax(dim=1)
    else:
        raise ConfigError(f"Invalid pooling {mode!r}. Use mean, cls, max or lasttoken.")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def l2_normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Scale rows to unit L2 norm. An all-zero row stays zero."""
    norms = vectors.norm(p=2, dim=1, keepdim=True).clamp(min=NORM_EPS)
    return vectors / norms


def pool_array(hidden: np.ndarray, mask: np.ndarray, mode: Pooling) -> np.ndarray:
    """Pool float32 token states ``[batch, seq, dim]`` like ``pool``, in numpy."""
    weights = mask.astype(np.float32)
    if mode == "mean":
        # [batch, 1, seq] @ [batch, seq, dim] sums the attended states per row.
        summed = np.matmul(weights[:, None, :], hidden)[:, 0, :]
        counts = np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        return summed / counts
    if mode == "max":
        padded = np.where(weights[..., None] > 0, hidden, -np.inf)
        return padded.max(axis=1)

    positions = np.arange(mask.shape[1])
    if mode == "cls":
        index = (weights * (mask.shape[1] - positions)).argmax(axis=1)
    elif mode == "lasttoken":
        index = (weights * (positions + 1)).argmax(axis=1)
    else:
        raise ConfigError(f"Invalid pooling {mode!r}. Use mean, cls, max or lasttoken.")
    return hidden[np.arange(hidden.shape[0]), index]


def l2_normalize_array(vectors: np.ndarray) -> np.ndarray:
    """Scale rows to unit L2 norm like ``l2_normalize``, as float32."""
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), NORM_EPS)
    return (vectors / norms).astype(np.float32, copy=False)
