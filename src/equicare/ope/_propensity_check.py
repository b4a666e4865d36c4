"""Do the logged propensities agree with the logged actions? A cheap plausibility check.

Logged propensities (the manifest's ``behavior_prob``) are taken on trust by the
importance-sampling estimators. A column that holds something else (1.0 on every row while
clinicians took 103 different actions in the same states, a score, random numbers) passes the
range checks of validation and then yields importance weights that mean nothing (IS 7.4e6 on
such a care panel). This check compares them with the probability of the logged action under a
quick behaviour model fitted to the logged actions: the fast numeric model of the support check
(:class:`~equicare.ope._support.LoggedSupport`), or, with wide categorical states, the action
frequencies within the cells of one categorical column or of a combination of columns (with a
numeric column's values), the cells that best predict the logged actions. It warns, never
refuses: a model fitted in a second can be wrong too.

Streamed (``--chunk-rows``), the check runs on a random sample of about 20,000 rows of whole
episodes, drawn by episode id (:func:`~equicare.ope._stream_behavior.sample_mask`, the sample of
the streamed support check) so that it does not depend on the chunking, with the per-level
action frequencies counted over the whole panel (:func:`sample_propensity_check`). On a panel of
at most 20,000 rows the sample is the whole panel and the check is the in-memory one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.ope._core import IS_TYPE
from equicare.privacy import small_count
from equicare.utils import MIN_CELL

__all__ = ["PropensityCheck", "check_logged_propensities", "propensity_warning",
           "sample_propensity_check", "floored_propensity_message", "floored_counts_message",
           "expected_floored_rows", "PROPENSITY_LOG_RATIO", "MSG_PROPENSITY", "MSG_FLOORED",
           "MSG_FLOORED_COUNTS", "MSG_FLOORED_FEW", "FLOORED_EPISODE_SHARE", "FLOORED_EXCESS",
           "in_sample_weights_message", "MSG_IN_SAMPLE", "IN_SAMPLE_MEAN_WEIGHT",
           "MSG_IN_SAMPLE_WPDIS", "in_sample_estimators", "in_sample_named"]

#: Mean absolute log ratio (logged / fitted probability of the logged action) above which the
#: logged propensities are reported. Measured: 0.07 on the synthetic care panel and 0.10 on the
#: Garnet panel (per-state frequencies) with their true propensities; 1.73 and 1.01 with every
#: propensity set to 1, 1.77 and 1.09 with uniform random ones.
PROPENSITY_LOG_RATIO = 0.7

#: Per-level frequencies are compared only on rows whose level has at least this many rows per
#: action (and :data:`MIN_LEVEL_ROWS`): in a thin level the in-sample frequency of the row's own
#: action is inflated by the row itself. On Garnet panels of about 50,000 rows with their true
#: propensities, every row: 0.19 (700 states, 25 actions), 0.47 (5,000 x 25) and 0.86 (5,000 x
#: 100, reported: a false warning); on the rows of levels with at least half as many rows as
#: actions: 0.19, 0.34 and 0.43, against 1.3 to 2.1 with propensities all 1, uniform random or
#: 1 / n_actions.
MIN_ROWS_PER_ACTION = 0.5
#: The smallest level compared (rows).
MIN_LEVEL_ROWS = 5
#: Fewer compared rows than this (and than half the rows): the column is not used.
MIN_CHECKED_ROWS = 500

#: The warning (tests match it).
MSG_PROPENSITY = (
    "{source}: the logged propensities (column {column!r}) disagree with the logged actions: "
    "a quick behaviour model fitted to the actions ({model}) gives the logged action a "
    "probability that differs from the logged one by a factor of {factor:.1f} on average (mean "
    "|log ratio| {stat:.2f} over {rows}; above {limit:g} is reported){example}. Check that "
    "the column holds current practice's probability of the action logged on the row (not of "
    "another action, a percentage or a score): importance-sampling estimates (is, wis, pdis, "
    "wpdis, dr, wdr) are only as good as these. If it does, current practice also decided on "
    "something the states do not hold (a member's assigned care team, a clinician's "
    "judgement): the logged propensities are then the right ones, and a behaviour policy "
    "estimated from the states would miss it too; add that column to the manifest's states "
    "to see the check agree. If it does not, leave the column out of the manifest and let "
    "evaluate estimate the behaviour policy.")

#: Share of episodes with a logged row whose *estimated* propensity was floored above which
#: :func:`~equicare.ope.evaluate` may warn (:data:`MSG_FLOORED`). On a Garnet ICU-shaped panel
#: (300 state codes, 25 joint actions, 5,000 stays) the cross-fitted chain model floored 285
#: logged rows in 5.3% of the stays (their true propensities: median 0.019, none below 0.001).
FLOORED_EPISODE_SHARE = 0.01

#: ... and when the floored logged rows exceed this multiple of the number the model itself
#: expects (its mass below the floor, summed over the rows). A calibrated model floors the
#: logged rows of actions practice really takes that rarely: on the care simulator (1,000
#: members, 300 actions) 733 rows in 49% of the episodes, against 694 expected (ratio 1.06; 589
#: of them truly below 0.001). A wrong tail floors many more: 285 against 18.6 expected (ratio
#: 15.3) on the ICU-shaped panel.
FLOORED_EXCESS = 2.0

#: The warning on floored estimated propensities (tests match it).
MSG_FLOORED = (
    "The propensities were not logged but estimated, and the behaviour model gives the action "
    "actually taken a probability below its floor {floor:g} {counts}: its small probabilities "
    "are wrong there (current practice was seen doing what the model says it (almost) never "
    "does), so those rows' importance ratios (up to {cap:,.0f} per step) come from the "
    "floor, not from the data. {estimators} "
    "{inherit} that error, and {their} {intervals} not carry it: with estimated propensities "
    "{they} biased, not just noisy (docs/ope.md, 'Estimated propensities'). Prefer fqe, log "
    "the propensities, or, with a categorical state of thin levels, fit the model in-sample "
    "and over the joint action (evaluate --behavior-folds 1 --behavior-form flat; "
    "BehaviorModel(n_folds=1, factored=False)).")

#: The counts of :data:`MSG_FLOORED`.
MSG_FLOORED_COUNTS = ("on {rows:,} logged rows, in {episodes:,} episodes ({pct:.1f}% of them), "
                      "{excess:.1f} times the {expected:,.1f} such rows it expects itself")
#: ... when the episodes, or the episodes without such a row, are a small cell (1 to 10).
MSG_FLOORED_FEW = ("on logged rows of more than {share:g}% of the episodes (counts not shown: "
                   "they, or the episodes without such a row, are fewer than {min_cell}), more "
                   "than {times:g} times the {expected:,.1f} such rows it expects itself")

#: Singular and plural words of :data:`MSG_FLOORED` (one estimator or several).
_FLOORED_NUMBER = {
    False: {"inherit": "inherits", "their": "its", "intervals": "interval does", "they": "it is"},
    True: {"inherit": "inherit", "their": "their", "intervals": "intervals do", "they": "they are"},
}


#: Mean trajectory importance weight below which plain IS and PDIS on *in-sample* estimated
#: propensities are flagged (:data:`MSG_IN_SAMPLE`). With the true propensities the weights
#: average 1 in expectation, and ``IS = WIS x mean weight``: 0.9 is IS 10% below WIS. Measured
#: on Garnet panels with exact truth, 10 panels each (docs/ope.md, 'In-sample propensities and
#: plain IS'): the behaviour policy's own weights average 0.48 (700 states x 25 actions, 2,000
#: episodes of 13 steps; its IS -51%) and 0.84 (300 x 25, 5,000 stays of 4.6 steps; IS -14%)
#: with the in-sample model, exactly 1 with the true propensities.
IN_SAMPLE_MEAN_WEIGHT = 0.9

#: The warning on plain IS / PDIS with in-sample estimated propensities (tests match it).
MSG_IN_SAMPLE = (
    "{names} {use} propensities estimated in-sample, and the trajectory importance weights "
    "average {mean:.3g} (over {n_episodes:,} episodes of {steps:.1f} steps on average), where "
    "they average 1 in expectation with the true propensities: IS is WIS times that mean. Two "
    "causes pull it down. A behaviour model fitted on these very episodes gives the logged "
    "actions a higher probability, on average, than current practice did (an episode's own "
    "actions pull its states' estimates), and an episode's weight multiplies that over its "
    "steps: a bias that {their} {intervals} not carry (measured with exact truth: the "
    "behaviour policy's own IS 51% low on a 700-state Garnet panel, 0% with the true "
    "propensities). And a target policy far from practice has rare large weights that most "
    "samples miss (a heavy tail, with the true propensities too). Cross-fitted propensities "
    "err the other way (weights that explode).{wpdis} Read wis, dr or wdr instead of {names}, "
    "or log the propensities (docs/ope.md, 'In-sample propensities and plain IS').")

#: The sentence :data:`MSG_IN_SAMPLE` adds for WPDIS when the episodes differ in length.
MSG_IN_SAMPLE_WPDIS = (
    " WPDIS too, since the episodes differ in length: it divides each step's weighted rewards "
    "by the weights of every episode, the ended ones included, and an ended episode's weight "
    "shrank over fewer steps than a running one's, so an outcome at the end of a long episode "
    "counts for less than its share (measured: the behaviour policy's own WPDIS 43% low on a "
    "700-state Garnet panel of 1,000 episodes of 1 to 120 steps, 7% low on an ICU-shaped panel "
    "of 3,000 stays of 1 to 80 days; exact with the logged propensities).")


def in_sample_weights_message(behavior: dict[str, Any] | None, estimators: tuple[str, ...],
                              mean_weight: float, n_episodes: int, n_steps: int,
                              max_length: int | None = None) -> str | None:
    """The warning on plain IS / PDIS with in-sample estimated propensities, or None.

    Warned when the propensities were estimated by a behaviour model fitted without
    cross-fitting (``behavior["n_folds"] == 1``: its probabilities of the logged actions are
    in-sample), ``is``, ``pdis`` or (episodes of different lengths) ``wpdis`` is computed, and
    the trajectory weights average below :data:`IN_SAMPLE_MEAN_WEIGHT`. WPDIS divides each
    step's weighted rewards by the weights of every episode, ended ones included
    (``normalization="absorbing"``): with in-sample weights, which shrink with each step, the
    ended episodes' weights are the larger, so the outcomes that end long episodes count for
    less than their share (:data:`MSG_IN_SAMPLE_WPDIS`). With episodes of one length the
    shrinkage is the same in the numerator and the denominator.

    Parameters
    ----------
    behavior : dict or None
        The behaviour model's summary (:meth:`~equicare.policy.BehaviorModel.summary`); None
        when the propensities were logged or given.
    estimators : tuple of str
    mean_weight : float
        Mean untruncated trajectory weight ``(1/n) sum_e prod_t pi_e / pi_b``.
    n_episodes, n_steps : int
        Of the evaluated panel.
    max_length : int, optional
        Its longest episode; the episodes differ in length when ``n_steps`` is below
        ``n_episodes * max_length``. None: not known (WPDIS not named).

    Returns
    -------
    str or None
    """
    plain = list(in_sample_estimators(estimators, n_episodes, n_steps, max_length))
    if (behavior is None or behavior.get("n_folds") != 1 or not plain
            or not np.isfinite(mean_weight) or mean_weight >= IN_SAMPLE_MEAN_WEIGHT):
        return None
    many = len(plain) > 1
    return MSG_IN_SAMPLE.format(
        names=_join_names(plain), use="use" if many else "uses", mean=mean_weight,
        n_episodes=n_episodes, steps=n_steps / max(n_episodes, 1),
        their="their" if many else "its",
        intervals="intervals do" if many else "interval does",
        wpdis=MSG_IN_SAMPLE_WPDIS if "wpdis" in plain else "")


def in_sample_estimators(estimators: tuple[str, ...], n_episodes: int, n_steps: int,
                         max_length: int | None = None) -> tuple[str, ...]:
    """The estimators that in-sample propensities bias, of those computed.

    ``is``, ``pdis``, and ``wpdis`` when the episodes differ in length (see
    :func:`in_sample_weights_message`).
    """
    varied = max_length is not None and n_steps < n_episodes * max_length
    return tuple(k for k in ("is", "pdis", "wpdis")
                 if k in estimators and (k != "wpdis" or varied))


def in_sample_named(message: str) -> tuple[str, ...]:
    """The estimators a :data:`MSG_IN_SAMPLE` warning names (``("is", "pdis")``, ...)."""
    head = message.split(" use", 1)[0]
    named = {w for part in head.split(", ") for w in part.split(" and ")}
    return tuple(k for k in ("is", "pdis", "wpdis") if k in named)


def _join_names(names: list[str] | tuple[str, ...]) -> str:
    """``is``, ``is and pdis``, ``is, pdis and wpdis``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _weighted(estimators: tuple[str, ...]) -> tuple[str, ...]:
    """The estimators that weight by the propensities (IS-type, ``dr``, ``wdr``)."""
    return tuple(k for k in estimators if k in (*IS_TYPE, "dr", "wdr"))


