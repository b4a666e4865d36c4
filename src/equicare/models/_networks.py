"""Encoder + head networks, described by a JSON-serialisable :class:`NetworkSpec`.

A saved model folder stores the spec in ``config.json`` and the weights in safetensors; loading
rebuilds the network from the spec (no code is executed, nothing is unpickled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from equicare.exceptions import InvalidParameterError
from equicare.models._encoders import (
    CategoricalEmbedding,
    HistoryEncoder,
    MLPEncoder,
    Standardize,
    embedding_size,
)
from equicare.models._heads import (
    FactoredCategoricalHead,
    FactoredQHead,
    JointCategoricalHead,
    JointQHead,
    ValueHead,
)
from equicare.utils import PARAM_MESSAGE, check_param

__all__ = ["NetworkSpec", "Network", "build_network", "seeded"]

EncoderKind = Literal["mlp", "lstm"]
HeadKind = Literal["joint", "factored", "autoregressive", "joint_q", "factored_q", "value"]
_HEADS = ("joint", "factored", "autoregressive", "joint_q", "factored_q", "value")


@dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """Architecture of one network (everything needed to rebuild it before loading weights).

    Parameters
    ----------
    n_features : int
        Input features per row.
    sizes : tuple of int
        Levels per action component (manifest order).
    support : tuple of int
        Flat action indices the head scores (increasing).
    encoder : {"mlp", "lstm"}
    head : {"joint", "factored", "autoregressive", "joint_q", "factored_q", "value"}
    hidden : tuple of int
        Hidden widths of the encoder MLP.
    window : int
        History rows read by the ``"lstm"`` encoder (1 for ``"mlp"``).
    lstm_hidden, attention_dim, ar_hidden : int
        Widths of the LSTM (per direction), the attention layer and the autoregressive
        conditionals.
    history_actions : bool
        The inputs of the ``"lstm"`` encoder also hold the previous row's action (one-hot per
        component) and reward (``n_features`` then counts them).
    categorical_levels : tuple of tuple of str
        Vocabulary of each categorical state column (its training levels, as strings). With
        columns here the first ``len(categorical_levels)`` input columns are integer codes
        (0 = unknown level, ``k + 1`` = level ``k``) that go through learned embeddings
        (:class:`~equicare.models.CategoricalEmbedding`) instead of one-hot inputs;
        ``n_features`` counts one column per categorical state.
    embedding_dims : tuple of int
        Embedding width of each categorical column (default from
        :func:`~equicare.models.embedding_size`; the number of levels for one-hot columns).
    categorical_onehot : tuple of bool
        Columns read through a fixed one-hot block instead of a learned embedding (default:
        none; see :class:`~equicare.models.CategoricalEmbedding`).
    """

    n_features: int
    sizes: tuple[int, ...]
    support: tuple[int, ...]
    encoder: EncoderKind = "mlp"
    head: HeadKind = "joint"
    hidden: tuple[int, ...] = (256, 256)
    window: int = 1
    lstm_hidden: int = 64
    attention_dim: int = 64
    ar_hidden: int = 64
    history_actions: bool = False
    categorical_levels: tuple[tuple[str, ...], ...] = ()
    embedding_dims: tuple[int, ...] = ()
    categorical_onehot: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        owner = "NetworkSpec"
        levels = tuple(tuple(str(lv) for lv in col) for col in self.categorical_levels)
        object.__setattr__(self, "categorical_levels", levels)
        onehot = tuple(bool(o) for o in self.categorical_onehot) or (False,) * len(levels)
        object.__setattr__(self, "categorical_onehot", onehot)
        if len(onehot) != len(levels):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="categorical_onehot", owner=owner,
                expected=f"one flag per categorical column ({len(levels)})", got=onehot))
        if not self.embedding_dims and levels:
            object.__setattr__(self, "embedding_dims", tuple(
                len(col) if o else embedding_size(len(col))
                for col, o in zip(levels, onehot, strict=True)))
        if any(o and int(d) != len(col) for col, o, d in zip(
                levels, onehot, self.embedding_dims, strict=False)):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="embedding_dims", owner=owner,
                expected="the number of levels for a one-hot column", got=self.embedding_dims))
        if len(self.embedding_dims) != len(levels) or any(not col for col in levels) or any(
                int(d) < 1 for d in self.embedding_dims):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="embedding_dims", owner=owner,
                expected=f"one positive width per non-empty categorical column ({len(levels)})",
                got=self.embedding_dims))
        if levels and self.n_features < len(levels):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="n_features", owner=owner,
                expected=f"at least the {len(levels)} categorical code columns",
                got=self.n_features))
        check_param(self.encoder, "encoder", owner, choices=("mlp", "lstm"))
        check_param(self.head, "head", owner, choices=_HEADS)
        check_param(self.n_features, "n_features", owner, kind=int, low=1,
                    expected="an int >= 1")
        check_param(self.window, "window", owner, kind=int, low=1, expected="an int >= 1")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise InvalidParameterError(
                f"The 'hidden' parameter of {owner} must be a non-empty tuple of "
                             f"positive ints. Got {self.hidden!r} instead.")
        if self.encoder == "mlp" and self.window != 1:
            raise InvalidParameterError(
                f"The 'window' parameter of {owner} must be 1 for the mlp encoder. "
                             f"Got {self.window!r} instead.")
        n_actions = int(np.prod(self.sizes))
        s = np.asarray(self.support, dtype=np.int64)
        if s.size == 0 or (np.diff(s) <= 0).any() or s[0] < 0 or s[-1] >= n_actions:
            raise InvalidParameterError(
                f"The 'support' parameter of {owner} must be increasing flat "
                             f"indices in [0, {n_actions}). Got {len(self.support)} entries.")

    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        return int(np.prod(self.sizes))

    @property
    def n_categorical(self) -> int:
        """Leading input columns that hold categorical codes."""
        return len(self.categorical_levels)

    @property
    def encoder_inputs(self) -> int:
        """Width of the encoder's input: embeddings plus the other input columns."""
        return int(self.n_features - self.n_categorical + sum(self.embedding_dims))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (tuples as lists)."""
        d = asdict(self)
        d["categorical_levels"] = [list(col) for col in self.categorical_levels]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NetworkSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidParameterError(
                f"Unknown NetworkSpec keys {unknown}; known: {sorted(known)}.")
        special = ("categorical_levels", "categorical_onehot")
        kw: dict[str, Any] = {k: tuple(int(x) for x in v) if isinstance(v, list) else v
                              for k, v in d.items() if k not in special}
        kw["categorical_levels"] = tuple(tuple(str(x) for x in col)
                                         for col in d.get("categorical_levels", ()))
        kw["categorical_onehot"] = tuple(bool(x) for x in d.get("categorical_onehot", ()))
        return cls(**kw)


class Network(nn.Module):
    """An encoder followed by a head.

    ``forward(x, lengths)`` takes ``x`` of shape ``(batch, n_features)`` for the MLP encoder or
    ``(batch, window, n_features)`` (left-aligned windows) with ``lengths`` of shape ``(batch,)``
    for the LSTM encoder, and returns head outputs of shape ``(batch, K)`` (``(batch, 1)`` for a
    value head).
    """

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed: CategoricalEmbedding | None = None
        if spec.categorical_levels:
            self.embed = CategoricalEmbedding([len(c) for c in spec.categorical_levels],
                                              spec.embedding_dims, spec.categorical_onehot)
        n_in = spec.encoder_inputs
        self.encoder: MLPEncoder | HistoryEncoder
        if spec.encoder == "mlp":
            self.encoder = MLPEncoder(n_in, spec.hidden)
        else:
            self.encoder = HistoryEncoder(n_in, spec.window, spec.hidden,
                                          spec.lstm_hidden, spec.attention_dim)
        d = self.encoder.out_dim
        self.head: nn.Module
        if spec.head == "joint":
            self.head = JointCategoricalHead(d, spec.n_actions, spec.support)
        elif spec.head in ("factored", "autoregressive"):
            self.head = FactoredCategoricalHead(d, spec.sizes, spec.support,
                                                autoregressive=spec.head == "autoregressive",
                                                ar_hidden=spec.ar_hidden)
        elif spec.head == "joint_q":
            self.head = JointQHead(d, spec.n_actions, spec.support)
        elif spec.head == "factored_q":
            self.head = FactoredQHead(d, spec.sizes, spec.support)
        else:
            self.head = ValueHead(d)

    @property
    def window(self) -> int:
        """History rows the encoder reads."""
        return self.spec.window

    def embed_inputs(self, x: Tensor) -> Tensor:
        """Replace the leading categorical code columns by their embeddings.

        ``(..., n_features)`` -> ``(..., encoder_inputs)``; the identity without categorical
        columns.
        """
        if self.embed is None:
            return x
        k = self.spec.n_categorical
        return torch.cat([self.embed(x[..., :k].long()), x[..., k:]], dim=-1)

    def set_input_stats(self, x: np.ndarray[Any, Any], episodes: np.ndarray[Any, Any] | None = None,
                        onehot_blocks: Sequence[tuple[int, int]] = ()) -> None:
        """Fit the input standardisation (and level frequencies) on training inputs.

        Parameters
        ----------
        x : ndarray of shape (n_rows, n_features)
            Training inputs (categorical codes first). Learned embedding blocks are left
            unscaled (mean 0, scale 1: they are learned at the scale the encoder needs); a
            one-hot block gets the statistics of its one-hot columns (mean ``f``, scale
            ``sqrt(f (1 - f))`` for level frequencies ``f``), as one-hot inputs always had.
        episodes : ndarray of shape (n_rows,), optional
            Episode of each row. Given, every level frequency the network keeps (embedding
            frequencies, and the means and scales of one-hot columns: the embedded one-hot
            blocks and the ``onehot_blocks`` of ``x``) pools the levels of fewer than
            ``MIN_CELL`` (11) episodes (:func:`equicare.privacy.pooled_level_shares`), so a
            model folder reveals no small level's row count.
        onehot_blocks : sequence of (start, stop)
            Column ranges of ``x`` (after any categorical codes) holding one one-hot
            attribute each (one-hot categorical states, a critic's group columns).
        """
        from equicare.privacy import pooled_level_shares

        x = np.asarray(x)
        k = 0 if self.embed is None else self.spec.n_categorical
        if self.embed is None:
            self.encoder.norm.set_stats(x)
        else:
            self.embed.set_frequencies(x[:, :k].astype(np.int64), episodes)
            rest = Standardize(self.spec.n_features - k)
            rest.set_stats(x[:, k:])
            means, scales = [], []
            for j, d in enumerate(self.embed.dims):
                if self.embed.onehot[j]:
                    f = self.embed.frequencies(j)
                    sd = torch.sqrt(f * (1.0 - f))
                    means.append(f)
                    scales.append(torch.where(sd > 1e-8, sd, torch.ones_like(sd)))
                else:
                    means.append(torch.zeros(d))
                    scales.append(torch.ones(d))
            with torch.no_grad():
                self.encoder.norm.mean.copy_(torch.cat([*means, rest.mean]))
                self.encoder.norm.scale.copy_(torch.cat([*scales, rest.scale]))
        if episodes is None:
            return
        shift = 0 if self.embed is None else self.embed.out_dim - k
        for start, stop in onehot_blocks:
            block = x[:, start:stop]
            code = np.where(block.sum(axis=1) == 1, block.argmax(axis=1), -1)
            share = pooled_level_shares(code, episodes, stop - start)
            spread = np.sqrt(share * (1.0 - share))
            with torch.no_grad():
                self.encoder.norm.mean[start + shift:stop + shift] = torch.as_tensor(
                    share, dtype=torch.float32)
                self.encoder.norm.scale[start + shift:stop + shift] = torch.as_tensor(
                    np.where(spread > 1e-8, spread, 1.0), dtype=torch.float32)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Head outputs for encoded inputs (see class docstring for shapes)."""
        out: Tensor = self.head(self.encoder(self.embed_inputs(x), lengths))
        return out


def seeded(seed: int, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with torch's global generator seeded, restoring its state afterwards.

    Network construction draws initial weights from torch's global generator; forking it keeps
    results reproducible without seeding anything the caller owns.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return fn(*args, **kwargs)


def build_network(spec: NetworkSpec | Mapping[str, Any], seed: int | None = None) -> Network:
    """Build a :class:`Network` from a spec (seeded initial weights when ``seed`` is given)."""
    s = spec if isinstance(spec, NetworkSpec) else NetworkSpec.from_dict(spec)
    if seed is None:
        return Network(s)
    net: Network = seeded(seed, Network, s)
    return net


