"""The ``equicare`` command line: a thin Typer layer over the library.

Each command parses its options, calls one library function and prints. Heavy imports stay inside
the commands so that ``equicare --help`` is instant.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from equicare.cli._utils import check_out_path, console, fail, print_json, user_errors

app = typer.Typer(
    name="equicare",
    help="Equitable sequential decision-making in health care: learn, evaluate, audit, plan, "
    "explain.\n\nExample: equicare synth --members 1000 --weeks 52 --seed 42 --out data/",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write panel.parquet + manifest.toml into.")],
    members: Annotated[int, typer.Option(min=1, help="Number of members (episodes).")] = 1000,
    weeks: Annotated[int, typer.Option(min=1, help="Weeks of follow-up per member (max).")] = 52,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 42,
    sim: Annotated[
        str,
        typer.Option(
            help="Simulator: care (care management), heparin (dosing) or garnet (clinical-shaped "
            "random MDP with exact truth)."
        ),
    ] = "care",
    episodes: Annotated[
        int | None, typer.Option(min=1, help="Garnet: episodes (default: --members).")
    ] = None,
    states: Annotated[int | None, typer.Option(min=2, help="Garnet: transient states.")] = None,
    actions: Annotated[int | None, typer.Option(min=2, help="Garnet: actions.")] = None,
    gamma: Annotated[float | None, typer.Option(help="Garnet: discount in (0, 1].")] = None,
    preset: Annotated[
        str | None, typer.Option(help="Garnet: named configuration, e.g. s700_a25_g1.")
    ] = None,
    history_dependence: Annotated[
        bool,
        typer.Option(help="Care simulator: effects depend on recent contacts (history matters)."),
    ] = False,
    churn: Annotated[
        bool,
        typer.Option(
            help="Care simulator: members enrol late and disenrol early (variable lengths)."
        ),
    ] = True,
    sim_config: Annotated[
        Path | None,
        typer.Option(
            "--sim-config", help="JSON file of simulator config fields (CareConfig.to_dict())."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing output files.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Generate a synthetic panel with known dynamics.

    Example: equicare synth --members 1000 --weeks 52 --seed 42 --out data/

    Example: equicare synth --sim garnet --states 700 --actions 25 --episodes 5000 --seed 1
    --out garnet/
    """
    with user_errors():
        if sim == "care":
            from equicare.sim._care_cli import synth_care

            for name in ("panel.parquet", "manifest.toml"):
                check_out_path(out / name, force)
            res = synth_care(
                out,
                n_members=members,
                n_weeks=weeks,
                seed=seed,
                history_dependence=history_dependence,
                churn=churn,
                config=sim_config,
                overwrite=force,
            )
            from equicare.data import load_dataset

            summary = load_dataset(res["panel"], res["manifest"], emit_warnings=False).summary()
        elif sim == "heparin":
            from equicare.cli._dosing import synth_heparin

            res = synth_heparin(
                out / "panel.parquet",
                n_patients=members,
                seed=seed,
                manifest=out / "manifest.toml",
                force=force,
            )
            from equicare.data import load_dataset

            summary = load_dataset(res["data"], res["manifest"], emit_warnings=False).summary()
        elif sim == "garnet":
            from equicare.sim._garnet_cli import synth_garnet_cli

            res = synth_garnet_cli(out, episodes=episodes or members, states=states,
                                   actions=actions, gamma=gamma, preset=preset, seed=seed,
                                   force=force)
            from equicare.data import load_dataset

            summary = load_dataset(res["panel"], res["manifest"], emit_warnings=False).summary()
        else:
            fail(f"--sim must be one of 'care', 'heparin', 'garnet'; got {sim!r}.")
            return
    if json_out:
        print_json({"out": str(out), **summary})
    else:
        console.print(
            f"Wrote [bold]{out / 'panel.parquet'}[/] and [bold]{out / 'manifest.toml'}[/]"
        )
        _print_summary(summary)


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(help="Panel file: .csv, .parquet or a DuckDB file.")],
    manifest: Annotated[Path, typer.Option(help="Manifest TOML naming each column's role.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Check a panel against its manifest and print a summary, or every problem (exit code 2).

    Example: equicare validate data/panel.parquet --manifest data/manifest.toml
    """
    from equicare.data import load_dataset
    from equicare.data._io import validate_path

    with user_errors():
        rep, _, _ = validate_path(data, manifest)
        if not rep.ok:
            if json_out:
                print_json({"valid": False, "errors": rep.errors, "warnings": rep.warnings})
                raise typer.Exit(code=2)
            rep.raise_if_errors()
        ds = load_dataset(data, manifest, emit_warnings=False)
    summary = ds.summary()
    if json_out:
        print_json({"valid": True, **summary, "warnings": rep.warnings})
        return
    _print_summary(summary)
    for w in rep.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    console.print("[green]valid[/]")


def _print_summary(s: dict) -> None:
    from rich.table import Table

    from equicare.utils import MIN_CELL

    t = Table(title="Panel summary", show_header=False)
    t.add_column("item")
    t.add_column("value")
    t.add_row("episodes", f"{s['n_episodes']:,}")
    t.add_row("steps", f"{s['n_steps']:,}")
    el = s["episode_length"]
    t.add_row("episode length", f"min {el['min']}, median {el['median']:g}, max {el['max']}")
    t.add_row("state features", str(s["n_features"]))
    t.add_row("observed action combinations", f"{s['observed_actions']} of {s['n_actions']}")
    for name, pct in s["reward_nonzero_pct"].items():
        t.add_row(f"reward '{name}' non-zero (weight {s['reward_weights'][name]:g})", f"{pct:.2f}%")
    t.add_row("gamma", f"{s['gamma']:g}")
    if "behavior_prob" in s:
        bp = s["behavior_prob"]
        t.add_row("propensity range", f"{bp['min']:.4g} to {bp['max']:.4g}")
    if "need_pct" in s:
        t.add_row("high need", f"{s['need_pct']:.1f}% of episodes")
    for attr, counts in s["groups"].items():
        cells = ", ".join(
            f"{k} {v:,}" if v >= MIN_CELL else f"{k} <{MIN_CELL}" for k, v in counts.items()
        )
        t.add_row(f"group '{attr}' (episodes)", cells)
    console.print(t)


# Commands of each layer: one module per command group, each with register(app).
_GROUPS = ("_ope", "_learn", "_fairness", "_rmab", "_causal", "_online", "_dosing", "_pipeline")
for _name in _GROUPS:
    importlib.import_module(f"equicare.cli.{_name}").register(app)


def main() -> None:
    """Entry point of the ``equicare`` script."""
    app()


if __name__ == "__main__":
    main()
