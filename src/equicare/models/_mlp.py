"""A plain MLP over a flat state vector with its input standardisation built in.

Used by the dosing learners (SAC actor and critics, behaviour model) and by the policy layer to
rebuild a saved dosing actor from a model folder, so that the policy layer never imports a
learner.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

__all__ = ["StandardizedMLP"]


class StandardizedMLP(nn.Module):
    """MLP with built-in input standardisation: ``(n, d_in) -> (n, d_out)``.

    Parameters
    ----------
    d_in, d_out : int
        Input and output widths.
    hidden : tuple of int
        Hidden widths (ReLU between layers).
    mean, std : array-like of shape (d_in,), optional
        Input standardisation ``(x - mean) / std`` (buffers, saved with the weights); a standard
        deviation below 1e-6 is replaced by 1.
    """

    def __init__(self, d_in: int, d_out: int, hidden: tuple[int, ...],
                 mean: ArrayLike | None = None, std: ArrayLike | None = None) -> None:
        super().__init__()
        m = np.zeros(d_in) if mean is None else np.asarray(mean, dtype=np.float64)
        s = np.ones(d_in) if std is None else np.asarray(std, dtype=np.float64)
        self.register_buffer("mean", torch.as_tensor(m, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.where(s > 1e-6, s, 1.0),
                                                    dtype=torch.float32))
        layers: list[nn.Module] = []
        d = d_in
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, d_out))
        self.net = nn.Sequential(*layers)

    mean: Tensor
    std: Tensor

    def forward(self, x: Tensor) -> Tensor:
        """Standardise, then the MLP."""
        out: Tensor = self.net((x - self.mean) / self.std)
        return out
