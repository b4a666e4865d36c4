r"""Probabilistic dynamics ensemble: Gaussian MLPs predicting next state, reward and termination.

Each of ``n_members`` networks maps (state, one-hot action) to a diagonal Gaussian over the change
of state and the reward, and to a termination logit (PETS / MBPO, Chua et al. 2018, Janner et al.
2019). Members are trained on bootstrap resamples; the ``n_elites`` with the best held-out
likelihood are kept for prediction, and each prediction uses a randomly drawn elite per row.
Ensemble disagreement (spread of the elites' means) is the epistemic uncertainty.

Features whose transition is deterministic in the data are detected and not modelled: constant
features (:math:`s'_j = s_j`), constant increments (a clock), copies of another feature
(:math:`s'_j = s_k`, e.g. "previous aPTT") and features fixed by the action (:math:`s'_j = f(a)`,
e.g. "previous rate") and exact monotone functions of another feature (:math:`s'_j = g(s'_k)`,
e.g. INR of PT; interpolated from up to 1,001 knots). Only the remaining features get a Gaussian,
so model samples keep the data's deterministic relations. When every logged state at a clock's
largest value is terminal (a fixed course length, shared by at least 11 rows), transitions from it
are terminal in predictions too.

No saved number is a row's value (the ensemble is saved into shareable model folders): the
interpolation knots are interpolated quantiles rounded to 4 significant digits, and predictions are
clipped to coarse bounds (:func:`equicare.privacy.coarse_bounds`), not to the data's minimum and
maximum.

The action encoding is :func:`one_hot_actions` (flat action index -> one-hot row); the reward
network (:mod:`equicare.models._reward_net`) uses the same function, so the two always agree.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor, nn

from equicare import utils
from equicare.exceptions import DataWarning, InvalidParameterError
from equicare.privacy import coarse_bounds, round_significant, tail_quantile
from equicare.utils import (
    MIN_CELL,
    PARAM_MESSAGE,
    RandomState,
    atomic_write,
    atomic_write_text,
    check_is_fitted,
    check_random_state,
    config_from_dict,
    config_to_dict,
)

__all__ = [
    "DynamicsConfig",
    "DynamicsEnsemble",
    "EnsembleLinear",
    "GaussianEnsembleNet",
    "Transitions",
    "one_hot_actions",
    "transitions_from_dataset",
]


# ---------------------------------------------------------------------------- action encoding
def one_hot_actions(actions: ArrayLike | Tensor, n_actions: int) -> Tensor:
    """Encode flat actions one-hot: the one action encoding used by every network.

    Parameters
    ----------
    actions : array-like or Tensor of shape (n,)
        Flat action indices in ``[0, n_actions)`` (mixed radix of the manifest's components).
    n_actions : int

    Returns
    -------
    Tensor of shape (n, n_actions), float32

    Examples
    --------
    >>> one_hot_actions([2, 0], 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    a = torch.as_tensor(np.asarray(actions) if not isinstance(actions, Tensor) else actions)
    a = a.long().reshape(-1)
    if a.numel() and (int(a.min()) < 0 or int(a.max()) >= n_actions):
        raise InvalidParameterError(f"Action indices must lie in [0, {n_actions}); got values in "
                         f"[{int(a.min())}, {int(a.max())}].")
    return torch.nn.functional.one_hot(a, n_actions).float()


# ---------------------------------------------------------------------------- transitions
@dataclass(frozen=True)
class Transitions:
    """Row-aligned transition arrays built from a dataset.

    Attributes
    ----------
    states : ndarray of shape (n, d), float32
    actions : ndarray of shape (n,), int64
    rewards : ndarray of shape (n,), float32
    next_states : ndarray of shape (n, d), float32
        Next row's state; a copy of ``states`` where ``has_next`` is False.
    terminals : ndarray of shape (n,), float32
        1 where the episode truly ends at this step (``dataset.terminals``; no bootstrap).
    has_next : ndarray of shape (n,), bool
        True where the dataset holds the next state (not the last row of an episode).
    censored : ndarray of shape (n,), bool
        The last row of a censored episode (not terminal, no next row): whether the episode
        would have ended is unknown, so the row trains no termination and no next state.
    episode : ndarray of shape (n,), int64
    step : ndarray of shape (n,), int64
    """

    states: NDArray[np.float32]
    actions: NDArray[np.int64]
    rewards: NDArray[np.float32]
    next_states: NDArray[np.float32]
    terminals: NDArray[np.float32]
    has_next: NDArray[np.bool_]
    episode: NDArray[np.int64]
    step: NDArray[np.int64]
    censored: NDArray[np.bool_] | None = None

    @property
    def n(self) -> int:
        """Number of transitions."""
        return int(self.actions.shape[0])


def transitions_from_dataset(dataset: Any, rewards: NDArray[Any] | None = None) -> Transitions:
    """Build :class:`Transitions` from a :class:`~equicare.data.TrajectoryDataset`.

    Parameters
    ----------
    dataset : TrajectoryDataset
    rewards : ndarray of shape (n_steps,), optional
        Reward per row (default: the dataset's shaped reward).
    """
    s = np.ascontiguousarray(dataset.states, dtype=np.float32)
    nxt = dataset.next_index
    has_next = nxt >= 0
    ns = s.copy()
    ns[has_next] = s[nxt[has_next]]
    r = dataset.rewards if rewards is None else np.asarray(rewards)
    term = np.asarray(dataset.terminals, dtype=bool)
    return Transitions(states=s, actions=np.asarray(dataset.actions, dtype=np.int64),
                       rewards=np.asarray(r, dtype=np.float32), next_states=ns,
                       terminals=term.astype(np.float32), has_next=has_next & ~term,
                       episode=dataset.episode_index.astype(np.int64),
                       step=dataset.step.astype(np.int64), censored=~has_next & ~term)


# ---------------------------------------------------------------------------- networks
class EnsembleLinear(nn.Module):
    """``n_members`` independent linear layers applied in one batched matmul.

    Input of shape ``(n_members, batch, d_in)``, output ``(n_members, batch, d_out)``.
    """

    def __init__(self, n_members: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_members, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(n_members, 1, d_out))
        bound = 1.0 / math.sqrt(d_in)
        nn.init.trunc_normal_(self.weight, std=bound, a=-2 * bound, b=2 * bound)

    def forward(self, x: Tensor) -> Tensor:
        """Batched affine map."""
        return torch.baddbmm(self.bias, x, self.weight)


class GaussianEnsembleNet(nn.Module):
    """Ensemble of MLPs with a diagonal-Gaussian head and a termination logit.

    Parameters
    ----------
    n_members, d_in, d_out : int
    hidden : tuple of int
    """

    def __init__(self, n_members: int, d_in: int, d_out: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        dims = (d_in, *hidden)
        self.layers = nn.ModuleList(EnsembleLinear(n_members, a, b)
                                    for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.head = EnsembleLinear(n_members, dims[-1], 2 * d_out + 1)
        self.max_logvar = nn.Parameter(torch.full((d_out,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((d_out,), -10.0))
        self.d_out = d_out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, log-variance (soft-bounded) and termination logit.

        Parameters
        ----------
        x : Tensor of shape (n_members, batch, d_in)

        Returns
        -------
        mean, logvar : Tensor of shape (n_members, batch, d_out)
        done_logit : Tensor of shape (n_members, batch)
        """
        h = x
        for layer in self.layers:
            h = torch.nn.functional.silu(layer(h))
        out = self.head(h)
        mean, raw, logit = out[..., :self.d_out], out[..., self.d_out:-1], out[..., -1]
        logvar = self.max_logvar - torch.nn.functional.softplus(self.max_logvar - raw)
        logvar = self.min_logvar + torch.nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar, logit


def _blocks(n_rows: int, net: GaussianEnsembleNet) -> Iterator[slice]:
    """Row blocks of a forward pass of every member over ``n_rows`` rows.

    The widest activation of a block (all members) stays within ``ROW_BLOCK_ELEMENTS`` elements,
    so memory is bounded whatever the number of rows.
    """
    weights = [p for p in net.parameters() if p.dim() == 3]  # (n_members, d_in, d_out)
    widest = max(int(w.shape[2]) for w in weights)
    return utils.row_blocks(n_rows, int(weights[0].shape[0]) * widest)


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True, kw_only=True)
class DynamicsConfig:
    """Settings of :class:`DynamicsEnsemble`.

    Parameters
    ----------
    n_members : int
        Networks trained (bootstrap resamples).
    n_elites : int
        Networks kept for prediction (best held-out Gaussian likelihood).
    hidden : tuple of int
        Hidden layer widths (SiLU activations).
    lr : float
    weight_decay : float
    batch_size : int
    max_epochs : int
    patience : int
        Stop after this many epochs without a 1 % held-out improvement of any member.
    holdout_fraction : float
        Fraction of episodes held out for early stopping, elite selection and reported errors.
    predict_reward : bool
        Also model the reward (needed for model rollouts with the dataset's reward).
    logvar_bound_weight : float
        Weight of the penalty that keeps the learned log-variance bounds tight.
    """

    n_members: int = 7
    n_elites: int = 5
    hidden: tuple[int, ...] = (200, 200, 200)
    lr: float = 1e-3
    weight_decay: float = 5e-5
    batch_size: int = 256
    max_epochs: int = 60
    patience: int = 5
    holdout_fraction: float = 0.15
    predict_reward: bool = True
    logvar_bound_weight: float = 0.01

    def __post_init__(self) -> None:
        own = "DynamicsConfig"
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise InvalidParameterError(
                    PARAM_MESSAGE.format(name=name, owner=own, expected=expected,
                                                      got=getattr(self, name)))

        for name in ("n_members", "n_elites", "batch_size", "max_epochs", "patience"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "an int >= 1")
        need(self.n_elites <= self.n_members, "n_elites", f"an int in [1, {self.n_members}]")
        need(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "hidden",
             "a non-empty tuple of positive ints")
        need(self.lr > 0, "lr", "a number in (0, inf)")
        need(self.weight_decay >= 0, "weight_decay", "a number in [0, inf)")
        need(0 < self.holdout_fraction < 1, "holdout_fraction", "a number in (0, 1)")
        need(self.logvar_bound_weight >= 0, "logvar_bound_weight", "a number in [0, inf)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DynamicsConfig:
        """Inverse of :meth:`to_dict`."""
        return config_from_dict(cls, d)


# ---------------------------------------------------------------------------- learner
@dataclass
class _Structure:
    """Deterministic parts of the transition found in the data."""

    modelled: NDArray[np.int64]                 # feature indices with a Gaussian
    const_delta: dict[int, float] = field(default_factory=dict)
    copy_of: dict[int, int] = field(default_factory=dict)
    by_action: dict[int, list[float]] = field(default_factory=dict)
    clock_end: dict[int, float] = field(default_factory=dict)
    func_of: dict[int, tuple[int, list[float], list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"modelled": self.modelled.tolist(),
                "func_of": {str(k): [v[0], v[1], v[2]] for k, v in self.func_of.items()},
                "clock_end": {str(k): v for k, v in self.clock_end.items()},
                "const_delta": {str(k): v for k, v in self.const_delta.items()},
                "copy_of": {str(k): v for k, v in self.copy_of.items()},
                "by_action": {str(k): v for k, v in self.by_action.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Structure:
        return cls(np.asarray(d["modelled"], dtype=np.int64),
                   {int(k): float(v) for k, v in d["const_delta"].items()},
                   {int(k): int(v) for k, v in d["copy_of"].items()},
                   {int(k): [float(x) for x in v] for k, v in d["by_action"].items()},
                   {int(k): float(v) for k, v in d.get("clock_end", {}).items()},
                   {int(k): (int(v[0]), [float(x) for x in v[1]], [float(x) for x in v[2]])
                    for k, v in d.get("func_of", {}).items()})


def _find_structure(tr: Transitions, n_actions: int, tol: float = 1e-4) -> _Structure:
    m = tr.has_next
    s, ns, a = tr.states[m].astype(np.float64), tr.next_states[m].astype(np.float64), tr.actions[m]
    d = s.shape[1]
    if s.shape[0] == 0:  # no next states: every feature is modelled (before any reduction)
        return _Structure(np.arange(d, dtype=np.int64))
    delta = ns - s
    scale = np.maximum(np.abs(s).max(axis=0), 1.0)
    const_delta: dict[int, float] = {}
    copy_of: dict[int, int] = {}
    by_action: dict[int, list[float]] = {}
    for j in range(d):  # loop over features (16), not rows
        if np.ptp(delta[:, j]) <= tol * scale[j]:
            const_delta[j] = float(np.median(delta[:, j]))
            continue
        diffs = np.abs(ns[:, j, None] - s).max(axis=0)
        diffs[j] = np.inf
        k = int(np.argmin(diffs))
        if diffs[k] <= tol * scale[j]:
            copy_of[j] = k
            continue
        counts = np.bincount(a, minlength=n_actions)
        lo = np.full(n_actions, np.inf)
        hi = np.full(n_actions, -np.inf)
        np.minimum.at(lo, a, ns[:, j])
        np.maximum.at(hi, a, ns[:, j])
        seen = counts > 0
        if seen.all() and np.all(hi[seen] - lo[seen] <= tol * scale[j]):
            by_action[j] = [float(v) for v in lo]
    # a clock (constant positive increment) whose largest value always ends the episode: a fixed
    # course length; transitions from that value are terminal
    # (kept only when at least MIN_CELL rows share that value: it is then a course length, not
    # one patient's last time)
    clock_end: dict[int, float] = {}
    for j, c in const_delta.items():
        if c > 0:
            top = float(tr.states[:, j].max())
            at_top = tr.states[:, j] >= top - tol * scale[j]
            if at_top.sum() >= MIN_CELL and np.all(tr.terminals[at_top] > 0):
                clock_end[j] = top
    det = set(const_delta) | set(copy_of) | set(by_action)
    # a feature that is an exact monotone function of another modelled feature (a derived lab
    # value such as INR = (PT / MNPT)^ISI): model the other one, compute this one
    func_of: dict[int, tuple[int, list[float], list[float]]] = {}
    allx = np.r_[s, ns]
    orders: dict[int, NDArray[np.int64]] = {}
    for j in range(d):
        if j in det:
            continue
        for k in range(d):
            if k == j or k in det or k in func_of or j in {v[0] for v in func_of.values()}:
                continue
            if k not in orders:
                orders[k] = np.argsort(allx[:, k], kind="stable")
            order = orders[k]
            xk, xj = allx[order, k], allx[order, j]
            if np.ptp(xk) <= 0 or np.ptp(xj) <= 0:
                continue
            dj = np.diff(xj)
            eps = 1e-5 * max(float(np.abs(xj).max()), 1.0)   # float32 rounding of stored values
            same_k = np.diff(xk) == 0
            if np.any(np.abs(dj[same_k]) > eps):
                continue
            if np.all(dj >= -eps) or np.all(dj <= eps):
                # knots: interpolated quantiles inside the tails (at least MIN_CELL rows beyond
                # the end ones), rounded to 4 significant digits, so no knot is a row's value;
                # predictions extrapolate linearly beyond them (see _assemble)
                p = tail_quantile(xk.size)
                knots = np.unique(round_significant(
                    np.quantile(xk, np.linspace(p, 1 - p, 1001)), 4))
                if knots.size < 2:
                    continue
                func_of[j] = (k, knots.tolist(), np.interp(knots, xk, xj).tolist())
                break
    det |= set(func_of)
    return _Structure(np.array([j for j in range(d) if j not in det], dtype=np.int64),
                      const_delta, copy_of, by_action, clock_end, func_of)


#: Share of transitions above which a feature that is *almost* a copy of another feature or a
#: function of the action (but not exactly) is reported: a few data errors hide the structure.
NEAR_STRUCTURE_SHARE = 0.99


def _near_structure(tr: Transitions, n_actions: int, st: _Structure,
                    names: tuple[str, ...], tol: float = 1e-4) -> list[str]:
    """Messages naming features that are almost, not exactly, deterministic.

    A feature that is a copy of another feature or a function of the action in at least
    :data:`NEAR_STRUCTURE_SHARE` of the transitions, but not in all, gets one message.
    """
    rows = np.flatnonzero(tr.has_next)
    n = rows.size
    if n == 0:
        return []
    s = tr.states[rows].astype(np.float64)
    ns, a = tr.next_states[rows].astype(np.float64), tr.actions[rows]
    scale = np.maximum(np.abs(s).max(axis=0), 1.0)
    det = set(st.const_delta) | set(st.copy_of) | set(st.by_action) | set(st.func_of)
    out: list[str] = []

    def say(j: int, what: str, ok: NDArray[np.bool_]) -> None:
        bad = rows[~ok]
        out.append(
            f"state column {names[j]!r} is {what} in {int(ok.sum()):,} of {n:,} transitions but "
            f"not in {bad.size:,} (first: the transition from row {int(bad[0])}, 0-based in "
            "episode and time order), so it is modelled as an uncertain outcome and OMG's "
            "reward_exclude='auto' does not exclude it; check those rows (a data error there "
            "changes what is learned).")

    for j in range(s.shape[1]):
        if j in det:
            continue
        close = np.abs(ns[:, j, None] - s) <= tol * scale[j]
        close[:, j] = False
        k = int(np.argmax(close.sum(axis=0)))
        if NEAR_STRUCTURE_SHARE * n <= close[:, k].sum() < n:
            say(j, f"a copy of {names[k]!r} one step earlier", close[:, k])
            continue
        ok = np.zeros(n, dtype=bool)
        for act in np.unique(a):
            sel = a == act
            vals, counts = np.unique(ns[sel, j], return_counts=True)
            ok[sel] = np.abs(ns[sel, j] - vals[np.argmax(counts)]) <= tol * scale[j]
        if NEAR_STRUCTURE_SHARE * n <= ok.sum() < n:
            say(j, "a function of the action (one value per action)", ok)
    return out


class DynamicsEnsemble:
    """Probabilistic ensemble model of the transition ``(s, a) -> (s', r, done)``.

    Parameters
    ----------
    config : DynamicsConfig, optional
    random_state : int, Generator or None

    Attributes
    ----------
    net_ : GaussianEnsembleNet
    elites_ : ndarray of shape (n_elites,)
        Members used for prediction.
    holdout_metrics_ : dict
        Held-out (episodes not used for training) one-step errors in original units:
        ``rmse`` per modelled feature, ``aptt_rmse``-style entries keyed by feature name,
        ``reward_rmse``, ``nll`` per member, ``done_brier``.
    n_epochs_ : int

    Examples
    --------
    >>> from equicare.sim.heparin import heparin_dataset
    >>> ds = heparin_dataset(60, random_state=0)
    >>> model = DynamicsEnsemble(DynamicsConfig(max_epochs=2, hidden=(32,)), random_state=0).fit(ds)
    >>> ns, r, done = model.predict(ds.states[:4], ds.actions[:4], random_state=0)
    >>> ns.shape, r.shape, done.shape
    ((4, 16), (4,), (4,))
    """

    def __init__(self, config: DynamicsConfig | None = None, random_state: RandomState = None
                 ) -> None:
        self.config = config if config is not None else DynamicsConfig()
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, dataset: Any, rewards: NDArray[Any] | None = None,
            progress: Callable[[int, int], None] | None = None) -> DynamicsEnsemble:
        """Fit on a :class:`~equicare.data.TrajectoryDataset`.

        Parameters
        ----------
        dataset : TrajectoryDataset
        rewards : ndarray of shape (n_steps,), optional
            Reward to model (default: the dataset's shaped reward).
        progress : callable, optional
            Called as ``progress(epoch, max_epochs)`` after every epoch.
        """
        tr = transitions_from_dataset(dataset, rewards)
        self.n_actions_ = int(dataset.n_actions)
        self.feature_names_ = tuple(dataset.state_names)
        return self.fit_transitions(tr, self.n_actions_, progress=progress)

    def fit_transitions(self, tr: Transitions, n_actions: int,
                        progress: Callable[[int, int], None] | None = None) -> DynamicsEnsemble:
        """Fit on :class:`Transitions` (see :meth:`fit`)."""
        rng = check_random_state(self.random_state)
        seed = int(rng.integers(2**31 - 1))
        # torch's global generator initialises the networks: fork it so that the seed fixes the
        # fit without touching the caller's generator state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._fit(tr, n_actions, rng, torch.Generator().manual_seed(seed), progress)

    def _fit(self, tr: Transitions, n_actions: int, rng: np.random.Generator,
             torch_gen: torch.Generator, progress: Callable[[int, int], None] | None
             ) -> DynamicsEnsemble:
        cfg = self.config
        self.n_actions_ = int(n_actions)
        if not hasattr(self, "feature_names_"):
            self.feature_names_ = tuple(f"x{j}" for j in range(tr.states.shape[1]))
        self.structure_ = _find_structure(tr, n_actions)
        for message in _near_structure(tr, n_actions, self.structure_, self.feature_names_):
            warnings.warn(DataWarning(message), stacklevel=4)
        mod = self.structure_.modelled
        # normalisation (inputs: states; targets: deltas of modelled features and reward)
        s64 = tr.states.astype(np.float64)
        self.state_mean_ = s64.mean(axis=0)
        self.state_std_ = np.where(s64.std(axis=0) > 1e-6, s64.std(axis=0), 1.0)
        # clipping range of predictions: coarse bounds (tail quantiles widened and rounded
        # outward), not the columns' minimum and maximum, which are single patients' values
        self.state_min_, self.state_max_ = coarse_bounds(
            np.r_[s64, tr.next_states[tr.has_next].astype(np.float64)], margin=BOUND_MARGIN)
        delta = (tr.next_states - tr.states).astype(np.float64)[:, mod]
        hn = tr.has_next
        dm = delta[hn].mean(axis=0) if hn.any() else np.zeros(mod.size)
        dsd = delta[hn].std(axis=0) if hn.any() else np.ones(mod.size)
        r = tr.rewards.astype(np.float64)
        self.target_mean_ = np.r_[dm, r.mean() if cfg.predict_reward else 0.0]
        self.target_std_ = np.r_[np.where(dsd > 1e-6, dsd, 1.0),
                                 max(r.std(), 1e-6) if cfg.predict_reward else 1.0]
        x = self._inputs(tr.states, tr.actions)
        y = ((np.c_[delta, r] - self.target_mean_) / self.target_std_).astype(np.float32)
        mask = np.ones_like(y, dtype=np.float32)
        mask[~hn, :mod.size] = 0.0
        if not cfg.predict_reward:
            mask[:, -1] = 0.0
        done = tr.terminals.astype(np.float32)
        # termination is observed where the episode ends (terminal) or goes on (a next row); a
        # censored last row trains no termination (weight 0)
        known = (np.ones(tr.n, dtype=np.float32) if tr.censored is None
                 else (~tr.censored).astype(np.float32))
        # split episodes
        episodes = np.unique(tr.episode)
        n_hold = max(1, int(round(cfg.holdout_fraction * episodes.size)))
        hold_eps = rng.permutation(episodes)[:n_hold] if episodes.size > 1 else episodes[:0]
        is_hold = np.isin(tr.episode, hold_eps)
        tr_idx, ho_idx = np.flatnonzero(~is_hold), np.flatnonzero(is_hold)
        if ho_idx.size == 0:
            ho_idx = tr_idx
        X, Y, M, D, K = (torch.as_tensor(v) for v in (x, y, mask, done, known))
        any_censored = bool((known == 0).any())
        E = cfg.n_members
        net = GaussianEnsembleNet(E, x.shape[1], y.shape[1], cfg.hidden)
        decay = [p for n_, p in net.named_parameters() if n_.endswith("weight")]
        other = [p for n_, p in net.named_parameters() if not n_.endswith("weight")]
        opt = torch.optim.Adam([{"params": decay, "weight_decay": cfg.weight_decay},
                                {"params": other, "weight_decay": 0.0}], lr=cfg.lr)
        n_tr = tr_idx.size
        boot = torch.as_tensor(tr_idx[rng.integers(0, n_tr, size=(E, n_tr))])
        best = np.full(E, np.inf)
        best_state: list[dict[str, Tensor] | None] = [None] * E
        since = 0
        ho = torch.as_tensor(ho_idx)
        epoch = 0
        for epoch in range(1, cfg.max_epochs + 1):  # noqa: B007
            perm = boot[:, torch.randperm(n_tr, generator=torch_gen)]
            net.train()
            for start in range(0, n_tr, cfg.batch_size):
                b = perm[:, start:start + cfg.batch_size]
                mean, logvar, logit = net(X[b])
                loss = self._nll(mean, logvar, Y[b], M[b]).sum()
                bce = nn.functional.binary_cross_entropy_with_logits(logit, D[b],
                                                                      reduction="none")
                if any_censored:
                    bce = (bce * K[b]).sum(dim=1) / K[b].sum(dim=1).clamp_min(1.0)
                else:
                    bce = bce.mean(dim=1)
                loss = loss + bce.sum()
                loss = loss + cfg.logvar_bound_weight * (net.max_logvar.sum()
                                                         - net.min_logvar.sum())
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            mse = self._holdout_mse(net, X[ho], Y[ho], M[ho])
            with np.errstate(invalid="ignore", divide="ignore"):
                improved = ~np.isfinite(best) | ((best - mse) / np.abs(best) > 0.01)
            for e in np.flatnonzero(improved).tolist():
                best[e] = mse[e]
                best_state[e] = {k: v[e].detach().clone() for k, v in _member_params(net).items()}
            since = 0 if improved.any() else since + 1
            if progress is not None:
                progress(epoch, cfg.max_epochs)
            if since >= cfg.patience:
                break
        # restore each member's best snapshot
        with torch.no_grad():
            params = _member_params(net)
            for e in range(E):
                snap = best_state[e]
                if snap is not None:
                    for k, v in params.items():
                        v[e].copy_(snap[k])
        net.eval()
        self.net_ = net
        self.n_epochs_ = epoch
        with torch.no_grad():
            nll_sum = torch.zeros(E)
            for sl in _blocks(ho.shape[0], net):
                hb = ho[sl]
                mean, logvar, _ = net(X[hb].expand(E, -1, -1))
                nll_sum += self._nll(mean, logvar, Y[hb], M[hb]) * M[hb].sum().clamp_min(1.0)
            nll = (nll_sum / M[ho].sum().clamp_min(1.0)).numpy()
        self.elites_ = np.sort(np.argsort(nll)[:cfg.n_elites])
        self.holdout_metrics_ = self._metrics(tr, ho_idx, nll)
        return self

    @staticmethod
    def _nll(mean: Tensor, logvar: Tensor, y: Tensor, m: Tensor) -> Tensor:
        """Gaussian negative log-likelihood per member (masked mean), shape ``(n_members,)``."""
        inv = torch.exp(-logvar)
        per = ((mean - y) ** 2 * inv + logvar) * m
        return per.sum(dim=(1, 2)) / m.sum().clamp_min(1.0)

    @staticmethod
    def _holdout_mse(net: GaussianEnsembleNet, x: Tensor, y: Tensor, m: Tensor
                     ) -> NDArray[np.float64]:
        E = net.head.weight.shape[0]
        per = torch.zeros(E)
        with torch.no_grad():
            for sl in _blocks(x.shape[0], net):
                mean, _, _ = net(x[sl].expand(E, -1, -1))
                per += ((mean - y[sl]) ** 2 * m[sl]).sum(dim=(1, 2))
        out: NDArray[np.float64] = (per / m.sum().clamp_min(1.0)).numpy().astype(np.float64)
        return out

    def _inputs(self, states: NDArray[Any], actions: NDArray[Any]) -> NDArray[np.float32]:
        s = (np.asarray(states, dtype=np.float64) - self.state_mean_) / self.state_std_
        a = one_hot_actions(actions, self.n_actions_).numpy()
        return np.ascontiguousarray(np.c_[s, a], dtype=np.float32)

    def _metrics(self, tr: Transitions, ho_idx: NDArray[np.int64], nll: NDArray[Any]
                 ) -> dict[str, Any]:
        st = tr.states[ho_idx]
        ns, r, pd_ = self.predict(st, tr.actions[ho_idx], deterministic=True)
        hn = tr.has_next[ho_idx]
        err = (ns - tr.next_states[ho_idx])[hn]
        rmse = np.sqrt(np.mean(err.astype(np.float64) ** 2, axis=0)) if hn.any() else \
            np.full(st.shape[1], np.nan)
        # naive baseline: next state = current state
        naive = np.sqrt(np.mean(((tr.states[ho_idx] - tr.next_states[ho_idx])[hn]).astype(
            np.float64) ** 2, axis=0)) if hn.any() else np.full(st.shape[1], np.nan)
        out: dict[str, Any] = {
            "n_holdout": int(ho_idx.size),
            "rmse": {n: float(v) for n, v in zip(self.feature_names_, rmse, strict=True)},
            "rmse_persistence": {n: float(v) for n, v in zip(self.feature_names_, naive,
                                                             strict=True)},
            "reward_rmse": float(np.sqrt(np.mean((r - tr.rewards[ho_idx]) ** 2))),
            "done_brier": _brier(pd_, tr.terminals[ho_idx],
                                 None if tr.censored is None else ~tr.censored[ho_idx]),
            "nll": [float(v) for v in nll],
            "elites": self.elites_.tolist(),
        }
        return out

    # ------------------------------------------------------------------ prediction
    def _forward_elites(self, states: NDArray[Any], actions: NDArray[Any]
                        ) -> Iterator[tuple[slice, Tensor, Tensor, Tensor]]:
        """Elites' mean, log-variance and termination logit, one block of rows at a time.

        Yields ``(rows, mean, logvar, logit)`` with shapes ``(n_elites, block, ...)``; blocks
        bound the memory of running every member over every row.
        """
        check_is_fitted(self, "net_")
        s, a = np.asarray(states), np.asarray(actions)
        el = torch.as_tensor(self.elites_)
        for sl in _blocks(s.shape[0], self.net_):
            x = torch.as_tensor(self._inputs(s[sl], a[sl]))
            with torch.no_grad():
                mean, logvar, logit = self.net_(x.expand(self.config.n_members, -1, -1))
            yield sl, mean[el], logvar[el], logit[el]

    def predict(self, states: NDArray[Any], actions: NDArray[Any], *,
                random_state: RandomState = None, deterministic: bool = False
                ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Sample (or average) the next state, reward and termination.

        Each row uses one elite drawn at random; with ``deterministic=True`` the mean of the elites'
        means is returned and ``done`` is the mean termination probability.

        Parameters
        ----------
        states : ndarray of shape (n, d)
        actions : ndarray of shape (n,)
        random_state : int, Generator or None

        Returns
        -------
        next_states : ndarray of shape (n, d)
        rewards : ndarray of shape (n,)
        done : ndarray of shape (n,)
            Sampled 0/1 termination (probability when deterministic).
        """
        rng = check_random_state(random_state)
        s = np.asarray(states, dtype=np.float32)
        a = np.asarray(actions, dtype=np.int64)
        check_is_fitted(self, "net_")
        n = s.shape[0]
        d_y = int(self.net_.d_out)
        if deterministic:
            y = np.empty((n, d_y), dtype=np.float64)
            done = np.empty(n, dtype=np.float32)
            for sl, mean, _, logit in self._forward_elites(s, a):
                y[sl] = mean.mean(dim=0).numpy()
                done[sl] = torch.sigmoid(logit).mean(dim=0).numpy()
        else:
            # the random draws are made for all rows in the unblocked order, so the result does
            # not depend on the block size
            pick_all = torch.as_tensor(rng.integers(0, len(self.elites_), size=n))
            mu = torch.empty((n, d_y))
            lv = torch.empty((n, d_y))
            p = np.empty(n, dtype=np.float32)
            for sl, mean, logvar, logit in self._forward_elites(s, a):
                pick, rows = pick_all[sl], torch.arange(sl.stop - sl.start)
                mu[sl], lv[sl] = mean[pick, rows], logvar[pick, rows]
                p[sl] = torch.sigmoid(logit[pick, rows]).numpy()
            eps = torch.as_tensor(rng.standard_normal(mu.shape).astype(np.float32))
            y = (mu + torch.exp(0.5 * lv) * eps).numpy().astype(np.float64)
            done = (rng.random(n) < p).astype(np.float64)
        y = y * self.target_std_ + self.target_mean_
        for j, top in self.structure_.clock_end.items():
            scale = max(abs(top), 1.0)
            done = np.where(s[:, j] >= top - 1e-4 * scale, 1.0, done)
        ns = self._assemble(s, a, y[:, :-1])
        r = y[:, -1] if self.config.predict_reward else np.zeros(n)
        return ns, r.astype(np.float32), np.asarray(done, dtype=np.float32)

    def _assemble(self, s: NDArray[np.float32], a: NDArray[np.int64], delta: NDArray[np.float64]
                  ) -> NDArray[np.float32]:
        st = self.structure_
        ns = s.astype(np.float64).copy()
        ns[:, st.modelled] += delta
        for j, c in st.const_delta.items():
            ns[:, j] = s[:, j] + c
        for j, k in st.copy_of.items():
            ns[:, j] = s[:, k]
        for j, table in st.by_action.items():
            ns[:, j] = np.asarray(table)[a]
        for j, (k, xs, ys) in st.func_of.items():
            ns[:, j] = _interp_extrapolate(ns[:, k], np.asarray(xs), np.asarray(ys))
        return np.clip(ns, self.state_min_, self.state_max_).astype(np.float32)

    def disagreement(self, states: NDArray[Any], actions: NDArray[Any]) -> NDArray[np.float64]:
        """Epistemic uncertainty: RMS over outputs of the SD across elites of their means.

        Computed in standardised target units (so features are comparable).

        Returns
        -------
        ndarray of shape (n,)
        """
        out = np.empty(np.asarray(states).shape[0], dtype=np.float64)
        for sl, mean, _, _ in self._forward_elites(states, actions):
            out[sl] = torch.sqrt(mean.var(dim=0, unbiased=False).mean(dim=-1)).numpy()
        return out

    def aleatoric(self, states: NDArray[Any], actions: NDArray[Any]) -> NDArray[np.float64]:
        """Mean predicted SD (standardised units) over the elites, shape ``(n,)``."""
        out = np.empty(np.asarray(states).shape[0], dtype=np.float64)
        for sl, _, logvar, _ in self._forward_elites(states, actions):
            out[sl] = torch.exp(0.5 * logvar).mean(dim=(0, 2)).numpy()
        return out

    def rollout(self, start_states: NDArray[Any],
                policy: Callable[[NDArray[np.float32]], NDArray[np.int64]], horizon: int, *,
                random_state: RandomState = None) -> dict[str, NDArray[Any]]:
        """Branched rollouts of ``horizon`` steps from real states under ``policy``.

        Parameters
        ----------
        start_states : ndarray of shape (n, d)
        policy : callable
            Maps states of shape ``(m, d)`` to actions of shape ``(m,)``.
        horizon : int

        Returns
        -------
        dict of arrays of shape (n, horizon, ...)
            ``states``, ``actions``, ``rewards``, ``next_states``, ``terminals`` and ``valid``
            (False after a rollout terminated).
        """
        rng = check_random_state(random_state)
        s = np.asarray(start_states, dtype=np.float32)
        n, d = s.shape
        out: dict[str, NDArray[Any]] = {
               "states": np.zeros((n, horizon, d), np.float32),
               "actions": np.zeros((n, horizon), np.int64),
               "rewards": np.zeros((n, horizon), np.float32),
               "next_states": np.zeros((n, horizon, d), np.float32),
               "terminals": np.zeros((n, horizon), np.float32),
               "valid": np.zeros((n, horizon), bool)}
        live = np.ones(n, dtype=bool)
        for t in range(horizon):
            idx = np.flatnonzero(live)
            if idx.size == 0:
                break
            a = np.asarray(policy(s[idx]), dtype=np.int64)
            ns, r, done = self.predict(s[idx], a, random_state=rng)
            out["states"][idx, t] = s[idx]
            out["actions"][idx, t] = a
            out["rewards"][idx, t] = r
            out["next_states"][idx, t] = ns
            out["terminals"][idx, t] = done
            out["valid"][idx, t] = True
            s = s.copy()
            s[idx] = ns
            live[idx[done > 0.5]] = False
        return out

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """JSON description and tensors of the fitted ensemble (for one model folder).

        Returns
        -------
        meta : dict
            Config, normalisation, structure, elites, hold-out metrics.
        tensors : dict of str to Tensor
            The ensemble network's ``state_dict``.
        """
        check_is_fitted(self, "net_")
        meta = {"config": self.config.to_dict(), "n_actions": self.n_actions_,
                "feature_names": list(self.feature_names_), "elites": self.elites_.tolist(),
                "structure": self.structure_.to_dict(), "n_epochs": self.n_epochs_,
                "holdout_metrics": self.holdout_metrics_,
                **{k: getattr(self, k).tolist() for k in _ARRAYS}}
        return meta, {k: v.contiguous() for k, v in self.net_.state_dict().items()}

    @classmethod
    def from_state(cls, meta: dict[str, Any], tensors: dict[str, Tensor]) -> DynamicsEnsemble:
        """Inverse of :meth:`to_state` (strict: every tensor must match the network)."""
        obj = cls(DynamicsConfig.from_dict(meta["config"]))
        obj.n_actions_ = int(meta["n_actions"])
        obj.feature_names_ = tuple(meta["feature_names"])
        obj.elites_ = np.asarray(meta["elites"], dtype=np.int64)
        obj.structure_ = _Structure.from_dict(meta["structure"])
        obj.n_epochs_ = int(meta["n_epochs"])
        obj.holdout_metrics_ = meta["holdout_metrics"]
        for k in _ARRAYS:
            setattr(obj, k, np.asarray(meta[k], dtype=np.float64))
        d_in = len(obj.feature_names_) + obj.n_actions_
        d_out = obj.structure_.modelled.size + 1
        net = GaussianEnsembleNet(obj.config.n_members, d_in, d_out, obj.config.hidden)
        net.load_state_dict(tensors, strict=True)
        net.eval()
        obj.net_ = net
        return obj

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``dynamics.json`` (config, normalisation, structure) and safetensors weights.

        (A dosing model folder stores the ensemble inside its own ``model.safetensors``; this
        stand-alone form is for the ensemble on its own.)
        """
        from safetensors.torch import save as st_save

        meta, tensors = self.to_state()
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        with atomic_write(p / "dynamics.safetensors") as fh:
            fh.write(st_save(tensors))
        atomic_write_text(p / "dynamics.json", json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DynamicsEnsemble:
        """Inverse of :meth:`save`."""
        from safetensors.torch import load as st_load

        p = Path(path)
        meta = json.loads((p / "dynamics.json").read_text())
        return cls.from_state(meta, st_load((p / "dynamics.safetensors").read_bytes()))


#: Widening of the prediction bounds beyond the tail quantiles (fraction of their distance).
BOUND_MARGIN = 0.25


def _interp_extrapolate(x: NDArray[np.float64], xs: NDArray[np.float64],
                        ys: NDArray[np.float64]) -> NDArray[np.float64]:
    """Piecewise-linear ``ys(xs)`` at ``x``, continued linearly beyond the end knots.

    Beyond each end, the slope is that over the outer 1% of the knots.
    """
    out: NDArray[np.float64] = np.interp(x, xs, ys)
    w = max(1, min(xs.size - 1, xs.size // 100))
    lo_slope = (ys[w] - ys[0]) / (xs[w] - xs[0])
    hi_slope = (ys[-1] - ys[-1 - w]) / (xs[-1] - xs[-1 - w])
    out = np.where(x < xs[0], ys[0] + (x - xs[0]) * lo_slope, out)
    return np.where(x > xs[-1], ys[-1] + (x - xs[-1]) * hi_slope, out)


_ARRAYS = ("state_mean_", "state_std_", "state_min_", "state_max_", "target_mean_", "target_std_")


def _member_params(net: GaussianEnsembleNet) -> dict[str, Tensor]:
    """Parameters that have one slice per member (first dimension = n_members)."""
    return {k: v for k, v in net.named_parameters() if k.endswith(("weight", "bias"))}


def _brier(p: NDArray[Any], y: NDArray[Any], known: NDArray[np.bool_] | None) -> float:
    """Brier score of termination over the rows whose outcome is observed (NaN if none)."""
    sq = (np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2
    if known is not None:
        sq = sq[known]
    return float(sq.mean()) if sq.size else float("nan")
