r"""Dynamic mediation analysis in an infinite-horizon, average-reward MDP (Ge et al., ICML 2023).

Five processes share the mediated MDP ``A ~ pi(.|S), M ~ p_m(.|S, A), R ~ r(S, A, M),
S' ~ p(.|S, A, M)``; their long-run average rewards (``eta``) give the four effects

.. math::

    \mathrm{IDE} = \eta^{\pi_e} - \eta^{\pi_e, a_0},\quad
    \mathrm{IME} = \eta^{\pi_e, a_0} - \eta^{\pi_e, a_0^*},\quad
    \mathrm{DDE} = \eta^{\pi_e, a_0^*} - \eta^{G},\quad
    \mathrm{DME} = \eta^{G} - \eta^{a_0},

which sum to the total effect ``eta(pi_e) - eta(a0)``. Each ``eta`` is estimated by the direct
method (LSTD on a basis), marginalised importance sampling (state density ratio times action and
mediator ratios) and the multiply robust estimator (direct method plus the ratio-weighted
Bellman and reward residuals: consistent when either the Q-functions, reward and mediator
models, or the ratios, behaviour policy and one of reward / mediator models are right).

With terminal rows (stays that end and renew the process) a censored last row is a step whose
next state is missing: every next-state term is weighted by
:func:`~equicare.causal._data.next_state_weights` (0 there, the inverse probability of not being
censored on the other steps that go on), so censoring does not bias the end rates or the etas.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare._progress import ProgressTask, Stages
from equicare.causal._basis import (
    MediatorEncoder,
    basis_width,
    combine,
    combine_dot,
    state_features,
)
from equicare.causal._data import (
    MediationData,
    PolicyProbs,
    as_mediation_data,
    resolve_policy,
)
from equicare.causal._inference import ClusterInference, cluster_inference
from equicare.causal._lstd import MixedDesign, action_design, level_action_design, lstd_blocks
from equicare.causal._nuisance import BehaviorModel, MediatorModel, RewardModel
from equicare.causal._ratio import effective_sample_size, fit_ratio
from equicare.causal._refit import bootstrap_counts, refit_etas, refit_support
from equicare.causal._result import (
    CHAIN_KEYS,
    EFFECT_KEYS,
    ETA_KEYS,
    LOW_ESS_PCT,
    EffectEstimate,
    EstimatorResult,
    MediationResult,
    PerStay,
)
from equicare.causal._stay import CHAIN_OF, per_stay_influence, per_stay_values
from equicare.exceptions import (
    DataValidationError,
    DataWarning,
    InvalidParameterError,
    PolicyError,
    SupportWarning,
)
from equicare.policy._deployed import UsualCare, check_usual_care, deferred_target
from equicare.privacy import warn_low_min_cell
from equicare.utils import MIN_CELL, PARAM_MESSAGE, RandomState, check_param, check_random_state

__all__ = ["DynamicMediation", "PointExposureMediation", "ESTIMATORS", "FewTransitionsError",
           "mediator_ess"]

#: Estimators of :class:`DynamicMediation` (Contract-6 keys).
ESTIMATORS = ("dm", "mis", "mr", "baseline")
_BASES = ("auto", "onehot", "spline", "rff", "poly", "constant")

#: Error templates (tests match them exactly).
BINARY_ACTION_MESSAGE = ("A fixed control action a0 needs a binary action (codes 0 and 1); the "
                         "data have {n_actions} actions. Give a control policy instead, or "
                         "collapse the actions to an action set with "
                         "equicare.causal.binarize_actions(dataset, 'component=level') "
                         "(then control=0 means never taking it).")
FEW_TRANSITIONS_MESSAGE = ("Too few transitions for the basis: the largest Q-function basis has "
                           "{p} features ({n_actions} actions x {per_action} state-mediator "
                           "features) but a cross-fitting fold trains on only {n} transitions "
                           "(need at least {need}). {advice}")
#: Advice of :data:`FEW_TRANSITIONS_MESSAGE` for the Python API (the CLI names its options).
FEW_TRANSITIONS_ADVICE = ("Use fewer actions (collapse them to an action set with "
                          "equicare.causal.binarize_actions), a smaller basis "
                          "({bases}), fewer folds (n_folds), or more data.")
LOW_ESS_MESSAGE = ("The state density ratio of {name!r} has an effective sample size of {pct:.1f}% "
                   "of the transitions; the target and data visit different states, so MIS and MR "
                   "are imprecise.")
LOW_MEDIATOR_ESS_MESSAGE = (
    "The mediator ratio p_e(M|S) / p_m(M|S,A) has an effective sample size of {pct:.1f}% of "
    "the transitions (largest ratio {max_w:.3g}): the MR and MIS IDE, IME, DDE and DME rest on "
    "a few rows whose mediator value the fitted mediator model finds rare under the logged "
    "action, and MR's standard errors and CIs can be far too narrow. Compare with 'dm', or "
    "use a coarser basis or a smoother mediator model.")
#: Why DM, MIS or the baseline has no SE or CI (the JSON's ``note``, and the terminal's): their
#: intervals come from a bootstrap that refits every model (:mod:`equicare.causal._refit`);
#: ``{reason}`` says why it did not run. Linearised with the fitted models (and ratios) held
#: fixed, their intervals covered the truth in as few as 11 % of simulated data sets.
NO_INTERVAL_NOTE = ("no standard error or CI: its intervals come from a bootstrap that refits "
                    "every model, and {reason} (docs/mediation.md 'Inference'); use mr's")
#: :data:`NO_INTERVAL_NOTE`'s reason without bootstrap replicates.
NO_BOOTSTRAP_REASON = "n_bootstrap is 0"
#: An estimator's long-run average reward outside the observed rewards' range (the range's
#: ends are not printed: they are single transitions' rewards, and notes are published).
ETA_RANGE_MESSAGE = (
    "{where} outside the range of the observed rewards, where no long-run average reward can "
    "be: its LSTD fit failed (a basis too rich for the transitions of some actions, or one "
    "that cannot represent the process's Q-function), and {effects} resting on {them} are "
    "estimation error, not effects. Fewer knots or fewer actions (an action set: the CLI's "
    "--action) may stabilise it; basis='constant' ignores the states")


#: The default behaviour model stopped before converging (tests match it).
BEHAVIOR_NOT_CONVERGED = (
    "The behaviour model pi_b(A|S) (multinomial logistic over {n_actions} actions on the state "
    "basis) did not converge (a Newton step would have raised its objective, as with rare "
    "actions on a near-collinear basis, or its steps ran out), so the fit stopped at its best "
    "iterate, and the action ratios of MIS and MR rest on it. Collapse the actions to an "
    "action set (--action COMPONENT=LEVEL with --control 0), give the logged propensities "
    "(behavior_prob), or use a coarser basis.")

#: The default mediator model stopped before converging in an action's block (tests match it).
MEDIATOR_NOT_CONVERGED = (
    "The mediator model p_m(M|S,A) (multinomial logistic over {n_levels} mediator levels on "
    "the state basis, one block per action) did not converge (a Newton step would have raised "
    "its objective, as with rare mediator levels on a near-collinear basis, or its steps ran "
    "out), so the fit stopped at its best iterate, and the mediator ratios and the mediator "
    "law of every estimator rest on it. Pool the rare mediator levels, collapse the actions "
    "(--action COMPONENT=LEVEL with --control 0), or use a coarser basis.")


def mediator_ess(rho_0: NDArray[np.float64], ratio_m: NDArray[np.float64]) -> float:
    r"""Effective sample size of the mediator ratio among rows reweighted to the control.

    MR and MIS weight the mediator residuals by ``rho_0 * ratio_m``; ``rho_0`` (the control's
    action ratio) makes the rows a sample of the control's actions, under which the mediator
    ratio ``ratio_m = p_e(M|S) / p_m(M|S,A)`` has mean 1. This is Kish's effective sample size
    of ``ratio_m`` under that ``rho_0``-weighted sample, scaled to the ``n`` transitions:

    .. math::

        n \, \frac{(\sum_i \rho_{0,i} r_i)^2}{\sum_i \rho_{0,i} \sum_i \rho_{0,i} r_i^2}.

    It is ``n`` when the target does not move the mediator law, and small when a few rows
    carry most of the mediator weight (an estimated ``p_m`` near 0 at an observed mediator).

    Parameters
    ----------
    rho_0 : ndarray of shape (n,)
    ratio_m : ndarray of shape (n,)

    Returns
    -------
    float
    """
    s0, s1, s2 = (float((rho_0 * ratio_m ** k).sum()) for k in range(3))
    return rho_0.size * s1 * s1 / (s0 * s2) if s0 > 0 and s2 > 0 else 0.0


#: Rows per basis feature below which the analysis refuses to run.
MIN_ROWS_PER_FEATURE = 2


class FewTransitionsError(DataValidationError):
    """Too few transitions per Q-function feature; raised before any model is fitted.

    Attributes
    ----------
    p, n, need, n_actions, per_action : int
        Features of the largest Q-function basis, transitions of the smallest training fold,
        transitions needed, actions, and features per action.
    basis : str
        The state basis used (``auto`` resolved), to suggest a coarser one.
    """

    def __init__(self, *, p: int, n: int, need: int, n_actions: int, per_action: int,
                 basis: str) -> None:
        self.p, self.n, self.need = p, n, need
        self.n_actions, self.per_action, self.basis = n_actions, per_action, basis
        super().__init__(self.render(FEW_TRANSITIONS_ADVICE.format(
            bases=" or ".join(f"basis={b!r}" for b in coarser_bases(basis)) or "fewer knots")))

    def render(self, advice: str) -> str:
        """The message with ``advice`` (what to change) at the end."""
        return FEW_TRANSITIONS_MESSAGE.format(p=self.p, n=self.n, need=self.need,
                                              n_actions=self.n_actions,
                                              per_action=self.per_action, advice=advice)


#: Message of :class:`TooManyFeaturesError` (the advice as in :data:`FEW_TRANSITIONS_MESSAGE`).
TOO_LARGE_MESSAGE = ("The largest Q-function basis has {p} features ({n_actions} actions x "
                     "{per_action} state-mediator features): its LSTD system needs about "
                     "{need_gb:.1f} GB of memory and {avail_gb:.1f} GB is available. {advice}")


class TooManyFeaturesError(FewTransitionsError):
    """The LSTD system of the largest Q-function basis would not fit in memory.

    Raised before any model is fitted. The system matrix is dense, ``p x p`` with ``p``
    features, and is factorised once per cross-fitting fold: about ``2 p^2`` doubles at once.

    Attributes
    ----------
    need, avail : int
        Bytes the system needs and bytes available (:func:`equicare.utils.available_memory`);
        the other attributes as in :class:`FewTransitionsError`.
    """

    def __init__(self, *, p: int, n: int, need: int, avail: int, n_actions: int,
                 per_action: int, basis: str) -> None:
        self.avail = avail
        super().__init__(p=p, n=n, need=need, n_actions=n_actions, per_action=per_action,
                         basis=basis)
        bases = " or ".join(f"basis={b!r}" for b in coarser_bases(basis))
        self.args = (self.render("Use fewer actions (collapse them to an action set with "
                                 "equicare.causal.binarize_actions)"
                                 + (f" or a smaller basis ({bases})." if bases else ".")),)

    def render(self, advice: str) -> str:
        """The message with ``advice`` (what to change) at the end."""
        return TOO_LARGE_MESSAGE.format(p=self.p, n_actions=self.n_actions,
                                        per_action=self.per_action, need_gb=self.need / 2**30,
                                        avail_gb=self.avail / 2**30, advice=advice)


#: Bytes per feature squared of the LSTD system: the matrix and its factorisation's workspace.
LSTD_BYTES_PER_FEATURE2 = 16


def refuse_size(*, per_action: int, n_actions: int, n_train: int, basis: str) -> None:
    """Refuse too few training rows per LSTD feature or an LSTD system larger than memory.

    The largest LSTD design has ``n_actions * per_action + 1`` features; a fold needs
    :data:`MIN_ROWS_PER_FEATURE` rows per feature and the system ``16 p^2`` bytes.

    Raises
    ------
    FewTransitionsError
        Too few rows; :class:`TooManyFeaturesError` (a subclass) when the memory is short.
    """
    from equicare import utils

    p_max = n_actions * per_action + 1
    need = MIN_ROWS_PER_FEATURE * p_max
    if n_train < need:
        raise FewTransitionsError(p=p_max, n=n_train, need=need, n_actions=n_actions,
                                  per_action=per_action, basis=basis)
    avail = utils.available_memory()
    need_bytes = LSTD_BYTES_PER_FEATURE2 * p_max * p_max
    if avail is not None and need_bytes > avail:
        raise TooManyFeaturesError(p=p_max, n=n_train, need=need_bytes, avail=avail,
                                   n_actions=n_actions, per_action=per_action, basis=basis)


def draw_folds(rng: np.random.Generator, episode_index: NDArray[np.int64], n_folds: int,
               units: NDArray[np.int64] | None = None) -> tuple[int, NDArray[np.int64], int]:
    """An estimation's first draws: the seed of its random features, then its episode folds.

    Returns the seed, the fold of each transition and the number of folds. One function for
    :class:`_Run` and the size check made before the transitions are built
    (:meth:`DynamicMediation.check_transitions`), so that both see the same folds. ``units``
    (each episode's person as ``0 .. n_people - 1``, :func:`_episode_units`) deals people with
    all their episodes, so that no held-out row is predicted by nuisance models fitted on the
    same person's other stays; None deals episodes (the same draws as before members).
    """
    seed = int(rng.integers(2**31 - 1))
    n_episodes = int(episode_index.max()) + 1
    if units is None:
        k = min(n_folds, n_episodes)
        fold_of_ep = rng.permutation(n_episodes) % k
    else:
        n_units = int(units.max()) + 1
        k = min(n_folds, n_units)
        fold_of_ep = (rng.permutation(n_units) % k)[units]
    return seed, np.asarray(fold_of_ep[episode_index], dtype=np.int64), k


def train_rows(row_fold: NDArray[np.int64], k: int) -> int:
    """Transitions a fold trains on at the least: all (one fold), else all but the largest."""
    n = int(row_fold.size)
    return n if k == 1 else n - int(np.bincount(row_fold, minlength=k).max())


def per_action_width(p: int, enc: MediatorEncoder, mediator: NDArray[np.float64]) -> int:
    """Features per action of the widest Q-function design: ``max(p, dim h(phi, enc(m)))``.

    ``p`` is the state basis's width and ``mediator`` one mediator row, shape ``(1, m)``.
    """
    h = combine(np.zeros((1, p)), enc.encode(mediator), enc.discrete, enc.n_raw)
    return max(p, int(h.shape[1]))


def coarser_bases(kind: str) -> tuple[str, ...]:
    """Bases to suggest instead of ``kind`` (resolved): spline (fewer features), constant."""
    return tuple(b for b in ("spline", "constant") if b != kind and kind != "constant")

# effects = etas @ _CONTRAST (columns in EFFECT_KEYS order)
_CONTRAST = np.array([[1, 0, 0, 0, 1],
                      [-1, 1, 0, 0, 0],
                      [0, -1, 1, 0, 0],
                      [0, 0, -1, 1, 0],
                      [0, 0, 0, -1, -1]], dtype=np.float64)
_BASELINE_CONTRAST = np.array([[1, 0, 1], [0, 1, 1]], dtype=np.float64)   # de, me -> ide, ime, tot


def eta_range_note(eta: NDArray[np.float64], rewards: NDArray[np.float64],
                   name: str) -> str | None:
    """The note (:data:`ETA_RANGE_MESSAGE`) when an ``eta`` lies outside the rewards' range.

    The long-run average reward of any process is an average of ``r(S, A, M) = E[R | S, A,
    M]``, which lies within the range of the rewards; an estimate outside it (DM's ``G`` at
    +1.89 on a dosing panel whose rewards are all <= 0) is the LSTD system's instability, not
    a value. Values within ``1e-9`` of the range's width (rounding) pass.

    Parameters
    ----------
    eta : ndarray of shape (5,)
        The estimator's etas, in :data:`ETA_KEYS` order.
    rewards : ndarray of shape (n_steps,)
        The transitions' rewards.
    name : str
        The estimator (``dm``, ``mr``).

    Returns
    -------
    str or None
    """
    if rewards.size == 0:
        return None
    lo, hi = float(rewards.min()), float(rewards.max())
    tol = 1e-9 * max(hi - lo, abs(lo), abs(hi), 1e-300)
    bad = [j for j, v in enumerate(eta) if not lo - tol <= float(v) <= hi + tol]
    if not bad:
        return None
    uses = sorted({int(i) for j in bad for i in np.flatnonzero(_CONTRAST[j])})
    effects = [EFFECT_KEYS[i].upper() for i in uses]
    return ETA_RANGE_MESSAGE.format(
        where=", ".join(f"{name}'s eta of {ETA_KEYS[j]!r} ({float(eta[j]):.4g})" for j in bad)
        + (" lies" if len(bad) == 1 else " lie"),
        effects=", ".join(effects[:-1]) + " and " + effects[-1] if len(effects) > 1
        else effects[0],
        them="it" if len(bad) == 1 else "them")


def _model_to_dict(model: Any) -> Any:
    if model is None:
        return None
    cls = type(model)
    params = model.get_params(deep=False) if hasattr(model, "get_params") else {}
    return {"estimator": f"{cls.__module__}.{cls.__qualname__}",
            "params": {k: v for k, v in params.items()
                       if v is None or isinstance(v, bool | int | float | str)}}


def _model_from_dict(d: Any) -> Any:
    if d is None or not isinstance(d, dict):
        return d
    mod, _, name = d["estimator"].rpartition(".")
    return getattr(importlib.import_module(mod), name)(**d.get("params", {}))


#: An action logged in too few episodes for a mediation analysis (tests match it).
MSG_SMALL_ACTION_CELL = (
    "Action {action} (with --action, 1 is the action set, 0 the rest) is logged in 1 to "
    "{below} of the {n} episodes with a transition: every effect would rest on the outcomes of "
    "fewer than {min_cell} members who got it (a small cell), so none is estimated. Compare a "
    "broader action set (--action COMPONENT=LEVEL, or levels joined by |).")


def _check_action_cells(md: MediationData, min_cell: int) -> None:
    """Refuse a binary action logged in 1 to ``min_cell - 1`` episodes.

    Either arm: action 1 in few episodes (the treated are few), or action 0 in few (almost
    every member always treated). The effects contrast the two arms' outcomes, so each arm's
    members are a cell of every number published (:data:`MSG_SMALL_ACTION_CELL`). Multi-level
    actions are not checked: their effects average every action under the two policies.
    """
    if md.n_actions != 2:
        return
    n_ep = int(np.unique(md.episode_index).size)
    ep = np.unique(np.stack([md.actions, md.episode_index]), axis=1)[0]
    per_action = np.bincount(ep, minlength=2)
    small = np.flatnonzero((per_action > 0) & (per_action < min_cell))
    if small.size:
        raise DataValidationError(MSG_SMALL_ACTION_CELL.format(
            action=int(small[0]), below=min_cell - 1, n=n_ep, min_cell=min_cell))


#: A discrete mediator level logged in too few episodes (tests match it).
MSG_SMALL_MEDIATOR_CELL = (
    "Mediator level {level} (of {names}) is logged in 1 to {below} of the {n} episodes with a "
    "transition: the mediator effects would rest on the outcomes of fewer than {min_cell} "
    "members at that level (a small cell), so none is estimated. Pool the rare level with "
    "another (recode the mediator column) or choose another mediator.")


def _check_mediator_cells(md: MediationData, mediator_type: str, max_levels: int,
                          min_cell: int) -> None:
    """Refuse a discrete mediator with a level logged in 1 to ``min_cell - 1`` episodes.

    As :func:`_check_action_cells` for the action: the mediator effects (IME, DME) contrast
    the outcomes at the mediator's levels, so each level's members are a cell of them (the
    review's care panel with ``engaged`` = 1 for 7 of 589 members published every effect).
    A mediator is discrete as :class:`~equicare.causal._basis.MediatorEncoder` decides it
    (``"discrete"``, or ``"auto"`` with at most ``max_levels`` distinct rows); levels are its
    distinct rows (all mediator columns together).
    """
    m = np.asarray(md.mediators)
    if m.size == 0:
        return
    levels, code = np.unique(m, axis=0, return_inverse=True)
    if not (mediator_type == "discrete"
            or (mediator_type == "auto" and levels.shape[0] <= max_levels)):
        return
    ep = np.unique(np.stack([code.ravel(), md.episode_index]), axis=1)[0]
    per_level = np.bincount(ep, minlength=levels.shape[0])
    small = np.flatnonzero((per_level > 0) & (per_level < min_cell))
    if small.size:
        lv = levels[small[0]]
        level = ", ".join(f"{v:g}" for v in lv)
        names = ", ".join(md.mediator_names) or "the mediator"
        raise DataValidationError(MSG_SMALL_MEDIATOR_CELL.format(
            level=level if lv.size == 1 else f"({level})", names=names, below=min_cell - 1,
            n=int(np.unique(md.episode_index).size), min_cell=min_cell))


@dataclass(frozen=True, kw_only=True)
class DynamicMediation:
    """Settings of a dynamic mediation analysis; :meth:`estimate` runs it on data.

    Parameters
    ----------
    estimators : tuple of {"dm", "mis", "mr", "baseline"}
        Direct method, marginalised importance sampling, multiply robust, and the naive
        point-exposure baseline (ignores state shift; IDE and IME only).
    basis : {"auto", "onehot", "spline", "rff", "poly", "constant"}
        State basis of the default nuisance models (and of Q and ratios unless overridden).
    q_basis, ratio_basis : basis kind or "same"
        State basis of the Q-functions (LSTD) and of the density ratios.
    ratio_method : {"linear", "kernel"}
        Test functions of the min-max ratio estimator: the ratio basis (linear sieve) or random
        Fourier features of a Gaussian kernel.
    n_knots : int
        Knots per continuous column of spline bases.
    n_features : int
        Random Fourier features (``rff`` basis and kernel test functions).
    ridge : float
        Relative ridge of the default regression models, and relative penalty of the LSTD
        systems, which are solved regularised on their equations
        (:func:`~equicare.causal._lstd.tikhonov_solve`).
    ratio_ridge : float
        Relative ridge of the ratio estimator.
    ratio_clip : float
        State density ratios are clipped to ``[0, ratio_clip]`` and normalised to mean 1.
    n_folds : int
        Cross-fitting folds (by episode, or by person with all their episodes when the data
        name members); 1 fits and evaluates on all data.
    mediator_type : {"auto", "discrete", "continuous"}
        ``auto``: discrete when the mediator rows take at most ``max_mediator_levels`` values.
    max_mediator_levels : int
    n_mediator_nodes : int
        Gauss-Hermite nodes integrating a continuous (Gaussian) mediator.
    prob_floor : float
        Floor of ``pi_b(A|S)`` in the action ratios and, for a discrete mediator, of
        ``p_m(M|S,A)`` in the mediator ratios (so they stay below ``1/prob_floor``); continuous
        mediator density ratios are capped at ``1/prob_floor``. The default discrete mediator
        model adds Jeffreys' Dirichlet(1/2) pseudo-counts (:class:`~equicare.causal._nuisance.
        BlockNewtonLogit`), so a level never seen in a (state, action) cell of a training fold
        gets ``1 / (2 n_{s,a} + K)``, not a near-zero probability.
    reward_model : scikit-learn regressor or None
        ``E[R | S, A, M]`` on ``[states, one-hot action, mediators]``.
    mediator_model : scikit-learn classifier (discrete M) / regressor (continuous M) or None
        On ``[states, one-hot action]``.
    behavior_model : scikit-learn classifier or None
        ``pi_b(A | S)`` on states; ignored when the data carry ``behavior_prob`` and it is None.
    min_cell : int
        Fewest episodes each action of a binary action must be logged in (when logged at all):
        every effect contrasts the outcomes of the members who got it with the others', so with
        fewer :meth:`estimate` refuses (:data:`MSG_SMALL_ACTION_CELL`); likewise each level of
        a discrete mediator (:data:`MSG_SMALL_MEDIATOR_CELL`). Below 11 a
        :class:`~equicare.exceptions.SmallCellWarning` says the output is not privacy-safe.
    n_bootstrap : int
        Cluster-bootstrap replicates (episodes resampled). MR's resample its influence values
        (0: normal intervals from its standard errors). DM's, MIS's and the baseline's refit
        every nuisance model, Q-function and ratio per replicate, all replicates at once
        (:mod:`equicare.causal._refit`): standard error = the replicates' SD, percentile CI.
        With 0 replicates, or a configuration the refit does not batch (a scikit-learn
        nuisance model, a continuous mediator, a policy that leaves states to practice valued
        as deployed) or above its work budget (:data:`equicare.causal._refit.MAX_REFIT_WORK`),
        they give point estimates with a ``note`` (:data:`NO_INTERVAL_NOTE`).
    ci_level : float
    usual_care : {"deployed", "stored"}
        States a policy leaves to current practice (exception rules' "otherwise, as current
        practice", ``policy.deferred_rows``; :attr:`PolicyProbs.deferred`). ``"deployed"`` (the
        default, as ``evaluate`` and ``audit``): the policy acts as practice does there, its
        action distribution is the behaviour policy's. Its action ratio is exactly 1, its
        expectation at a next state is the logged next action (a draw from practice), and where
        a formula needs practice's whole distribution at a state (the mediator law
        ``p_e(M|S) = sum_a pi_b(a|S) p_m(M|S,a)`` and the control's expectations, which the
        logged action's weight would bias) it is the fitted behaviour model's (fitted even when
        the data carry ``behavior_prob``). ``"stored"``: the estimate of practice saved with
        the policy (what ``action_probs`` and ``predict`` give).

    Examples
    --------
    >>> from equicare.causal import DynamicMediation
    >>> from equicare.sim.mediation import toy1, toy_target
    >>> mdp = toy1()
    >>> data = mdp.sample(200, 50, random_state=0)
    >>> res = DynamicMediation(n_bootstrap=0).estimate(data, mdp.policy_fn(toy_target()), 0,
    ...                                                random_state=0)
    >>> sorted(res.estimators)
    ['baseline', 'dm', 'mis', 'mr']
    """

    estimators: tuple[str, ...] = ESTIMATORS
    basis: str = "auto"
    q_basis: str = "same"
    ratio_basis: str = "same"
    ratio_method: Literal["linear", "kernel"] = "linear"
    n_knots: int = 5
    n_features: int = 64
    ridge: float = 1e-6
    ratio_ridge: float = 1e-8
    ratio_clip: float = 50.0
    n_folds: int = 2
    mediator_type: Literal["auto", "discrete", "continuous"] = "auto"
    max_mediator_levels: int = 10
    n_mediator_nodes: int = 9
    prob_floor: float = 1e-3
    reward_model: Any = None
    mediator_model: Any = None
    behavior_model: Any = None
    min_cell: int = MIN_CELL
    n_bootstrap: int = 200
    ci_level: float = 0.95
    usual_care: UsualCare = "deployed"

    def __post_init__(self) -> None:
        o = type(self).__name__
        ests = tuple(self.estimators) if not isinstance(self.estimators, str) else (
            tuple(e.strip() for e in self.estimators.split(",") if e.strip()))
        if not ests or any(e not in ESTIMATORS for e in ests) or len(set(ests)) != len(ests):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="estimators", owner=o, expected="distinct names among "
                + ", ".join(repr(e) for e in ESTIMATORS), got=self.estimators))
        object.__setattr__(self, "estimators", ests)
        check_param(self.basis, "basis", o, choices=_BASES)
        check_param(self.q_basis, "q_basis", o, choices=(*_BASES, "same"))
        check_param(self.ratio_basis, "ratio_basis", o, choices=(*_BASES, "same"))
        check_param(self.ratio_method, "ratio_method", o, choices=("linear", "kernel"))
        check_param(self.mediator_type, "mediator_type", o,
                    choices=("auto", "discrete", "continuous"))
        for name, low in (("n_knots", 2), ("n_features", 1), ("n_folds", 1),
                          ("max_mediator_levels", 2), ("n_mediator_nodes", 1),
                          ("n_bootstrap", 0), ("min_cell", 1)):
            check_param(getattr(self, name), name, o, kind=int, low=low)
        warn_low_min_cell(self.min_cell, o, stacklevel=4)
        check_param(self.ridge, "ridge", o, kind=(int, float), low=0)
        check_param(self.ratio_ridge, "ratio_ridge", o, kind=(int, float), low=0)
        check_param(self.ratio_clip, "ratio_clip", o, kind=(int, float), low=1)
        check_param(self.prob_floor, "prob_floor", o, kind=(int, float), low=0, high=0.5,
                    low_inclusive=False)
        check_param(self.ci_level, "ci_level", o, kind=float, low=0, high=1,
                    low_inclusive=False, high_inclusive=False)
        check_usual_care(self.usual_care, o)

    # ------------------------------------------------------------------ config round trip
    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (scikit-learn models as class path plus simple parameters)."""
        d = asdict(self)
        d["estimators"] = list(self.estimators)
        for k in ("reward_model", "mediator_model", "behavior_model"):
            d[k] = _model_to_dict(getattr(self, k))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DynamicMediation:
        """Inverse of :meth:`to_dict`."""
        kw = dict(d)
        kw["estimators"] = tuple(kw.get("estimators", ESTIMATORS))
        for k in ("reward_model", "mediator_model", "behavior_model"):
            kw[k] = _model_from_dict(kw.get(k))
        return cls(**kw)

    # ------------------------------------------------------------------ estimation
    def estimate(self, data: Any, target: Any, control: Any = 0, *,
                 random_state: RandomState = None, progress: bool = False) -> MediationResult:
        """Estimate IDE, IME, DDE, DME and the total effect of ``target`` versus ``control``.

        Parameters
        ----------
        data : MediationData, TrajectoryDataset, simulator sample or mapping of arrays
            Transitions: ``states (n, d)``, ``actions (n,)``, ``mediators (n,)`` or ``(n, m)``,
            ``rewards (n,)``, ``next_states (n, d)``, ``episode_index (n,)``.
        target : callable, PolicyProbs, equicare Policy or int
            Target policy ``pi_e``: ``f(states (n, d)) -> probabilities (n, n_actions)``.
        control : int or policy
            Control: a fixed action ``a0`` (default 0; needs a binary action) or a policy.
        random_state : int, Generator or None
            Folds, random features and bootstrap.
        progress : bool, default=False
            One ``[mediate] ...`` line per stage on stderr (each cross-fitting fold, the
            bootstrap; :class:`equicare._progress.Stages`); never changes a number.

        Returns
        -------
        MediationResult

        Raises
        ------
        DataValidationError
            Non-binary action with a fixed control, too few transitions for the basis
            (:class:`FewTransitionsError`, raised before any model is fitted), or invalid data.
        """
        rng = check_random_state(random_state)

        def check(ds: Any, rows: NDArray[np.int64], next_rows: NDArray[np.int64]) -> None:
            _check_fixed_control(control, int(ds.n_actions))  # first, as on built transitions
            self.check_transitions(ds, rows, next_rows, rng)

        md = as_mediation_data(data, check=check)
        _check_fixed_control(control, md.n_actions)
        _check_action_cells(md, self.min_cell)
        _check_mediator_cells(md, self.mediator_type, self.max_mediator_levels, self.min_cell)
        tp = resolve_policy(target, md, "target")
        cp = resolve_policy(control, md, "control")
        share = {what: float(p.deferred.mean()) if p.deferred.size else 0.0
                 for what, p in (("target", tp), ("control", cp)) if p.deferred is not None}
        if self.usual_care == "deployed":
            tp, cp = as_deployed_probs(tp, md, "target"), as_deployed_probs(cp, md, "control")
        run = _Run(self, md, tp, cp, rng, Stages("mediate", progress))
        res = run.execute(_name(target, "target"), _control_name(control))
        return dataclasses.replace(res, usual_care=self.usual_care if share else None,
                                   deferred_share=share or None)


    def check_transitions(self, ds: Any, rows: NDArray[np.int64], next_rows: NDArray[np.int64],
                          random_state: RandomState) -> None:
        """Refuse a Q-function basis too wide for the data before the transitions are built.

        The check :meth:`estimate` makes before any model is fitted (too few rows per feature
        in a fold, or an LSTD system larger than memory), made from the dataset's level codes
        and the folds that ``estimate(..., random_state=random_state)`` draws, before the dense
        states of the transitions exist: a 5,000-level state held 4.4 GB of them for 21 s
        before it was refused. Nothing is checked when the folds cannot be known in advance
        (``random_state=None``) or a mediator column is constant or not finite (building the
        transitions says so); ``estimate`` checks again in every case.

        Parameters
        ----------
        ds : TrajectoryDataset
        rows, next_rows : ndarray of shape (n,)
            Rows of the transitions' states and next states in ``ds``.
        random_state : int, Generator or None
            As given to :meth:`estimate` (a Generator is copied, not advanced).

        Raises
        ------
        FewTransitionsError
            Too few rows; :class:`TooManyFeaturesError` (a subclass) when the memory is short.
        """
        if not set(self.estimators) & {"dm", "mr"} or random_state is None:
            return
        rng = check_random_state(copy.deepcopy(random_state))
        m = np.asarray(ds.mediators, dtype=np.float64)[rows]
        m = m[:, None] if m.ndim == 1 else m
        if m.shape[0] == 0 or not np.isfinite(m).all() or (m == m[0]).all(axis=0).any():
            return
        kept, ep = np.unique(np.asarray(ds.episode_index)[rows], return_inverse=True)
        from equicare.ope._bootstrap import cluster_codes

        members = getattr(ds, "members", None)
        units = None if members is None else cluster_codes(np.asarray(members)[kept])
        _, row_fold, k = draw_folds(rng, ep.astype(np.int64).reshape(-1), self.n_folds, units)
        cat = getattr(ds, "categorical", None)
        levels = tuple(len(lv) for lv in (getattr(ds, "categorical_levels", None) or ()))
        if hasattr(ds, "features") and cat is not None and levels and cat.shape[1]:
            num, codes = np.asarray(ds.states, dtype=np.float64), np.asarray(cat)
        else:  # as feature_rows: the dense features are the states
            num = np.asarray(ds.features() if hasattr(ds, "features") else ds.states,
                             dtype=np.float64)
            codes, levels = np.zeros((num.shape[0], 0), dtype=np.int64), ()
        num = num[:, None] if num.ndim == 1 else num
        kind = self.basis if self.q_basis == "same" else self.q_basis
        width, used = basis_width(num[rows], num[next_rows], codes[rows], codes[next_rows],
                                  levels, kind, n_knots=self.n_knots,  # type: ignore[arg-type]
                                  n_features=self.n_features)
        enc = MediatorEncoder.fit(m, self.mediator_type, self.max_mediator_levels, self.n_knots)
        refuse_size(per_action=per_action_width(width, enc, m[:1]), n_actions=int(ds.n_actions),
                    n_train=train_rows(row_fold, k), basis=used)


#: A policy valued as deployed on plain arrays (tests match it).
DEPLOYED_NEEDS_DATASET = (
    "{what}: the policy leaves {k} next states to current practice; valued as deployed "
    "(usual_care='deployed') the logged action at each of them stands for practice's, which "
    "needs transitions built from a TrajectoryDataset (from_dataset). Pass the dataset, or "
    "usual_care='stored' to value the stored estimate of practice.")


def as_deployed_probs(pp: PolicyProbs, md: MediationData, what: str) -> PolicyProbs:
    """``pp`` valued as deployed: at a next state it leaves to practice, the logged next action.

    The Bellman targets of the Q-functions and the multiply robust TD errors average the
    policy over the next state's actions; where practice decides, the action logged there is a
    draw from it given the state (:func:`equicare.policy.deferred_target`, as FQE's target in
    ``evaluate``), so no estimate of practice enters them. ``deferred`` (the transition's own
    state) is kept for :class:`_Run`, which puts practice's distribution there.

    Raises
    ------
    PolicyError
        Next states left to practice on transitions without a source dataset.
    """
    nd = pp.next_deferred
    if nd is None or not nd.any():
        return dataclasses.replace(pp, next_deferred=None)
    if md.source is None or md.next_rows is None:
        raise PolicyError(DEPLOYED_NEEDS_DATASET.format(what=what, k=int(nd.sum())))
    next_actions = np.asarray(md.source.actions, dtype=np.int64)[md.next_rows]
    nxt, _ = deferred_target(pp.next_probs, np.ones(md.n_steps), next_actions, nd)
    return dataclasses.replace(pp, next_probs=nxt)


def _check_fixed_control(control: Any, n_actions: int) -> None:
    """A fixed control action needs a binary action."""
    if isinstance(control, int | np.integer) and not isinstance(control, bool):
        if n_actions != 2:
            raise DataValidationError(BINARY_ACTION_MESSAGE.format(n_actions=n_actions))


#: An estimated end rate outside (0, 1]: no per-stay value rests on it (tests match it).
END_RATE_MESSAGE = (
    "{name}'s end rate of the {chains} chain ({values}) is outside (0, 1], where a share of "
    "steps that end a stay must be: its fit failed (weights or Q-functions resting on too few "
    "rows), so the per-stay values and effects resting on it are not estimated")
#: A per-stay value outside the observed stays' outcomes (tests match it; the range's ends are
#: not printed: they are single stays' outcomes, and notes are published).
STAY_RANGE_MESSAGE = (
    "{name}'s outcome per stay of {where} outside the range of the outcomes on the stays' "
    "terminal rows (every reward is on one), where no expected outcome per stay can be: the "
    "per-stay effects resting on {them} are estimation error, not effects")


def per_stay_note(rates: NDArray[np.float64], values: NDArray[np.float64],
                  stay_range: tuple[float, float] | None, name: str) -> str | None:
    """Why per-stay values of an estimator are not estimated or not to be trusted, or None.

    The end rate of a chain is the share of its steps that end a stay: an estimate outside
    ``(0, 1]`` (MR's end rate of ``pi_e`` 5.8, of ``G`` -8.4 on an ICU panel whose MR etas
    also left the rewards' range) is a failed fit, not a rate (:data:`END_RATE_MESSAGE`; its
    per-stay values are NaN). An expected outcome per stay outside the range of the ended
    stays' outcomes (MR's survival per stay 1.06 under the target on the same panel with a
    random-feature basis) cannot be one (:data:`STAY_RANGE_MESSAGE`; values kept, as
    :func:`eta_range_note` keeps the etas).

    Parameters
    ----------
    rates : ndarray of shape (3,)
        End rates of the chains :data:`~equicare.causal._result.CHAIN_KEYS`.
    values : ndarray of shape (5,)
        Per-stay values (:data:`ETA_KEYS`), NaN where the rate is not usable.
    stay_range : (float, float) or None
        Smallest and largest outcome a stay can have (the rewards of terminal rows, when every
        non-zero reward is on one); None: not checked.
    name : str
        The estimator.
    """
    notes = []
    bad = [j for j, v in enumerate(rates) if not 0 < float(v) <= 1 + 1e-9]
    if bad:
        notes.append(END_RATE_MESSAGE.format(
            name=name, chains=", ".join(CHAIN_KEYS[j] for j in bad),
            values=", ".join(f"{float(rates[j]):.3g}" for j in bad)))
    lo, hi = stay_range if stay_range is not None else (-np.inf, np.inf)
    tol = 1e-9 * max(hi - lo, abs(lo), abs(hi), 1e-300) if stay_range is not None else 0.0
    out = [j for j, v in enumerate(values) if np.isfinite(v) and not lo - tol <= v <= hi + tol]
    if out:
        where = ", ".join(f"{ETA_KEYS[j]!r} ({float(values[j]):.4g})" for j in out)
        notes.append(STAY_RANGE_MESSAGE.format(
            name=name, where=where + (" lies" if len(out) == 1 else " lie"),
            them="it" if len(out) == 1 else "them"))
    return "; ".join(notes) or None


def _effects(keys: tuple[str, ...], values: NDArray[np.float64],
             inference: ClusterInference | None) -> dict[str, EffectEstimate]:
    """Effects ``keys`` (the others None): with standard errors and CIs from ``inference``."""
    effects = {k: EffectEstimate(None) for k in EFFECT_KEYS}
    if inference is None:
        effects.update({k: EffectEstimate(_num(v)) for k, v in zip(keys, values, strict=True)})
        return effects
    for j, k in enumerate(keys):
        effects[k] = EffectEstimate(float(inference.value[j]), float(inference.se[j]),
                                    (float(inference.ci_low[j]), float(inference.ci_high[j])))
    return effects


def _num(x: Any) -> float | None:
    """``float(x)``, or None for NaN (a per-stay value whose end rate is not positive)."""
    v = float(x)
    return None if np.isnan(v) else v


def _name(spec: Any, default: str) -> str:
    return str(getattr(spec, "name", None) or default)


def _control_name(control: Any) -> str:
    if isinstance(control, int | np.integer) and not isinstance(control, bool):
        return f"a0={int(control)}"
    return _name(control, "control policy")


@dataclass(frozen=True, kw_only=True)
class PointExposureMediation(DynamicMediation):
    r"""Naive point-exposure (single-step) mediation: each step treated as an independent study.

    Natural direct and indirect effects of one step, averaged over the observed states:

    .. math::

        \mathrm{DE} = \frac1n\sum_i \sum_a \pi_e(a|S_i) \sum_m p_m(m|S_i, a)
        \{r(S_i, a, m) - r(S_i, a_0, m)\},\quad
        \mathrm{ME} = \frac1n\sum_i \sum_a \pi_e(a|S_i) \sum_m
        \{p_m(m|S_i, a) - p_m(m|S_i, a_0)\} r(S_i, a_0, m).

    It ignores that the target policy changes which states are visited (no DDE / DME), so it
    is right only when states do not depend on past actions (Ge et al. 2023, toy example II).
    The result has the ``"baseline"`` estimator only.
    """

    estimators: tuple[str, ...] = ("baseline",)


class _Run:
    """One estimation: bases, folds, nuisance fits, estimators and inference."""

    def __init__(self, cfg: DynamicMediation, md: MediationData, target: PolicyProbs,
                 control: PolicyProbs, rng: np.random.Generator, say: Stages | None = None
                 ) -> None:
        self.cfg, self.md, self.rng = cfg, md, rng
        self.say = Stages("mediate", False) if say is None else say
        self.pe, self.pe_n = target.probs, target.next_probs
        self.p0, self.p0_n = control.probs, control.next_probs
        # states left to practice, valued as deployed (as_deployed_probs): practice's
        # distribution there, from the fold's behaviour model (rows)
        deployed = cfg.usual_care == "deployed"
        self.defer_e, self.defer_0 = ((p.deferred if deployed and p.deferred is not None
                                       and p.deferred.any() else None)
                                      for p in (target, control))
        self.defers = self.defer_e is not None or self.defer_0 is not None
        ests = set(cfg.estimators)
        self.need_q = bool(ests & {"dm", "mr"})
        self.need_w = bool(ests & {"mis", "mr"})
        # terminal rows renew the process: the chains' end rates give values per stay
        ends = md.stay_ends
        self.ends = ends if ends is not None and ends.any() and ests - {"baseline"} else None
        #: weight of each row's next-state terms: 0 on a censored last row (no next state),
        #: the inverse probability of not being censored on the others that go on
        #: (:func:`~equicare.causal._data.next_state_weights`); None: all 1
        self.next_w = md.next_weight
        #: etas per estimator: the five processes', then the three chains' end rates
        self.n_eta = 5 + 3 * int(self.ends is not None)
        self.enc = MediatorEncoder.fit(md.mediators, cfg.mediator_type, cfg.max_mediator_levels,
                                       cfg.n_knots)
        self.seed, self.row_fold, self.n_folds = draw_folds(rng, md.episode_index, cfg.n_folds,
                                                            _episode_units(md)[0])
        self._bases: dict[str, tuple[Any, Any]] = {}
        self._kinds: dict[str, str] = {}
        self._bar = ProgressTask(None, None)  # the running fold's bar (silent outside one)

    def done(self, what: str) -> None:
        """One piece of the running fold's work is done: its bar advances, naming it."""
        self._bar.update(advance=1, info=what)

    def stay_range(self) -> tuple[float, float] | None:
        """Range of a stay's outcome when every non-zero reward is on a stay's last row.

        Then a stay's outcome is the reward of its terminal row (survival at discharge), so an
        expected outcome per stay lies between the smallest and the largest of them. None
        otherwise (rewards on other rows add up over a stay, and the stays that ended in a
        censored panel are its short ones: their outcomes bound nothing), or without ends.
        """
        md, ends = self.md, self.ends
        if ends is None or np.any((md.rewards != 0) & (ends == 0)):
            return None
        at_end = md.rewards[ends == 1]
        return float(at_end.min()), float(at_end.max())

    def next_weight(self, idx: NDArray[np.int64]) -> NDArray[np.float64]:
        """Weights of the next-state terms at rows ``idx``, shape ``(n,)`` (1 without censoring).

        Every next-state term (the Q-functions' expected next designs, the TD errors of MR, the
        ratios' next-state test functions) is multiplied by it: a censored last row adds its
        step's present terms only, and the uncensored rows stand for its next state.
        """
        return np.ones(idx.size) if self.next_w is None else self.next_w[idx]

    def fold_pieces(self) -> int:
        """The pieces of a fold's work that :meth:`done` counts (the fold's bar's total)."""
        fits_behavior = (self.md.behavior_prob is None or self.cfg.behavior_model is not None
                         or self.defers)
        models = 2 + int((self.need_w or self.need_q or self.defers) and fits_behavior)
        later = self.need_q or self.need_w
        return (models + 1 + int(later and self.n_folds > 1) + 3 * int(self.need_q)
                + 3 * int(self.need_w) + int(self.need_q and self.need_w))

    def basis(self, kind: str) -> tuple[Any, Any]:
        """State basis at states and next states for ``kind`` (cached)."""
        kind = self.cfg.basis if kind == "same" else kind
        if kind not in self._bases:
            phi, phin, used = state_features(self.md.states, self.md.next_states, kind,  # type: ignore[arg-type]
                                             n_knots=self.cfg.n_knots,
                                             n_features=self.cfg.n_features,
                                             random_state=self.seed)
            self._bases[kind], self._kinds[kind] = (phi, phin), used
        return self._bases[kind]

    def check_size(self, n_train: int) -> None:
        """Refuse, before any fitting, too few rows per LSTD feature or too little memory.

        A fold needs 2 rows per feature, and the largest LSTD system must fit in the memory
        available.

        The largest LSTD design is ``e_a (x) h(phi, enc(m))`` (the G process), with
        ``n_actions * dim(h)`` features; the Q-functions of the other processes use
        ``n_actions * dim(phi)``.

        Raises
        ------
        FewTransitionsError
            Too few rows; :class:`TooManyFeaturesError` (a subclass) when the memory is short.
        """
        if not self.need_q:
            return
        phi, _ = self.basis(self.cfg.q_basis)
        md = self.md
        kind = self.cfg.basis if self.cfg.q_basis == "same" else self.cfg.q_basis
        refuse_size(per_action=per_action_width(phi.shape[1], self.enc, md.mediators[:1]),
                    n_actions=md.n_actions, n_train=n_train, basis=self._kinds[kind])

    # -------------------------------------------------------------- nuisance models and rows
    def raw_states(self, states: NDArray[np.float64], idx: NDArray[np.int64]
                   ) -> NDArray[np.float64]:
        """States at rows ``idx`` for scikit-learn nuisance models, else no columns.

        Without a scikit-learn model the array has shape ``(n, 0)``: the default models
        use the basis only, and a copy of wide one-hot states per fold would be the largest
        array of the analysis.
        """
        cfg = self.cfg
        if any(m is not None for m in (cfg.reward_model, cfg.mediator_model,
                                       cfg.behavior_model)):
            return states[idx]
        return np.empty((idx.size, 0))

    def fit_models(self, idx: NDArray[np.int64]) -> dict[str, Any]:
        md, cfg = self.md, self.cfg
        phi, _ = self.basis(cfg.basis)
        S, A, M = self.raw_states(md.states, idx), md.actions[idx], md.mediators[idx]
        out: dict[str, Any] = {"reward": RewardModel(self.enc, cfg.reward_model, md.n_actions,
                                                     cfg.ridge).fit(S, phi[idx], A, M,
                                                                    md.rewards[idx])}
        self.done("reward model")
        out["mediator"] = MediatorModel(self.enc, cfg.mediator_model, md.n_actions,
                                        cfg.n_mediator_nodes, cfg.ridge).fit(S, phi[idx], A, M)
        _warn_unconverged(out["mediator"].model_,
                          MEDIATOR_NOT_CONVERGED.format(n_levels=self.enc.n_levels))
        self.done("mediator model")
        if self.need_w or self.need_q or self.defers:
            if md.behavior_prob is None or cfg.behavior_model is not None or self.defers:
                out["behavior"] = BehaviorModel(cfg.behavior_model, md.n_actions).fit(
                    S, phi[idx], A)
                _warn_unconverged(out["behavior"].model_,
                                  BEHAVIOR_NOT_CONVERGED.format(n_actions=md.n_actions))
                self.done("behaviour model")
        return out

    def policies_at(self, models: dict[str, Any], S: NDArray[np.float64],
                    ph: NDArray[np.float64], idx: NDArray[np.int64]
                    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_],
                               NDArray[np.bool_]]:
        """Target and control probabilities at the states of rows ``idx``, as deployed.

        At a state a policy leaves to practice (valued as deployed) its distribution is
        practice's, the fold's behaviour model ``pi_b(.|S)``: the formulas weigh it against
        the logged action's ratios (the mediator law ``sum_a pi(a|S) p_m(M|S,a)`` under the
        control's weight, the control's rewards in the Q-functions' targets), where the logged
        action itself would be a biased stand-in. Returns ``pe, p0`` of shape
        ``(n, n_actions)`` and the rows each leaves to practice, shape ``(n,)``.
        """
        pe, p0 = self.pe[idx], self.p0[idx]
        d_e, d_0 = (np.zeros(idx.size, dtype=bool) if d is None else d[idx]
                    for d in (self.defer_e, self.defer_0))
        if d_e.any() or d_0.any():
            pb = models["behavior"].probs(S, ph)
            pe = np.where(d_e[:, None], pb, pe)
            p0 = np.where(d_0[:, None], pb, p0)
        return pe, p0, d_e, d_0

    def rows(self, models: dict[str, Any], idx: NDArray[np.int64]) -> dict[str, Any]:
        """Per-row plug-in quantities at rows ``idx``."""
        md, cfg = self.md, self.cfg
        phi, phin = self.basis(cfg.basis)
        S, Sn = self.raw_states(md.states, idx), self.raw_states(md.next_states, idx)
        A, M = md.actions[idx], md.mediators[idx]
        ph, phn = phi[idx], phin[idx]
        n = idx.size
        ar = np.arange(n)
        pe, p0, d_e, d_0 = self.policies_at(models, S, ph, idx)
        med: MediatorModel = models["mediator"]
        rew: RewardModel = models["reward"]
        nodes, wts = med.nodes(S, ph)                                  # (n,A,K,m), (n,A,K)
        shared = self.enc.discrete                                     # levels: same for all a
        r_own, r0_nodes = rew.node_terms(S, ph, nodes[:, 0] if shared else nodes, p0, shared)
        r_a = np.einsum("nak,nak->na", wts, r_own)                     # r(S,a) = E_m r(S,a,m)
        r00 = (p0 * r_a).sum(1)
        q: dict[str, Any] = {"R": md.rewards[idx], "A": A, "r_a": r_a, "r00": r00,
                             "r_A": r_a[ar, A], "p0": p0}
        if self.ends is not None:
            q["D"] = self.ends[idx]
        inner = (wts * r0_nodes).sum(2)                                # (n, A)
        q["de"] = (pe * (r_a - inner)).sum(1)
        q["me"] = (pe * inner).sum(1) - r00
        if not (self.need_q or self.need_w):
            return q
        rM = rew.predict(S, ph, M)                                      # (n, A)
        q["rM_A"] = rM[ar, A]
        q["r0M"] = (p0 * rM).sum(1)
        dens = med.density(S, ph, M)                                    # (n, A)
        pA_M = dens[ar, A]
        pe_M = (pe * dens).sum(1)
        if self.enc.discrete:        # p_m is a probability: floored like pi_b
            q["ratio_m"] = pe_M / np.maximum(pA_M, cfg.prob_floor)
        else:                        # a density has a scale: cap the ratio instead
            q["ratio_m"] = np.minimum(pe_M / np.maximum(pA_M, 1e-300), 1.0 / cfg.prob_floor)
        if md.behavior_prob is not None and cfg.behavior_model is None:  # logged
            pb_A = md.behavior_prob[idx]
        else:
            pb_A = models["behavior"].probs(S, ph)[ar, A]
        pb_A = np.maximum(pb_A, cfg.prob_floor)
        # where a policy acts as practice does, its action ratio is exactly 1
        q["rho_e"] = np.where(d_e, 1.0, pe[ar, A] / pb_A)
        q["rho_0"] = np.where(d_0, 1.0, p0[ar, A] / pb_A)
        if self.need_q:
            q["Eenc_S"] = med.expected_encoding(S, ph)                  # (n, A, q)
            q["Eenc_Sn"] = med.expected_encoding(Sn, phn)
            q["enc_M"] = self.enc.encode(M)
        return q

    # -------------------------------------------------------------- Q-function features
    def next_mediator_encoding(self, idx: NDArray[np.int64], q: dict[str, Any]
                               ) -> NDArray[np.float64]:
        """``E_{p_e(.|S')} enc(M)`` at rows ``idx``: the mediator law of the G process at S'."""
        return np.asarray(np.einsum("na,naq->nq", self.pe_n[idx], q["Eenc_Sn"]),
                          dtype=np.float64)

    def q_features(self, idx: NDArray[np.int64], q: dict[str, Any]) -> dict[str, Any]:
        """LSTD designs of the five processes at the training rows ``idx``.

        ``e_A (x) phi`` and ``e_A (x) h(phi, enc(M))`` are sparse (:func:`action_design`), the
        expected next designs :class:`MixedDesign`: never ``n x A q``. The joint features
        ``h`` are not kept beside the design that holds them.
        """
        phi, phin = self.basis(self.cfg.q_basis)
        ph, phn = phi[idx], phin[idx]
        nA, A = self.md.n_actions, q["A"]
        c = self.next_weight(idx)[:, None]          # censored rows: no next-state design
        pe_n, p0_n = self.pe_n[idx] * c, self.p0_n[idx] * c
        disc, nraw = self.enc.discrete, self.enc.n_raw
        h_next = combine(phn, self.next_mediator_encoding(idx, q), disc, nraw)
        enc_M = q["enc_M"]
        if disc and not sp.issparse(ph) and np.all(enc_M.sum(axis=1) == 1):
            # h(S, M) = phi (x) onehot(M): store phi's entries only, not the K-fold zeros
            x4 = level_action_design(A, ph, enc_M.argmax(axis=1), enc_M.shape[1], nA)
        else:
            x4 = action_design(A, combine(ph, enc_M, disc, nraw), nA)
        return {"x": action_design(A, ph, nA), "xi_e": MixedDesign(pe_n, phn),
                "xi_0": MixedDesign(p0_n, phn), "x4": x4, "xi4": MixedDesign(p0_n, h_next)}

    # -------------------------------------------------------------- main loop
    def execute(self, target_name: str, control_name: str) -> MediationResult:
        md = self.md
        n = md.n_steps
        K, row_fold = self.n_folds, self.row_fold
        self.check_size(train_rows(row_fold, K))
        eta_dm_folds = []
        mr_vals = np.zeros((n, self.n_eta))
        mis_num = np.zeros((n, self.n_eta))
        mis_w = np.zeros((n, self.n_eta))
        base = np.zeros((n, 2))
        w_all = np.zeros((n, 3))
        w_med = np.zeros((n, 2))                     # rho_0 and the mediator ratio
        parts = ", ".join(["reward and mediator models", *(["LSTD Q-functions"] if self.need_q
                                                             else []),
                           *(["density ratios"] if self.need_w else [])])
        self.say(f"{n} transitions, {md.n_episodes} episodes: {K} cross-fitting fold"
                 f"{'s' if K > 1 else ''}")
        for k in range(K):
            self.say(f"fold {k + 1}/{K}: {parts}")
            with self.say.bar(f"fold {k + 1}/{K}", self.fold_pieces()) as self._bar:
                te = np.flatnonzero(row_fold == k)
                tr = te if K == 1 else np.flatnonzero(row_fold != k)
                models = self.fit_models(tr)
                q_te = self.rows(models, te)
                self.done("evaluation rows")
                base[te] = np.column_stack([q_te["de"], q_te["me"]])
                if not (self.need_q or self.need_w):
                    continue
                q_tr = q_te if K == 1 else self.rows(models, tr)
                if K > 1:
                    self.done("training rows")
                fits = None
                if self.need_q:
                    fits = self.fit_q(tr, q_tr)
                    eta_dm_folds.append([ft.eta for ft in fits])
                if self.need_w:
                    w_te = self.fit_ratios(tr, te, q_tr)
                    w_all[te] = w_te
                    w_med[te] = np.column_stack([q_te["rho_0"], q_te["ratio_m"]])
                    W = np.column_stack([
                        w_te[:, 0] * q_te["rho_e"],
                        w_te[:, 0] * q_te["rho_0"] * q_te["ratio_m"],
                        w_te[:, 0] * q_te["rho_0"],
                        w_te[:, 2] * q_te["rho_0"],
                        w_te[:, 1] * q_te["rho_0"]])
                    mis_w[te, :5] = W
                    mis_num[te, :5] = W * q_te["R"][:, None]
                    if self.ends is not None:
                        # stays end by the transition: G's under a0 with p_e's mediator
                        W = np.column_stack([
                            w_te[:, 0] * q_te["rho_e"],
                            w_te[:, 2] * q_te["rho_0"] * q_te["ratio_m"],
                            w_te[:, 1] * q_te["rho_0"]])
                        mis_w[te, 5:] = W
                        mis_num[te, 5:] = W * q_te["D"][:, None]
                    if fits is not None:
                        mr_vals[te] = self.mr_rows(fits, te, q_te, w_te)
                        self.done("multiply robust rows")
                del models, q_te, q_tr
        self._bar = ProgressTask(None, None)
        return self.assemble(eta_dm_folds, mr_vals, mis_num, mis_w, base, w_all, w_med,
                             target_name, control_name)

    def fit_q(self, idx: NDArray[np.int64], q: dict[str, Any]) -> list[Any]:
        """LSTD for the five processes (order of ETA_KEYS) on the training rows ``idx``.

        The designs (:meth:`q_features`) are built here and freed on return: a fold's designs
        are several times its rows of the basis, and kept alive across the evaluation rows and
        the next fold they doubled the peak memory of the analysis.
        """
        r = self.cfg.ridge
        f = self.q_features(idx, q)
        # a stay's end is a reward 1 on its last row, of the chain that makes the transition:
        # observed on the logged (S, A, M) as R is (G's design holds M, so its end rate takes
        # the mediator of the transition, drawn as if pi_e had acted)
        D = [q["D"]] if self.ends is not None else []
        # pi_e, (pi_e, a0), (pi_e, a0*) share their designs: one factorisation
        e = lstd_blocks(f["x"], f["xi_e"], np.column_stack([q["R"], q["r0M"], q["r00"], *D]), r)
        self.done("LSTD of pi_e")
        g = lstd_blocks(f["x4"], f["xi4"], np.column_stack([q["r00"], *D]), r)     # G
        self.done("LSTD of G")
        a0 = lstd_blocks(f["x"], f["xi_0"], np.column_stack([q["R"], *D]), r)      # a0
        self.done("LSTD of a0")
        return [*e[:3], g[0], a0[0], *e[3:], *g[1:], *a0[1:]]

    def fit_ratios(self, tr: NDArray[np.int64], te: NDArray[np.int64], q_tr: dict[str, Any]
                   ) -> NDArray[np.float64]:
        """Density ratios of pi_e, a0 and G at the evaluation rows, shape (n_te, 3)."""
        cfg = self.cfg
        psi, psin = self.basis(cfg.ratio_basis)
        if cfg.ratio_method == "kernel":
            f_all, fn_all = self.basis("rff")
        else:
            f_all, fn_all = psi, psin
        c = self.next_weight(tr)                    # the next-state test functions' weights
        omegas = (q_tr["rho_e"] * c, q_tr["rho_0"] * c, q_tr["rho_0"] * q_tr["ratio_m"] * c)
        # the training rows of the basis once for the three ratios (the test functions are
        # the same rows when they are the basis); the next-state rows become each fit's
        # difference matrix in place (fit_ratio, overwrite=True)
        psi_tr = psi[tr]
        f_tr = psi_tr if f_all is psi else f_all[tr]
        fits = []
        for om, what in zip(omegas, ("pi_e", "a0", "G"), strict=True):
            fits.append(fit_ratio(psi_tr, f_tr, fn_all[tr], om, cfg.ratio_ridge, overwrite=True))
            self.done(f"density ratio of {what}")
        del psi_tr, f_tr
        psi_te = psi[te]
        return np.column_stack([fit.predict(psi_te, cfg.ratio_clip) for fit in fits])

    def mr_rows(self, fits: list[Any], idx: NDArray[np.int64], q: dict[str, Any],
                w: NDArray[np.float64]) -> NDArray[np.float64]:
        """Multiply robust per-row values ``eta_hat + psi_i`` for the five processes.

        The fitted Q-functions are evaluated at the rows ``idx`` from the basis and the
        mediator encodings (products with ``n x A`` results, :func:`combine_dot`): no design
        of these rows is formed (they were 4.8 KB per row on a 62-column basis).
        """
        phi, phin = self.basis(self.cfg.q_basis)
        n, nA = idx.size, self.md.n_actions
        ar, A = np.arange(n), q["A"]
        pe_n, p0_n, p0 = self.pe_n[idx], self.p0_n[idx], q["p0"]
        disc, nraw = self.enc.discrete, self.enc.n_raw
        eta = [ft.eta for ft in fits]
        B = [ft.beta.reshape(nA, -1) for ft in fits]
        # Q-functions of the state: pi_e's three and a0's (then the end rates' of the pi_e
        # and a0 chains); of (state, action, mediator): G's (then its end rate's)
        ends = len(fits) > 5
        on_s, on_g = [0, 1, 2, 4, *([5, 7] if ends else [])], [3, *([6] if ends else [])]
        stacked, B4 = np.vstack([B[j] for j in on_s]), np.vstack([B[j] for j in on_g])
        k, k4 = len(on_s), len(on_g)
        ph = phi[idx]                      # one copy of the rows' basis at a time
        q_now = np.asarray(ph @ stacked.T)[ar[:, None], A[:, None] + nA * np.arange(k)]
        # Q4(S, a', M) and E_{m~p_m(S,A)} Q4(S, a', m), shape (n, k4, A)
        q4_aM = combine_dot(ph, q["enc_M"], disc, nraw, B4).reshape(n, k4, nA)
        q4_aE = combine_dot(ph, q["Eenc_S"][ar, A], disc, nraw, B4).reshape(n, k4, nA)
        del ph
        phn = phin[idx]
        c = self.next_weight(idx)[:, None, None]    # censored rows: no next-state value
        q_next = np.asarray(phn @ stacked.T).reshape(n, k, nA) * c
        q4_next = combine_dot(phn, self.next_mediator_encoding(idx, q), disc, nraw,
                              B4).reshape(n, k4, nA) * c
        del phn
        # TD errors without the reward: E_{w(.|S')} Q(S', .) - Q(S, A), per state Q-function
        td_e = np.einsum("na,nja->nj", pe_n, q_next[:, :3]) - q_now[:, :3]
        td_0 = np.einsum("na,na->n", p0_n, q_next[:, 3]) - q_now[:, 3]
        R, rho_e, rho_0, ratio_m = q["R"], q["rho_e"], q["rho_0"], q["ratio_m"]
        w_e, w_0, w_G = w[:, 0], w[:, 1], w[:, 2]
        psi1 = w_e * rho_e * (R + td_e[:, 0] - eta[0])
        psi2 = w_e * (rho_0 * ratio_m * (R - q["rM_A"])
                      + rho_e * (q["r0M"] + td_e[:, 1] - eta[1]))
        psi3 = w_e * (rho_0 * (R - q["r_A"]) + rho_e * (q["r00"] + td_e[:, 2] - eta[2]))
        eq4 = (p0[:, None] * (q4_aM - q4_aE)).sum(2)                       # (n, k4)
        td_4 = np.einsum("na,nja->nj", p0_n, q4_next) - q4_aM[ar, :, A]
        psi4 = w_G * (rho_0 * (R - q["r_A"])
                      + rho_0 * ratio_m * (q["r00"] + td_4[:, 0] - eta[3])
                      + rho_e * eq4[:, 0])
        psi5 = w_0 * rho_0 * (R + td_0 - eta[4])
        psi = [psi1, psi2, psi3, psi4, psi5]
        if ends:
            # the chains' end rates: the end indicator D observed on the transition, as R is
            # for pi_e and a0; G's weights the transition's (A, M) to (a0, p_e(M|S))
            D = q["D"]
            td_De = np.einsum("na,na->n", pe_n, q_next[:, 4]) - q_now[:, 4]
            td_D0 = np.einsum("na,na->n", p0_n, q_next[:, 5]) - q_now[:, 5]
            psi += [w_e * rho_e * (D + td_De - eta[5]),
                    w_G * (rho_0 * ratio_m * (D + td_4[:, 1] - eta[6]) + rho_e * eq4[:, 1]),
                    w_0 * rho_0 * (D + td_D0 - eta[7])]
        return np.column_stack(psi) + np.asarray(eta)[None, :]

    # -------------------------------------------------------------- inference and result
    def refit_inference(self, points: dict[str, NDArray[np.float64]]
                        ) -> tuple[dict[str, str], dict[str, ClusterInference],
                                   dict[str, ClusterInference]]:
        """Intervals of DM, MIS and the baseline from a bootstrap that refits every model.

        ``n_bootstrap`` replicates resample episodes (:func:`bootstrap_counts`) and refit every
        nuisance model, Q-function and ratio in the same folds, all replicates of a chunk at
        once (:func:`equicare.causal._refit.refit_etas`). The standard error is the replicates'
        standard deviation, the CI their percentile interval. Returns the notes of the
        estimators left without an interval (:data:`NO_INTERVAL_NOTE`), the intervals, and
        the intervals of the per-stay effects (the same replicates' etas divided by their end
        rates, :func:`~equicare.causal._stay.per_stay_values`; none without terminal rows).
        """
        cfg, md = self.cfg, self.md
        names = [k for k in ("dm", "mis", "baseline") if k in points]
        if not names:
            return {}, {}, {}
        reason = NO_BOOTSTRAP_REASON if cfg.n_bootstrap == 0 else refit_support(self)
        if reason is not None:
            return {k: NO_INTERVAL_NOTE.format(reason=reason) for k in names}, {}, {}
        self.say(f"intervals of {', '.join(names)}: {cfg.n_bootstrap} bootstrap replicates "
                 f"over {md.n_episodes} episodes, every model refitted")
        person, n_units = _episode_units(md)
        counts = bootstrap_counts(self.rng, n_units, cfg.n_bootstrap)
        reps = refit_etas(self, counts if person is None else counts[:, person])
        alpha = 1.0 - cfg.ci_level
        out: dict[str, ClusterInference] = {}
        stay: dict[str, ClusterInference] = {}

        def interval(point: NDArray[np.float64], eff: NDArray[np.float64]) -> ClusterInference:
            lo, hi = np.quantile(eff, [alpha / 2, 1 - alpha / 2], axis=0)
            se = eff.std(axis=0, ddof=1) if eff.shape[0] > 1 else np.zeros(eff.shape[1])
            return ClusterInference(point, se, lo, hi)

        for name in names:
            if name == "baseline":
                out[name] = interval(points[name] @ _BASELINE_CONTRAST,
                                     reps[name] @ _BASELINE_CONTRAST)
                continue
            out[name] = interval(points[name][:5] @ _CONTRAST, reps[name][:, :5] @ _CONTRAST)
            if self.ends is not None:
                stay[name] = interval(per_stay_values(points[name]) @ _CONTRAST,
                                      per_stay_values(reps[name]) @ _CONTRAST)
        return {}, out, stay

    def assemble(self, eta_dm_folds: list[list[float]], mr_vals: NDArray[np.float64],
                 mis_num: NDArray[np.float64], mis_w: NDArray[np.float64],
                 base: NDArray[np.float64], w_all: NDArray[np.float64],
                 w_med: NDArray[np.float64], target_name: str,
                 control_name: str) -> MediationResult:
        """Point estimates of every estimator, their standard errors and CIs.

        MR's come from its influence values (:func:`cluster_inference`); DM's, MIS's and the
        baseline's from a bootstrap that refits every model (:meth:`refit_inference`), whose
        replicates are drawn after MR's (MR's numbers do not depend on it).
        """
        md, cfg = self.md, self.cfg
        n = md.n_steps
        points = {"dm": lambda: np.mean(np.asarray(eta_dm_folds), axis=0),
                  "mis": lambda: mis_num.sum(0) / mis_w.sum(0),
                  "mr": lambda: mr_vals.mean(0), "baseline": lambda: base.mean(0)}
        pts = {name: points[name]() for name in cfg.estimators}
        intervals: dict[str, Any] = {}
        stay: dict[str, Any] = {}
        if "mr" in pts:
            self.say(f"intervals: {cfg.n_bootstrap} cluster-bootstrap replicates over "
                     f"{md.n_episodes} episodes" if cfg.n_bootstrap > 0 else
                     "intervals: normal (no bootstrap)")
            mr = pts["mr"]
            infl = mr_vals - mr
            same_draws = copy.deepcopy(self.rng)   # per-stay: the same replicates
            unit, n_units = _row_units(md)  # episodes, or people who re-enrol (member)
            intervals["mr"] = cluster_inference(mr[:5], infl[:, :5], unit, n_units, _CONTRAST,
                                                n_bootstrap=cfg.n_bootstrap,
                                                ci_level=cfg.ci_level, rng=self.rng)
            if self.ends is not None:   # delta method on the joint influence values
                value, infl_v = per_stay_influence(mr, infl)
                if np.isfinite(value).all():
                    stay["mr"] = cluster_inference(value, infl_v, unit, n_units, _CONTRAST,
                                                   n_bootstrap=cfg.n_bootstrap,
                                                   ci_level=cfg.ci_level, rng=same_draws)
        notes, refit, refit_stay = self.refit_inference(pts)
        intervals.update(refit)
        stay.update(refit_stay)
        results: dict[str, EstimatorResult] = {}
        for name, pt in pts.items():
            base_like = name == "baseline"
            keys = ("ide", "ime", "total") if base_like else EFFECT_KEYS
            values = pt[:5] @ _CONTRAST if not base_like else pt @ _BASELINE_CONTRAST
            effects = _effects(keys, values, intervals.get(name))
            eta: dict[str, float | None] = (
                {k: None for k in ETA_KEYS} if base_like
                else dict(zip(ETA_KEYS, map(float, pt[:5]), strict=True)))
            note = notes.get(name)
            impossible = None if base_like else eta_range_note(pt[:5], md.rewards, name)
            if impossible is not None:
                warnings.warn(f"{impossible}.", DataWarning, stacklevel=3)
                note = impossible if note is None else f"{note}; {impossible}"
            per_stay = None
            if self.ends is not None and not base_like:
                value = per_stay_values(pt)
                value[pt[5:][CHAIN_OF] > 1 + 1e-9] = np.nan      # not a rate (the note)
                stay_note = per_stay_note(pt[5:], value, self.stay_range(), name)
                if stay_note is not None:
                    warnings.warn(f"{stay_note}.", DataWarning, stacklevel=3)
                stay_effects = _effects(EFFECT_KEYS, value @ _CONTRAST, stay.get(name))
                for k, v in zip(EFFECT_KEYS, value @ _CONTRAST, strict=True):
                    if np.isnan(v):         # resting on a failed end rate (the note)
                        stay_effects[k] = EffectEstimate(None)
                per_stay = PerStay(
                    stay_effects,
                    {k: _num(v) for k, v in zip(ETA_KEYS, value, strict=True)},
                    {k: float(v) for k, v in zip(CHAIN_KEYS, pt[5:], strict=True)},
                    note=stay_note)
            results[name] = EstimatorResult(effects, eta, note=note, per_stay=per_stay)
        ess: dict[str, float] = {}
        if self.need_w:
            for j, key in enumerate(("pi_e", "a0", "G")):
                ess[key] = effective_sample_size(w_all[:, j])
                pct = 100.0 * ess[key] / n
                if pct < LOW_ESS_PCT:
                    warnings.warn(LOW_ESS_MESSAGE.format(name=key, pct=pct), SupportWarning,
                                  stacklevel=3)
            ess["mediator"] = mediator_ess(w_med[:, 0], w_med[:, 1])
            pct = 100.0 * ess["mediator"] / n
            if pct < LOW_ESS_PCT:
                warnings.warn(LOW_MEDIATOR_ESS_MESSAGE.format(pct=pct,
                                                              max_w=float(w_med[:, 1].max())),
                              SupportWarning, stacklevel=3)
        return MediationResult(n_episodes=md.n_episodes, n_steps=n, control=control_name,
                               target=target_name, estimators=results, ess=ess,
                               settings=cfg.to_dict(), n_renewed=md.n_renewed,
                               n_censored=md.n_censored)


def _warn_unconverged(model: Any, message: str) -> None:
    """A ``DataWarning`` when a default Newton fit stopped before converging (``converged_``)."""
    if not getattr(model, "converged_", True):
        warnings.warn(message, DataWarning, stacklevel=5)


def _episode_units(md: MediationData) -> tuple[NDArray[np.int64] | None, int]:
    """Each episode's person and the number of people, or ``(None, n_episodes)``.

    People (``md.source.members``, the manifest's ``member``) when members re-enrol: the
    bootstraps then draw people with all their episodes, and the influence values are summed
    per person; without members every episode is its own unit (as before).
    """
    members = getattr(md.source, "members", None)
    if members is None:
        return None, md.n_episodes
    from equicare.ope._bootstrap import cluster_codes

    codes = cluster_codes(members)
    return codes[:md.n_episodes], int(codes.max()) + 1


def _row_units(md: MediationData) -> tuple[NDArray[np.int64], int]:
    """Each row's independent unit (:func:`_episode_units`) and their number."""
    person, n_units = _episode_units(md)
    return (md.episode_index if person is None else person[md.episode_index]), n_units
