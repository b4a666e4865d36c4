"""Support (positivity) diagnostics: target mass on actions practice (almost) never takes."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import SupportWarning
from equicare.ope._core import IS_TYPE
from equicare.privacy import tail_quantile
from equicare.utils import check_param, row_blocks

__all__ = ["SupportReport", "StreamSupportReport", "named_estimators", "support_diagnostics",
           "model_support_diagnostics",
           "logged_support_diagnostics", "LoggedSupport", "CellObserved", "cell_observed",
           "SUPPORT_THRESHOLD", "SUPPORT_WARN_PCT", "SUPPORT_MESSAGE", "SUPPORT_HEAD",
           "unsupported_mass", "audited_mass", "FAST_SUPPORT_ROWS", "FAST_SUPPORT_ONEHOT",
           "logged_once", "beyond_practice", "acting_rows", "PRACTICE_TEXT"]

#: Rows (at most, whole episodes) the fast numeric behaviour model of the logged-propensity
#: support check is fitted on.
FAST_SUPPORT_ROWS = 20_000
#: One-hot columns up to which categorical states also enter that numeric model.
FAST_SUPPORT_ONEHOT = 32

#: Estimated behaviour probability below which an action counts as (almost) never taken.
SUPPORT_THRESHOLD = 1e-3
#: Cells (rows x actions) of the 0/1 unsupported matrix made at once by
#: :meth:`LoggedSupport.block_mass`: about 2 MB as float64, so it is summed while in cache (a
#: whole block of a policy pass, 66,666 rows x 300 actions, took 3 to 6 times as long).
MASS_CELLS = 262_144
#: Share (%) of target mass on unsupported actions beyond current practice's own expected share
#: on the same check (:func:`beyond_practice`, :func:`logged_once`; the share itself without
#: categorical states) above which a SupportWarning is emitted.
SUPPORT_WARN_PCT = 1.0
#: Message of the SupportWarning (tests match it).
SUPPORT_HEAD = (
    "The target policy puts {pct:.2f}% of its probability mass on actions that current practice "
    "(almost) never takes in that state (estimated behaviour probability < {thr:g}{cat}).")
#: The whole message when several estimators of both kinds were asked for.
SUPPORT_MESSAGE = SUPPORT_HEAD + (
    " {biased} are biased by it: importance weighting cannot see those actions, so they estimate "
    "the value of a different policy. {q_based} rely on the Q-model's extrapolation for that mass."
)
#: The sentence on current practice's own share, after the head when the check uses categorical
#: cells (tests match it).
PRACTICE_TEXT = (
    "Current practice itself would put an expected {base:.2f}% of its mass on actions never "
    "logged in the row's categorical state (its rows whose action was logged only once there), "
    "so about {excess:.2f}% of the target's mass is on actions practice never takes.")


def beyond_practice(share_pct: float, practice_pct: float) -> float:
    """The target's estimated share (%) on actions practice never takes, beyond chance.

    ``(share - practice) / (1 - practice)`` in shares: a target putting ``f`` of its mass on
    actions practice never takes and the rest like practice shows ``f + (1 - f) m`` on the
    check, where ``m`` is practice's own share of never-logged pairs (``practice_pct``,
    :func:`logged_once`). ``share_pct`` itself when ``practice_pct`` is 0 (no categorical
    states); negative when the target shows less than practice.

    Parameters
    ----------
    share_pct, practice_pct : float
        In percent.
    """
    if practice_pct >= 100.0:  # every row's action logged once: the cells tell nothing
        return share_pct - practice_pct
    return 100.0 * (share_pct - practice_pct) / (100.0 - practice_pct)


class _SupportText:
    """The warning rule and text shared by the in-memory and the streamed reports."""

    share_pct: float
    threshold: float
    uses_categorical: bool
    n_rows: int
    biased_estimators: tuple[str, ...]
    extrapolating_estimators: tuple[str, ...]
    practice_share_pct: float

    @property
    def excess_pct(self) -> float:
        """The estimated share (%) beyond current practice's own (:func:`beyond_practice`)."""
        return beyond_practice(self.share_pct, self.practice_share_pct)

    @property
    def warn(self) -> bool:
        """True when the share beyond practice's own exceeds :data:`SUPPORT_WARN_PCT`."""
        return self.excess_pct > SUPPORT_WARN_PCT

    def message(self) -> str:
        """Return the SupportWarning text.

        :data:`SUPPORT_MESSAGE` when several estimators of both kinds were asked for; a
        sentence is left out when its list is empty, and its verb is singular for one.
        """
        parts = [SUPPORT_HEAD.format(
            pct=self.share_pct, thr=self.threshold,
            cat=", or never logged in that categorical state" if self.uses_categorical else "")]
        if self.uses_categorical:
            parts.append(PRACTICE_TEXT.format(base=self.practice_share_pct,
                                              excess=max(self.excess_pct, 0.0)))
        biased, q_based = self.biased_estimators, self.extrapolating_estimators
        if biased:
            many = len(biased) > 1
            parts.append(f"{', '.join(biased)} {'are' if many else 'is'} biased by it: "
                         "importance weighting cannot see those actions, so "
                         f"{'they estimate' if many else 'it estimates'} the value of a "
                         "different policy.")
        if q_based:
            parts.append(f"{', '.join(q_based)} {'rely' if len(q_based) > 1 else 'relies'} on "
                         "the Q-model's extrapolation for that mass.")
        return " ".join(parts)

    def _dict(self, per_episode: dict[str, float], over_warn_pct: float) -> dict[str, Any]:
        return {
            "share_pct": self.share_pct,
            "practice_share_pct": self.practice_share_pct,
            "threshold": self.threshold,
            "uses_categorical": self.uses_categorical,
            "n_rows": self.n_rows,
            "per_episode_pct": per_episode,
            "episodes_over_warn_pct": over_warn_pct,
            "warning": self.warn,
            "biased_estimators": list(self.biased_estimators),
            "extrapolating_estimators": list(self.extrapolating_estimators),
            "message": self.message() if self.warn else None,
        }