def expected_floored_rows(model: Any, dataset: TrajectoryDataset,
                          exempt: NDArray[np.bool_] | None = None) -> float:
    """Logged rows the behaviour model itself expects below its floor.

    ``sum_i sum_a p(a | s_i) 1[p(a | s_i) < floor]`` over the rows (not ``exempt``), block by
    block (:meth:`~equicare.policy.BehaviorModel.action_prob_blocks`: out-of-fold on the
    fitting data).
    """
    floor = float(model.floor)
    total = 0.0
    for rows, p in model.action_prob_blocks(dataset):
        mass = np.where(p < floor, p, 0.0).sum(axis=1)
        if exempt is not None:
            mass = np.where(np.asarray(exempt, dtype=bool)[rows], 0.0, mass)
        total += float(mass.sum())
    return total


def floored_propensity_message(model: Any, dataset: TrajectoryDataset,
                               estimators: tuple[str, ...],
                               exempt: NDArray[np.bool_] | None = None) -> str | None:
    """The warning on logged rows whose estimated propensity was floored, or None.

    Every logged action was taken; an estimate below the behaviour model's floor either means
    that practice takes it that rarely (the floor then only caps a weight) or that the model's
    small probabilities are wrong (out-of-fold probabilities in a thin categorical level whose
    other folds never saw the action; a chain of main-effect models that cannot represent the
    joint choice). Warned, the second case, when such rows touch more than
    :data:`FLOORED_EPISODE_SHARE` of the episodes, number more than :data:`FLOORED_EXCESS`
    times what the model itself expects (:func:`expected_floored_rows`), and some weighted
    estimator is computed.

    Parameters
    ----------
    model : BehaviorModel
        Fitted (on ``dataset``: out-of-fold probabilities).
    dataset : TrajectoryDataset
    estimators : tuple of str
        The estimators computed; only the weighted ones (IS-type, ``dr``, ``wdr``) are named.
    exempt : ndarray of shape (n_steps,), bool, optional
        Rows that need no propensity (left to current practice).

    Returns
    -------
    str or None
    """
    if not _weighted(estimators):
        return None
    low = np.asarray(model.logged_prob(dataset)) < float(model.floor)
    if exempt is not None:
        low &= ~np.asarray(exempt, dtype=bool)
    n_ep = int(np.unique(dataset.episode_index[low]).size)
    if n_ep <= FLOORED_EPISODE_SHARE * dataset.n_episodes:
        return None
    return floored_counts_message(int(low.sum()), n_ep, dataset.n_episodes, float(model.floor),
                                  estimators, expected_floored_rows(model, dataset, exempt))


