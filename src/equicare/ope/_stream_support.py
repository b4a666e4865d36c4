r"""Support diagnostics of a streamed panel: the in-memory check as sums over chunks.

The in-memory check (:mod:`equicare.ope._support`) marks an action unsupported at a row when it
was never logged at the row's level of a categorical state column (empirical support, from
``(level, action)`` counts per column) or when an estimated behaviour probability is below the
threshold. Streamed, it takes two sums over the chunks, each riding on a pass the evaluation
makes anyway (:meth:`~equicare.ope._stream.ChunkSource.ride`; a pass of its own only when no
later pass is left):

1. the ``(level, action)`` counts of every categorical column (:func:`count_chunk`): integer
   sums, so the empirical support is exactly the in-memory one; with logged propensities and a
   numeric model to fit, the same pass draws its sample of whole episodes;
2. the target's mass on unsupported actions (:class:`SupportCheck`): its sum, the rows with
   positive mass, and the per-episode shares' sum, maximum, count over 1% and histogram; and
   the rows whose logged action was logged once in one of its cells
   (:func:`~equicare.ope._support.logged_once`: current practice's own share, from the whole
   panel's counts, as in memory).

The behaviour probabilities come from the models the streamed evaluation already has:

* **propensities logged**: as in memory, with wide categorical states (more than 32 one-hot
  levels) the empirical cell support is the whole check, exact; otherwise a fast numeric model
  (:class:`~equicare.policy.BehaviorModel`, the in-memory settings) is fitted on about
  :data:`~equicare.ope._support.FAST_SUPPORT_ROWS` rows of whole episodes sampled by episode id
  (:func:`~equicare.ope._stream_behavior.sample_mask`), where the in-memory check takes a seeded
  permutation of the episodes: the same model when the panel has no more rows, a model of
  another sample otherwise (that part is sample-based);
* **propensities estimated**: the streamed behaviour model
  (:class:`~equicare.ope._stream_behavior.StreamBehavior`), out-of-fold on its sampled episodes
  and the fold models' average elsewhere, as it gives the logged action's probability: the
  in-memory model's probabilities when the sample is the whole panel.

Memory is bounded: counts per (level, action), a histogram of fixed size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import SupportWarning
from equicare.ope._support import (
    FAST_SUPPORT_ONEHOT,
    FAST_SUPPORT_ROWS,
    SUPPORT_THRESHOLD,
    SUPPORT_WARN_PCT,
    StreamSupportReport,
    audited_mass,
    logged_once,
    named_estimators,
    top_level,
    unsupported_mass,
)

__all__ = ["CellCounts", "SupportSums", "SupportCheck", "count_chunk", "support_check",
           "propensity_sample", "HIST_WIDTH"]

#: Bin width (percentage points) of the per-episode shares' histogram (median and p90).
HIST_WIDTH = 1e-3
_N_BINS = int(round(100.0 / HIST_WIDTH)) + 1


@dataclass
class CellCounts:
    """Logged ``(level, action)`` counts per categorical column, and sampled episodes (additive).

    Attributes
    ----------
    counts : list of ndarray of shape (n_levels_j, n_actions)
    sample : list of TrajectoryDataset
        Sampled whole episodes (for the fast numeric model), in storage order.
    n_rows : int
        Rows counted.
    """

    counts: list[NDArray[np.int64]]
    sample: list[TrajectoryDataset] = field(default_factory=list)
    n_rows: int = 0

    def __add__(self, other: CellCounts) -> CellCounts:
        return CellCounts([a + b for a, b in zip(self.counts, other.counts, strict=True)],
                          self.sample + other.sample, self.n_rows + other.n_rows)


def _has_cat(ds: TrajectoryDataset) -> bool:
    return ds.categorical is not None and ds.categorical.shape[1] > 0


def count_chunk(dataset: TrajectoryDataset, *, rate: float = 0.0, seed: int = 0
                ) -> CellCounts:
    """The chunk's ``(level, action)`` counts per categorical column (and its sampled episodes).

    Parameters
    ----------
    dataset : TrajectoryDataset
        A chunk of whole episodes (categorical codes on the panel's levels).
    rate : float
        Sampling rate of whole episodes for the fast numeric model (0: none).
    seed : int
        Seed of the sample (:func:`~equicare.ope._stream_behavior.sample_mask`).
    """
    from equicare.ope._stream_behavior import sample_mask

    ds = dataset
    counts: list[NDArray[np.int64]] = []
    if _has_cat(ds):
        assert ds.categorical is not None
        n_a = ds.n_actions
        for j, levels in enumerate(ds.categorical_levels):
            size = len(levels)
            counts.append(np.bincount(ds.categorical[:, j].astype(np.int64) * n_a + ds.actions,
                                      minlength=size * n_a).reshape(size, n_a))
    sample = []
    if rate > 0:
        mask = sample_mask(ds.episode_ids, rate, seed)
        if mask.any():
            sample = [ds.subset(np.flatnonzero(mask))]
    return CellCounts(counts, sample, ds.n_steps)


@dataclass
class SupportSums:
    """The target's mass on unsupported actions, summed over chunks (additive).

    Attributes
    ----------
    mass : float
        Sum over rows of the mass on unsupported actions.
    n_rows : int
        Rows with positive such mass.
    n_steps, n_episodes : int
    ep_sum, ep_max : float
        Sum and maximum of the per-episode shares (%).
    ep_over : int
        Episodes whose share exceeds :data:`~equicare.ope._support.SUPPORT_WARN_PCT`.
    hist : ndarray of shape (n_bins,)
        Episodes per bin of the shares: bin 0 holds exact zeros, bin ``i`` the shares in
        ``((i - 1) w, i w]`` (``w`` = :data:`HIST_WIDTH`).
    practice : int
        Rows whose logged action was logged once at one of their levels
        (:func:`~equicare.ope._support.logged_once`).
    """

    mass: float = 0.0
    n_rows: int = 0
    n_steps: int = 0
    n_episodes: int = 0
    ep_sum: float = 0.0
    ep_max: float = 0.0
    ep_over: int = 0
    hist: NDArray[np.int64] = field(default_factory=lambda: np.zeros(_N_BINS, dtype=np.int64))
    practice: int = 0

    def __add__(self, other: SupportSums) -> SupportSums:
        return SupportSums(self.mass + other.mass, self.n_rows + other.n_rows,
                           self.n_steps + other.n_steps, self.n_episodes + other.n_episodes,
                           self.ep_sum + other.ep_sum, max(self.ep_max, other.ep_max),
                           self.ep_over + other.ep_over, self.hist + other.hist,
                           self.practice + other.practice)

    @classmethod
    def of_rows(cls, mass: NDArray[np.float64], offsets: NDArray[np.int64],
                kept: NDArray[np.bool_] | None = None,
                practice: NDArray[np.bool_] | None = None) -> SupportSums:
        """The sums of one chunk from its rows' masses and episode offsets.

        ``kept``: the chunk's audited episodes (default: all), whose rows alone are summed
        (:func:`~equicare.ope._support.audited_mass`, as in memory); ``practice``: the rows'
        :func:`~equicare.ope._support.logged_once` (None: no categorical states).
        """
        mass, per_ep = audited_mass(mass, offsets, kept)
        if mass.size == 0:
            return cls()
        n_practice = 0 if practice is None else int(
            audited_mass(practice.astype(np.float64), offsets, kept)[0].sum())
        idx = np.clip(np.ceil(per_ep / HIST_WIDTH), 0, _N_BINS - 1).astype(np.int64)
        return cls(mass=float(mass.sum()), n_rows=int(np.sum(mass > 0)), n_steps=int(mass.size),
                   n_episodes=int(per_ep.size), ep_sum=float(per_ep.sum()),
                   ep_max=float(per_ep.max()), ep_over=int(np.sum(per_ep > SUPPORT_WARN_PCT)),
                   hist=np.bincount(idx, minlength=_N_BINS).astype(np.int64),
                   practice=n_practice)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the per-episode shares (NumPy's linear rule, binned values)."""
        n = self.n_episodes
        cum = np.cumsum(self.hist)
        pos = q * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)

        def order_stat(k: int) -> float:
            b = int(np.searchsorted(cum, k, side="right"))
            return min(0.0 if b == 0 else (b - 0.5) * HIST_WIDTH, self.ep_max)

        a, b = order_stat(lo), order_stat(hi)
        return float(a + (pos - lo) * (b - a))

    def report(self, *, threshold: float, uses_categorical: bool,
               estimators: tuple[str, ...]) -> StreamSupportReport:
        """The :class:`~equicare.ope._support.StreamSupportReport` of these sums."""
        share = float(100.0 * self.mass / max(self.n_steps, 1))
        biased, q_based = named_estimators(share, estimators)
        n = max(self.n_episodes, 1)
        return StreamSupportReport(
            share_pct=share, threshold=float(threshold), uses_categorical=uses_categorical,
            n_rows=self.n_rows, biased_estimators=biased, extrapolating_estimators=q_based,
            per_episode={"mean": self.ep_sum / n, "median": self.quantile(0.5),
                         "p90": self.quantile(0.9),
                         "p_top11": self.quantile(top_level(self.n_episodes))},
            over_warn_pct=100.0 * self.ep_over / n,
            practice_share_pct=float(100.0 * self.practice / max(self.n_steps, 1)))


