"""``equicare evaluate``: a plain function (:func:`run_evaluate`) plus ``register(app)``."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from equicare.exceptions import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from equicare.ope._evaluate import EvaluationResult

from equicare.cli._choices import BehaviorForm, BehaviorModel, EvalCI, QModel, UsualCare
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

__all__ = ["run_evaluate", "load_target_policy", "result_table", "register", "OUT_EXISTS"]

#: Messages of user mistakes (tests match them).
OUT_EXISTS = "{path} exists; refusing to overwrite it (pass --force to replace it)."
Q_MODELS = ("auto", "linear", "gbm", "mlp", "tabular", "tabular_stationary", "tabular_backward",
            "tabular_window")
BEHAVIOR_MODELS = ("logistic", "lgbm")
#: ``--behavior-form``: the ``factored`` argument of :class:`~equicare.policy.BehaviorModel`.
BEHAVIOR_FORMS: dict[str, bool | str] = {"auto": "auto", "chain": True, "flat": False}


def behavior_spec(model: str, folds: int | str = "auto", form: str = "auto", seed: int = 42
                  ) -> Any:
    """``--behavior-model/--behavior-folds/--behavior-form`` as ``evaluate`` takes them.

    ``folds`` is ``"auto"`` (:class:`~equicare.policy.BehaviorModel`'s default: in-sample
    for a saturated categorical state, else 5) or a count (an int or its text).
    The model's name when the other two are their defaults (the numbers stay those of
    ``evaluate(behavior_model=model, random_state=seed)``), else a
    :class:`~equicare.policy.BehaviorModel` seeded as ``evaluate`` seeds its own.

    Raises
    ------
    InvalidParameterError
        An unknown model or form, or folds neither ``"auto"`` nor an int >= 1.
    """
    from equicare.ope._evaluate import nuisance_seed
    from equicare.policy import BehaviorModel as Model

    if model not in BEHAVIOR_MODELS:
        raise InvalidParameterError(
            f"--behavior-model must be one of {', '.join(BEHAVIOR_MODELS)}; got {model!r}.")
    if form not in BEHAVIOR_FORMS:
        raise InvalidParameterError(
            f"--behavior-form must be one of {', '.join(BEHAVIOR_FORMS)}; got {form!r}.")
    n_folds: int | str = folds
    if folds != "auto":
        text = str(folds).strip()
        if isinstance(folds, bool) or not text.isdigit() or int(text) < 1:
            raise InvalidParameterError(
                f"--behavior-folds must be 'auto' or an int >= 1; got {folds!r}.")
        n_folds = int(text)
    if n_folds == "auto" and form == "auto":
        return model
    return Model(estimator=model, factored=BEHAVIOR_FORMS[form], n_folds=n_folds,
                 random_state=nuisance_seed(seed))


def q_model_spec(q_model: str, q_cells: str | None) -> Any:
    """``--q-model`` with ``--q-cells`` as :func:`equicare.ope.evaluate` takes it.

    ``q_cells`` (a comma list of categorical state columns) fixes the tables' cells: of a
    tabular Q-model, or of ``auto``'s tabular candidates (which otherwise choose them).
    """
    if q_cells is None:
        return q_model
    from equicare.ope import FQEConfig
    from equicare.ope._select import candidate_config

    cells = tuple(c.strip() for c in q_cells.split(",") if c.strip())
    if not cells:
        raise InvalidParameterError("--q-cells must name categorical state columns, e.g. "
                                    f"--q-cells diagnosis,severity_band; got {q_cells!r}.")
    if q_model == "auto":
        return FQEConfig(model="auto", cells=cells)
    if q_model == "tabular":
        return FQEConfig(model="tabular", cells=cells)
    if q_model.startswith("tabular_"):
        return replace(candidate_config(q_model), cells=cells)
    raise InvalidParameterError(f"--q-cells applies to the tabular Q-models and auto; got "
                                f"--q-model {q_model}.")


def write_result_json(out: Path, result: dict[str, Any], data: Path, manifest: Path,
                      policy: Path, provenance: dict[str, Any] | None = None) -> None:
    """The result JSON (Contract 3), in memory and streamed alike, written atomically.

    The inputs are named; a value that cannot be computed is ``null`` (NaN is not JSON);
    ``provenance`` is the command's block (:func:`equicare.cli._utils.provenance`).
    """
    from equicare.cli._utils import write_result_json as write

    write(out, {**result, "inputs": {"data": str(data), "manifest": str(manifest),
                                     "policy": str(policy)}}, provenance)


def check_truncate(truncate: float | None) -> None:
    """``--truncate``: a number > 0 (or not given), in memory and streamed alike."""
    if truncate is not None and not truncate > 0:
        raise InvalidParameterError(f"--truncate must be a number > 0; got {truncate!r}.")


def load_target_policy(path: Path) -> Any:
    """Load a Contract-2 policy file or any model folder (``equicare.policy.load_policy``)."""
    from equicare.policy import load_policy

    return load_policy(path)


def _explain_propensity_error(exc: Exception, data: Path, manifest: Path, policy: Path,
                              keys: tuple[str, ...]) -> None:
    """When only the logged propensities are unusable, say which estimators they would bias."""
    from dataclasses import replace

    import numpy as np

    from equicare.data import load_dataset, read_manifest
    from equicare.exceptions import DataValidationError
    from equicare.ope._prepare import check_logged_propensities, target_probabilities

    try:
        man = read_manifest(manifest)
    except DataValidationError:
        return
    if man.behavior_prob is None:
        return
    try:  # the same table without its propensity column: is that the only problem?
        ds = load_dataset(data, replace(man, behavior_prob=None), emit_warnings=False)
    except DataValidationError:
        return
    raw = ds.extras.get(man.behavior_prob)
    if raw is None:
        return
    prob = np.asarray(raw, dtype=np.float64)
    try:
        pe = target_probabilities(ds, load_target_policy(policy))
        check_logged_propensities(prob, pe, ds.actions, keys)
    except DataValidationError as detail:
        if "logged behaviour probability" in str(detail):
            raise DataValidationError(f"{data}: column {man.behavior_prob!r}: {detail}") from exc
    except (ValueError, FileNotFoundError):
        return


def run_evaluate(
    data: Path,
    *,
    manifest: Path,
    policy: Path,
    out: Path | None = None,
    behavior_model: str = "logistic",
    behavior_folds: str = "auto",
    behavior_form: str = "auto",
    estimators: str = "all",
    bootstrap: int = 1000,
    truncate: float | None = None,
    q_model: str = "auto",
    ci: str = "studentized",
    seed: int = 42,
    force: bool = False,
    progress: bool = False,
    q_cells: str | None = None,
    provenance: dict[str, Any] | None = None,
    usual_care: str = "deployed",
) -> tuple[EvaluationResult, list[str]]:
    """Evaluate a policy file or model folder on a panel; write the result JSON when ``out``.

    Parameters
    ----------
    data : Path
        Panel file (CSV, Parquet or DuckDB).
    manifest : Path
        Manifest TOML.
    policy : Path
        Contract-2 policy file or trained model folder.
    out : Path, optional
        Result JSON, written atomically; an existing file is kept unless ``force``.
    behavior_model, estimators, bootstrap, truncate, q_model, ci, seed
        As in :func:`equicare.ope.evaluate`.
    behavior_folds, behavior_form : str
        The behaviour model's cross-fitting folds and form (:func:`behavior_spec`).
    force : bool
    progress : bool
        One line on stderr per stage of the evaluation.
    q_cells : str, optional
        Comma list of the categorical state columns whose combinations are the tables' cells
        (:func:`q_model_spec`).
    provenance : dict, optional
        The ``provenance`` block written into the result JSON.
    usual_care : {"deployed", "stored"}
        As in :func:`equicare.ope.evaluate`.

    Returns
    -------
    result : EvaluationResult
    warnings : list of str
        Warnings raised during the evaluation (support, small cells), for printing.

    Raises
    ------
    DataValidationError
        Bad panel, policy rows missing, probabilities not summing to 1, unusable logged
        propensities (with how many rows and which estimators would be biased).
    ValueError, FileExistsError, FileNotFoundError
        Bad options, an existing ``out`` without ``force``, missing files.
    """
    from equicare.data import load_dataset
    from equicare.data.validate import check_episodes
    from equicare.exceptions import DataValidationError, DataWarning
    from equicare.ope._evaluate import EVALUATE_EPISODES_WHY, evaluate, parse_estimators

    if out is not None and out.exists() and not force:
        raise FileExistsError(OUT_EXISTS.format(path=out))
    if q_model not in Q_MODELS:
        raise InvalidParameterError(
            f"--q-model must be one of {', '.join(Q_MODELS)}; got {q_model!r}.")
    bm_spec = behavior_spec(behavior_model, behavior_folds, behavior_form, seed)
    if ci not in ("percentile", "bca", "studentized"):
        raise InvalidParameterError(
            f"--ci must be 'percentile', 'bca' or 'studentized'; got {ci!r}.")
    check_truncate(truncate)
    keys = parse_estimators(estimators)
    q_spec = q_model_spec(q_model, q_cells)
    with warnings.catch_warnings():  # validation warnings are for `equicare validate`
        warnings.simplefilter("ignore", DataWarning)
        try:
            ds = load_dataset(data, manifest)
        except DataValidationError as exc:
            _explain_propensity_error(exc, data, manifest, policy, keys)
            raise
    check_episodes(ds, 2, "evaluate", EVALUATE_EPISODES_WHY, data)
    pol = load_target_policy(policy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate(ds, pol, estimators=keys, q_model=q_spec, behavior_model=bm_spec,
                       bootstrap=bootstrap, ci_method=ci,  # type: ignore[arg-type]
                       truncate=truncate, random_state=seed, progress=progress,
                       usual_care=usual_care)  # type: ignore[arg-type]
    if out is not None:
        write_result_json(out, res.to_dict(), data, manifest, policy, provenance)
    msg = None
    if res.settings.get("propensity_source") == "logged":  # IS weights rest on that column
        from equicare.ope._propensity_check import propensity_warning

        msg = propensity_warning(ds, str(data))
    return res, warning_texts(caught, msg)


def warning_texts(caught: list[warnings.WarningMessage], extra: str | None) -> list[str]:
    """The texts of an evaluation's warnings, once each, for printing.

    ``extra`` (the logged propensities' plausibility check) after the caught ones, and the
    library's low-ESS warning last, nearest the table it qualifies; deprecations left out.
    """
    from equicare.exceptions import LowESSWarning

    kept = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
    low = [str(w.message) for w in kept if issubclass(w.category, LowESSWarning)]
    rest = [str(w.message) for w in kept if not issubclass(w.category, LowESSWarning)]
    return list(dict.fromkeys([*rest, *([] if extra is None else [extra]), *low]))


def _fmt(x: float) -> str:
    """A number of the table: 4 significant digits, thousands separated from 1,000 to 1e9.

    :func:`~equicare.utils.value_text`: costs in dollars read -10,800, not -1.08e+04.
    """
    from equicare.utils import value_text

    return value_text(x, ".4g")


def _cells(e: Any) -> tuple[str, str, str]:
    """Value, interval and SE of an estimate as table cells; "n/a" when it has none."""
    if getattr(e, "reason", None) is not None or not math.isfinite(e.value):
        return "n/a", "n/a", "n/a"
    return _fmt(e.value), f"[{_fmt(e.ci[0])}, {_fmt(e.ci[1])}]", _fmt(e.se)


#: The table's line under plain IS / PDIS on in-sample estimated propensities (the warning
#: above the table says why: :data:`~equicare.ope._propensity_check.MSG_IN_SAMPLE`).
IN_SAMPLE_CAPTION = ("{names}: biased low, in-sample estimated propensities (weights average "
                     "{mean}, 1 expected); read wis, dr or wdr")
#: ... and under WPDIS when the episodes differ in length.
IN_SAMPLE_WPDIS_CAPTION = ("wpdis: biased, in-sample estimated propensities over episodes of "
                           "different lengths; read wis, dr or wdr")


def _caption(estimates: dict[str, Any], behavior_model: dict[str, Any] | None = None
             ) -> str | None:
    """Lines under the table: why estimates are "n/a", and plain IS / PDIS (WPDIS) biased."""
    why = [f"{k}: n/a, {e.reason}" for k, e in estimates.items()
           if getattr(e, "reason", None) is not None]
    bm = behavior_model or {}
    if bm.get("in_sample_warning"):
        from equicare.ope._propensity_check import in_sample_named

        named = [k for k in in_sample_named(bm["in_sample_warning"]) if k in estimates]
        plain = [k for k in named if k != "wpdis"]
        if plain:
            why.append(IN_SAMPLE_CAPTION.format(names=", ".join(plain),
                                                mean=f"{bm['mean_trajectory_weight']:.3g}"))
        if "wpdis" in named:
            why.append(IN_SAMPLE_WPDIS_CAPTION)
    return "\n".join(why) or None


def support_line(rep: Any, head: str = "Support", whose: str = "the target policy's") -> str:
    """The line under the table: the target's mass on unsupported actions (streamed or not).

    With categorical states, also current practice's own expected share on the same check and
    the points beyond it (the warning's rule); ``audit`` prints it per policy (``head``
    ``Support of NAME``, ``whose`` ``its``).
    """
    line = (f"{head}: {rep.share_pct:.2f}% of {whose} mass on actions current practice "
            "(almost) never takes")
    if rep.uses_categorical:
        line += (f"; practice's own expected share {rep.practice_share_pct:.2f}%, so about "
                 f"{rep.excess_pct:.2f}% beyond it"
                 + (" (over 1%: warned)" if rep.warn else " (warned over 1%)"))
        if not rep.warn and rep.practice_share_pct > 1.0 and rep.share_pct > 1.0:
            line += (". Inconclusive: the categorical levels are too thin to tell an action "
                     "practice takes rarely from one it never takes, so up to about "
                     f"{rep.practice_share_pct:.1f}% of the mass could be off its support "
                     "unseen (docs/ope.md, 'What the baseline cannot see')")
    return line


def resampling_line(settings: dict[str, Any]) -> str | None:
    """The line saying the intervals resample people (manifest ``member``), else None."""
    from equicare.ope._bootstrap import RESAMPLING_PEOPLE

    if settings.get("resampling") != RESAMPLING_PEOPLE:
        return None
    return ("Intervals resample people (member): each bootstrap replicate draws people with all "
            "their episodes.")


def result_table(res: EvaluationResult) -> Table:
    """Rich table of the estimates (value, interval, standard error)."""
    from rich.table import Table

    ci_pct = round(100 * (1 - float(res.settings.get("alpha", 0.05))))
    t = Table(title=f"Off-policy evaluation ({res.n_episodes} episodes, {res.n_steps} steps, "
                    f"gamma {res.gamma:g})")
    t.add_column("estimator")
    t.add_column("value", justify="right")
    t.add_column(f"{ci_pct}% CI", justify="right")
    t.add_column("SE", justify="right")
    t.add_row("behavior (observed)", _fmt(res.behavior.value),
              f"[{_fmt(res.behavior.ci[0])}, {_fmt(res.behavior.ci[1])}]", _fmt(res.behavior.se))
    for k, e in res.estimates.items():
        t.add_row(k, *_cells(e))
    t.caption = _caption(res.estimates, res.behavior_model)
    return t


def run_evaluate_stream(data: Path, *, manifest: Path, policy: Path, estimators: str = "all",
                        bootstrap: int = 1000, truncate: float | None = None, seed: int = 42,
                        q_model: str = "auto", behavior_model: str = "logistic",
                        behavior_folds: str = "auto", behavior_form: str = "auto",
                        ci: str = "studentized", chunk_rows: int = 500_000,
                        executor: Any = None, out: Path | None = None,
                        force: bool = False, q_cells: str | None = None,
                        progress: bool = False, provenance: dict[str, Any] | None = None,
                        usual_care: str = "deployed") -> tuple[Any, list[str]]:
    """``evaluate --chunk-rows``: :func:`equicare.ope.evaluate_stream`, then the result JSON.

    Returns the streamed result and the warnings raised (suppressed small cells), for printing,
    with the logged propensities' plausibility warning (as in memory, computed on the support
    check's random sample of about 20,000 rows of whole episodes).
    Subgroups are every manifest group attribute, as in memory. ``progress`` shows the chunks of
    the estimates pass and, when a subgroup column gets a Q-model per level, those levels.

    ``ci`` is ``studentized`` (one more pass over the chunks for the replicates' standard
    errors) or ``percentile``; ``bca`` is in memory only (a user error here). ``bootstrap=0``
    gives in memory's normal intervals of the jackknife standard errors (the same numbers; one
    more pass over the chunks sums the leave-one-episode-out estimates' deviations), and
    ``ci`` is then unused, as in memory.

    FQE, DR and WDR stream with ``--q-model auto`` (the default: the in-memory choice between
    the stationary table and the linear model, made on a random sample of 1M rows of whole
    episodes, and the window table instead of the stationary one when censored stays bias it,
    as in memory), ``linear``, ``tabular_stationary`` or ``tabular_window`` (fits from sums
    over chunks).
    ``estimators="all"`` means all seven estimators with such a Q-model, and the
    importance-sampling ones (is, wis, pdis, wpdis) with another; naming fqe, dr or wdr with a
    Q-model that does not stream is a user error. A panel without
    logged propensities gets ``behavior_model`` fitted on a random sample of 1M rows of whole
    episodes (:mod:`equicare.ope._stream_behavior`).
    """
    from equicare._progress import ProgressTask, progress_task, shared_progress
    from equicare.ope import evaluate_stream
    from equicare.ope._core import ESTIMATOR_KEYS
    from equicare.ope._evaluate import parse_estimators
    from equicare.ope._stream import STREAM_KEYS
    from equicare.ope._stream_q import STREAM_Q_NAMED

    if out is not None and out.exists() and not force:  # before the work, as in memory
        raise FileExistsError(OUT_EXISTS.format(path=out))
    check_truncate(truncate)
    q_streams = q_model in (*STREAM_Q_NAMED, "auto")
    if estimators.strip() == "all":
        keys: tuple[str, ...] = ESTIMATOR_KEYS if q_streams else STREAM_KEYS
    else:  # an unknown name is the in-memory error; a known one may not stream
        keys = parse_estimators(estimators)
    allowed = ESTIMATOR_KEYS if q_streams else STREAM_KEYS
    bad = [k for k in keys if k not in allowed]
    if bad:
        why = (f"--q-model {q_model} does not stream (its fit needs the whole panel in memory); "
               "pass --q-model auto, linear, tabular_stationary or tabular_window"
               if any(k in ("fqe", "dr", "wdr") for k in bad) and not q_streams
               else f"with --chunk-rows the estimators are {', '.join(ESTIMATOR_KEYS)}")
        raise InvalidParameterError(
            f"--estimators {','.join(bad)} cannot stream: {why} (see docs/scale.md).")
    if ci == "bca" and bootstrap > 0:  # --bootstrap 0: jackknife intervals, --ci unused
        raise InvalidParameterError(
            "--ci bca is in memory only (its acceleration needs every leave-one-episode-out "
            "estimate); with --chunk-rows use --ci studentized (the default) or percentile.")
    q_spec = q_model_spec(q_model, q_cells)  # --q-cells checked as in memory, streaming or not
    if not q_streams:
        q_spec = "linear"
    with contextlib.ExitStack() as stack, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack.enter_context(shared_progress(enabled=progress))
        chunks = stack.enter_context(progress_task("Streamed estimates", None, enabled=progress,
                                                   info="chunks"))
        per_level: list[ProgressTask] = []

        def level_done(done: int, total: int) -> None:  # opened when a column needs it
            if not per_level:
                per_level.append(stack.enter_context(progress_task(
                    "Q-model per level", total, enabled=progress)))
            per_level[0].update(completed=done)

        res = evaluate_stream(data, load_target_policy(policy), manifest=manifest,
                              estimators=keys, q_model=q_spec,
                              behavior_model=behavior_spec(behavior_model, behavior_folds,
                                                           behavior_form, seed),
                              n_boot=bootstrap, ci_method=ci,
                              truncate=truncate, random_state=seed, chunk_rows=chunk_rows,
                              executor=executor,
                              progress=lambda k: chunks.update(completed=k),
                              level_progress=level_done, usual_care=usual_care)
    if out is not None:
        write_result_json(out, res.to_dict(), data, manifest, policy, provenance)
    check = res.propensity_check
    msg = None
    if check is not None:  # as in memory, on the support check's sample
        from equicare.data._manifest import manifest_of

        column = manifest_of(manifest).behavior_prob
        msg = None if not column else check.message(str(data), column)
    return res, warning_texts(caught, msg)


def stream_table(res: Any) -> Table:
    """The streamed result as a table: behaviour, then each estimator with its interval."""
    from rich.table import Table

    how = ("normal intervals from the jackknife standard errors" if res.n_boot == 0
           else f"{res.n_boot} Poisson bootstrap replicates, {res.ci_method} intervals")
    t = Table(title=f"Off-policy estimates (streamed: {res.n_episodes:,} episodes, "
                    f"{res.n_steps:,} steps, {how})")
    for col in ("estimator", "value", "95% CI", "SE"):
        t.add_column(col)
    b = res.behavior
    t.add_row("behaviour (on-policy mean)", _fmt(b.value), f"[{_fmt(b.ci[0])}, {_fmt(b.ci[1])}]",
              _fmt(b.se))
    for k, e in res.estimates.items():
        t.add_row(k, *_cells(e))
    t.caption = _caption(res.estimates, res.behavior_model)
    return t


def groups_line(groups: dict[str, dict[str, Any]]) -> str | None:
    """One line: the subgroup attributes, their levels and how many were suppressed."""
    if not groups:
        return None
    items = []
    for attr, levels in groups.items():
        small = sum(bool(g.suppressed) for g in levels.values())
        items.append(f"{attr} {len(levels)} level{'s' if len(levels) != 1 else ''}"
                     + (f" ({small} suppressed: fewer than 11 episodes, or revealing such a "
                        "level by difference)" if small else ""))
    return ("Subgroups, every estimator within each level (in the result JSON, --out or "
            "--json): " + ", ".join(items))


def pareto_k_cell(k: float) -> str:
    """A group's Pareto tail index for a table or line: ``0.312``, ``0.83 (over 0.5)``, ``n/a``.

    ``n/a`` when the group's tail holds too few weights to fit (fewer than 100 episodes, or
    fewer than 20 distinct tail weights; the result JSON says which).
    """
    if not math.isfinite(k):
        return "n/a"
    return f"{k:.3g}" + (" (over 0.5)" if k > 0.5 else "")


def pareto_groups_line(groups: dict[str, dict[str, Any]]) -> str | None:
    """One line: the Pareto tail index of each published subgroup level's trajectory weights.

    Suppressed levels are left out; None without subgroups or published levels.
    """
    items = []
    for attr, levels in groups.items():
        shown = [f"{lv} {pareto_k_cell(g.pareto_k)}" for lv, g in levels.items()
                 if not g.suppressed]
        if shown:
            items.append(f"{attr} " + ", ".join(shown))
    if not items:
        return None
    return ("Pareto k of the trajectory weights by subgroup (above 0.5: no finite variance "
            "there; n/a: too few tail weights to fit): " + "; ".join(items))


def truncated_ess(ess: float | None, truncate: float | None, n_episodes: int) -> str:
    """The ESS line's clause for the truncated weights ("" without truncation)."""
    if ess is None or truncate is None:
        return ""
    return (f", truncated at {truncate:g}: {ess:.1f} "
            f"({100 * ess / max(n_episodes, 1):.2f}%)")


