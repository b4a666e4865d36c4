"""``equicare audit`` and ``equicare frontier``: plain functions plus ``register(app)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from equicare.exceptions import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from equicare.data import TrajectoryDataset
    from equicare.fairness._audit import AuditResult
    from equicare.pipeline._frontier import FrontierResult

from equicare.cli._choices import (
    AuditCI,
    AuditEstimator,
    ExecutorName,
    Level,
    OfflineAlgo,
    QModel,
    UsualCare,
    ValueEstimator,
    Weight,
)
from equicare.cli._utils import (
    PANEL_HELP,
    Address,
    ChunkRows,
    Force,
    Jobs,
    JsonOut,
    Progress,
    Seed,
    StreamExecutor,
    Threads,
    UsualCareOpt,
)
from equicare.fairness._rows import action_label

__all__ = ["parse_policy_specs", "load_policies", "run_audit", "run_frontier", "audit_tables",
           "diagnostics_lines", "q_model_line", "q_check_line", "frontier_table", "register",
           "undefined_values_line"]

OUT_EXISTS = "{path} exists; refusing to overwrite it (pass --force to replace it)."


def _check_out(out: Path | None, force: bool) -> None:
    from equicare.cli._utils import MSG_OUT_IS_FOLDER
    from equicare.exceptions import InvalidParameterError

    if out is not None and out.is_dir():  # the JSON write at the end failed on it
        raise InvalidParameterError(MSG_OUT_IS_FOLDER.format(option="--out", path=out,
                                                             example=out / "result.json"))
    if out is not None and out.exists() and not force:
        raise FileExistsError(OUT_EXISTS.format(path=out))


def parse_policy_specs(specs: list[str] | None) -> dict[str, Path]:
    """``["awr_fair=models/awr", "policy.parquet"]`` -> ``{"awr_fair": ..., "policy": ...}``.

    A spec is ``NAME=PATH`` or ``PATH`` (name: the file or folder name without suffix;
    distilled rules: ``"rules (depth 3) of m_awr"``, :func:`equicare.policy._load.policy_name`).
    """
    from equicare.policy._load import policy_name

    out: dict[str, Path] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, policy_name(spec)
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise InvalidParameterError(f"--policy must be NAME=PATH or PATH; got {spec!r}.")
        if name == "behavior":
            raise InvalidParameterError(
                "--policy: the name 'behavior' is reserved for the logged behaviour.")
        if name in out:
            raise InvalidParameterError(f"--policy: the name {name!r} is given twice.")
        out[name] = Path(path)
    return out


def load_policies(specs: dict[str, Path]) -> dict[str, Any]:
    """Load each policy: any model folder or a policy file (``equicare.policy.load_policy``)."""
    from equicare.policy import load_policy

    return {name: load_policy(path) for name, path in specs.items()}


def _load_data(data: Path, manifest: Path) -> TrajectoryDataset:
    import warnings

    from equicare.data import load_dataset
    from equicare.exceptions import DataWarning

    with warnings.catch_warnings():  # validation warnings are for `equicare validate`
        warnings.simplefilter("ignore", DataWarning)
        return load_dataset(data, manifest)


def run_audit(
    data: Path, *, manifest: Path, policies: list[str] | None = None, group: str | None = None,
    intersect: list[str] | None = None, action: str | None = None, out: Path | None = None,
    force: bool = False, level: str = "step", need: str | None = None, bootstrap: int = 1000,
    n_permutations: int = 1000, alpha: float = 0.05, min_cell: int | None = None,
    estimator: str | None = "wis", q_model: str = "auto", ci_method: str = "basic",
    seed: int = 42, chunk_rows: int | None = None, executor: Any = None,
    provenance: dict[str, Any] | None = None, usual_care: str = "deployed",
    progress: bool = False,
) -> AuditResult:
    """Load data and policies, run the audit, write ``out`` (the audit JSON) atomically.

    With ``chunk_rows`` the panel is streamed (:func:`equicare.fairness.audit_stream`: Poisson
    bootstrap weights keyed by episode id, or by person with the manifest's member; group values
    by importance sampling, or FQE/DR/WDR
    with a linear, stationary or window tabular Q-model fitted from chunk sums), optionally one
    shard per task on ``executor``. ``provenance``: the block written into the audit JSON
    (:func:`equicare.cli._utils.provenance`). ``usual_care``: as
    :class:`~equicare.fairness.FairnessAudit`'s (rows a policy leaves to current practice).
    ``progress``: stage lines and bars on stderr (:class:`equicare._progress.Stages`).

    Raises
    ------
    FileExistsError
        ``out`` exists and ``force`` is not set (checked before any work).
    DataValidationError, ValueError
        Bad data, manifest, policy or option.
    """
    import warnings

    from equicare.exceptions import DataWarning, SmallCellWarning, SupportWarning
    from equicare.fairness._audit import FairnessAudit
    from equicare.fairness._diagnostics import (
        CENSORING_WARNING,
        IN_SAMPLE_WARNING,
        Q_CHECK_WARNING,
    )
    from equicare.utils import MIN_CELL

    _check_out(out, force)
    specs = parse_policy_specs(policies)
    pols = load_policies(specs)
    with warnings.catch_warnings():  # suppression is reported in the tables instead
        warnings.simplefilter("ignore", SmallCellWarning)  # a --min-cell below 11: in warnings
        cfg = FairnessAudit(action=action, group=group, intersect=tuple(intersect or ()),
                            level=level,  # type: ignore[arg-type]
                            need=need, n_boot=bootstrap, alpha=alpha,
                            n_permutations=n_permutations,
                            min_cell=MIN_CELL if min_cell is None else min_cell,
                            estimator=estimator, q_model=q_model,
                            ci_method=ci_method,  # type: ignore[arg-type]
                            usual_care=usual_care)  # type: ignore[arg-type]
        warnings.simplefilter("ignore", SupportWarning)  # in res.warnings, printed by the command
        warnings.filterwarnings("ignore", CENSORING_WARNING, DataWarning)  # likewise
        warnings.filterwarnings("ignore", IN_SAMPLE_WARNING, DataWarning)  # likewise
        warnings.filterwarnings("ignore", Q_CHECK_WARNING, DataWarning)  # likewise
        if chunk_rows is not None:
            from equicare.fairness import audit_stream

            res = audit_stream(data, pols, manifest=manifest, config=cfg, chunk_rows=chunk_rows,
                               random_state=seed, executor=executor, progress=progress)
        else:
            res = cfg.run(_load_data(data, manifest), pols, random_state=seed, progress=progress)
    if out is not None:
        from equicare.cli._utils import write_result_json

        write_result_json(out, res.to_dict(), provenance)
    return res


def _fmt(v: float | None, scale: float = 1.0, digits: int = 2) -> str:
    import math

    if v is None or not math.isfinite(v):
        return "-"
    return f"{scale * v:.{digits}f}"


def _ci(ci: tuple[float, float] | None, scale: float = 1.0, digits: int = 2) -> str:
    import math

    if ci is None or not any(math.isfinite(b) for b in ci):  # no interval (e.g. no Gini)
        return ""
    return f"[{_fmt(ci[0], scale, digits)}, {_fmt(ci[1], scale, digits)}]"


def _val(v: float | None) -> str:
    """A value (reward units): 3 decimals, thousands separated from 1,000 (costs in dollars)."""
    import math

    from equicare.utils import value_text

    return "-" if v is None or not math.isfinite(v) else value_text(v)


def _val_ci(ci: tuple[float, float] | None) -> str:
    import math

    if ci is None or not any(math.isfinite(b) for b in ci):
        return ""
    return f"[{_val(ci[0])}, {_val(ci[1])}]"


def audit_tables(res: AuditResult, estimator: str | None = None) -> list[Table]:
    """Rich tables: allocation by group, a summary per policy, proportional parity by group.

    The first and the third have one column per policy; the third only when need is known.

    ``estimator`` names the OPE estimator of the "value" columns (default: the audit's). A
    suppressed group's episodes read ``<11`` when it has fewer than ``min_cell`` of them and
    ``suppressed`` when it is suppressed to protect another (complementary suppression).
    """
    from rich.table import Table

    from equicare.fairness._allocation import pp_undefined_lines

    names = list(res.policies)
    first = res.policies[names[0]].allocation
    label = action_label(res.action)
    t1 = Table(title=f"{label}: share of steps (rows of a member at a time, %) by {res.group}"
               if first.level == "step" else f"{label}: mean share per episode (%) by "
               f"{res.group}")
    t1.add_column(res.group)
    t1.add_column("episodes", justify="right")
    for n in names:
        t1.add_column(n, justify="right")
    for i, g in enumerate(first.groups):
        cells = []
        for n in names:
            a = res.policies[n].allocation
            if g in a.rate_suppressed:
                cells.append("suppressed")
                continue
            ci = tuple(a.by_group_ci.iloc[i]) if a.n_boot else None
            cells.append(f"{_fmt(a.rates[i], 100)} {_ci(ci, 100)}".strip())
        t1.add_row(g, str(int(first.counts[i])), *cells)
    for g in first.suppressed:
        n_label = f"<{first.min_cell}" if g in first.small else "suppressed"
        t1.add_row(g, n_label, *["suppressed"] * len(names))
    t1.add_row("overall", str(res.n_episodes),
               *["suppressed" if res.policies[n].allocation.overall_suppressed
                 else f"{_fmt(res.policies[n].allocation.overall, 100)}" for n in names],
               style="bold")
    est = estimator or res.settings.get("estimator")
    tag = f" ({str(est).upper()})" if est else ""
    by_person = " by person" if str(res.settings.get("resampling", "")).startswith("people") else ""
    t2 = Table(title="Parity and outcomes (gap in percentage points, "
                     f"{100 * (1 - first.alpha):.0f}% {res.settings.get('ci_method', '')} "
                     f"bootstrap CI{by_person}; values estimated by "
                     + (str(est).upper() if est else "-")
                     + ")")
    for col in ("policy", "parity gap (pp)", "ratio", "permutation p", f"value{tag}",
                f"worst group{tag}", "Gini"):
        t2.add_column(col, justify="left" if col == "policy" else "right")
    import math

    notes: list[str] = []
    for n in names:
        a, o = res.policies[n].allocation, res.policies[n].outcome
        boot = a.n_boot > 0
        if a.rate_suppressed or a.overall_suppressed:  # NaN: rests on a hidden rate
            gap = ratio = "suppressed"
        else:
            gap = f"{_fmt(a.difference(), 100)} {_ci(a.difference_ci() if boot else None, 100)}"
            ratio = f"{_fmt(a.ratio())} {_ci(a.ratio_ci() if boot else None)}"
        p = "-" if a.permutation_p is None else f"{a.permutation_p:.3g}"
        if o is not None:
            ob = o.value_reps is not None
            na = "n/a" if o.undefined else "-"  # undefined group values: "n/a" (caption)
            val = ("n/a" if o.overall_reason is not None else
                   f"{_val(o.overall)} {_val_ci(o.overall_ci if ob else None)}")
            wlabel = o.worst_group_label()
            worst = (na if wlabel is None else f"{_val(o.worst_group())} ({wlabel})")
            gini = (na if o.undefined and not math.isfinite(o.gini()) else
                    f"{_fmt(o.gini(), 1, 3)} {_ci(o.gini_ci() if ob else None, 1, 3)}")
            if o.overall_reason is not None:
                notes.append(f"{n}: value n/a, {o.overall_reason}")
            if o.undefined:
                notes.append(undefined_values_line(n, o.undefined))
        else:
            val = worst = gini = "-"
        notes += pp_undefined_lines(a)
        t2.add_row(n, gap.strip(), ratio.strip(), p, val.strip(), worst, gini.strip())
    if notes:
        t2.caption = "\n".join(notes)
    if not first.has_need:
        return [t1, t2]
    return [t1, t2, _pp_table(res, names)]


def _pp_table(res: AuditResult, names: Sequence[str]) -> Table:
    """Proportional parity by group, one column per policy, as the audit JSON publishes it.

    A group's cell reads ``suppressed`` where the JSON has ``{"suppressed": true}`` (too few
    episodes with or without need, or a hidden rate) and ``n/a`` where it has no value (the
    reason is under the parity table).
    """
    from rich.table import Table

    first = res.policies[names[0]].allocation
    t = Table(title=f"Proportional parity by {res.group} (share of the action / share of "
                    f"need; 1 = in proportion to need)")
    t.add_column(res.group)
    for n in names:
        t.add_column(n, justify="right")
    pps = {n: res.policies[n].allocation.to_dict()["proportional_parity"] for n in names}
    for g in (*first.groups, *first.suppressed):
        cells = []
        for n in names:
            e = pps[n][g]
            cells.append("suppressed" if e.get("suppressed") else "n/a" if e["value"] is None
                         else f"{_fmt(e['value'])} {_ci(e.get('ci'))}".strip())
        t.add_row(g, *cells)
    return t


def undefined_values_line(policy: str, undefined: Mapping[str, str]) -> str:
    """The note under the audit table for a policy's group values that read n/a.

    ``undefined`` maps each such group to its reason (``OutcomeFrame.undefined``). With one
    reason the groups share it; with several each reason follows its own groups: a policy whose
    weights are 0 in one group and of an effective sample size below 11 in three others read
    "every episode's importance weight is 0" for all four.
    """
    by_reason: dict[str, list[str]] = {}
    for group, why in undefined.items():
        by_reason.setdefault(why, []).append(group)
    head = (f"{policy}: no value for {', '.join(undefined)} (left out of the worst group and "
            "Gini)")
    if len(by_reason) == 1:
        return f"{head}, {next(iter(by_reason))}"
    return head + "; " + "; ".join(f"{', '.join(groups)}: {why}"
                                   for why, groups in by_reason.items())


def diagnostics_lines(res: AuditResult) -> list[str]:
    """The lines under the audit's tables: each policy's weight ESS and support (as evaluate's).

    One ``ESS`` line per policy with diagnostics (overall and by group, the ESS its estimator's
    weights have and the Pareto tail index of its trajectory weights, ``n/a`` for a group too
    small to fit), a ``Support`` line when some of its mass is on actions current practice
    (almost) never takes, and a ``Q-model`` line per policy valued with a Q-model: the one
    fitted, with ``--q-model auto`` the candidates' scores, and when ``auto`` used the window
    table in place of the stationary one why (censored stays, as ``evaluate`` says); under it,
    when the Q-model is a table and the panel has numeric states, a note naming them (its
    cells leave them out).
    """
    from equicare.cli._ope import (
        ignored_numeric_line,
        pareto_k_cell,
        pareto_k_clause,
        support_line,
        target_reads_line,
    )

    lines = []
    for name, pa in res.policies.items():
        d = pa.diagnostics
        if d is None:
            continue
        kind = "trajectory" if d.kind == "trajectory" else "per-decision"
        by = ", ".join(f"{g} {d.ess_pct(e) * e.n_episodes / 100:.1f} ({d.ess_pct(e):.2f}%, "
                       f"Pareto k {pareto_k_cell(e.weight_pareto_k)})"
                       for g, e in d.ess_by_group.items())
        lines.append(f"ESS of {name} ({d.estimator}, {kind} weights): "
                     f"{d.ess_pct() * d.ess.n_episodes / 100:.1f} "
                     f"({d.ess_pct():.2f}% of episodes{pareto_k_clause(d.ess.weight_pareto_k)}); "
                     f"by group {by}")
        if d.support is not None and d.support.share_pct > 0:
            lines.append(support_line(d.support, f"Support of {name}", "its"))
        if pa.q_model is not None:
            lines.append(q_model_line(name, pa.q_model, d.censoring))
            qline = None if pa.outcome is None else q_check_line(name, pa.outcome.q_checks)
            if qline:
                lines.append(qline)
            for nline in (ignored_numeric_line(pa.q_model, name),
                          target_reads_line(pa.q_model, name)):
                if nline:
                    lines.append(nline)
    return lines


def q_check_line(name: str, checks: Mapping[str, Any]) -> str | None:
    """The audit's line on a policy's Q-model checked within each group (None when none was).

    ``Q-model of NAME by group (evaluate's check): A, C refitted on their own episodes; B
    pooled; FQE biased in B (its interval includes the bias)``.
    """
    if not checks:
        return None
    own = [g for g, c in checks.items() if c.refitted]
    pooled = [g for g, c in checks.items() if not c.refitted]
    biased = [g for g, c in checks.items() if c.biased]
    parts = []
    if own:
        parts.append(f"{', '.join(own)} refitted on {'its' if len(own) == 1 else 'their'} "
                     "own episodes")
    if pooled:
        parts.append(f"{', '.join(pooled)} pooled")
    if biased:
        parts.append(f"FQE biased in {', '.join(biased)} (DR - FQE significant; an FQE "
                     "interval includes the bias)")
    return f"Q-model of {name} by group (evaluate's check): " + "; ".join(parts)


def q_model_line(name: str, entry: dict[str, Any], censoring: Any = None) -> str:
    """The audit's line about the Q-model of a policy (its JSON ``q_model`` entry).

    ``Q-model of NAME: linear``; with ``auto`` ``..., chosen by auto (scores, lower is better:
    linear 0.0143, tabular_stationary 0.0148)``; when ``auto``'s censoring check replaced the
    stationary table, the check's note (``tabular_stationary replaced by tabular_window: ...``)
    in place of the name.
    """
    switched = censoring is not None and censoring.switched
    line = f"Q-model of {name}: " + (censoring.switch_note() if switched
                                     else str(entry.get("chosen")))
    cand = entry.get("candidates")
    if cand:
        scores = ", ".join(f"{k} {'n/a' if v is None else f'{v:.3g}'}"
                           for k, v in cand.items())
        line += (f"; auto's scores (lower is better): {scores}" if switched
                 else f", chosen by auto (scores, lower is better: {scores})")
    return line


def run_frontier(
    data: Path, *, manifest: Path, learner: str = "awr", lambdas: str = "0,0.5,1,2,5",
    weight: str = "fair_lambda", action: str | None = None, group: str | None = None,
    n_steps: int | None = None, eval_fraction: float = 0.3, estimator: str = "dr",
    q_model: str = "auto", bootstrap: int = 200, executor: str = "local", jobs: int = 1,
    out: Path | None = None, force: bool = False, seed: int = 42, progress: bool = False,
    provenance: dict[str, Any] | None = None,
) -> FrontierResult:
    """Train the learner over the grid of weights through the executor; write ``out`` atomically.

    ``provenance``: the block written into the frontier JSON
    (:func:`equicare.cli._utils.provenance`).
    """
    import warnings

    from equicare.exceptions import SmallCellWarning, SupportWarning
    from equicare.pipeline import get_executor
    from equicare.pipeline._frontier import frontier

    _check_out(out, force)
    try:
        lams = [float(x) for x in lambdas.split(",") if x.strip()]
    except ValueError:
        raise InvalidParameterError(
            f"--lambdas must be comma-separated numbers such as 0,0.5,1; got "
                         f"{lambdas!r}.") from None
    ds = _load_data(data, manifest)
    config = {"n_steps": n_steps} if n_steps is not None else None
    with warnings.catch_warnings():  # suppression is visible in the table and the JSON
        warnings.simplefilter("ignore", SmallCellWarning)
        warnings.simplefilter("ignore", SupportWarning)  # in res.warnings, printed by the command
        res = frontier(ds, learner, lambdas=lams, weight=weight,  # type: ignore[arg-type]
                       action=action, group=group, config=config, eval_fraction=eval_fraction,
                       estimator=estimator, q_model=q_model, n_boot=bootstrap,
                       executor=get_executor(executor, jobs), random_state=seed,
                       progress=progress)
    if out is not None:
        from equicare.cli._utils import write_result_json

        write_result_json(out, res.to_dict(), provenance)
    return res


def frontier_table(res: FrontierResult) -> Table:
    """Rich table of the frontier points (Pareto-efficient rows marked)."""
    from rich.table import Table

    t = Table(title=f"{res.learner} over {res.weight}: {res.estimator} value, parity gap of "
                    f"{res.action}, worst group ({res.n_eval_episodes} held-out episodes)")
    for col in ("lambda", "value", "parity gap (pp)", "worst-group value", "Pareto"):
        t.add_column(col, justify="right")
    for _, r in res.table.iterrows():
        t.add_row(f"{r['lambda']:g}",
                  f"{_val(r['value'])} {_val_ci((r['value_lower'], r['value_upper']))}",
                  f"{_fmt(r['gap_pp'])} {_ci((r['gap_lower'], r['gap_upper']))}",
                  f"{_val(r['worst_group_value'])} "
                  f"{_val_ci((r['worst_lower'], r['worst_upper']))}"
                  f"{_named(r.get('worst_group'))}",
                  "*" if r["pareto"] else "")
    b = res.behavior
    t.add_row("behavior", _val(b.get("value")), _fmt(b.get("gap_pp")),
              f"{_val(b.get('worst_group_value'))}{_named(b.get('worst_group'))}", "",
              style="dim")
    left = [f"lambda = {r['lambda']:g} leaves out {r['worst_excluded']}"
            for _, r in res.table.iterrows()
            if isinstance(r.get("worst_excluded"), str) and r["worst_excluded"]]
    if left:
        t.caption = ("The worst-group value is over the groups that have one: "
                     + "; ".join(left) + " (importance weights too thin to publish, or "
                     "withheld so that those cannot be worked out); the behaviour's is over "
                     + ("every group." if not b.get("worst_excluded") else
                        f"the others (it leaves out {b['worst_excluded']})."))
    return t


def _named(group: object) -> str:
    """`` (group)`` after a worst-group value, "" when no group is named."""
    return f" ({group})" if isinstance(group, str) and group else ""


def register(app: typer.Typer) -> None:
    """Add ``audit`` and ``frontier`` to a Typer app."""

    @app.command()
    def audit(
        data: Annotated[Path, typer.Argument(help=PANEL_HELP)],
        manifest: Annotated[Path, typer.Option("--manifest", "-m",
                                               help="Dataset manifest (TOML).")],
        policy: Annotated[list[str] | None, typer.Option(
            help="Policy to audit beside the logged behaviour: NAME=PATH or PATH, a model "
                 "folder or a policy file; repeat for several.")] = None,
        group: Annotated[str | None, typer.Option(
            help="Group attribute (default: the manifest's first).")] = None,
        intersect: Annotated[list[str] | None, typer.Option(
            help="Attribute crossed with --group (intersectional cells); repeatable.")] = None,
        action: Annotated[str | None, typer.Option(
            help="Audited action set, e.g. modality=home_visit or urgency=urgent|semi_urgent "
                 "(default: any level of the first component but its first).")] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Also write the audit JSON here (docs/contracts.md).")] = None,
        level: Annotated[Level, typer.Option(
            help="Rates over steps, one row of a member at a time (step), or averaged per episode "
                 "(episode).")
        ] = Level.STEP,
        need: Annotated[str | None, typer.Option(
            help="Clinical need rule on states, e.g. 'risk >= 0.7' (default: the manifest's "
                 "need column).")] = None,
        bootstrap: Annotated[int, typer.Option(
            min=0, help="Bootstrap replicates of episodes, or of people with all their "
                        "episodes when the manifest names member.")] = 1000,
        permutations: Annotated[int, typer.Option(
            min=0, help="Permutations of the test of no allocation difference (group labels "
                        "shuffled over people when the manifest names member).")
        ] = 1000,
        estimators: Annotated[AuditEstimator, typer.Option(
            help="OPE estimator of the group values (one), or none.")] = AuditEstimator.WIS,
        q_model: Annotated[QModel, typer.Option(
            help="Q-model of fqe, dr and wdr group values (any of evaluate's; with --chunk-rows "
                 "auto, linear, tabular_stationary or tabular_window). auto uses "
                 "tabular_window in place of tabular_stationary when censored stays bias it, "
                 "as evaluate does. Checked within each group as evaluate does: a tabular or "
                 "linear Q-model is refitted on a group's own episodes where its TD residuals "
                 "stand out (q_check in the JSON).")] = QModel.AUTO,
        min_cell: Annotated[int, typer.Option(
            min=1, help="Suppress groups with fewer episodes. Below 11 the output is not "
                        "privacy-safe: a warning, also in the JSON's warnings.")] = 11,
        ci: Annotated[AuditCI, typer.Option(
            help="Bootstrap interval: basic (reverse percentile) or percentile; either is "
                 "widened to contain its estimate.")] = AuditCI.BASIC,
        usual_care: UsualCareOpt = UsualCare.DEPLOYED,
        chunk_rows: ChunkRows = None,
        executor: StreamExecutor = None,
        address: Address = "auto",
        jobs: Jobs = 2,
        seed: Seed = 42,
        force: Force = False,
        json_out: JsonOut = False,
        progress: Progress = True,
        threads: Threads = "auto",
    ) -> None:
        """Audit allocation and outcomes by group for the behaviour and each policy.

        With --chunk-rows the panel is streamed (group values by is, wis, pdis, wpdis, or fqe,
        dr, wdr with --q-model auto, linear, tabular_stationary or tabular_window fitted from
        chunk sums; Poisson bootstrap keyed by episode id, or by person when the manifest
        names member), on --executor shards too.
        Exception rules (explain's card/model) are audited as deployed: where they leave the
        decision to current practice, the allocation and the value are the clinicians' logged
        actions (--usual-care stored audits the estimate of practice saved with them).

        Example: equicare audit data/panel.parquet --manifest data/manifest.toml --policy
        awr=awr_probs.parquet --group race_ethnicity --action modality=home_visit
        --out audit.json

        Example: equicare audit big/panel/ -m big/manifest.toml --policy awr=models/awr
        --estimators dr --q-model linear --chunk-rows 500000
        """
        from rich.markup import escape

        from equicare.cli._utils import (
            console,
            err_console,
            in_sample_warnings,
            print_json,
            print_table,
            provenance,
            stream_executor,
            user_errors,
            usual_care_line,
        )

        est = None if estimators is AuditEstimator.NONE else estimators.value
        ex = stream_executor(chunk_rows, executor, address, jobs)
        with user_errors():
            try:
                prov = None if out is None else provenance(
                    {"data": data, "manifest": manifest,
                     "policy": list(parse_policy_specs(policy).values())})
                for m in in_sample_warnings(parse_policy_specs(policy), data):
                    err_console.print(f"[yellow]warning:[/] {escape(m)}", highlight=False,
                                      soft_wrap=True)
                res = run_audit(data, manifest=manifest, policies=policy, group=group,
                                intersect=intersect, action=action, out=out, force=force,
                                level=level.value, need=need, bootstrap=bootstrap,
                                n_permutations=permutations, estimator=est, min_cell=min_cell,
                                q_model=q_model.value, ci_method=ci.value, seed=seed,
                                chunk_rows=chunk_rows, executor=ex, provenance=prov,
                                usual_care=usual_care.value, progress=progress)
            finally:
                if ex is not None and hasattr(ex, "shutdown"):
                    ex.shutdown()
        for m in res.warnings:  # the weights and support of the group values, as evaluate's
            err_console.print(f"[yellow]warning:[/] {escape(m)}", highlight=False,
                              soft_wrap=True)
        if json_out:
            print_json(res.to_dict())
            return
        for t in audit_tables(res, estimator=est):
            print_table(t)
        for line in diagnostics_lines(res):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        uline = usual_care_line(res.to_dict())
        if uline:
            console.print(uline, highlight=False, markup=False, soft_wrap=True)
        if res.suppressed:
            from equicare.privacy import small_cells_message

            console.print(small_cells_message(list(res.suppressed), min_cell), highlight=False,
                          markup=False, soft_wrap=True)
        pp_hidden = next(iter(res.policies.values())).allocation.pp_suppressed
        if pp_hidden:  # say why the proportional parity table reads 'suppressed'
            from equicare.fairness._allocation import need_cells_message

            console.print(need_cells_message(pp_hidden, min_cell), highlight=False,
                          markup=False, soft_wrap=True)
        from equicare.fairness._allocation import rate_cells_message

        for pa in res.policies.values():  # hidden rates: say why
            if (msg := rate_cells_message(pa.allocation)) is not None:
                console.print(msg, highlight=False, markup=False, soft_wrap=True)
        if out is not None:
            console.print(f"Wrote {escape(str(out))}", highlight=False)

    @app.command()
    def frontier(
        data: Annotated[Path, typer.Argument(help=PANEL_HELP)],
        manifest: Annotated[Path, typer.Option("--manifest", "-m",
                                               help="Dataset manifest (TOML).")],
        algo: Annotated[OfflineAlgo, typer.Option(help="Offline learner.")] = OfflineAlgo.AWR,
        lambdas: Annotated[str, typer.Option(
            help="Comma-separated fairness weights.")] = "0,0.5,1,2,5",
        weight: Annotated[Weight, typer.Option(
            help="Weight varied: fair_lambda (parity penalty) or group_robust (in [0, 1]).")
        ] = Weight.FAIR_LAMBDA,
        action: Annotated[str | None, typer.Option(
            help="Action set of the parity penalty and gap (default: every level of the first "
                 "action component but its first).")] = None,
        group: Annotated[str | None, typer.Option(help="Group attribute.")] = None,
        steps: Annotated[int | None, typer.Option(
            min=1, help="Gradient steps per learner (default: the learner's).")] = None,
        eval_fraction: Annotated[float, typer.Option(
            help="Share of episodes held out for evaluation.")] = 0.3,
        estimators: Annotated[ValueEstimator, typer.Option(
            help="OPE estimator of the values (one).")] = ValueEstimator.DR,
        q_model: Annotated[QModel, typer.Option(help="Q-model of FQE, DR and WDR.")
                           ] = QModel.AUTO,
        bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap replicates.")] = 200,
        executor: Annotated[ExecutorName, typer.Option(
            help="Where the points train: local (process pool), serial or ray.")
        ] = ExecutorName.LOCAL,
        jobs: Annotated[int, typer.Option(min=1, help="Worker processes (local executor).")
                        ] = 1,
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Also write the frontier JSON here.")] = None,
        seed: Seed = 42,
        force: Force = False,
        progress: Progress = True,
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """Train a learner over a grid of fairness weights; value vs parity vs worst group.

        No streamed mode (no --chunk-rows): the panel is loaded in memory (docs/scale.md).

        Example: equicare frontier data/panel.parquet --manifest data/manifest.toml --algo bc
        --lambdas 0,1,5 --action modality=home_visit --steps 500 --out frontier.json
        """
        from rich.markup import escape

        from equicare.cli._utils import (
            console,
            err_console,
            print_json,
            print_table,
            provenance,
            user_errors,
        )

        with user_errors():
            prov = None if out is None else provenance({"data": data, "manifest": manifest})
            res = run_frontier(data, manifest=manifest, learner=algo.value, lambdas=lambdas,
                               weight=weight.value, action=action, group=group, n_steps=steps,
                               eval_fraction=eval_fraction, estimator=estimators.value,
                               q_model=q_model.value, bootstrap=bootstrap,
                               executor=executor.value, jobs=jobs, out=out, force=force,
                               seed=seed, progress=progress, provenance=prov)
        for m in res.warnings:  # the support and weights of the points' values
            err_console.print(f"[yellow]warning:[/] {escape(m)}", highlight=False,
                              soft_wrap=True)
        if json_out:
            print_json(res.to_dict())
            return
        print_table(frontier_table(res))
        if out is not None:
            console.print(f"Wrote {escape(str(out))}", highlight=False)
