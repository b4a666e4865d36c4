"""The main job: panel -> validate -> dataset -> behaviour -> policy -> OPE -> audit -> report.

Every stage shows progress; the run is registered in the run store before anything is computed
and marked ``finished`` only after its artifacts and metrics are all written. Ctrl-C or SIGTERM
marks it ``interrupted``; an exception marks it ``failed`` (earlier runs are never touched).
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from equicare._progress import progress_task, shared_progress
from equicare.exceptions import InvalidParameterError
from equicare.pipeline._config import (
    ConfigError,
    RunConfig,
    audit_intersect,
    learner_config,
    plan_domain,
)
from equicare.pipeline._executor import Interrupted, sigterm_as_interrupt
from equicare.pipeline._store import USER_ERRORS, Metric, RunStore
from equicare.utils import atomic_write_text

__all__ = ["RunOutcome", "run_pipeline", "load_run_data", "build_learner", "propensity_data",
           "behavior_spec", "input_files"]


@dataclass
class RunOutcome:
    """What a finished run produced."""

    run_id: str
    run_dir: Path
    report: Path
    metrics: list[Metric]
    stage_seconds: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)


def load_run_data(cfg: RunConfig) -> tuple[Any, Any]:
    """Load (or simulate) the panel of a run; returns ``(dataset, simulator or None)``."""
    from equicare.data import load_dataset

    data = cfg["data"]
    sim = None
    if data["path"]:
        ds = load_dataset(
            cfg.resolve(data["path"]), cfg.resolve(data["manifest"]), emit_warnings=False
        )
    else:
        from equicare.sim.care import CareConfig, CareManagementSim

        syn = data["synthetic"]
        sim = CareManagementSim(CareConfig(history_dependence=syn["history_dependence"]))
        panel = sim.generate(
            n_members=syn["members"], n_weeks=syn["weeks"], random_state=syn["seed"]
        )
        ds = panel.dataset()
    if cfg["reward"]:
        ds = ds.with_reward_weights(cfg["reward"])
    return ds, sim


def check_run_inputs(cfg: RunConfig) -> None:
    """Refuse a missing panel file or a manifest that cannot be read, before the store opens.

    A wrong path in ``[data]`` would otherwise create the run store (``equicare.duckdb``)
    first and fail at the first stage. ``ManifestError`` or ``FileNotFoundError`` (exit 2).
    """
    from equicare.data import read_manifest

    data = cfg["data"]
    if not data["path"]:
        return
    path = cfg.resolve(data["path"])
    if not Path(path).exists():
        raise FileNotFoundError(f"{cfg.source}: data.path {data['path']!r} does not exist "
                                f"(resolved against the config's folder: {path}).")
    if data["manifest"]:
        read_manifest(cfg.resolve(data["manifest"]))


def input_files(cfgs: list[RunConfig]) -> dict[str, list[str | Path]]:
    """The files runs with these configs read, by role, for the run's ``inputs.json``.

    ``data`` and ``manifest`` (none for a simulated panel) and ``plan_domain`` (a domain file,
    not a bundled domain), resolved against each config's folder.
    """
    out: dict[str, list[str | Path]] = {"data": [], "manifest": []}
    for cfg in cfgs:
        data = cfg["data"]
        if data["path"]:
            out["data"].append(cfg.resolve(data["path"]))
            out["manifest"].append(cfg.resolve(data["manifest"]))
        if cfg["plan"]["enabled"]:
            domain = Path(plan_domain(cfg["plan"]["domain"], cfg.base_dir))
            if domain.is_file():
                out.setdefault("plan_domain", []).append(domain)
    return out


def build_learner(cfg: RunConfig, seed: int) -> Any:
    """The learner of the run, its config checked by the learner's own config class."""
    from equicare import learn as algos

    algo = cfg["learner"].get("algo", "awr")
    cls = {"bc": algos.BC, "awr": algos.AWR, "cql": algos.CQL}[algo]
    return cls(learner_config(cfg["learner"], seed, cfg.source))


