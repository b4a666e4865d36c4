"""Array-level core of every off-policy estimator: one set of arrays, all estimators at once.

Everything in :mod:`equicare.ope` reduces to :class:`OPEInputs` (rewards, episode offsets, the
per-step importance ratios ``rho``, and optionally ``Q(s_t, a_t)`` and
``V(s_t) = sum_a pi(a|s_t) Q(s_t, a)``). From these arrays, :func:`episode_parts` builds one matrix
of per-episode *parts* (sums that each estimator combines), so that

* the point estimate is a combination of the column sums of the parts,
* a bootstrap replicate is the same combination of ``counts @ parts`` (one matrix product for
  all replicates, self-normalised estimators re-normalised inside each replicate),
* a leave-one-episode-out (jackknife) estimate is the combination of ``total - parts[e]``.

Episodes of different lengths are laid out on an ``(n_episodes, max_len)`` grid. Cells after an
episode's end carry reward 0, ``Q = V = 0`` and ratio 1, i.e. the episode sits in an absorbing
state that neither earns reward nor changes its weight; nothing from the padding enters a result
(see :func:`episode_parts` for the normalisation of the weighted per-decision estimators).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE, check_param

__all__ = [
    "OPEInputs",
    "EstimatorKey",
    "ESTIMATOR_KEYS",
    "IS_TYPE",
    "WEIGHTED",
    "EpisodeParts",
    "episode_parts",
    "combine",
    "point_estimates",
]

EstimatorKey = Literal["is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr", "bandit_dr"]

#: Keys of the seven sequential estimators (Contract 3) in report order.
ESTIMATOR_KEYS: tuple[str, ...] = ("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr")
#: Every key the core knows (the single-step doubly robust ``bandit_dr`` is opt-in).
ALL_KEYS: tuple[str, ...] = (*ESTIMATOR_KEYS, "bandit_dr")
#: Estimators that rely on importance weights only (biased without support).
IS_TYPE: tuple[str, ...] = ("is", "wis", "pdis", "wpdis")
#: Estimators that use importance weights (the IS type and the doubly robust ones).
WEIGHTED: tuple[str, ...] = (*IS_TYPE, "dr", "wdr")
#: Estimators that need a Q-model.
Q_TYPE: tuple[str, ...] = ("fqe", "dr", "wdr", "bandit_dr")

Normalization = Literal["absorbing", "alive"]


def _as_f64(a: Any, name: str, n: int) -> NDArray[np.float64]:
    arr = np.ascontiguousarray(a, dtype=np.float64)
    if arr.shape != (n,):
        raise InvalidParameterError(f"{name} must have shape ({n},), got {arr.shape}.")
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr))
        raise InvalidParameterError(f"{name} has {bad.size} non-finite values "
                         f"(first rows: {bad[:5].tolist()}).")
    return arr


@dataclass(frozen=True, eq=False)
class OPEInputs:
    """The arrays every estimator works on.

    Parameters
    ----------
    rewards : ndarray of shape (n_steps,)
        Shaped reward of each row.
    episode_offsets : ndarray of shape (n_episodes + 1,)
        Rows of episode ``e`` are ``episode_offsets[e]:episode_offsets[e + 1]``.
    gamma : float
        Discount in (0, 1]; the value is ``E[sum_t gamma^t r_t]`` (Contract 1).
    rho : ndarray of shape (n_steps,)
        Per-step importance ratio ``pi_e(a_t|s_t) / pi_b(a_t|s_t)`` of the logged action.
    q_sa : ndarray of shape (n_steps,), optional
        ``Q(s_t, a_t)`` of the target policy at the logged action.
    v_s : ndarray of shape (n_steps,), optional
        ``V(s_t) = sum_a pi_e(a|s_t) Q(s_t, a)``.
    horizon : int, optional
        Width of the episode grid when it must exceed this set's longest episode: a chunk of a
        larger panel lays its episodes out on the whole panel's grid so that its per-step parts
        add up with the other chunks' (the extra cells are absorbing, as after any episode end).
    """

    rewards: NDArray[np.float64]
    episode_offsets: NDArray[np.int64]
    gamma: float
    rho: NDArray[np.float64]
    q_sa: NDArray[np.float64] | None = None
    v_s: NDArray[np.float64] | None = None
    horizon: int | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        offs = np.ascontiguousarray(self.episode_offsets, dtype=np.int64)
        if offs.ndim != 1 or offs.size < 2 or offs[0] != 0 or np.any(np.diff(offs) <= 0):
            raise InvalidParameterError("episode_offsets must start at 0 and increase strictly "
                             "(at least one episode, no empty episode).")
        n = int(offs[-1])
        object.__setattr__(self, "episode_offsets", offs)
        object.__setattr__(self, "rewards", _as_f64(self.rewards, "rewards", n))
        rho = _as_f64(self.rho, "rho", n)
        if (rho < 0).any():
            bad = np.flatnonzero(rho < 0)
            raise InvalidParameterError(f"rho must be >= 0; {bad.size} rows are negative "
                             f"(first rows: {bad[:5].tolist()}).")
        object.__setattr__(self, "rho", rho)
        for name in ("q_sa", "v_s"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _as_f64(v, name, n))
        check_param(self.gamma, "gamma", "OPEInputs", kind=(float, int), low=0.0, high=1.0,
                    low_inclusive=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        *,
        rewards: Any,
        episode_offsets: Any,
        gamma: float,
        actions: Any,
        target_probs: Any,
        behavior_prob: Any,
        q: Any | None = None,
        horizon: int | None = None,
    ) -> OPEInputs:
        """Build the inputs from logged actions, both policies' probabilities and a Q matrix.

        Parameters
        ----------
        rewards : array-like of shape (n_steps,)
        episode_offsets : array-like of shape (n_episodes + 1,)
        gamma : float
        actions : array-like of shape (n_steps,)
            Logged flat actions.
        target_probs : array-like of shape (n_steps, n_actions)
            ``pi_e(a|s_t)`` for every action.
        behavior_prob : array-like of shape (n_steps,)
            ``pi_b(a_t|s_t)`` of the logged action (must be > 0).
        q : array-like of shape (n_steps, n_actions), optional
            ``Q(s_t, a)`` of the target policy for every action.
        horizon : int, optional
            Grid width, when larger than the longest episode (see the class docstring).
        """
        a = np.asarray(actions, dtype=np.int64)
        pe = np.asarray(target_probs, dtype=np.float64)
        n = a.shape[0]
        if pe.ndim != 2 or pe.shape[0] != n:
            raise InvalidParameterError(
                f"target_probs must have shape ({n}, n_actions), got {pe.shape}.")
        rows = np.arange(n)
        b = _as_f64(behavior_prob, "behavior_prob", n)
        if (b <= 0).any():
            bad = np.flatnonzero(b <= 0)
            raise InvalidParameterError(f"behavior_prob must be > 0; {bad.size} rows are not "
                             f"(first rows: {bad[:5].tolist()}).")
        rho = pe[rows, a] / b
        q_sa = v_s = None
        if q is not None:
            qm = np.asarray(q, dtype=np.float64)
            if qm.shape != pe.shape:
                raise InvalidParameterError(f"q must have shape {pe.shape}, got {qm.shape}.")
            q_sa = qm[rows, a]
            v_s = np.einsum("ij,ij->i", qm, pe)
        return cls(rewards=rewards, episode_offsets=episode_offsets, gamma=float(gamma), rho=rho,
                   q_sa=q_sa, v_s=v_s, horizon=horizon)

    # ------------------------------------------------------------------ sizes and layout
    @property
    def n_steps(self) -> int:
        """Number of rows."""
        return int(self.episode_offsets[-1])

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return int(self.episode_offsets.size - 1)

    @property
    def lengths(self) -> NDArray[np.int64]:
        """Rows per episode, shape ``(n_episodes,)``."""
        return np.diff(self.episode_offsets)

    @property
    def max_len(self) -> int:
        """Width of the episode grid: the longest episode, or ``horizon`` when larger."""
        longest = int(self.lengths.max())
        return longest if self.horizon is None else max(longest, int(self.horizon))

    def _grid_index(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        if "grid" not in self._cache:
            lengths = self.lengths
            e = np.repeat(np.arange(self.n_episodes, dtype=np.int64), lengths)
            t = np.arange(self.n_steps, dtype=np.int64) - np.repeat(self.episode_offsets[:-1],
                                                                   lengths)
            self._cache["grid"] = (e, t)
        return self._cache["grid"]  # type: ignore[no-any-return]

    @property
    def episode_index(self) -> NDArray[np.int64]:
        """Episode of each row, shape ``(n_steps,)``."""
        return self._grid_index()[0]

    @property
    def step(self) -> NDArray[np.int64]:
        """Position of each row in its episode, shape ``(n_steps,)``."""
        return self._grid_index()[1]

    def grid(self, values: NDArray[Any], fill: float = 0.0) -> NDArray[np.float64]:
        """Lay a row array out on the ``(n_episodes, max_len)`` grid, ``fill`` after the end."""
        e, t = self._grid_index()
        out = np.full((self.n_episodes, self.max_len), fill, dtype=np.float64)
        out[e, t] = values
        return out

    def alive(self) -> NDArray[np.bool_]:
        """Return True where an episode has a row at step ``t``, ``(n_episodes, max_len)``."""
        return np.arange(self.max_len)[None, :] < self.lengths[:, None]

    # ------------------------------------------------------------------ subsets and variants
    def subset(self, episodes: NDArray[Any] | Sequence[int]) -> OPEInputs:
        """Restrict to some episodes (positions or a boolean mask), in that order."""
        ep = np.asarray(episodes)
        if ep.dtype == bool:
            ep = np.flatnonzero(ep)
        ep = ep.astype(np.int64)
        if ep.size == 0:
            raise InvalidParameterError("Cannot take a subset with no episodes.")
        lengths = self.lengths[ep]
        offsets = np.zeros(ep.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rows = (np.repeat(self.episode_offsets[ep] - offsets[:-1], lengths)
                + np.arange(offsets[-1], dtype=np.int64))
        return OPEInputs(
            rewards=self.rewards[rows], episode_offsets=offsets, gamma=self.gamma,
            rho=self.rho[rows],
            q_sa=None if self.q_sa is None else self.q_sa[rows],
            v_s=None if self.v_s is None else self.v_s[rows],
        )

    def with_rho(self, rho: NDArray[np.float64]) -> OPEInputs:
        """Return the same inputs with other importance ratios."""
        return OPEInputs(rewards=self.rewards, episode_offsets=self.episode_offsets,
                         gamma=self.gamma, rho=rho, q_sa=self.q_sa, v_s=self.v_s)

    def with_q(self, q_sa: NDArray[np.float64] | None, v_s: NDArray[np.float64] | None
               ) -> OPEInputs:
        """Return the same inputs with another Q-model."""
        return OPEInputs(rewards=self.rewards, episode_offsets=self.episode_offsets,
                         gamma=self.gamma, rho=self.rho, q_sa=q_sa, v_s=v_s)

    # ------------------------------------------------------------------ weights
    def cumulative_weights(self, truncate: float | None = None) -> NDArray[np.float64]:
        """Cumulative importance weights ``w_t = prod_{k<=t} rho_k`` on the grid.

        After an episode's end the last weight is carried forward (absorbing state, ratio 1).

        Parameters
        ----------
        truncate : float, optional
            Cap every cumulative weight at this value, ``min(w_t, truncate)``.

        Returns
        -------
        ndarray of shape (n_episodes, max_len)
        """
        key = "w"
        if key not in self._cache:
            self._cache[key] = np.cumprod(self.grid(self.rho, fill=1.0), axis=1)
        w: NDArray[np.float64] = self._cache[key]
        if truncate is not None:
            w = np.minimum(w, truncate)
        return w

    def row_weights(self, truncate: float | None = None
                    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
                               NDArray[np.float64]]:
        """The cumulative weights on the grid, and per row the discount, ``w_t`` and ``w_{t-1}``.

        Returns
        -------
        w : ndarray of shape (n_episodes, max_len)
        disc, w_row, w_prev : ndarray of shape (n_steps,)
            ``gamma^t``, the row's cumulative weight and the one before it (1 at ``t = 0``).
        """
        w = self.cumulative_weights(truncate)
        e, t = self.episode_index, self.step
        disc = self.gamma ** t.astype(np.float64)
        return w, disc, w[e, t], np.where(t > 0, w[e, np.maximum(t - 1, 0)], 1.0)

    def trajectory_weights(self, truncate: float | None = None) -> NDArray[np.float64]:
        """Trajectory weights ``W_e = prod_t rho_t`` (optionally truncated), ``(n_episodes,)``."""
        return self.cumulative_weights(truncate)[:, -1]

    def returns(self) -> NDArray[np.float64]:
        """Discounted return of each episode, shape ``(n_episodes,)``."""
        disc = self.gamma ** self.step.astype(np.float64)
        return np.add.reduceat(self.rewards * disc, self.episode_offsets[:-1])


# ---------------------------------------------------------------------- episode parts
@dataclass(frozen=True)
class EpisodeParts:
    """Per-episode parts of a set of estimators and how to combine their sums.

    Attributes
    ----------
    matrix : ndarray of shape (n_episodes, n_parts)
        Parts of every estimator side by side.
    slices : dict of str to slice
        Columns of each estimator.
    keys : tuple of str
        Estimators, in order.
    horizon : int
        Grid width ``max_len`` (columns of the per-step parts).
    sizes : ndarray of shape (n_rows,), optional
        Episodes summed into each row (:meth:`by_cluster`: one row per person who re-enrols);
        None when each row is one episode.
    """

    matrix: NDArray[np.float64]
    slices: dict[str, slice]
    keys: tuple[str, ...]
    horizon: int
    sizes: NDArray[np.float64] | None = None

    @property
    def n_episodes(self) -> int:
        """Episodes behind the rows (the rows themselves unless they are clusters)."""
        return int(self.matrix.shape[0] if self.sizes is None else round(self.sizes.sum()))

    def total_weight(self, weights: NDArray[np.float64]) -> NDArray[np.float64]:
        """Episodes counted by each weighting of the rows, shape ``(k,)`` for ``(k, n_rows)``."""
        return weights.sum(axis=-1) if self.sizes is None else weights @ self.sizes

    def by_cluster(self, codes: NDArray[np.int64]) -> EpisodeParts:
        """The parts summed per cluster (a person's episodes), one row per cluster.

        Every estimator is a ratio of column sums, so the estimates do not change; resampling
        the rows then resamples people with all their episodes (a cluster bootstrap), and the
        influence of a row is its person's summed influence.

        Parameters
        ----------
        codes : ndarray of shape (n_rows,), int
            Cluster of each row, ``0 .. n_clusters - 1`` (each one used).
        """
        codes = np.asarray(codes, dtype=np.int64)
        k = int(codes.max()) + 1 if codes.size else 0
        n = self.matrix.shape[0]
        agg = sparse.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(k, n))
        size = np.ones(n) if self.sizes is None else self.sizes
        return EpisodeParts(matrix=np.asarray(agg @ self.matrix), slices=self.slices,
                            keys=self.keys, horizon=self.horizon,
                            sizes=np.asarray(agg @ size, dtype=np.float64))


def _check_keys(keys: Sequence[str], inputs: OPEInputs) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(keys))
    unknown = [k for k in out if k not in ALL_KEYS]
    if unknown:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="estimators", owner="episode_parts",
            expected="a list of " + ", ".join(repr(k) for k in ALL_KEYS), got=unknown))
    if any(k in Q_TYPE for k in out) and (inputs.q_sa is None or inputs.v_s is None):
        need = [k for k in out if k in Q_TYPE]
        raise InvalidParameterError(
            f"Estimators {need} need a Q-model (q_sa and v_s); none was given.")
    return out


def episode_parts(
    inputs: OPEInputs,
    keys: Sequence[str] = ESTIMATOR_KEYS,
    *,
    truncate: float | None = None,
    normalization: Normalization = "absorbing",
) -> EpisodeParts:
    r"""Per-episode parts of the requested estimators.

    With cumulative weights :math:`w_{e,t} = \prod_{k \le t} \rho_{e,k}` (optionally truncated at
    ``c``: :math:`\min(w_{e,t}, c)`), :math:`w_{e,-1} = 1`, discount :math:`\gamma^t`, the
    estimators are (Precup et al. 2000; Jiang & Li 2016; Thomas & Brunskill 2016):

    .. math::

        \mathrm{IS} &= \frac1n \sum_e w_{e,T_e-1} G_e, \qquad
        \mathrm{WIS} = \frac{\sum_e w_{e,T_e-1} G_e}{\sum_e w_{e,T_e-1}} \\
        \mathrm{PDIS} &= \frac1n \sum_e \sum_t \gamma^t w_{e,t} r_{e,t}, \qquad
        \mathrm{WPDIS} = \sum_t \gamma^t \frac{\sum_e w_{e,t} r_{e,t}}{\sum_e w_{e,t}} \\
        \mathrm{DR} &= \frac1n \sum_e \sum_t \gamma^t \big[w_{e,t}(r_{e,t} - \hat Q_{e,t})
                       + w_{e,t-1} \hat V_{e,t}\big] \\
        \mathrm{WDR} &= \sum_t \gamma^t \Big[\frac{\sum_e w_{e,t}(r_{e,t} - \hat Q_{e,t})}
                        {\sum_e w_{e,t}} + \frac{\sum_e w_{e,t-1}\hat V_{e,t}}{\sum_e w_{e,t-1}}
                        \Big] \\
        \mathrm{FQE} &= \frac1n \sum_e \hat V_{e,0}, \qquad
        \mathrm{BanditDR} = \frac{1}{N}\sum_{i} \big[\rho_i (r_i - \hat Q_i) + \hat V_i\big]

    The ``bandit_dr`` mode treats every row ``i`` (``N`` rows) as its own one-step problem,
    with the per-step (not cumulative) ratio, truncated at ``c`` if asked.

    Variable lengths. With ``normalization="absorbing"`` (default) the denominators of WPDIS and
    WDR sum over *all* episodes: an episode that ended before ``t`` keeps its last cumulative
    weight (it sits in an absorbing state with ratio 1 and reward 0). This keeps the weights'
    mean equal to 1 in expectation at every ``t``, so both estimators stay consistent when the
    target policy changes how long episodes last. ``normalization="alive"`` sums only over
    episodes still running at ``t``; it estimates ``sum_t gamma^t E_pi[r_t | alive at t]`` and
    is biased whenever some episodes end early. With equal lengths both are identical. A step
    ``t`` whose denominator is 0 (all weights 0) contributes 0.

    Parameters
    ----------
    inputs : OPEInputs
    keys : sequence of str
        Estimators among ``is, wis, pdis, wpdis, fqe, dr, wdr, bandit_dr``.
    truncate : float, optional
        Cap on the cumulative importance weights (per-step ratio for ``bandit_dr``).
    normalization : {"absorbing", "alive"}

    Returns
    -------
    EpisodeParts
    """
    keys = _check_keys(keys, inputs)
    check_param(truncate, "truncate", "episode_parts", kind=(float, int), low=0.0,
                low_inclusive=False, allow_none=True)
    check_param(normalization, "normalization", "episode_parts", choices=("absorbing", "alive"))
    n_ep, horizon = inputs.n_episodes, inputs.max_len
    disc = inputs.gamma ** np.arange(horizon, dtype=np.float64)
    need_grid = any(k in keys for k in WEIGHTED)
    blocks: list[NDArray[np.float64]] = []
    slices: dict[str, slice] = {}
    col = 0

    def add(key: str, *arrs: NDArray[np.float64]) -> None:
        nonlocal col
        mats = [a[:, None] if a.ndim == 1 else a for a in arrs]
        width = sum(m.shape[1] for m in mats)
        blocks.extend(mats)
        slices[key] = slice(col, col + width)
        col += width

    if need_grid:
        w = inputs.cumulative_weights(truncate)
        r = inputs.grid(inputs.rewards)
        den = w if normalization == "absorbing" else w * inputs.alive()
        dr_w = r * disc
        ret = dr_w.sum(axis=1)
        w_last = w[:, -1]
        if "dr" in keys or "wdr" in keys:
            assert inputs.q_sa is not None and inputs.v_s is not None
            q = inputs.grid(inputs.q_sa)
            v = inputs.grid(inputs.v_s)
            w_prev = np.empty_like(w)
            w_prev[:, 0] = 1.0
            w_prev[:, 1:] = w[:, :-1]
            resid = disc * w * (r - q)
            ctrl = disc * w_prev * v
    for k in keys:
        if k == "is":
            add(k, w_last * ret)
        elif k == "wis":
            add(k, w_last * ret, w_last)
        elif k == "pdis":
            add(k, (w * dr_w).sum(axis=1))
        elif k == "wpdis":
            add(k, w * dr_w, den)
        elif k == "dr":
            add(k, resid.sum(axis=1) + ctrl.sum(axis=1))
        elif k == "wdr":
            den_prev = np.empty_like(den)
            den_prev[:, 0] = 1.0
            den_prev[:, 1:] = den[:, :-1] if normalization == "absorbing" else (
                w[:, :-1] * inputs.alive()[:, 1:])
            add(k, resid, den, ctrl, den_prev)
        elif k == "fqe":
            assert inputs.v_s is not None
            add(k, inputs.v_s[inputs.episode_offsets[:-1]])
        elif k == "bandit_dr":
            assert inputs.q_sa is not None and inputs.v_s is not None
            rho = inputs.rho if truncate is None else np.minimum(inputs.rho, truncate)
            score = rho * (inputs.rewards - inputs.q_sa) + inputs.v_s
            add(k, np.add.reduceat(score, inputs.episode_offsets[:-1]),
                inputs.lengths.astype(np.float64))
    matrix = np.ascontiguousarray(np.concatenate(blocks, axis=1)) if blocks else np.zeros((n_ep, 0))
    return EpisodeParts(matrix=matrix, slices=slices, keys=keys, horizon=horizon)


def _ratio(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    """``num / den`` with 0 where ``den == 0``."""
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape))
    np.divide(num, den, out=out, where=den != 0)
    return out


def combine(parts: EpisodeParts, sums: NDArray[np.float64], counts: NDArray[np.float64]
            ) -> dict[str, NDArray[np.float64]]:
    """Turn (weighted) column sums of the parts into estimates.

    Parameters
    ----------
    parts : EpisodeParts
    sums : ndarray of shape (..., n_parts)
        ``weights @ parts.matrix`` for one or many episode weightings (bootstrap counts,
        leave-one-out, population weights).
    counts : ndarray of shape (...)
        Total weight of the episodes (``n`` for the plain estimate).

    Returns
    -------
    dict of str to ndarray of shape (...)
    """
    out: dict[str, NDArray[np.float64]] = {}
    h = parts.horizon
    for k in parts.keys:
        s = sums[..., parts.slices[k]]
        if k in ("is", "pdis", "dr", "fqe"):
            out[k] = _ratio(s[..., 0], counts)
        elif k == "wis":
            out[k] = _ratio(s[..., 0], s[..., 1])
        elif k == "wpdis":
            out[k] = _ratio(s[..., :h], s[..., h:]).sum(axis=-1)
        elif k == "wdr":
            out[k] = (_ratio(s[..., :h], s[..., h:2 * h]).sum(axis=-1)
                      + _ratio(s[..., 2 * h:3 * h], s[..., 3 * h:]).sum(axis=-1))
        elif k == "bandit_dr":
            out[k] = _ratio(s[..., 0], s[..., 1])
    return out


#: Why a self-normalised estimate has no value: its denominator, the sum of the weights, is 0.
MSG_ALL_WEIGHTS_ZERO = ("every episode's importance weight is 0 (the policy gives probability 0 "
                        "to a logged action in every episode), so the self-normalised estimate "
                        "is undefined")


def undefined_estimates(parts: EpisodeParts, total: NDArray[np.float64]) -> dict[str, str]:
    """Estimators whose point estimate is undefined, with the reason.

    WIS (and WPDIS) divide by the sum of the episodes' weights; when every weight is 0 (every
    step of WPDIS) there is no estimate, not an estimate of 0.

    Parameters
    ----------
    parts : EpisodeParts
        Layout of the columns (``keys``, ``slices``, ``horizon``); its matrix is not read.
    total : ndarray of shape (n_parts,)
        Column sums of the parts over all episodes.

    Returns
    -------
    dict of str to str
        ``{key: reason}``; empty when every estimate is defined.
    """
    out: dict[str, str] = {}
    h = parts.horizon
    for k in parts.keys:
        s = total[parts.slices[k]]
        if k == "wis" and not s[1] != 0:
            out[k] = MSG_ALL_WEIGHTS_ZERO
        elif k == "wpdis" and not np.any(s[h:] != 0):
            out[k] = MSG_ALL_WEIGHTS_ZERO
    return out


def point_estimates(parts: EpisodeParts) -> dict[str, float]:
    """Plain estimates (every episode weight 1)."""
    sums = parts.matrix.sum(axis=0)
    n = np.asarray(float(parts.n_episodes))
    return {k: float(v) for k, v in combine(parts, sums, n).items()}


def jackknife_estimates(parts: EpisodeParts) -> dict[str, NDArray[np.float64]]:
    """Leave-one-episode-out estimates, each of shape ``(n_episodes,)`` (vectorised).

    Leave-one-person-out, one per row, when the rows are people (:meth:`EpisodeParts.by_cluster`).
    """
    total = parts.matrix.sum(axis=0)
    n = parts.matrix.shape[0]
    loo = total[None, :] - parts.matrix
    if parts.sizes is not None:
        return combine(parts, loo, parts.sizes.sum() - parts.sizes)
    return combine(parts, loo, np.full(n, n - 1.0))

