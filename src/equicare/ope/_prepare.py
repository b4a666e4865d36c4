"""Dataset + policy -> :class:`OPEInputs`: target probabilities, propensities, Q-model."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.data._cells import CellChoice, choose_cells, thin_cells_message
from equicare.exceptions import DataValidationError, DataWarning, InvalidParameterError
from equicare.ope._censoring import CensoringCheck, censoring_check
from equicare.ope._core import ALL_KEYS, IS_TYPE, OPEInputs
from equicare.ope._fqe import FQEConfig, LoggedQFit, fit_fqe_logged, logged_q_fit
from equicare.ope._select import (
    AUTO_CANDIDATES,
    QSelection,
    candidate_config,
    candidate_name,
    select_q_model,
)
from equicare.policy import check_probs
from equicare.policy._behavior import BehaviorModel
from equicare.policy._deployed import deployed_rows
from equicare.utils import PARAM_MESSAGE, RandomState, check_random_state

__all__ = ["Prepared", "prepare", "target_probabilities", "as_fqe_config", "check_q_model",
           "q_model_config", "q_model_name", "ZERO_PROPENSITY_MESSAGE", "BehaviorSpec",
           "auto_q_model"]

BehaviorSpec = Literal["logistic", "lgbm"] | BehaviorModel | Any

#: Error raised when logged propensities are not usable (tests match it).
ZERO_PROPENSITY_MESSAGE = (
    "{n_bad} rows have a logged behaviour probability that is not in (0, 1] (first rows: {rows}); "
    "the target policy puts probability on the logged action in {n_mass} of them, so importance "
    "weights are undefined there and {biased} would be biased. Fix the propensity column, or "
    "remove behavior_prob from the manifest to estimate propensities instead."
)


def target_probabilities(dataset: TrajectoryDataset, policy_or_probs: Any) -> NDArray[np.float64]:
    """Target-policy probabilities of every action at every row, shape ``(n_steps, n_actions)``.

    Parameters
    ----------
    dataset : TrajectoryDataset
    policy_or_probs : Policy or array-like of shape (n_steps, n_actions)

    Raises
    ------
    PolicyError
        Wrong shape, negative entries or rows not summing to 1 within 1e-6.
    """
    if hasattr(policy_or_probs, "action_probs"):  # never an evaluation's estimated propensities
        probs = policy_or_probs.action_probs(dataset.policy_view())
        src = f"target policy {type(policy_or_probs).__name__}"
    else:
        probs = policy_or_probs
        src = "target policy probabilities"
    return check_probs(probs, dataset.n_steps, dataset.n_actions, src)  # a path: its message


def as_fqe_config(q_model: Any) -> FQEConfig | Literal["auto"]:
    """Accept ``"auto"``, a model name or an :class:`FQEConfig`."""
    if isinstance(q_model, FQEConfig):
        return "auto" if q_model.model == "auto" and q_model.cells is None else q_model
    if q_model == "auto":
        return "auto"
    if isinstance(q_model, str) and q_model in ("tabular", "linear", "gbm", "mlp"):
        return FQEConfig(model=q_model)  # type: ignore[arg-type]
    base = q_model.split("[", 1)[0] if isinstance(q_model, str) else None
    if base in (*AUTO_CANDIDATES, "tabular_window"):
        try:
            return candidate_config(q_model)
        except (ValueError, InvalidParameterError):
            pass
    raise InvalidParameterError(PARAM_MESSAGE.format(
        name="q_model", owner="evaluate",
        expected="'auto', 'tabular', 'tabular_stationary', 'tabular_backward', "
                 "'tabular_window' (a table may name its cells' columns: "
                 "'tabular_stationary[diagnosis,site]'), 'linear', 'gbm', 'mlp' or an FQEConfig",
        got=q_model))


def q_model_name(qcfg: Any) -> str:
    """The name a user would type for a Q-model setting.

    ``tabular_window``, not ``tabular``; a table's cells in brackets.
    """
    if isinstance(qcfg, str):
        return qcfg
    horizon = getattr(qcfg, "horizon", "auto")
    name = (f"tabular_{horizon}" if qcfg.model == "tabular" and horizon != "auto"
            else str(qcfg.model))
    cells = getattr(qcfg, "cells", None)
    return name if cells is None else f"{name}[{','.join(cells)}]"


def check_q_model(q_model: Any, owner: str) -> None:
    """Raise :class:`InvalidParameterError` naming ``owner`` for a ``q_model`` evaluate rejects.

    Accepted: what :func:`as_fqe_config` takes (``"auto"``, a model or candidate name,
    ``"tabular_stationary[cols]"``, an :class:`FQEConfig`).
    """
    try:
        as_fqe_config(q_model)
    except InvalidParameterError:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="q_model", owner=owner,
            expected="'auto', 'linear', 'gbm', 'mlp', 'tabular', 'tabular_stationary', "
                     "'tabular_backward', 'tabular_window' (a table may name its cells' columns: "
                     "'tabular_stationary[diagnosis,site]') or an FQEConfig", got=q_model)
        ) from None


def q_model_config(q_model: Any) -> FQEConfig:
    """:func:`as_fqe_config` as an :class:`FQEConfig` (``"auto"``: ``FQEConfig(model="auto")``)."""
    cfg = as_fqe_config(q_model)
    return FQEConfig(model="auto") if isinstance(cfg, str) else cfg


def model_seed(random_state: RandomState) -> int:
    """The seed of :func:`prepare`'s nuisance models (behaviour model, Q selection, cells)."""
    return int(check_random_state(random_state).integers(2**31 - 1))