def floored_counts_message(rows: int, episodes: int, n_episodes: int, floor: float,
                           estimators: tuple[str, ...], expected: float) -> str | None:
    """:data:`MSG_FLOORED` from counts (:func:`floored_propensity_message`), or None.

    ``rows`` floored logged rows in ``episodes`` of ``n_episodes`` episodes, ``expected`` of
    them by the model itself; only the weighted ``estimators`` (IS-type, ``dr``, ``wdr``) are
    named. When the episodes, or those without such a row, number 1 to ``MIN_CELL - 1`` (or the
    rows do), the counts are not shown (:data:`MSG_FLOORED_FEW`): the message is published
    (the result JSON's ``behavior_model.floored_warning``).
    """
    weighted = _weighted(estimators)
    if (not weighted or n_episodes <= 0 or episodes <= FLOORED_EPISODE_SHARE * n_episodes
            or rows <= FLOORED_EXCESS * expected):
        return None
    if small_count(episodes, n_episodes) is None or rows < MIN_CELL:
        counts = MSG_FLOORED_FEW.format(share=100.0 * FLOORED_EPISODE_SHARE, min_cell=MIN_CELL,
                                        times=FLOORED_EXCESS, expected=expected)
    else:
        counts = MSG_FLOORED_COUNTS.format(rows=rows, episodes=episodes,
                                           pct=100.0 * episodes / n_episodes,
                                           excess=rows / max(expected, 1e-12), expected=expected)
    return MSG_FLOORED.format(floor=float(floor), counts=counts, cap=1.0 / float(floor),
                              estimators=", ".join(weighted), **_FLOORED_NUMBER[len(weighted) > 1])


