"""Evidence for distilled rules: fidelity, off-policy value, fairness, support and the frontier.

:func:`explain_policy` splits the panel's episodes into a fitting part and a held-out part,
distils the source policy at every depth of the frontier (1 to 6 by default) on the fitting part,
and measures on the held-out episodes:

fidelity
    agreement of the most likely actions of the rules and of the source, and the mean total
    variation distance ``1/2 sum_a |pi_rules(a|s) - pi_source(a|s)|`` between their
    distributions, overall, per rule and per protected subgroup;
value
    the OPE engine's estimates (:func:`equicare.ope.evaluate`, default WIS and DR) with
    episode-bootstrap intervals, for the behaviour, the source and the rules, and the share of the
    source's estimated improvement over behaviour that the rules keep; for exception rules that
    leave rows to current practice, also of the stored estimate of practice alone
    (``value["usual_care"]``), with a caveat when it may be worth less than practice
    (:func:`usual_care_caveat`: the rules inherit that loss);
fairness
    the audit of :func:`equicare.fairness.audit` (parity gap, proportional parity, worst-group
    value by the same estimator as the frontier, DR by default) for the behaviour, the source
    and the rules;
support
    the share of each policy's probability mass on actions that practice rarely takes in that
    state (behaviour probability below ``rare_threshold``, or never logged in the row's
    categorical state; with logged propensities checked as ``evaluate`` checks them).

Nothing row-level leaves this module: every number is an aggregate, and subgroups with fewer
than ``min_cell`` episodes are suppressed.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import (
    DataValidationError,
    DataWarning,
    InvalidParameterError,
    LowESSWarning,
)
from equicare.explain._distill import DistillConfig, Distiller, choice_weights, source_q
from equicare.explain._rules import rule_count, tree_rules
from equicare.explain._usual import usual_care_probs
from equicare.fairness._groups import withheld_cells
from equicare.ope._evaluate import far_outside, headline_of
from equicare.ope._prepare import check_q_model
from equicare.ope._propensity_check import floored_propensity_message
from equicare.policy._base import check_probs
from equicare.policy._deployed import deferred_target
from equicare.policy._tree import TreePolicy
from equicare.privacy import suppressed_labels
from equicare.utils import MIN_CELL, check_param

__all__ = ["ExplainConfig", "PolicyCard", "explain_policy", "fidelity", "support_share",
           "CARD_FORMAT", "CARD_VERSION"]

CARD_FORMAT = "equicare-policy-card"
CARD_VERSION = 1
_OWNER = "ExplainConfig"
_ESTIMATORS = ("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr")


@dataclass(frozen=True, kw_only=True)
class ExplainConfig:
    """Settings of a policy card.

    Parameters
    ----------
    depth : int, default=3
        Depth of the rules shown on the card (1 to 12).
    depths : tuple of int, default=(1, 2, 3, 4, 5, 6)
        Depths of the size/fidelity/value frontier.
    distill : DistillConfig, optional
        Other distillation settings (its ``max_depth`` is replaced by ``depth``).
    holdout : float, default=0.3
        Share of episodes held out for the evidence (stratified by the first group attribute);
        ignored when a test set is given.
    estimators : tuple of str, default=("wis", "dr", "wdr")
        OPE estimators of the value. The card's headline estimator (its frontier, improvement
        kept and fairness values) is the first of DR, WDR and FQE among them whose estimate
        of the source policy lies within reach of the observed returns
        (:func:`equicare.ope._evaluate.far_outside_returns`), else the first listed.
    q_model : str, default="auto"
        Q-model of the OPE estimators (and of the choice weights unless ``distill`` says): any
        ``q_model`` of :func:`equicare.ope.evaluate`. ``"auto"`` is chosen once, by
        ``evaluate``'s cross-fitted criterion for the source policy on the held-out episodes
        (:func:`equicare.ope.select_q_model`), and used for every value on the card (the card
        JSON's ``evidence.value.q_model``).
    bootstrap : int, default=200
        Episode-bootstrap replicates of the value and fairness intervals (0: normal intervals
        from the jackknife for the value, none for fairness).
    frontier_bootstrap : int, default=50
        Replicates of the value intervals of the frontier's other depths (the card's own
        depth shows the Evidence estimate, with ``bootstrap`` replicates).
    action : str, optional
        Audited action set (``"modality=home_visit"``); default: the audit's default.
    group : str, optional
        Audited group attribute; default: the dataset's first.
    intersect : tuple of str, default=()
        Attributes crossed with ``group`` in the audit (cells such as ``"english x female"``),
        as :func:`equicare.fairness.audit`'s ``intersect``; ``equicare run`` passes its
        ``[audit] intersect`` so the card audits the groups the run report audits.
    n_permutations : int, default=0
        Permutation test of the audit (0: none).
    rare_threshold : float, default=0.01
        Estimated behaviour probability below which an action counts as rarely taken.
    min_cell : int, default=11
        Subgroups with fewer episodes are suppressed.
    top_disagreement : int, default=8
        Subgroups listed where the rules and the source disagree most.
    mode : {"exceptions", "imitate"}, default="exceptions"
        Exception rules (where to deviate from current practice; every other state keeps the
        clinicians' estimated distribution) or plain imitation of the source (see
        :class:`~equicare.explain.DistillConfig`). Exceptions are the default: on the care
        simulator both keep the same share of the true improvement (the learned policies
        deviate from practice almost everywhere, so the two trees coincide), while on Garnet,
        whose policies differ from practice cell by cell, imitation falls far below current
        practice and exceptions do not.
    """

    depth: int = 3
    depths: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    distill: DistillConfig | None = None
    holdout: float = 0.3
    estimators: tuple[str, ...] = ("wis", "dr", "wdr")
    q_model: str = "auto"
    bootstrap: int = 200
    frontier_bootstrap: int = 50
    action: str | None = None
    group: str | None = None
    intersect: tuple[str, ...] = ()
    n_permutations: int = 0
    rare_threshold: float = 0.01
    min_cell: int = MIN_CELL
    top_disagreement: int = 8
    mode: Literal["exceptions", "imitate"] = "exceptions"

    def __post_init__(self) -> None:
        check_param(self.depth, "depth", _OWNER, kind=int, low=1, high=12)
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        for d in self.depths:
            check_param(d, "depths", _OWNER, kind=int, low=1, high=12,
                        expected="a tuple of depths in [1, 12]")
        check_param(self.holdout, "holdout", _OWNER, kind=(int, float), low=0, high=1,
                    low_inclusive=False, high_inclusive=False)
        object.__setattr__(self, "estimators", tuple(self.estimators))
        if not self.estimators:
            raise InvalidParameterError("ExplainConfig.estimators needs at least one estimator.")
        for e in self.estimators:
            check_param(e, "estimators", _OWNER, choices=_ESTIMATORS)
        check_q_model(self.q_model, _OWNER)
        check_param(self.bootstrap, "bootstrap", _OWNER, kind=int, low=0)
        check_param(self.frontier_bootstrap, "frontier_bootstrap", _OWNER, kind=int, low=0)
        object.__setattr__(self, "intersect", tuple(self.intersect))
        for a in self.intersect:
            check_param(a, "intersect", _OWNER, kind=str,
                        expected="a tuple of group attribute names")
        check_param(self.n_permutations, "n_permutations", _OWNER, kind=int, low=0)
        check_param(self.rare_threshold, "rare_threshold", _OWNER, kind=(int, float), low=0,
                    high=1, low_inclusive=False)
        check_param(self.min_cell, "min_cell", _OWNER, kind=int, low=1)
        check_param(self.top_disagreement, "top_disagreement", _OWNER, kind=int, low=1)
        check_param(self.mode, "mode", _OWNER, choices=("exceptions", "imitate"))

    @property
    def distill_config(self) -> DistillConfig:
        """The distillation settings at the card's depth."""
        base = self.distill or DistillConfig(q_model=weights_q_model(self.q_model))
        return replace(base, max_depth=self.depth, mode=self.mode)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        d = asdict(self)
        d["distill"] = self.distill_config.to_dict()
        d["depths"] = list(self.depths)
        d["estimators"] = list(self.estimators)
        d["intersect"] = list(self.intersect)
        return d