def _make_behavior_model(spec: Any, seed: int) -> BehaviorModel:
    if isinstance(spec, BehaviorModel):
        return spec
    if spec in ("logistic", "lgbm"):
        return BehaviorModel(estimator=spec, random_state=seed)
    if hasattr(spec, "fit") and hasattr(spec, "predict_proba"):
        return BehaviorModel(estimator=spec, random_state=seed)
    raise InvalidParameterError(PARAM_MESSAGE.format(
        name="behavior_model", owner="evaluate",
        expected="'logistic', 'lgbm', a scikit-learn classifier or a BehaviorModel", got=spec))


def check_logged_propensities(prob: NDArray[np.float64], target_probs: NDArray[np.float64],
                              actions: NDArray[np.int64], keys: tuple[str, ...] = ALL_KEYS,
                              checked: NDArray[np.bool_] | None = None
                              ) -> NDArray[np.float64]:
    """Raise :class:`DataValidationError` when a logged propensity is not in (0, 1].

    Only the ``checked`` rows when given (a policy valued as deployed needs no propensity on
    the rows it leaves to the clinicians).
    """
    p = np.asarray(prob, dtype=np.float64)
    bad = ~np.isfinite(p) | (p <= 0) | (p > 1 + 1e-9)
    if checked is not None:
        bad &= checked
    if bad.any():
        rows = np.flatnonzero(bad)
        mass = target_probs[rows, actions[rows]] > 0
        weighted = [k for k in keys if k != "fqe"]
        raise DataValidationError(ZERO_PROPENSITY_MESSAGE.format(
            n_bad=rows.size, rows=rows[:5].tolist(), n_mass=int(mass.sum()),
            biased=", ".join(weighted) or ", ".join(IS_TYPE)))
    return p


