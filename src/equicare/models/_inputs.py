"""Model inputs built once per dataset: a feature tensor and (for history encoders) window indices.

Mini-batches are gathered by vectorised indexing, ``x[rows]`` or ``x[window_index[rows]]``; no
per-sample Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from equicare.exceptions import InvalidParameterError
from equicare.models._encoders import window_index

__all__ = ["ModelInputs", "batched_forward", "previous_action_features"]


def previous_action_features(codes: NDArray[np.int64], sizes: tuple[int, ...],
                             rewards: NDArray[np.float64], step: NDArray[np.int64]
                             ) -> NDArray[np.float32]:
    """One-hot components of the previous row's action and its reward (zeros at step 0).

    Parameters
    ----------
    codes : ndarray of shape (n_steps, n_components)
    sizes : tuple of int
    rewards : ndarray of shape (n_steps,)
    step : ndarray of shape (n_steps,)

    Returns
    -------
    ndarray of shape (n_steps, sum(sizes) + 1)
    """
    n = codes.shape[0]
    out = np.zeros((n, int(sum(sizes)) + 1), dtype=np.float32)
    rows = np.flatnonzero(step > 0)
    offsets = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
    cols = codes[rows - 1] + offsets[None, :]
    out[np.repeat(rows, len(sizes)), cols.reshape(-1)] = 1.0
    out[rows, -1] = rewards[rows - 1]
    return out


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """Features of every row and the history window of every row.

    Parameters
    ----------
    x : Tensor of shape (n_steps, n_inputs), float32
        State features, followed (when ``n_prev > 0``) by the previous row's action components
        (one-hot) and reward.
    window : int
        Rows of history per input (1: current row only).
    index : Tensor of shape (n_steps, window), int64
        Window rows (left-aligned, see :func:`~equicare.models.window_index`); ``None`` if
        ``window == 1``.
    lengths : Tensor of shape (n_steps,), int64
        Valid window rows; ``None`` if ``window == 1``.
    n_prev : int
        Trailing columns of ``x`` that describe the previous row. In a window they are zeroed
        in the oldest slot, so a window of ``k`` rows uses exactly those ``k`` rows (the same
        information at training time and when a simulator passes only the last ``k`` rows).
    """

    x: Tensor
    window: int
    index: Tensor | None
    lengths: Tensor | None
    n_prev: int = 0

    @classmethod
    def from_arrays(cls, features: NDArray[Any], step: NDArray[np.int64], window: int,
                    prev: NDArray[np.float32] | None = None) -> ModelInputs:
        """Build from features, within-episode positions and optional previous-row features.

        Shapes: ``features`` (n_steps, n_features), ``step`` (n_steps,), ``prev``
        (n_steps, n_prev).
        """
        feats = np.asarray(features, dtype=np.float32)
        n_prev = 0
        if prev is not None and window > 1:
            feats = np.concatenate([feats, np.asarray(prev, dtype=np.float32)], axis=1)
            n_prev = int(prev.shape[1])
        x = torch.as_tensor(np.ascontiguousarray(feats))
        if window == 1:
            return cls(x, 1, None, None)
        idx, lengths = window_index(step, window)
        return cls(x, window, torch.as_tensor(idx), torch.as_tensor(lengths), n_prev)

    @classmethod
    def from_dataset(cls, dataset: Any, window: int, history_actions: bool = False
                     ) -> ModelInputs:
        """Build from a :class:`~equicare.data.TrajectoryDataset`.

        ``history_actions`` adds the previous row's action and reward to each window slot.
        """
        prev = None
        if history_actions and window > 1:
            prev = previous_action_features(dataset.action_codes, dataset.action_space.sizes,
                                            dataset.rewards, dataset.step)
        return cls.from_arrays(dataset.features(), dataset.step, window, prev)

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return int(self.x.shape[0])

    def take(self, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """Gather the inputs of the given rows.

        Parameters
        ----------
        rows : Tensor of shape (batch,), int64

        Returns
        -------
        x : Tensor of shape (batch, n_features) or (batch, window, n_features)
        lengths : Tensor of shape (batch,) or None
        """
        if self.index is None:
            return self.x[rows], None
        assert self.lengths is not None
        xs = self.x[self.index[rows]]
        if self.n_prev:
            xs[:, 0, -self.n_prev:] = 0.0  # the oldest slot's predecessor is outside the window
        return xs, self.lengths[rows]


@torch.no_grad()
def batched_forward(net: torch.nn.Module, inputs: ModelInputs, batch_size: int = 8192,
                    rows: Tensor | None = None) -> Tensor:
    """Evaluate ``net`` on all (or the given) rows in chunks without gradients.

    Returns
    -------
    Tensor of shape (n_rows, K)
    """
    was_training = net.training
    net.eval()
    try:
        all_rows = torch.arange(inputs.n_rows) if rows is None else rows
        outs = []
        for start in range(0, int(all_rows.shape[0]), batch_size):
            r = all_rows[start:start + batch_size]
            x, lengths = inputs.take(r)
            outs.append(net(x, lengths))
        if not outs:
            raise InvalidParameterError("No rows to evaluate.")
        return torch.cat(outs, dim=0)
    finally:
        net.train(was_training)
