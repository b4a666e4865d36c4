r"""Propensities of a streamed panel that logs none: a behaviour model fitted on sampled episodes.

When the panel has no logged propensity column, streamed evaluation estimates the behaviour
policy the way the in-memory engine does (:class:`~equicare.policy.BehaviorModel`: a multinomial
logistic chain over the action components, cross-fitted over episode folds), but fits it on a
**random sample of whole episodes** collected in one pass, then applies it chunk by chunk:

* an episode is in the sample when a uniform number drawn from a counter-based generator keyed
  by ``(seed, episode id)`` (SplitMix64, as the bootstrap weights) is below
  ``rate = min(1, sample_rows / n_rows)``: the sample is the same for any chunking or sharding,
  and its memory is bounded by ``sample_rows`` rows;
* rows of sampled episodes get the out-of-fold probability (the model of the folds that did not
  see them), every other row the average of the fold models, as the in-memory model does on data
  it was not fitted on; the floor applies as in memory.

With ``sample_rows >= n_rows`` the sample is the whole panel and the propensities are those of the
in-memory model fitted on it (tested). The choice over ``SGDClassifier.partial_fit``: the same
estimator and cross-fitting as in memory, an answer that does not depend on the order or size of
the chunks, and one pass instead of several epochs; its cost is the sampling error of a model
fitted on ``sample_rows`` rows, measured in docs/scale.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.data._chunks import concat_datasets
from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.ope._core import WEIGHTED
from equicare.ope._propensity_check import FLOORED_EPISODE_SHARE, expected_floored_rows
from equicare.ope._resample import _GOLDEN, _SEED_MIX, _splitmix64, episode_keys
from equicare.policy._behavior import BehaviorModel
from equicare.privacy import small_count
from equicare.utils import PARAM_MESSAGE

__all__ = ["StreamBehavior", "fit_behavior_stream", "sample_mask", "sample_episodes",
           "SAMPLE_ROWS", "MSG_THIN_SAMPLE", "thin_sample_message"]

#: Default rows of the behaviour model's sample of episodes.
SAMPLE_ROWS = 1_000_000

#: The warning when episodes outside the behaviour model's sample get out-of-sample
#: probabilities in a saturated categorical state (tests match it).
MSG_THIN_SAMPLE = (
    "The propensities were estimated by a behaviour model fitted in-sample on a random sample "
    "of {sample:,} of the {n_episodes:,} episodes ({pct:.1f}%), and the state is a categorical "
    "column of many levels: the other episodes' probabilities are out of sample, and an action "
    "that their level's sampled episodes never took gets a probability near 0, so their "
    "importance weights explode ({estimators}; measured on a Garnet panel of 700 states, 1,000 "
    "episodes, half of them sampled: IS 2e35 and WDR 36% below the truth, where the whole "
    "panel as the sample gives WIS, DR and WDR within 2%). Evaluate in memory (without "
    "--chunk-rows), pass behavior_sample_rows of at least the panel's rows to evaluate_stream, "
    "or log the propensities.")


def thin_sample_message(model: BehaviorModel, info: dict[str, Any], n_episodes: int,
                        estimators: tuple[str, ...]) -> str | None:
    """:data:`MSG_THIN_SAMPLE` when it applies, else None.

    It applies when the behaviour model is saturated (``model.saturated_``: its levels are
    cells, fitted in-sample), its sample leaves episodes out (``info["sample_rate"] < 1``) and a
    weighted estimator (IS-type, ``dr``, ``wdr``) is computed.

    Parameters
    ----------
    model : BehaviorModel
        Fitted on the sample.
    info : dict
        :attr:`StreamBehavior.info` (``sample_rate``, ``sample_episodes``).
    n_episodes : int
        Episodes of the whole panel.
    estimators : tuple of str
    """
    weighted = [k for k in estimators if k in WEIGHTED]
    if not (getattr(model, "saturated_", False) and float(info["sample_rate"]) < 1.0
            and weighted):
        return None
    sample = int(info["sample_episodes"])
    return MSG_THIN_SAMPLE.format(sample=sample, n_episodes=n_episodes,
                                  pct=100.0 * sample / max(n_episodes, 1),
                                  estimators=", ".join(weighted))


def sample_mask(episode_ids: Any, rate: float, seed: int) -> NDArray[np.bool_]:
    """Whether each episode is in the sample: a pure function of (seed, episode id, rate)."""
    keys = episode_keys(episode_ids)
    with np.errstate(over="ignore"):
        z = _splitmix64(keys ^ ((np.uint64(seed) + _GOLDEN) * _SEED_MIX))
    u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return np.asarray(u < rate)


@dataclass
class _Sample:
    """Sampled episodes of some chunks (adds up by concatenation, in storage order)."""

    parts: list[TrajectoryDataset] = field(default_factory=list)

    def __add__(self, other: _Sample) -> _Sample:
        return _Sample(self.parts + other.parts)


def _sample_chunk(dataset: TrajectoryDataset, *, rate: float, seed: int) -> _Sample:
    mask = sample_mask(dataset.episode_ids, rate, seed)
    return _Sample([dataset.subset(mask)] if mask.any() else [])


def sample_episodes(source: Any, sample_rows: int, seed: int
                    ) -> tuple[TrajectoryDataset | None, float]:
    """About ``sample_rows`` rows of whole episodes of ``source`` (one pass), and the rate.

    The sample is a pure function of (seed, episode id, rate) (:func:`sample_mask`); None when
    it has no episode.
    """
    import functools

    rate = min(1.0, float(sample_rows) / max(int(source.n_rows), 1))
    sample, _ = source.map_reduce(functools.partial(_sample_chunk, rate=rate, seed=seed))
    return (concat_datasets(sample.parts) if sample.parts else None), rate


@dataclass(frozen=True, eq=False)
class StreamBehavior:
    """A behaviour model fitted on sampled episodes, applied to chunks (picklable).

    Attributes
    ----------
    model : BehaviorModel
        Fitted on the sample.
    keys : ndarray of shape (n_sampled,), uint64
        Sorted episode keys of the sample.
    folds : ndarray of shape (n_sampled,)
        Each sampled episode's cross-fitting fold.
    info : dict
        Sample size, rate and the model's summary (published: small counts are None).
    floored : tuple of int
        Logged rows of the sample whose out-of-fold probability is below the floor, and their
        episodes (for the floored-propensity warning,
        :func:`~equicare.ope._propensity_check.floored_counts_message`).
    """

    model: BehaviorModel
    keys: NDArray[np.uint64]
    folds: NDArray[np.int64]
    info: dict[str, Any]
    floored: tuple[int, int] = (0, 0)

    def _row_fold(self, dataset: TrajectoryDataset) -> NDArray[np.int64]:
        """Each row's fold when its episode is sampled, else -1."""
        keys = episode_keys(dataset.episode_ids)
        pos = np.clip(np.searchsorted(self.keys, keys), 0, max(self.keys.size - 1, 0))
        hit = self.keys[pos] == keys if self.keys.size else np.zeros(keys.size, dtype=bool)
        ep_fold = np.where(hit, self.folds[pos], -1)
        return np.asarray(ep_fold[dataset.episode_index], dtype=np.int64)

    def action_prob_blocks(self, dataset: TrajectoryDataset, block_rows: int = 65_536
                           ) -> Iterator[tuple[NDArray[np.int64], NDArray[np.float64]]]:
        """Every action's probability, block by block (support diagnostics).

        Out-of-fold on rows of sampled episodes, the fold models' average elsewhere (the
        in-memory :meth:`~equicare.policy.BehaviorModel.action_prob_blocks` on its fitting
        data and on other data).

        Yields
        ------
        rows : ndarray of shape (n_rows,)
            Rows of ``dataset`` in the block (every row in exactly one block).
        probs : ndarray of shape (n_rows, n_actions)
        """
        bm = self.model
        row_fold = self._row_fold(dataset)
        x = bm._design(dataset)
        single = len(bm.models_) == 1
        for s in range(0, dataset.n_steps, block_rows):
            r = np.arange(s, min(s + block_rows, dataset.n_steps))
            if single:
                yield r, bm._full_probs(bm.models_[0], x[r])
                continue
            f = row_fold[r]
            out = np.empty((r.size, bm.n_actions_))
            outside = f < 0
            if outside.any():
                xo = x[r[outside]]
                out[outside] = sum(bm._full_probs(m, xo) for m in bm.models_) / len(bm.models_)
            for k in np.unique(f[~outside]):
                inside = f == k
                out[inside] = bm._full_probs(bm.models_[int(k)], x[r[inside]])
            yield r, out

    def logged_prob(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Probability of each row's logged action (unfloored), shape ``(n_steps,)``.

        Out-of-fold on rows of sampled episodes, the fold models' average elsewhere.
        """
        bm = self.model
        row_fold = self._row_fold(dataset)
        x = bm._design(dataset)
        codes, flat = dataset.action_codes, dataset.actions
        out = np.empty(dataset.n_steps)
        outside = np.flatnonzero(row_fold < 0)
        if outside.size:
            out[outside] = sum(bm._logged_probs(m, x[outside], codes[outside], flat[outside])
                               for m in bm.models_) / len(bm.models_)
        if len(bm.models_) == 1:
            inside = np.flatnonzero(row_fold >= 0)
            if inside.size:
                out[inside] = bm._logged_probs(bm.models_[0], x[inside], codes[inside],
                                               flat[inside])
            return out
        for f, models in enumerate(bm.models_):
            rows = np.flatnonzero(row_fold == f)
            if rows.size:
                out[rows] = bm._logged_probs(models, x[rows], codes[rows], flat[rows])
        return out

    def __call__(self, dataset: TrajectoryDataset) -> TrajectoryDataset:
        """The chunk with the floored estimated propensities as its ``behavior_prob``."""
        p = np.maximum(self.logged_prob(dataset), float(self.model.floor))
        return dataset.with_behavior_prob(p, estimated=True)


def fit_behavior_stream(source: Any, *, model: Any = "logistic", sample_rows: int = SAMPLE_ROWS,
                        seed: int = 0, model_seed: int | None = None) -> StreamBehavior:
    """Fit the behaviour model on a random sample of whole episodes of ``source`` (one pass).

    Parameters
    ----------
    source : ChunkSource
    model : {"logistic", "lgbm"}, classifier or BehaviorModel
        As ``behavior_model`` of :func:`~equicare.ope.evaluate` (an unfitted BehaviorModel is
        fitted on the sample).
    sample_rows : int
        Rows to sample (about; whole episodes). At least the panel's rows: the whole panel.
    seed : int
        Seed of the sample (and of the model's folds when ``model`` is a name and no
        ``model_seed`` is given).
    model_seed : int, optional
        Seed of the model's folds and fits when ``model`` is a name:
        :func:`~equicare.ope._evaluate.nuisance_seed` of the evaluation's seed gives the
        in-memory model's (the same folds and fits when the sample is the whole panel).

    Returns
    -------
    StreamBehavior
    """
    from sklearn.base import clone

    if isinstance(sample_rows, bool) or not isinstance(sample_rows, int) or sample_rows < 1:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="behavior_sample_rows", owner="evaluate_stream", expected="an int >= 1",
            got=sample_rows))
    data, rate = sample_episodes(source, sample_rows, seed)
    if data is None:
        raise DataValidationError(f"The behaviour model's sample (rate {rate:.3g}) has no "
                                  "episode: the panel is empty or behavior_sample_rows is too "
                                  "small; raise behavior_sample_rows.")
    bm = clone(model) if isinstance(model, BehaviorModel) else BehaviorModel(
        estimator=model, random_state=seed if model_seed is None else model_seed)
    bm.fit(data)
    keys = episode_keys(data.episode_ids)
    order = np.argsort(keys, kind="stable")
    low = np.asarray(bm.logged_prob(data)) < float(bm.floor)  # out-of-fold on the sample
    floored_eps = int(np.unique(data.episode_index[low]).size)
    info = {"source": "estimated", "fit": "random sample of episodes",
            "sample_rate": rate, "sample_episodes": int(data.n_episodes),
            "sample_rows": int(data.n_steps), **bm.summary(),
            # and how many the model expects (their warning); a count of 1 to 10 episodes is
            # not published
            "floored_episodes": small_count(floored_eps, data.n_episodes),
            "floored_expected": (expected_floored_rows(bm, data)
                                 if floored_eps > FLOORED_EPISODE_SHARE * data.n_episodes
                                 else None)}
    return StreamBehavior(model=bm, keys=keys[order],
                          folds=np.asarray(bm.fold_of_episode_)[order], info=info,
                          floored=(int(low.sum()), floored_eps))