@dataclass(frozen=True)
class PropensityCheck:
    """Agreement of the logged propensities with a quick behaviour model.

    Attributes
    ----------
    stat : float
        Mean over rows of ``|log(logged / fitted)|``.
    n_rows : int
    model : str
        The fitted model, in words.
    example : tuple or None
        ``(row, logged, fitted)`` of the row with the largest disagreement.
    panel_rows : int or None
        Rows of the panel when :attr:`n_rows` are a sample of them (streamed), else None.
    """

    stat: float
    n_rows: int
    model: str
    example: tuple[int, float, float] | None
    panel_rows: int | None = None

    @property
    def warn(self) -> bool:
        """True when :attr:`stat` exceeds :data:`PROPENSITY_LOG_RATIO`."""
        return bool(self.stat > PROPENSITY_LOG_RATIO)

    def message(self, source: str, column: str) -> str | None:
        """The warning text, or None when the propensities agree well enough."""
        if not self.warn:
            return None
        ex = ""
        if self.example is not None:
            row, p, q = self.example
            ex = f"; e.g. {p:.3g} logged where the model gives {q:.3g}"
        rows = f"{self.n_rows:,} rows"
        if self.panel_rows is not None and self.panel_rows > self.n_rows:
            rows += f", a random sample of whole episodes of the panel's {self.panel_rows:,}"
        return MSG_PROPENSITY.format(source=source, column=column, model=self.model,
                                     factor=float(np.exp(self.stat)), stat=self.stat,
                                     rows=rows, limit=PROPENSITY_LOG_RATIO, example=ex)


