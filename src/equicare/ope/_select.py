r"""``q_model="auto"``: choose the Q-model by cross-fitted held-out TD error.

Candidates (those that apply to the data): ``tabular_stationary`` and ``tabular_backward``
(categorical states), ``linear`` (sparse design), ``gbm`` and ``mlp`` (the last two only while
rows x fitting iterations stay within :data:`AUTO_FLEXIBLE_WORK`, since their fits cost minutes
on long panels; skipped candidates are reported with the reason).

Criterion. Episodes are split into ``K`` folds. Each candidate is fitted ``K`` times with the
held-out fold's rows weighted 0 (so the fit never sees them). On the held-out rows the
temporal-difference errors under the target policy are

.. math::

    \delta_i = r_i + \gamma \textstyle\sum_{a'} \pi_e(a' \mid s_{i+1}) \hat Q(s_{i+1}, a')
               - \hat Q(s_i, a_i).

The plain held-out TD error :math:`\frac1{|H|}\sum_i \delta_i^2` (Voloshin, Le, Jiang & Yue
2021, "Empirical Study of Off-Policy Policy Evaluation for Reinforcement Learning"; Paine et al.
2020) weighs the Bellman error under the *behaviour* distribution and is dominated by the
transitions' own noise (the double-sampling problem): on a clinical-shaped test bed it preferred
a linear model whose value was 9% off to a stationary table 2% off. What decides an OPE
estimate's error is the Bellman error under the *target* policy's occupancy: for any ``Q``,

.. math::

    v^\pi - \hat v_{\mathrm{FQE}}(Q) = \mathbb E_{d^\pi}\big[(\mathcal T^\pi Q - Q)(s, a)\big]
    \approx \frac1{n_H} \sum_{i \in H} \hat w_i \, \delta_i ,

with ``w = d^pi / d^D`` the state-action density ratio of marginalised importance sampling
(Uehara, Huang & Jiang 2020, "Minimax Weight and Q-Function Learning for Off-Policy
Evaluation", eq. 2; Xie, Ma & Wang 2019). We estimate ``w`` on the training folds from the
adjoint of the stationary tabular LSTD system (the linear one without categorical states), the
same solve that gives the linearised bootstrap (:mod:`equicare.ope._lstd`), truncated to
``[0, 100]`` like importance weights (sparse pairs the target policy revisits can otherwise get
ratios in the millions), and score each
candidate by the debiased squared estimated bias of its value,

.. math::

    \mathrm{score}(\hat Q) = \bar b^2 + \widehat{\mathrm{Var}}(\bar b), \qquad
    b_e = \sum_{i \in e} \hat w_i \delta_i ,

over the held-out episodes ``e`` of all folds (an estimate of ``E[bbar^2]``: the noise of a
candidate's own Bellman errors counts against it). The plain held-out TD error is reported
alongside.

Choice (a standard-error rule, :func:`choose_with_reference`). The *reference*, the model
whose density ratio weighs the errors (the stationary table with categorical states, else the
linear model), is kept unless the lowest-scoring candidate's ``|bbar|`` is smaller by more than
``2 sqrt(se_ref^2 + se_best^2)`` (:data:`AUTO_N_SE`). The estimated biases are noisy where the
density ratios are extreme (deterministic targets, sparse 5,000-state panels): on the Garnet
test bed the plain minimum chose the linear model on such panels, whose estimates were several
times further from the truth than the table's; the rule keeps the table there (docs/ope.md,
"auto against each fixed Q-model"). The chosen model is refitted on all episodes.

Cells. With several categorical state columns the tables' cells are the combinations of the
columns that change the dynamics given the others (:func:`equicare.data.choose_cells`, by
held-out log-likelihood of the next state, the episode's end and the reward): a column such
as a care site that does not drive outcomes multiplies the cells without adding information,
and the tables pooled over it are exact. The estimated-bias criterion below cannot make that
choice: on the Garnet test bed with an irrelevant 30-level site it kept the all-column table
(mean |error| 5.6%, against 1.5% pooled over the site) under the two-standard-error rule,
and its plain minimum chose a table over the site alone (8% off) on other panels. The
tabular candidates are named with their cells, ``tabular_stationary[state]``.

Numeric states. When numeric state columns vary within the categorical cells, binned copies of
them (:func:`numeric_bin_columns`) join the columns of that choice, and a kept copy is among
the cells (``tabular_stationary[risk@0.88/1.14]``). The criterion cannot judge them either:
its density ratio is a function of the reference table's (cell, action) pairs, and the table's
fixed point makes its TD errors orthogonal to every such function, so the table's estimated
bias is 0 plus held-out noise however much it misses within its cells (docs/ope.md, "Tables
and numeric states").

Numeric states the target reads. The cells' choice never looks at the target policy. When the
target's probabilities change within the chosen cells along a numeric state (a rule "MAT if
the last use was under 60 days ago"), :func:`target_read_bins` finds the target's thresholds
and adds them to the cells if the column drives the rewards (held-out squared error of the
mean reward per cell and action) or the transitions between cells (the same for the TD target
``r + gamma Vbar(next cell)`` under the table on the current cells); otherwise the column stays
pooled and the selection reports it (``numeric_bins["target_reads"]``).

With categorical states only held-out transitions between state cells that the training folds
visit are scored (for every candidate alike). A fold's table has no value for a cell it never
saw, so a held-out transition *into* such a cell scored ``V = 0`` there and charged the tables
with a bias that the refit on all episodes does not have (on 700-state panels of 1,000
episodes: -15% for the stationary table against an actual error of +1 to +5%), and ``auto``
chose the linear model, whose misspecification bias its intervals do not carry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.data._cells import (
    CELL_FOLDS,
    CELL_N_SE,
    CellChoice,
    _codes,
    cell_means,
    choose_cells,
    episode_folds,
    mean_tv,
    reward_gain,
)
from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.ope._fqe import (
    AUTO_SELECTOR,
    FQEConfig,
    LoggedQFit,
    bin_codes,
    binned_name,
    cell_columns,
    cell_parts,
    cell_ranges,
    fit_fqe_logged,
    parse_binned,
    varies_within_cells,
)
from equicare.ope._lstd import LSTDFit
from equicare.privacy import gap_edges, quantile_edges
from equicare.utils import PARAM_MESSAGE, RandomState, check_random_state

__all__ = ["QSelection", "select_q_model", "cross_fit", "draw_folds", "CrossFit",
           "AUTO_CANDIDATES",
           "AUTO_FOLDS",
           "AUTO_FLEXIBLE_WORK", "AUTO_N_SE", "AUTO_NUMERIC_BINS", "candidate_config",
           "candidate_name", "choose_with_reference", "numeric_bin_columns", "table_cells",
           "target_read_bins", "READS_LEAVES", "READS_MIN_LEAF", "READS_TV"]

#: Candidate names in report order.
AUTO_CANDIDATES: tuple[str, ...] = ("tabular_stationary", "tabular_backward", "linear", "gbm",
                                    "mlp")
#: Cross-fitting folds of the criterion.
AUTO_FOLDS = 2
#: Standard errors by which a candidate's estimated |bias| must beat the reference's.
AUTO_N_SE = 2.0
#: Cap on the estimated density ratios that weight the held-out TD errors.
RATIO_CAP = 100.0
#: Rows x fitting iterations (the longest stay, at most 100) up to which ``auto`` also fits the
#: gbm and mlp candidates (one backward gbm fit per step, one mlp pass per iteration).
AUTO_FLEXIBLE_WORK = 200_000
#: Bins (near quantiles) of each numeric state column that varies within the tables' cells,
#: offered to the cells' choice as one more column (:func:`numeric_bin_columns`).
AUTO_NUMERIC_BINS = 3
#: Leaves of the tree that finds where the target policy's probabilities change within cells.
READS_LEAVES = 8
#: Smallest leaf of that tree, as a share of its rows.
READS_MIN_LEAF = 0.01
#: Rows (every k-th) that tree is fitted on, at most.
#: Actions (those whose probabilities vary most within the cells) that tree predicts, at most.
READS_OUTPUTS = 8
READS_TREE_ROWS = 200_000
#: Row-weighted mean total variation of the target's mean probabilities between a numeric
#: column's bins within the cells from which the target reads the column. On six 127k-row
#: substance-use panels a policy that mixes practice half-and-half with a rule read days since
#: last use at 0.026 (through practice's half), and its bins moved FQE 0.016-0.025 away from
#: the truth on each of the four panels where they were added; a rule on it reads it at 0.43.
READS_TV = 0.05


def candidate_name(base: str, cells: tuple[str, ...] | None) -> str:
    """``base`` with its table's cells, e.g. ``"tabular_stationary[state]"``."""
    return base if cells is None else f"{base}[{','.join(cells)}]"