def weights_q_model(q_model: str) -> str:
    """The Q-model of the distillation's row weights for an ``explain`` ``q_model``.

    ``"auto"`` gives ``"linear"``: auto's criterion judges a model's *value*, not the spread of
    its action values that the weights need (on the tree simulator a table chosen by auto
    ignored the numeric states that decide the actions, and the rules' agreement with the
    source fell from 0.93 to 0.73). Any other name is used as it is.
    """
    return "linear" if q_model == "auto" else q_model


@dataclass(frozen=True, eq=False)
class PolicyCard:
    """The distilled rules of a policy and their evidence (``to_dict()`` is the card JSON).

    Attributes
    ----------
    tree : TreePolicy
        The rules as a policy (``tree.save(path)`` writes a model folder).
    rules : list of dict
        One rule per leaf, most used first (see :func:`equicare.explain.tree_rules`), with its
        held-out share of rows and agreement with the source (``None`` with a
        ``test_suppressed`` reason for a rule reached by fewer than ``min_cell`` held-out
        episodes, and for the rules suppressed with it).
    source : dict
        Description of the source policy.
    data : dict
        Episodes and rows of the fitting and held-out parts.
    fidelity, value, fairness, support : dict
        The evidence (see the module docstring).
    frontier : list of dict
        One row per depth: rules, agreement, total variation, value with interval and its
        bootstrap replicates (``bootstrap``), support; ``card_rules`` marks the depths whose
        tree is the card's rules, which show the Evidence estimate and interval.
    disagreement : list of dict
        Protected subgroups where the rules and the source disagree most.
    caveats : list of str
    settings : dict
        The :class:`ExplainConfig` used.
    """

    tree: TreePolicy
    rules: list[dict[str, Any]]
    source: dict[str, Any]
    data: dict[str, Any]
    fidelity: dict[str, Any]
    value: dict[str, Any]
    fairness: dict[str, Any]
    support: dict[str, Any]
    frontier: list[dict[str, Any]]
    disagreement: list[dict[str, Any]]
    caveats: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-friendly data (aggregates only; no row-level data).

        ``tree.features`` lists the features the rules test (every rule covers at least 11
        members), ``tree.n_features`` counts the candidates: the candidates hold one indicator
        per categorical level of the fitting rows, a level of one patient too, and the card
        is published (the model folder, shared under the data agreement, keeps them all).
        """
        used = [int(j) for j in self.tree.used_features]
        return {"format": CARD_FORMAT, "format_version": CARD_VERSION, "source": self.source,
                "data": self.data, "rules": self.rules,
                "tree": {"depth": self.tree.depth, "n_rules": rule_count(self.tree),
                         "n_leaves": int(self.tree.leaves.size),
                         "features": [dict(self.tree.features[j]) for j in used],
                         "n_features": len(self.tree.features)},
                "evidence": {"fidelity": self.fidelity, "value": self.value,
                             "fairness": self.fairness, "support": self.support},
                "frontier": self.frontier, "disagreement": self.disagreement,
                "caveats": self.caveats, "settings": self.settings}


# ---------------------------------------------------------------------- measures
def fidelity(rules_probs: NDArray[np.float64], source_probs: NDArray[np.float64]
             ) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Per-row agreement of the most likely actions and total variation distance.

    Parameters
    ----------
    rules_probs, source_probs : ndarray of shape (n, n_actions)

    Returns
    -------
    agree : ndarray of shape (n,), bool
    tv : ndarray of shape (n,)
        ``1/2 sum_a |p_rules - p_source|``.
    """
    agree = np.argmax(rules_probs, axis=1) == np.argmax(source_probs, axis=1)
    tv = 0.5 * np.abs(rules_probs - source_probs).sum(axis=1)
    return agree, tv


def support_share(probs: NDArray[np.float64], behavior_probs: NDArray[np.float64],
                  threshold: float) -> float:
    """Share (%) of a policy's mass on actions with behaviour probability below ``threshold``.

    Parameters
    ----------
    probs, behavior_probs : ndarray of shape (n, n_actions)
    threshold : float
    """
    rare = behavior_probs < threshold
    return float(100.0 * (probs * rare).sum(axis=1).mean())