def weight_mean_clause(mean: float) -> str:
    """The ESS line's clause for the trajectory weights' mean ("" when not known).

    The weights average 1 in expectation (:func:`equicare.ope._ess.weight_mean_off`).
    """
    return f", weights average {mean:.3g} (1 expected)" if math.isfinite(mean) else ""


def pareto_k_clause(k: float) -> str:
    """The ESS line's clause on the trajectory weights' Pareto tail index (empty if unknown).

    Above 0.5 the weights have no finite variance (:func:`equicare.ope._ess.pareto_k_off`).
    """
    if not math.isfinite(k):
        return ""
    return f", Pareto k {k:.3g}" + (" (over 0.5: no finite variance)" if k > 0.5 else "")


def q_model_line(res: EvaluationResult) -> str | None:
    """One line: the Q-model used, and with ``auto`` every candidate's score."""
    q = res.q_model
    if not q:
        return None
    chosen = q.get("chosen", "?")
    cands = q.get("candidates")
    if not cands:
        line = f"Q-model: {chosen}"
    elif not q.get("n_folds"):
        line = f"Q-model: {chosen} (auto; the only applicable candidate)"
    else:
        parts = [f"{n} {v:.3g}" if v is not None else f"{n} skipped" for n, v in cands.items()]
        line = (f"Q-model: {chosen} (auto; estimated squared value bias, lower is better: "
                + ", ".join(parts) + ")")
        scored = {n: v for n, v in cands.items() if v is not None}
        lowest = min(scored, key=lambda n: scored[n]) if scored else chosen
        if lowest != chosen and q.get("reference") == chosen:
            from equicare.ope._select import AUTO_N_SE

            line += (f"; {chosen} is the reference and is kept: {lowest}'s estimated bias is "
                     f"not smaller by more than {AUTO_N_SE:g} standard errors")
    cens = q.get("censoring") or {}
    if q.get("replaced") and cens.get("switched_to_window"):
        line += (f"; {q['replaced']['criterion_choice']} replaced by {chosen}: "
                 f"{cens['censored_episodes_pct']:.1f}% of the episodes are censored and the "
                 f"two tables differ by {cens['difference_pct']:+.1f}%")
    choice = q.get("cell_choice") or {}
    if choice.get("dropped"):
        tests = choice.get("tests", {})
        why = ", ".join(f"{c} {tests[c]['gain']:+.3g} (SE {tests[c]['se']:.2g})"
                        for c in choice["dropped"] if c in tests)
        line += (f". The tables pool over {', '.join(choice['dropped'])}: given "
                 f"{', '.join(choice['columns'])} and the action it does not improve the held-out "
                 f"log-likelihood of the next state, end and reward (per episode: {why})")
    return line + per_level_sentence(q)