@dataclass(frozen=True, eq=False)
class SupportCheck:
    """The support check of a streamed panel, applied chunk by chunk (picklable).

    Attributes
    ----------
    counts : list of ndarray of shape (n_levels_j, n_actions)
        The whole panel's logged ``(level, action)`` counts (empty: no categorical states).
    model : BehaviorModel or None
        The fast numeric model (logged propensities) or None.
    behavior : StreamBehavior or None
        The streamed behaviour model (estimated propensities) or None.
    threshold : float
    episodes : callable, optional
        ``episodes(dataset)`` -> mask of the episodes reported (default: all): an audit's
        published groups. Every row is checked against the whole panel's counts and behaviour
        model; only these episodes' rows are summed (:func:`~equicare.ope._support.audited_mass`).
    """

    counts: list[NDArray[np.int64]]
    model: Any = None
    behavior: Any = None
    threshold: float = SUPPORT_THRESHOLD
    episodes: Any = None

    @property
    def uses_categorical(self) -> bool:
        """Whether "never logged in that categorical state" marks actions unsupported."""
        return bool(self.counts)

    def observed(self, ds: TrajectoryDataset, rows: NDArray[np.int64]) -> NDArray[np.bool_] | None:
        """Whether each action was logged at the rows' level of every column, or None."""
        if not self.counts:
            return None
        assert ds.categorical is not None
        cat = ds.categorical[rows]
        out = np.ones((rows.size, ds.n_actions), dtype=bool)
        for j, c in enumerate(self.counts):
            out &= c[cat[:, j]] > 0
        return out

    def __call__(self, dataset: TrajectoryDataset, policy: Any) -> SupportSums:
        """The chunk's :class:`SupportSums` of ``policy``."""
        from equicare.ope._stream_sums import _target_probs
        from equicare.policy import check_probs
        from equicare.policy._deployed import deployed_rows, exempt_rows
        from equicare.utils import ROW_BLOCK_ELEMENTS

        ds = dataset
        keep = None if self.episodes is None else np.asarray(self.episodes(ds), dtype=bool)
        if keep is not None and not keep.any():
            return SupportSums()
        mass = np.empty(ds.n_steps)
        acting = np.ones(ds.n_steps, dtype=bool)
        max_rows = max(1, ROW_BLOCK_ELEMENTS // max(1, ds.n_actions))
        for lo, _, part in ds.episode_blocks(max_rows):
            tp = check_probs(_target_probs(part, policy), part.n_steps, part.n_actions,
                             "evaluate_stream")
            deferred = deployed_rows(policy, part)
            tp = exempt_rows(tp, deferred)  # the clinicians' rows: supported
            if deferred is not None:
                acting[lo:lo + part.n_steps] = ~deferred
            for rows, probs in self._behavior_blocks(part):
                mass[lo + rows] = unsupported_mass(tp[rows], probs, self.observed(part, rows),
                                                   self.threshold)
        practice = None
        if self.counts:  # practice's own share, on the rows the policy acts at (as in memory)
            assert ds.categorical is not None
            practice = logged_once(self.counts, ds.categorical, ds.actions) & acting
        return SupportSums.of_rows(mass, ds.episode_offsets, keep, practice)

    def _behavior_blocks(self, part: TrajectoryDataset) -> Any:
        if self.behavior is not None:
            yield from self.behavior.action_prob_blocks(part)
        elif self.model is not None:
            yield from self.model.action_prob_blocks(part)
        else:
            yield np.arange(part.n_steps), np.ones((part.n_steps, part.n_actions))


@dataclass(frozen=True, eq=False)
class PolicySupport:
    """``check(dataset, policy)`` as a one-argument chunk function (picklable)."""

    check: SupportCheck
    policy: Any

    def __call__(self, dataset: TrajectoryDataset) -> SupportSums:
        """The chunk's :class:`SupportSums`."""
        return self.check(dataset, self.policy)


def needs_fast_model(n_numeric: int, levels: tuple[int, ...]) -> bool:
    """Whether the logged-propensity check fits a fast numeric model (as in memory)."""
    wide = bool(levels) and sum(levels) > FAST_SUPPORT_ONEHOT
    return not wide and (n_numeric > 0 or bool(levels))


def fast_rate(n_rows: int) -> float:
    """Sampling rate of the fast numeric model's episodes (about ``FAST_SUPPORT_ROWS`` rows)."""
    return min(1.0, FAST_SUPPORT_ROWS / max(int(n_rows), 1))


def propensity_sample(dataset: TrajectoryDataset, n_rows: int) -> CellCounts:
    """:func:`count_chunk` sampling about ``FAST_SUPPORT_ROWS`` rows of a panel of ``n_rows``.

    The logged-propensity check of ``equicare validate --chunk-rows``
    (:func:`~equicare.ope._propensity_check.sample_propensity_check`); seed 0, the in-memory
    check's.
    """
    return count_chunk(dataset, rate=fast_rate(n_rows), seed=0)


def support_check(counts: CellCounts, *, behavior: Any = None, behavior_model: Any = "logistic",
                  fast: bool = False, seed: int = 0, threshold: float = SUPPORT_THRESHOLD,
                  episodes: Any = None) -> tuple[SupportCheck, str]:
    """The :class:`SupportCheck` from the counting pass, and how it is made (a sentence).

    Parameters
    ----------
    counts : CellCounts
        The counting pass (:func:`count_chunk` summed).
    behavior : StreamBehavior, optional
        The streamed behaviour model (estimated propensities).
    behavior_model : str
        Estimator of the fast numeric model.
    fast : bool
        Fit the fast numeric model on ``counts.sample`` (logged propensities,
        :func:`needs_fast_model`).
    seed : int
        The fast model's ``random_state`` (the in-memory check's seed).
    threshold : float
    episodes : callable, optional
        As :class:`SupportCheck` (the counts cover the whole panel).
    """
    from equicare.data._chunks import concat_datasets
    from equicare.policy._behavior import BehaviorModel

    model = None
    if behavior is not None:
        how = "estimated propensities: the streamed behaviour model"
    else:
        how = ("logged propensities: empirical per categorical cell" if counts.counts
               else "logged propensities")
        if fast and counts.sample:
            spec = behavior_model if isinstance(behavior_model, str) else "logistic"
            data = concat_datasets(counts.sample)
            model = BehaviorModel(estimator=spec, n_folds=1, max_iter=100, random_state=seed,
                                  calibration=False).fit(data)
            how += (f", plus a fast numeric behaviour model ({spec}, {data.n_steps} rows of "
                    "sampled episodes, not cross-fitted)")
    return SupportCheck(counts=counts.counts, model=model, behavior=behavior,
                        threshold=threshold, episodes=episodes), how


def warn_support(report: StreamSupportReport, stacklevel: int = 3) -> None:
    """Emit the SupportWarning of ``report`` when it exceeds practice's own share by 1 point.

    As :func:`evaluate` (:attr:`~equicare.ope._support.SupportReport.warn`).
    """
    if report.warn:
        warnings.warn(report.message(), SupportWarning, stacklevel=stacklevel)