def _support_check(test: TrajectoryDataset, threshold: float, seed: int, audit_seed: int,
                   estimators: tuple[str, ...] = ()
                   ) -> tuple[Callable[[NDArray[np.float64]], float], NDArray[np.float64], str,
                              dict[str, Any]]:
    """The support share (%) of any policy on ``test``, the propensities, how it is checked.

    With logged propensities: :class:`equicare.ope.LoggedSupport` (what ``evaluate`` checks;
    an action is unsupported where it was never logged in the row's categorical state, or a
    fast behaviour model gives it probability below ``threshold``), the one the fairness audit
    with ``random_state=audit_seed`` builds (:func:`~equicare.ope._evaluate.logged_support_check`).
    Without: a cross-fitted :class:`~equicare.policy.BehaviorModel` (seed ``seed``) gives the
    propensities and the support (probability below ``threshold``, or never logged in the
    row's categorical state), and ``evaluate``'s ``DataWarning`` on logged rows whose estimate
    was floored (a caveat of the card) when ``estimators`` weight by the propensities. Last,
    what the audit is given so that it builds neither again (``support_check=`` or
    ``behavior_model=`` of :func:`equicare.fairness.audit`).
    """
    from equicare.ope._evaluate import logged_support_check
    from equicare.ope._support import model_support_diagnostics
    from equicare.policy import BehaviorModel

    checker = logged_support_check(test, random_state=audit_seed)
    if checker is not None:
        return (lambda p: float(100.0 * checker.mass(p, threshold).mean()),
                np.asarray(test.behavior_prob, dtype=np.float64),
                str(checker.summary["support_check"]), {"support_check": checker})
    bm = BehaviorModel(n_folds=2, random_state=seed).fit(test)
    floored = floored_propensity_message(bm, test, estimators)
    if floored is not None:
        warnings.warn(floored, DataWarning, stacklevel=2)

    def pct(p: NDArray[np.float64]) -> float:
        return model_support_diagnostics(test, p, bm, threshold=threshold, warn=False).share_pct

    return pct, np.asarray(bm.propensities(test), dtype=np.float64), (
        "estimated propensities: a cross-fitted behaviour model"), {"behavior_model": bm}


def _est(res: Any) -> dict[str, Any]:
    return {k: e.to_dict() for k, e in res.estimates.items()}


def _rows_in(full: TrajectoryDataset, part: TrajectoryDataset) -> NDArray[np.int64]:
    """Rows of ``full`` holding the rows of ``part`` (a subset of whole episodes), in order."""
    import pandas as pd

    pos = pd.Index(full.episode_ids).get_indexer(part.episode_ids)
    starts = full.episode_offsets[pos]
    lengths = part.episode_lengths
    return np.asarray(np.repeat(starts - part.episode_offsets[:-1], lengths)
                      + np.arange(part.n_steps), dtype=np.int64)


