"""State encoders: an MLP over the current features and a history encoder over a window of steps.

The history encoder reads the last ``k`` rows of an episode (oldest first), runs a bidirectional
LSTM over them and pools the outputs with additive (Bahdanau) attention. Early in an episode fewer
than ``k`` rows exist; those windows are *left-aligned* and padded at the end, the LSTM runs on
packed sequences (so padded slots never enter either direction's recurrence) and the attention
scores of padded slots are set to ``-inf`` (so they get exactly zero weight). Padding therefore
never leaks into the encoding: a row's code equals the code of its unpadded history alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE

__all__ = ["Standardize", "MLPEncoder", "HistoryEncoder", "CategoricalEmbedding",
           "embedding_size", "window_index", "mlp"]

#: cap of the embedding width chosen from a column's cardinality (see :func:`embedding_size`)
MAX_EMBEDDING_DIM = 50


def embedding_size(n_levels: int, max_dim: int = MAX_EMBEDDING_DIM) -> int:
    r"""Width of the learned embedding of a categorical column with ``n_levels`` levels.

    .. math::

        d(n) = \min\big(d_{\max},\; \mathrm{round}(1.6\, n^{0.56})\big), \qquad d \ge 1,

    the rule of thumb of fastai (``emb_sz_rule`` in ``fastai/tabular/model.py``, which caps at
    600; Howard and Gugger, 2020, "Fastai: a layered API for deep learning", *Information*
    11(2), 108), with the cap of 50 of fast.ai's earlier rule ``min(50, (n + 1) // 2)``.
    Examples: 6 levels -> 4, 50 -> 14, 700 -> 50.
    """
    if int(n_levels) < 1:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="n_levels", owner="embedding_size", expected="an int >= 1", got=n_levels))
    return int(max(1, min(int(max_dim), round(1.6 * float(n_levels) ** 0.56))))


def window_index(step: NDArray[np.int64], window: int
                 ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Rows of the history window of every row (vectorised), left-aligned and padded at the end.

    Parameters
    ----------
    step : ndarray of shape (n_steps,)
        Position of each row within its episode (0 at the first row); rows of an episode are
        contiguous and in time order (``TrajectoryDataset.step``).
    window : int
        Number of rows ``k >= 1`` the encoder reads, the current row included.

    Returns
    -------
    index : ndarray of shape (n_steps, window)
        ``index[i, :lengths[i]]`` are the rows ``i - lengths[i] + 1 .. i`` (oldest first); padded
        slots repeat row ``i`` and must be ignored.
    lengths : ndarray of shape (n_steps,)
        Number of valid slots, ``min(step + 1, window)``.
    """
    if window < 1:
        raise InvalidParameterError(f"window must be >= 1, got {window}.")
    step = np.asarray(step, dtype=np.int64)
    n = step.shape[0]
    rows = np.arange(n, dtype=np.int64)
    lengths = np.minimum(step + 1, window)
    j = np.arange(window, dtype=np.int64)
    index = (rows - lengths + 1)[:, None] + j[None, :]
    index = np.where(j[None, :] < lengths[:, None], index, rows[:, None])
    return index, lengths


def mlp(in_dim: int, hidden: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``Linear -> activation`` blocks of the given widths (empty ``hidden`` gives the identity)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, int(h)), activation()]
        d = int(h)
    return nn.Sequential(*layers)


