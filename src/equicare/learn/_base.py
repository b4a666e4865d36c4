"""Shared base of the offline learners: config, training loop, validation, checkpoints, save/load.

A learner subclass defines its networks (:meth:`OfflineLearner._networks`), one gradient step
(:meth:`OfflineLearner._update`), its validation loss and how its policy reads the policy network
(logits or Q-values). Everything else - splitting, mini-batches, fairness terms, progress,
early stopping, checkpoints, model folders - is written once, here.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from abc import ABCMeta, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.base import BaseEstimator
from torch import Tensor

from equicare.exceptions import DataValidationError, InvalidParameterError, PolicyError
from equicare.learn._data import EpochSampler, TrainData, group_codes, support_of
from equicare.learn._fairness import (
    GroupDRO,
    episode_values,
    group_value_signal,
    parity_penalty,
)
from equicare.learn._params import ConfigParams
from equicare.models._encoders import embedding_size
from equicare.models._inputs import batched_forward, categorical_vocabulary, input_names
from equicare.models._networks import Network, NetworkSpec
from equicare.policy._learned import (
    LearnedPolicy,
    manifest_fingerprint,
    read_model_folder,
    state_with_prefix,
    write_model_folder,
)
from equicare.utils import (
    PARAM_MESSAGE,
    atomic_write,
    atomic_write_text,
    check_dataset,
    check_is_fitted,
    check_param,
    config_from_dict,
    config_to_dict,
)

__all__ = ["LearnerConfig", "OfflineLearner"]

#: algo name -> learner class (filled by the subclasses at import)

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
#: steps between refreshes of the group-robust value signal (a pass over the initial states)
GROUP_SIGNAL_EVERY = 50
#: Rows (about; whole episodes) the group-robust value signal reads.
GROUP_SIGNAL_ROWS = 50_000
GROUP_SIGNAL_CORRECTED: int | None = 1


@dataclass(frozen=True, kw_only=True)
class LearnerConfig:
    """Settings shared by every offline learner.

    Parameters
    ----------
    encoder : {"mlp", "lstm"}
        State encoder: an MLP over the current row, or the history encoder (bidirectional LSTM
        over the last ``window`` rows + attention pooling).
    window : int
        Rows (weeks) of history read by the ``"lstm"`` encoder, current row included (>= 1).
    hidden : tuple of int
        Hidden widths of the encoder MLP (d3rlpy's default is ``(256, 256)``).
    lstm_hidden : int
        LSTM units per direction.
    history_actions : bool
        Give the ``"lstm"`` encoder the previous row's action (one-hot per component) and reward
        in each window slot, so that it can learn from the recent sequence of contacts.
    support : {"observed", "all"}
        Actions the policy may choose: combinations logged at least ``min_support_count`` times
        (unobserved ones get probability 0), or every flat action.
    min_support_count : int
    batch_size : int
    n_steps : int
        Gradient steps.
    learning_rate : float
    weight_decay : float
    valid_fraction : float
        Share of episodes held out for validation when ``fit`` gets no ``valid`` dataset (0: no
        validation).
    eval_every : int
        Steps between validation evaluations (and progress updates of the metrics).
    early_stopping : {None, "loss", "dr"}
        Keep the weights with the best validation loss (lowest) or the best doubly robust value
        of the policy on the validation episodes (highest, through :mod:`equicare.ope`); stop
        after ``patience`` evaluations without improvement.
    patience : int
    group_attr : str or None
        Group attribute of the fairness terms (default: the dataset's first).
    fair_action : str or None
        Action set of the demographic-parity penalty, as manifest levels
        (``"modality=home_visit"``, ``"urgency=urgent|semi_urgent"``).
    fair_lambda : float
        Weight ``lambda >= 0`` of the parity penalty.
    group_robust : float
        Weight ``lambda`` in [0, 1] of the group-DRO objective (0: plain objective).
    group_robust_step : float
        Exponentiated-gradient step size of the group weights.
    group_robust_signal : {"auto", "value", "loss"}
        What makes a group worse off: the lowest estimated value of the current policy on the
        initial states of the group's episodes (``"value"``, refreshed every
        ``GROUP_SIGNAL_EVERY`` steps), or the highest loss (``"loss"``, classic group DRO;
        always used by BC, which has no value estimate). ``"auto"``
        uses the value only when the critic reads the group (AWR with ``critic_groups=True``):
        a group-blind critic's value differs between groups only through their states, which
        can point at the wrong group (on the tabular test MDP it up-weights the better-off
        group), while the loss of the group whose outcomes the pooled model fits worst does not.
    checkpoint_every : int
        Steps between checkpoints when ``fit`` gets a ``checkpoint_dir`` (0: only at the end).
    categorical_encoding : {"auto", "embedding", "onehot"}
        How categorical state columns enter the networks. ``"embedding"``: as integer codes (one
        input column per categorical state) through a learned embedding per column
        (:class:`torch.nn.Embedding`, width from the column's cardinality, see
        :func:`~equicare.models.embedding_size`); levels unseen in training map to a reserved
        "unknown" code. ``"auto"`` (default): the same code inputs, but columns with at most
        ``onehot_max_levels`` levels get a fixed one-hot block instead of a learned embedding
        (full rank and faster to learn for a handful of levels, as CatBoost's
        ``one_hot_max_size``). ``"onehot"``: the old one-hot input columns (input width = the
        number of levels; the dataset must have the training levels).
    max_embedding_dim : int
        Cap of the embedding widths (>= 1).
    onehot_max_levels : int
        With ``"auto"``: the largest number of levels a column may have to get a one-hot block
        (>= 0; 0 embeds every column).
    seed : int
        Seeds weights, the validation split and the mini-batch order.
    """

    encoder: Literal["mlp", "lstm"] = "mlp"
    window: int = 4
    hidden: tuple[int, ...] = (256, 256)
    lstm_hidden: int = 64
    history_actions: bool = True
    support: Literal["observed", "all"] = "observed"
    min_support_count: int = 1
    batch_size: int = 256
    n_steps: int = 5000
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    valid_fraction: float = 0.1
    eval_every: int = 500
    early_stopping: Literal["loss", "dr"] | None = None
    patience: int = 5
    group_attr: str | None = None
    fair_action: str | None = None
    fair_lambda: float = 0.0
    group_robust: float = 0.0
    group_robust_step: float = 0.05
    group_robust_signal: Literal["auto", "value", "loss"] = "auto"
    checkpoint_every: int = 0
    categorical_encoding: Literal["auto", "embedding", "onehot"] = "auto"
    max_embedding_dim: int = 50
    onehot_max_levels: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        o = type(self).__name__
        check_param(self.encoder, "encoder", o, choices=("mlp", "lstm"))
        check_param(self.window, "window", o, kind=int, low=1, expected="an int >= 1")
        if isinstance(self.hidden, list):
            object.__setattr__(self, "hidden", tuple(self.hidden))
        if (not isinstance(self.hidden, tuple) or not self.hidden
                or any(not isinstance(h, int) or isinstance(h, bool) or h < 1
                       for h in self.hidden)):
            raise InvalidParameterError(
                PARAM_MESSAGE.format(name="hidden", owner=o, got=self.hidden,
                                                  expected="a non-empty tuple of positive ints"))
        check_param(self.lstm_hidden, "lstm_hidden", o, kind=int, low=1, expected="an int >= 1")
        check_param(self.history_actions, "history_actions", o, kind=bool)
        check_param(self.support, "support", o, choices=("observed", "all"))
        check_param(self.min_support_count, "min_support_count", o, kind=int, low=1,
                    expected="an int >= 1")
        check_param(self.batch_size, "batch_size", o, kind=int, low=1, expected="an int >= 1")
        check_param(self.n_steps, "n_steps", o, kind=int, low=1, expected="an int >= 1")
        check_param(self.learning_rate, "learning_rate", o, kind=(int, float), low=0,
                    low_inclusive=False)
        check_param(self.weight_decay, "weight_decay", o, kind=(int, float), low=0)
        check_param(self.valid_fraction, "valid_fraction", o, kind=(int, float), low=0, high=1,
                    high_inclusive=False)
        check_param(self.eval_every, "eval_every", o, kind=int, low=1, expected="an int >= 1")
        check_param(self.early_stopping, "early_stopping", o, choices=(None, "loss", "dr"))
        check_param(self.patience, "patience", o, kind=int, low=1, expected="an int >= 1")
        check_param(self.group_attr, "group_attr", o, kind=str, allow_none=True)
        check_param(self.fair_action, "fair_action", o, kind=str, allow_none=True)
        if self.fair_action is not None and "=" not in self.fair_action:
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="fair_action", owner=o, got=self.fair_action,
                expected="an action set 'component=level' such as 'modality=home_visit'"))
        check_param(self.fair_lambda, "fair_lambda", o, kind=(int, float), low=0,
                    expected="a number >= 0")
        if self.fair_lambda > 0 and self.fair_action is None:
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="fair_action", owner=o, got=None,
                expected="an action set such as 'modality=home_visit' when fair_lambda > 0"))
        check_param(self.group_robust, "group_robust", o, kind=(int, float), low=0, high=1)
        check_param(self.group_robust_step, "group_robust_step", o, kind=(int, float), low=0,
                    low_inclusive=False)
        check_param(self.group_robust_signal, "group_robust_signal", o,
                    choices=("auto", "value", "loss"))
        check_param(self.checkpoint_every, "checkpoint_every", o, kind=int, low=0,
                    expected="an int >= 0")
        check_param(self.categorical_encoding, "categorical_encoding", o,
                    choices=("auto", "embedding", "onehot"))
        check_param(self.max_embedding_dim, "max_embedding_dim", o, kind=int, low=1,
                    expected="an int >= 1")
        check_param(self.onehot_max_levels, "onehot_max_levels", o, kind=int, low=0,
                    expected="an int >= 0")
        check_param(self.seed, "seed", o, kind=int, low=0, expected="an int >= 0")
        if self.early_stopping is not None and self.valid_fraction == 0:
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="valid_fraction", owner=o, got=self.valid_fraction,
                expected="a number in (0, 1) when early_stopping is set"))

    @property
    def input_window(self) -> int:
        """Rows of history per model input (``window`` for the LSTM encoder, else 1)."""
        return self.window if self.encoder == "lstm" else 1

    @property
    def input_actions(self) -> bool:
        """Whether model inputs carry the previous row's action and reward."""
        return self.history_actions and self.input_window > 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (tuples as lists)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LearnerConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidParameterError(
                f"Unknown {cls.__name__} keys {unknown}; known: {sorted(known)}.")
        return config_from_dict(cls, dict(d))


class OfflineLearner(ConfigParams, BaseEstimator, metaclass=ABCMeta):  # type: ignore[misc]
    """Base of :class:`BC`, :class:`AWR` and :class:`CQL` (see each for the algorithm).

    Parameters
    ----------
    config : LearnerConfig subclass, optional
        Settings; default: the learner's default config.
    **overrides
        Config fields to change (``BC(n_steps=2000)``).

    Attributes
    ----------
    policy_ : LearnedPolicy
        The fitted policy (``action_probs``, ``predict``).
    support_ : ndarray of shape (K,)
        Flat actions the policy may choose.
    history_ : list of dict
        One entry per validation evaluation (step, train and validation metrics).
    best_step_ : int
        Step whose weights were kept.
    group_levels_ : ndarray of shape (n_groups,)
        Labels of the fairness / group-robust group attribute.
    """

    algo: ClassVar[str] = ""
    config_class: ClassVar[type[LearnerConfig]] = LearnerConfig
    policy_output: ClassVar[Literal["logits", "q"]] = "logits"
    #: group-robust value signal ``S_g`` (see :func:`~equicare.learn._fairness.group_value_signal`)
    _group_signal: Tensor | None = None
    #: networks that read the critic inputs (see :meth:`_critic_groups`)
    critic_nets: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: LearnerConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = self.config_class(**overrides)
        else:
            if not isinstance(config, self.config_class):
                raise InvalidParameterError(PARAM_MESSAGE.format(
                    name="config", owner=type(self).__name__, got=config,
                    expected=f"a {self.config_class.__name__}"))
            if overrides:
                config = replace(config, **overrides)
        self.config = config

    # ================================================================== subclass hooks
    @abstractmethod
    def _networks(self, base: dict[str, Any], critic_base: dict[str, Any]
                  ) -> dict[str, Network]:
        """Networks of the learner, ``{"policy": ..., ...}``.

        ``base`` holds the spec fields shared by every network, ``critic_base`` the same for
        the networks in :attr:`critic_nets` (their input may also hold the group one-hot).
        """
        ...

    def _check_train_data(self, data: TrainData) -> None:
        """Warn about training data the learner's settings do not suit (default: nothing)."""

    def _critic_groups(self) -> bool:
        """Whether the critics see the group attribute (training only; the policy never does)."""
        return False

    def _trainable(self) -> dict[str, list[str]]:
        """Optimiser name -> networks it updates (default: one optimiser per non-target net)."""
        return {k: [k] for k in self.nets_ if not k.endswith("target")}

    @abstractmethod
    def _update(self, data: TrainData, rows: Tensor, step: int) -> dict[str, Tensor]:
        """One gradient step on the mini-batch ``rows``; returns detached losses."""
        ...

    @abstractmethod
    def _valid_loss(self, data: TrainData) -> float:
        """Mean validation loss (lower is better)."""
        ...

    def _policy_mode(self) -> tuple[Literal["softmax", "greedy"], float]:
        """Mode and temperature of the policy read from the policy network."""
        return "softmax", 1.0

    # ================================================================== shared pieces
    def _policy_objective(self, per_row: Tensor, log_pi: Tensor, group: Tensor) -> Tensor:
        """Learner loss + fairness terms.

        Parameters
        ----------
        per_row : Tensor of shape (batch,)
            The learner's loss at each row.
        log_pi : Tensor of shape (batch, K)
            Log-probabilities of the support actions under the current policy.
        group : Tensor of shape (batch,)

        Notes
        -----
        With a value-driven group-robust objective (:meth:`_uses_value_signal`) the group
        weights follow the groups' estimated policy values on their initial states, refreshed
        every ``GROUP_SIGNAL_EVERY`` steps; otherwise the groups' losses in the batch.
        """
        cfg = self.config
        group_signal = self._group_signal if self._uses_value_signal() else None
        loss = self._dro.objective(per_row, group, float(cfg.group_robust),
                                   group_signal=group_signal)
        if cfg.fair_lambda > 0:
            p_set = torch.exp(log_pi[:, self._fair_pos]).sum(dim=1)
            loss = loss + cfg.fair_lambda * parity_penalty(p_set, group, self._n_groups)
        return loss

    def _uses_value_signal(self) -> bool:
        """The group-robust weights follow estimated group values (not the losses)."""
        cfg = self.config
        if cfg.group_robust <= 0:
            return False
        return cfg.group_robust_signal == "value" or (cfg.group_robust_signal == "auto"
                                                      and self._critic_groups())

    def _value_parts(self, data: TrainData, rows: Tensor
                     ) -> tuple[Tensor, Tensor | None] | None:
        """Critic's ``V^pi(s)`` and ``Q(s, a_logged)`` at ``rows`` (see ``episode_values``).

        None for learners without a value estimate (BC): their group weights follow the losses.
        ``Q`` is None for a state-value critic of the behaviour policy.
        """
        return None

    def _signal_layout(self, data: TrainData) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Rows of the episodes the value signal reads, with their episode, step and last flag.

        Every episode up to ``GROUP_SIGNAL_ROWS`` rows, else a seeded random subset of whole
        episodes of about that many rows (cached per ``data``).
        """
        cached = getattr(self, "_signal_cache", None)
        if cached is not None and cached[0] is data:
            return cached[1]  # type: ignore[no-any-return]
        n = int(data.reward.shape[0])
        starts = data.initial.numpy()
        ends = np.r_[starts[1:], n]
        lengths = ends - starts
        eps = np.arange(starts.size)
        if n > GROUP_SIGNAL_ROWS:
            order = np.random.default_rng(self.config.seed).permutation(starts.size)
            keep = int(np.searchsorted(np.cumsum(lengths[order]), GROUP_SIGNAL_ROWS)) + 1
            eps = np.sort(order[:keep])
        ep_len = lengths[eps]
        episode = np.repeat(np.arange(eps.size), ep_len)
        offs = np.r_[0, np.cumsum(ep_len)[:-1]]
        step = np.arange(int(ep_len.sum())) - offs[episode]
        rows = starts[eps][episode] + step
        last = step == ep_len[episode] - 1
        layout = (torch.as_tensor(rows), torch.as_tensor(episode), torch.as_tensor(step),
                  torch.as_tensor(last), torch.as_tensor(eps))
        self._signal_cache = (data, layout)
        return layout

    def _refresh_group_signal(self, data: TrainData) -> None:
        """Recompute the groups' value signal from the current networks (None without one)."""
        rows, episode, step, last, eps = self._signal_layout(data)
        with torch.no_grad():
            parts = self._value_parts(data, rows)
        if parts is None:
            self._group_signal = None
            return
        values = episode_values(parts[0], parts[1], data.reward[rows], data.gamma, episode, step,
                                last, data.done[rows] > 0, int(eps.shape[0]),
                                n_corrected=GROUP_SIGNAL_CORRECTED)
        self._group_signal = group_value_signal(values, data.group[data.initial[eps]],
                                                self._n_groups).float()

    def _spec(self, base: dict[str, Any], **kw: Any) -> NetworkSpec:
        return NetworkSpec(**{**base, **kw})

    @staticmethod
    def _hard_update(target: Network, source: Network) -> None:
        with torch.no_grad():
            for pt, ps in zip(target.parameters(), source.parameters(), strict=True):
                pt.copy_(ps)

    def _make_policy(self, source: str = "<learned policy>") -> LearnedPolicy:
        mode, temperature = self._policy_mode()
        return LearnedPolicy(network=self.nets_["policy"], action_space=self.action_space_,
                             feature_names=self.feature_names_, output=self.policy_output,
                             mode=mode, temperature=temperature, source=source)

    # ================================================================== fit
    def _prepare(self, dataset: Any, valid: Any | None) -> tuple[Any, Any | None]:
        cfg = self.config
        name = type(self).__name__
        check_dataset(dataset, f"{name}.fit")
        if dataset.n_steps == 0 or dataset.n_features == 0 and dataset.categorical is None:
            raise DataValidationError(f"{name}.fit: the dataset has no rows or no state features.")
        needs_groups = cfg.fair_lambda > 0 or cfg.group_robust > 0
        attr = cfg.group_attr
        if attr is not None and attr not in dataset.groups:
            raise DataValidationError(f"{name}: unknown group attribute {attr!r}; the dataset has "
                                      f"{list(dataset.groups)}.")
        if attr is None and dataset.groups:
            attr = next(iter(dataset.groups))
        if needs_groups and attr is None:
            raise DataValidationError(f"{name}: fair_lambda / group_robust need a dataset with "
                                      "group attributes (manifest dataset.groups).")
        self.group_attr_ = attr
        self.action_space_ = dataset.action_space
        self._embedded = (cfg.categorical_encoding != "onehot" and dataset.categorical
                          is not None and dataset.categorical.shape[1] > 0)
        self.feature_names_ = input_names(dataset, self._embedded)
        # one-hot categorical input columns (after the numeric states) when not embedded
        self._onehot_start = int(dataset.n_features)
        self._onehot_sizes = (() if self._embedded or dataset.categorical is None else
                              tuple(len(lv) for lv in dataset.categorical_levels))
        self.manifest_fingerprint_ = manifest_fingerprint(getattr(dataset, "manifest", None))
        self.state_names_ = tuple(dataset.state_names)
        self.support_ = support_of(dataset, cfg.support, cfg.min_support_count)
        self.fair_mask_ = (np.zeros(dataset.n_actions, dtype=bool) if cfg.fair_action is None
                           else dataset.action_space.parse_action_set(cfg.fair_action))
        if cfg.fair_lambda > 0 and not self.fair_mask_[self.support_].any():
            raise DataValidationError(f"{name}: the action set {cfg.fair_action!r} contains no "
                                      "action of the policy's support (never logged).")
        if valid is None and cfg.valid_fraction > 0 and cfg.early_stopping == "dr":
            # the validation value is an OPE estimate: 2 or more held-out episodes
            from equicare.data.validate import split_holdout
            from equicare.ope._evaluate import EVALUATE_EPISODES_WHY

            dataset, valid = split_holdout(
                dataset, cfg.valid_fraction, f"{name} with early_stopping='dr'",
                "its validation value", EVALUATE_EPISODES_WHY, random_state=cfg.seed,
                stratify=attr)
        elif valid is None and cfg.valid_fraction > 0 and dataset.n_episodes >= 2:
            strat = attr if attr is not None else None
            dataset, valid = dataset.split(cfg.valid_fraction, random_state=cfg.seed,
                                           stratify=strat)
        if valid is not None:
            if valid.action_space.to_dict() != dataset.action_space.to_dict():
                raise DataValidationError(f"{name}: the validation dataset has another action "
                                          "space than the training dataset.")
        return dataset, valid

    def _build_networks(self, tdata: TrainData, sizes: Sequence[int], window: int,
                        vocab: tuple[tuple[Any, ...], ...] | None) -> None:
        """Networks, input statistics, optimisers and group-DRO state for ``tdata``'s inputs.

        Shared by in-memory :meth:`fit` and streamed training.
        """
        cfg = self.config
        self._fair_pos = torch.as_tensor(np.flatnonzero(self.fair_mask_[self.support_]))
        base: dict[str, Any] = {
            "n_features": int(tdata.inputs.x.shape[1]), "sizes": tuple(sizes),
            "support": tuple(int(a) for a in self.support_), "encoder": cfg.encoder,
            "hidden": tuple(cfg.hidden), "window": window, "lstm_hidden": cfg.lstm_hidden,
            "history_actions": cfg.input_actions}
        if vocab:
            onehot = tuple(cfg.categorical_encoding == "auto" and len(v) <= cfg.onehot_max_levels
                           for v in vocab)
            base["categorical_levels"] = vocab
            base["categorical_onehot"] = onehot
            base["embedding_dims"] = tuple(
                len(v) if o else embedding_size(len(v), cfg.max_embedding_dim)
                for v, o in zip(vocab, onehot, strict=True))
        critic_base = {**base, "n_features": int(tdata.critic_inputs.x.shape[1])}
        self.nets_ = self._networks(base, critic_base)
        x_np, xc_np = tdata.inputs.x.numpy(), tdata.critic_inputs.x.numpy()
        # level frequencies pool the levels of fewer than MIN_CELL episodes (model folders
        # keep no small level's row count): one-hot state blocks, a critic's group block
        n_rows = x_np.shape[0]
        first = tdata.initial.numpy()
        episodes = np.repeat(np.arange(first.size), np.diff(np.append(first, n_rows)))
        blocks, start = [], int(getattr(self, "_onehot_start", 0))
        for size in getattr(self, "_onehot_sizes", ()):
            blocks.append((start, start + int(size)))
            start += int(size)
        n_cg = xc_np.shape[1] - x_np.shape[1]
        end = xc_np.shape[1] - tdata.critic_inputs.n_prev
        critic_blocks = [*blocks, (end - n_cg, end)] if n_cg > 0 else blocks
        for k, net in self.nets_.items():
            critic = k in self.critic_nets
            net.set_input_stats(xc_np if critic else x_np, episodes,
                                critic_blocks if critic else blocks)
        self._optims = {
            k: torch.optim.Adam([p for n in names for p in self.nets_[n].parameters()],
                                lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                foreach=True)
            for k, names in self._trainable().items()}
        self._dro = GroupDRO(self._n_groups, cfg.group_robust_step)
        self._group_signal = None

    def fit(self, dataset: Any, *, valid: Any | None = None, progress: bool = True,
            checkpoint_dir: str | os.PathLike[str] | None = None, resume: bool = False
            ) -> OfflineLearner:
        """Train on a :class:`~equicare.data.TrajectoryDataset`.

        Parameters
        ----------
        dataset : TrajectoryDataset
        valid : TrajectoryDataset, optional
            Validation episodes; default: ``config.valid_fraction`` of ``dataset``'s episodes
            (stratified by the group attribute).
        progress : bool
            Show a Rich progress bar with the loss and validation metrics.
        checkpoint_dir : str or Path, optional
            Folder for checkpoints (every ``config.checkpoint_every`` steps and at the end).
        resume : bool
            Continue from the checkpoint in ``checkpoint_dir`` if there is one; the result is
            identical to an uninterrupted run.

        Returns
        -------
        self
        """
        cfg = self.config
        full = dataset
        train, valid = self._prepare(dataset, valid)
        self._full_dataset = full
        self._valid_dataset = valid
        groups_all = full.group_labels(self.group_attr_) if self.group_attr_ else None
        levels = None if groups_all is None else np.unique(np.asarray(groups_all).astype(str))
        g_train, levels = group_codes(train, self.group_attr_, levels)
        self.group_levels_ = levels
        self._n_groups = int(len(levels))
        window = cfg.input_window
        n_cg = self._n_groups if self._critic_groups() else 0
        # embedding vocabulary: the levels of the training rows (others map to "unknown")
        vocab = categorical_vocabulary(train) if self._embedded else None
        self.categorical_levels_ = vocab
        tdata = TrainData.build(train, window, self.support_, g_train, cfg.input_actions, n_cg,
                                vocab)
        vdata = None
        if valid is not None:
            g_valid, _ = group_codes(valid, self.group_attr_, levels)
            vdata = TrainData.build(valid, window, self.support_, g_valid, cfg.input_actions,
                                    n_cg, vocab)
        if tdata.rows.shape[0] == 0:
            raise DataValidationError(f"{type(self).__name__}: no training row has an action in "
                                      "the support.")
        self._check_train_data(tdata)
        self._build_networks(tdata, train.action_space.sizes, window, vocab)
        sampler = EpochSampler(tdata.rows, cfg.batch_size, np.random.default_rng(cfg.seed))
        self.history_: list[dict[str, Any]] = []
        self.best_step_ = 0
        best_metric = math.inf
        best_state: dict[str, dict[str, Tensor]] | None = None
        bad_evals = 0
        start = 0
        ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
        if ckpt is not None and resume and (ckpt / CHECKPOINT_JSON).is_file():
            start, best_metric, bad_evals, best_state = self._load_checkpoint(ckpt, sampler)
        self.n_steps_done_ = start
        # ---------------------------------------------------------- loop
        from equicare._progress import progress_task

        stop = False
        running: dict[str, float] = {}
        n_running = 0
        t0 = time.perf_counter()
        with progress_task(f"train {self.algo}", cfg.n_steps, enabled=progress,
                           completed=start) as bar:
            for step in range(start, cfg.n_steps):
                rows = sampler.next()
                if self._uses_value_signal() and (step % GROUP_SIGNAL_EVERY == 0
                                                  or self._group_signal is None):
                    self._refresh_group_signal(tdata)
                losses = self._update(tdata, rows, step)
                if (step + 1) % 50 == 0 or step + 1 == cfg.n_steps:
                    for k, v in losses.items():
                        running[k] = running.get(k, 0.0) + float(v)
                    n_running += 1
                    bar.update(completed=step + 1)
                done_steps = step + 1
                if done_steps % cfg.eval_every == 0 or done_steps == cfg.n_steps:
                    entry: dict[str, Any] = {"step": done_steps}
                    entry.update({f"train_{k}": v / max(n_running, 1) for k, v in running.items()})
                    running, n_running = {}, 0
                    metric = None
                    if vdata is not None:
                        entry["valid_loss"] = self._valid_loss(vdata)
                        metric = entry["valid_loss"]
                        if cfg.early_stopping == "dr":
                            entry["valid_dr"] = self._valid_dr(valid)
                            metric = -entry["valid_dr"]
                    entry["seconds"] = time.perf_counter() - t0
                    self.history_.append(entry)
                    info = " ".join(f"{k}={v:.4g}" for k, v in entry.items()
                                    if k not in ("step", "seconds"))
                    bar.update(completed=done_steps, info=info)
                    if cfg.early_stopping is not None and metric is not None:
                        if metric < best_metric - 1e-12:
                            best_metric, bad_evals = metric, 0
                            best_state = self._snapshot()
                            self.best_step_ = done_steps
                        else:
                            bad_evals += 1
                            stop = bad_evals >= cfg.patience
                self.n_steps_done_ = done_steps
                every = cfg.checkpoint_every
                if ckpt is not None and every and done_steps % every == 0:
                    self._save_checkpoint(ckpt, sampler, best_metric, bad_evals, best_state)
                if stop:
                    break
        if cfg.early_stopping is None or best_state is None:
            self.best_step_ = self.n_steps_done_
        if ckpt is not None:
            self._save_checkpoint(ckpt, sampler, best_metric, bad_evals, best_state)
        if cfg.early_stopping is not None and best_state is not None:
            self._restore(best_state)
        for net in self.nets_.values():
            net.eval()
        self.policy_ = self._make_policy()
        self.group_weights_ = self._dro.q.numpy().copy()
        return self

    # ================================================================== validation DR
    def _valid_dr(self, valid: Any) -> float:
        """Doubly robust value of the current policy on the validation episodes."""
        try:
            from equicare import ope
        except ImportError as exc:  # pragma: no cover - the OPE layer ships with equicare
            raise RuntimeError("early_stopping='dr' needs equicare.ope.") from exc
        evaluate = getattr(ope, "evaluate", None)
        if evaluate is None:
            raise RuntimeError("early_stopping='dr' needs equicare.ope.evaluate, which is not "
                               "available in this installation; use early_stopping='loss'.")
        import warnings

        from equicare.exceptions import DataWarning, SupportWarning

        policy = self._make_policy()
        with warnings.catch_warnings():
            # support diagnostics and out-of-range estimates belong to the final evaluation, not
            # to every validation step
            warnings.simplefilter("ignore", SupportWarning)
            warnings.simplefilter("ignore", DataWarning)
            res = evaluate(valid, policy, estimators=("dr",), bootstrap=0, groups=(),
                           random_state=self.config.seed)
        return float(res.estimates["dr"].value)

    # ================================================================== snapshots / checkpoints
    def _snapshot(self) -> dict[str, dict[str, Tensor]]:
        return {k: {n: t.detach().clone() for n, t in net.state_dict().items()}
                for k, net in self.nets_.items()}

    def _restore(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        for k, net in self.nets_.items():
            net.load_state_dict(dict(state[k]))

    def _save_checkpoint(self, folder: Path, sampler: EpochSampler, best_metric: float,
                         bad_evals: int, best_state: Mapping[str, Mapping[str, Tensor]] | None
                         ) -> None:
        from safetensors.torch import save as st_save

        tensors: dict[str, Tensor] = {}
        for k, net in self.nets_.items():
            for n, t in net.state_dict().items():
                tensors[f"net.{k}.{n}"] = t
        if best_state is not None:
            for k, st in best_state.items():
                for n, t in st.items():
                    tensors[f"best.{k}.{n}"] = t
        groups: dict[str, Any] = {}
        for name, opt in self._optims.items():
            sd = opt.state_dict()
            for pid, st in sd["state"].items():
                for key, t in st.items():
                    tensors[f"optim.{name}.{pid}.{key}"] = torch.as_tensor(t)
            groups[name] = sd["param_groups"]
        s_state, perm = sampler.state()
        tensors["sampler.perm"] = perm
        tensors["dro.q"] = self._dro.q
        if self._group_signal is not None:
            tensors["dro.signal"] = self._group_signal
        meta = {"algo": self.algo, "config": self.config.to_dict(), "step": self.n_steps_done_,
                "best_metric": best_metric if math.isfinite(best_metric) else None,
                "best_step": self.best_step_, "bad_evals": bad_evals,
                "has_best": best_state is not None, "param_groups": groups, "sampler": s_state,
                "history": self.history_, "extra": self._extra_state()}
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / CHECKPOINT_WEIGHTS) as fh:
            fh.write(st_save({k: v.detach().contiguous() for k, v in tensors.items()}))
        atomic_write_text(folder / CHECKPOINT_JSON, json.dumps(meta))

    def _load_checkpoint(self, folder: Path, sampler: EpochSampler
                         ) -> tuple[int, float, int, dict[str, dict[str, Tensor]] | None]:
        from safetensors.torch import load_file

        meta = json.loads((folder / CHECKPOINT_JSON).read_text(encoding="utf-8"))
        # the step budget may change between runs (resume a stopped run with more steps)
        same = {k: v for k, v in self.config.to_dict().items() if k != "n_steps"}
        theirs = {k: v for k, v in (meta.get("config") or {}).items() if k != "n_steps"}
        if meta.get("algo") != self.algo or theirs != same:
            raise InvalidParameterError(
                f"{folder}: the checkpoint was written by another learner or config; "
                             "use a fresh checkpoint_dir or resume=False.")
        tensors = load_file(str(folder / CHECKPOINT_WEIGHTS))
        for k, net in self.nets_.items():
            net.load_state_dict(state_with_prefix(tensors, f"net.{k}"))
        best = None
        if meta["has_best"]:
            best = {k: state_with_prefix(tensors, f"best.{k}") for k in self.nets_}
        for name, opt in self._optims.items():
            state: dict[int, dict[str, Tensor]] = {}
            pre = f"optim.{name}."
            for key, t in tensors.items():
                if key.startswith(pre):
                    pid, _, field_name = key[len(pre):].partition(".")
                    state.setdefault(int(pid), {})[field_name] = t
            opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
        sampler.load_state(meta["sampler"], tensors["sampler.perm"])
        self._dro.q = tensors["dro.q"].clone()
        if "dro.signal" in tensors:
            self._group_signal = tensors["dro.signal"].clone()
        self.history_ = list(meta["history"])
        self.best_step_ = int(meta["best_step"])
        self._load_extra_state(meta.get("extra") or {})
        bm = meta["best_metric"]
        best_metric = math.inf if bm is None else float(bm)
        return int(meta["step"]), best_metric, int(meta["bad_evals"]), best

    def _extra_state(self) -> dict[str, Any]:
        """JSON-able learner state beyond weights (e.g. running statistics)."""
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`_extra_state`."""

    # ================================================================== policy API
    def action_probs(self, dataset: Any) -> NDArray[np.float64]:
        """Policy probabilities at each row, shape ``(n_steps, n_actions)``.

        Raises
        ------
        NotFittedError
            Before ``fit`` / ``load``.
        PolicyError
            The dataset has another action space or other state columns than the training data.
        """
        check_is_fitted(self, "policy_")
        return self.policy_.action_probs(dataset)

    def predict(self, dataset: Any) -> NDArray[np.int64]:
        """Most likely flat action at each row, shape ``(n_steps,)``."""
        check_is_fitted(self, "policy_")
        return self.policy_.predict(dataset)

    @property
    def n_actions(self) -> int:
        """Size of the flat action space (after fit)."""
        check_is_fitted(self, "policy_")
        return int(self.policy_.n_actions)

    @property
    def window(self) -> int:
        """Rows of history the policy reads."""
        return int(self.config.input_window)

    def scores(self, dataset: Any, network: str = "policy") -> NDArray[np.float64]:
        """Raw outputs of one network at every row (logits or Q over the support), ``(n, K)``."""
        check_is_fitted(self, "policy_")
        from equicare.models._inputs import ModelInputs

        self.policy_.check_compatible(dataset)
        if network in self.critic_nets and self._critic_groups():
            from equicare.learn._data import critic_model_inputs, group_codes

            g, _ = group_codes(dataset, self.group_attr_, self.group_levels_)
            inputs = critic_model_inputs(dataset, self.config.input_window,
                                         self.config.input_actions, g, len(self.group_levels_),
                                         self.categorical_levels_)
        else:
            inputs = ModelInputs.from_dataset(dataset, self.config.input_window,
                                              self.config.input_actions,
                                              self.categorical_levels_)
        return batched_forward(self.nets_[network], inputs).double().numpy()

    # ================================================================== save / load
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model folder: ``config.json`` + ``model.safetensors`` (Contract 2).

        Parameters
        ----------
        path : str or Path
            Folder; an existing non-empty folder is refused unless ``overwrite``, which then
            replaces it whole (atomically).
        overwrite : bool
        """
        check_is_fitted(self, "policy_")
        tensors: dict[str, Tensor] = {}
        for k, net in self.nets_.items():
            for n, t in net.state_dict().items():
                tensors[f"{k}.{n}"] = t
        cfg = {
            "learner": self.algo,
            "action_space": self.action_space_.to_dict(),
            "manifest_fingerprint": getattr(self, "manifest_fingerprint_", None),
            "learner_config": self.config.to_dict(),
            "policy": self.policy_.describe(),
            "networks": {k: net.spec.to_dict() for k, net in self.nets_.items()},
            "feature_names": list(self.feature_names_),
            "state_names": list(self.state_names_),
            "support": [int(a) for a in self.support_],
            "group_attr": self.group_attr_,
            "group_levels": [str(g) for g in self.group_levels_],
            "group_weights": [float(q) for q in self.group_weights_],
            "fair_mask": [int(a) for a in np.flatnonzero(self.fair_mask_)],
            "training": {"n_steps_done": self.n_steps_done_, "best_step": self.best_step_,
                         "history": self.history_},
            "extra": self._extra_state(),
        }
        return write_model_folder(path, cfg, tensors, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OfflineLearner:
        """Rebuild a fitted learner from a model folder written by :meth:`save`.

        Raises
        ------
        PolicyError
            Missing/malformed files, or a folder written by another learner.
        """
        cfg, tensors = read_model_folder(path)
        algo = cfg["learner"]
        klass = cls
        if klass.algo != algo:
            raise PolicyError(f"{path}: the model was trained with {algo!r}, not "
                              f"{cls.algo or 'a known learner'!r}.")
        try:
            config = klass.config_class.from_dict(cfg["learner_config"])
            self = klass(config)
            self.nets_ = {k: Network(NetworkSpec.from_dict(spec))
                          for k, spec in cfg["networks"].items()}
            for k, net in self.nets_.items():
                net.load_state_dict(state_with_prefix(tensors, k), strict=True)
                net.eval()
            from equicare.spaces import FactoredActionSpace

            self.action_space_ = FactoredActionSpace.from_dict(cfg["action_space"])
            self.feature_names_ = tuple(cfg["feature_names"])
            vocab = self.nets_["policy"].spec.categorical_levels
            self.categorical_levels_ = vocab or None
            self._embedded = bool(vocab)
            self.state_names_ = tuple(cfg["state_names"])
            self.support_ = np.asarray(cfg["support"], dtype=np.int64)
            self.group_attr_ = cfg["group_attr"]
            self.group_levels_ = np.asarray(cfg["group_levels"], dtype=object)
            self.group_weights_ = np.asarray(cfg["group_weights"], dtype=np.float64)
            mask = np.zeros(self.action_space_.n_actions, dtype=bool)
            mask[np.asarray(cfg["fair_mask"], dtype=np.int64)] = True
            self.fair_mask_ = mask
            tr = cfg["training"]
            self.n_steps_done_ = int(tr["n_steps_done"])
            self.best_step_ = int(tr["best_step"])
            self.history_ = list(tr["history"])
            self.manifest_fingerprint_ = cfg.get("manifest_fingerprint")
            self._load_extra_state(cfg.get("extra") or {})
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PolicyError(f"{path}: malformed model folder ({first}).") from exc
        self.policy_ = self._make_policy(source=str(path))
        return self

    def __sklearn_clone__(self) -> OfflineLearner:
        return type(self)(copy.deepcopy(self.config))