def _episode_means(ds: TrajectoryDataset, v: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(np.bincount(ds.episode_index, weights=v, minlength=ds.n_episodes)
                      / ds.episode_lengths)


def _disagreement(ds: TrajectoryDataset, agree: NDArray[np.bool_], tv: NDArray[np.float64],
                  min_cell: int, top: int,
                  withheld: Mapping[str, Collection[str]] | None = None) -> list[dict[str, Any]]:
    """Agreement and total variation per protected subgroup (and pairs), worst first.

    ``withheld``: levels suppressed from outside (:func:`explain_policy`'s ``suppress``).
    """
    attrs = list(ds.group_attrs)
    combos: list[tuple[str, ...]] = [(a,) for a in attrs]
    combos += [(a, b) for i, a in enumerate(attrs) for b in attrs[i + 1:]]
    ep_agree = _episode_means(ds, agree.astype(np.float64))
    ep_tv = _episode_means(ds, tv)
    rows: list[dict[str, Any]] = []
    for combo in combos:
        labels = (ds.group_labels(combo[0]).astype(str) if len(combo) == 1
                  else ds.intersect_groups(list(combo)))
        levels, inv = np.unique(labels, return_inverse=True)
        n = np.bincount(inv, minlength=levels.size)
        hidden = suppressed_labels([ds.group_labels(a) for a in combo], min_cell,
                                   withheld_cells(ds, combo, withheld or {}))
        # row-weighted means within each subgroup (episodes weighted by their rows)
        lens = ds.episode_lengths.astype(np.float64)
        rows_g = np.bincount(inv, weights=lens, minlength=levels.size)
        a_g = np.bincount(inv, weights=ep_agree * lens, minlength=levels.size) / rows_g
        t_g = np.bincount(inv, weights=ep_tv * lens, minlength=levels.size) / rows_g
        for k, lv in enumerate(levels):
            if str(lv) in hidden:
                rows.append({"attribute": " x ".join(combo), "group": str(lv),
                             "suppressed": True, "n_episodes": None})
            else:
                rows.append({"attribute": " x ".join(combo), "group": str(lv),
                             "n_episodes": int(n[k]), "agreement": float(a_g[k]),
                             "tv": float(t_g[k])})
    shown = sorted((r for r in rows if not r.get("suppressed")),
                   key=lambda r: -float(r["tv"]))[:top]
    n_supp = sum(1 for r in rows if r.get("suppressed"))
    if n_supp:
        shown.append({"attribute": "(suppressed)", "group": f"{n_supp} subgroup"
                      f"{'s' if n_supp != 1 else ''} with fewer than {min_cell} episodes or "
                      "revealing one by difference", "suppressed": True, "n_episodes": None})
    return shown


#: Why a card of a panel without group attributes has no fairness audit.
NO_GROUPS_REASON = ("the dataset has no group attributes (manifest dataset.groups), so there "
                    "is no group to audit")
#: A group named for the audit of a panel without group attributes.
MSG_GROUP_WITHOUT_GROUPS = ("The '{param}' parameter of ExplainConfig names {group!r}, but the "
                            "dataset has no group attributes (manifest dataset.groups); drop "
                            "--{param} or add the column to the manifest's dataset.groups.")


def _fairness(audit_res: Any) -> dict[str, Any]:
    """The card's fairness entry: an audit, a suppressed one (a reason string) or none (None)."""
    if audit_res is None:
        return {"available": False, "suppressed": False, "reason": NO_GROUPS_REASON,
                "policies": {}}
    if isinstance(audit_res, str):
        return {"available": False, "suppressed": True, "reason": audit_res, "policies": {}}
    d = audit_res.to_dict()
    summ = audit_res.summary()
    out: dict[str, Any] = {"available": True, "suppressed": False,
                           "action": d["action"], "group": d["group"],
                           "n_episodes": d["n_episodes"], "estimator": d["estimator"],
                           "policies": {}}
    for name, p in d["policies"].items():
        vbg = p.get("value_by_group") or {}
        kept = {g: v["value"] for g, v in vbg.items()
                if isinstance(v, dict) and not v.get("suppressed") and v.get("value") is not None}
        worst = min(kept, key=lambda g: kept[g]) if kept else None
        out["policies"][name] = {
            "rate": p["overall_rate"], "parity_gap_pp": p["parity_gap_pp"],
            "parity_ratio": p["parity_ratio"],
            "proportional_parity": p.get("proportional_parity"),
            "worst_group": worst,
            "worst_group_value": (None if worst is None
                                  else float(summ.loc[name, "worst_group_value"])),
            "value_by_group": vbg}
    return out


# ---------------------------------------------------------------------- the card
def explain_policy(dataset: TrajectoryDataset, policy: Any, config: ExplainConfig | None = None,
                   *, test: TrajectoryDataset | None = None, source: dict[str, Any] | None = None,
                   random_state: int = 0, progress: bool = False,
                   panel: str | os.PathLike[str] | None = None,
                   suppress: Mapping[str, Collection[str]] | None = None) -> PolicyCard:
    """Distil a policy into rules and gather the evidence of its policy card.

    Parameters
    ----------
    dataset : TrajectoryDataset
        The panel (split into fitting and held-out episodes), or only the fitting part when
        ``test`` is given.
    policy : Policy
        The source policy (model folder policy, policy file, learner, any Policy).
    config : ExplainConfig, optional
    test : TrajectoryDataset, optional
        Held-out episodes for the evidence.
    source : dict, optional
        Description of the source shown on the card (name, path, learner).
    random_state : int
        Seed of the split, the fits and the bootstrap.
    progress : bool, default=False
        One ``[explain] ...`` line per stage on stderr and a bar over the depths
        (:class:`equicare._progress.Stages`); never changes the card.
    panel : str or path, optional
        The panel's file, named in data errors (a panel too small for the holdout).
    suppress : mapping of str to collection of str, optional
        Levels of the held-out episodes to suppress whatever their size, by attribute
        (``equicare run`` passes its held-out levels whose training half is small,
        :func:`equicare.privacy.split_withheld`): in the card's audit and subgroup tables,
        every cell of such a level reads suppressed, completed by complementary suppression
        (:func:`equicare.fairness._groups.withheld_cells`).

    Returns
    -------
    PolicyCard
    """
    from equicare._progress import Stages
    from equicare.data.validate import split_holdout
    from equicare.fairness import audit
    from equicare.ope import evaluate
    from equicare.ope._evaluate import EVALUATE_EPISODES_WHY

    cfg = config or ExplainConfig()
    check_param(random_state, "random_state", "explain_policy", kind=int, low=0)
    if (cfg.group is not None or cfg.intersect) and not dataset.groups:
        raise InvalidParameterError(MSG_GROUP_WITHOUT_GROUPS.format(
            param="group" if cfg.group is not None else "intersect",
            group=cfg.group if cfg.group is not None else cfg.intersect[0]))
    say = Stages("explain", progress)
    rng = np.random.default_rng(random_state)
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=8)]
    say(f"{dataset.n_episodes} episodes, {dataset.n_steps} steps: the source policy's "
        "probabilities" + ("" if test is not None else
                           f", {cfg.holdout:g} of the episodes held out for the evidence"))
    if test is None:
        # the source's probabilities on the whole panel, then split by episode (a policy file
        # covers exactly the panel's rows)
        strat = dataset.group_attrs[0] if dataset.group_attrs else None
        fit_ds, test = split_holdout(dataset, cfg.holdout, "explain", "the evidence",
                                     EVALUATE_EPISODES_WHY, random_state=seeds[0],
                                     stratify=strat, source=panel)
        src_all = check_probs(policy.action_probs(dataset), dataset.n_steps, dataset.n_actions,
                              "source policy")
        src_fit, src_test = (src_all[_rows_in(dataset, part)] for part in (fit_ds, test))
    else:
        fit_ds = dataset
        if test.action_space.to_dict() != fit_ds.action_space.to_dict():
            raise DataValidationError(
                "explain_policy: the test set has another action space "
                f"({test.action_space.to_dict()}) than the dataset "
                f"({fit_ds.action_space.to_dict()}).")
        src_fit = check_probs(policy.action_probs(fit_ds), fit_ds.n_steps, fit_ds.n_actions,
                              "source policy")
        src_test = check_probs(policy.action_probs(test), test.n_steps, test.n_actions,
                               "source policy")
    dcfg = cfg.distill_config
    caught_msgs: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        say(f"row weights of the rules on {fit_ds.n_episodes} fitting episodes"
            + (": the source's Q-model and the estimate of current practice"
               if dcfg.mode == "exceptions" else ""))
        q_fit = (source_q(fit_ds, src_fit, dcfg, seeds[1])
                 if dcfg.weighting == "q_spread" or dcfg.mode == "exceptions" else None)
        usual_care = None
        if dcfg.mode == "exceptions":
            from equicare.explain._distill import exception_targets
            from equicare.explain._usual import fit_usual_care

            usual_care = fit_usual_care(fit_ds, dcfg.usual_care, random_state=seeds[7])
            q_dev = source_q(fit_ds, src_fit, dcfg, seeds[1]) if q_fit is None else q_fit
            _, weights, _ = exception_targets(fit_ds, src_fit, usual_care, q_dev, dcfg)
            if dcfg.weighting == "uniform":
                weights = np.ones(fit_ds.n_steps)
        else:
            weights = choice_weights(fit_ds, src_fit, dcfg, random_state=seeds[1], q=q_fit)
        # behaviour: the logged propensities and evaluate's support check for logged data
        # (empirical per categorical cell, a fast model for numeric states) when present; else
        # a cross-fitted behaviour model for both
        say(f"support check and propensities on {test.n_episodes} held-out episodes")
        support_pct, props, support_check, shared = _support_check(
            test, cfg.rare_threshold, seeds[2], seeds[6], tuple(cfg.estimators))

        q_name, q_selection = cfg.q_model, None
        if q_name == "auto" and any(k in ("fqe", "dr", "wdr") for k in cfg.estimators):
            from equicare.ope._prepare import auto_q_model

            say("Q-model: auto's cross-fitted choice for the source")
            q_name, sel = auto_q_model(test, src_test, random_state=seeds[3])
            q_selection = sel.to_dict()

        def value(probs: NDArray[np.float64], n_boot: int, seed: int,
                  behavior_prob: NDArray[np.float64] | None = None) -> Any:
            with warnings.catch_warnings():  # not a caveat of the card (as before evaluate
                # warned it): every depth's value would add its own line; the card's headline
                # is DR, WDR or FQE whenever one is listed
                warnings.simplefilter("ignore", LowESSWarning)
                return evaluate(test, probs, estimators=cfg.estimators, q_model=q_name,
                                behavior_prob=props if behavior_prob is None else behavior_prob,
                                bootstrap=n_boot, groups=[], diagnose_support=False,
                                random_state=seed)

        say(f"source: {', '.join(cfg.estimators)} (Q-model {q_name}), bootstrap "
            f"{cfg.bootstrap} replicates")
        src_val = value(src_test, cfg.bootstrap, seeds[3])
        depths = sorted(set(cfg.depths) | {cfg.depth})
        frontier, trees = [], {}
        key = card_estimator(cfg.estimators, src_val.out_of_range)
        with say.bar("depths", len(depths)) as bar:
            for d in depths:
                say(f"depth {d}: distil, then value, bootstrap "
                    f"{cfg.bootstrap if d == cfg.depth else cfg.frontier_bootstrap} replicates")
                dist = Distiller(replace(dcfg, max_depth=d)).fit(
                    fit_ds, policy, source_probs=src_fit, weights=weights, q=q_fit,
                    usual_care=usual_care, random_state=seeds[4])
                probs = dist.policy_.action_probs(test)
                agree, tv = fidelity(probs, src_test)
                # the card's own depth: the Evidence estimate itself (cfg.bootstrap replicates), so
                # the page shows one interval for one value (set below)
                res = (value(probs, cfg.bootstrap, seeds[3]) if d == cfg.depth else
                       value(probs, cfg.frontier_bootstrap, seeds[5]))
                e = res.estimates[key]
                trees[d] = (dist, probs, agree, tv, res)
                frontier.append({"depth": d, "n_rules": rule_count(dist.policy_),
                                 "agreement": float(agree.mean()), "tv": float(tv.mean()),
                                 "estimator": key, **{k: v for k, v in e.to_dict().items()
                                                      if k in ("value", "ci", "reason")},
                                 "support_pct": support_pct(probs),
                                 "bootstrap": cfg.frontier_bootstrap, "card_rules": False})
                bar.update(advance=1, info=f"depth {d}")
        dist, rules_test, agree, tv, rules_val = trees[cfg.depth]
        tree = dist.policy_
        for row in frontier:  # every depth whose tree is the card's (e.g. a depth-3 fit that
            # stops at depth 2) shows the Evidence estimate too
            if np.array_equal(trees[row["depth"]][1], rules_test):
                row.update({k: v for k, v in rules_val.estimates[key].to_dict().items()
                            if k in ("value", "ci", "reason")},
                           bootstrap=cfg.bootstrap, card_rules=True)
        aud: Any = None  # None: no group attributes, so no audit (the card says so)
        try:
            if test.groups:
                say("fairness audit of source and rules")  # its own stages follow
                aud = audit(test, {"source": src_test, "rules": rules_test}, action=cfg.action,
                            group=cfg.group, intersect=cfg.intersect, n_boot=cfg.bootstrap,
                            n_permutations=cfg.n_permutations, min_cell=cfg.min_cell,
                            estimator=key, q_model=q_name, random_state=seeds[6],
                            progress=say, **shared,
                            suppress=withheld_cells(
                                test, [cfg.group or test.group_attrs[0], *cfg.intersect],
                                suppress or {}))
        except DataValidationError as exc:
            if not ("nothing can be published" in str(exc)
                    or "a parity audit needs at least 2" in str(exc)):
                raise
            # every group is a small cell, or only one can be published: no parity to report;
            # the card is made to be shared, so its reason names no local file
            aud = str(exc)
            if test.source is not None:
                aud = aud.removeprefix(f"{test.source}: ")
    _keep_messages(caught, caught_msgs)
    time_unit = time_unit_of(getattr(getattr(dataset, "manifest", None), "time", None))
    fit_leaves = tree.apply(fit_ds)
    rules = tree_rules(tree, leaves=fit_leaves, weights=None, time_unit=time_unit)
    test_leaves = tree.apply(test)
    _held_out_by_rule(rules, test_leaves, np.asarray(test.episode_index, dtype=np.int64),
                      agree, tree.n_nodes, cfg.min_cell)
    beh = src_val.behavior
    # the stored estimate of current practice that the usual-care rows follow, valued alone
    # by the same engine (its loss against practice itself is inherited by the rules)
    usual_val = usual_test = deployed_val = None
    if tree.has_usual and tree.usual_policy is not None:
        with warnings.catch_warnings(record=True) as caught_u:
            warnings.simplefilter("always")
            usual_test = usual_care_probs(tree.usual_policy, test)  # as the rules store it
            say(f"current practice and the rules as deployed: bootstrap {cfg.bootstrap} "
                "replicates")
            # the rules as deployed: where no rule applies the clinicians decide as they do,
            # so those rows keep their logged actions (importance ratio 1; no estimate of
            # practice)
            deferred = np.asarray(tree.usual, dtype=bool)[test_leaves]
            with say.bar("practice, deployed rules", 1 + int(deferred.any())) as bar:
                usual_val = value(usual_test, cfg.bootstrap, seeds[3])
                bar.update(advance=1, info="practice")
                if deferred.any():
                    pe_dep, b_dep = deferred_target(rules_test, props, test.actions, deferred)
                    deployed_val = value(pe_dep, cfg.bootstrap, seeds[3], b_dep)
                    bar.update(advance=1, info="deployed rules")
        _keep_messages(caught_u, caught_msgs)
    returns = test.returns()  # its ends only judge the estimates: never on the card
    span = (float(returns.min()), float(returns.max())) if returns.size else None
    src_se = {k: src_val.estimates[k].se for k in cfg.estimators}
    kept, gains = improvement_kept(
        beh.value, {k: src_val.estimates[k].value for k in cfg.estimators},
        {k: rules_val.estimates[k].value for k in cfg.estimators}, returns_range=span,
        source_se=src_se, rules_se={k: rules_val.estimates[k].se for k in cfg.estimators})
    kept_dep = None if deployed_val is None else improvement_kept(
        beh.value, {k: src_val.estimates[k].value for k in cfg.estimators},
        {k: deployed_val.estimates[k].value for k in cfg.estimators}, returns_range=span,
        source_se=src_se,
        rules_se={k: deployed_val.estimates[k].se for k in cfg.estimators})[0]
    val = {"behavior": beh.to_dict(), "source": _est(src_val), "rules": _est(rules_val),
           "improvement_kept": kept, "source_gain": gains, "estimator_for_frontier": key,
           "q_model": q_name, "q_model_selection": q_selection,
           "propensities": "logged" if test.behavior_prob is not None else "estimated",
           "usual_care": None if usual_val is None else _est(usual_val),
           "rules_deployed": None if deployed_val is None else _est(deployed_val),
           "improvement_kept_deployed": kept_dep}
    sup = {"threshold": cfg.rare_threshold, "check": support_check,
           "rules_pct": support_pct(rules_test), "source_pct": support_pct(src_test),
           "usual_care_pct": None if usual_test is None else support_pct(
               _acted_mass(tree.usual_policy, usual_test, test))}
    fid = {"agreement": float(agree.mean()), "tv": float(tv.mean()),
           "weighted_agreement_fit": dist.agreement_, "n_test_rows": int(test.n_steps),
           "n_test_episodes": int(test.n_episodes)}
    disagreement = _disagreement(test, agree, tv, cfg.min_cell, cfg.top_disagreement,
                                 suppress)
    fair = _fairness(aud)
    caveats = _caveats(fid, sup, val, key, cfg, caught_msgs, returns_range=span)
    if aud is None:
        caveats.append(f"No fairness audit: {NO_GROUPS_REASON}. Name the protected attributes "
                       "in the manifest's dataset.groups to audit the rules by group.")
    data = {"n_episodes": int(fit_ds.n_episodes + test.n_episodes),
            "fit_episodes": int(fit_ds.n_episodes), "fit_rows": int(fit_ds.n_steps),
            "test_episodes": int(test.n_episodes), "test_rows": int(test.n_steps),
            "time_unit": time_unit, "gamma": float(test.gamma)}
    src = {"name": "source", "window": int(getattr(policy, "window", 1)), **(source or {})}
    usual_rows = [r for r in rules if r.get("usual")]
    data["mode"] = dcfg.mode
    usual_share = (0.0 if not usual_rows else None if usual_rows[0]["test_share"] is None
                   else float(usual_rows[0]["test_share"]))
    data["usual_care_share"] = usual_share
    usual_note = usual_care_caveat(val, sup, key, tree.usual_policy, usual_share=usual_share,
                                   returns_range=span)
    if usual_note is not None:
        caveats.insert(3, usual_note)
    if dcfg.mode == "exceptions":
        data["usual_care_model"] = ("none" if not tree.has_usual else
                                    "cells" if not isinstance(tree.usual_policy, TreePolicy)
                                    else "tree")
    tree = replace(tree, source="distilled rules",
                   info={"distill": dcfg.to_dict(), "source": src,
                         "rules": [r["text"] for r in rules]})
    return PolicyCard(tree=tree, rules=rules, source=src, data=data, fidelity=fid, value=val,
                      fairness=fair, support=sup, frontier=frontier, disagreement=disagreement,
                      caveats=caveats, settings=cfg.to_dict())


