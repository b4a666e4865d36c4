"""CLI commands of the pipeline layer: run, sweep, report, runs list|show|compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from equicare.cli._utils import console, fail, print_json, user_errors

__all__ = ["register"]


def _store_opt() -> object:
    return typer.Option(help="Run store folder (DuckDB database + one folder per run).")


def register(app: typer.Typer) -> None:
    """Add ``run``, ``sweep``, ``report`` and ``runs`` to ``app``."""

    @app.command()
    def run(
        config: Annotated[Path, typer.Argument(help="Run configuration TOML.")],
        store: Annotated[
            Path | None,
            typer.Option(help="Run store folder (default: output.store of the config)."),
        ] = None,
        seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
        quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    ) -> None:
        """Run the main job: data -> policy -> evaluation -> fairness audit -> HTML report.

        Example: equicare run examples/care_demo.toml
        """
        from equicare.pipeline import load_run_config
        from equicare.pipeline._run import run_pipeline

        with user_errors():
            cfg = load_run_config(config)
            if seed is not None:
                cfg = cfg.with_overrides({"seed": seed})
        try:
            with user_errors():
                out = run_pipeline(cfg, store_root=store, progress=not quiet)
        except KeyboardInterrupt:
            fail("interrupted; the run is marked 'interrupted' in the run store.")
            return
        _print_outcome(out)

    @app.command()
    def sweep(
        config: Annotated[Path, typer.Argument(help="Run configuration TOML.")],
        grid: Annotated[
            list[str],
            typer.Option(help="Grid axis 'section.key=\\[v1,v2,...]' (repeat for more axes)."),
        ],
        executor: Annotated[
            str | None,
            typer.Option(help="local (process pool), serial or ray (default: output.executor)."),
        ] = None,
        jobs: Annotated[
            int | None,
            typer.Option(help="Worker processes (local), or CPUs of a Ray cluster started here."),
        ] = None,
        address: Annotated[
            str | None,
            typer.Option(
                help="Ray address: auto (a running cluster), local (start one here with --jobs "
                "CPUs) or HOST:PORT (default: output.address)."
            ),
        ] = None,
        store: Annotated[Path | None, typer.Option(help="Run store folder.")] = None,
        quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    ) -> None:
        """Train and evaluate over a grid of settings; heatmaps in the sweep report.

        Example: equicare sweep examples/care_demo.toml --grid 'learner.window=[2,4,6,8]'
        --grid 'reward.engagement=[0,0.1,0.3,0.5]' --jobs 2
        (on Ray: --executor ray --address auto)
        """
        from equicare.pipeline import load_run_config, parse_grid
        from equicare.pipeline._sweep import run_sweep

        with user_errors():
            cfg = load_run_config(config)
            axes = dict(parse_grid(g) for g in grid)
            given = {"executor": executor, "jobs": jobs, "address": address}
            cfg = cfg.with_overrides({f"output.{k}": v for k, v in given.items() if v is not None})
            # run_sweep builds the executor from output.* and shuts down a Ray session it opens
            res = run_sweep(cfg, axes, store_root=store, progress=not quiet)
        from rich.table import Table

        t = Table(title=f"Sweep {res.run_id}")
        for c in res.table.columns:
            if not c.endswith(("_ci_low", "_ci_high")):
                t.add_column(str(c))
        for _, r in res.table.iterrows():
            t.add_row(
                *[
                    f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                    for c in res.table.columns
                    if not c.endswith(("_ci_low", "_ci_high"))
                ]
            )
        console.print(t)
        console.print(f"report: [bold]{res.report}[/]")

    @app.command()
    def report(
        run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
        store: Annotated[Path, typer.Option(help="Run store folder.")] = Path("runs"),
    ) -> None:
        """Regenerate a run's HTML report from the run store.

        Example: equicare report 20261122-101500-ab12cd --store runs
        """
        from equicare.pipeline import RunStore
        from equicare.report import build_run_report

        with user_errors():
            s = RunStore(store)
            row = s.get_run(run_id)
            if row["status"] != "finished":
                fail(f"run {row['run_id']} is {row['status']}; only finished runs have a report.")
            d = s.run_dir(row["run_id"])
            if (d / "sweep.csv").is_file():
                import pandas as pd

                from equicare.pipeline._sweep import _sweep_report

                grid = row["config"]["sweep"]
                path = _sweep_report(
                    pd.read_csv(d / "sweep.csv"), list(grid), d, row["run_id"], grid
                )
            else:
                path = build_run_report(d, run_id=row["run_id"], config=row["config"]).write(
                    d / "report.html"
                )
        console.print(f"report: [bold]{path}[/]")

    runs_app = typer.Typer(
        help="List, show and compare runs in the run store.\n\n"
        "Example: equicare runs list --store runs",
        no_args_is_help=True,
    )
    app.add_typer(runs_app, name="runs")

    @runs_app.command("list")
    def runs_list(
        store: Annotated[Path, typer.Option(help="Run store folder.")] = Path("runs"),
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """List runs, newest first.

        Example: equicare runs list --store runs
        """
        from rich.table import Table

        from equicare.pipeline import RunStore

        with user_errors():
            df = RunStore(store).list_runs()
        if json_out:
            print_json(df.to_dict(orient="records"))
            return
        t = Table(title=f"Runs in {store}")
        for c in ("run_id", "name", "status", "started", "seed", "config_hash"):
            t.add_column(c)
        for _, r in df.iterrows():
            color = {"finished": "green", "running": "yellow"}.get(r["status"], "red")
            t.add_row(
                r["run_id"],
                str(r["name"] or ""),
                f"[{color}]{r['status']}[/]",
                str(r["started"])[:19],
                str(r["seed"]),
                r["config_hash"],
            )
        console.print(t)

    @runs_app.command("show")
    def runs_show(
        run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
        store: Annotated[Path, typer.Option(help="Run store folder.")] = Path("runs"),
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Show one run's status and metrics.

        Example: equicare runs show 20261122-101500 --store runs
        """
        from rich.table import Table

        from equicare.pipeline import RunStore

        with user_errors():
            s = RunStore(store)
            row = s.get_run(run_id)
            m = s.metrics(row["run_id"])
        if json_out:
            print_json({"run": {k: v for k, v in row.items()}, "metrics": m.to_dict("records")})
            return
        console.print(
            f"[bold]{row['run_id']}[/] {row['status']}  started {row['started']}  "
            f"seed {row['seed']}  git {row['git_revision']}"
        )
        t = Table()
        for c in ("name", "group", "value", "ci_low", "ci_high"):
            t.add_column(c)
        for _, r in m.iterrows():
            t.add_row(
                r["name"],
                str(r["group"] or ""),
                _fmt(r["value"]),
                _fmt(r["ci_low"]),
                _fmt(r["ci_high"]),
            )
        console.print(t)

    @runs_app.command("compare")
    def runs_compare(
        run_a: Annotated[str, typer.Argument(help="First run id.")],
        run_b: Annotated[str, typer.Argument(help="Second run id.")],
        store: Annotated[Path, typer.Option(help="Run store folder.")] = Path("runs"),
    ) -> None:
        """Compare two runs' metrics side by side.

        Example: equicare runs compare RUN_A RUN_B --store runs
        """
        from rich.table import Table

        from equicare.pipeline import RunStore

        with user_errors():
            df = RunStore(store).compare(run_a, run_b)
        t = Table(title=f"{run_a} vs {run_b}")
        for c in ("name", "group", "A", "B", "B - A"):
            t.add_column(c)
        for _, r in df.iterrows():
            t.add_row(
                r["name"],
                str(r["group"] or ""),
                _fmt(r["value_a"]),
                _fmt(r["value_b"]),
                _fmt(r["diff"]),
            )
        console.print(t)