@dataclass(frozen=True)
class SupportReport(_SupportText):
    """Where the target policy leaves the support of the behaviour policy.

    Attributes
    ----------
    share_pct : float
        Expected % of target-policy probability mass on unsupported actions, over all rows.
    per_episode_pct : ndarray of shape (n_episodes,)
        The same share within each episode (mean over its rows).
    threshold : float
        Estimated behaviour probability below which an action is unsupported.
    uses_categorical : bool
        Whether "never logged in that categorical state" also marked actions unsupported.
    n_rows : int
        Rows where the target policy puts positive mass on an unsupported action.
    biased_estimators : tuple of str
        IS-type estimators biased by the missing support (empty when ``share_pct`` is 0).
    extrapolating_estimators : tuple of str
        Q-based estimators that rely on extrapolation for the unsupported mass.
    practice_share_pct : float
        Current practice's own expected share (%) on the same check (:func:`logged_once`):
        the baseline the warning is relative to (0 without categorical states).
    """

    share_pct: float
    per_episode_pct: NDArray[np.float64] = field(repr=False)
    threshold: float
    uses_categorical: bool
    n_rows: int
    biased_estimators: tuple[str, ...]
    extrapolating_estimators: tuple[str, ...]
    practice_share_pct: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (result JSON ``"support"``)."""
        pe = self.per_episode_pct
        return self._dict({"mean": float(pe.mean()), "median": float(np.median(pe)),
                           "p90": float(np.quantile(pe, 0.9)),
                           "p_top11": float(np.quantile(pe, top_level(pe.size)))},
                          float(100.0 * np.mean(pe > SUPPORT_WARN_PCT)))


def top_level(n_episodes: int) -> float:
    """Quantile level of ``p_top11``: at least 11 episodes at or above it.

    ``1 - tail_quantile(n)`` (:func:`equicare.privacy.tail_quantile`). The largest episode's
    share is one member's number; this upper quantile is published instead of the maximum.
    """
    return 1.0 - tail_quantile(n_episodes)


@dataclass(frozen=True)
class StreamSupportReport(_SupportText):
    """:class:`SupportReport` of a streamed panel: the per-episode shares as summaries.

    The same attributes, JSON and warning as :class:`SupportReport`, except that the per-episode
    shares are not kept (memory bounded by the chunk): ``per_episode`` holds their mean and
    ``p_top11`` quantile (:func:`top_level`), median and 90th percentile (from a histogram of
    :data:`~equicare.ope._stream_support.HIST_WIDTH`-point bins, within half a bin of the
    in-memory value), and ``over_warn_pct`` the % of episodes over :data:`SUPPORT_WARN_PCT`.
    """

    share_pct: float
    threshold: float
    uses_categorical: bool
    n_rows: int
    biased_estimators: tuple[str, ...]
    extrapolating_estimators: tuple[str, ...]
    per_episode: dict[str, float] = field(default_factory=dict)
    over_warn_pct: float = 0.0
    practice_share_pct: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (result JSON ``"support"``, as in memory)."""
        return self._dict(dict(self.per_episode), self.over_warn_pct)