def _keep_messages(caught: list[warnings.WarningMessage], messages: list[str]) -> None:
    """Add the caught warnings' texts to ``messages`` (the card's caveats), once each."""
    for w in caught:
        msg = str(w.message)
        if msg not in messages and not issubclass(w.category, DeprecationWarning):
            messages.append(msg)


def _acted_mass(policy: Any, probs: NDArray[np.float64], dataset: TrajectoryDataset
                ) -> NDArray[np.float64]:
    """``probs`` without the mass ``policy`` leaves to the clinicians, shape of ``probs``.

    That mass is the clinicians' own choice, on their support by definition; the table's split
    of it is a stand-in.
    """
    mask = policy.deferred_mask(dataset) if hasattr(policy, "deferred_mask") else None
    return probs if mask is None else np.where(mask, 0.0, probs)


def usual_care_caveat(val: dict[str, Any], sup: dict[str, Any], key: str, usual_policy: Any,
                      usual_share: float | None = None,
                      returns_range: tuple[float, float] | None = None) -> str | None:
    """A caveat when the stored estimate of current practice may be worth less than practice.

    Exception rules leave every state they do not name to the clinicians' *estimated*
    distribution (:func:`equicare.explain.fit_usual_care`), not to the clinicians, and inherit
    whatever that estimate loses. The caveat says so when

    * an estimator of the card puts the estimate's whole interval below current practice's
      observed value (the headline estimator first; one in range of the returns), or else
    * the estimate puts at least 1% of its mass on actions practice rarely or never takes in
      the state (``sup["usual_care_pct"]``; mass the estimate leaves to the clinicians, in
      cells seen in fewer than 11 episodes, is theirs and not counted), where every
      model-based value, DR's too, rests on the Q-model's extrapolation and cannot see the
      loss.

    On Garnet (700 states, 2,000 episodes, 1,400 fitting) practice stored as a behaviour tree
    is worth 0.602 exactly against practice's 0.800: DR estimates it at 0.795 [0.781, 0.809]
    (no loss seen), WIS at 0.482 [0.141, 0.823], and 64% of its mass is on rarely taken
    actions. Practice as cells is worth 0.801 there (0.710 while the states seen in fewer than
    11 episodes got the overall frequencies instead of being left to the clinicians).

    Returns
    -------
    str or None
    """
    ests = val.get("usual_care") or {}
    if not ests:
        return None
    beh = float(val["behavior"]["value"])
    what = ("a tree of the logged actions" if isinstance(usual_policy, TreePolicy) else
            "the observed frequency of each action in each state cell; cells seen in fewer "
            "than 11 episodes are left to the clinicians")
    rows = ("" if usual_share is None else
            f" (here {100 * usual_share:.0f}% of the held-out rows)")

    def shown(k: str) -> str:
        e = ests[k]
        ci = e.get("ci") or [None, None]
        return (f"{e['value']:.3g}" if ci[0] is None
                else f"{e['value']:.3g} [{float(ci[0]):.3g}, {float(ci[1]):.3g}]")

    below = [k for k, e in ests.items()
             if e.get("value") is not None and np.isfinite(e["value"])
             and not far_outside(e["value"], returns_range)
             and (e.get("ci") or [None, None])[1] is not None and float(e["ci"][1]) < beh]
    if below:
        k = key if key in below else below[0]
        v = float(ests[k]["value"])
        gain = (val.get("source_gain") or {}).get(k)
        share = (f", {100 * (v - beh) / gain:+,.0f}% of the source policy's estimated gain"
                 if gain is not None and gain > 1e-12 else "")
        return (f"Current practice as stored with the rules ({what}) is estimated at "
                f"{shown(k)} ({k}), below current practice's observed {beh:.3g} by "
                f"{beh - v:.3g}{share}. Every row the rules leave to current practice{rows} "
                "follows that estimate, not the clinicians, so the rules inherit the loss."
                + _deployed_sentence(val, k))
    pct = sup.get("usual_care_pct")
    if pct is None or not pct >= 1.0 or key not in ests or ests[key].get("value") is None:
        return None
    return (f"Current practice as stored with the rules ({what}) puts {pct:.1f}% of its "
            "probability mass on actions that practice rarely or never takes in that state: "
            f"its estimated value, {shown(key)} ({key}) against current practice's observed "
            f"{beh:.3g}, rests there on no logged outcome (a Q-model's extrapolation, or no "
            "weight at all), and it may be worth less than practice. Every row the rules "
            f"leave to current practice{rows} follows that estimate, not the clinicians, so "
            "the rules inherit any such loss." + _deployed_sentence(val, key))