class Standardize(nn.Module):
    """Fixed affine standardisation ``(x - mean) / scale``; the statistics are saved buffers.

    Parameters
    ----------
    n_features : int
    """

    mean: Tensor
    scale: Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))

    def set_stats(self, x: NDArray[np.float32]) -> None:
        """Set mean and scale from training features of shape ``(n, n_features)``.

        Constant columns keep scale 1.
        """
        m = np.asarray(x, dtype=np.float64).mean(axis=0)
        s = np.asarray(x, dtype=np.float64).std(axis=0)
        s = np.where(s > 1e-8, s, 1.0)
        self.mean.copy_(torch.as_tensor(m, dtype=torch.float32))
        self.scale.copy_(torch.as_tensor(s, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        """Standardised ``x`` (any leading shape, last axis = features)."""
        return (x - self.mean) / self.scale


class MLPEncoder(nn.Module):
    """Standardise the current row's features, then an MLP.

    Parameters
    ----------
    n_features : int
    hidden : sequence of int
        Widths of the hidden layers; the encoding has ``hidden[-1]`` units.

    Notes
    -----
    ``forward(x)`` takes ``x`` of shape ``(batch, n_features)`` and returns
    ``(batch, out_dim)``.
    """

    window: int = 1

    def __init__(self, n_features: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        if not hidden:
            raise InvalidParameterError("MLPEncoder needs at least one hidden layer.")
        self.norm = Standardize(n_features)
        self.body = mlp(n_features, hidden)
        self.out_dim = int(hidden[-1])

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Encode current features ``(batch, n_features)`` to ``(batch, out_dim)``."""
        out: Tensor = self.body(self.norm(x))
        return out


class HistoryEncoder(nn.Module):
    r"""Bidirectional LSTM over the last ``window`` rows + additive attention pooling.

    The pooled history code is concatenated with the current row's standardised features and
    passed through an MLP:

    .. math::

        o_{1..L} = \mathrm{BiLSTM}(W_{in} x_{t-L+1..t}), \quad
        e_j = v^\top \tanh(W_a o_j + b_a), \quad
        \alpha = \mathrm{softmax}(e_{1..L}), \quad
        z = \mathrm{MLP}([\textstyle\sum_j \alpha_j o_j,\; o_L,\; x_t])

    (Bahdanau et al., 2015, additive attention). Slots beyond ``L`` (padding) are excluded by
    packing and by masking ``e_j = -inf``.

    Parameters
    ----------
    n_features : int
    window : int
        History length ``k`` in rows (weeks), current row included.
    hidden : sequence of int
        Widths of the MLP after pooling; the encoding has ``hidden[-1]`` units.
    lstm_hidden : int
        Hidden units per LSTM direction.
    attention_dim : int
        Width of the additive attention layer.
    """

    def __init__(self, n_features: int, window: int, hidden: Sequence[int] = (256, 256),
                 lstm_hidden: int = 64, attention_dim: int = 64) -> None:
        super().__init__()
        if window < 1:
            raise InvalidParameterError(f"window must be >= 1, got {window}.")
        if not hidden:
            raise InvalidParameterError("HistoryEncoder needs at least one hidden layer.")
        self.window = int(window)
        self.norm = Standardize(n_features)
        self.proj = nn.Linear(n_features, lstm_hidden)
        self.lstm = nn.LSTM(lstm_hidden, lstm_hidden, batch_first=True, bidirectional=True)
        self.att = nn.Linear(2 * lstm_hidden, attention_dim)
        self.att_v = nn.Linear(attention_dim, 1, bias=False)
        self.body = mlp(4 * lstm_hidden + n_features, hidden)
        self.out_dim = int(hidden[-1])

    def attention(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """LSTM outputs, attention weights and pooled code.

        Parameters
        ----------
        x : Tensor of shape (batch, window, n_features)
            Left-aligned windows (padding after the valid rows; its values are ignored).
        lengths : Tensor of shape (batch,)
            Valid rows per window, in ``1..window``.

        Returns
        -------
        outputs : Tensor of shape (batch, window, 2 * lstm_hidden)
            Zero in padded slots.
        weights : Tensor of shape (batch, window)
            Attention weights, exactly zero in padded slots.
        pooled : Tensor of shape (batch, 2 * lstm_hidden)
        """
        k = x.shape[1]
        u = torch.relu(self.proj(self.norm(x)))
        lengths_cpu = lengths.to("cpu", torch.int64)
        full = lengths_cpu == k
        if bool(full.all()):
            out, _ = self.lstm(u)  # no padding anywhere: skip packing
        elif not bool(full.any()):
            out = self._packed(u, lengths_cpu, k)
        else:
            # most windows are full: run those unpacked (half the cost of packing) and pack only
            # the short windows of the first weeks of episodes
            fi = torch.nonzero(full).squeeze(1)
            si = torch.nonzero(~full).squeeze(1)
            out_f, _ = self.lstm(u[fi])
            out_s = self._packed(u[si], lengths_cpu[si], k)
            out = u.new_zeros(u.shape[0], k, out_f.shape[2]).index_copy(0, fi, out_f) \
                .index_copy(0, si, out_s)
        valid = torch.arange(k, device=x.device)[None, :] < lengths[:, None]
        e = self.att_v(torch.tanh(self.att(out))).squeeze(-1)
        e = e.masked_fill(~valid, float("-inf"))
        w = torch.softmax(e, dim=1)
        pooled = torch.bmm(w.unsqueeze(1), out).squeeze(1)
        return out, w, pooled

    def _packed(self, u: Tensor, lengths_cpu: Tensor, k: int) -> Tensor:
        packed = pack_padded_sequence(u, lengths_cpu, batch_first=True, enforce_sorted=False)
        out_p, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=k)
        return out

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Encode windows ``(batch, window, n_features)`` with ``lengths`` to ``(batch, out)``."""
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
        out, _, pooled = self.attention(x, lengths)
        last = (lengths - 1).clamp(min=0)
        b = torch.arange(x.shape[0])
        o_last = out[b, last]
        x_last = self.norm(x[b, last])
        z: Tensor = self.body(torch.cat([pooled, o_last, x_last], dim=1))
        return z


class CategoricalEmbedding(nn.Module):
    r"""One learned embedding table (:class:`torch.nn.Embedding`) per categorical state column.

    Codes index each column's vocabulary with **0 reserved for "unknown"** (a level not seen in
    training) and ``1..n_j`` for the training levels. The unknown vector is not a free parameter
    (no training row would ever update it): it is the training-frequency-weighted mean of the
    column's level vectors, :math:`e_{unk} = \sum_k f_k e_k`, so an unseen level is read as an
    average member of the column.

    A column flagged in ``onehot`` gets a fixed identity table instead (its block is the one-hot
    vector of the level, ``d_j = n_j``, nothing learned; unknown = the frequencies ``f``, which
    the network's standardisation maps to zero): for a handful of levels a one-hot block is
    full-rank and learns faster than a narrower embedding, at the same negligible memory.

    Parameters
    ----------
    cardinalities : sequence of int
        Training levels ``n_j`` per column (the unknown index comes on top).
    dims : sequence of int
        Embedding width per column (see :func:`embedding_size`); ``n_j`` for one-hot columns.
    onehot : sequence of bool, optional
        Columns with a fixed one-hot block (default: none).

    Notes
    -----
    ``forward(codes)`` takes integer codes of shape ``(..., n_columns)`` and returns
    ``(..., sum(dims))``. Memory is ``sum_j n_j d_j`` parameters, independent of the number of
    rows; the inputs hold one integer per column instead of ``n_j`` one-hot columns.
    """

    def __init__(self, cardinalities: Sequence[int], dims: Sequence[int],
                 onehot: Sequence[bool] | None = None) -> None:
        super().__init__()
        if len(cardinalities) != len(dims):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="dims", owner="CategoricalEmbedding",
                expected=f"one width per column ({len(cardinalities)})", got=list(dims)))
        self.onehot = tuple(bool(o) for o in (onehot or [False] * len(dims)))
        if len(self.onehot) != len(dims) or any(
                o and int(d) != int(n) for o, n, d in zip(self.onehot, cardinalities, dims,
                                                            strict=True)):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="onehot", owner="CategoricalEmbedding",
                expected="one flag per column, a one-hot column's width equal to its number of "
                         "levels", got=list(self.onehot)))
        self.tables = nn.ModuleList(nn.Embedding(int(n), int(d)) for n, d, o in zip(
            cardinalities, dims, self.onehot, strict=True) if not o)
        for j, (n, o) in enumerate(zip(cardinalities, self.onehot, strict=True)):
            self.register_buffer(f"freq{j}", torch.full((int(n),), 1.0 / int(n)))
            if o:
                self.register_buffer(f"eye{j}", torch.eye(int(n)), persistent=False)
        self.dims = tuple(int(d) for d in dims)
        self.out_dim = int(sum(self.dims))

    def frequencies(self, j: int) -> Tensor:
        """Training frequency of each level of column ``j``, shape ``(n_j,)``."""
        out: Tensor = getattr(self, f"freq{j}")
        return out

    def level_vectors(self, j: int) -> Tensor:
        """Vectors of the training levels of column ``j``, shape ``(n_j, d_j)``."""
        if self.onehot[j]:
            eye: Tensor = getattr(self, f"eye{j}")
            return eye
        table = self.tables[sum(1 for o in self.onehot[:j] if not o)]
        assert isinstance(table, nn.Embedding)
        return table.weight

    def set_frequencies(self, codes: NDArray[np.int64],
                        episodes: NDArray[np.int64] | None = None) -> None:
        """Set the level frequencies (weights of the unknown vector) from training codes.

        Parameters
        ----------
        codes : ndarray of shape (n_rows, n_columns)
            Vocabulary codes (0 = unknown, ignored).
        episodes : ndarray of shape (n_rows,), optional
            Episode of each row. Given, levels of fewer than ``MIN_CELL`` (11) episodes share
            a pooled frequency (:func:`equicare.privacy.pooled_level_shares`), so the saved
            frequencies reveal no small level's row count; the learners pass it.
        """
        from equicare.privacy import pooled_level_shares

        c = np.asarray(codes, dtype=np.int64)
        for j in range(len(self.dims)):
            n = self.frequencies(j).shape[0]
            if episodes is not None:
                f = pooled_level_shares(c[:, j] - 1, episodes, n)
            else:
                counts = np.bincount(c[:, j], minlength=n + 1)[1:n + 1].astype(np.float64)
                f = counts / counts.sum() if counts.sum() > 0 else np.full(n, 1.0 / n)
            self.frequencies(j).copy_(torch.as_tensor(f, dtype=torch.float32))

    def forward(self, codes: Tensor) -> Tensor:
        """Concatenated embeddings of integer codes ``(..., n_columns)`` -> ``(..., out_dim)``."""
        out = []
        for j in range(len(self.dims)):
            w = self.level_vectors(j)
            weight = torch.cat([(self.frequencies(j) @ w)[None, :], w], dim=0)
            out.append(nn.functional.embedding(codes[..., j], weight))
        return torch.cat(out, dim=-1)