def named_estimators(share_pct: float, estimators: tuple[str, ...]
                     ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The biased (IS-type) and the extrapolating (Q-based) estimators when the share is > 0."""
    if share_pct <= 0:
        return (), ()
    return (tuple(k for k in estimators if k in IS_TYPE),
            tuple(k for k in estimators if k not in IS_TYPE))


def support_diagnostics(
    dataset: TrajectoryDataset,
    target_probs: NDArray[np.float64],
    behavior_probs: NDArray[np.float64],
    *,
    observed: NDArray[np.bool_] | None = None,
    threshold: float = SUPPORT_THRESHOLD,
    estimators: tuple[str, ...] = ("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr"),
    warn: bool = True,
) -> SupportReport:
    """Share of target-policy mass on actions with (almost) no behaviour support.

    An action is unsupported at a row when its estimated behaviour probability is below
    ``threshold`` or, when ``observed`` is given, it was never logged in the row's categorical
    state. The warning is relative to current practice's own expected share on that check
    (:func:`logged_once`, from the dataset's cells when ``observed`` is given).

    Parameters
    ----------
    dataset : TrajectoryDataset
    target_probs : ndarray of shape (n_steps, n_actions)
    behavior_probs : ndarray of shape (n_steps, n_actions)
        Estimated behaviour policy (e.g. :meth:`BehaviorModel.action_probs`).
    observed : ndarray of shape (n_steps, n_actions), optional
        Whether each action was logged in the row's categorical state.
    threshold : float
    estimators : tuple of str
        Estimators to name in the report and warning.
    warn : bool
        Emit a :class:`~equicare.exceptions.SupportWarning` when the share exceeds 1%.

    Returns
    -------
    SupportReport
    """
    check_param(threshold, "threshold", "support_diagnostics", kind=float, low=0.0, high=1.0)
    mass = np.empty(target_probs.shape[0])
    for sl in row_blocks(mass.size, target_probs.shape[1]):
        mass[sl] = unsupported_mass(target_probs[sl], behavior_probs[sl],
                                     None if observed is None else observed[sl], threshold)
    practice = None
    if observed is not None and dataset.categorical is not None:
        cells = CellObserved(dataset)
        practice = logged_once(cells.counts, cells.codes, dataset.actions)
    return _report(dataset, mass, threshold, observed is not None, estimators, warn,
                   practice=practice, acting=acting_rows(target_probs))


def model_support_diagnostics(
    dataset: TrajectoryDataset,
    target_probs: NDArray[np.float64],
    behavior_model: Any,
    *,
    threshold: float = SUPPORT_THRESHOLD,
    estimators: tuple[str, ...] = ("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr"),
    warn: bool = True,
    kept: NDArray[np.bool_] | None = None,
) -> SupportReport:
    """:func:`support_diagnostics` against a fitted behaviour model, in row blocks.

    The same report as ``support_diagnostics(dataset, target_probs,
    behavior_model.action_probs(dataset), observed=behavior_model.observed_in_state(dataset))``
    without holding the behaviour model's ``(n_steps, n_actions)`` probabilities.

    Parameters
    ----------
    dataset : TrajectoryDataset
        The behaviour model's fitting data, so that its probabilities are out-of-fold.
    target_probs : ndarray of shape (n_steps, n_actions)
    behavior_model : BehaviorModel
        Fitted; provides ``action_prob_blocks`` and ``observed_in_state``.
    threshold, estimators, warn
        As in :func:`support_diagnostics`.
    kept : ndarray of shape (n_episodes,), bool, optional
        Report on these episodes' rows only (an audit's published groups,
        :func:`audited_mass`); every row is checked first.

    Returns
    -------
    SupportReport
    """
    check_param(threshold, "threshold", "support_diagnostics", kind=float, low=0.0, high=1.0)
    mass = np.empty(dataset.n_steps)
    uses_categorical = False
    for rows, probs in behavior_model.action_prob_blocks(dataset):
        observed = behavior_model.observed_in_state(dataset, rows=rows)
        uses_categorical = observed is not None
        mass[rows] = unsupported_mass(target_probs[rows], probs, observed, threshold)
    practice = None
    if uses_categorical:
        assert dataset.categorical is not None
        practice = logged_once(behavior_model.cat_action_counts_, dataset.categorical,
                               dataset.actions)
    return _report(dataset, mass, threshold, uses_categorical, estimators, warn, kept,
                   practice, acting_rows(target_probs))


class CellObserved:
    """Which actions were logged at each row's level of every categorical column.

    Sparse (level, action) counts per column. With one column: the row's categorical state;
    with several, an action is unobserved when some column's level never saw it (see
    :meth:`equicare.policy.BehaviorModel.observed_in_state`: the columns' combinations are
    usually too thin to tell).
    """

    def __init__(self, dataset: TrajectoryDataset) -> None:
        import scipy.sparse as sp

        assert dataset.categorical is not None
        n_a = dataset.n_actions
        self.codes = np.asarray(dataset.categorical, dtype=np.int64)
        self.counts = []
        for j in range(self.codes.shape[1]):
            n_lv = int(max(len(dataset.categorical_levels[j]), self.codes[:, j].max() + 1))
            c = sp.csr_matrix((np.ones(dataset.n_steps), (self.codes[:, j], dataset.actions)),
                              shape=(n_lv, n_a))
            c.sum_duplicates()
            self.counts.append(c)

    def rows(self, rows: NDArray[np.int64] | slice) -> NDArray[np.bool_]:
        """Observed mask of the rows, shape ``(n_rows, n_actions)``."""
        return self.at(self.codes[rows])

    def at(self, codes: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Observed mask of rows with these categorical codes (same levels).

        Returns an array of shape ``(n_rows, n_actions)``.
        """
        out: NDArray[np.bool_] | None = None
        for j, c in enumerate(self.counts):
            seen = np.asarray(c[np.asarray(codes[:, j], dtype=np.int64)].toarray() > 0)
            out = seen if out is None else out & seen
        assert out is not None
        return out