def run_pipeline(
    cfg: RunConfig,
    *,
    store_root: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Run the main job described by ``cfg`` and record it in the run store.

    A user mistake (:data:`~equicare.pipeline._store.USER_ERRORS`, e.g. a config that does
    not fit the data) found before the first stage finished leaves no run in the store; any
    later failure is recorded as ``failed`` with its partial artifacts.

    Parameters
    ----------
    cfg : RunConfig
    store_root : str or Path, optional
        Run store folder (default: ``cfg["output"]["store"]`` relative to the config file).
    progress : bool
        Show Rich progress bars.
    echo : callable, optional
        Receives one line per finished stage (default: silent).
    """
    say = echo or (lambda s: None)
    check_run_inputs(cfg)
    root = Path(store_root) if store_root is not None else cfg.resolve(cfg["output"]["store"])
    store = RunStore(root)
    seed = int(cfg["seed"])
    run_id = store.start(cfg.to_dict(), name=cfg["name"], seed=seed)
    out = store.partial_dir(run_id)
    times: dict[str, float] = {}
    metrics: list[Metric] = []
    state: dict[str, Any] = {"progress": progress}
    try:
        store.write_inputs(run_id, input_files([cfg]))
        with sigterm_as_interrupt(), shared_progress(progress) as _:
            with progress_task("pipeline", total=_n_stages(cfg), enabled=progress) as overall:
                for name, fn in _stages(cfg):
                    overall.update(info=name)
                    t0 = time.perf_counter()
                    fn(cfg, state, out, metrics, seed)
                    times[name] = time.perf_counter() - t0
                    metrics.append(Metric(f"time.{name}", times[name]))
                    overall.update(advance=1)
                    say(f"{name}: done in {times[name]:.1f} s")
        state["times"] = times
        report = _write_report(cfg, state, out, run_id)
        summary = _summary(state)
        final = store.finish(run_id, metrics)
    except (KeyboardInterrupt, Interrupted) as exc:
        store.fail(run_id, "interrupted", str(exc) or "interrupted by the user")
        raise KeyboardInterrupt from None
    except BaseException as exc:
        if isinstance(exc, USER_ERRORS) and not times:  # nothing done: leave no run behind
            store.discard(run_id)
        else:
            store.fail(run_id, "failed", "".join(traceback.format_exception_only(exc)).strip())
        raise
    return RunOutcome(run_id, final, final / report.name, metrics, times, summary)


# --------------------------------------------------------------------------- stages
Stage = Callable[[RunConfig, dict[str, Any], Path, list[Metric], int], None]


def _n_stages(cfg: RunConfig) -> int:
    return len(_stages(cfg))


def _stages(cfg: RunConfig) -> list[tuple[str, Stage]]:
    st: list[tuple[str, Stage]] = [
        ("data", _stage_data),
        ("train", _stage_train),
        ("evaluate", _stage_evaluate),
    ]
    if cfg["ope"]["sensitivity"]:
        st.append(("sensitivity", _stage_sensitivity))
    st.append(("audit", _stage_audit))
    if cfg["explain"]["enabled"]:
        st.append(("explain", _stage_explain))
    if cfg["frontier"]["lambdas"]:
        st.append(("frontier", _stage_frontier))
    if cfg["data"]["synthetic"] and cfg["ope"]["truth_members"] > 0:
        st.append(("truth", _stage_truth))
    if cfg["mediation"]["enabled"]:
        st.append(("mediation", _stage_mediation))
    if cfg["plan"]["enabled"]:
        st.append(("plan", _stage_plan))
    return st


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _stage_data(
    cfg: RunConfig, state: dict[str, Any], out: Path, metrics: list[Metric], seed: int
) -> None:
    ds, sim = load_run_data(cfg)
    _check_groups(cfg, ds)
    _check_panel_keys(cfg, ds)
    summary = ds.summary()  # group counts suppressed; the panel as loaded
    ds = propensity_data(cfg, ds)
    from equicare.data.validate import split_holdout
    from equicare.ope._evaluate import EVALUATE_EPISODES_WHY

    train, test = split_holdout(
        ds, cfg["ope"]["holdout"], "run", "the evaluation (ope.holdout)", EVALUATE_EPISODES_WHY,
        random_state=seed, stratify=ds.group_attrs[0] if ds.groups else None,
        source=cfg.resolve(cfg["data"]["path"]) if cfg["data"]["path"] else None)
    withheld = held_out_withheld(ds, test)
    _check_audit_cells(cfg, test, withheld)
    state.update(dataset=ds, sim=sim, train=train, test=test,
                 withheld=withheld,
                 audit_action=_action_of(cfg, "audit", ds),
                 mediation_action=(_action_of(cfg, "mediation", ds)
                                   if cfg["mediation"]["enabled"] else ""))
    state["data_summary"] = summary
    _write_json(out / "data_summary.json", summary)
    metrics += [
        Metric("data.n_episodes", summary["n_episodes"]),
        Metric("data.n_steps", summary["n_steps"]),
        Metric("data.observed_actions", summary["observed_actions"]),
        Metric("data.train_episodes", train.n_episodes),
        Metric("data.test_episodes", test.n_episodes),
    ]


def _check_audit_cells(cfg: RunConfig, test: Any, withheld: dict[str, set[str]]) -> None:
    """Refuse, before any training, an audit grouping of which fewer than 2 cells publish.

    The audit stage publishes the held-out half's cells with the ``withheld`` ones and their
    complements suppressed (:func:`held_out_withheld`); a grouping left with one cell failed
    there, after the learner had trained (``race x sex`` with 3 members of sex X: 57 s of a
    diabetes run, its partial folder kept as failed). The same cells are decided here.
    """
    from equicare.fairness._groups import (
        dataset_group_index,
        require_comparison,
        withheld_cells,
    )

    if not test.groups:
        return
    a = cfg["audit"]
    attrs = [a["group"] or test.group_attrs[0], *audit_intersect(a)]
    require_comparison(dataset_group_index(
        test, attrs[0], attrs[1:], warn=False,
        withheld=withheld_cells(test, attrs, withheld)))


def held_out_withheld(ds: Any, test: Any) -> dict[str, set[str]]:
    """Per group attribute, the levels the held-out tables must show as suppressed.

    The run publishes each level's episodes in the whole panel (the data table) and the
    held-out half's tables (``evaluate``'s groups, the audit), so a level's training episodes
    are their difference: :func:`equicare.privacy.split_withheld` gives the levels whose
    held-out cell is withheld so that no training cell of 1 to 10 episodes (nor a held-out
    one) can be derived.

    Parameters
    ----------
    ds : TrajectoryDataset
        The whole panel.
    test : TrajectoryDataset
        Its held-out episodes.
    """
    from equicare.privacy import split_withheld

    held_out = np.isin(ds.episode_ids, test.episode_ids)
    return {a: split_withheld(ds.group_labels(a), held_out) for a in ds.group_attrs}


def _action_of(cfg: RunConfig, section: str, ds: Any) -> str:
    """The ``[section] action`` of the run on this panel, checked before any work.

    Empty: every level of the first action component except its first ("any outreach", the
    audit's default set, ``equicare.fairness._rows.default_action``). A set the panel's action
    space does not have is a config error naming the key and the panel's components (raised
    when the data loads, before training).
    """
    from equicare.fairness._rows import default_action

    spec = str(cfg[section]["action"]) or default_action(ds.action_space)
    try:
        ds.action_space.parse_action_set(spec)
    except (ValueError, KeyError) as exc:  # unknown level / unknown component
        raise ConfigError(f"{cfg.source}: [{section}] action {spec!r} does not fit the panel: "
                          f"{exc}") from exc
    return spec


def _check_groups(cfg: RunConfig, ds: Any) -> None:
    """Check that ``[audit] group`` and ``intersect`` name group attributes of the panel.

    Checked when the data loads, before training (the audit, the frontier and the policy card
    use them); a name the panel does not have is a config error naming the key.
    """
    a = cfg["audit"]
    if not ds.groups:
        raise ConfigError(f"{cfg.source}: the panel has no group attributes (manifest "
                          "dataset.groups); the run's fairness audit needs at least one.")
    known = list(ds.group_attrs)
    for key, name in [("group", str(a["group"])),
                      *(("intersect", n) for n in audit_intersect(a))]:
        if name and name not in ds.groups:
            raise ConfigError(f"{cfg.source}: [audit] {key} {name!r} is not a group attribute "
                              f"of the panel; expected one of {known}.")
    if (a["group"] or known[0]) in audit_intersect(a):
        raise ConfigError(f"{cfg.source}: [audit] intersect {a['intersect']!r} must differ "
                          f"from the audited group attribute {a['group'] or known[0]!r}.")


def _check_panel_keys(cfg: RunConfig, ds: Any) -> None:
    """Config keys that name something the panel must have, checked when the data loads.

    ``[mediation] enabled`` needs a mediator column; ``learner.group_attr`` must be a group
    attribute and ``learner.fair_action`` an action set of the panel. Found here, before
    training, a mistake costs no stage and leaves no run behind.
    """
    if cfg["mediation"]["enabled"] and ds.mediators is None:
        raise ConfigError(f"{cfg.source}: mediation.enabled = true needs a mediator column, "
                          "but the panel has none (manifest dataset.mediators); name one there "
                          "or set mediation.enabled = false.")
    lc = cfg["learner"]
    attr = lc.get("group_attr")
    if attr and attr not in ds.groups:
        raise ConfigError(f"{cfg.source}: learner.group_attr {attr!r} is not a group attribute "
                          f"of the panel; expected one of {list(ds.group_attrs)}.")
    if lc.get("fair_action"):
        try:
            ds.action_space.parse_action_set(lc["fair_action"])
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"{cfg.source}: learner.fair_action {lc['fair_action']!r} does "
                              f"not fit the panel: {exc}") from exc


def _stage_train(
    cfg: RunConfig, state: dict[str, Any], out: Path, metrics: list[Metric], seed: int
) -> None:
    learner = build_learner(cfg, seed)
    learner.fit(state["train"], progress=state["progress"])
    learner.save(out / "model")
    state["learner"] = learner
    state["learner_name"] = cfg["learner"].get("algo", "awr")


def propensity_data(cfg: RunConfig, ds: Any) -> Any:
    """The panel with the propensities ``[behavior] model`` asks for (checked when it loads).

    ``auto``: the panel's logged propensities when it has them, else estimated; ``logged``: the
    logged ones, and a panel without them is a config error (before training);
    ``logistic`` / ``lgbm``: estimated with that model even when the panel logs them (the
    logged column is set aside for the whole run).
    """
    model = cfg["behavior"]["model"]
    if model == "logged" and ds.behavior_prob is None:
        raise ConfigError(
            f"{cfg.source}: behavior.model = 'logged' needs the panel's logged propensities, "
            "but it has none (manifest dataset.behavior_prob names their column); use 'auto', "
            "'logistic' or 'lgbm' to estimate them.")
    if model in ("logistic", "lgbm") and ds.behavior_prob is not None:
        return ds.with_behavior_prob(None)
    return ds


def behavior_spec(cfg: RunConfig, seed: int) -> Any:
    """The behaviour model ``evaluate`` fits: ``[behavior] model`` with ``folds`` folds.

    With ``auto`` and ``logged`` it is logistic regression, which estimates only propensities a
    panel does not log (``auto``) and checks support; ``logistic`` and ``lgbm`` are the model
    itself. ``folds`` episodes folds cross-fit it (a fresh, unfitted model on every call);
    ``"auto"`` (the default) lets the model choose, as ``evaluate --behavior-folds auto`` does:
    in-sample on a saturated categorical state, whose thin levels cross-fitting empties.
    """
    from equicare.policy import BehaviorModel

    b = cfg["behavior"]
    m = str(b["model"])
    folds = b["folds"]
    return BehaviorModel(estimator="logistic" if m in ("auto", "logged") else m,
                         n_folds=folds if folds == "auto" else int(folds), random_state=seed)


def _stage_evaluate(
    cfg: RunConfig, state: dict[str, Any], out: Path, metrics: list[Metric], seed: int
) -> None:
    from equicare.ope import evaluate
    from equicare.ope._evaluate import logged_support_check

    test = state["test"]
    o = cfg["ope"]
    probs = state["learner"].action_probs(test)
    state["learned_probs_test"] = probs
    spec = behavior_spec(cfg, seed)
    # the logged-propensity support check, built once for the evaluation and the audit
    state["support_check"] = logged_support_check(test, behavior_model=spec, random_state=seed)
    res = evaluate(
        test,
        probs,
        estimators=o["estimators"],
        q_model=o["q_model"],
        behavior_model=spec,
        bootstrap=o["bootstrap"],
        ci_method=o["ci"],
        truncate=o["truncate"] or None,
        random_state=seed,
        support_check=state["support_check"],
        suppress=state.get("withheld"),  # held-out levels whose training cell is small
    )
    state["evaluation"] = res  # evaluate warned if the overall IS-type values have a low ESS
    _write_json(out / "result.json", res.to_dict())
    name = state["learner_name"]
    b = res.behavior
    metrics.append(Metric("ope.behavior", b.value, ci_low=b.ci[0], ci_high=b.ci[1]))
    for k, e in res.estimates.items():
        metrics.append(Metric(f"ope.{k}.{name}", e.value, ci_low=e.ci[0], ci_high=e.ci[1]))
    ess = res.ess.to_dict()
    for k, v in ess.items():
        if isinstance(v, int | float):
            metrics.append(Metric(f"ess.{k}", float(v)))
    for attr, levels in res.groups.items():
        for lv, g in levels.items():
            if g.suppressed:
                continue
            for k, e in g.estimates.items():
                metrics.append(
                    Metric(
                        f"ope.{k}.{name}.{attr}",
                        e.value,
                        group=str(lv),
                        ci_low=e.ci[0],
                        ci_high=e.ci[1],
                    )
                )


def _stage_sensitivity(
    cfg: RunConfig, state: dict[str, Any], out: Path, metrics: list[Metric], seed: int
) -> None:
    from equicare.ope import sensitivity_analysis

    test = state["test"]
    o = cfg["ope"]
    table = sensitivity_analysis(
        test,
        state["learned_probs_test"],
        q_model=o["q_model"],
        behavior_model=behavior_spec(cfg, seed),
        bootstrap=min(200, max(o["bootstrap"], 50)),
        ci_method=o["ci"],
        truncate=o["truncate"] or None,  # the baseline row is the evaluate stage's DR
        random_state=seed,
    )
    state["sensitivity"] = table
    tmp = out / ".sensitivity.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(out / "sensitivity.csv")


def _stage_audit(
    cfg: RunConfig, state: dict[str, Any], out: Path, metrics: list[Metric], seed: int
) -> None:
    from equicare.fairness import audit
    from equicare.fairness._groups import withheld_cells

    test = state["test"]
    a = cfg["audit"]
    name = state["learner_name"]
    res = audit(
        test,
        {name: state["learned_probs_test"]},
        action=state["audit_action"],
        group=a["group"] or None,
        intersect=audit_intersect(a),
        random_state=seed,
        n_permutations=a["permutations"],
        n_boot=cfg["ope"]["bootstrap"],
        support_check=state.get("support_check"),
        suppress=withheld_cells(test, [a["group"] or test.group_attrs[0],
                                       *audit_intersect(a)], state.get("withheld", {})),
    )
    state["audit"] = res
    _write_json(out / "audit.json", res.to_dict())
    summ = res.summary()
    for pol, row in summ.iterrows():
        if row["parity_gap_pp"] == row["parity_gap_pp"]:  # NaN: a suppressed group rate
            metrics.append(
                Metric(
                    f"audit.parity_gap_pp.{pol}",
                    float(row["parity_gap_pp"]),
                    ci_low=_get(row, "gap_lower"),
                    ci_high=_get(row, "gap_upper"),
                )
            )
        if row["overall_rate"] == row["overall_rate"]:
            metrics.append(Metric(f"audit.rate.{pol}", float(row["overall_rate"])))
        if "gini" in row and row["gini"] == row["gini"]:
            metrics.append(Metric(f"audit.gini.{pol}", float(row["gini"])))
        if "worst_group_value" in row and row["worst_group_value"] == row["worst_group_value"]:
            metrics.append(
                Metric(f"audit.worst_group_value.{pol}", float(row["worst_group_value"]))
            )


def _get(row: Any, key: str) -> float | None:
    v = row.get(key) if hasattr(row, "get") else None
    return None if v is None or v != v else float(v)


def _stage_frontier(
    cfg: RunConfig, state: dict[str, Any], out: Path, metrics: list[Metric], seed: int
) -> None:
    from equicare.fairness import frontier
    from equicare.pipeline._executor import get_executor

    o = cfg["output"]
    fr = frontier(
        state["train"],
        build_learner(cfg, seed),
        lambdas=cfg["frontier"]["lambdas"],
        weight="fair_lambda" if cfg["frontier"]["kind"] == "parity" else "group_robust",
        action=state["audit_action"],
        group=cfg["audit"]["group"] or None,
        eval_dataset=state["test"],
        q_model=cfg["ope"]["q_model"],
        n_boot=min(cfg["ope"]["bootstrap"], 500),
        executor=get_executor(o["executor"], o["jobs"], o["address"]),
        random_state=seed,
        suppress=state.get("withheld", {}).get(
            cfg["audit"]["group"] or state["test"].group_attrs[0], ()),
    )
    state["frontier"] = fr
    table = fr.table
    tmp = out / ".frontier.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(out / "frontier.csv")


def _stage_truth(
    cfg: RunConfig, state: dict[str, Any], out: Path, metrics: list[Metric], seed: int
) -> None:
    sim = state["sim"]
    n = cfg["ope"]["truth_members"]
    weeks = cfg["data"]["synthetic"]["weeks"]
    name = state["learner_name"]
    truth = {}
    pols = [("behavior", sim.behavior_policy()), (name, state["learner"])]
    if "card" in state:  # the distilled rules of the policy card
        pols.append(("rules", state["card"].tree))
    for label, pol in pols:
        with progress_task(f"true value ({label})", total=1, enabled=state["progress"]) as bar:
            r = sim.true_value(pol, n_members=n, n_weeks=weeks, random_state=seed + 7)
            bar.update(advance=1)
        truth[label] = {"value": r.value, "se": r.se, "n_episodes": r.n_episodes}
        metrics.append(
            Metric(
                f"truth.{label}",
                r.value,
                ci_low=r.value - 1.96 * r.se,
                ci_high=r.value + 1.96 * r.se,
            )
        )
    state["truth"] = truth
    _write_json(out / "truth.json", truth)


def _stage_explain(
    cfg: RunConfig, state: dict[str, Any], out: Path, metrics: list[Metric], seed: int
) -> None:
    """Distil the learned policy into rules and write the policy card (``card/``)."""
    from equicare.explain import DistillConfig, ExplainConfig, explain_policy
    from equicare.explain._evidence import weights_q_model
    from equicare.report import write_card

    e = cfg["explain"]
    ecfg = ExplainConfig(
        depth=e["depth"],
        q_model=cfg["ope"]["q_model"],
        bootstrap=e["bootstrap"],
        frontier_bootstrap=min(e["bootstrap"], 50),
        action=state["audit_action"],
        group=cfg["audit"]["group"] or None,
        intersect=tuple(audit_intersect(cfg["audit"])),  # the run report's audit groups
        mode=e["mode"],
        distill=DistillConfig(
            max_depth=e["depth"], q_model=weights_q_model(cfg["ope"]["q_model"]),
            labels=e["labels"], set_splits=e["set_splits"],
            deviation_margin=("auto" if e["deviation_margin"] == "auto"
                              else float(e["deviation_margin"])),
        ),
    )
    card = explain_policy(
        state["train"],
        state["learner"],
        ecfg,
        test=state["test"],
        source={"name": state["learner_name"], "algo": state["learner_name"], "path": "model"},
        random_state=seed,
        suppress=state.get("withheld"),  # held-out levels whose training cell is small
    )
    state["card"] = card
    write_card(card, out / "card")
    fid = card.fidelity
    metrics.append(Metric("explain.agreement", fid["agreement"]))
    metrics.append(Metric("explain.tv", fid["tv"]))
    metrics.append(Metric("explain.n_rules", float(len(card.rules))))
    for label in ("rules", "rules_deployed"):  # deployed: only when some rows defer
        for k, est in (card.value.get(label) or {}).items():
            ci = est.get("ci") or [None, None]
            metrics.append(Metric(f"ope.{k}.{label}", est["value"], ci_low=ci[0],
                                  ci_high=ci[1]))


def _stage_mediation(
    cfg: RunConfig, state: dict[str, Any], out: Path, metrics: list[Metric], seed: int
) -> None:
    """Mediation of the learned policy's effect, with the action collapsed to a binary set.

    The learned policy's probability of the action set (e.g. any home visit) is compared with
    never taking it (a0 = 0), through the manifest's mediator (e.g. ``engaged``).
    """
    from equicare.causal import DynamicMediation, PolicyProbs
    from equicare.causal._data import binarize_actions, collapse_probs, transition_rows

    test = state["test"]
    if test.mediators is None:
        raise InvalidParameterError(
            "mediation.enabled needs a mediator column (manifest dataset.mediators).")
    m = cfg["mediation"]
    binary, mask = binarize_actions(test, state["mediation_action"])
    probs = collapse_probs(state["learned_probs_test"], mask)
    rows, next_rows = transition_rows(binary)      # the transitions mediation reads
    target = PolicyProbs(
        probs=probs[rows], next_probs=probs[next_rows], name=state["learner_name"]
    )
    res = dataclasses.replace(DynamicMediation(n_bootstrap=m["bootstrap"]).estimate(
        binary, target, control=0, random_state=seed
    ), action=state["mediation_action"])
    state["mediation"] = res
    _write_json(out / "mediation.json", res.to_dict())
    mr = res.to_dict()["estimators"].get("mr", {})
    for eff in ("ide", "ime", "dde", "dme", "total"):
        if eff in mr:
            e = mr[eff]
            ci = e.get("ci") or [None, None]
            metrics.append(Metric(f"mediation.mr.{eff}", e["value"], ci_low=ci[0], ci_high=ci[1]))


def _stage_plan(
    cfg: RunConfig, state: dict[str, Any], out: Path, metrics: list[Metric], seed: int
) -> None:
    from equicare.rmab import load_domain, plan

    p = cfg["plan"]
    domain = load_domain(plan_domain(p["domain"], cfg.base_dir), n_arms=p["arms"],
                         random_state=seed)
    res = plan(
        domain,
        budget=p["budget"],
        horizon=p["horizon"],
        policies=tuple(p["policies"]),
        seeds=p["seeds"],
        random_state=seed,
    )
    state["plan"] = res
    _write_json(out / "plan.json", res.to_dict())
    for name, pol in res.to_dict()["policies"].items():
        metrics.append(Metric(f"plan.{name}.mean_reward", pol["mean_reward"]))
        if pol["gini"] is not None:  # undefined with a negative group mean
            metrics.append(Metric(f"plan.{name}.gini", pol["gini"]))


def _summary(state: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    ev = state.get("evaluation")
    if ev is not None:
        s["behavior_value"] = ev.behavior.value
        s["estimates"] = {k: {"value": e.value, "ci": list(e.ci)} for k, e in ev.estimates.items()}
        s["out_of_range"] = list(ev.out_of_range)  # far outside the returns: not values
    if "truth" in state:
        s["truth"] = state["truth"]
    if "audit" in state:
        s["parity_gap_pp"] = {
            k: float(v) for k, v in state["audit"].summary()["parity_gap_pp"].items() if v == v
        }
    return s


def _write_report(cfg: RunConfig, state: dict[str, Any], out: Path, run_id: str) -> Path:
    from equicare.report._build import build_run_report

    atomic_write_text(
        out / "summary.json",
        json.dumps(
            {"run_id": run_id, "stage_seconds": state.get("times", {}), **_summary(state)},
            indent=2,
            default=float,
        ),
    )
    rep = build_run_report(out, run_id=run_id, config=cfg.to_dict())
    return rep.write(out / "report.html")