def _level_counts(codes: NDArray[np.int64], actions: NDArray[np.int64], n_actions: int
                  ) -> NDArray[np.int64]:
    """Logged ``(level, action)`` counts, shape ``(n_levels, n_actions)``."""
    n_levels = int(codes.max()) + 1 if codes.size else 1
    counts = np.bincount(codes * n_actions + actions, minlength=n_levels * n_actions)
    return np.asarray(counts.reshape(n_levels, n_actions), dtype=np.int64)


def _panel_frequency(counts: NDArray[np.int64], codes: NDArray[np.int64],
                     actions: NDArray[np.int64]) -> NDArray[np.float64]:
    """Smoothed frequency of each row's action in its level, from ``(level, action)`` counts.

    The counts may be a whole panel's when the rows are a sample of it (streamed).
    """
    n_actions = counts.shape[1]
    n_cell = counts.sum(axis=1)[codes]
    return np.asarray((counts[codes, actions] + 1.0 / n_actions) / (n_cell + 1.0),
                      dtype=np.float64)


def _combine(parts: list[NDArray[np.int64]]) -> NDArray[np.int64]:
    """Dense codes of the combinations of several code columns (mixed radix, 1-D uniques)."""
    codes = np.asarray(parts[0], dtype=np.int64)
    for nxt in parts[1:]:
        n_next = int(nxt.max(initial=0)) + 1
        key = codes * n_next + np.asarray(nxt, dtype=np.int64)  # < n_rows * n_next: no overflow
        codes = np.unique(key, return_inverse=True)[1].astype(np.int64).ravel()
    return codes