@dataclass(frozen=True, eq=False)
class Prepared:
    """Everything the estimators need, computed once.

    Attributes
    ----------
    inputs : OPEInputs
        Ratios, rewards and the (multi-step) Q-model at the logged actions.
    target_probs : ndarray of shape (n_steps, n_actions)
    actions : ndarray of shape (n_steps,)
    behavior_prob : ndarray of shape (n_steps,)
        Propensity of the logged action used in the weights.
    propensity_source : {"logged", "given", "estimated"}
    behavior_model : BehaviorModel or None
    qfit : LoggedQFit or None
        The Q-model at the logged actions and ``V`` (``qfit.q`` rebuilds the full matrix).
    bandit_qfit : LoggedQFit or None
        One-step reward model of the bandit mode.
    q_selection : QSelection or None
        Candidates' scores and the choice when ``q_model="auto"``.
    q_cells : CellChoice or None
        How a fixed tabular Q-model's cells were chosen when they were not named (several
        categorical columns; :func:`equicare.data.choose_cells`).
    q_config : FQEConfig or None
        The Q-model fitted (None when ``q`` was given or no Q-model was needed); :attr:`q_name`
        names it.
    censoring : CensoringCheck or None
        ``auto``'s check of the stationary table on censored stays (None when ``auto`` did not
        choose that table, or censoring cannot move the value by 2%).
    deferred : ndarray of shape (n_steps,), bool, or None
        Rows a policy valued as deployed leaves to the clinicians (target: the logged action,
        behaviour probability 1; :mod:`equicare.policy._deployed`); None for other policies.
    """

    inputs: OPEInputs
    target_probs: NDArray[np.float64]
    actions: NDArray[np.int64]
    behavior_prob: NDArray[np.float64]
    propensity_source: str
    behavior_model: BehaviorModel | None
    qfit: LoggedQFit | None
    bandit_qfit: LoggedQFit | None = None
    q_selection: QSelection | None = None
    q_cells: CellChoice | None = None
    q_config: FQEConfig | None = None
    censoring: CensoringCheck | None = None
    deferred: NDArray[np.bool_] | None = None

    @property
    def q_name(self) -> str | None:
        """The Q-model used, as a user would name it (``"tabular_stationary[state]"``)."""
        return None if self.q_config is None else q_model_name(self.q_config)

    @property
    def cell_choice(self) -> CellChoice | None:
        """How the tables' cells were chosen: by ``auto`` or for a fixed table (or None)."""
        return self.q_cells if self.q_selection is None else self.q_selection.cell_choice

    def censoring_report(self, dataset: TrajectoryDataset) -> CensoringCheck | None:
        """The censoring check of the stationary table (:mod:`equicare.ope._censoring`).

        ``auto``'s, made in :func:`prepare` (which used the window table if it warned), or, for
        a stationary table the user named, made here on ``dataset`` (the data prepared). None
        for other Q-models, or when censoring cannot move the value by 2%.
        """
        cfg = self.q_config
        if self.q_selection is not None or self.censoring is not None:
            return self.censoring
        if (self.qfit is None or cfg is None or cfg.model != "tabular"
                or cfg.resolved_horizon != "stationary"):
            return None
        return censoring_check(dataset, self.target_probs, self.qfit, cfg)

    @property
    def table_cells(self) -> tuple[str, ...] | None:
        """The categorical columns of the Q-model's cells (None: all, or not a table)."""
        return None if self.q_config is None else self.q_config.cells

    @property
    def q_linearised(self) -> bool:
        """Whether the Q-model's refit enters the bootstrap (LSTD-type Q-models)."""
        return self.qfit is not None and self.qfit.lstd is not None

    def bandit_inputs(self) -> OPEInputs:
        """Return inputs whose Q-model is the one-step reward model (for ``bandit_dr``)."""
        if self.bandit_qfit is None:
            raise InvalidParameterError(
                "No one-step reward model was fitted (bandit_dr not requested).")
        return self.inputs.with_q(self.bandit_qfit.q_sa, self.bandit_qfit.v)