def _deployed_sentence(val: dict[str, Any], key: str) -> str:
    """' As deployed, ...': the rules' value with the clinicians deciding where none applies."""
    e = (val.get("rules_deployed") or {}).get(key)
    if not e or e.get("value") is None or not np.isfinite(e["value"]):
        return ""
    ci = e.get("ci") or [None, None]
    shown = (f"{e['value']:.3g}" if ci[0] is None
             else f"{e['value']:.3g} [{float(ci[0]):.3g}, {float(ci[1]):.3g}]")
    return (" That holds for the rules as predict outputs them (card/model/). As deployed, "
            "with the clinicians deciding where no rule applies, they are estimated at "
            f"{shown} ({key}), with no estimate of practice in the value.")


def held_out_reason(min_cell: int) -> str:
    """Why a rule's held-out share and agreement are not published."""
    return (f"fewer than {min_cell} held-out episodes (with the rules suppressed with it, so "
            "that no total minus the others reveals it)")


def _held_out_by_rule(rules: list[dict[str, Any]], leaves: NDArray[np.int64],
                      episodes: NDArray[np.int64], agree: NDArray[np.bool_], n_nodes: int,
                      min_cell: int) -> None:
    """Each rule's held-out share of rows and agreement, in place, suppressed on small cells.

    A rule reached by fewer than ``min_cell`` held-out episodes gets ``None`` for both and a
    ``test_suppressed`` reason; the overall agreement and the shares sum to what the card
    publishes, so the rules suppressed together must hold at least ``min_cell`` episodes
    (complementary suppression: the next smallest rules join them until they do).
    """
    n_leaf = np.bincount(leaves, minlength=n_nodes)
    a_leaf = np.bincount(leaves, weights=agree.astype(np.float64), minlength=n_nodes)
    n_rows = max(int(leaves.size), 1)
    members = []
    for r in rules:
        ks = r["leaves"] if r["leaf"] is None else [r["leaf"]]
        members.append(np.unique(episodes[np.isin(leaves, ks)]))
    size = np.array([m.size for m in members], dtype=np.int64)
    hide = (size > 0) & (size < min_cell)
    order = np.argsort(size, kind="stable")
    while hide.any():  # rules of a small tree
        held = np.unique(np.concatenate([members[i] for i in np.flatnonzero(hide)])).size
        rest = [int(i) for i in order if not hide[i] and size[i] > 0]
        if held >= min_cell or not rest:
            break
        hide[rest[0]] = True
    for i, r in enumerate(rules):
        ks = r["leaves"] if r["leaf"] is None else [r["leaf"]]
        n_k, a_k = float(n_leaf[ks].sum()), float(a_leaf[ks].sum())
        if hide[i]:
            r["test_share"], r["test_agreement"] = None, None
            r["test_suppressed"] = held_out_reason(min_cell)
            continue
        r["test_share"] = n_k / n_rows
        r["test_agreement"] = None if n_k == 0 else a_k / n_k