def ignored_numeric_line(q: Mapping[str, Any] | None, name: str | None = None) -> str | None:
    """The note under the Q-model line when a table's cells leave out numeric states, or None.

    ``q`` is a result's ``q_model`` (``evaluate``'s, streamed or not, or an audit policy's
    entry); ``name`` the audit's policy.
    """
    cols = (q or {}).get("ignored_numeric")
    if not cols:
        return None
    of = f" of {name}" if name else ""
    return (f"Note: the cells of the Q-table{of} (categorical states, and any numeric state's bins "
            f"that auto kept) ignore the numeric state columns {', '.join(cols)}: where they "
            "drive both the actions and the "
            "outcomes, its FQE, DR and WDR values can be biased beyond their intervals; compare "
            "--q-model gbm (in memory), which uses them, or binned copies of them declared as "
            "categorical states (docs/ope.md, \"Tables and numeric states\").")


def _read_where(read: Mapping[str, Any]) -> str:
    """Where the target's probabilities change: a numeric column's edges, or a column's levels."""
    if read.get("levels"):
        return "its probabilities differ between its levels"
    return f"its probabilities change at {'/'.join(f'{e:g}' for e in read['edges'])}"


def target_reads_line(q: Mapping[str, Any] | None, name: str | None = None) -> str | None:
    """The note when ``auto``'s table pools a numeric state the target policy reads, or None.

    From ``q_model["numeric_bins"]["target_reads"]`` (streamed: under ``"selection"``;
    :func:`equicare.ope._select.target_read_bins`): the columns whose bins were not added.
    ``name``: the audit's policy.
    """
    q = q or {}
    bins = q.get("numeric_bins") or (q.get("selection") or {}).get("numeric_bins") or {}
    pooled = {c: r for c, r in (bins.get("target_reads") or {}).items() if not r["added"]}
    if not pooled or not str(q.get("chosen", "")).startswith("tabular"):
        return None
    what = ", ".join(f"{c} ({_read_where(r)}; "
                     f"reward gain per episode {r['reward_gain']:.3g}, SE {r['se']:.2g}"
                     + (f"; TD-target gain {r['value_gain']:.3g}, SE {r['value_se']:.2g})"
                        if r.get("value_gain") is not None else ")")
                     for c, r in pooled.items())
    of = f" of {name}" if name else ""
    return (f"Note: the Q-table{of} pools {what}, which the target policy reads within its cells. "
            "Its bins (or levels) lowered neither the held-out error of the mean reward nor that "
            "of the TD target (reward + discounted value of the next cell), so auto left them "
            "out; if it drives later outcomes, the FQE, DR and WDR values can be biased: "
            "compare --q-model gbm (docs/ope.md, \"Tables and numeric states\").")