def cell_observed(dataset: TrajectoryDataset) -> NDArray[np.bool_] | None:
    """Whether each action was logged at the row's categorical levels, ``(n_steps, n_actions)``.

    None when the dataset has no categorical states. Built from sparse (level, action) counts
    per column (:class:`CellObserved`), so memory is linear in rows and levels.
    """
    if dataset.categorical is None or dataset.categorical.shape[1] == 0:
        return None
    return CellObserved(dataset).rows(slice(None))


def logged_once(counts: Sequence[Any], codes: NDArray[Any], actions: NDArray[Any]
                ) -> NDArray[np.bool_]:
    """Rows whose logged action was logged only once at the row's level of some column.

    Current practice's own share on the empirical cell check is the mean of this over the rows
    checked: the leave-one-out estimate of the mass practice puts on actions never logged in
    the row's categorical state (without row ``i``, its action is unlogged there exactly when
    this is True). With one column it is the Good-Turing estimate of each level's unseen mass,
    ``N1 / n`` (actions logged once over rows), averaged over the rows; with several, the
    union the check takes (an action is unlogged when some column's level never saw it). It
    estimates the unseen mass of ``n - 1`` draws, which exceeds that of ``n`` draws by at most
    ``1 / n`` of a level: a slightly high baseline (a level of one row counts fully).

    Parameters
    ----------
    counts : sequence of array-like of shape (n_levels_j, n_actions)
        The ``(level, action)`` counts of every categorical column, dense or sparse, over
        panel rows that include these ones.
    codes : ndarray of shape (n_rows, n_columns)
        The rows' categorical codes.
    actions : ndarray of shape (n_rows,)
        Their logged actions.

    Returns
    -------
    ndarray of shape (n_rows,), bool
    """
    acts = np.asarray(actions, dtype=np.int64)
    out = np.zeros(acts.size, dtype=bool)
    for j, c in enumerate(counts):
        out |= np.asarray(c[np.asarray(codes[:, j], dtype=np.int64), acts]).ravel() <= 1
    return out


