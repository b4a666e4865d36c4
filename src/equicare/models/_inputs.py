"""Model inputs built once per dataset: a feature tensor and (for history encoders) window indices.

Mini-batches are gathered by vectorised indexing, ``x[rows]`` or ``x[window_index[rows]]``; no
per-sample Python.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from equicare.data._labels import match_levels, unseen_levels_message
from equicare.exceptions import DataValidationError, DataWarning, InvalidParameterError
from equicare.models._encoders import window_index

__all__ = ["ModelInputs", "batched_forward", "previous_action_features", "categorical_codes",
           "categorical_vocabulary", "state_inputs", "input_names"]

#: a categorical level seen in no training row maps to this code (its embedding: the
#: frequency-weighted mean of the known levels, see CategoricalEmbedding)
UNKNOWN_CODE = 0

Vocabulary = tuple[tuple[str, ...], ...]


def categorical_vocabulary(dataset: Any) -> Vocabulary:
    """Levels of each categorical state column that occur in ``dataset``'s rows, as strings.

    Returns
    -------
    tuple of tuple of str
        One vocabulary per column of ``dataset.categorical`` (sorted as the dataset's levels);
        levels a column declares but no row uses are left out (they map to "unknown").
    """
    if dataset.categorical is None:
        return ()
    out = []
    for j, levels in enumerate(dataset.categorical_levels):
        used = np.unique(dataset.categorical[:, j])
        out.append(tuple(str(levels[i]) for i in used))
    return tuple(out)


def categorical_codes(dataset: Any, vocabulary: Vocabulary) -> NDArray[np.int64]:
    """Codes of the dataset's categorical states in a model's vocabulary.

    Levels are matched by their string form (:func:`~equicare.data._labels.match_levels`, so
    ``136.0`` finds ``136``); a level outside the vocabulary (unseen in training) gets
    :data:`UNKNOWN_CODE` (0), level ``k`` of the vocabulary gets ``k + 1``. A
    :class:`~equicare.exceptions.DataWarning` names a column whose levels are unseen in more
    than half the rows.

    Returns
    -------
    ndarray of shape (n_steps, n_categorical), int64
    """
    n_cat = 0 if dataset.categorical is None else dataset.categorical.shape[1]
    if n_cat != len(vocabulary):
        raise DataValidationError(f"The model has {len(vocabulary)} categorical state "
                                  f"columns; the dataset has {n_cat}.")
    out = np.empty((dataset.n_steps, n_cat), dtype=np.int64)
    for j, (levels, vocab) in enumerate(zip(dataset.categorical_levels, vocabulary,
                                            strict=True)):
        lut = match_levels(levels, vocab)  # one lookup per level, not per row
        codes = dataset.categorical[:, j]
        out[:, j] = np.where(lut < 0, UNKNOWN_CODE, lut + 1)[codes]
        msg = unseen_levels_message(
            str(dataset.categorical_names[j]), out[:, j] == UNKNOWN_CODE, levels, codes, lut,
            vocab, "The model's inputs", "they are read as an unknown level (the mean embedding)")
        if msg is not None:
            warnings.warn(msg, DataWarning, stacklevel=2)
    return out


def state_inputs(dataset: Any, vocabulary: Vocabulary | None) -> NDArray[np.float32]:
    """State part of the model inputs.

    ``vocabulary=None``: :meth:`TrajectoryDataset.features` (numeric + one-hot categorical).
    Otherwise the categorical codes (as float32, first) followed by the numeric states: one
    column per categorical state whatever its cardinality.

    Returns
    -------
    ndarray of shape (n_steps, n_categorical + n_features) or (n_steps, n_one_hot_features)
    """
    if vocabulary is None:
        return np.asarray(dataset.features(), dtype=np.float32)
    codes = categorical_codes(dataset, vocabulary).astype(np.float32)
    return np.ascontiguousarray(np.concatenate([codes, np.asarray(dataset.states,
                                                                  dtype=np.float32)], axis=1))


def input_names(dataset: Any, embedded: bool) -> tuple[str, ...]:
    """Names of the state columns a model reads.

    One-hot inputs: :meth:`TrajectoryDataset.feature_names` (``"region=north"``). Code inputs
    (``embedded``): the numeric state names, then ``"<column>:categorical"`` per categorical
    column (its levels live in the network's vocabulary, so new levels do not change the names).
    """
    if not embedded:
        return tuple(dataset.feature_names())
    return tuple(dataset.state_names) + tuple(f"{c}:categorical"
                                              for c in dataset.categorical_names)


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
    def from_dataset(cls, dataset: Any, window: int, history_actions: bool = False,
                     vocabulary: Vocabulary | None = None) -> ModelInputs:
        """Build from a :class:`~equicare.data.TrajectoryDataset`.

        ``history_actions`` adds the previous row's action and reward to each window slot.
        ``vocabulary`` (see :func:`state_inputs`): categorical states as codes for learned
        embeddings instead of one-hot columns.
        """
        prev = None
        if history_actions and window > 1:
            prev = previous_action_features(dataset.action_codes, dataset.action_space.sizes,
                                            dataset.rewards, dataset.step)
        return cls.from_arrays(state_inputs(dataset, vocabulary), dataset.step, window, prev)

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
