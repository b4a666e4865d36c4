"""Policy selection by honest evaluation: train candidates, keep the best lower confidence bound.

``equicare train --select auto`` calls :func:`train_select`. Candidates (SPIBB at a few
``N_wedge`` values, pessimistic value iteration at a few penalty strengths, BC/AWR/CQL at a short
budget) are trained on the training episodes and evaluated on held-out episodes with the OPE of
:mod:`equicare.ope` (the computation of :func:`equicare.ope.evaluate`, one bootstrap count matrix
shared by every candidate and the behaviour). By default (``bound="paired"``) a candidate's
bound is the one-sided lower confidence bound of its improvement over the behaviour, from the
same bootstrap replicates of both (paired; WDR by default). Among the candidates whose bound is
above 0, the one with the largest bound is kept; on panels with categorical states the OPE uses
the stationary tabular Q-model and FQE's paired bound orders the candidates that passed
(``rank_by``). Otherwise the result is a model folder that leaves every decision to the
clinicians (current practice, :class:`PracticeFallback`).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.utils import PARAM_MESSAGE, atomic_write_text, check_param, config_to_dict

__all__ = ["SelectConfig", "Candidate", "SelectionResult", "select_policy", "train_select",
           "SELECTION_FILE", "default_q_model", "choose_by_bounds", "PracticeFallback"]

SELECTION_FILE = "selection.json"
#: Warning of a selection on censored stays (``settings["censoring"]`` has the checks).
CENSORED_SELECTION = (
    "Selection on censored stays (evaluate's censoring check warns for {which}): {message} "
    "The held-out bounds value the logged windows, not whole stays: on a Garnet panel with "
    "stays cut at 3-30 steps a policy was kept whose exact value over the whole stay was "
    "below current practice (docs/learn.md, \"How safe is the bound\").")
NEURAL = ("bc", "awr", "cql")
BOUNDS = ("paired", "separate")
MULTIPLICITY = ("none", "bonferroni")
INTERVALS = ("studentized", "percentile")
RANKS = ("estimate", "bound")
ESTIMATORS = ("wdr", "dr", "wis", "wpdis", "fqe", "is", "pdis")


@dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """Settings of :func:`select_policy`.

    Parameters
    ----------
    n_wedges : tuple of float
        ``N_wedge`` values of the SPIBB candidates (empty: no SPIBB).
    pvi : tuple of (float, float, float, float[, int])
        ``(beta, prior, mix, tau[, min_count])`` of the pessimistic value iteration candidates
        (:class:`~equicare.learn.PVI`; a pair ``(beta, prior)`` means ``mix = 1, tau = 0``, a
        triple ``tau = 0``, four numbers ``min_count = 3``; empty: none).
    neural : tuple of str
        Neural learners among ``bc, awr, cql`` trained as candidates.
    neural_steps : int
        Gradient steps of each neural candidate.
    neural_hidden : tuple of int
        Hidden widths of the neural candidates' MLPs.
    valid_fraction : float
        Share of episodes held out for the evaluation with ``folds = 1`` (stratified by the
        first group attribute).
    estimators : tuple of str
        OPE estimators whose paired bounds decide: a candidate's bound is the smallest of their
        lower bounds (every estimator must beat the behaviour; the last one is the reported
        point value). Default WDR alone (with ``rank="bound"``): on the Garnet test bed
        (tuning seeds 101-105, then seeds 1-5; ``docs/learn.md``, "Which bound rule") it
        closed more of the gap than WIS and WDR together, whose WIS bound is too wide on long
        episodes with many actions, with the same worst case. Neither rule rejects every
        unsafe candidate: with deliberately unsafe ones added, both kept one on seeds 1-5.
    q_model : str or None
        Q-model of the OPE; None: ``tabular_stationary`` on panels with categorical state
        columns (over the columns that change the dynamics, :func:`default_q_model`; the
        tabular candidates act per cell, and a Q-model that resolves every cell
        and pools the steps is what their estimates need on sparse panels; on the Garnet study
        it beat ``auto``, the per-step ``tabular`` and ``tabular_window`` together with
        ``rank_by="fqe"``, ``docs/learn.md``, "The Q-model of the selection"), ``auto``
        otherwise. With the default, a candidate whose stationary table ``evaluate``'s
        censoring check warns for is valued with the window table of the same cells (as
        ``auto`` does); a stationary table named here only warns.
    bootstrap : int or None
        Bootstrap replicates of the intervals (of people when the held-out panel names
        members who re-enrol, else of episodes). None (default): enough for the level of
        every bound, ``max(200, ceil(10 K / alpha))`` under ``multiplicity="bonferroni"``
        (1,200 with the default 12 candidates), else 200.
    alpha : float
        Every lower bound is one-sided at level ``alpha / 2`` (0.1: a one-sided 95% bound;
        ``alpha / (2 K)`` each under Bonferroni).
    interval : {"studentized", "percentile"}
        How a bound is read from the bootstrap replicates. ``studentized`` (default): the lower
        end of the symmetric bootstrap-t interval (Hall 1988), as :func:`equicare.ope.evaluate`
        by default: every replicate of the gain ``V_candidate - V_behaviour`` is divided by its
        own delta-method standard error (the candidate's estimator and the behaviour's mean
        return on the same resampled episodes), so a replicate that misses the rare episodes
        with large importance weights widens the bound instead of narrowing it.
        ``percentile``: the ``alpha / 2`` quantile of the replicates themselves (the previous
        default; on Garnet panels with strongly wrong or near-uniform clinicians it
        exceeded the exact gain of 14-26% of the candidates, ``docs/learn.md``, "How safe is
        the bound").
    bound : {"paired", "separate"}
        ``paired`` (default): a candidate beats the behaviour when the ``alpha / 2`` quantile of
        its bootstrap replicates of ``V_candidate - V_behaviour`` (both on the same resampled
        held-out episodes) is above 0, for every estimator; candidates are ranked by that
        bound. ``separate``: the candidate's own lower bound must exceed the behaviour's point
        value (looser: it ignores that both estimates move together).
    rank : {"estimate", "bound"}
        Which of the candidates that pass the bound is kept: the largest lower bound of the
        gain (default) or the largest estimated gain (the mean over the estimators of the point
        value minus the behaviour's). With candidates whose bound passes wrongly (a policy far
        from the behaviour, a noisy estimate with a high point value), ``estimate`` tends to
        keep exactly those: on the Garnet tuning seeds with deliberately unsafe candidates
        added it kept one 0.071 below the behaviour under every estimator set tried, ``bound``
        none there (but on seeds 1-5 WDR with ``bound`` kept one too, see docs/learn.md).
    rank_by : str or None
        The OPE estimator that orders the candidates which pass: its paired lower bound of the
        gain (``rank="bound"``) or its estimated gain (``rank="estimate"``). It need not be one
        of ``estimators``: it is then computed as well but does not decide who passes (e.g.
        pass on the doubly robust WDR bound, which stays consistent when the Q-model is wrong,
        and order by FQE's tighter bound). None: the passing estimators themselves (their
        smallest bound, their mean estimate). ``"auto"`` (default): ``"fqe"`` on panels with
        categorical state columns, where the OPE's Q-model is the tabular one, else None.
    multiplicity : {"none", "bonferroni"}
        ``bonferroni`` (default): every bound (and interval) is at level ``alpha / K``, so
        with probability about ``1 - alpha / 2`` no candidate worse than the behaviour passes
        (simultaneous one-sided bounds: the kept candidate is chosen on the same held-out
        episodes that bound it). It needs enough bootstrap replicates in the tail:
        ``bootstrap * alpha / (2 K) >= 5``. ``none``: every candidate's bound is at level
        ``alpha``; keeping the best of ``K`` candidates then makes the kept one's bound
        optimistic (winner's curse).
    max_off_support_pct : float
        A candidate that puts more than this share (%) of its held-out mass on actions current
        practice (almost) never takes is not eligible: off the behaviour's support no OPE bound
        is trustworthy (default 1%; SPIBB candidates stay on the support by construction).
        The limit is absolute, not beyond practice's own share as ``evaluate``'s warning: on
        thin categorical levels practice itself shows several % (an ICU panel: 8.0%), and a
        candidate whose own 8.4% was mostly truly off the support (its exact value below
        practice's) could not be told from it; the note gives practice's share
        (:func:`_practice_pct`).
    refit_full : bool
        With ``folds = 1``: retrain the chosen candidate on all episodes before saving (the
        bound was computed for the candidate trained on the training episodes only; False keeps
        that one). Held-out rows of cells a candidate never saw are then evaluated with the
        behaviour reproduction (the refitted policy sees those cells).
    folds : int in [1, 20]
        2 (default): cross-fitting. The episodes are halved; each candidate is trained on one
        half and evaluated on the other and vice versa; the two held-out evaluations are pooled
        (every episode is held out once; values and bootstrap replicates weighted by held-out
        episodes), and the chosen candidate is retrained on all episodes (``valid_fraction``
        and ``refit_full`` unused). The bound is one of the mean value of the two half-trained
        policies, not of the saved one. ``K > 2``: the same with ``K`` folds
        (:meth:`TrajectoryDataset.kfold`, stratified like the halves): each candidate is
        trained ``K`` times on ``K - 1`` folds, so the policies bounded are closer to the
        saved one, and each fold's OPE sees ``1 / K`` of the episodes. 1: one split,
        ``valid_fraction`` held out.
    seed : int
    """

    n_wedges: tuple[float, ...] = (10.0, 100.0)
    pvi: tuple[tuple[float, ...], ...] = (
        (0.3, 5.0, 1.0, 0.0), (0.3, 20.0, 1.0, 0.0), (0.3, 20.0, 1.0, 0.1),
        (0.3, 20.0, 1.0, 0.3), (1.0, 20.0, 1.0, 0.1), (0.3, 20.0, 0.7, 0.1),
        (0.3, 20.0, 0.5, 0.1))
    neural: tuple[str, ...] = NEURAL
    neural_steps: int = 500
    neural_hidden: tuple[int, ...] = (64, 64)
    valid_fraction: float = 0.3
    estimators: tuple[str, ...] = ("wdr",)
    q_model: str | None = None
    bootstrap: int | None = None
    alpha: float = 0.1
    interval: Literal["studentized", "percentile"] = "studentized"
    bound: Literal["paired", "separate"] = "paired"
    rank: Literal["estimate", "bound"] = "bound"
    rank_by: str | None = "auto"
    multiplicity: Literal["none", "bonferroni"] = "bonferroni"
    max_off_support_pct: float = 1.0
    refit_full: bool = False
    folds: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        o = "SelectConfig"
        for name in ("n_wedges", "pvi", "neural", "neural_hidden"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        for n in self.n_wedges:
            check_param(n, "n_wedges", o, kind=(int, float), low=0,
                        expected="a tuple of numbers >= 0")
        quads = []
        for item in self.pvi:
            if (isinstance(item, str) or not hasattr(item, "__len__")
                    or len(item) not in (2, 3, 4, 5)
                    or not all(isinstance(v, int | float) and not isinstance(v, bool)
                               and v >= 0 for v in item)
                    or (len(item) >= 3 and item[2] > 1)
                    or (len(item) == 5 and (item[4] < 1 or item[4] != int(item[4])))):
                raise InvalidParameterError(
                    "The 'pvi' parameter of SelectConfig must be a list of "
                    "[beta, prior], [beta, prior, mix], [beta, prior, mix, tau] or "
                    "[beta, prior, mix, tau, min_count] lists of numbers >= 0 "
                    f"(mix <= 1, min_count an int >= 1). Got {item!r} instead.")
            quad: tuple[float, ...] = (float(item[0]), float(item[1]),
                                       float(item[2]) if len(item) >= 3 else 1.0,
                                       float(item[3]) if len(item) >= 4 else 0.0)
            if len(item) == 5 and int(item[4]) != 3:
                quad += (float(int(item[4])),)
            quads.append(quad)
        object.__setattr__(self, "pvi", tuple(quads))
        for a in self.neural:
            check_param(a, "neural", o, choices=NEURAL)
        if not self.n_wedges and not self.pvi and not self.neural:
            raise InvalidParameterError("SelectConfig: give at least one candidate (n_wedges, "
                                        "pvi or neural).")
        check_param(self.bound, "bound", o, choices=BOUNDS)
        check_param(self.rank, "rank", o, choices=RANKS)
        check_param(self.multiplicity, "multiplicity", o, choices=MULTIPLICITY)
        check_param(self.neural_steps, "neural_steps", o, kind=int, low=1, expected="an int >= 1")
        check_param(self.valid_fraction, "valid_fraction", o, kind=(int, float), low=0, high=1,
                    low_inclusive=False, high_inclusive=False)
        for name in ("estimators",):
            v = getattr(self, name)
            if isinstance(v, list | str):
                object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        if not self.estimators:
            raise InvalidParameterError(
                "SelectConfig: estimators must name at least one OPE estimator.")
        for e in self.estimators:
            check_param(e, "estimators", o, choices=ESTIMATORS)
        if self.rank_by is not None:
            check_param(self.rank_by, "rank_by", o, choices=(*ESTIMATORS, "auto"))
        check_param(self.interval, "interval", o, choices=INTERVALS)
        if self.bootstrap is not None:
            check_param(self.bootstrap, "bootstrap", o, kind=int, low=20,
                        expected="an int >= 20 or None")
        check_param(self.max_off_support_pct, "max_off_support_pct", o, kind=(int, float),
                    low=0, high=100)
        check_param(self.alpha, "alpha", o, kind=(int, float), low=0, high=1,
                    low_inclusive=False, high_inclusive=False)
        check_param(self.refit_full, "refit_full", o, kind=bool)
        check_param(self.folds, "folds", o, kind=int, low=1, high=20,
                    expected="an int in [1, 20]")
        check_param(self.seed, "seed", o, kind=int, low=0, expected="an int >= 0")
        k = self.n_candidates
        alpha = self.alpha / k
        if self.multiplicity == "bonferroni" and self.n_boot * alpha / 2 < 5:
            raise InvalidParameterError(
                f"SelectConfig: multiplicity='bonferroni' over {k} candidates puts "
                f"each bound at the {alpha / 2:.4g} quantile, which "
                f"{self.n_boot} bootstrap replicates cannot resolve (at least 5 "
                f"replicates in the tail); set bootstrap >= {math.ceil(10 / alpha)}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return config_to_dict(self)

    @property
    def n_candidates(self) -> int:
        """``K``: one candidate per ``n_wedges`` value, ``pvi`` entry and ``neural`` learner."""
        return len(self.n_wedges) + len(self.pvi) + len(self.neural)

    @property
    def n_boot(self) -> int:
        """Bootstrap replicates: ``bootstrap``, or the default for the level of every bound."""
        if self.bootstrap is not None:
            return int(self.bootstrap)
        if self.multiplicity == "bonferroni":
            return max(200, math.ceil(10 * self.n_candidates / self.alpha - 1e-9))
        return 200

    @property
    def computed(self) -> tuple[str, ...]:
        """The estimators each candidate is evaluated with: ``estimators`` plus ``rank_by``."""
        extra = (() if self.rank_by in (None, "auto") or self.rank_by in self.estimators
                 else (self.rank_by,))
        return tuple(self.estimators) + extra

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelectConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidParameterError(
                f"Unknown SelectConfig keys {unknown}; known: {sorted(known)}.")
        return cls(**d)


@dataclass(frozen=True)
class Candidate:
    """One row of the candidates table.

    Attributes
    ----------
    name : str
        ``spibb_n20``, ``bc``, ...
    algo : str
    params : dict
    value, lcb, ucb : float
        Held-out estimate of the last estimator, the smallest lower bound over the estimators,
        the last estimator's upper bound (NaN when the candidate failed).
    lcb_gain : float
        Lower bound of the improvement over the behaviour (the smallest over the estimators):
        paired bootstrap with ``bound="paired"``, else ``lcb`` minus the behaviour's value. NaN
        when the candidate failed or is not eligible.
    gain : float
        Estimated gain over the behaviour: mean over the estimators of the point value minus the
        behaviour's held-out value.
    train_seconds, eval_seconds : float
    error : str or None
        Why the candidate could not be trained or evaluated.
    estimates : dict
        Every estimator's value and interval.
    """

    name: str
    algo: str
    params: dict[str, Any]
    value: float = math.nan
    lcb: float = math.nan
    ucb: float = math.nan
    lcb_gain: float = math.nan
    gain: float = math.nan
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    error: str | None = None
    estimates: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON row (NaN as null)."""
        def num(x: float) -> float | None:
            return None if not math.isfinite(x) else round(float(x), 6)

        return {"name": self.name, "algo": self.algo, "params": self.params,
                "value": num(self.value), "lcb": num(self.lcb), "ucb": num(self.ucb),
                "lcb_gain": num(self.lcb_gain), "gain": num(self.gain),
                "train_seconds": round(self.train_seconds, 2),
                "eval_seconds": round(self.eval_seconds, 2), "error": self.error,
                "estimates": self.estimates}


@dataclass(frozen=True, eq=False)
class SelectionResult:
    """Outcome of :func:`select_policy`.

    Attributes
    ----------
    candidates : list of Candidate
    behavior_value : float
        Mean observed return on the held-out episodes (the behaviour's value).
    behavior_ci : tuple of float
    chosen : str
        Name of the kept candidate, or ``"behavior"``.
    fallback : bool
        True when no candidate's bound showed an improvement over the behaviour.
    learner : object
        The fitted learner to save (the chosen candidate, or the behaviour reproduction).
    settings : dict
    learners : dict of str to object
        Every candidate as fitted on the training episodes (for studies; not saved).
    """

    candidates: list[Candidate]
    behavior_value: float
    behavior_ci: tuple[float, float]
    chosen: str
    fallback: bool
    learner: Any
    settings: dict[str, Any] = field(default_factory=dict)
    learners: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``selection.json`` document."""
        return {"chosen": self.chosen, "fallback": self.fallback,
                "behavior": {"value": self.behavior_value, "ci": list(self.behavior_ci)},
                "candidates": [c.to_dict() for c in self.candidates],
                "settings": self.settings}


def default_q_model(dataset: Any) -> str:
    """``tabular_stationary`` on panels with categorical state columns, else ``auto``.

    The table's cells are those of ``auto``'s tables before it reads a target
    (:func:`equicare.ope._select.table_cells`): the categorical columns and the binned numeric
    states that change the dynamics given the others (``tabular_stationary[state]`` when a
    site that does not is pooled over; ``[language,wave@0.5]`` when a numeric wave or step
    drives them). A table of the categorical columns alone pooled over a campaign's wave: its
    second wave looped at gamma 1 and FQE put every candidate 0.053 above practice where no
    policy could gain more than 0.032.
    """
    if not _discrete(dataset):
        return "auto"
    from equicare.ope._select import candidate_name, table_cells

    cells, _, _ = table_cells(dataset, random_state=0)
    return "tabular_stationary" if cells is None else candidate_name("tabular_stationary", cells)


def _resolve(cfg: SelectConfig, dataset: Any) -> SelectConfig:
    """``cfg`` with ``rank_by="auto"`` and ``q_model=None`` replaced by what they mean here."""
    rank_by = cfg.rank_by
    if rank_by == "auto":
        rank_by = "fqe" if _discrete(dataset) else None
    return replace(cfg, rank_by=rank_by, q_model=cfg.q_model or default_q_model(dataset))


def _discrete(dataset: Any) -> bool:
    return dataset.categorical is not None and dataset.categorical.shape[1] > 0


def _make(algo: str, params: dict[str, Any]) -> Any:
    from equicare.learn._registry import LEARNERS

    return LEARNERS[algo](**params)


def _candidate_specs(dataset: Any, cfg: SelectConfig) -> list[tuple[str, str, dict[str, Any]]]:
    specs: list[tuple[str, str, dict[str, Any]]] = []
    numeric = "ignore" if _discrete(dataset) else "bin"
    for n in cfg.n_wedges:
        label = f"spibb_n{n:g}"
        specs.append((label, "spibb", {"n_wedge": float(n), "numeric": numeric}))
    for beta, prior, mix, tau, *rest in cfg.pvi:
        min_count = int(rest[0]) if rest else 3
        label = (f"pvi_b{beta:g}_k{prior:g}" + ("" if tau == 0 else f"_t{tau:g}")
                 + ("" if mix == 1 else f"_m{mix:g}")
                 + ("" if min_count == 3 else f"_n{min_count}"))
        params: dict[str, Any] = {"beta": beta, "prior": prior, "mix": mix, "tau": tau,
                                  "numeric": numeric}
        if min_count != 3:
            params["min_count"] = min_count
        specs.append((label, "pvi", params))
    for algo in cfg.neural:
        specs.append((algo, algo, {"n_steps": cfg.neural_steps, "hidden": cfg.neural_hidden,
                                   "valid_fraction": 0.0, "seed": cfg.seed}))
    return specs


def _fit(algo: str, params: dict[str, Any], data: Any) -> Any:
    learner = _make(algo, params)
    return learner.fit(data, progress=False)


def _unseen(dataset: Any, valid: Any, observed: Any = None) -> Any:
    """Actions current practice (almost) never takes at each held-out row.

    Never logged in the panel at the row's categorical levels; and, when the panel logs its
    propensities and has numeric state columns, also those ``evaluate``'s support check finds
    below 1e-3 there (:meth:`~equicare.ope._support.LoggedSupport.unsupported`: its fast
    behaviour model fitted on the held-out half; none with wide categorical states, where the
    cells decide). The cells alone are blind to the numeric states: on a dosing panel whose
    only categorical column was a 3-level genotype, a PVI candidate that lowered the dose at
    every visit (62% of its mass on actions practice takes with probability < 1e-3) was kept.
    With estimated propensities the held-out behaviour model makes that check
    (:func:`_held_out`). Shape ``(valid.n_steps, n_actions)``; None when neither applies.
    ``observed``: the panel's :class:`~equicare.ope._support.CellObserved`, when already built.
    """
    import numpy as np

    from equicare.ope._support import CellObserved, LoggedSupport

    unseen = None
    if dataset.categorical is not None and dataset.categorical.shape[1] > 0:
        observed = CellObserved(dataset) if observed is None else observed
        unseen = ~observed.at(np.asarray(valid.categorical, dtype=np.int64))
    if valid.behavior_prob is not None and valid.states.shape[1] > 0:
        rare = LoggedSupport(valid).unsupported()
        if rare is not None:
            unseen = rare if unseen is None else unseen | rare
    return unseen


def _practice_pct(dataset: Any, valid: Any, observed: Any = None) -> float:
    """Current practice's own expected share (%) of held-out mass on never-logged pairs.

    :func:`~equicare.ope._support.logged_once` of the held-out rows against the whole panel's
    cells (the pairs :func:`_unseen` counts): the held-out rows whose logged action was logged
    only once at one of their levels (``evaluate``'s ``practice_share_pct``). 0 without
    categorical states. ``observed``: the panel's
    :class:`~equicare.ope._support.CellObserved`, when already built.
    """
    import numpy as np

    from equicare.ope._support import CellObserved, logged_once

    if not _discrete(dataset):
        return 0.0
    observed = CellObserved(dataset) if observed is None else observed
    flagged = logged_once(observed.counts, valid.categorical, valid.actions)
    return float(100.0 * np.mean(flagged)) if flagged.size else 0.0


def _off_support_pct(dataset: Any, valid: Any, policy: Any,
                     baseline: Any = None, unseen: Any = None) -> float | None:
    """Share (%) of the policy's held-out mass on (state, action) pairs practice never takes.

    The pairs (:func:`_unseen`) are counted over the whole panel (training and held-out
    episodes), so a pair is off the support only when current practice never took that action
    in that state (or, by the numeric states, almost never takes it). With
    several categorical columns an action is off the support when some column's level never
    saw it (as in ``evaluate``'s support check: their combinations are usually too thin to
    tell, and a pooled site would otherwise put every candidate off the support). With
    ``baseline`` (the candidate's own training baseline, :func:`_own_baseline`), a row's mass
    off the support counts only beyond the baseline's own there: with the known-baseline
    estimate (``behavior="known"``) the clinicians' unlogged remainder is theirs, not the
    candidate's. None when the states have no categorical cells. ``unseen``:
    :func:`_unseen` of ``(dataset, valid)``, when already computed (it is the same for every
    candidate).
    """
    import numpy as np

    if unseen is None:
        unseen = _unseen(dataset, valid)
    if unseen is None:
        return None
    probs = np.asarray(policy.action_probs(valid), dtype=np.float64)
    off = (probs * unseen).sum(axis=1)
    if baseline is not None:
        own = (np.asarray(baseline.action_probs(valid), dtype=np.float64) * unseen).sum(axis=1)
        off = np.maximum(off - own, 0.0)
    return float(100.0 * off.sum() / max(valid.n_steps, 1))


def _own_baseline(learner: Any) -> Any:
    """The behaviour estimate a tabular learner copies, as a cell policy; None for others.

    A candidate's mass off the support is judged beyond the clinicians' remainder *in its own
    training baseline*: with ``behavior="known"`` that remainder is current practice's, left to
    the clinicians, whichever half of the episodes the candidate was trained on.
    """
    import numpy as np

    pol = getattr(learner, "policy_", None)
    base = getattr(learner, "behavior_", None)
    if pol is None or base is None or not hasattr(pol, "cell_index"):
        return None
    from equicare.privacy import round_significant

    # rounded as the learner rounds its table (4 significant digits, renormalised), so a pair
    # the candidate copies from the baseline counts the same in both
    table = round_significant(np.vstack([base, pol.table[-1:]]), 4)
    return replace(pol, table=table / table.sum(axis=1, keepdims=True), deferred_rate=None)


@dataclass(frozen=True, eq=False)
class _Completed:
    """A cell policy whose unseen cells follow another policy (for held-out evaluation).

    A candidate trained on part of the episodes has never seen some of the held-out rows'
    cells; its saved table gives them the training marginal of the actions, which the candidate
    retrained on all episodes (what is saved when the choice is refitted) would not: there it
    sees those cells. They are evaluated with ``fallback`` (the behaviour reproduction fitted
    on all episodes, the policy saved when nothing passes), so the bound is about the learned
    part, not about an artefact of the split.
    """

    policy: Any
    fallback: Any

    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        return int(self.policy.n_actions)

    def action_probs(self, dataset: Any) -> Any:
        """The candidate's probabilities, the fallback's in unseen cells, ``(n_steps, A)``."""
        import numpy as np

        probs = np.asarray(self.policy.action_probs(dataset), dtype=np.float64)
        unseen = self.policy.cell_index(dataset) == self.policy.n_cells
        if unseen.any():
            probs = probs.copy()
            probs[unseen] = np.asarray(self.fallback.action_probs(dataset), dtype=np.float64)[
                unseen]
        return probs


@dataclass(frozen=True)
class _HeldOut:
    """Held-out estimates of one candidate (and the behaviour, on the same replicates)."""

    estimates: dict[str, dict[str, Any]]
    value: float
    lcb: float
    ucb: float
    lcb_gain: float
    gain: float
    behavior_value: float
    behavior_ci: tuple[float, float]
    support_pct: float
    n_episodes: int = 0
    point: dict[str, float] = field(default_factory=dict)
    reps: dict[str, Any] = field(default_factory=dict, repr=False)
    behavior_reps: Any = None
    se: dict[str, Any] = field(default_factory=dict, repr=False)
    gain_se: dict[str, Any] = field(default_factory=dict, repr=False)
    censoring: dict[str, Any] | None = None
    window: Any = None


def _summarise(point: dict[str, float], reps: dict[str, Any], beh_value: float,
               beh_reps: Any, cfg: SelectConfig, support_pct: float,
               n_episodes: int, se: dict[str, Any] | None = None,
               gain_se: dict[str, Any] | None = None) -> _HeldOut:
    """Values, intervals and the paired bounds of the gain from replicates (one estimator each).

    ``reps[k]`` has shape (bootstrap,), ``beh_reps`` too (the behaviour's mean return on the
    same resampled held-out episodes). With ``cfg.interval == "studentized"``, ``se[k]`` and
    ``gain_se[k]`` (shape ``(bootstrap + 1,)``, entry 0 the full sample's) are the delta-method
    standard errors of the estimate and of the gain ``V_k - mean return`` on every replicate;
    the bounds are then the lower ends of symmetric bootstrap-t intervals
    (:func:`equicare.ope._bootstrap.studentized_interval`), else ``alpha / 2`` quantiles.
    """
    import numpy as np

    from equicare.ope._bootstrap import percentile_interval, studentized_interval

    keys = tuple(cfg.estimators)
    stud = cfg.interval == "studentized" and se is not None and gain_se is not None
    per: dict[str, dict[str, Any]] = {}
    for k in cfg.computed:
        diff = reps[k] - beh_reps
        if stud:
            s_k, g_k = (se or {})[k], (gain_se or {})[k]
            ci = studentized_interval(point[k], reps[k], s_k[1:], float(s_k[0]), cfg.alpha)
            gain = studentized_interval(point[k] - beh_value, diff, g_k[1:], float(g_k[0]),
                                        cfg.alpha)[0]
        else:
            ci = percentile_interval(reps[k], cfg.alpha)
            gain = float(np.quantile(diff, cfg.alpha / 2))
        per[k] = {"value": point[k], "ci": [float(ci[0]), float(ci[1])], "gain_lcb": float(gain)}
    gains = [float(per[k]["gain_lcb"]) for k in keys]
    lcb = min(float(per[k]["ci"][0]) for k in keys)
    last = per[keys[-1]]
    return _HeldOut(estimates=per, value=float(last["value"]), lcb=lcb, ucb=float(last["ci"][1]),
                    lcb_gain=min(gains) if cfg.bound == "paired" else lcb - beh_value,
                    gain=float(np.mean([point[k] for k in keys])) - beh_value,
                    behavior_value=beh_value,
                    behavior_ci=percentile_interval(beh_reps, cfg.alpha),
                    support_pct=support_pct, n_episodes=n_episodes, point=dict(point),
                    reps=dict(reps), behavior_reps=beh_reps, se=dict(se or {}),
                    gain_se=dict(gain_se or {}))


def _cross_fitted(parts: list[_HeldOut], cfg: SelectConfig) -> _HeldOut:
    """Pool the held-out estimates of the folds (each fold's policy on its held-out episodes).

    The point values are the folds' values weighted by their held-out episodes; the replicates
    are the same weighted means of the folds' replicates (the folds' bootstraps are independent,
    so replicate ``b`` of the pooled estimate pairs replicate ``b`` of every fold). The result
    bounds the episode-weighted mean value of the fold policies minus the behaviour's.
    """
    import numpy as np

    w = np.asarray([p.n_episodes for p in parts], dtype=np.float64)
    w = w / w.sum()
    keys = cfg.computed
    point = {k: float(sum(wi * p.point[k] for wi, p in zip(w, parts, strict=True)))
             for k in keys}
    reps = {k: sum(wi * p.reps[k] for wi, p in zip(w, parts, strict=True)) for k in keys}
    beh_reps = sum(wi * p.behavior_reps for wi, p in zip(w, parts, strict=True))
    beh = float(sum(wi * p.behavior_value for wi, p in zip(w, parts, strict=True)))
    # the folds' bootstraps are independent: variances add with the squared weights
    se = ({k: np.sqrt(sum(wi * wi * p.se[k] ** 2 for wi, p in zip(w, parts, strict=True)))
           for k in keys} if all(p.se for p in parts) else None)
    gain_se = ({k: np.sqrt(sum(wi * wi * p.gain_se[k] ** 2
                               for wi, p in zip(w, parts, strict=True))) for k in keys}
               if all(p.gain_se for p in parts) else None)
    out = _summarise(point, reps, beh, beh_reps, cfg, max(p.support_pct for p in parts),
                     sum(p.n_episodes for p in parts), se, gain_se)
    checks = [p.censoring for p in parts if p.censoring is not None]
    return replace(out, censoring=_pool_censoring(checks)) if checks else out


def _prep_seed(cfg: SelectConfig) -> int:
    """The seed ``evaluate(random_state=cfg.seed)`` gives :func:`~equicare.ope.prepare`."""
    from equicare.utils import check_random_state

    return int(check_random_state(cfg.seed).integers(0, 2**31 - 1, size=3)[0])


def _held_out_behavior(valid: Any, cfg: SelectConfig) -> Any:
    """The behaviour model :func:`_held_out` fits on ``valid``, fitted once for all candidates.

    It depends on the held-out episodes and the seed only, never on the candidate, so the
    candidates share it (the same numbers as one fit each). None when ``valid`` logs its
    propensities.
    """
    if valid.behavior_prob is not None:
        return None
    from equicare.ope._prepare import model_seed
    from equicare.policy import BehaviorModel

    return BehaviorModel(random_state=model_seed(_prep_seed(cfg))).fit(valid)


def _held_out(valid: Any, policy: Any, cfg: SelectConfig, q_model: Any,
              behavior: Any = None, switch_censored: bool = False) -> _HeldOut:
    """Every estimator on the held-out episodes, with paired bounds of the gain.

    The computation of :func:`equicare.ope.evaluate` (same seeds, so the same values),
    keeping the bootstrap replicates: the count matrix depends on the seed and the number of
    held-out episodes only, so every candidate and the behaviour's mean observed return are
    resampled with the same replicate weights. The gain's bound of estimator ``k`` is read from
    the replicates of ``V_k(counts_b) - mean_return(counts_b)``: the lower end of their
    symmetric bootstrap-t interval (``interval="studentized"``, each replicate divided by its
    own delta-method standard error, :func:`_gain_se`) or their ``alpha / 2`` quantile
    (``"percentile"``). With the stationary tabular Q-model on censored stays, ``evaluate``'s
    censoring check (:func:`equicare.ope._censoring.censoring_check`) is kept in ``censoring``.
    When it warns, the window table of the same cells values the candidate instead if
    ``switch_censored`` (the selection's default Q-model, as ``auto`` does in ``evaluate``),
    or ``auto`` made the switch already; otherwise (a stationary table the user named) the
    check's message is kept for the warning. A stationary table's result keeps the window
    table of its cells in ``window`` (:func:`_switched`: another fold's check warned, and every
    fold of a candidate uses one Q-model). ``q_model`` is a name or an ``FQEConfig``.
    """
    import numpy as np
    from threadpoolctl import threadpool_limits

    from equicare.ope._bootstrap import bootstrap_counts, bootstrap_replicates, cluster_codes
    from equicare.ope._core import episode_parts, point_estimates
    from equicare.ope._evaluate import _thread_limit, _with_q_refit
    from equicare.ope._prepare import as_fqe_config, prepare
    from equicare.utils import check_random_state

    keys = cfg.computed
    rng = check_random_state(cfg.seed)  # the seeds evaluate(random_state=seed) derives
    seed_prep, seed_boot, _ = (int(s) for s in rng.integers(0, 2**31 - 1, size=3))
    with threadpool_limits(limits=_thread_limit(valid)):
        prep = prepare(valid, policy, keys=keys, q_model=as_fqe_config(q_model),
                       behavior_model="logistic" if behavior is None else behavior,
                       random_state=seed_prep)
        check = prep.censoring_report(valid)
        window = (replace(prep.q_config, horizon="window")
                  if check is not None and not check.switched and prep.q_config is not None
                  else None)
        if (switch_censored and check is not None and check.warn and not check.switched
                and prep.q_config is not None):  # the window table of the same cells
            prep = prepare(valid, policy, keys=keys, q_model=window,
                           behavior_model="logistic" if behavior is None else behavior,
                           random_state=seed_prep)
            check, window = replace(check, switched=True), None
        parts = episode_parts(prep.inputs, keys)
        if prep.q_linearised:
            parts = _with_q_refit(prep, parts, None, "absorbing")
        ret = prep.inputs.returns()
        row_ret = np.asarray(ret, dtype=np.float64)
        if valid.members is not None:  # people who re-enrol: resample people, not episodes
            codes = cluster_codes(valid.members)
            parts = parts.by_cluster(codes)
            row_ret = np.asarray(np.bincount(codes, weights=row_ret), dtype=np.float64)
        counts = bootstrap_counts(parts.matrix.shape[0], cfg.n_boot, seed_boot)
        reps = bootstrap_replicates(parts, counts)
        point = point_estimates(parts)
        beh_reps = counts @ row_ret / parts.total_weight(counts)
        support_pct = 0.0
        if prep.behavior_model is not None:  # propensities estimated: the model's support
            from equicare.ope._support import model_support_diagnostics

            support_pct = float(model_support_diagnostics(
                valid, prep.target_probs, prep.behavior_model, threshold=1e-3,
                estimators=keys).share_pct)
        se = gain_se = None
        if cfg.interval == "studentized":
            se, gain_se = _gain_se(parts, counts, row_ret, keys)
        censoring = None
        if check is not None:
            censoring = {**check.to_dict(), "message": (check.message() if check.warn
                                                        and not check.switched else None)}
    out = _summarise({k: float(point[k]) for k in keys},
                     {k: np.asarray(reps[k], dtype=np.float64) for k in keys},
                     float(ret.mean()), np.asarray(beh_reps, dtype=np.float64), cfg,
                     support_pct, int(valid.n_episodes), se, gain_se)
    return replace(out, censoring=censoring, window=window) if censoring is not None else out


def _switched(part: _HeldOut, valid: Any, policy: Any, cfg: SelectConfig,
              behavior: Any) -> _HeldOut:
    """A fold valued with the window table because another fold's censoring check warned.

    The fold's own check did not warn, so :func:`_held_out` valued it with the stationary table
    and kept the window table of the same cells in ``part.window``: only that table is fitted
    now, and the fold's check is reported as switched.
    """
    if part.censoring is None or part.censoring["switched_to_window"] or part.window is None:
        return part
    out = _held_out(valid, policy, cfg, part.window, behavior)
    return replace(out, censoring={**part.censoring, "switched_to_window": True,
                                   "message": None})


def _gain_se(parts: Any, counts: Any, ret: Any, keys: tuple[str, ...]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    r"""Delta-method standard errors of every estimate and of its paired gain, per replicate.

    Every estimator is a sum of ratios of weighted episode sums
    (:func:`equicare.ope._bootstrap.ratio_terms`); the gain subtracts the mean return
    :math:`\bar R = \sum_e w_e R_e / \sum_e w_e`, whose influence
    :math:`R_e / n_w - \bar R / n_w` is one more ratio term with the opposite sign. For the
    weighting ``w`` of the full sample (row 0) and of each replicate ``b`` (rows ``1..B``) the
    standard error is :math:`(\sum_e w_e \mathrm{IF}_e^2)^{1/2}` with that weighting's own
    influence coefficients, as :func:`equicare.ope._bootstrap.studentized_intervals` computes
    for the estimate alone.

    Parameters
    ----------
    parts : EpisodeParts
        One row per episode, or per person (:meth:`~equicare.ope.EpisodeParts.by_cluster`:
        people who re-enrol, their influence summed before it is squared).
    counts : ndarray of shape (n_boot, n_rows)
    ret : ndarray of shape (n_rows,)
        The observed (discounted) returns (summed per person when the rows are people).
    keys : tuple of str

    Returns
    -------
    se, gain_se : dict of str to ndarray of shape (n_boot + 1,)
    """
    import numpy as np

    from equicare.ope._bootstrap import (
        influence_coefs,
        ratio_columns,
        ratio_terms,
        squared_influence,
    )

    n = parts.matrix.shape[0]
    weights = np.vstack([np.ones((1, n)), counts])
    s_all = weights @ parts.matrix
    n_all = parts.total_weight(weights)  # episodes (the rows may be people, their sums)
    s_ret = weights @ ret
    one = np.ones((n, 1)) if parts.sizes is None else parts.sizes[:, None]
    se: dict[str, Any] = {}
    gain_se: dict[str, Any] = {}
    for k in keys:
        a, b = ratio_terms(parts.slices, parts.horizon, k)
        xa, xb = ratio_columns(parts.matrix, a, b, parts.sizes)
        sb = np.where(b[None, :] < 0, n_all[:, None], s_all[:, np.maximum(b, 0)])
        u, v = influence_coefs(s_all[:, a], sb)
        se[k] = np.sqrt(squared_influence(xa, xb, u, v, weights))
        # minus the mean return: x_A = R, x_B = 1, u = -1 / n_w, v = -S_R / n_w^2
        xa_g = np.hstack([xa, ret[:, None]])
        xb_g = np.hstack([xb, one])
        u_g = np.hstack([u, -1.0 / n_all[:, None]])
        v_g = np.hstack([v, -(s_ret / n_all ** 2)[:, None]])
        gain_se[k] = np.sqrt(squared_influence(xa_g, xb_g, u_g, v_g, weights))
    return se, gain_se


def _pool_censoring(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The folds' censoring checks in one record: the censored share, warn when any fold does."""
    return {"censored_episodes_pct": max(float(c["censored_episodes_pct"]) for c in checks),
            "warning": any(bool(c["warning"]) for c in checks), "folds": checks,
            "switched_to_window": any(bool(c["switched_to_window"]) for c in checks),
            "message": next((c["message"] for c in checks if c.get("message")), None)}


def select_policy(dataset: Any, config: SelectConfig | None = None, *,
                  progress: Any = None,
                  panel: str | os.PathLike[str] | None = None) -> SelectionResult:
    """Train candidates, evaluate them on held-out episodes, keep the best lower bound.

    Parameters
    ----------
    dataset : TrajectoryDataset
    config : SelectConfig, optional
    progress : callable, optional
        ``progress(message)`` called once per stage.
    panel : str or path, optional
        The panel's file, named in data errors (too few episodes for the held-out parts).

    Returns
    -------
    SelectionResult
        ``learner`` is fitted and ready to ``save``.

    Notes
    -----
    Rule: among eligible candidates whose evaluation succeeded and whose lower bound of the gain
    over the behaviour (paired bootstrap, or ``L - V_b`` with ``bound="separate"``) is above 0,
    keep the one with the largest such bound (of ``rank_by``'s estimator when set: FQE on
    panels with categorical states); if none passes, return :class:`PracticeFallback`: one
    rule, "as current practice", for every row (deployed, the clinicians decide: ``evaluate``
    and ``audit`` value it at practice's own value, ``predict`` marks every row
    ``follows_practice``), with SPIBB's ``N_wedge = inf`` fitted on all episodes as the stored
    estimate of practice. Choosing the best of several candidates by the
    same held-out data makes the kept candidate's bound slightly optimistic unless
    ``multiplicity="bonferroni"`` puts every bound at ``alpha / K``; the Garnet study in
    ``docs/learn.md`` measures the result against exact values.
    """
    from equicare.exceptions import SupportWarning

    # the default Q-model switches to the window table where censored stays bias it
    switch_censored = config is None or config.q_model is None
    cfg = _resolve(config or SelectConfig(), dataset)
    say = progress or (lambda _msg: None)
    specs = _candidate_specs(dataset, cfg)
    ecfg = _evaluation_config(cfg)
    strat = next(iter(dataset.groups), None)
    from equicare.data.validate import check_episodes, split_holdout
    from equicare.ope._evaluate import EVALUATE_EPISODES_WHY

    if cfg.folds == 2:
        half_a, half_b = split_holdout(
            dataset, 0.5, "select", "the candidates' evaluation (each half in turn)",
            EVALUATE_EPISODES_WHY, random_state=cfg.seed, stratify=strat, source=panel,
            both=True)
        # (train, held out, evaluation seed) per fold: independent bootstraps
        folds = [(half_a, half_b, ecfg), (half_b, half_a, replace(ecfg, seed=cfg.seed + 1))]
        train, valid = half_a, half_b
        say(f"cross-fitting on two halves of {half_a.n_episodes} and {half_b.n_episodes} "
            f"episodes")
    elif cfg.folds > 2:
        check_episodes(dataset, 2 * cfg.folds, "select",
                       f"each of its {cfg.folds} folds holds out 2 or more for the candidates' "
                       f"evaluation, and {EVALUATE_EPISODES_WHY}", source=panel)
        pairs = dataset.kfold(cfg.folds, random_state=cfg.seed, stratify=strat)
        folds = [(tr, va, replace(ecfg, seed=cfg.seed + k)) for k, (tr, va) in enumerate(pairs)]
        train, valid = pairs[0]
        say(f"cross-fitting on {cfg.folds} folds of about {valid.n_episodes} held-out episodes")
    else:
        train, valid = split_holdout(
            dataset, cfg.valid_fraction, "select", "the candidates' evaluation",
            EVALUATE_EPISODES_WHY, random_state=cfg.seed, stratify=strat, source=panel)
        folds = [(train, valid, ecfg)]
        say(f"{train.n_episodes} training and {valid.n_episodes} held-out episodes")
    q_model = str(cfg.q_model)
    say(f"OPE {', '.join(cfg.estimators)} with the {q_model} Q-model"
        + ("" if cfg.rank_by is None else f", ordered by {cfg.rank_by}"))
    numeric = "ignore" if _discrete(dataset) else "bin"
    beh = _fit("spibb", {"n_wedge": float("inf"), "numeric": numeric}, dataset)
    refit = cfg.refit_full or cfg.folds >= 2

    def judged(policy: Any) -> Any:  # what the held-out rows of unseen cells will get
        return _Completed(policy, beh.policy_) if refit and hasattr(policy, "cell_index") \
            else policy

    from equicare.ope._support import CellObserved

    observed = CellObserved(dataset) if _discrete(dataset) else None  # the panel's cells, once
    unseen_f = [_unseen(dataset, va, observed) for _, va, _ in folds]  # the same for every
    practice_f = [_practice_pct(dataset, va, observed) for _, va, _ in folds]  # candidate
    behaviors = [_held_out_behavior(va, c) for _, va, c in folds]  # likewise
    rows: list[Candidate] = []
    fitted: dict[str, Any] = {}
    censoring: dict[str, Any] = {}
    behavior_value = math.nan
    behavior_ci = (math.nan, math.nan)
    for name, algo, params in specs:
        say(f"candidate {name}")
        t0 = time.perf_counter()
        try:
            learners = [_fit(algo, params, tr) for tr, _, _ in folds]
        except (ValueError, RuntimeError) as exc:
            rows.append(Candidate(name, algo, params, error=str(exc).splitlines()[0]))
            continue
        learner = learners[0]
        t1 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SupportWarning)
                parts = [_held_out(va, judged(ln.policy_), c, q_model, bm, switch_censored)
                         for (_, va, c), ln, bm in zip(folds, learners, behaviors, strict=True)]
                if any(p.censoring is not None and p.censoring["switched_to_window"]
                       for p in parts):  # one fold's check switched: every fold switches
                    parts = [_switched(p, va, judged(ln.policy_), c, bm)
                             for p, (_, va, c), ln, bm in zip(parts, folds, learners,
                                                              behaviors, strict=True)]
        except (ValueError, RuntimeError) as exc:
            rows.append(Candidate(name, algo, params, train_seconds=t1 - t0,
                                  error=str(exc).splitlines()[0]))
            continue
        ho = parts[0] if len(parts) == 1 else _cross_fitted(parts, ecfg)
        if ho.censoring is not None:
            censoring[name] = ho.censoring
        behavior_value, behavior_ci = ho.behavior_value, ho.behavior_ci
        lcb, gain = ho.lcb, ho.lcb_gain
        offs = [_off_support_pct(dataset, va, judged(ln.policy_), judged(_own_baseline(ln)),
                                 unseen=u)
                for (_, va, _), ln, u in zip(folds, learners, unseen_f, strict=True)]
        off, base = (ho.support_pct, 0.0) if offs[0] is None else max(
            (o, b) for o, b in zip(offs, practice_f, strict=True) if o is not None)
        note = None
        if off > cfg.max_off_support_pct:  # no OPE bound is trustworthy off the support
            note = (f"not eligible: {off:.1f}% of its mass on (state, action) pairs current "
                    f"practice never took (limit {cfg.max_off_support_pct:g}%)")
            if base > 0:  # thin levels: the data cannot tell rare from never (docs/ope.md)
                note += (f"; practice itself would show {base:.1f}% on these levels, which "
                         "cannot tell an action it takes rarely from one it never takes")
            lcb = gain = math.nan
        rows.append(Candidate(name, algo, params, value=ho.value, lcb=lcb, ucb=ho.ucb,
                              lcb_gain=gain, gain=ho.gain, train_seconds=t1 - t0,
                              eval_seconds=time.perf_counter() - t1, estimates=ho.estimates,
                              error=note))
        fitted[name] = learner
    kept = _keep([(c.name, c.lcb_gain, _rank_score(c.estimates, c.gain, c.lcb_gain, cfg,
                                                    behavior_value)) for c in rows])
    best = next(c for c in rows if c.name == kept) if kept is not None else None
    rule = ("among the candidates whose " + ("paired lower bound of the gain over the "
            "behaviour is above 0" if cfg.bound == "paired" else "lower bound beats the "
            "behaviour's held-out value") + ", keep the largest " + (
            "estimated gain" if cfg.rank == "estimate" else "lower bound") + (
            "" if cfg.rank_by is None else f" by {cfg.rank_by}"))
    if cfg.multiplicity == "bonferroni":
        rule += (f" (Bonferroni over {cfg.n_candidates} candidates: one-sided level "
                 f"{ecfg.alpha / 2:.4g} each)")
    settings = {"config": cfg.to_dict(), "q_model": q_model, "alpha_per_candidate": ecfg.alpha,
                "n_train_episodes": train.n_episodes, "n_valid_episodes": valid.n_episodes,
                "rule": rule + ", else leave every decision to current practice"}
    settings["interval"] = cfg.interval
    settings["bootstrap"] = cfg.n_boot
    if censoring:  # evaluate's check of the stationary table on censored stays
        settings["censoring"] = censoring
        warned = [n for n, c in censoring.items() if c.get("message")]
        if warned:  # as evaluate warns (not where auto used the window table instead)
            from equicare.exceptions import DataWarning

            msg = next(c["message"] for c in censoring.values() if c["message"])
            warnings.warn(CENSORED_SELECTION.format(which=", ".join(warned), message=msg),
                          DataWarning, stacklevel=2)
    if cfg.folds >= 2:
        settings["n_train_episodes"] = settings["n_valid_episodes"] = dataset.n_episodes
        settings["rule"] = ("cross-fitted on two halves: " if cfg.folds == 2 else
                            f"cross-fitted on {cfg.folds} folds: ") + settings["rule"]
    if best is not None:
        learner = fitted[best.name]
        if refit:
            say(f"refitting {best.name} on all episodes")
            learner = _fit(best.algo, best.params, dataset)
        return SelectionResult(rows, behavior_value, behavior_ci, best.name, False, learner,
                               settings, fitted)
    say("no candidate's bound shows a gain over the behaviour: keeping current practice")
    return SelectionResult(rows, behavior_value, behavior_ci, "behavior", True,
                           PracticeFallback(beh), settings, fitted)


class PracticeFallback:
    """What the selection saves when no candidate shows a gain: current practice, as deployed.

    One rule for every row, "as current practice" (a single-leaf
    :class:`~equicare.policy.TreePolicy` whose leaf is usual care): deployed, the clinicians
    decide at every row, so ``evaluate`` and ``audit`` (``usual_care="deployed"``, their
    default) value it at practice's own value and ``predict`` writes ``follows_practice = 1``
    on every row. The stored estimate of practice (what ``action_probs`` gives, and
    ``usual_care="stored"`` values) is ``estimate``'s policy: SPIBB with ``N_wedge = inf``, the
    clinicians' frequencies per categorical cell. Saving that estimate as the policy itself was
    the fallback before: on a dosing panel whose only categorical column is a genotype it
    ignored the INR practice doses by (true value -36.2 against practice's -7.25).

    Parameters
    ----------
    estimate : fitted SPIBB learner
        The behaviour reproduction (``policy_`` a :class:`~equicare.policy.CellPolicy`).

    Attributes
    ----------
    estimate_ : the fitted SPIBB learner
    policy_ : TreePolicy
    """

    def __init__(self, estimate: Any) -> None:
        import numpy as np

        from equicare.policy import TreePolicy

        cell = estimate.policy_
        space = cell.action_space
        mass = np.zeros(space.n_actions)
        mass[np.asarray(cell.support, dtype=np.int64)] = 1.0
        self.estimate_ = estimate
        self.policy_ = TreePolicy(
            children_left=np.array([-1]), children_right=np.array([-1]),
            feature=np.array([-2]), threshold=np.array([-2.0]),
            probs=(mass / mass.sum())[None, :], features=(), action_space=space,
            source="current practice", info={"rules": "every row: as current practice",
                                             "source": "train --select auto (fallback)"},
            usual=np.array([True]), usual_policy=cell,
            manifest_fingerprint=getattr(estimate, "manifest_fingerprint_", None))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model folder (a tree with one usual-care leaf; Contract 2)."""
        return self.policy_.save(path, overwrite=overwrite)


def _evaluation_config(cfg: SelectConfig) -> SelectConfig:
    """``cfg`` with the level of every bound: ``alpha / K`` under Bonferroni, else ``alpha``."""
    if cfg.multiplicity == "none":
        return cfg
    return replace(cfg, alpha=cfg.alpha / cfg.n_candidates, multiplicity="none")


def _rank_score(estimates: dict[str, Any], gain: float, lcb_gain: float, cfg: SelectConfig,
                behavior_value: float) -> float:
    """What orders a candidate that passes: ``cfg.rank`` of ``cfg.rank_by`` (or of the rule)."""
    if cfg.rank_by is None or not estimates:
        return gain if cfg.rank == "estimate" else lcb_gain
    e = estimates[cfg.rank_by]
    if cfg.rank == "estimate":
        return float(e["value"]) - behavior_value
    return float(e["gain_lcb"]) if cfg.bound == "paired" else float(e["ci"][0]) - behavior_value


def _keep(scored: list[tuple[str, float, float]]) -> str | None:
    """The selection rule on ``(name, lower bound of the gain, rank score)`` triples.

    Among the candidates whose bound is finite and above 0, the first with the largest rank
    score (:func:`_rank_score`); None when none passes.
    """
    passed = [s for s in scored if math.isfinite(s[1]) and s[1] > 0]
    if not passed:
        return None
    return max(passed, key=lambda s: s[2])[0]


def choose_by_bounds(candidates: list[dict[str, Any]], behavior_value: float,
                     estimators: tuple[str, ...], rank: str = "estimate",
                     rank_by: str | None = None) -> str:
    """The candidate a paired rule over ``estimators`` keeps, from a saved candidates table.

    For studies of the rule (``benchmarks/bench_select.py``): a :func:`select_policy` run with
    a superset of estimators records, for every candidate, each estimator's pooled point value
    and paired bound of the gain (``estimates[k]["value"]``, ``estimates[k]["gain_lcb"]``); each
    is computed independently of the other estimators (same split, Q-model and bootstrap
    counts), so this returns exactly what a run with ``estimators`` (``bound="paired"``) keeps.

    Parameters
    ----------
    candidates : list of dict
        Rows of :meth:`SelectionResult.to_dict` (``"candidates"``).
    behavior_value : float
        The behaviour's pooled held-out value.
    estimators : tuple of str
        Estimators whose paired bounds must all be above 0.
    rank : {"estimate", "bound"}
        As :attr:`SelectConfig.rank`.
    rank_by : str or None
        As :attr:`SelectConfig.rank_by` (its estimates must be in the table too).

    Returns
    -------
    str
        The kept candidate's name, or ``"behavior"`` when none passes.
    """
    import numpy as np

    check_param(rank, "rank", "choose_by_bounds", choices=RANKS)
    if rank_by is not None:
        check_param(rank_by, "rank_by", "choose_by_bounds", choices=ESTIMATORS)
    if not estimators:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="estimators", owner="choose_by_bounds",
            expected="a non-empty tuple of estimator names", got=estimators))
    cfg = SelectConfig(estimators=tuple(estimators), rank=rank,  # type: ignore[arg-type]
                       rank_by=rank_by)
    scored = []
    for c in candidates:
        est = c.get("estimates") or {}
        if c.get("error") is not None or not est:  # failed or not eligible
            continue
        missing = [k for k in cfg.computed if k not in est]
        if missing:
            raise DataValidationError(f"choose_by_bounds: candidate {c.get('name')!r} has no "
                                      f"held-out estimate for {missing}; it has {sorted(est)}.")
        gain = float(np.mean([float(est[k]["value"]) for k in estimators])) - behavior_value
        lcb_gain = min(float(est[k]["gain_lcb"]) for k in estimators)
        scored.append((str(c["name"]), lcb_gain,
                       _rank_score(est, gain, lcb_gain, cfg, behavior_value)))
    kept = _keep(scored)
    return "behavior" if kept is None else kept


def train_select(data: str | os.PathLike[str], manifest: str | os.PathLike[str], *,
                 out: str | os.PathLike[str], config: SelectConfig | None = None,
                 force: bool = False, progress: Any = None) -> dict[str, Any]:
    """Load a panel, run :func:`select_policy` and write the model folder with its table.

    The folder holds the chosen policy (``config.json`` + ``model.safetensors``) and
    ``selection.json`` (every candidate's held-out value and interval, the behaviour's value,
    the choice).

    Returns
    -------
    dict
        ``{"model_dir", "chosen", "fallback", "behavior", "candidates", "settings",
        "seconds"}``.
    """
    from equicare.data import load_dataset

    out_path = Path(out)
    if out_path.exists() and not force and (out_path.is_file() or any(out_path.iterdir())):
        raise FileExistsError(f"Model folder {out_path} exists; pass --force to overwrite it.")
    t0 = time.perf_counter()
    ds = load_dataset(data, manifest, emit_warnings=False)
    res = select_policy(ds, config, progress=progress, panel=data)
    doc = res.to_dict()
    learner = res.learner
    learner.save(out_path, overwrite=force)
    atomic_write_text(out_path / SELECTION_FILE, json.dumps(doc, indent=2) + "\n")
    return {"model_dir": str(out_path), "chosen": res.chosen, "fallback": res.fallback,
            "behavior": doc["behavior"], "candidates": doc["candidates"],
            "settings": doc["settings"], "seconds": round(time.perf_counter() - t0, 2)}