def acting_rows(target_probs: NDArray[np.float64]) -> NDArray[np.bool_] | None:
    """Rows where the checked policy acts: its probabilities are not all zero.

    A row a deployed policy leaves to the clinicians has its probabilities zeroed for the
    check (:func:`~equicare.policy._deployed.exempt_rows`: it takes the logged action); there
    the target's share is 0, and practice's own share must not count either. None when the
    policy acts at every row.
    """
    acting = np.asarray(target_probs.sum(axis=1) > 0)
    return None if bool(acting.all()) else acting


class LoggedSupport:
    """The support check for data with logged propensities, fitted once, for any target policy.

    An action is unsupported at a row when it was never logged in the row's categorical cell
    (empirical support from sparse per-cell counts, when there are categorical states) or, with
    numeric states and at most 32 categorical levels in all, when a fast behaviour model gives
    it probability below ``threshold``: one (not cross-fitted) fit on at most 20,000 rows of
    whole episodes, with the numeric states, the one-hot categorical states, the previous action
    and the step. With wide categorical states (more than 32 levels) the cells are fine enough
    and the empirical support is the whole check.

    Parameters
    ----------
    dataset : TrajectoryDataset
    behavior_model : str, default="logistic"
        Estimator of the fast numeric model.
    random_state : int
        Seed of the rows the fast model is fitted on.

    Attributes
    ----------
    summary : dict
        How the check is made (for the result JSON's ``behavior_model``).
    uses_categorical : bool
    random_state : int
        The seed it was built with.
    spec : str
        The fast model's estimator.

    Notes
    -----
    Building it costs a behaviour-model fit and, at the first check, a pass of that model over
    every row; a workflow that checks the same panel several times (``equicare run``'s
    evaluation and audit) builds it once and passes it on (:meth:`reuse`).
    """

    def __init__(self, dataset: TrajectoryDataset, *, behavior_model: Any = "logistic",
                 random_state: int = 0) -> None:
        from dataclasses import replace

        from equicare.policy._behavior import BehaviorModel

        self.dataset = dataset
        self.random_state = int(random_state)
        self.spec = fast_spec(behavior_model)
        has_cat = dataset.categorical is not None and dataset.categorical.shape[1] > 0
        self.uses_categorical = has_cat
        self._cells = CellObserved(dataset) if has_cat else None
        self._practice: NDArray[np.bool_] | None = None
        n_onehot = sum(len(lv) for lv in dataset.categorical_levels) if has_cat else 0
        view = dataset
        if has_cat and n_onehot > FAST_SUPPORT_ONEHOT:
            view = replace(dataset, categorical=None, categorical_names=(),
                           categorical_levels=())
        self._view = view
        self.summary: dict[str, Any] = {"support_check": "logged propensities: empirical per "
                                        "categorical cell" if has_cat else
                                        "logged propensities"}
        self._model: Any = None
        self._bits: NDArray[np.uint8] = np.zeros((0, 0), dtype=np.uint8)
        self._bits_threshold: float | None = None
        # with wide categorical states the cells are the states (and any numeric score is
        # mostly a function of them): a numeric-only model would flag actions clinicians take
        # in the cell
        if not (has_cat and n_onehot > FAST_SUPPORT_ONEHOT) and (
                view.states.shape[1] > 0 or view.categorical is not None):
            rng = np.random.default_rng(random_state)
            order = rng.permutation(view.n_episodes)
            keep = order[: max(1, int(np.searchsorted(np.cumsum(view.episode_lengths[order]),
                                                      FAST_SUPPORT_ROWS)))]
            spec = self.spec
            self._model = BehaviorModel(estimator=spec, n_folds=1, max_iter=100,
                                        random_state=random_state, calibration=False)
            self._model.fit(view.subset(np.sort(keep)))
            self.summary["support_check"] += (
                ", plus a fast numeric behaviour model (" + spec +
                f", {int(view.episode_lengths[keep].sum())} rows, not cross-fitted)")

    @classmethod
    def reuse(cls, given: LoggedSupport | None, dataset: TrajectoryDataset, *,
              behavior_model: Any = "logistic", random_state: int = 0) -> LoggedSupport:
        """``given`` when it is the check this call would build, else a new one.

        ``given`` is reused when it was built on this very dataset object with the same fast
        model and seed, so that passing a check on never changes a number.

        Parameters
        ----------
        given : LoggedSupport or None
        dataset : TrajectoryDataset
        behavior_model : str or estimator
        random_state : int
        """
        if (given is not None and given.dataset is dataset
                and given.spec == fast_spec(behavior_model)
                and given.random_state == int(random_state)):
            return given
        return cls(dataset, behavior_model=behavior_model, random_state=random_state)

    def mass(self, target_probs: NDArray[np.float64], threshold: float = SUPPORT_THRESHOLD
             ) -> NDArray[np.float64]:
        """Target mass on unsupported actions at each row, shape ``(n_steps,)``.

        Parameters
        ----------
        target_probs : ndarray of shape (n_steps, n_actions)
        threshold : float
        """
        check_param(threshold, "threshold", "support_diagnostics", kind=float, low=0.0,
                    high=1.0)
        mass = np.empty(self.dataset.n_steps)
        for sl in row_blocks(self.dataset.n_steps, self.dataset.n_actions):
            mass[sl] = self.block_mass(target_probs[sl], sl, threshold)
        return mass

    def block_mass(self, target_probs: NDArray[np.float64], rows: slice,
                   threshold: float = SUPPORT_THRESHOLD) -> NDArray[np.float64]:
        """Target mass on unsupported actions of a contiguous block of rows.

        For passes that evaluate the policy block by block and never hold its full matrix.

        Parameters
        ----------
        target_probs : ndarray of shape (n_rows, n_actions)
            The policy's probabilities at ``rows``.
        rows : slice
            Rows of the dataset (contiguous).
        threshold : float

        Returns
        -------
        ndarray of shape (n_rows,)
        """
        n_act = self.dataset.n_actions
        bits = self._unsupported_bits(threshold) if self._model is not None else None
        first = rows.indices(self.dataset.n_steps)[0]
        n = target_probs.shape[0]
        out = np.empty(n)
        step = max(1, MASS_CELLS // max(1, n_act))
        for lo in range(0, n, step):  # pieces small enough that the 0/1 matrix stays in cache
            hi = min(lo + step, n)
            sub = slice(first + lo, first + hi)
            unsupported: NDArray[Any]
            if bits is not None:
                unsupported = np.unpackbits(bits[sub], axis=1, count=n_act)
            else:
                assert self._cells is not None
                unsupported = ~self._cells.rows(sub)
            out[lo:hi] = np.einsum("ij,ij->i", target_probs[lo:hi],
                                   unsupported.astype(np.float64))
        return out

    def _unsupported_bits(self, threshold: float) -> NDArray[np.uint8]:
        """The fast model's unsupported (row, action) cells, bit-packed by row.

        They do not depend on the target policy: computed once per threshold, so that checking
        several policies (an audit, the frontier of ``explain``) costs one pass of the
        behaviour model's distributions. Shape ``(n_steps, ceil(n_actions / 8))``.
        """
        if self._bits_threshold != threshold:
            cells = self._cells
            bits = np.zeros((self.dataset.n_steps, (self.dataset.n_actions + 7) // 8),
                            dtype=np.uint8)
            for rows, probs in self._model.action_prob_blocks(self._view):
                unsupported = probs < threshold
                if cells is not None:
                    unsupported |= ~cells.rows(rows)
                bits[rows] = np.packbits(unsupported, axis=1)
            self._bits, self._bits_threshold = bits, threshold
        return self._bits

    def unsupported(self, threshold: float = SUPPORT_THRESHOLD) -> NDArray[np.bool_] | None:
        """The (row, action) pairs current practice (almost) never takes, by the fast model.

        An action is unsupported at a row when the fast behaviour model gives it less than
        ``threshold`` there (or it was never logged in the row's categorical cell). None when
        there is no fast model (wide categorical states: the cells alone decide).

        Parameters
        ----------
        threshold : float

        Returns
        -------
        ndarray of shape (n_steps, n_actions), bool, or None
        """
        if self._model is None:
            return None
        return np.unpackbits(self._unsupported_bits(threshold), axis=1,
                             count=self.dataset.n_actions).astype(bool)

    def report(self, target_probs: NDArray[np.float64], *,
               threshold: float = SUPPORT_THRESHOLD,
               estimators: tuple[str, ...] = ("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr"),
               warn: bool = True, kept: NDArray[np.bool_] | None = None) -> SupportReport:
        """The :class:`SupportReport` of a target policy (see :func:`support_diagnostics`).

        ``kept``: report on these episodes' rows only (:func:`audited_mass`).
        """
        return self.report_mass(self.mass(target_probs, threshold), threshold=threshold,
                                estimators=estimators, warn=warn, kept=kept,
                                acting=acting_rows(target_probs))

    def report_mass(self, mass: NDArray[np.float64], *, threshold: float = SUPPORT_THRESHOLD,
                    estimators: tuple[str, ...] = ("is", "wis", "pdis", "wpdis", "fqe", "dr",
                                                   "wdr"),
                    warn: bool = True, kept: NDArray[np.bool_] | None = None,
                    acting: NDArray[np.bool_] | None = None) -> SupportReport:
        """The :class:`SupportReport` from the unsupported mass of every row.

        ``mass`` has shape ``(n_steps,)``, e.g. filled block by block with :meth:`block_mass`;
        ``kept``: report on these episodes' rows only (:func:`audited_mass`); ``acting``: the
        rows the policy does not leave to the clinicians (default: all; :func:`acting_rows`).
        """
        return _report(self.dataset, mass, threshold, self.uses_categorical, estimators, warn,
                       kept, self.practice_rows(), acting)

    def practice_rows(self) -> NDArray[np.bool_] | None:
        """:func:`logged_once` of the panel's rows (None without categorical states)."""
        if self._cells is None:
            return None
        if self._practice is None:
            self._practice = logged_once(self._cells.counts, self._cells.codes,
                                         self.dataset.actions)
        return self._practice


def fast_spec(behavior_model: Any) -> str:
    """The estimator of :class:`LoggedSupport`'s fast model: a name as given, else logistic."""
    return behavior_model if isinstance(behavior_model, str) else "logistic"


def logged_support_diagnostics(
    dataset: TrajectoryDataset,
    target_probs: NDArray[np.float64],
    *,
    behavior_model: Any = "logistic",
    threshold: float = SUPPORT_THRESHOLD,
    estimators: tuple[str, ...] = ("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr"),
    warn: bool = True,
    random_state: int = 0,
    checker: LoggedSupport | None = None,
) -> tuple[SupportReport, dict[str, Any]]:
    """Support check for data with logged propensities, without a cross-fitted behaviour model.

    :class:`LoggedSupport` fitted on ``dataset`` (or ``checker``, when it is that check:
    :meth:`LoggedSupport.reuse`) and applied to one target policy.

    Returns
    -------
    report : SupportReport
    summary : dict
        How the check was made (for the result JSON's ``behavior_model``).
    """
    check_param(threshold, "threshold", "support_diagnostics", kind=float, low=0.0, high=1.0)
    checker = LoggedSupport.reuse(checker, dataset, behavior_model=behavior_model,
                                  random_state=random_state)
    rep = checker.report(target_probs, threshold=threshold, estimators=estimators, warn=warn)
    return rep, checker.summary


def unsupported_mass(target_probs: NDArray[np.float64], behavior_probs: NDArray[np.float64],
                      observed: NDArray[np.bool_] | None, threshold: float
                      ) -> NDArray[np.float64]:
    """Target mass on unsupported actions of each row of a block, shape ``(n_rows,)``."""
    unsupported = behavior_probs < threshold
    if observed is not None:
        unsupported |= ~observed
    return np.einsum("ij,ij->i", target_probs, unsupported.astype(np.float64))


def audited_mass(mass: NDArray[np.float64], offsets: NDArray[np.int64],
                 kept: NDArray[np.bool_] | None = None
                 ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The audited episodes' unsupported mass by row, and their per-episode shares (%).

    An audit reports the support check on the episodes of its published groups, but checks
    every row against practice as the whole panel shows it: the behaviour model fitted on the
    whole panel (out-of-fold on its fitting data, as for the importance weights) and the
    actions logged anywhere in a categorical cell. Only then are the audited rows taken. The
    in-memory report (:class:`SupportReport`) and the streamed chunk sums
    (:class:`~equicare.ope._stream_support.SupportSums`) both take them here.

    Parameters
    ----------
    mass : ndarray of shape (n_steps,)
        Target mass on unsupported actions of every row (:func:`unsupported_mass`).
    offsets : ndarray of shape (n_episodes + 1,)
        Episode offsets of those rows.
    kept : ndarray of shape (n_episodes,), bool, optional
        The audited episodes (default: all).

    Returns
    -------
    mass : ndarray of shape (n_kept_rows,)
    per_episode_pct : ndarray of shape (n_kept_episodes,)
    """
    lengths = np.diff(offsets)
    if kept is not None and not bool(np.all(kept)):
        mass = mass[np.repeat(kept, lengths)]
        lengths = lengths[kept]
    if lengths.size == 0:
        return mass, np.zeros(0)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return mass, 100.0 * np.add.reduceat(mass, starts) / lengths


def _report(dataset: TrajectoryDataset, mass: NDArray[np.float64], threshold: float,
            uses_categorical: bool, estimators: tuple[str, ...], warn: bool,
            kept: NDArray[np.bool_] | None = None,
            practice: NDArray[np.bool_] | None = None,
            acting: NDArray[np.bool_] | None = None) -> SupportReport:
    """The report of the rows' unsupported mass.

    ``practice``: the :func:`logged_once` rows; ``acting``: the rows the policy does not leave
    to the clinicians (:func:`acting_rows`), the only ones practice's share counts.
    """
    base = 0.0
    if practice is not None:
        flagged = practice if acting is None else practice & acting
        base = float(100.0 * audited_mass(flagged.astype(np.float64), dataset.episode_offsets,
                                          kept)[0].mean())
    mass, per_ep = audited_mass(mass, dataset.episode_offsets, kept)
    share = float(100.0 * mass.mean())
    biased, q_based = named_estimators(share, estimators)
    rep = SupportReport(
        share_pct=share, per_episode_pct=per_ep, threshold=float(threshold),
        uses_categorical=uses_categorical, n_rows=int(np.sum(mass > 0)),
        biased_estimators=biased, extrapolating_estimators=q_based,
        practice_share_pct=base)
    if warn and rep.warn:
        warnings.warn(rep.message(), SupportWarning, stacklevel=3)
    return rep
