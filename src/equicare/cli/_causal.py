"""Command ``equicare mediate``: plain functions plus a ``register(app)`` for the Typer app."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from equicare.causal._data import (
    MediationData,
    PolicyProbs,
    binarize_actions,
    collapse_probs,
    from_dataset,
    require_mediators,
)
from equicare.causal._dynamic import (
    ESTIMATORS,
    DynamicMediation,
    FewTransitionsError,
    TooManyFeaturesError,
    coarser_bases,
)
from equicare.causal._result import EFFECT_KEYS, MEDIATION_UNITS, MediationResult
from equicare.cli._choices import Basis, UsualCare
from equicare.cli._utils import (
    OUT_EXISTS,
    PANEL_HELP,
    Force,
    JsonOut,
    Progress,
    Seed,
    Threads,
    write_result_json,
)
from equicare.exceptions import DataValidationError, InvalidParameterError

__all__ = ["mediate_dataset", "mediate_path", "policy_from_file", "write_result",
           "mediation_table", "per_stay_table", "register", "parse_control",
           "parse_estimators", "MEDIATION_UNITS"]

#: A fixed control on a multi-level action (tests match it).
CONTROL_NEEDS_ACTION = ("--control {control} is a fixed action, which needs a binary action, but "
                        "this panel has {n_actions} actions: pass --action COMPONENT=LEVEL "
                        "(e.g. --action {example}) to compare the policy's use of that action "
                        "set against never using it, or give --control a policy file.")


#: ``--usual-care`` of ``mediate``: evaluate's and audit's option, with what it means here.
MediateUsualCare = Annotated[UsualCare, typer.Option(
    "--usual-care",
    help="States the policy leaves to current practice (exception rules' 'otherwise, as "
         "current practice'): deployed (practice decides there, as evaluate and audit value "
         "them: importance ratio 1, the logged next action in the Bellman targets, the fitted "
         "behaviour model where the mediator law needs practice's whole distribution) or "
         "stored (the estimate of practice saved with the rules, which predict outputs). "
         "Example: --usual-care stored")]


#: What to change when a fold has too few transitions for the basis (CLI option names).
FEW_TRANSITIONS_CLI_ADVICE = "Use {options}, or more data."


def _few_transitions_advice(err: FewTransitionsError, ds: Any, action: str | None,
                            n_folds: int) -> str:
    """The CLI's advice for :class:`FewTransitionsError`: only options that would help."""
    options = []
    if action is None and err.n_actions > 2:
        options.append(f"fewer actions (--action COMPONENT=LEVEL, e.g. --action "
                       f"{_action_example(ds)}, with --control 0)")
    bases = coarser_bases(err.basis)
    if bases:
        options.append("a coarser basis (" + " or ".join(f"--basis {b}" for b in bases) + ")")
    if isinstance(err, TooManyFeaturesError):  # memory: neither folds nor data would help
        return f"Use {' or '.join(options) or 'fewer actions'}."
    if n_folds > 1:
        options.append("fewer folds (--folds 1)")
    return FEW_TRANSITIONS_CLI_ADVICE.format(options=", ".join(options) or "fewer actions")


def _action_example(ds: Any) -> str:
    comps = getattr(getattr(ds, "action_space", None), "components", ())
    if not comps:
        return "modality=home_visit"
    return f"{comps[0].name}={comps[0].levels[-1]}"


#: Message of an existing output without ``--force`` (the CLI's one message).
EXISTS_MESSAGE = OUT_EXISTS


def parse_estimators(text: str) -> tuple[str, ...]:
    """``"dm,mis,mr"`` -> ``("dm", "mis", "mr")`` (checked)."""
    names = tuple(e.strip().lower() for e in text.split(",") if e.strip())
    bad = [e for e in names if e not in ESTIMATORS]
    if not names or bad:
        raise InvalidParameterError(f"--estimators must be a comma-separated subset of "
                         f"{','.join(ESTIMATORS)}; got {text!r}.")
    return names