def improvement_kept(behavior: float, source: dict[str, float], rules: dict[str, float],
                     returns_range: tuple[float, float] | None = None,
                     source_se: dict[str, float] | None = None,
                     rules_se: dict[str, float] | None = None,
                     ) -> tuple[dict[str, float | None], dict[str, float | None]]:
    r"""Share of the source policy's estimated gain over current practice that the rules keep.

    .. math::

        \text{kept} = \frac{V(\text{rules}) - V(\text{behaviour})}
                            {V(\text{source}) - V(\text{behaviour})}

    Only defined when the source policy improves on current practice: a source gain <= 0
    (within ``1e-12``) gives ``None``, since a ratio of two losses ("257% kept" when both are
    negative) or of a loss and a gain has no meaning as a share kept.

    Nor is it defined from an estimate far outside the range of the observed returns
    (``returns_range``; :func:`equicare.ope._evaluate.far_outside`): a DR of 7.7e6 for the
    source and -9.8e5 for the rules on outcomes in [0, 1] gave "-13% kept", a ratio of two
    blown-up importance weights.

    Nor from a gain within :data:`GAIN_NOISE_SE` standard errors of the source's estimate
    (``source_se``): a daily panel's source gained 1.01 by DR with a standard error of 1.40,
    and rules at 17.5 (SE 15.7) against a behaviour value of 30.7 read "keep only -1297%", a
    ratio to a gain that may well be zero.

    Parameters
    ----------
    behavior : float
        Estimated value of current practice.
    source, rules : dict of str to float
        Estimated values of the source policy and of the rules, by estimator.
    returns_range : (float, float), optional
        The held-out episodes' lowest and highest return.
    source_se, rules_se : dict of str to float, optional
        Standard errors of the source's and the rules' estimates, by estimator.

    Returns
    -------
    kept : dict of str to float or None
        The share by estimator (``None`` where the source gain is <= 0 or within noise, an
        estimate has no value, e.g. WIS when every importance weight is 0, or lies far outside
        the returns).
    gains : dict of str to float or None
        The source policy's gain over current practice by estimator (``None`` where the
        source's estimate has no value or lies far outside the returns).
    """
    kept: dict[str, float | None] = {}
    gains: dict[str, float | None] = {}
    for k, v in source.items():
        if far_outside(v, returns_range) or far_outside(rules[k], returns_range):
            kept[k] = None
            gains[k] = None if far_outside(v, returns_range) else float(v - behavior)
            continue
        gain_src = float(v - behavior)
        gains[k] = gain_src if np.isfinite(gain_src) else None
        share = (rules[k] - behavior) / gain_src if gain_src > 1e-12 else np.nan
        if share_too_noisy(gain_src, (source_se or {}).get(k), (rules_se or {}).get(k)):
            share = np.nan
        kept[k] = float(share) if np.isfinite(share) else None
    return kept, gains