def candidate_config(name: str) -> FQEConfig:
    """The :class:`FQEConfig` of an ``auto`` candidate.

    A tabular name may end with its cells' columns in brackets,
    ``"tabular_stationary[diagnosis,site]"`` (default: every categorical state column).
    """
    if name.endswith("]") and "[" in name:
        base, cols = name[:-1].split("[", 1)
        if not base.startswith("tabular"):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="q_model", owner="candidate_config",
                expected="a tabular Q-model when cells are named in brackets", got=name))
        return replace(candidate_config(base),
                       cells=tuple(c.strip() for c in cols.split(",") if c.strip()) or None)
    if name == "tabular_stationary":
        return FQEConfig(model="tabular", horizon="stationary")
    if name == "tabular_backward":
        return FQEConfig(model="tabular", horizon="backward")
    if name == "tabular_window":
        return FQEConfig(model="tabular", horizon="window")
    if name in ("linear", "gbm", "mlp"):
        return FQEConfig(model=name)  # type: ignore[arg-type]
    raise InvalidParameterError(PARAM_MESSAGE.format(
        name="q_model", owner="candidate_config",
        expected="one of " + ", ".join(repr(c) for c in (*AUTO_CANDIDATES, "tabular_window")),
        got=name))


@dataclass(frozen=True)
class QSelection:
    """Outcome of ``q_model="auto"``.

    Attributes
    ----------
    chosen : str
        Name of the winning candidate.
    candidates : dict of str to float or None
        Estimated squared value bias plus its variance of every candidate (None when skipped,
        and for the only applicable candidate, which is chosen without cross-fitting).
    td_error : dict of str to float or None
        Plain held-out mean squared TD error (for reference).
    skipped : dict of str to str
        Why a candidate was not fitted.
    n_folds : int
    seconds : dict of str to float
        Cross-fitting time per candidate.
    bias : dict of str to float or None
        Estimated value bias ``v - v(Q)`` of each candidate, ``bbar`` (None when not
        cross-fitted).
    bias_se : dict of str to float or None
        Its standard error over episodes.
    reference : str or None
        The candidate kept unless another beats it by more than :data:`AUTO_N_SE` standard
        errors (:func:`choose_with_reference`); None when there was nothing to cross-fit.
    cells : tuple of str or None
        The categorical columns whose combinations are the tabular candidates' cells (None:
        all of them, or no categorical states).
    cell_choice : CellChoice or None
        How they were chosen (:func:`equicare.data.choose_cells`; None with one categorical
        column, or cells given).
    group_bias : dict of str to dict of str to (float, float)
        The chosen candidate's estimated value bias and its standard error within each level of
        each subgroup attribute asked for (``groups`` of :func:`select_q_model`): the held-out
        TD errors weighted by the level's own density ratio ``d^pi_G / d^D``.
    replaced : str or None
        The candidate the criterion chose when ``chosen`` replaced it after the fit: the
        stationary table, replaced by ``"tabular_window"`` on censored stays
        (:mod:`equicare.ope._censoring`; ``bias`` then has no entry for ``chosen``, and
        ``group_bias`` is empty). None otherwise.
    numeric_bins : dict
        Empty unless numeric state columns vary within the tables' categorical cells: then
        ``"offered"``, the binned columns offered to the cells' choice
        (:func:`numeric_bin_columns`; the kept ones are among ``cells``); streamed, ``"why"``
        the edges may differ from the whole panel's when auto's sample is not the whole panel
        (:func:`equicare.ope._stream_q.choose_q_stream`). ``"target_reads"``: the numeric
        columns the target policy reads within the cells (:func:`target_read_bins`: edges,
        ``tv``, ``reward_gain``, ``se``, ``added``); an added column's bins are among ``cells``.
    """

    chosen: str
    candidates: dict[str, float | None]
    td_error: dict[str, float | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    n_folds: int = AUTO_FOLDS
    seconds: dict[str, float] = field(default_factory=dict)
    bias: dict[str, float | None] = field(default_factory=dict)
    bias_se: dict[str, float | None] = field(default_factory=dict)
    reference: str | None = None
    cells: tuple[str, ...] | None = None
    cell_choice: CellChoice | None = None
    group_bias: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    replaced: str | None = None
    numeric_bins: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (result JSON ``"q_model"``)."""
        return {"chosen": self.chosen,
                "criterion": ("cross-fitted squared value bias plus its variance: held-out TD "
                              "errors weighted by estimated d_pi/d_D (lower is better); the "
                              "reference is kept unless the lowest beats its |bias| by more "
                              f"than {AUTO_N_SE:g} standard errors"),
                "reference": self.reference,
                "cells": None if self.cells is None else list(self.cells),
                "cell_choice": None if self.cell_choice is None else self.cell_choice.to_dict(),
                "n_folds": self.n_folds, "candidates": dict(self.candidates),
                "td_error": dict(self.td_error), "skipped": dict(self.skipped),
                "seconds": dict(self.seconds), "bias": dict(self.bias),
                "bias_se": dict(self.bias_se),
                **({"replaced": {"criterion_choice": self.replaced,
                                 "why": "censored stays bias it (q_model['censoring'])"}}
                   if self.replaced else {}),
                **({"group_bias": {a: {lv: {"bias": b, "se": se} for lv, (b, se) in d.items()}
                                   for a, d in self.group_bias.items()}}
                   if self.group_bias else {}),
                **({"numeric_bins": dict(self.numeric_bins)} if self.numeric_bins else {})}


def _held_out_td(fit: LoggedQFit, dataset: TrajectoryDataset, gamma: float
                 ) -> NDArray[np.float64]:
    """TD errors of every row under the target policy, shape ``(n_steps,)``."""
    nxt = dataset.next_index
    has_next = (nxt >= 0) & ~dataset.terminals
    v_next = np.where(has_next, fit.v[np.maximum(nxt, 0)], 0.0)
    return np.asarray(dataset.rewards + gamma * v_next - fit.q_sa)


def _seen_transitions(cells: NDArray[np.int64], train: NDArray[np.bool_],
                      nxt: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Rows whose state cell, and next row's state cell (if any), training rows visit."""
    seen = np.isin(cells, np.unique(cells[train]))
    return np.asarray(seen & np.where(nxt >= 0, seen[np.maximum(nxt, 0)], True))


def _density_ratio(fit: LoggedQFit, dataset: TrajectoryDataset, train: NDArray[np.bool_],
                   start_sets: NDArray[np.bool_]) -> NDArray[np.float64] | None:
    """Estimated ``d^pi / d^D`` at every row from an LSTD fit on the training rows, or None.

    One column per start set (``start_sets``, shape ``(n_episodes, m)``): ``d^pi`` starts from
    the first rows of the set's training episodes (every episode: the value's occupancy; a
    subgroup: its own), all from one transposed solve. Shape ``(n_steps, m)``; None without an
    LSTD fit or when the first column is not finite (a later column that is not is NaN).
    """
    if fit.lstd is None or not isinstance(fit.lstd, LSTDFit):
        return None
    starts = dataset.episode_offsets[:-1]
    member = np.asarray(start_sets, dtype=bool) & train[starts][:, None]
    n_train = np.maximum(member.sum(axis=0), 1).astype(np.float64)
    first = np.zeros((dataset.n_steps, member.shape[1]))
    first[starts] = member / n_train
    z = fit.lstd.solve_t(fit.lstd.gradients(first, np.zeros_like(first)))
    w = np.asarray(fit.lstd.x @ z).reshape(dataset.n_steps, -1) * n_train
    finite = np.isfinite(w).all(axis=0)
    if not finite[0]:
        return None
    w[:, ~finite] = np.nan
    # truncated like importance weights: sparse pairs that the target policy revisits can get
    # ratios in the millions, which would make every candidate's score noise
    return np.asarray(np.clip(w, 0.0, RATIO_CAP), dtype=np.float64)


def draw_folds(n_episodes: int, n_folds: int, rng: np.random.Generator,
               members: Any = None) -> tuple[NDArray[np.int64], int]:
    """Each episode's fold (``n_folds`` of near-equal size, shuffled) and a seed for the fits.

    With ``members`` (each episode's person, the manifest's ``member``, shape
    ``(n_episodes,)``) people are dealt to the folds with all their episodes, so that no
    held-out score reads a Q-model fitted on the same person's other stays; without it the
    draws are those of episodes (unchanged).
    """
    if members is None:
        fold = np.arange(n_episodes) % int(max(2, min(n_folds, n_episodes)))
        rng.shuffle(fold)
        return fold, int(rng.integers(2**31 - 1))
    from equicare.ope._bootstrap import cluster_codes

    person = cluster_codes(members)
    n_people = int(person.max()) + 1 if person.size else 0
    by_person = np.arange(n_people) % int(max(2, min(n_folds, n_people)))
    rng.shuffle(by_person)
    return np.asarray(by_person[person], dtype=np.int64), int(rng.integers(2**31 - 1))


@dataclass(frozen=True)
class CrossFit:
    """Per-episode held-out estimated biases of cross-fitted Q-models (:func:`cross_fit`).

    Attributes
    ----------
    b : dict of str to ndarray of shape (n_episodes,)
        Each candidate's ``b_e = sum_{i in e} w_i delta_i`` over its held-out scored rows, with
        ``w`` the density ratio of every episode's start (the value's occupancy).
    b_sets : dict of str to ndarray of shape (n_episodes, m)
        The same TD errors weighted by each start set's own density ratio (zeros when no ratio
        was available).
    sq : dict of str to float
        Sum of squared held-out TD errors.
    seconds : dict of str to float
    """

    b: dict[str, NDArray[np.float64]]
    b_sets: dict[str, NDArray[np.float64]]
    sq: dict[str, float]
    seconds: dict[str, float]

    def set_bias(self, name: str, column: int) -> tuple[float, float]:
        """``(mean, standard error)`` over episodes of one start set's estimated bias."""
        col = self.b_sets[name][:, column]
        n = col.size
        return float(col.mean()), float(col.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def cross_fit(dataset: TrajectoryDataset, target_probs: NDArray[np.float64],
              names: Sequence[str], weight_model: str, fold: NDArray[np.int64], seed: int,
              sets: NDArray[np.bool_] | None = None) -> CrossFit:
    """Fit every candidate on each fold's training episodes; weigh the held-out TD errors.

    Held-out rows are scored where their state cell and the next row's are visited by the
    training rows (categorical states). The density ratio comes from the fold's first fit,
    ``weight_model``'s when it is among ``names`` (it is fitted first); column 0 of the start
    sets is every episode, then the columns of ``sets``.

    Parameters
    ----------
    dataset : TrajectoryDataset
    target_probs : ndarray of shape (n_steps, n_actions)
    names : sequence of str
        Candidates (:func:`candidate_config` names).
    weight_model : str
        The candidate whose LSTD adjoint gives the density ratios.
    fold : ndarray of shape (n_episodes,)
        Each episode's fold, ``0 .. k-1``.
    seed : int
        Of the gbm and mlp fits.
    sets : ndarray of shape (n_episodes, m), optional
        Start sets (subgroup levels) whose own density ratios weigh the same TD errors.

    Returns
    -------
    CrossFit
    """
    k = int(fold.max()) + 1
    has_cat = dataset.categorical is not None and dataset.categorical.shape[1] > 0
    row_fold = fold[dataset.episode_index]
    gamma = float(dataset.gamma)
    starts = dataset.episode_offsets[:-1]
    nxt = dataset.next_index
    nxt_ok = np.where((nxt >= 0) & ~dataset.terminals, nxt, -1)
    prod = None
    if has_cat:  # held-out transitions are scored between (all-column) cells training visits
        assert dataset.categorical is not None
        sizes = tuple(len(lv) for lv in dataset.categorical_levels)
        prod = np.asarray(np.ravel_multi_index(dataset.categorical.T, sizes), dtype=np.int64)
    held_f = [row_fold == f for f in range(k)]
    scored_f = [h if prod is None else h & _seen_transitions(prod, ~h, nxt_ok) for h in held_f]
    order = sorted(names, key=lambda n: n != weight_model)
    n_sets = 0 if sets is None else sets.shape[1]
    everyone = np.ones((dataset.n_episodes, 1), dtype=bool)
    start_sets = everyone if sets is None else np.concatenate([everyone, sets], axis=1)
    b = {name: np.zeros(dataset.n_episodes) for name in order}
    b_g = {name: np.zeros((dataset.n_episodes, n_sets)) for name in order}
    sq = {name: 0.0 for name in order}
    seconds = {name: 0.0 for name in order}
    for f in range(k):
        held, scored = held_f[f], scored_f[f]
        w_hat: NDArray[np.float64] | None = None
        w_grp: NDArray[np.float64] | None = None
        for name in order:
            t0 = time.perf_counter()
            fit = fit_fqe_logged(dataset, target_probs, candidate_config(name),
                                 random_state=seed, weights=(~held).astype(np.float64))
            td = _held_out_td(fit, dataset, gamma)
            if w_hat is None:  # the fold's first fit: the weight model's when it runs
                w_all = _density_ratio(fit, dataset, ~held, start_sets)
                if w_all is None:  # no LSTD model: per-decision importance weights are not
                    w_hat = np.ones(dataset.n_steps)  # available here; plain TD sums
                else:  # column 0: every episode's start; then each level's
                    w_hat = w_all[:, 0]
                    if n_sets and np.isfinite(w_all[:, 1:]).all():
                        w_grp = w_all[:, 1:]
            ep_sum = np.add.reduceat(np.where(scored, w_hat * td, 0.0), starts)
            b[name] += np.where(fold == f, ep_sum, 0.0)
            if w_grp is not None:  # each level's own occupancy weighs the same TD errors
                grp_sum = np.add.reduceat(np.where(scored[:, None], w_grp * td[:, None], 0.0),
                                          starts, axis=0)
                b_g[name] += np.where((fold == f)[:, None], grp_sum, 0.0)
            sq[name] += float(np.sum(td[scored] ** 2))
            seconds[name] += time.perf_counter() - t0
    return CrossFit(b=b, b_sets=b_g, sq=sq, seconds=seconds)


def numeric_bin_columns(dataset: TrajectoryDataset, n_bins: int = AUTO_NUMERIC_BINS
                        ) -> TrajectoryDataset | None:
    """``dataset`` with binned copies of its varying numeric states as categorical columns.

    Each numeric state column that takes two values within some combination of the categorical
    states (:func:`~equicare.ope._fqe.varies_within_cells`) gets a column named
    :func:`~equicare.ope._fqe.binned_name` (``"risk@0.81/1.32"``) with its
    :func:`~equicare.privacy.quantile_edges` bins, for :func:`equicare.data.choose_cells` to keep
    or drop like any categorical column. None when no column varies within the cells (the
    Garnet test bed's severity, a function of the state) or none has two values.
    """
    varying = varies_within_cells(dataset, "tabular")
    if dataset.categorical is None or not varying or not any(varying):
        return None
    codes, names, levels = [], [], []
    for j, name in enumerate(dataset.state_names):
        edges = quantile_edges(dataset.states[:, j], n_bins) if varying[j] else np.zeros(0)
        if edges.size:
            codes.append(bin_codes(dataset.states[:, j], edges))
            names.append(binned_name(name, edges))
            levels.append(tuple(range(edges.size + 1)))
    if not names:
        return None
    return replace(dataset, categorical=np.column_stack([dataset.categorical, *codes]),
                   categorical_names=(*dataset.categorical_names, *names),
                   categorical_levels=(*dataset.categorical_levels, *levels),
                   _cache={})  # (the dataset's cached arrays are of its own columns)


def table_cells(dataset: TrajectoryDataset, random_state: RandomState = None
                ) -> tuple[tuple[str, ...] | None, Any, dict[str, Any]]:
    """The cells of ``auto``'s tables before it looks at a target: ``(cells, choice, bins)``.

    The categorical columns and the binned numeric states (:func:`numeric_bin_columns`) that
    change the dynamics given the others (:func:`equicare.data.choose_cells`). ``cells`` is
    None when the table is the categorical columns themselves; ``choice`` is the
    :class:`~equicare.data.CellChoice` (None with one categorical column and no varying numeric
    state); ``bins`` is ``{"offered": [...]}`` (the JSON's ``numeric_bins``) or empty. Requires
    categorical states.
    """
    rng = check_random_state(random_state)
    binned = numeric_bin_columns(dataset)
    if binned is not None:  # the binned copies compete with the categorical columns
        offered = list(binned.categorical_names[len(dataset.categorical_names):])
        choice = choose_cells(binned, random_state=rng)
        kept_bins = any(c in offered for c in choice.columns)
        cells = choice.columns if kept_bins or len(dataset.categorical_names) > 1 and (
            set(choice.columns) != set(dataset.categorical_names)) else None
        return cells, choice, {"offered": offered}
    if len(dataset.categorical_names) > 1:
        choice = choose_cells(dataset, random_state=rng)
        return (choice.columns if choice.dropped else None), choice, {}
    return None, None, {}


def target_read_bins(dataset: TrajectoryDataset, target_probs: NDArray[np.float64],
                     cells: tuple[str, ...] | None, *, n_se: float = CELL_N_SE
                     ) -> tuple[tuple[str, ...] | None, dict[str, dict[str, Any]]]:
    """Bins of the numeric states the target policy reads within a table's cells, if they matter.

    A table pooled over a column that the target policy reads (its probabilities change within
    the cells) and that drives the rewards cannot represent ``Q^pi``: a cell averages members
    the target treats differently, in the proportions practice visits them. The cells' choice
    (:func:`equicare.data.choose_cells`) does not see this: it never looks at the target, and
    its log-likelihood criterion loses rare rewards among the next state's symbols. Here:

    1. Where the target reads: a regression tree (:data:`READS_LEAVES` leaves, leaves of at
       least :data:`READS_MIN_LEAF` of the rows) of the target's probabilities minus their cell
       means on the numeric state columns that vary within the cells; its split points are
       where the target changes (a deterministic rule's thresholds; a split must lower the
       residuals' squared error by 1% of its total), moved into the gap between two observed
       values and rounded (:func:`equicare.privacy.gap_edges`, no row's value).
    2. A column is read when its bins move the target's mean probabilities within the cells by a
       row-weighted total variation of at least :data:`READS_TV`.
    3. It drives the rewards when crossing the cells with its bins lowers the held-out squared
       error of the mean reward per (cell, action) by more than ``n_se`` standard errors over
       episodes (:func:`equicare.data._cells.reward_gain`, 5 folds, seeded). It drives the
       transitions when it lowers, by as much, that of the TD target
       ``y_i = r_i + gamma Vbar(c_{i+1})`` (0 after a terminal row; rows at a censored end
       skipped), ``Vbar(c)`` the value of cell ``c`` under the stationary table on the current
       cells, averaged over the cell's rows: ``y`` depends on the row only through its reward
       and its next *cell*, so a column that changes where patients go next gains, and one
       that changes nothing but where the target acts next (a site it reads at every row)
       does not. Either is enough; the columns are tried from the most read, each against the
       cells with the ones kept before it. A kept column's bins join the cells
       (:func:`~equicare.ope._fqe.binned_name`).

    Both tests are sums per (cell, action) (``bincount``) plus one stationary-table fit per
    set of cells a column is tested against. A column the target reads that drives neither
    stays pooled (its bins would only cost variance); the returned report says so, and
    ``evaluate`` prints it. Nothing runs when no numeric state varies within the cells and no
    categorical column is pooled (the Garnet test bed), so those choices are unchanged.

    Parameters
    ----------
    dataset : TrajectoryDataset
    target_probs : ndarray of shape (n_steps, n_actions)
    cells : tuple of str or None
        The table's columns (None: every categorical state column).
    n_se : float, default=CELL_N_SE

    Returns
    -------
    cells : tuple of str or None
        ``cells`` with the kept bins appended (unchanged when none is kept).
    reads : dict of str to dict
        Per column the target reads: ``edges`` (or ``levels``), ``tv``, ``reward_gain`` and
        ``se``, ``value_gain`` and ``value_se`` (the TD target's, None when the stationary
        table is singular; per episode) and ``added``.
    """
    from sklearn.tree import DecisionTreeRegressor

    if (dataset.categorical is None or dataset.categorical.shape[1] == 0
            or dataset.n_episodes < 2):
        return cells, {}
    names = list(dataset.categorical_names if cells is None else cells)
    _, _, parts = cell_parts(dataset, tuple(names))
    cell = _codes(parts, list(range(parts.shape[1])))
    probs = np.asarray(target_probs, dtype=np.float64)
    reads: dict[str, dict[str, Any]] = {}
    row_fold: NDArray[np.int64] | None = None
    n = float(dataset.n_episodes)

    td: dict[tuple[str, ...], tuple[NDArray[np.float64], NDArray[np.bool_]] | None] = {}

    def td_target() -> tuple[NDArray[np.float64], NDArray[np.bool_]] | None:
        """``r + gamma Vbar(c')`` under the table on the current cells, the rows it is known.

        ``Vbar(c)``: the table's value of cell ``c``, averaged over the cell's rows (their own
        target probabilities), so the target is a function of the reward and the next *cell*
        only: what a column changes in it, it changes in the dynamics between cells, not in
        where the target acts next (a site the target reads at every row of an episode).
        None when the stationary table is singular (a loop without exit at gamma 1).
        """
        key = tuple(names)
        if key not in td:
            td.clear()
            try:
                fit = fit_fqe_logged(dataset, probs, candidate_config(
                    candidate_name("tabular_stationary", key)))
            except InvalidParameterError:  # MSG_SINGULAR_STATIONARY: the reward test alone
                td[key] = None
                return None
            v_cell = cell_means(fit.v[:, None], cell)[0][:, 0]
            nxt = dataset.next_index
            has = (nxt >= 0) & ~dataset.terminals
            v_next = np.where(has, v_cell[cell[np.maximum(nxt, 0)]], 0.0)
            td[key] = (np.asarray(dataset.rewards + dataset.gamma * v_next, dtype=np.float64),
                       has | np.asarray(dataset.terminals, dtype=bool))
        return td[key]

    def gain(fine: NDArray[np.int64], values: NDArray[np.float64] | None = None,
             rows: NDArray[np.bool_] | None = None) -> tuple[float, float]:
        nonlocal row_fold
        if row_fold is None:
            row_fold = episode_folds(dataset, CELL_FOLDS, random_state=0)
        stats = {k: (float(g.mean()), float(g.std(ddof=1) / np.sqrt(n))) for k, g in
                 reward_gain(dataset, cell, fine, row_fold, CELL_FOLDS, values, rows).items()}
        return max(stats.values(), key=lambda s: s[0] - n_se * s[1])

    def drives(fine: NDArray[np.int64]) -> tuple[bool, dict[str, float | None]]:
        """Whether the fine cells lower the held-out error of the mean reward or TD target."""
        r_gain, r_se = gain(fine)
        target = td_target()
        if target is None:
            return r_gain - n_se * r_se > 0, {"reward_gain": r_gain, "se": r_se,
                                               "value_gain": None, "value_se": None}
        v_gain, v_se = gain(fine, *target)
        return (r_gain - n_se * r_se > 0 or v_gain - n_se * v_se > 0,
                {"reward_gain": r_gain, "se": r_se, "value_gain": v_gain, "value_se": v_se})

    # a categorical column the cells pool (it does not change the next state's law given the
    # others) but that the target reads and that drives the rewards: a site whose levels want
    # different actions (the pooled table values each level's choice at the sites' average
    # reward: FQE 2.51 against 3.58 with the site on a 3-action panel, docs/ope.md)
    kept_cat = False
    for j, name in enumerate(dataset.categorical_names):
        if name in names:
            continue
        col = np.asarray(dataset.categorical[:, j], dtype=np.int64)
        fine = _codes(np.column_stack([cell, col]), [0, 1])
        tv = mean_tv(probs, cell, fine)
        if tv < READS_TV:
            continue
        keep, stats = drives(fine)
        reads[name] = {"levels": True, "tv": tv, **stats, "added": keep}
        if keep:
            names.append(name)
            cell, kept_cat = fine, True
    if not dataset.state_names:
        return (tuple(names) if kept_cat else cells), reads
    _, low, high = cell_ranges(dataset.states, cell)  # (a binned column varies in its bins)
    varying = [bool(v) for v in np.asarray((high > low).any(axis=0)).ravel()]
    if not any(varying):
        return (tuple(names) if kept_cat else cells), reads
    resid = probs - cell_means(probs, cell)[0][cell]
    cols = [j for j, v in enumerate(varying) if v]
    x = np.asarray(dataset.states, dtype=np.float64)[:, cols]
    rows = np.arange(0, dataset.n_steps, max(1, dataset.n_steps // READS_TREE_ROWS))
    if not np.any(resid[rows] ** 2 > 1e-12):
        return (tuple(names) if kept_cat else cells), reads
    y = resid[rows]
    if y.shape[1] > READS_OUTPUTS:  # the actions whose probabilities change most (the tree's
        y = y[:, np.argsort(-np.sum(y**2, axis=0), kind="stable")[:READS_OUTPUTS]]  # cost)
    tree = DecisionTreeRegressor(max_leaf_nodes=READS_LEAVES, random_state=0,
                                 min_samples_leaf=max(20, int(READS_MIN_LEAF * rows.size)),
                                 min_impurity_decrease=0.01 * float(np.var(y, axis=0).mean()))
    tree.fit(x[rows], y)
    splits = [(int(f), float(t)) for f, t in zip(tree.tree_.feature, tree.tree_.threshold,
                                                   strict=True) if f >= 0]
    found: list[tuple[float, str, NDArray[np.float64], NDArray[np.int64]]] = []
    binned = {b[0]: b[1] for b in map(parse_binned, names) if b is not None}
    for i, j in enumerate(cols):
        edges = gap_edges(dataset.states[:, j], [t for f, t in splits if f == i])
        if dataset.state_names[j] in binned and edges.size:  # not the cells' own bins again
            vals = np.unique(np.asarray(dataset.states[:, j], dtype=np.float64))
            gaps = np.searchsorted(vals, edges)
            edges = edges[~np.isin(gaps, np.searchsorted(vals, binned[dataset.state_names[j]]))]
        if edges.size == 0:
            continue
        b = bin_codes(dataset.states[:, j], edges)
        tv = mean_tv(probs, cell, _codes(np.column_stack([cell, b]), [0, 1]))
        if tv >= READS_TV:
            found.append((tv, dataset.state_names[j], edges, b))
    changed = kept_cat
    for tv, name, edges, b in sorted(found, key=lambda t: -t[0]):
        fine = _codes(np.column_stack([cell, b]), [0, 1])
        keep, stats = drives(fine)
        reads[name] = {"edges": [float(e) for e in edges], "tv": tv, **stats, "added": keep}
        if keep:  # a column the cells already bin (at its terciles) takes the target's edges too
            old = [i for i, c in enumerate(names) if (parse_binned(c) or ("",))[0] == name]
            if old:
                prev = parse_binned(names[old[0]])
                assert prev is not None
                names[old[0]] = binned_name(name, gap_edges(  # one edge per gap
                    dataset.states[:, dataset.state_names.index(name)], np.r_[prev[1], edges]))
            else:
                names.append(binned_name(name, edges))
            cell, changed = fine, True
    return (tuple(names) if changed else cells), reads


def select_q_model(dataset: TrajectoryDataset, target_probs: NDArray[np.float64], *,
                   candidates: tuple[str, ...] | None = None, n_folds: int = AUTO_FOLDS,
                   random_state: RandomState = None, cells: tuple[str, ...] | None = None,
                   groups: Sequence[str] = ()) -> QSelection:
    """Score each applicable candidate by cross-fitting; choose by :func:`choose_with_reference`.

    With several categorical state columns (and ``cells`` not given) the tabular candidates'
    cells are those of :func:`equicare.data.choose_cells`: the columns that change the
    dynamics given the others. When numeric state columns vary within the categorical cells,
    binned copies of them (:func:`numeric_bin_columns`) are offered to that choice too, so a
    table can use a risk score's bins and pool over a site that does not drive outcomes
    (docs/ope.md, "Tables and numeric states").

    Parameters
    ----------
    dataset : TrajectoryDataset
    target_probs : ndarray of shape (n_steps, n_actions)
    candidates : tuple of str, optional
        Default: every applicable one of :data:`AUTO_CANDIDATES`.
    n_folds : int
        Folds over episodes (>= 2).
    random_state : int, Generator or None
        Seed of the folds and the gbm/mlp fits.
    cells : tuple of str, optional
        The categorical columns whose combinations are the tables' cells (no choice of cells).
    groups : sequence of str
        Subgroup attributes whose levels get the chosen candidate's estimated bias
        (``QSelection.group_bias``; the subgroups' FQE intervals in :func:`evaluate`).

    Returns
    -------
    QSelection
    """
    rng = check_random_state(random_state)
    names = candidates or AUTO_CANDIDATES
    has_cat = dataset.categorical is not None and dataset.categorical.shape[1] > 0
    if cells is not None and has_cat:
        cell_columns(dataset, cells)  # checks the names
    skipped: dict[str, str] = {}
    run: list[str] = []
    work = dataset.n_steps * min(int(dataset.episode_lengths.max()), 100)
    for name in names:
        candidate_config(name)  # checks the name
        if name.startswith("tabular") and not has_cat:
            skipped[name] = "no categorical states"
        elif name in ("gbm", "mlp") and work > AUTO_FLEXIBLE_WORK:
            skipped[name] = (f"rows x iterations {work} > {AUTO_FLEXIBLE_WORK} (slow); choose "
                             f"it with q_model={name!r}")
        else:
            run.append(name)
    cell_choice = None
    bins_info: dict[str, Any] = {}
    tables = has_cat and cells is None and any(n.startswith("tabular") for n in run)
    if tables:
        cells, cell_choice, bins_info = table_cells(dataset, rng)
    if tables:  # a numeric state the target reads within the cells: its bins, if it matters
        cells, reads = target_read_bins(dataset, target_probs, cells)
        if reads:
            bins_info = {**bins_info, "target_reads": reads}
    if cells is not None and has_cat:  # the tables' names carry their cells
        def named(n: str) -> str:
            return candidate_name(n, cells) if n.startswith("tabular") and "[" not in n else n

        run = [named(n) for n in run]
        skipped = {named(n): why for n, why in skipped.items()}
        names = tuple(named(n) for n in names)
    k = int(max(2, min(n_folds, dataset.n_episodes)))
    if len(run) == 1:  # nothing to choose between: no cross-fitting
        return QSelection(chosen=run[0], candidates={name: None for name in names},
                          td_error={name: None for name in names}, skipped=skipped, n_folds=0,
                          cells=cells, cell_choice=cell_choice, numeric_bins=bins_info)
    fold, seed = draw_folds(dataset.n_episodes, k, rng, dataset.members)
    weight_model = candidate_name("tabular_stationary", cells) if has_cat else "linear"
    levels = [(a, lv) for a in groups
              for lv in np.unique(dataset.group_labels(a).astype(str))]
    sets = (np.stack([dataset.group_labels(a).astype(str) == lv for a, lv in levels], axis=1)
            if levels else None)
    cf = cross_fit(dataset, target_probs, run, weight_model, fold, seed, sets)
    b, sq, seconds = cf.b, cf.sq, cf.seconds
    n = float(dataset.n_episodes)
    scores: dict[str, float | None] = {name: None for name in names}
    tds: dict[str, float | None] = {name: None for name in names}
    bias: dict[str, float | None] = {name: None for name in names}
    bias_se: dict[str, float | None] = {name: None for name in names}
    for name, be in b.items():
        bias[name] = float(be.mean())
        bias_se[name] = float(be.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        # E[bbar^2] = bias^2 + Var(bbar): the noise of a candidate's own Bellman errors counts
        # against it (subtracting the variance would reward the noisiest model)
        scores[name] = float(be.mean() ** 2 + be.var(ddof=1) / n) if n > 1 else float(
            be.mean() ** 2)
        tds[name] = sq[name] / float(dataset.n_steps)
    fitted = {n_: s_ for n_, s_ in scores.items() if s_ is not None and np.isfinite(s_)}
    if not fitted:
        raise DataValidationError(
            "No Q-model candidate applies to this dataset (every candidate was skipped or "
            f"failed: {skipped or sorted(scores)}); name a q_model instead of 'auto'.")
    chosen = choose_with_reference(fitted, bias, bias_se, weight_model)
    group_bias: dict[str, dict[str, tuple[float, float]]] = {}
    if sets is not None and cf.b_sets[chosen].any():  # (zero: no density ratio was available)
        for j, (a, lv) in enumerate(levels):
            group_bias.setdefault(a, {})[lv] = cf.set_bias(chosen, j)
    return QSelection(chosen=chosen, candidates=scores, td_error=tds, skipped=skipped,
                      n_folds=k, seconds=seconds, bias=bias, bias_se=bias_se,
                      reference=weight_model if weight_model in fitted else None,
                      cells=cells if has_cat else None, cell_choice=cell_choice,
                      group_bias=group_bias, numeric_bins=bins_info)


def choose_with_reference(scores: dict[str, float], bias: dict[str, float | None],
                          bias_se: dict[str, float | None], reference: str,
                          n_se: float = AUTO_N_SE) -> str:
    """The lowest-scoring candidate if it clearly beats ``reference``, else ``reference``.

    ``reference`` (the model whose density ratio weighs the TD errors) is kept unless the
    lowest-scoring candidate's estimated ``|bias|`` is smaller than the reference's by more than
    ``n_se * sqrt(se_ref^2 + se_best^2)``: a standard-error rule of model selection (Breiman et
    al. 1984; Hastie, Tibshirani & Friedman 2009, section 7.10) that keeps the reference when
    the criterion cannot tell the two apart.

    Parameters
    ----------
    scores : dict of str to float
        Finite scores of the fitted candidates (lower is better).
    bias, bias_se : dict of str to float or None
        Each candidate's estimated value bias and its standard error.
    reference : str
    n_se : float, default=AUTO_N_SE
        Standard errors of the difference the lowest-scoring candidate must win by (0: the
        plain minimum).

    Returns
    -------
    str
    """
    best = min(scores, key=lambda n: scores[n])
    b_ref, b_best = bias.get(reference), bias.get(best)
    se_ref, se_best = bias_se.get(reference), bias_se.get(best)
    if (best == reference or reference not in scores or b_ref is None or b_best is None
            or se_ref is None or se_best is None):
        return best
    margin = n_se * float(np.hypot(se_ref, se_best))
    return best if abs(b_ref) - abs(b_best) > margin else reference

# ``FQEConfig(model="auto")`` in equicare.ope._fqe uses this module's selector
AUTO_SELECTOR.update(select=select_q_model, config=candidate_config)