def prepare(
    dataset: TrajectoryDataset,
    policy_or_probs: Any,
    *,
    keys: tuple[str, ...] = ALL_KEYS,
    behavior_prob: Any | None = None,
    behavior_model: BehaviorSpec = "logistic",
    fit_behavior: bool = False,
    q: Any | None = None,
    q_model: Any = "linear",
    random_state: RandomState = None,
    groups: Sequence[str] = (),
    deferred: NDArray[np.bool_] | None = None,
) -> Prepared:
    """Compute target probabilities, propensities and the Q-model once.

    Parameters
    ----------
    dataset : TrajectoryDataset
    policy_or_probs : Policy or array-like of shape (n_steps, n_actions)
    keys : tuple of str
        Estimators that will be computed (decides whether a Q-model is fitted).
    behavior_prob : array-like of shape (n_steps,), optional
        Propensities of the logged actions; default: the dataset's logged ones, else estimated.
    behavior_model : "logistic", "lgbm", classifier or BehaviorModel
        Used when propensities must be estimated (or ``fit_behavior`` is set).
    fit_behavior : bool
        Fit the behaviour model even when propensities are known (support diagnostics).
    q : array-like of shape (n_steps, n_actions), optional
        A given Q matrix (skips FQE).
    q_model : str or FQEConfig
        ``"auto"`` (choose by cross-fitted held-out TD error, see
        :func:`~equicare.ope.select_q_model`), a model or candidate name, or an FQEConfig. A
        tabular model whose cells are not named takes, with several categorical columns, those
        of :func:`equicare.data.choose_cells` (the columns that change the dynamics).
    random_state : int, Generator or None
    groups : sequence of str
        Subgroup attributes whose levels ``auto`` estimates its bias for
        (``QSelection.group_bias``).
    deferred : ndarray of shape (n_steps,), bool, optional
        Rows left to the clinicians, whose target must then be the logged action (default:
        those of a policy valued as deployed, :func:`equicare.policy.as_deployed`): their
        behaviour probability is 1 and they need no propensity.

    Returns
    -------
    Prepared
    """
    seed = model_seed(random_state)
    pe = target_probabilities(dataset, policy_or_probs)
    # rows a policy valued as deployed leaves to the clinicians: behaviour probability 1 there
    # (the target is the logged action), so they need no propensity, logged or estimated
    if deferred is None:
        deferred = deployed_rows(policy_or_probs, dataset)
    decided = None if deferred is None else ~deferred
    bm: BehaviorModel | None = None
    if behavior_prob is not None:
        b = np.asarray(behavior_prob, dtype=np.float64)
        if b.shape != (dataset.n_steps,):
            raise DataValidationError(f"behavior_prob must have shape ({dataset.n_steps},), "
                                      f"got {b.shape}.")
        b = check_logged_propensities(b, pe, dataset.actions, keys, checked=decided)
        source = "given"
    elif dataset.behavior_prob is not None:
        b = check_logged_propensities(dataset.behavior_prob, pe, dataset.actions, keys,
                                      checked=decided)
        source = "logged"
    else:
        bm = _make_behavior_model(behavior_model, seed)
        if not hasattr(bm, "models_"):
            bm.fit(dataset)
        b = bm.propensities(dataset)
        source = "estimated"
    if deferred is not None:
        b = np.where(deferred, 1.0, b)
    if fit_behavior and bm is None:
        bm = _make_behavior_model(behavior_model, seed)
        if not hasattr(bm, "models_"):
            bm.fit(dataset)
    needs_q = any(k in ("fqe", "dr", "wdr") for k in keys)
    given = None
    if q is not None and (needs_q or "bandit_dr" in keys):  # a given Q matrix serves both modes
        qm = np.asarray(q, dtype=np.float64)
        if qm.shape != pe.shape:
            raise InvalidParameterError(f"q must have shape {pe.shape}, got {qm.shape}.")
        given = logged_q_fit(qm, pe, dataset.actions, info={"solver": "given"})
    qcfg = as_fqe_config(q_model)
    selection = None
    is_auto = qcfg == "auto" or (isinstance(qcfg, FQEConfig) and qcfg.model == "auto")
    if is_auto and given is None and (needs_q or "bandit_dr" in keys):
        selection = select_q_model(dataset, pe, random_state=seed,
                                   cells=qcfg.cells if isinstance(qcfg, FQEConfig) else None,
                                   groups=tuple(groups))
        qcfg = candidate_config(selection.chosen)
    q_cells = None
    if (selection is None and isinstance(qcfg, FQEConfig) and qcfg.model == "tabular"
            and qcfg.cells is None and given is None and (needs_q or "bandit_dr" in keys)
            and dataset.categorical is not None and dataset.categorical.shape[1] > 1):
        q_cells = choose_cells(dataset, random_state=seed)
        if q_cells.dropped:
            qcfg = replace(qcfg, cells=q_cells.columns)
    qfit = None
    if given is None and (needs_q or "bandit_dr" in keys) and _concrete(qcfg).model == "tabular":
        msg = thin_cells_message(dataset, THIN_Q_CELLS, _concrete(qcfg).cells,
                                 q_cells_hint(_concrete(qcfg).cells, selection))
        if msg is not None:
            warnings.warn(msg, DataWarning, stacklevel=2)
    check = None
    if needs_q:  # Q at the logged actions and V only: no (n_steps, n_actions) Q matrix is kept
        qfit = given or fit_fqe_logged(dataset, pe, _concrete(qcfg), random_state=seed)
        cfg = _concrete(qcfg)  # auto's stationary table, with or without named cells
        if (selection is not None and cfg.model == "tabular"
                and cfg.resolved_horizon == "stationary"):
            qfit, qcfg, selection, check = _censoring_switch(dataset, pe, qfit, cfg,
                                                             selection)
    bandit_qfit = None
    if "bandit_dr" in keys:
        bandit_qfit = given or fit_fqe_logged(dataset, pe, _concrete(qcfg), gamma=0.0,
                                              random_state=seed)
    rows = np.arange(dataset.n_steps)
    rho = pe[rows, dataset.actions] / b
    inputs = OPEInputs(
        rewards=dataset.rewards, episode_offsets=dataset.episode_offsets, gamma=dataset.gamma,
        rho=rho, q_sa=None if qfit is None else qfit.q_sa,
        v_s=None if qfit is None else qfit.v)
    return Prepared(inputs=inputs, target_probs=pe, actions=dataset.actions, behavior_prob=b,
                    propensity_source=source, behavior_model=bm, qfit=qfit,
                    bandit_qfit=bandit_qfit, q_selection=selection, q_cells=q_cells,
                    q_config=_concrete(qcfg) if given is None and qfit is not None else None,
                    censoring=check, deferred=deferred)


