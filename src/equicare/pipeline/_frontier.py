"""Fairness-value trade-off frontier: one learner trained over a grid of fairness weights."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import (
    DataWarning,
    InvalidParameterError,
    SmallCellWarning,
    SupportWarning,
)
from equicare.fairness._audit import BEHAVIOR, AuditResult, FairnessAudit
from equicare.fairness._bootstrap import bootstrap_weights, split_random_state
from equicare.fairness._diagnostics import (
    CENSORING_WARNING,
    IN_SAMPLE_WARNING,
    Q_CHECK_WARNING,
    SUPPORT_PREFIX,
)
from equicare.fairness._groups import dataset_group_index, require_comparison
from equicare.pipeline._executor import torch_threads
from equicare.utils import (
    MIN_CELL,
    PARAM_MESSAGE,
    RandomState,
    atomic_write_text,
    check_param,
    spawn_seeds,
)

__all__ = ["frontier", "FrontierResult", "pareto_mask"]

Weight = Literal["fair_lambda", "group_robust"]
_LEARNERS = {"bc": "BC", "awr": "AWR", "cql": "CQL"}
#: Columns of :attr:`FrontierResult.table`.
COLUMNS = ("lambda", "value", "value_lower", "value_upper", "gap_pp", "gap_lower", "gap_upper",
           "worst_group_value", "worst_lower", "worst_upper", "worst_group", "worst_excluded",
           "pareto")
#: The frontier's one warning when the censoring check of a stationary table fires at some
#: points (each point's audit keeps the check in its diagnostics).
MSG_CENSORING = ("frontier: the stationary tabular Q-model's censoring check fired at {k} of {n} "
                 "weights (lambda = {lams}; each point's audit has the check in "
                 "diagnostics.censoring). At lambda = {first}: {message}")
#: The frontier's one warning when the support or weight checks of some points' values warned
#: (each point's audit keeps them in its diagnostics).
MSG_VALUES = ("frontier: the {estimator} values of {k} of {n} weights (lambda = {lams}) rest on "
              "thin evidence (each point's audit has its support and weight checks in "
              "diagnostics). At lambda = {first}: {message}")


def pareto_mask(value: ArrayLike, gap: ArrayLike, worst: ArrayLike) -> NDArray[np.bool_]:
    """Pareto-efficient points: higher value, smaller gap, higher worst-group value.

    A point is dominated when another is at least as good on all three criteria and strictly
    better on one. Points with a NaN criterion are never efficient; a criterion that no point
    has (every group value unpublished, e.g. importance weights with an effective sample size
    below 11 in every group) is left out.

    Parameters
    ----------
    value, gap, worst : array-like of shape (n,)

    Returns
    -------
    ndarray of shape (n,), bool

    Examples
    --------
    >>> pareto_mask([1.0, 0.9, 0.8], [5.0, 2.0, 3.0], [0.5, 0.5, 0.4]).tolist()
    [True, True, False]
    """
    # criteria to maximise, as columns
    c = np.column_stack([np.asarray(value, float), -np.asarray(gap, float),
                         np.asarray(worst, float)])
    c = c[:, np.isfinite(c).any(axis=0) | (c.shape[0] == 0)]
    ok = np.isfinite(c).all(axis=1)
    ge = (c[None, :, :] >= c[:, None, :]).all(axis=2)   # ge[i, j]: j at least as good as i
    gt = (c[None, :, :] > c[:, None, :]).any(axis=2)    # gt[i, j]: j strictly better somewhere
    dominated = (ge & gt & ok[None, :]).any(axis=1)
    out: NDArray[np.bool_] = np.asarray(ok & ~dominated, dtype=bool)
    return out


@dataclass(frozen=True, eq=False)
class FrontierResult:
    """Value, parity gap and worst-group value of a learner at each fairness weight.

    Attributes
    ----------
    learner : str
    weight : {"fair_lambda", "group_robust"}
        Which weight was varied.
    action : str
        Action set of the parity gap (and of the penalty).
    group : str
    estimator : str
        OPE estimator of the values (``"dr"`` by default).
    table : pandas.DataFrame
        One row per weight with the columns of :data:`COLUMNS` (gaps in percentage points,
        intervals from the same bootstrap replicates for every weight).
    behavior : dict
        The same numbers for the logged behaviour on the evaluation episodes (on-policy value).
    audits : list of AuditResult
        The full audit of each point.
    n_train_episodes, n_eval_episodes : int
    warnings : list of str
        The frontier's warning about the points' values (support, importance-weight ESS), as
        emitted; also in the JSON, and printed by ``equicare frontier``.
    """

    learner: str
    weight: Weight
    action: str
    group: str
    estimator: str
    table: pd.DataFrame
    behavior: dict[str, Any]
    audits: list[AuditResult]
    n_train_episodes: int
    n_eval_episodes: int
    warnings: list[str] = field(default_factory=list)

    @property
    def pareto(self) -> NDArray[np.bool_]:
        """Pareto-efficient rows of :attr:`table`."""
        out: NDArray[np.bool_] = np.asarray(self.table["pareto"].to_numpy(dtype=bool))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return the frontier as plain data (``frontier.json``)."""
        def num(v: Any) -> Any:
            if isinstance(v, bool | np.bool_):
                return bool(v)
            if isinstance(v, str):
                return v
            return None if v is None or not np.isfinite(v) else float(v)

        return {
            "learner": self.learner, "weight": self.weight, "action": self.action,
            "group": self.group, "estimator": self.estimator,
            "n_train_episodes": self.n_train_episodes, "n_eval_episodes": self.n_eval_episodes,
            "points": [{k: num(v) for k, v in row.items()}
                       for row in self.table.to_dict(orient="records")],
            "behavior": {k: num(v) for k, v in self.behavior.items()},
            "warnings": list(self.warnings),
        }

    def to_json(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write :meth:`to_dict` atomically; refuse to replace a file unless ``overwrite``."""
        p = Path(path)
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; refusing to overwrite (pass overwrite=True / "
                                  "--force).")
        atomic_write_text(p, json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    def plot(self, ax: Any = None) -> Any:
        """Value against parity gap, Pareto points joined, weights annotated (matplotlib)."""
        if ax is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(6.0, 4.0), layout="constrained")
            ax = fig.add_subplot(1, 1, 1)
        t = self.table
        xerr = np.vstack([t.gap_pp - t.gap_lower, t.gap_upper - t.gap_pp]).clip(0)
        yerr = np.vstack([t.value - t.value_lower, t.value_upper - t.value]).clip(0)
        ax.errorbar(t.gap_pp, t.value, xerr=xerr, yerr=yerr, fmt="o", color="tab:blue",
                    capsize=2, label=self.learner)
        eff = t[t.pareto].sort_values("gap_pp")
        ax.plot(eff.gap_pp, eff.value, "-", color="tab:blue", alpha=0.6, label="Pareto front")
        for _, r in t.iterrows():
            ax.annotate(f"{r['lambda']:g}", (r.gap_pp, r.value), xytext=(4, 4),
                        textcoords="offset points", fontsize="small")
        b = self.behavior
        if b.get("gap_pp") is not None and b.get("value") is not None:
            ax.plot([b["gap_pp"]], [b["value"]], "s", color="tab:gray", label=BEHAVIOR)
        ax.set_xlabel(f"parity gap of {self.action} (pp)")
        ax.set_ylabel(f"value ({self.estimator})")
        ax.set_title(f"{self.weight} frontier")
        ax.legend(frameon=False, fontsize="small")
        return ax.figure


@dataclass(frozen=True)
class _Task:
    """Everything one frontier point needs (picklable, for process and Ray executors)."""

    learner_cls: str
    config: dict[str, Any]
    train: TrajectoryDataset
    eval: TrajectoryDataset
    audit: dict[str, Any]
    weights: NDArray[np.float64] | None
    seed: int
    torch_threads: int | None
    suppress: tuple[str, ...] = ()


def _run_point(task: _Task) -> AuditResult:
    """Train at one weight and audit the policy on the evaluation episodes."""
    import equicare.learn as algos

    with torch_threads(task.torch_threads):  # restored: serial points run in the caller
        cls = getattr(algos, task.learner_cls)
        learner = cls(cls.config_class.from_dict(task.config))
        learner.fit(task.train, progress=False)
        cfg = FairnessAudit.from_dict(task.audit)
        with warnings.catch_warnings():  # the caller warned once about suppressed groups
            warnings.simplefilter("ignore", SmallCellWarning)
            # the weights and support of each point's values, and a stationary table's censoring
            # check: in its audit's diagnostics (the caller warns once about censoring)
            warnings.simplefilter("ignore", SupportWarning)
            warnings.filterwarnings("ignore", CENSORING_WARNING, DataWarning)
            warnings.filterwarnings("ignore", IN_SAMPLE_WARNING, DataWarning)
            # the Q-model's check by group: in the diagnostics, said once (_warn_values)
            warnings.filterwarnings("ignore", Q_CHECK_WARNING, DataWarning)
            return cfg.run(task.eval, {"policy": learner}, weights=task.weights,
                           random_state=task.seed, suppress=task.suppress)


def _learner_class(learner: Any) -> tuple[str, Any]:
    import equicare.learn as algos

    if isinstance(learner, str):
        key = learner.lower()
        if key not in _LEARNERS:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="learner", owner="frontier",
                                                  expected="one of 'bc', 'awr', 'cql'",
                                                  got=learner))
        name = _LEARNERS[key]
        return name, getattr(algos, name)
    cls: Any = learner if isinstance(learner, type) else type(learner)
    name = str(cls.__name__)
    if getattr(algos, name, None) is not cls:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="learner", owner="frontier",
            expected="'bc', 'awr', 'cql', or an equicare.learn learner class or instance",
            got=learner))
    return name, cls


def frontier(
    dataset: TrajectoryDataset,
    learner: Any = "awr",
    *,
    lambdas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 5.0),
    weight: Weight = "fair_lambda",
    action: str | None = None,
    group: str | None = None,
    config: Any = None,
    eval_dataset: TrajectoryDataset | None = None,
    eval_fraction: float = 0.3,
    estimator: str = "dr",
    q_model: str = "auto",
    n_boot: int = 200,
    alpha: float = 0.05,
    min_cell: int = MIN_CELL,
    executor: Any = None,
    torch_threads: int | None = 1,
    random_state: RandomState = None,
    progress: bool = False,
    suppress: Collection[str] = (),
) -> FrontierResult:
    r"""Train ``learner`` at each fairness weight and trace value against parity.

    For each :math:`\lambda` in ``lambdas`` the learner is trained with the parity penalty
    (``weight="fair_lambda"``: :math:`\lambda \sum_g (\bar\pi_g(S) - \bar\pi(S))^2` on the action
    set ``action``) or the group-robust objective (``weight="group_robust"``, :math:`\lambda \in
    [0, 1]`), then audited on held-out episodes: the policy value (``estimator``, DR by default,
    with its interval), the demographic-parity gap of ``action`` in percentage points, and the
    worst-group value. All points share one matrix of bootstrap replicates of the evaluation
    episodes, so their intervals are comparable. Points that no other point beats on all three
    criteria are marked Pareto-efficient.

    Parameters
    ----------
    dataset : TrajectoryDataset
        Training data (and evaluation data, split off, when ``eval_dataset`` is not given).
    learner : {"bc", "awr", "cql"}, learner class or instance
        An ``equicare.learn`` offline learner; an instance contributes its config.
    lambdas : sequence of float
        Fairness weights (``group_robust`` needs values in [0, 1]).
    weight : {"fair_lambda", "group_robust"}
    action : str, optional
        Action set of the parity gap and the penalty (default: every level of the first action
        component but its first, "any outreach", as in :func:`equicare.fairness.audit`).
    group : str, optional
        Group attribute (default: the dataset's first).
    config : LearnerConfig or mapping, optional
        Base settings of the learner (e.g. ``{"n_steps": 2000}``).
    eval_dataset : TrajectoryDataset, optional
    eval_fraction : float
        Share of episodes held out for evaluation (stratified by group) without ``eval_dataset``.
    estimator, q_model : str
        OPE estimator and FQE model of the values (default ``"dr"`` with ``"auto"``, as
        ``evaluate``'s).
    n_boot, alpha, min_cell
        Bootstrap replicates, interval level, suppression threshold.
    executor : object with ``map(fn, items)``, optional
        E.g. ``equicare.pipeline.get_executor("local", jobs=2)``; default: serial in-process.
    torch_threads : int, optional
        ``torch.set_num_threads`` in each task (1 avoids oversubscription with process pools).
    progress : bool
        Report each trained point (a progress bar on a terminal, one line otherwise).
    random_state : int, Generator or None
        Seeds the split, the learners (``config.seed``) and the replicates.
    suppress : collection of str, optional
        Groups of the evaluation episodes to suppress whatever their size (``suppress`` of
        :meth:`~equicare.fairness.FairnessAudit.run`; ``equicare run`` passes its held-out
        groups whose training half is small).

    Returns
    -------
    FrontierResult
    """
    check_param(weight, "weight", "frontier", choices=("fair_lambda", "group_robust"))
    check_param(eval_fraction, "eval_fraction", "frontier", kind=(int, float), low=0.0, high=1.0,
                low_inclusive=False, high_inclusive=False)
    if isinstance(lambdas, str) or any(
            isinstance(v, bool | str) or not isinstance(v, int | float | np.integer | np.floating)
            for v in lambdas):
        raise InvalidParameterError(PARAM_MESSAGE.format(name="lambdas", owner="frontier",
                                              expected="a non-empty sequence of numbers",
                                              got=lambdas))
    lams = [float(v) for v in lambdas]
    if not lams:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="lambdas", owner="frontier",
                                              expected="a non-empty sequence of numbers",
                                              got=list(lambdas)))
    hi = 1.0 if weight == "group_robust" else np.inf
    bad = [v for v in lams if not (0.0 <= v <= hi)]
    if bad:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="lambdas", owner="frontier", got=bad[0],
            expected="numbers in [0, 1]" if weight == "group_robust" else "numbers >= 0"))
    cls_name, cls = _learner_class(learner)
    if config is None:
        base = learner.config if not isinstance(learner, str | type) else cls.config_class()
    elif isinstance(config, Mapping):
        base = cls.config_class.from_dict(dict(config))
    else:
        base = config
    gattr = group or (dataset.group_attrs[0] if dataset.groups else None)
    if action is None:
        from equicare.fairness._rows import default_action

        action = default_action(dataset.action_space)
    dataset.action_space.parse_action_set(action)  # a set the panel lacks fails before training
    w_state, rng = split_random_state(random_state)
    seeds = spawn_seeds(rng, 2 + len(lams))
    if eval_dataset is None:
        train, evald = dataset.split(eval_fraction, random_state=seeds[0], stratify=gattr)
    else:
        train, evald = dataset, eval_dataset
    # one warning (here, in the caller's process) if held-out groups are suppressed; one error
    # before any training if fewer than two held-out groups can be published
    require_comparison(dataset_group_index(evald, gattr, min_cell=min_cell,
                                           withheld=tuple(suppress)))
    audit_cfg = FairnessAudit(action=action, group=gattr, n_boot=n_boot, alpha=alpha,
                              n_permutations=0, min_cell=min_cell, estimator=estimator,
                              q_model=q_model, with_level_rates=False)
    weights = (bootstrap_weights(evald.n_episodes, n_boot, w_state if w_state is not None
                                 else seeds[1], members=evald.members)  # people who re-enrol
               if n_boot > 0 else None)
    tasks = []
    for lam, seed in zip(lams, seeds[2:], strict=True):
        upd: dict[str, Any] = {"group_attr": gattr, "seed": int(seed) % (2**31 - 1)}
        if weight == "fair_lambda":
            upd.update(fair_lambda=lam, fair_action=action)
        else:
            upd.update(group_robust=lam)
        cfg = replace(base, **upd)
        tasks.append(_Task(learner_cls=cls_name, config=cfg.to_dict(), train=train, eval=evald,
                           audit=audit_cfg.to_dict(), weights=weights, seed=int(seed),
                           torch_threads=torch_threads, suppress=tuple(map(str, suppress))))
    from equicare._progress import progress_task
    from equicare._tasks import iter_map

    results: Any = (iter_map(executor, _run_point, tasks) if executor is not None
                    else (_run_point(t) for t in tasks))
    audits: list[AuditResult] = []
    with progress_task(f"frontier ({cls_name})", len(tasks), enabled=progress) as bar:
        for res_point in results:
            audits.append(res_point)
            bar.update(advance=1)
    _warn_censoring(lams, audits)
    said = _warn_values(lams, audits, estimator)
    rows = []
    for lam, res in zip(lams, audits, strict=True):
        rows.append(_row(res, "policy", lam))
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "pareto"])
    table["pareto"] = pareto_mask(table.value, table.gap_pp, table.worst_group_value)
    behavior = _row(audits[0], BEHAVIOR, float("nan"))
    behavior.pop("lambda")
    return FrontierResult(learner=cls_name, weight=weight, action=audits[0].action,
                          group=audits[0].group, estimator=estimator, table=table,
                          behavior=behavior, audits=audits, n_train_episodes=train.n_episodes,
                          n_eval_episodes=evald.n_episodes,
                          warnings=[] if said is None else [said])


def _warn_values(lams: Sequence[float], audits: Sequence[AuditResult], estimator: str
                 ) -> str | None:
    """One ``SupportWarning`` when the support or weight checks of any point's values warned.

    The points' audits silence them (they would print once per weight) and keep them in their
    diagnostics, which neither the frontier's table nor its JSON shows: on a 5,000-state,
    100-action Garnet panel the table gave a 300-step BC's DR value as 0.805 [0.779, 0.830]
    without a word; ``evaluate`` warns that such a BC (500 steps: DR 0.804, exact value 0.632)
    puts 67% of its mass on actions current practice never takes.
    """
    fired = []
    for lam, res in zip(lams, audits, strict=True):
        d = res.policies["policy"].diagnostics
        c = None if d is None else d.censoring
        own = SUPPORT_PREFIX.format(policy="policy")  # the points' policies are all 'policy'
        msgs = [] if d is None else [m.removeprefix(own) for m in d.messages
                                     if c is None or not m.endswith(c.message())]
        if msgs:
            fired.append((lam, msgs))
    if not fired:
        return None
    msg = MSG_VALUES.format(
        k=len(fired), n=len(lams), estimator=estimator,
        lams=", ".join(f"{lam:g}" for lam, _ in fired), first=f"{fired[0][0]:g}",
        message=" ".join(fired[0][1]))
    warnings.warn(msg, SupportWarning, stacklevel=3)
    return msg


def _warn_censoring(lams: Sequence[float], audits: Sequence[AuditResult]) -> None:
    """One ``DataWarning`` when a named stationary table's censoring check fired at any point.

    The points' audits silence it (it would print once per weight); their diagnostics keep it.
    """
    fired = []
    for lam, res in zip(lams, audits, strict=True):
        d = res.policies["policy"].diagnostics
        c = None if d is None else d.censoring
        if c is not None and c.warn and not c.switched:
            fired.append((lam, c))
    if fired:
        warnings.warn(MSG_CENSORING.format(
            k=len(fired), n=len(lams), lams=", ".join(f"{lam:g}" for lam, _ in fired),
            first=f"{fired[0][0]:g}", message=fired[0][1].message()), DataWarning, stacklevel=3)


def _row(res: AuditResult, name: str, lam: float) -> dict[str, Any]:
    pa = res.policies[name]
    a, o = pa.allocation, pa.outcome
    nan = float("nan")
    row: dict[str, Any] = {"lambda": lam, "gap_pp": 100 * a.difference()}
    lo, hi = a.difference_ci() if a.n_boot else (nan, nan)
    row.update(gap_lower=100 * lo, gap_upper=100 * hi)
    if o is not None:
        has = o.value_reps is not None
        row.update(value=o.overall, worst_group_value=o.worst_group(),
                   worst_group=o.worst_group_label(),
                   # the groups with no value, left out of the worst group (weights too thin,
                   # or withheld to protect them): the behaviour's is over every group, so a
                   # policy's "better" worst group may only be over fewer groups
                   worst_excluded=", ".join(g for g in o.groups if g in o.undefined))
        v = o.overall_ci if has else (nan, nan)
        w = o.worst_group_ci() if has else (nan, nan)
        row.update(value_lower=v[0], value_upper=v[1], worst_lower=w[0], worst_upper=w[1])
    return row