def per_level_sentence(q: dict[str, Any]) -> str:
    """The subgroup columns refitted per level (``q_model["per_level"]``), or ``""``."""
    out = ""
    for col, lv in (q.get("per_level") or {}).items():
        how = ("the policy asked at every state with the level set" if lv["policy"] ==
               "counterfactual" else "the level's own target probabilities per cell, the "
               "pooled ones where the level never goes")
        out += (f". The target policy reads {col}: the subgroups by {col} refit the Q-model "
                f"per level with that level's policy ({how})")
    return out


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to a Typer app."""

    @app.command()
    def evaluate(
        data: Annotated[Path, typer.Argument(help=PANEL_HELP)],
        manifest: Annotated[Path, typer.Option("--manifest", "-m",
                                               help="Manifest TOML naming each column's role.")],
        policy: Annotated[Path, typer.Option(
            help="Target policy: a policy file (.parquet/.csv) or a model folder.")],
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Also write the result JSON here (docs/contracts.md).")] = None,
        behavior_model: Annotated[BehaviorModel, typer.Option(
            help="Propensity model (always fitted for support checks).")
        ] = BehaviorModel.LOGISTIC,
        behavior_folds: Annotated[str, typer.Option(
            help="Cross-fitting folds of the propensity model over episodes: an int (1: "
                 "in-sample) or auto (1 when the state is mostly one-hot categorical levels, "
                 "whose thin levels cross-fitting empties; else 5; docs/ope.md, 'Estimated "
                 "propensities').")] = "auto",
        behavior_form: Annotated[BehaviorForm, typer.Option(
            help="Propensity model over a multi-component action: chain (one classifier per "
                 "component, each given the earlier ones), flat (one over the joint action: "
                 "per-state joint choices) or auto (chain with several components, flat when "
                 "the state is mostly one-hot categorical levels).")
        ] = BehaviorForm.AUTO,
        estimators: Annotated[str, typer.Option(
            help="'all' or a comma list of is, wis, pdis, wpdis, fqe, dr, wdr, bandit_dr.")
        ] = "all",
        bootstrap: Annotated[int, typer.Option(
            min=0, help="Bootstrap replicates: of episodes, or of people with all their "
                        "episodes when the manifest names member (with --chunk-rows too: "
                        "Poisson weights keyed by the person). 0: normal intervals from the "
                        "leave-one-episode-out (person-out) jackknife standard error, --ci "
                        "unused; with --chunk-rows too, the same numbers (by episode: it "
                        "warns when the manifest names member).")
                             ] = 1000,
        truncate: Annotated[float | None, typer.Option(
            help="Cap on the cumulative importance weights (default: none).")] = None,
        q_model: Annotated[QModel, typer.Option(
            help="Q-model of FQE, DR and WDR: auto (chosen by cross-fitted held-out bias, every "
                 "candidate's score reported) or a fixed one.")] = QModel.AUTO,
        ci: Annotated[EvalCI, typer.Option(
            help="Bootstrap interval: studentized (symmetric bootstrap-t, each replicate "
                 "studentised by its own delta-method SE), percentile, or bca (in memory "
                 "only); unused with --bootstrap 0.")] = EvalCI.STUDENTIZED,
        q_cells: Annotated[str | None, typer.Option(
            help="Comma list of the categorical state columns whose combinations are the "
                 "Q-tables' cells (default: with several columns, those that change the "
                 "dynamics given the others, for auto and a fixed tabular model alike).")] = None,
        usual_care: UsualCareOpt = UsualCare.DEPLOYED,
        chunk_rows: ChunkRows = None,
        executor: StreamExecutor = None,
        address: Address = "auto",
        jobs: Jobs = 2,
        seed: Seed = 42,
        force: Force = False,
        progress: Progress = True,
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """Estimate a policy's value from logged data with IS, WIS, PDIS, WPDIS, FQE, DR and WDR.

        Prints estimates, 95% bootstrap intervals, effective sample sizes and support
        diagnostics; --out also writes them (with per-group results) as the result JSON.
        Exception rules (explain's card/model) are valued as deployed: where they leave the
        decision to current practice the clinicians decide (--usual-care stored values the
        estimate of practice saved with them instead); the output says which, and the share
        of rows left to practice.
        With --chunk-rows the panel is streamed (Poisson bootstrap keyed by episode id, or by
        person when the manifest names member), on --executor shards too: IS, WIS, PDIS and
        WPDIS, plus FQE, DR and WDR with --q-model
        auto, linear, tabular_stationary or tabular_window (auto chooses between linear and
        tabular_stationary on a random sample of 1M rows of whole episodes, and takes
        tabular_window instead of tabular_stationary when censored stays bias it, as in
        memory). Without logged propensities the behaviour model is fitted on the same kind
        of sample.

        Example: equicare evaluate data/panel.parquet --manifest data/manifest.toml
        --policy awr_probs.parquet --bootstrap 1000 --truncate 50 --out result.json

        Example: equicare evaluate big/panel/ -m big/manifest.toml --policy models/awr
        --chunk-rows 500000 --q-model linear --executor ray --address HOST:6379
        """
        from rich.markup import escape

        from equicare.cli._utils import (
            check_out_path,
            console,
            err_console,
            in_sample_warnings,
            print_json,
            provenance,
            stream_executor,
            user_errors,
            usual_care_line,
        )

        check_out_path(out, force, file=True)
        ex = stream_executor(chunk_rows, executor, address, jobs)
        prov = None if out is None else provenance(
            {"data": data, "manifest": manifest, "policy": policy})
        for m in in_sample_warnings({str(policy): policy}, data):
            err_console.print(f"[yellow]warning:[/] {escape(m)}", highlight=False,
                              soft_wrap=True)
        if chunk_rows is not None:
            with user_errors():
                try:
                    sres, smsgs = run_evaluate_stream(
                        data, manifest=manifest, policy=policy, estimators=estimators,
                        bootstrap=bootstrap, truncate=truncate, seed=seed,
                        q_model=q_model.value, behavior_model=behavior_model.value,
                        behavior_folds=behavior_folds, behavior_form=behavior_form.value,
                        ci=ci.value, chunk_rows=chunk_rows, executor=ex, out=out, force=force,
                        q_cells=q_cells, progress=progress, provenance=prov,
                        usual_care=usual_care.value)
                finally:
                    if ex is not None and hasattr(ex, "shutdown"):
                        ex.shutdown()
            for m in smsgs:
                err_console.print(f"[yellow]warning:[/] {escape(' '.join(m.split()))}",
                                  highlight=False, soft_wrap=True)
            if json_out:
                print_json(sres.to_dict())
                return
            from equicare.cli._utils import print_table

            print_table(stream_table(sres))
            rline = resampling_line(sres.settings)  # people (member), as in memory
            if rline:
                console.print(rline, highlight=False)
            if sres.q_model is not None:
                cc = sres.q_model.get("cell_choice") or {}
                pooled = (f". The table pools over {', '.join(cc['dropped'])}: it does not "
                          f"change the dynamics given {', '.join(cc['columns'])} (tested on "
                          f"{cc['sample_rows']:,} rows of sampled episodes)"
                          if cc.get("dropped") else "")
                sel = sres.q_model.get("selection")
                how = ""
                if sel and not sel.get("n_folds"):
                    how = "; auto: the only applicable candidate"
                elif sel:
                    scores = ", ".join(f"{n} {v:.3g}" for n, v in sel["candidates"].items()
                                       if v is not None)
                    how = (f"; chosen by auto on {sel['sample_rows']:,} rows of sampled "
                           f"episodes, estimated squared value bias {scores}")
                    cs = sel.get("cell_choice") or {}
                    if cs.get("dropped"):
                        pooled = (f". The table pools over {', '.join(cs['dropped'])}: it does "
                                  f"not change the dynamics given {', '.join(cs['columns'])}")
                fit = ("window table, backward over the steps" if sres.q_model["solver"] ==
                       "window" else f"LSTD, solver {sres.q_model['solver']}")
                cens = sres.q_model.get("censoring") or {}
                switched = (f"; {sres.q_model['replaced']['criterion_choice']} replaced by "
                            f"{sres.q_model['chosen']}: {cens['censored_episodes_pct']:.1f}% of "
                            "the episodes are censored and the two tables differ by "
                            f"{cens['difference_pct']:+.1f}%"
                            if sres.q_model.get("replaced") and cens.get("switched_to_window")
                            else "")
                console.print(escape(f"Q-model: {sres.q_model['chosen']} (streamed fit, "
                                     f"{fit}; {sres.q_model['bootstrap']}{how}){switched}"
                                     f"{pooled}{per_level_sentence(sres.q_model)}"),
                              highlight=False)
                for nline in (ignored_numeric_line(sres.q_model),
                              target_reads_line(sres.q_model)):
                    if nline:
                        console.print(escape(nline), highlight=False)
                from equicare.ope._evaluate import FQE_VARIANCE_ONLY, fqe_interval_line

                if sres.q_model.get("fqe_interval") == FQE_VARIANCE_ONLY:
                    console.print(fqe_interval_line(), highlight=False)
            else:
                skipped = [k for k in ("fqe", "dr", "wdr") if k not in sres.estimates]
                if skipped and estimators.strip() == "all":
                    console.print(f"Not estimated: {', '.join(skipped)} (--q-model "
                                  f"{q_model.value} does not stream; pass --q-model auto, linear, "
                                  "tabular_stationary or tabular_window for them)",
                                  highlight=False)
            console.print(f"ESS: trajectory {sres.ess:.1f} "
                          f"({100 * sres.ess / sres.n_episodes:.2f}% of episodes)"
                          f"{truncated_ess(sres.ess_truncated, truncate, sres.n_episodes)}"
                          f"{weight_mean_clause(sres.weight_mean)}"
                          f"{pareto_k_clause(sres.weight_pareto_k)}; "
                          f"{sres.n_chunks} chunks", highlight=False)
            if sres.support is not None:
                console.print(support_line(sres.support), highlight=False)
            uline = usual_care_line(sres.settings)
            if uline:
                console.print(escape(uline), highlight=False)
            for gline in (groups_line(sres.groups), pareto_groups_line(sres.groups)):
                if gline:
                    console.print(escape(gline), highlight=False)
            if out is not None:
                console.print(f"Wrote {escape(str(out))}", highlight=False)
            return
        with user_errors():
            res, msgs = run_evaluate(
                data, manifest=manifest, policy=policy, out=out,
                behavior_model=behavior_model.value, behavior_folds=behavior_folds,
                behavior_form=behavior_form.value, estimators=estimators, bootstrap=bootstrap,
                truncate=truncate, q_model=q_model.value, ci=ci.value, seed=seed, force=force,
                progress=progress, q_cells=q_cells, provenance=prov,
                usual_care=usual_care.value)
        for m in msgs:
            err_console.print(f"[yellow]warning:[/] {escape(' '.join(m.split()))}",
                              highlight=False, soft_wrap=True)
        if json_out:
            print_json(res.to_dict())
            return
        from equicare.cli._utils import print_table

        print_table(result_table(res))
        rline = resampling_line(res.settings)
        if rline:
            console.print(rline, highlight=False)
        qline = q_model_line(res)
        if qline:  # candidate names carry their cells in brackets: not Rich markup
            console.print(escape(qline), highlight=False)
        for nline in (ignored_numeric_line(res.q_model), target_reads_line(res.q_model)):
            if nline:
                console.print(escape(nline), highlight=False)
        from equicare.ope._evaluate import FQE_VARIANCE_ONLY, fqe_interval_line

        if res.settings.get("fqe_interval") == FQE_VARIANCE_ONLY:
            console.print(fqe_interval_line(), highlight=False)
        e = res.ess
        console.print(f"ESS: trajectory {e.trajectory:.1f} ({e.trajectory_pct:.2f}% of episodes)"
                      f"{truncated_ess(e.trajectory_truncated, e.truncate, e.n_episodes)},"
                      f" per-decision {e.per_decision_pct:.2f}%"
                      f"{weight_mean_clause(e.weight_mean)}"
                      f"{pareto_k_clause(e.weight_pareto_k)}", highlight=False)
        if res.support is not None:
            console.print(support_line(res.support), highlight=False)
        uline = usual_care_line(res.settings)
        if uline:
            console.print(escape(uline), highlight=False)
        for gline in (groups_line(res.groups), pareto_groups_line(res.groups)):
            if gline:
                console.print(escape(gline), highlight=False)
        if out is not None:
            console.print(f"Wrote {escape(str(out))}", highlight=False)