def _cell_candidates(dataset: TrajectoryDataset, actions: NDArray[np.int64],
                     cell_counts: list[NDArray[np.int64]] | None
                     ) -> list[tuple[str, NDArray[np.int64], NDArray[np.int64]]]:
    """The cells whose action frequencies may stand for the clinicians' propensities.

    Each categorical column alone (its counts over the whole panel when ``cell_counts`` gives
    them), every pair of categorical columns and all of them together, and each of those
    crossed with one numeric column whose values repeat (its distinct values: a discretised
    score such as a severity grade). Clinicians' propensities often depend on several
    columns together (diagnosis x admission type, or diagnosis x severity): one column alone
    disagreed with true propensities by a factor of 4 on a 3-column hospital panel. Cells too
    thin to test are dropped by the caller; a propensity column that is not the clinicians'
    disagrees with all of them. Returns ``(label, codes of shape (n,), counts of shape
    (n_cells, n_actions))``.
    """
    from itertools import combinations

    n_actions = int(dataset.n_actions)
    cat = (np.zeros((dataset.n_steps, 0), dtype=np.int64) if dataset.categorical is None
           else np.asarray(dataset.categorical, dtype=np.int64))
    names = list(dataset.categorical_names)
    out: list[tuple[str, NDArray[np.int64], NDArray[np.int64]]] = []
    for j in range(cat.shape[1]):
        codes = cat[:, j]
        counts = (_level_counts(codes, actions, n_actions) if cell_counts is None
                  else cell_counts[j])
        out.append((repr(names[j]), codes, counts))
    k = cat.shape[1]  # pairs and all of them (not every subset: 2^k of them)
    groups = [list(c) for c in combinations(range(k), 2)] + ([list(range(k))] if k > 2 else [])
    # numeric columns with repeated values (a score, a grade); a continuous one makes cells
    # of one row each, too thin to test anything
    num_codes = {} if dataset.states is None else {
        x: np.unique(dataset.states[:, x], return_inverse=True)[1].astype(np.int64).ravel()
        for x in range(dataset.states.shape[1])}
    numeric = [x for x, c in num_codes.items() if int(c.max(initial=0)) < dataset.n_steps // 2]
    for cols in groups + [[j] for j in range(cat.shape[1])]:
        for x in [None, *numeric]:
            if x is None and len(cols) == 1:
                continue  # the column alone: above
            parts = [cat[:, c] for c in cols] + ([] if x is None else [num_codes[x]])
            codes = _combine(parts)
            label = " x ".join([repr(names[c]) for c in cols]
                               + ([] if x is None else [repr(dataset.state_names[x])]))
            out.append((label, codes, _level_counts(codes, actions, n_actions)))
    return out


def check_logged_propensities(dataset: TrajectoryDataset, *, random_state: int = 0,
                              cell_counts: list[NDArray[np.int64]] | None = None,
                              model: Any = None) -> PropensityCheck | None:
    r"""Compare the logged propensities with a quick behaviour model of the logged actions.

    The statistic is the mean over rows of :math:`|\log p_i - \log \hat b(a_i \mid s_i)|`,
    with :math:`p_i` the logged propensity and :math:`\hat b` the fast numeric behaviour model
    of :class:`~equicare.ope._support.LoggedSupport` (multinomial logistic on at most 20,000
    rows, in-sample). With wide categorical states (no numeric model), :math:`\hat b` is the
    smoothed frequency of the action among the rows of the same cell: the levels of one
    categorical column, or of a combination of columns, possibly with a numeric column's
    values (:func:`_cell_candidates`), whichever predicts the logged actions best by
    leave-one-out log-likelihood (chosen blind to the propensities, so a propensity column that
    is not the clinicians' cannot pick the cells it agrees with). Cost: the support check's
    fit (0.5 s on 20k rows); the cells: 0.1 s on a 50,000-row panel with three categorical and
    two numeric columns, 0.8 s with eight and four.

    Parameters
    ----------
    dataset : TrajectoryDataset
        With ``behavior_prob``.
    random_state : int
        Seed of the rows the numeric model is fitted on.
    cell_counts : list of ndarray of shape (n_levels_j, n_actions), optional
        Logged ``(level, action)`` counts of each categorical column over a panel of which
        ``dataset`` is a sample (:class:`~equicare.ope._stream_support.CellCounts`): the
        per-level frequencies are then the panel's (default: those of ``dataset``).
    model : BehaviorModel, optional
        The fast numeric model, already fitted on ``dataset`` (the streamed support check's,
        :func:`~equicare.ope._stream_support.support_check`); default: fitted here.

    Returns
    -------
    PropensityCheck or None
        None without logged propensities or rows.
    """
    from equicare.ope._support import LoggedSupport

    p = dataset.behavior_prob
    if p is None or dataset.n_steps == 0:
        return None
    a = np.asarray(dataset.actions, dtype=np.int64)
    logp = np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0))
    view = dataset
    kept = np.ones(dataset.n_steps, dtype=bool)
    if model is None:
        checker = LoggedSupport(dataset, random_state=random_state)
        model, view = checker._model, checker._view
    if model is not None:
        q = np.empty(dataset.n_steps)
        for rows, probs in model.action_prob_blocks(view):
            r = np.arange(dataset.n_steps)[rows]
            q[r] = probs[np.arange(r.size), a[r]]
        what = "multinomial logistic on the states"
    else:
        cands = []
        min_rows = max(MIN_LEVEL_ROWS, int(np.ceil(MIN_ROWS_PER_ACTION * dataset.n_actions)))
        prior = np.bincount(a, minlength=dataset.n_actions) + 1.0
        prior = prior / prior.sum()
        for label, codes, counts in _cell_candidates(dataset, a, cell_counts):
            n_cell = counts.sum(axis=1)[codes]
            keep = n_cell >= min_rows
            if keep.sum() < min(MIN_CHECKED_ROWS, max(1, dataset.n_steps // 2)):
                continue  # cells too thin for their frequencies to test anything
            # chosen by how well the cells predict the actions (leave-one-out, blind to the
            # propensities), not by how well they agree with the propensities: the best
            # agreement let a constant 1/A column pass through an irrelevant column ('site');
            # the row itself left out, one pseudo-row of the panel's action frequencies added
            loo = (counts[codes, a] - 1.0 + prior[a]) / n_cell
            score = float(np.log(np.clip(loo, 1e-12, None)).mean())
            cands.append((score, label, (counts, codes), keep))
        has_state = dataset.categorical is not None and dataset.categorical.shape[1] > 0
        if not cands and has_state:
            return None
        if not cands:  # no state at all: the marginal frequency
            zero = np.zeros_like(a)
            cands.append((0.0, "", (_level_counts(zero, a, dataset.n_actions), zero),
                          np.ones(a.size, dtype=bool)))
        _, label, (counts, codes), kept = max(cands, key=lambda c: c[0])
        q = _panel_frequency(counts, codes, a)  # in-sample, of the chosen cells only
        what = ("action frequencies" if not label else
                f"action frequencies per level of {label}")
        if not kept.all():
            what += f", on the rows of its levels with {min_rows} or more rows"
    dev = np.abs(logp - np.log(np.clip(q, 1e-12, 1.0)))
    if not kept.all():
        rows = np.flatnonzero(kept)
        dev, logp, q = dev[rows], logp[rows], q[rows]
    k = int(np.argmax(dev))
    return PropensityCheck(stat=float(dev.mean()), n_rows=int(dev.size), model=what,
                           example=(int(k if kept.all() else rows[k]), float(np.exp(logp[k])),
                                    float(q[k])))


def propensity_warning(dataset: TrajectoryDataset, source: str) -> str | None:
    """The warning of :func:`check_logged_propensities` for a dataset read with a manifest.

    None when the manifest names no ``behavior_prob`` column or the propensities agree. Used by
    ``equicare validate`` and ``equicare evaluate`` in memory (streamed:
    :func:`sample_propensity_check`).
    """
    man = dataset.manifest
    if dataset.behavior_prob is None or man is None or not man.behavior_prob:
        return None
    check = check_logged_propensities(dataset)
    return None if check is None else check.message(source, man.behavior_prob)


def sample_propensity_check(cells: Any, n_rows: int, *, random_state: int = 0,
                            model: Any = None) -> PropensityCheck | None:
    """:func:`check_logged_propensities` of a streamed panel, on its sampled episodes.

    Parameters
    ----------
    cells : CellCounts
        Summed over the chunks (:func:`~equicare.ope._stream_support.count_chunk` with
        ``rate=fast_rate(n_rows)``): the panel's ``(level, action)`` counts and a random sample
        of about 20,000 rows of whole episodes, drawn by episode id.
    n_rows : int
        Rows of the panel.
    random_state : int
        As :func:`check_logged_propensities` (with a sample of more than 20,000 rows, the
        numeric model's rows within it).
    model : BehaviorModel, optional
        The fast numeric model already fitted on ``cells.sample`` (the streamed support
        check's); default: fitted here.

    Returns
    -------
    PropensityCheck or None
        None without logged propensities or sampled rows.
    """
    from dataclasses import replace

    from equicare.data._chunks import concat_datasets

    if not cells.sample:
        return None
    check = check_logged_propensities(concat_datasets(cells.sample), random_state=random_state,
                                      cell_counts=cells.counts or None, model=model)
    return None if check is None else replace(check, panel_rows=int(n_rows))
