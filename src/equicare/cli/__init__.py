"""The ``equicare`` command line: a thin Typer layer over the library.

Each command parses its options, calls one library function and prints. Heavy imports stay inside
the commands so that ``equicare --help`` is instant.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from equicare.cli._choices import Sim
from equicare.cli._utils import (
    PANEL_HELP,
    Address,
    ChunkRows,
    EquicareGroup,
    Force,
    Jobs,
    JsonOut,
    Progress,
    Seed,
    StreamExecutor,
    Threads,
    check_out_folder,
    check_out_paths,
    console,
    err_console,
    not_applicable,
    print_json,
    print_table,
    provenance,
    stream_executor,
    user_errors,
    version_callback,
    write_sidecar,
)

#: The provenance of `synth --sim care|heparin` (garnet's is in its truth.json).
SYNTH_PROVENANCE = "provenance.json"
#: A summary count (or share) of 1-10 episodes or rows, or all but 1-10, is not published.
SMALL_COUNT = "suppressed (1-10, or all but 1-10)"

app = typer.Typer(
    name="equicare",
    cls=EquicareGroup,
    help="Equitable sequential decision-making in health care: learn, evaluate, audit, plan, "
    "explain.\n\nA user mistake prints one line 'error: ...' and exits with code 2; a bug exits "
    "with code 1 and names the log file of its traceback; Ctrl-C exits with 130. No command "
    "overwrites an existing output without --force. The result files are described in "
    "docs/contracts.md.\n\nExample: equicare synth --members 1000 --weeks 52 --seed 42 --out data/",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=version_callback, is_eager=True,
                     help="Print the equicare version and exit."),
    ] = None,
) -> None:
    """Equitable sequential decision-making in health care."""


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write panel.parquet + manifest.toml into.")],
    sim: Annotated[Sim, typer.Option(
        help="Simulator: care (care management), heparin (dosing) or garnet (clinical-shaped "
             "random MDP with exact truth).")] = Sim.CARE,
    members: Annotated[int, typer.Option(min=1, help="Number of members (episodes).")] = 1000,
    weeks: Annotated[
        int | None, typer.Option(min=1, help="care: weeks of follow-up per member (max) "
                                 "[default: 52].")
    ] = None,
    seed: Seed = 42,
    history_dependence: Annotated[
        bool | None,
        typer.Option("--history-dependence/--no-history-dependence",
                     help="care: effects depend on recent contacts (history matters) "
                     "[default: the --sim-config value, else off]."),
    ] = None,
    churn: Annotated[
        bool | None,
        typer.Option("--churn/--no-churn",
                     help="care: members enrol late and disenrol early (variable lengths) "
                     "[default: the --sim-config value, else on]."),
    ] = None,
    sim_config: Annotated[
        Path | None,
        typer.Option(
            "--sim-config", help="care: JSON file of simulator config fields "
            "(CareConfig.to_dict()); options given on the command line override it."
        ),
    ] = None,
    part_members: Annotated[int | None, typer.Option(
        min=1, help="care: write a panel larger than memory as a folder panel/ of Parquet "
                    "files, this many members each (docs/scale.md).")] = None,
    episodes: Annotated[int | None, typer.Option(
        min=1, help="garnet: episodes [default: --members].")] = None,
    states: Annotated[int | None, typer.Option(min=2, help="garnet: transient states.")] = None,
    actions: Annotated[int | None, typer.Option(min=2, help="garnet: actions.")] = None,
    gamma: Annotated[float | None, typer.Option(help="garnet: discount in (0, 1].")] = None,
    preset: Annotated[str | None, typer.Option(
        help="garnet: named configuration, e.g. s700_a25_g1.")] = None,
    sites: Annotated[int | None, typer.Option(
        min=1, help="garnet: add a categorical state 'site' with this many levels, one per "
                    "episode, that changes nothing (the tables should pool over it).")] = None,
    force: Force = False,
    json_out: JsonOut = False,
    threads: Threads = "auto",
) -> None:
    """Generate a synthetic panel with known dynamics (panel.parquet + manifest.toml).

    How it was made is written beside them: in truth.json (garnet) or provenance.json (care,
    heparin), with the panel's and the manifest's SHA-256 (docs/contracts.md).

    Example: equicare synth --members 1000 --weeks 52 --seed 42 --out data/

    Example: equicare synth --sim garnet --states 700 --actions 25 --episodes 5000 --seed 1
    --out garnet/

    Example: equicare synth --sim garnet --preset s700_a25_g1 --sites 30 --episodes 5000
    --out garnet_sites/
    """
    from equicare.data import load_dataset

    kind = sim.value
    if kind != "care":
        not_applicable({"--weeks": weeks is not None,
                        "--history-dependence/--no-history-dependence":
                            history_dependence is not None,
                        "--churn/--no-churn": churn is not None,
                        "--sim-config": sim_config is not None,
                        "--part-members": part_members is not None}, f"--sim {kind}")
    if kind != "garnet":
        not_applicable({"--episodes": episodes is not None, "--states": states is not None,
                        "--actions": actions is not None, "--gamma": gamma is not None,
                        "--preset": preset is not None, "--sites": sites is not None},
                       f"--sim {kind}")
    panel_path = out / ("panel" if part_members is not None else "panel.parquet")
    check_out_folder(out)
    # garnet's provenance is in its truth.json; care and heparin have no result file for it
    sidecar = None if kind == "garnet" else out / SYNTH_PROVENANCE
    check_out_paths([panel_path, out / "manifest.toml", sidecar], force)
    extra: dict[str, object] = {}

    def record(panel: str | Path, manifest: str | Path) -> None:
        if sidecar is not None:
            write_sidecar(sidecar, {"data": Path(panel), "manifest": Path(manifest)},
                          provenance({"sim_config": sim_config}))

    with user_errors():
        if kind == "care" and part_members is not None:
            from equicare.sim._care_cli import care_sim
            from equicare.sim._care_parts import write_care_parts

            res = write_care_parts(
                care_sim(history_dependence=history_dependence, churn=churn, config=sim_config),
                out, n_members=members, n_weeks=52 if weeks is None else weeks,
                members_per_part=part_members, seed=seed, overwrite=force)
            record(res["panel"], res["manifest"])
            info = {"out": str(out), "panel": res["panel"], "n_rows": res["n_rows"],
                    "n_parts": res["n_parts"], "n_members": members}
            if json_out:
                print_json(info)
            else:
                console.print(f"Wrote {res['n_rows']:,} rows of {members:,} members in "
                              f"{res['n_parts']} Parquet files under {res['panel']} and "
                              f"{res['manifest']}", highlight=False, markup=False)
            return
        if kind == "garnet":
            from equicare.sim._garnet_cli import synth_garnet_cli

            res = synth_garnet_cli(out, episodes=episodes or members, states=states,
                                   actions=actions, gamma=gamma, preset=preset, seed=seed,
                                   force=force, sites=sites or 0, provenance=provenance({}))
            panel, manifest = res["panel"], res["manifest"]
        elif kind == "care":
            from equicare.sim._care_cli import synth_care

            res = synth_care(out, n_members=members, n_weeks=52 if weeks is None else weeks,
                             seed=seed, history_dependence=history_dependence, churn=churn,
                             config=sim_config, overwrite=force)
            panel, manifest = res["panel"], res["manifest"]
            record(panel, manifest)
        else:  # heparin
            from equicare.cli._dosing import synth_heparin

            out.mkdir(parents=True, exist_ok=True)
            res = synth_heparin(out / "panel.parquet", n_patients=members, seed=seed,
                                manifest=out / "manifest.toml", force=force)
            panel, manifest = res["data"], res["manifest"]
            record(panel, manifest)
            extra["behavior_truth"] = res["behavior"]
        written = load_dataset(panel, manifest, emit_warnings=False)
        summary, small = written.summary(), _small_levels(written)
    if json_out:
        print_json({"out": str(out), **summary, **extra})
        return
    console.print(f"Wrote {out / 'panel.parquet'} and {out / 'manifest.toml'}", highlight=False,
                  markup=False)
    _print_summary(summary, small)
    if "behavior_truth" in extra:
        b = res["behavior"]
        console.print(f"nomogram (simulator truth): time in range {b['tir']['value']:.3f} "
                      f"(SE {b['tir']['se']:.3f}), adverse events {b['ae_rate']['value']:.3f}",
                      highlight=False)


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(help=PANEL_HELP)],
    manifest: Annotated[Path, typer.Option("--manifest", "-m",
                                           help="Manifest TOML naming each column's role.")],
    chunk_rows: ChunkRows = None,
    executor: StreamExecutor = None,
    address: Address = "auto",
    jobs: Jobs = 2,
    json_out: JsonOut = False,
    progress: Progress = True,
    threads: Threads = "auto",
) -> None:
    """Check a panel against its manifest and print a summary, or every problem (exit code 2).

    With --chunk-rows the panel is read in chunks of whole episodes (memory bounded by the
    chunk); problems still name the panel's own rows.

    Example: equicare validate data/panel.parquet --manifest data/manifest.toml

    Example: equicare validate big/panel/ --manifest big/manifest.toml --chunk-rows 500000
    """
    from equicare._progress import Stages
    from equicare.data import load_dataset
    from equicare.data._io import validate_path
    from equicare.data._manifest import manifest_of

    if chunk_rows is not None:
        _validate_stream(data, manifest, chunk_rows, stream_executor(chunk_rows, executor,
                                                                     address, jobs), json_out,
                         progress)
        return
    stream_executor(chunk_rows, executor, address, jobs)
    say = Stages("validate", progress)
    with user_errors():
        man = manifest_of(manifest)  # a bad manifest: its one error line, no stage line first
        say(f"reading and checking {data}")
        rep, _, _ = validate_path(data, man)
        if not rep.ok:
            if json_out:
                print_json({"valid": False, "errors": rep.errors, "warnings": rep.warnings,
                            "notes": rep.notes})
                raise typer.Exit(code=2)
            rep.raise_if_errors()
        say("building the dataset")
        ds = load_dataset(data, man, emit_warnings=False)
    from equicare.ope._propensity_check import propensity_warning

    say("summary and the logged propensities' check")
    msg = propensity_warning(ds, str(data))  # a warning, never a failure
    if msg is not None:
        rep.warnings.append(msg)
    summary = ds.summary()
    if json_out:
        print_json({"valid": True, **summary, "warnings": rep.warnings, "notes": rep.notes})
        return
    _print_summary(summary, _small_levels(ds))
    for note in rep.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    for w in rep.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    console.print("[green]valid[/]")


def _validate_stream(data: Path, manifest: Path, chunk_rows: int, executor: Any,
                     json_out: bool, progress: bool = False) -> None:
    """``validate --chunk-rows``: every problem of every chunk, then the in-memory summary.

    Summed over the chunks (:mod:`equicare.data._stream_summary`); only ``table_cells`` is
    missing (a note says so), and ``clustered`` is added. The logged propensities' plausibility
    warning is the in-memory one on a random sample of about 20,000 rows of whole episodes,
    drawn in the same pass (:func:`~equicare.ope._propensity_check.sample_propensity_check`).
    """
    from equicare.data import validate_stream
    from equicare.data._manifest import manifest_of
    from equicare.ope._stream_support import propensity_sample

    with user_errors():
        man = manifest_of(manifest)
        try:
            rep, scan = validate_stream(
                data, man, chunk_rows=chunk_rows, executor=executor,
                chunk_stat=propensity_sample if man.behavior_prob else None,
                progress=progress)
        finally:
            if executor is not None and hasattr(executor, "shutdown"):
                executor.shutdown()
        if not rep.ok:
            if json_out:
                print_json({"valid": False, "errors": rep.errors, "warnings": rep.warnings})
                raise typer.Exit(code=2)
            rep.raise_if_errors()
    from equicare.data._stream_summary import TABLE_CELLS_NOTE, stream_summary
    from equicare.utils import MIN_CELL

    counts = rep.counts
    assert scan is not None and counts is not None and counts.summary is not None
    summary = {**stream_summary(counts.summary, counts, scan), "clustered": scan.clustered}
    if counts.summary.extra is not None and man.behavior_prob:  # a warning, never a failure
        from equicare.ope._propensity_check import sample_propensity_check

        check = sample_propensity_check(counts.summary.extra, scan.n_rows)
        msg = None if check is None else check.message(str(data), man.behavior_prob)
        if msg is not None:
            rep.warnings.append(msg)
    notes = [*rep.notes]
    if len(summary["categorical_states"]) > 1:  # in memory: the "table_cells" choice
        notes.append(TABLE_CELLS_NOTE)
    if json_out:
        print_json({"valid": True, **summary, "warnings": rep.warnings, "notes": notes})
        return
    small = {a: {k for k, v in c.items() if v < MIN_CELL} for a, c in counts.group_counts.items()}
    _print_summary(summary, small, streamed=True)
    for note in notes:
        console.print(f"note: {escape(note)}", highlight=False)
    for w in rep.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    console.print("[green]valid[/]")


def length_cell(el: dict[str, Any]) -> str:
    """The episode-length cell: the median and the quantiles with 11+ episodes beyond.

    No minimum or maximum: each is one member's follow-up (docs/contracts.md).
    """
    return (f"median {el['median']:g}; 11+ episodes <= {el['p_bottom11']:g}, "
            f"11+ >= {el['p_top11']:g}")


def _small_levels(ds: Any) -> dict[str, set[str]]:
    """Group levels with fewer than 11 episodes (named "<11"; their complements "suppressed")."""
    from equicare.utils import MIN_CELL

    return {a: {k for k, v in c.items() if v < MIN_CELL}
            for a, c in ds._group_counts().items()}


def _print_summary(s: dict[str, Any], small: dict[str, set[str]], streamed: bool = False
                   ) -> None:
    """The summary table; ``s["groups"]`` is already suppressed (``summary()``)."""
    from rich.table import Table

    from equicare.utils import MIN_CELL

    t = Table(title="Panel summary (streamed)" if streamed else "Panel summary",
              show_header=False)
    t.add_column("item")
    t.add_column("value")
    t.add_row("episodes", f"{s['n_episodes']:,}")
    t.add_row("steps", f"{s['n_steps']:,}")
    t.add_row("episode length", length_cell(s["episode_length"]))
    t.add_row("numeric state features", str(s["n_features"]))
    for name, c in s.get("categorical_states", {}).items():
        t.add_row(f"categorical state '{name}'",
                  f"{c['levels']:,} levels ({c['observed']:,} observed)")
    if s.get("table_cells"):
        tc = s["table_cells"]
        why = (f"; pooled over {', '.join(tc['dropped'])} (no change in the dynamics given "
               f"{', '.join(tc['columns'])})" if tc["dropped"] else
               " (each column changes the dynamics given the others)")
        t.add_row("tables' cells", " x ".join(tc["columns"]) + why)
    if "episode_ends" in s:
        ends = s["episode_ends"]
        t.add_row("episode ends", SMALL_COUNT if ends["terminal"] is None else
                  f"{ends['terminal']:,} terminal, {ends['censored']:,} censored")
    t.add_row("observed action combinations", f"{s['observed_actions']} of {s['n_actions']}")
    for name, pct in s["reward_nonzero_pct"].items():
        t.add_row(f"reward '{name}' non-zero (weight {s['reward_weights'][name]:g})",
                  SMALL_COUNT if pct is None else f"{pct:.2f}%")
    t.add_row("gamma", f"{s['gamma']:g}")
    if "behavior_prob" in s:
        bp = s["behavior_prob"]
        t.add_row("propensity (11+ rows beyond each end)",
                  f"{bp['p_bottom11']:.3g} to {bp['p_top11']:.3g}")
    if "need_pct" in s:
        t.add_row("high need", SMALL_COUNT if s["need_pct"] is None
                  else f"{s['need_pct']:.1f}% of episodes")
    for attr, shown in s["groups"].items():
        cells = ", ".join(  # small levels "<11", their complements "suppressed"
            f"{k} {v:,}" if v is not None else f"{k} <{MIN_CELL}" if k in small.get(attr, ())
            else f"{k} suppressed" for k, v in shown.items())
        t.add_row(f"group '{attr}' (episodes)", cells)
    if streamed:
        t.add_row("episodes stored together", "yes" if s["clustered"] else
                  "no (sorted by DuckDB into a temporary file while reading)")
    print_table(t)


# Commands of each layer: one module per command group, each with register(app).
_GROUPS = ("_ope", "_learn", "_fairness", "_rmab", "_causal", "_online", "_pipeline",
           "_explain")
for _name in _GROUPS:
    importlib.import_module(f"equicare.cli.{_name}").register(app)


def main() -> None:
    """Entry point of the ``equicare`` script (and ``python -m equicare.cli``).

    The process exits after the command: once it is done, SIGTERM is ignored, so a finished
    run exits 0 whatever arrives during interpreter exit.
    """
    import signal

    try:
        app(own_process=True)
    finally:  # exiting with the command's code (also --version, a usage error)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    main()