def _censoring_switch(dataset: TrajectoryDataset, pe: NDArray[np.float64], qfit: LoggedQFit,
                      cfg: FQEConfig, selection: QSelection
                      ) -> tuple[LoggedQFit, FQEConfig, QSelection, CensoringCheck | None]:
    """``auto``'s stationary table, or the window table when censored stays bias it.

    :func:`~equicare.ope._censoring.censoring_check`: when the two tables' values differ by more
    than 2 standard errors and 2%, within what censoring can explain, the window table (same
    cells) replaces the stationary one; the selection records the replacement.
    """
    check = censoring_check(dataset, pe, qfit, cfg)
    if check is None or not check.warn or check.window_fit is None:
        return qfit, cfg, selection, check
    return (check.window_fit, replace(cfg, horizon="window"),
            replace(selection, chosen="tabular_window", replaced=selection.chosen,
                    group_bias={}),
            replace(check, switched=True))


def auto_q_model(dataset: TrajectoryDataset, target_probs: NDArray[np.float64], *,
                 random_state: int | None = None) -> tuple[str, QSelection]:
    """``auto``'s Q-model for ``target_probs``, named so that ``q_model=name`` fits it again.

    :func:`~equicare.ope.select_q_model`, then, as :func:`prepare` does, the censoring check of
    a stationary table, which puts the window table (same cells) in its place when censored
    stays bias it. For callers that choose once and value several policies with the choice
    (the policy card): the chosen name alone skipped the switch.

    Parameters
    ----------
    dataset : TrajectoryDataset
    target_probs : ndarray of shape (n_steps, n_actions)
    random_state : int, optional

    Returns
    -------
    name : str
        E.g. ``"tabular_window[state]"`` (a tabular name carries its cells).
    selection : QSelection
        The choice, with ``replaced`` when the window table took the stationary one's place.
    """
    selection = select_q_model(dataset, target_probs, random_state=random_state)
    cfg = candidate_config(selection.chosen)
    if cfg.model != "tabular" or cfg.resolved_horizon != "stationary":
        return selection.chosen, selection
    qfit = fit_fqe_logged(dataset, target_probs, cfg, random_state=random_state)
    _, cfg, selection, check = _censoring_switch(dataset, target_probs, qfit, cfg, selection)
    if check is None or not check.switched:
        return selection.chosen, selection
    return candidate_name(f"tabular_{cfg.resolved_horizon}", cfg.cells), selection


#: What the thin-cells warning calls the tabular Q-model's cells (in memory and streamed).
THIN_Q_CELLS = "The tabular Q-model's cells"


def q_cells_hint(cells: tuple[str, ...] | None, selection: Any) -> str:
    """The thin-cells warning's advice for a tabular Q-model over ``cells``.

    ``selection`` is ``auto``'s :class:`~equicare.ope._select.QSelection` (None for a fixed
    model): named cells, cells ``auto`` kept, or every column.
    """
    named = cells is not None and (selection is None or selection.cell_choice is None)
    return ("These are the cells named (--q-cells, FQEConfig(cells=...)); q_model='auto' "
            "without cells pools over the columns that do not change the dynamics."
            if named else
            "q_model='auto' kept these columns: each changes the dynamics given the "
            "others (held-out log-likelihood); if some do not define the clinical state, "
            "name the cells: --q-cells, FQEConfig(cells=...)." if selection is not None else
            "q_model='auto' pools over the columns that do not change the dynamics given "
            "the others; or name the cells: --q-cells, FQEConfig(cells=...).")


def _concrete(cfg: FQEConfig | str) -> FQEConfig:
    return cfg if isinstance(cfg, FQEConfig) else FQEConfig()