#: A source gain within this many standard errors of its estimate gives no share kept.
GAIN_NOISE_SE = 2.0
#: Nor does a rules' value whose standard error exceeds this share of the gain (the share's own
#: standard error would pass 50 percentage points).
SHARE_MAX_SE = 0.5


def share_too_noisy(gain: float | None, source_se: float | None,
                    rules_se: float | None = None) -> bool:
    """Whether a positive gain is too noisy a denominator for a share kept (known SEs).

    The gain is within :data:`GAIN_NOISE_SE` standard errors of the source's estimate, or the
    rules' standard error over the gain exceeds :data:`SHARE_MAX_SE`.
    """
    if gain is None or not gain > 1e-12:
        return False
    return ((source_se is not None and bool(np.isfinite(source_se))
             and gain <= GAIN_NOISE_SE * source_se)
            or (rules_se is not None and bool(np.isfinite(rules_se))
                and rules_se > SHARE_MAX_SE * gain))


def card_estimator(estimators: tuple[str, ...], out_of_range: tuple[str, ...]) -> str:
    """The card's headline estimator: the first of DR, WDR, FQE listed and in range.

    An estimate far outside the observed returns is the importance weights blowing up, not a
    value (a DR of 7.7e6 for a survival probability headlined a reviewer's card, its frontier
    drawn on a 1e6 scale); the first listed estimator when none of the three qualifies.
    """
    return headline_of(estimators, out_of_range) or estimators[0]


def _caveats(fid: dict[str, Any], sup: dict[str, Any], val: dict[str, Any], key: str,
             cfg: ExplainConfig, msgs: list[str],
             returns_range: tuple[float, float] | None = None) -> list[str]:
    out = [
        f"Fidelity is measured on {fid['n_test_episodes']:,} held-out episodes of the same "
        "panel; it says how closely the rules imitate the source policy there, not how well "
        "either would do elsewhere.",
        f"Support: the rules put {sup['rules_pct']:.1f}% of their probability mass on actions "
        f"that current practice takes with probability below {cfg.rare_threshold:g} in that "
        f"state or never took in it (the source policy: {sup['source_pct']:.1f}%; checked "
        f"by {sup['check']}). Off-policy values of that mass rest on the Q-model's "
        "extrapolation, not on observed outcomes.",
        "Values are off-policy estimates from observational data: valid only if every factor "
        "that drove both the logged decisions and the outcomes is among the recorded state "
        "features (no unmeasured confounding).",
        f"Subgroups with fewer than {cfg.min_cell} episodes are suppressed in every table.",
    ]
    for who, pol_key in (("the source policy", "source"), ("the rules", "rules")):
        for k, e in val.get(pol_key, {}).items():
            if e.get("reason") is not None:
                out.append(f"No {k} estimate for {who} (n/a): {e['reason']}.")
    preferred = headline_of(cfg.estimators) or key
    if key != preferred:
        out.append(f"The frontier, the improvement kept and the fairness values use {key}: "
                   f"{preferred}'s estimate of the source policy lies far outside the range of "
                   "the observed returns (the importance weights are extreme), so it is not a "
                   "value.")
    kept = val["improvement_kept"].get(key)
    gain = val.get("source_gain", {}).get(key)
    blown = [who for who, pol_key in (("the source policy", "source"), ("the rules", "rules"))
             if far_outside((val.get(pol_key, {}).get(key) or {}).get("value", np.nan),
                            returns_range)]
    if blown:
        out.append(f"No share of the improvement kept is reported ({key}: n/a): the {key} "
                   f"estimate of {' and of '.join(blown)} lies far outside the range of the "
                   "observed returns, so the importance weights are extreme and it is not a "
                   "value (see the warnings below). Judge the rules by their fidelity and by "
                   "an estimator that stays in range.")
    if gain is not None and not gain > 1e-12:
        out.append(f"The source policy's estimated value is not above current practice's "
                   f"({key}: a gain of {gain:+.3g}), so there is no improvement for the rules "
                   "to keep and no share kept is reported (n/a).")
    se = (val.get("source", {}).get(key) or {}).get("se")
    rules_se = (val.get("rules", {}).get(key) or {}).get("se")
    if share_too_noisy(gain, se, rules_se):
        def _se(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3g}"

        out.append(f"No share of the source policy's estimated gain over current practice "
                   f"kept by the rules is reported ({key}: n/a): the gain ({gain:+.3g}; "
                   f"the source's value has standard error {_se(se)}) or the rules' value "
                   f"(standard error {_se(rules_se)}) is too noisy for a ratio (a gain within "
                   f"{GAIN_NOISE_SE:g} standard errors of none, or a share whose standard "
                   f"error passes {100 * SHARE_MAX_SE:g} percentage points). Compare the "
                   "values instead.")
    if kept is not None and kept < 0.8:
        out.append(f"The rules keep only {round(100 * kept) or 0}% of the source policy's "
                   "estimated "
                   f"improvement over current practice ({key}); a deeper tree may be needed.")
    out += [f"Warning raised while gathering the evidence: {m}" for m in msgs[:5]]
    return out


#: Time-column names that are a unit the rules can speak of ("last week's modality").
TIME_UNITS = ("hour", "shift", "day", "week", "fortnight", "month", "quarter", "year", "visit",
              "encounter", "session", "cycle", "step", "period")


def time_unit_of(column: str | None) -> str:
    """The unit the card's rules name, from the manifest's time column.

    ``"week"``, ``"weeks"``, ``"week_index"`` -> ``"week"``; ``"step"`` for a name that is not a
    unit (``"t"``).
    """
    words = re.split(r"[^a-z]+", str(column or "").lower())
    for w in words:
        for unit in TIME_UNITS:
            if w in (unit, unit + "s"):
                return unit
    return "step"
