"""Additive statistics of streamed off-policy evaluation (shared by the IS and Q-model passes)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import DataValidationError, InvalidParameterError, PolicyError
from equicare.ope._bootstrap import (
    influence_coefs,
    jackknife_se,
    ratio_columns,
    ratio_terms,
    squared_influence,
)
from equicare.ope._core import EpisodeParts, combine
from equicare.ope._ess import WeightSums, heaviest
from equicare.ope._pareto import PARETO_KEEP
from equicare.ope._resample import episode_keys, poisson_weights
from equicare.utils import PARAM_MESSAGE

__all__ = ["StreamSums", "SquareSums", "StudentCoefs", "JackknifeSums", "JackknifeCoefs",
           "corrected_sums", "episode_sums", "chunk_policy_error", "student_coefs",
           "jackknife_coefs", "pass_coefs", "replicate_weights"]


@dataclass
class StreamSums:
    """Additive statistics of a set of episodes (one chunk, one shard, or the whole panel).

    Attributes
    ----------
    n_episodes, n_steps : int
    total : ndarray of shape (n_parts + 1,)
        Sums of the estimators' parts, the behaviour return last.
    boot : ndarray of shape (n_boot, n_parts + 1)
        Poisson-weighted sums, one row per replicate.
    boot_n : ndarray of shape (n_boot,)
        Total Poisson weight of each replicate.
    w_sum, w_sq : float
        Sum of trajectory weights and of their squares.
    wt_sum, wt_sq : float or None
        The same of the truncated trajectory weights (None without truncation).
    infl_keys : tuple of str
        Estimators (among ``fqe, dr, wdr``) whose Q-model refit enters the bootstrap: the last
        ``len(infl_keys)`` columns of ``total`` and ``boot`` hold each episode's raw influence
        ``sum_{i in e} x_i^T z delta_i`` (see :mod:`equicare.ope._stream_q`).
    weights : WeightSums or None
        Summed importance weights per step (a subgroup level's: whether its weighted values may
        be published, :func:`~equicare.ope._ess.low_ess_groups`); None for the whole panel.
    returns_min, returns_max : float
        The smallest and largest discounted episode return (``inf`` and ``-inf`` for no
        episodes): whether an estimate lies far outside the observed returns.
    rewards_min, rewards_max : float
        The smallest and largest reward of a step: an estimate on the side of 0 no policy can
        reach (:func:`equicare.ope._evaluate.wrong_sign`).
    n_censored : int
        Episodes whose last row is not terminal (censored stays).
    top_weights : ndarray of shape (<= PARETO_KEEP,)
        The largest untruncated trajectory weights (at most
        :data:`~equicare.ope._pareto.PARETO_KEEP`): their Pareto tail index
        (:func:`~equicare.ope._pareto.pareto_k`) as in memory, exactly up to 11 million episodes.
    """

    n_episodes: int
    n_steps: int
    total: NDArray[np.float64]
    boot: NDArray[np.float64]
    boot_n: NDArray[np.float64]
    w_sum: float
    w_sq: float
    gamma: float = 1.0
    wt_sum: float | None = None
    wt_sq: float | None = None
    parts_layout: tuple[tuple[str, ...], dict[str, slice], int] = field(
        default=((), {}, 0), repr=False)
    infl_keys: tuple[str, ...] = ()
    weights: WeightSums | None = field(default=None, repr=False)
    returns_min: float = np.inf
    returns_max: float = -np.inf
    rewards_min: float = np.inf
    rewards_max: float = -np.inf
    n_censored: int = 0
    top_weights: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0), repr=False)

    def __add__(self, other: StreamSums) -> StreamSums:
        if self.parts_layout[0] != other.parts_layout[0] or self.total.shape != other.total.shape:
            raise ValueError("Cannot add statistics of different estimators or horizons.")
        return StreamSums(n_episodes=self.n_episodes + other.n_episodes,
                          n_steps=self.n_steps + other.n_steps,
                          total=self.total + other.total, boot=self.boot + other.boot,
                          boot_n=self.boot_n + other.boot_n, w_sum=self.w_sum + other.w_sum,
                          w_sq=self.w_sq + other.w_sq, gamma=self.gamma,
                          wt_sum=_add(self.wt_sum, other.wt_sum),
                          wt_sq=_add(self.wt_sq, other.wt_sq),
                          parts_layout=self.parts_layout, infl_keys=self.infl_keys,
                          weights=(self.weights if other.weights is None
                                   else other.weights if self.weights is None
                                   else self.weights + other.weights),
                          returns_min=min(self.returns_min, other.returns_min),
                          returns_max=max(self.returns_max, other.returns_max),
                          rewards_min=min(self.rewards_min, other.rewards_min),
                          rewards_max=max(self.rewards_max, other.rewards_max),
                          n_censored=self.n_censored + other.n_censored,
                          top_weights=largest(np.concatenate([self.top_weights,
                                                              other.top_weights])))

    def ess(self) -> tuple[float, float | None]:
        """Kish's effective sample size of the trajectory weights, and of the truncated ones."""
        def kish(total: float, sq: float) -> float:
            return float(total ** 2 / sq) if sq > 0 else 0.0

        return kish(self.w_sum, self.w_sq), (
            None if self.wt_sum is None or self.wt_sq is None else kish(self.wt_sum, self.wt_sq))


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def episode_sums(mat: NDArray[np.float64], w: NDArray[np.float64],
                 traj_weights: NDArray[np.float64], *, n_steps: int, gamma: float,
                 layout: tuple[tuple[str, ...], dict[str, slice], int],
                 infl_keys: tuple[str, ...] = (),
                 trunc_weights: NDArray[np.float64] | None = None,
                 n_censored: int = 0,
                 rewards: NDArray[np.float64] | None = None) -> StreamSums:
    """The :class:`StreamSums` of some episodes.

    Parameters
    ----------
    mat : ndarray of shape (n_episodes, n_columns)
        Their parts, return and (``infl_keys``) raw refit influences.
    w : ndarray of shape (n_boot, n_episodes)
        Their Poisson bootstrap weights.
    traj_weights : ndarray of shape (n_episodes,)
    n_steps : int
        Their rows.
    gamma : float
    layout : tuple
        ``StreamSums.parts_layout``.
    infl_keys : tuple of str
    trunc_weights : ndarray of shape (n_episodes,), optional
        Their truncated trajectory weights (with ``truncate``).
    n_censored : int
        How many of them are censored (last row not terminal).
    rewards : ndarray of shape (n_steps,), optional
        Their steps' rewards (the range of :attr:`StreamSums.rewards_min` and ``rewards_max``).
    """
    tw, tt = traj_weights, trunc_weights
    ret = mat[:, mat.shape[1] - 1 - len(infl_keys)]  # the return: after the parts
    r_lo, r_hi = ((float(rewards.min()), float(rewards.max()))
                  if rewards is not None and rewards.size else (np.inf, -np.inf))
    return StreamSums(n_episodes=int(mat.shape[0]), n_steps=int(n_steps), total=mat.sum(axis=0),
                      boot=w @ mat, boot_n=w.sum(axis=1), w_sum=float(tw.sum()),
                      w_sq=float(np.dot(tw, tw)), gamma=gamma, parts_layout=layout,
                      infl_keys=infl_keys, wt_sum=None if tt is None else float(tt.sum()),
                      wt_sq=None if tt is None else float(np.dot(tt, tt)),
                      returns_min=float(ret.min()) if ret.size else np.inf,
                      returns_max=float(ret.max()) if ret.size else -np.inf,
                      rewards_min=r_lo, rewards_max=r_hi,
                      n_censored=int(n_censored),
                      top_weights=largest(np.asarray(tw, dtype=np.float64)))