def _fmt(v: object) -> str:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return "" if f != f else f"{f:.4g}"


def _print_outcome(out: object) -> None:
    from rich.table import Table

    t = Table(title=f"Run {out.run_id} finished")  # type: ignore[attr-defined]
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for k, v in out.stage_seconds.items():  # type: ignore[attr-defined]
        t.add_row(k, f"{v:.1f}")
    console.print(t)
    s = out.summary  # type: ignore[attr-defined]
    if "estimates" in s:
        t2 = Table(title="Policy value (held-out episodes)")
        for c in ("estimator", "value", "95% CI"):
            t2.add_column(c)
        t2.add_row("behaviour (observed)", f"{s['behavior_value']:.4f}", "")
        for k, e in s["estimates"].items():
            t2.add_row(k, f"{e['value']:.4f}", f"[{e['ci'][0]:.4f}, {e['ci'][1]:.4f}]")
        for k, tr in s.get("truth", {}).items():
            t2.add_row(f"TRUE {k} (simulator)", f"{tr['value']:.4f}", f"± {1.96 * tr['se']:.4f}")
        console.print(t2)
    for k, v in s.get("parity_gap_pp", {}).items():
        console.print(f"parity gap ({k}): {v:.2f} pp")
    console.print(f"report: [bold]{out.report}[/]")  # type: ignore[attr-defined]
