"""``equicare explain``: distil a policy into readable rules and write its policy card."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from equicare.cli._choices import ExplainMode, Labels, QModel
from equicare.cli._utils import PANEL_HELP, Force, JsonOut, Progress, Seed, Threads

__all__ = ["run_explain", "register"]


def run_explain(model: Path, data: Path, *, manifest: Path, out: Path, depth: int = 3,
                max_rules: int | None = None, holdout: float = 0.3, q_model: str = "auto",
                estimators: str = "wis,dr,wdr", bootstrap: int = 200, action: str | None = None,
                group: str | None = None, labels: str = "argmax",
                mode: str = "exceptions", set_splits: bool = True,
                deviation_margin: float | Literal["auto"] = "auto", seed: int = 42,
                force: bool = False, provenance: dict[str, Any] | None = None,
                progress: bool = False, caveats: Sequence[str] = ()) -> dict[str, Any]:
    """Load the panel and the policy, build the policy card and write the card folder.

    ``provenance``: the command's block, written into the card JSON and the rules' model folder
    (:func:`equicare.cli._utils.provenance`). ``caveats``: put first among the card's caveats
    (the command's :func:`~equicare.cli._utils.in_sample_warnings`). ``progress``: stage lines
    on stderr, loading and writing included (:class:`equicare._progress.Stages`).

    Returns
    -------
    dict
        The card JSON plus ``"files"`` (paths written).

    Raises
    ------
    FileExistsError
        ``out`` is a non-empty folder and ``force`` is not set, or a folder that is not a card
        (checked before any work).
    InvalidParameterError
        ``out`` is or holds the current directory or an input.
    DataValidationError, ValueError, FileNotFoundError
        Bad data, manifest, policy or option.
    """
    from equicare._progress import Stages
    from equicare.data import load_dataset
    from equicare.data._manifest import manifest_of
    from equicare.exceptions import DataWarning
    from equicare.explain import DistillConfig, ExplainConfig, explain_policy, load_source_policy
    from equicare.explain._evidence import weights_q_model
    from equicare.report import write_card
    from equicare.report._card import check_card_target

    check_card_target(out, overwrite=force, inputs=(model, data, manifest))
    keys = tuple(k.strip() for k in estimators.split(",") if k.strip())
    cfg = ExplainConfig(depth=depth, holdout=holdout, q_model=q_model, estimators=keys,
                        bootstrap=bootstrap, frontier_bootstrap=min(bootstrap, 50),
                        action=action, group=group, mode=mode,
                        distill=DistillConfig(max_depth=depth, max_leaf_nodes=max_rules,
                                              q_model=weights_q_model(q_model),
                                              labels=labels, set_splits=set_splits,
                                              deviation_margin=deviation_margin))
    say = Stages("explain", progress)
    man = manifest_of(manifest)  # a bad manifest: its one error line, no stage line first
    say(f"loading {data}")
    with warnings.catch_warnings():  # validation warnings are for `equicare validate`
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(data, man)
    policy, desc = load_source_policy(model)
    card = explain_policy(ds, policy, cfg, source=desc, random_state=seed, progress=progress,
                          panel=data)
    card.caveats[:0] = caveats
    say(f"writing the card to {out}")
    files = write_card(card, out, overwrite=force, provenance=provenance)
    return {**card.to_dict(), "files": {k: str(v) for k, v in files.items()}}


def _margin(value: str) -> str:
    """``--deviation-margin``: ``auto`` or a number (its range is DistillConfig's check)."""
    if value.strip() == "auto":
        return "auto"
    try:
        float(value)
    except ValueError:
        raise typer.BadParameter(f"expected auto or a number, got {value!r}.") from None
    return value


def register(app: typer.Typer) -> None:
    """Add the ``explain`` command to a Typer app."""

    @app.command()
    def explain(
        model: Annotated[Path, typer.Argument(
            help="Policy to explain: a model folder (any learner) or a policy file.")],
        data: Annotated[Path, typer.Argument(help=PANEL_HELP)],
        manifest: Annotated[Path, typer.Option("--manifest", "-m",
                                               help="Manifest TOML naming each column's role.")],
        out: Annotated[Path, typer.Option(
            help="Card folder to write: policy_card.html, policy_card.json, rules.txt, model/.")],
        depth: Annotated[int, typer.Option(min=1, max=12, help="Depth of the rules.")] = 3,
        max_rules: Annotated[int | None, typer.Option(
            min=2, help="Cap on the number of rules (leaves).")] = None,
        holdout: Annotated[float, typer.Option(
            help="Share of episodes held out for the evidence.")] = 0.3,
        q_model: Annotated[QModel, typer.Option(
            help="Q-model of the row weights and of the OPE: auto (chosen once for the source "
                 "policy by evaluate's cross-fitted criterion) or a fixed one.")] = QModel.AUTO,
        estimators: Annotated[str, typer.Option(
            help="Comma list of OPE estimators: is, wis, pdis, wpdis, fqe, dr, wdr. The card's "
                 "headline is the first of dr, wdr, fqe listed whose estimate of the source "
                 "stays near the observed returns.")
        ] = "wis,dr,wdr",
        bootstrap: Annotated[int, typer.Option(min=0, help="Episode bootstrap replicates.")
                             ] = 200,
        action: Annotated[str | None, typer.Option(
            help="Audited action set, e.g. modality=home_visit.")] = None,
        group: Annotated[str | None, typer.Option(help="Audited group attribute.")] = None,
        labels: Annotated[Labels, typer.Option(
            help="Imitate the source's argmax action or samples of its distribution.")
        ] = Labels.ARGMAX,
        mode: Annotated[ExplainMode, typer.Option(
            help="exceptions: rules say where to deviate from current practice, every other "
                 "state keeps the clinicians' own distribution; imitate: rules imitate the "
                 "policy everywhere.")] = ExplainMode.EXCEPTIONS,
        set_splits: Annotated[bool, typer.Option(
            "--set-splits/--no-set-splits",
            help="Let a rule test a set of levels of a categorical state (state is one of "
                 "s12, s45, s101), built per action from the fitting rows' labels; "
                 "--no-set-splits: one level per test.")] = True,
        deviation_margin: Annotated[str, typer.Option(
            parser=_margin, metavar="auto|FLOAT",
            help="Exception rules: a row counts as a deviation only where the policy beats "
                 "estimated practice by more than this share of what is at stake there. 0 lets "
                 "set splits name every state where the policy gains (Garnet: 100% of SPIBB's "
                 "gain kept instead of 23%) but reads the noise of the estimate of practice as "
                 "gains where the policy follows practice. auto: where practice is estimated "
                 "per categorical cell, margin 0, then a rule keeps its deviation only if its "
                 "rows together beat practice by 2 standard errors of that estimate (Garnet: "
                 "100% kept); the share 0.2 where practice is a behaviour tree.")] = "auto",
        seed: Seed = 42,
        force: Force = False,
        json_out: JsonOut = False,
        progress: Progress = True,
        threads: Threads = "auto",
    ) -> None:
        """Distil a policy into readable rules and write its policy card (HTML + JSON).

        The card holds the rules in plain language, their fidelity to the policy, value
        (off-policy, with intervals), fairness audit, support, the size/fidelity/value trade-off
        over depths 1-6, and the subgroups where rules and policy disagree most. The rules are
        also saved as a model folder (out/model) that predict, evaluate and audit accept.
        Exit code 2 on bad input. No streamed mode (no --chunk-rows): the panel is loaded in
        memory (docs/scale.md).

        Example: equicare explain models/awr data/panel.parquet --manifest data/manifest.toml
        --depth 3 --out card/
        """
        from rich.markup import escape

        from equicare.cli._utils import (
            console,
            err_console,
            in_sample_warnings,
            print_json,
            provenance,
            user_errors,
        )
        from equicare.explain import rules_text

        with user_errors():
            from equicare.report._card import check_card_target

            check_card_target(out, overwrite=force, inputs=(model, data, manifest))
            prov = provenance({"policy": model, "data": data, "manifest": manifest})
            in_sample = in_sample_warnings({str(model): model}, data)
            for m in in_sample:  # the source's values on its own training panel
                err_console.print(f"[yellow]warning:[/] {escape(m)}", highlight=False,
                                  soft_wrap=True)
            res = run_explain(model, data, manifest=manifest, out=out, depth=depth,
                              max_rules=max_rules, holdout=holdout, q_model=q_model.value,
                              estimators=estimators, bootstrap=bootstrap, action=action,
                              group=group, labels=labels.value, mode=mode.value,
                              set_splits=set_splits,
                              deviation_margin=("auto" if deviation_margin == "auto"
                                                else float(deviation_margin)),
                              seed=seed, force=force,
                              provenance=prov, progress=progress, caveats=in_sample)
        if json_out:
            print_json(res)
            return
        fid = res["evidence"]["fidelity"]
        console.print(escape(rules_text(res["rules"])), highlight=False, soft_wrap=True)
        console.print(f"agreement with the source {100 * fid['agreement']:.1f}% on held-out "
                      f"episodes, mean total variation {fid['tv']:.3f}", highlight=False)
        hidden = [r for r in res["rules"] if r.get("test_suppressed")]
        if hidden:
            console.print(f"held-out share and agreement of rule"
                          f"{'s' if len(hidden) > 1 else ''} "
                          f"{', '.join(str(r['rule']) for r in hidden)}: n/a, "
                          f"{escape(hidden[0]['test_suppressed'])}", highlight=False)
        console.print(f"Wrote [bold]{escape(res['files']['html'])}[/] and "
                      f"[bold]{escape(res['files']['json'])}[/]")