def largest(w: NDArray[np.float64]) -> NDArray[np.float64]:
    """The :data:`~equicare.ope._pareto.PARETO_KEEP` largest of ``w`` (all of them if fewer)."""
    return heaviest(w[:, None], min(PARETO_KEEP, w.size))[:, 0]


def corrected_sums(sums: StreamSums) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The parts' plain and replicate sums with the linearised Q-model refit added.

    Episode ``e``'s correction of an estimator in ``sums.infl_keys`` is
    ``f (n raw_e - sum_e raw_e)`` (centred, so the plain sums are unchanged) with ``f`` the mean
    step-0 weight for WDR and 1 otherwise, as in the in-memory engine
    (:func:`equicare.ope._evaluate._with_q_refit`).

    Returns
    -------
    total : ndarray of shape (n_parts,)
    boot : ndarray of shape (n_boot, n_parts)
    """
    n_parts = _n_parts(sums)
    total = sums.total[:n_parts]
    boot = sums.boot[:, :n_parts].copy()
    for col, factor, raw, r_total in _corrections(sums):
        boot[:, col] += factor * (sums.n_episodes * sums.boot[:, raw] - sums.boot_n * r_total)
    return total, boot


def _n_parts(sums: StreamSums) -> int:
    return int(sums.total.size - 1 - len(sums.infl_keys))


def _corrections(sums: StreamSums) -> list[tuple[int, float, int, float]]:
    """``(column, factor, raw influence column, its total)`` of every corrected estimator."""
    _, slices, horizon = sums.parts_layout
    n_parts = _n_parts(sums)
    out = []
    for j, k in enumerate(sums.infl_keys):
        col = slices[k].start
        factor = float(sums.total[col + horizon]) / sums.n_episodes if k == "wdr" else 1.0
        raw = n_parts + 1 + j
        out.append((col, factor, raw, float(sums.total[raw])))
    return out


@dataclass
class SquareSums:
    """Summed squared influences of every estimator, under every weighting.

    Attributes
    ----------
    sq : ndarray of shape (n_keys, n_boot + 1)
        ``sum_e w_be IF_be^2``; column 0 is the full sample (every weight 1), column ``b + 1``
        the Poisson replicate ``b``.
    """

    sq: NDArray[np.float64]

    def __add__(self, other: SquareSums) -> SquareSums:
        return SquareSums(sq=self.sq + other.sq)


@dataclass(frozen=True, eq=False)
class StudentCoefs:
    """What the standard-error pass of a studentized interval needs from the whole panel.

    Every estimator is ``sum_j S_A_j / S_B_j`` of weighted column sums of the parts; its
    influence under weighting ``b`` is ``IF_be = sum_j x_eA_j u_bj - x_eB_j v_bj`` with
    coefficients from that weighting's sums (:func:`~equicare.ope._bootstrap.influence_coefs`),
    known only once the estimates pass has summed every chunk. Small: ``(n_boot + 1, J)`` per
    estimator, ``J`` at most four times the longest episode.

    Attributes
    ----------
    keys : tuple of str
    cols : dict of str to (ndarray, ndarray)
        The columns ``(A, B)`` of each estimator (:func:`~equicare.ope._bootstrap.ratio_terms`).
    u, v : dict of str to ndarray of shape (n_boot + 1, J)
        Row 0: the full sample; row ``b + 1``: replicate ``b``.
    n_parts : int
    corrections : list of (int, float, int, float)
        The linearised Q-model refit (:func:`corrected_sums`).
    n_episodes : int
    n_boot, seed : int
        Of the Poisson weights (:func:`~equicare.ope._resample.poisson_weights`).
    """

    keys: tuple[str, ...]
    cols: dict[str, tuple[NDArray[np.int64], NDArray[np.int64]]]
    u: dict[str, NDArray[np.float64]]
    v: dict[str, NDArray[np.float64]]
    n_parts: int
    corrections: list[tuple[int, float, int, float]]
    n_episodes: int
    n_boot: int
    seed: int

    def weights(self, ids: Any) -> NDArray[np.float64]:
        """The episodes' Poisson weights, shape ``(n_boot, n_episodes)``.

        ``ids`` (n_episodes,): what the weights are keyed by, each episode's person when the
        manifest names ``member`` (:func:`~equicare.ope._resample.resampling_ids`).
        """
        return poisson_weights(episode_keys(ids), self.n_boot, self.seed)

    def squares(self, mat: NDArray[np.float64], ids: Any,
                weights: NDArray[np.float64] | None = None) -> SquareSums:
        """The summed squared influences of a chunk's episodes.

        Parameters
        ----------
        mat : ndarray of shape (n_chunk_episodes, n_columns)
            The chunk's parts as the estimates pass built them (parts, return, raw influences).
        ids : array-like of shape (n_chunk_episodes,)
            The keys of their Poisson weights (:meth:`weights`).
        weights : ndarray of shape (n_boot, n_chunk_episodes), optional
            Their Poisson weights (:meth:`weights`), when already drawn.
        """
        parts = _corrected_parts(mat, self.n_parts, self.corrections, self.n_episodes)
        w = np.vstack([np.ones((1, parts.shape[0])),
                       self.weights(ids) if weights is None else weights])
        sq = np.empty((len(self.keys), self.n_boot + 1))
        for i, k in enumerate(self.keys):
            xa, xb = ratio_columns(parts, *self.cols[k])
            sq[i] = squared_influence(xa, xb, self.u[k], self.v[k], w)
        return SquareSums(sq=sq)


def student_coefs(sums: StreamSums, seed: int) -> StudentCoefs:
    """The :class:`StudentCoefs` of summed statistics (after the estimates pass)."""
    keys, slices, horizon = sums.parts_layout
    total, boot = corrected_sums(sums)
    s_all = np.vstack([total[None, :], boot])
    n_all = np.r_[float(sums.n_episodes), sums.boot_n]
    cols, u, v = {}, {}, {}
    for k in keys:
        a, b = ratio_terms(slices, horizon, k)
        sb = np.where(b[None, :] < 0, n_all[:, None], s_all[:, np.maximum(b, 0)])
        cols[k] = (a, b)
        u[k], v[k] = influence_coefs(s_all[:, a], sb)
    return StudentCoefs(keys=tuple(keys), cols=cols, u=u, v=v, n_parts=_n_parts(sums),
                        corrections=_corrections(sums), n_episodes=sums.n_episodes,
                        n_boot=int(sums.boot_n.size), seed=seed)


def _target_probs(dataset: TrajectoryDataset, policy: Any) -> NDArray[np.float64]:
    dataset = dataset.policy_view()  # a chunk's estimated propensities are not the panel's
    if callable(getattr(policy, "action_probs", None)):
        return np.asarray(policy.action_probs(dataset), dtype=np.float64)
    if callable(policy):
        return np.asarray(policy(dataset), dtype=np.float64)
    raise InvalidParameterError(PARAM_MESSAGE.format(
        name="policy", owner="evaluate_stream",
        expected="a Policy (action_probs(dataset) -> (n_steps, n_actions)) or a callable",
        got=type(policy).__name__))


def logged_propensities(dataset: TrajectoryDataset, policy: Any) -> NDArray[np.float64]:
    """A chunk's propensities of the logged actions, checked (logged or estimated).

    Rows that a policy valued as deployed leaves to the clinicians get 1 (their target is the
    logged action; :mod:`equicare.policy._deployed`), as in memory, and need no propensity.

    Raises
    ------
    DataValidationError
        No propensity column, or a propensity outside (0, 1] on a row the policy decides.
    """
    from equicare.policy._deployed import deployed_propensities

    if dataset.behavior_prob is None:
        raise DataValidationError(
            "Streamed evaluation uses the logged propensities: name the column of the logged "
            "action's probability under current practice as dataset.behavior_prob in the manifest.")
    b = deployed_propensities(policy, dataset,
                              np.asarray(dataset.behavior_prob, dtype=np.float64))
    ok = (b > 0) & (b <= 1 + 1e-9)
    if not np.all(ok):
        bad = np.flatnonzero(~ok)
        raise DataValidationError(
            f"{bad.size} logged propensities are not in (0, 1] (first rows of the chunk: "
            f"{bad[:5].tolist()}); importance weights need the logged action's probability.")
    return b


_NO_PROBS = re.compile(r"(?<!at least )\b(\d+) dataset rows? (?:has|have) no probabilities")


def chunk_policy_error(exc: PolicyError, where: str = "in the first chunk that has any"
                       ) -> PolicyError:
    """``exc`` raised on part of the panel, its count of uncovered rows said as a lower bound.

    The policy file's check counts the rows of the part it was given (a chunk, a sample); the
    panel's count would need another pass, so the message says "at least N dataset rows
    ({where}) have no probabilities".
    """
    msg = str(exc)
    said, n = _NO_PROBS.subn(lambda m: f"at least {m.group(1)} dataset rows ({where}) have no "
                             "probabilities", msg, count=1)
    return exc if n == 0 else PolicyError(said)


def replicate_weights(ids: Any, n_boot: int, seed: int) -> NDArray[np.float64]:
    """The episodes' Poisson bootstrap weights, ``(n_boot, n_episodes)``; none for ``n_boot=0``.

    ``ids`` (n_episodes,) key the weights: each episode's person when the manifest names
    ``member`` (:func:`~equicare.ope._resample.resampling_ids`; a bootstrap of people), else its
    id.

    Without replicates (``n_boot == 0``: jackknife intervals) the array is empty, and the sums
    built from it (``StreamSums.boot``, the levels' other-episodes refit sums) have no rows.
    """
    ids = np.asarray(ids)
    if n_boot == 0:
        return np.zeros((0, ids.shape[0]))
    return poisson_weights(episode_keys(ids), n_boot, seed)


def _corrected_parts(mat: NDArray[np.float64], n_parts: int,
                     corrections: list[tuple[int, float, int, float]], n_episodes: int
                     ) -> NDArray[np.float64]:
    """A chunk's parts with the linearised Q-model refit added (:func:`corrected_sums`)."""
    parts = mat[:, :n_parts].copy()
    for col, factor, raw, r_total in corrections:
        parts[:, col] += factor * (n_episodes * mat[:, raw] - r_total)
    return parts


@dataclass
class JackknifeSums:
    """Summed deviations of the leave-one-episode-out estimates (``n_boot == 0``).

    With ``c_k`` the point estimate of estimator ``k`` and ``theta_(e)`` its estimate without
    episode ``e``, ``dev[k] = sum_e (theta_(e) - c_k)`` and ``dev2[k] = sum_e (theta_(e) -
    c_k)^2``; the last entry holds the same of the episodes' returns about their mean (the
    behaviour value). Centring on the point estimate keeps ``dev2 - dev^2 / n`` (the jackknife's
    sum of squares) free of cancellation.

    Attributes
    ----------
    dev, dev2 : ndarray of shape (n_keys + 1,)
    """

    dev: NDArray[np.float64]
    dev2: NDArray[np.float64]

    def __add__(self, other: JackknifeSums) -> JackknifeSums:
        return JackknifeSums(dev=self.dev + other.dev, dev2=self.dev2 + other.dev2)

    def ss(self, n: int) -> NDArray[np.float64]:
        """``sum_e (x_e - mean x)^2`` of every entry, over ``n`` episodes."""
        return np.asarray(np.maximum(self.dev2 - self.dev ** 2 / max(n, 1), 0.0))

    def se(self, n: int) -> NDArray[np.float64]:
        """The estimators' jackknife standard errors, then the behaviour value's.

        As in memory: ``sqrt((n - 1) / n * ss)`` of the leave-one-out estimates
        (:func:`~equicare.ope._bootstrap.jackknife_se`) and ``std(returns, ddof=1) / sqrt(n)``;
        0 for a single episode.
        """
        ss = self.ss(n)
        out = np.array([jackknife_se(float(x), n) for x in ss])
        out[-1] = float(np.sqrt(ss[-1] / (n - 1) / n)) if n > 1 else 0.0
        return out


@dataclass(frozen=True, eq=False)
class JackknifeCoefs:
    """What the jackknife pass needs from the whole panel (``n_boot == 0``).

    A leave-one-episode-out estimate is the estimator's combination of ``total - parts_e``
    (:func:`~equicare.ope._core.jackknife_estimates`), so once the estimates pass has summed
    every chunk, one more pass forms each chunk's leave-one-out estimates and sums their
    deviations (:class:`JackknifeSums`): the driver never holds a per-episode array of the
    panel. The same protocol as :class:`StudentCoefs` (the squares pass runs either).

    Attributes
    ----------
    keys : tuple of str
    layout : EpisodeParts
        The parts' layout (empty matrix).
    total : ndarray of shape (n_parts,)
        The parts' sums over the whole panel (or level).
    centre : ndarray of shape (n_keys + 1,)
        The point estimates, then the mean return.
    n_parts : int
    corrections : list of (int, float, int, float)
        The linearised Q-model refit (:func:`corrected_sums`).
    n_episodes : int
    """

    keys: tuple[str, ...]
    layout: EpisodeParts
    total: NDArray[np.float64]
    centre: NDArray[np.float64]
    n_parts: int
    corrections: list[tuple[int, float, int, float]]
    n_episodes: int

    def weights(self, ids: Any) -> NDArray[np.float64]:
        """No replicates: shape ``(0, n_episodes)``."""
        return np.zeros((0, np.asarray(ids).shape[0]))

    def squares(self, mat: NDArray[np.float64], ids: Any,
                weights: NDArray[np.float64] | None = None) -> JackknifeSums:
        """The summed deviations of a chunk's leave-one-episode-out estimates.

        Parameters
        ----------
        mat : ndarray of shape (n_chunk_episodes, n_columns)
            The chunk's parts as the estimates pass built them (parts, return, raw influences).
        ids, weights
            Unused (the protocol of :meth:`StudentCoefs.squares`).
        """
        parts = _corrected_parts(mat, self.n_parts, self.corrections, self.n_episodes)
        m = parts.shape[0]
        loo = combine(self.layout, self.total[None, :] - parts,
                      np.full(m, self.n_episodes - 1.0))
        dev = np.empty((len(self.keys) + 1, m))
        for i, k in enumerate(self.keys):
            dev[i] = loo[k] - self.centre[i]
        dev[-1] = mat[:, self.n_parts] - self.centre[-1]
        return JackknifeSums(dev=dev.sum(axis=1), dev2=(dev * dev).sum(axis=1))


def jackknife_coefs(sums: StreamSums) -> JackknifeCoefs:
    """The :class:`JackknifeCoefs` of summed statistics (after the estimates pass)."""
    keys, slices, horizon = sums.parts_layout
    n_parts = _n_parts(sums)
    total = np.asarray(sums.total[:n_parts], dtype=np.float64)
    layout = EpisodeParts(matrix=np.zeros((0, n_parts)), slices=slices, keys=keys,
                          horizon=horizon)
    n = float(sums.n_episodes)
    point = combine(layout, total, np.asarray(n))
    centre = np.array([float(point[k]) for k in keys] + [float(sums.total[n_parts]) / n])
    return JackknifeCoefs(keys=tuple(keys), layout=layout, total=total, centre=centre,
                          n_parts=n_parts, corrections=_corrections(sums),
                          n_episodes=sums.n_episodes)


def pass_coefs(sums: StreamSums, seed: int) -> StudentCoefs | JackknifeCoefs:
    """The second pass's coefficients: studentized replicates, or the jackknife without any."""
    if sums.boot_n.size == 0:
        return jackknife_coefs(sums)
    return student_coefs(sums, seed)