def parse_control(text: str) -> int | Path:
    """Parse ``--control``: a fixed action code (``"0"``) or the path of a policy file."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        return int(t)
    return Path(t)


def policy_from_file(path: str | os.PathLike[str], ds: Any, md: MediationData,
                     mask: np.ndarray | None = None) -> PolicyProbs:
    """Probabilities of a policy file or model folder at every transition's state and next state.

    The only place that reads policies for mediation: ``equicare.policy.load_policy`` gives the
    policy, :func:`policy_probs` its probabilities at the transitions.
    """
    from equicare.policy import load_policy
    from equicare.policy._load import policy_name

    return policy_probs(load_policy(path), policy_name(path), ds, md, mask)


def policy_probs(pol: Any, name: str, ds: Any, md: MediationData,
                 mask: np.ndarray | None = None) -> PolicyProbs:
    """Probabilities of a policy object at every transition's state and next state.

    ``pol.action_probs(ds)`` gives the probabilities of every row of ``ds`` (the dataset with
    its own actions); transitions use rows ``md.rows`` and ``md.next_rows``. With ``mask`` the
    probabilities are collapsed to the binary action set (``md`` is then built from the
    binarised dataset, on which the policy cannot be asked). Rows the policy leaves to current
    practice (exception rules, a policy file's ``follows_practice`` column) are kept as
    ``deferred`` / ``next_deferred``, for :class:`~equicare.causal.DynamicMediation`'s
    ``usual_care``; a :class:`~equicare.policy._deployed.DeployedPolicy` gives the stored
    probabilities of the policy it wraps, as :func:`equicare.causal._data.resolve_policy`.
    """
    from equicare.policy._deployed import DeployedPolicy, deferred_rows_of

    inner = pol.policy if isinstance(pol, DeployedPolicy) else pol
    full = np.asarray(inner.action_probs(ds), dtype=np.float64)
    if mask is not None:
        full = collapse_probs(full, mask)
    assert md.rows is not None and md.next_rows is not None
    rows = deferred_rows_of(pol, ds)
    return PolicyProbs(full[md.rows], full[md.next_rows], name=name,
                       deferred=None if rows is None else rows[md.rows],
                       next_deferred=None if rows is None else rows[md.next_rows])


def mediate_dataset(ds: Any, target: Any, control: Any = 0, *,
                    estimators: tuple[str, ...] = ESTIMATORS, n_bootstrap: int = 500,
                    n_folds: int = 2, basis: str = "auto", action: str | None = None,
                    random_state: int | None = 0, progress: bool = False,
                    usual_care: str = "deployed") -> MediationResult:
    """Run :class:`DynamicMediation` on a TrajectoryDataset.

    Parameters
    ----------
    ds : TrajectoryDataset
    target, control : policy file path, policy object, callable or int
        A ``str`` / ``Path`` is read as a policy file; a policy object (with
        ``action_probs(dataset)``) is asked on ``ds`` like a file's policy, also with
        ``action``; ``control`` may be a fixed action code.
    estimators, n_bootstrap, n_folds, basis, random_state
        See :class:`DynamicMediation`.
    action : str, optional
        Collapse a multi-level action to "in this action set or not" (``modality=home_visit``),
        so that a fixed control ``0`` means "never take it".
    progress : bool
        Stage lines on stderr (:meth:`DynamicMediation.estimate`'s ``progress``).
    usual_care : {"deployed", "stored"}
        Rows a policy leaves to current practice: as deployed (practice decides there, the
        default, as ``evaluate`` and ``audit``) or with the stored estimate of practice
        (:class:`DynamicMediation`).
    """
    require_mediators(ds)  # first: no other setting helps without a mediator
    if isinstance(control, int) and action is None and ds.n_actions != 2:
        raise InvalidParameterError(CONTROL_NEEDS_ACTION.format(
            control=control, n_actions=ds.n_actions,
            example=_action_example(ds)))
    mask = None
    model_ds = ds
    if action is not None:
        model_ds, mask = binarize_actions(ds, action)
    cfg = DynamicMediation(estimators=estimators, n_bootstrap=n_bootstrap, n_folds=n_folds,
                           basis=basis, usual_care=usual_care)  # type: ignore[arg-type]
    try:
        # the basis's size is checked before the transitions' dense states are built
        md = from_dataset(model_ds, check=lambda d, rows, next_rows: cfg.check_transitions(
            d, rows, next_rows, random_state))

        def as_policy(p: Any, default: str) -> Any:
            # a policy object is asked on the dataset with its own actions, as a file is
            if isinstance(p, str | os.PathLike):
                return policy_from_file(p, ds, md, mask)
            if hasattr(p, "action_probs"):
                return policy_probs(p, str(getattr(p, "name", None) or default), ds, md, mask)
            return p

        res = cfg.estimate(md, as_policy(target, "target"),
                           as_policy(control, "control policy"), random_state=random_state,
                           progress=progress)
        return dataclasses.replace(res, action=action)
    except FewTransitionsError as err:
        raise DataValidationError(err.render(_few_transitions_advice(
            err, ds, action, n_folds))) from None


def mediate_path(data: str | os.PathLike[str], manifest: str | os.PathLike[str], target: Any,
                 control: Any = 0, **kwargs: Any) -> MediationResult:
    """Load ``data`` with its manifest (:func:`equicare.data.load_dataset`) and mediate."""
    import warnings

    from equicare._progress import Stages
    from equicare.data import load_dataset
    from equicare.data._manifest import manifest_of
    from equicare.exceptions import DataWarning

    man = manifest_of(manifest)  # a bad manifest: its one error line, no stage line first
    Stages("mediate", bool(kwargs.get("progress", False)))(f"loading {data}")
    with warnings.catch_warnings():  # validation warnings are for `equicare validate`
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(data, man)
    return mediate_dataset(ds, target, control, **kwargs)


def write_result(result: MediationResult, out: str | os.PathLike[str], *, force: bool = False,
                 provenance: dict[str, Any] | None = None) -> Path:
    """Write the mediation JSON atomically; refuse to overwrite unless ``force``.

    ``provenance``: the command's block, added under ``"provenance"``
    (:func:`equicare.cli._utils.provenance`).

    Raises
    ------
    FileExistsError
    """
    p = Path(out)
    if p.exists() and not force:
        raise FileExistsError(EXISTS_MESSAGE.format(path=p))
    write_result_json(p, result.to_dict(), provenance)
    return p


def mediation_table(result: MediationResult, action: str | None = None) -> Any:
    """Rich table: one row per estimator and effect, with SE and CI.

    Parameters
    ----------
    result : MediationResult
    action : str, optional
        The ``--action`` set the actions were collapsed to: a fixed control ``a0=0`` is then
        named "never" it (``a0=1`` "always"), in the caption with the effects' units.
    """
    from rich.table import Table

    t = Table(title=f"Mediation: {result.target} vs {result.control} ({result.n_episodes} "
                    f"episodes, {result.n_steps} transitions)")
    t.caption = (dataclasses.replace(result, action=action) if action else result).caption()
    _effect_rows(t, {name: est.effects for name, est in result.estimators.items()})
    return t


def per_stay_table(result: MediationResult) -> Any:
    """Rich table of the effects per stay (terminal outcomes), or None without them.

    One row per estimator and effect, with SE and CI, and the expected outcome per stay of the
    target and the control; the caption (:meth:`MediationResult.per_stay_caption`) says what
    they are and gives the mean stay lengths.
    """
    from rich.table import Table

    effects = {name: est.per_stay.effects for name, est in result.estimators.items()
               if est.per_stay is not None}
    if not effects:
        return None
    t = Table(title=f"Per stay: {result.target} vs {result.control} ({result.n_renewed:,} "
                    "stays ended)")
    t.caption = result.per_stay_caption()
    _effect_rows(t, effects)
    for name, est in result.estimators.items():
        if est.per_stay is not None:
            for key, label in (("pi_e", "value of target"), ("a0", "value of control")):
                v = est.per_stay.value.get(key)
                t.add_row(name, label, "-" if v is None else f"{v:.4g}", "", "")
    return t


def _effect_rows(t: Any, effects: dict[str, dict[str, Any]]) -> None:
    """Columns estimator, effect, value, se, 95% CI and one row per estimator and effect."""
    for col in ("estimator", "effect", "value", "se", "95% CI"):
        t.add_column(col, justify="left" if col in ("estimator", "effect") else "right")
    for name, by_key in effects.items():
        for k in EFFECT_KEYS:
            e = by_key[k]
            if e.value is None:
                t.add_row(name, k, "-", "-", "-")
                continue
            # significant digits: a per-step effect of 4e-4 read "0.000" with 3 decimals
            ci = "-" if e.ci is None else f"[{e.ci[0]:.4g}, {e.ci[1]:.4g}]"
            t.add_row(name, k, f"{e.value:.4g}", "-" if e.se is None else f"{e.se:.3g}", ci)


def register(app: typer.Typer) -> None:
    """Add the ``mediate`` command to a :class:`typer.Typer` app."""

    @app.command("mediate")
    def mediate_cmd(
        data: Annotated[Path, typer.Argument(help=PANEL_HELP)],
        manifest: Annotated[Path, typer.Option("--manifest", "-m", help="Dataset manifest (TOML) "
                                               "with `mediators = [...]`.")],
        policy: Annotated[Path, typer.Option("--policy", help="Target policy: a policy file "
                                             "(keyed by episode and time) or a model folder.")],
        control: Annotated[str, typer.Option("--control", help="Fixed control action code "
                                             "(binary actions, or with --action), a policy "
                                             "file or a model folder.")] = "0",
        action: Annotated[str | None, typer.Option(
            "--action", help="Collapse a multi-level action to an action set, e.g. "
            "modality=home_visit (1 = in the set; --control 0 = never).")] = None,
        estimators: Annotated[str, typer.Option("--estimators", help="Comma-separated subset "
                                                "of dm, mis, mr, baseline.")
                              ] = "dm,mis,mr,baseline",
        bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Cluster-bootstrap "
                                               "replicates: mr's resample its influence "
                                               "values, dm's, mis's and baseline's refit "
                                               "every model (0: mr's normal intervals, no "
                                               "others).")] = 500,
        folds: Annotated[int, typer.Option("--folds", min=1, help="Cross-fitting folds.")] = 2,
        basis: Annotated[Basis, typer.Option("--basis", help="State basis.")] = Basis.AUTO,
        usual_care: MediateUsualCare = UsualCare.DEPLOYED,
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Also write the mediation JSON here (docs/contracts.md).")
        ] = None,
        figure: Annotated[Path | None, typer.Option("--figure", help="Also save the "
                                                    "decomposition figure (PNG/PDF).")] = None,
        seed: Seed = 42,
        force: Force = False,
        json_out: JsonOut = False,
        progress: Progress = True,
        threads: Threads = "auto",
    ) -> None:
        """Decompose a policy's effect into immediate/delayed direct and mediator effects.

        Estimates IDE, IME, DDE, DME and the total effect of the --policy versus the
        --control (direct method, marginalised importance sampling, multiply robust,
        point-exposure baseline) with standard errors and cluster-bootstrap CIs: multiply
        robust's from its influence values, the others' from replicates that refit every
        model (docs/mediation.md 'Inference'; a configuration it does not batch, e.g. a
        continuous mediator, or one above its work budget gives their point estimates with a
        note). With terminal rows (stays that end) a second table gives the effects per stay
        (docs/mediation.md 'Effects per stay').
        Exception rules (explain's card/model, or predict's file with its follows_practice
        column) are valued as deployed, as evaluate and audit value them: where they leave the
        decision to current practice the policy acts as practice does (--usual-care stored
        values the estimate of practice saved with them instead); the output says which, and
        the share of transitions left to practice.
        No streamed mode (no --chunk-rows): the panel is loaded in memory (docs/scale.md).

        Example: equicare mediate data/panel.parquet --manifest data/manifest.toml
        --policy awr_probs.parquet --action modality=home_visit --control 0
        --out mediation.json
        """
        from equicare.cli._utils import (
            check_out_paths,
            console,
            print_json,
            print_table,
            provenance,
            user_errors,
            usual_care_line,
        )

        check_out_paths([out, figure], force, file=True, options=["--out", "--figure"])
        with user_errors():
            ests = parse_estimators(estimators)
            ctrl = parse_control(control)
            prov = None if out is None else provenance(
                {"data": data, "manifest": manifest, "policy": policy,
                 "control": ctrl if isinstance(ctrl, Path) else None})
            result = mediate_path(data, manifest, policy, ctrl, estimators=ests,
                                  n_bootstrap=bootstrap, n_folds=folds, basis=basis.value,
                                  action=action, random_state=seed, progress=progress,
                                  usual_care=usual_care.value)
            if out is not None:
                write_result(result, out, force=force, provenance=prov)
            if figure is not None:
                from equicare.causal._plot import plot_mediation
                from equicare.report._html import savefig_stable
                from equicare.utils import atomic_write

                with atomic_write(figure, "wb") as fh:
                    savefig_stable(plot_mediation(result), fh, dpi=120,
                                   format=figure.suffix.lstrip(".").lower() or "png")
        if json_out:
            print_json(json.loads(result.to_json()))
            return
        print_table(mediation_table(result, action))
        stays = per_stay_table(result)
        if stays is not None:
            print_table(stays)
        uline = usual_care_line(result.to_dict(), unit="transitions")
        if uline:
            console.print(uline, highlight=False, markup=False)
        for p in (out, figure):
            if p is not None:
                console.print(f"Wrote {p}", highlight=False, markup=False)
