"""CLI commands of the pipeline layer: run, sweep, report, runs list|show|compare."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from equicare.cli._choices import Example, ExecutorName
from equicare.cli._utils import (
    EquicareGroup,
    Force,
    JsonOut,
    Progress,
    Threads,
    check_out_path,
    console,
    fail,
    print_json,
    print_table,
    user_errors,
)

__all__ = ["register"]


EXAMPLES = {"care": "care_demo.toml"}

_CONFIG_ARG = typer.Argument(help="Run configuration TOML (or use --example).")
_EXAMPLE_OPT = typer.Option(help="Use a configuration shipped with equicare instead of a "
                                "file (its run store: ./runs unless --store).")
_SET_OPT = typer.Option("--set", help="Override a config key SECTION.KEY=VALUE (JSON value, "
                                     "repeatable), e.g. learner.n_steps=500.")
_STORE_HELP = "Run store folder (DuckDB database + one folder per run)."



def example_path(name: str) -> Path:
    """Path of a run configuration shipped with equicare (``--example care``)."""
    from importlib.resources import files

    return Path(str(files("equicare") / "examples" / EXAMPLES[name]))


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["learner.n_steps=500", "learner.encoder=lstm"]`` -> dotted overrides (JSON values)."""
    import json

    from equicare.exceptions import InvalidParameterError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key.strip():
            raise InvalidParameterError(
                f"--set must look like SECTION.KEY=VALUE (e.g. learner.n_steps=500); got "
                f"{item!r}.")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


#: A --set override the config refuses: the flags first, then the config's own message.
MSG_BAD_SET = "{sets}: {error}"


def _load(config: Path | None, example: Example | None, sets: list[str] | None,
          store: Path | None) -> tuple[Any, Path | None]:
    """The checked run config and the store root (``./runs`` for a shipped example)."""
    from equicare.pipeline import load_run_config

    if (config is None) == (example is None):
        fail("give a run configuration TOML or --example NAME (not both).")
    path = example_path(example.value) if example is not None else config
    assert path is not None  # exactly one of the two was given (checked above)
    cfg = load_run_config(path)
    overrides = _parse_sets(sets)
    if overrides:
        from equicare.exceptions import ConfigError

        try:
            cfg = cfg.with_overrides(overrides)
        except ConfigError as exc:  # the override is the mistake, not the file it names
            raise ConfigError(MSG_BAD_SET.format(sets=" ".join(f"--set {x}" for x in sets or ()),
                                                 error=exc)) from None
    if store is None and example is not None:
        store = Path("runs")
    return cfg, store


def _resolve_run(s: Any, run_id: str) -> dict[str, Any]:
    """``latest`` is the newest run, ``latest~N`` the N-th before it; else an id or a prefix."""
    from equicare.exceptions import UnknownNameError

    name, sep, back = run_id.partition("~")
    if name == "latest":
        if sep and not back.isdigit():
            raise UnknownNameError(f"A run named relative to the newest is latest or latest~N "
                                   f"(N = 1, 2, ...); got {run_id!r}.")
        k = int(back) if sep else 0
        df = s.list_runs()
        if len(df) <= k:
            raise UnknownNameError(f"{run_id}: the run store {s.root} holds {len(df)} run(s).")
        run_id = str(df.iloc[k]["run_id"])
    return dict(s.get_run(run_id))


def register(app: typer.Typer) -> None:
    """Add ``run``, ``sweep``, ``report`` and ``runs`` to ``app``."""

    @app.command()
    def run(
        config: Annotated[Path | None, _CONFIG_ARG] = None,
        example: Annotated[Example | None, _EXAMPLE_OPT] = None,
        set_: Annotated[list[str] | None, _SET_OPT] = None,
        store: Annotated[
            Path | None,
            typer.Option(help="Run store folder (default: output.store of the config)."),
        ] = None,
        seed: Annotated[int | None, typer.Option(
            min=0, help="Random seed of the learning, evaluation and audit (default: the "
                        "config's seed). A synthetic panel keeps its own seed, "
                        "data.synthetic.seed (--set data.synthetic.seed=S draws another "
                        "panel).")] = None,
        show_config: Annotated[bool, typer.Option(
            "--show-config", help="Print the configuration TOML and exit (to copy and edit); "
                                  "with --set or --seed, the config they give.")
        ] = False,
        progress: Progress = True,
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """Run the main job: data -> policy -> evaluation -> fairness audit -> HTML report.

        No streamed mode (no --chunk-rows): the panel is loaded in memory; for a panel larger
        than memory run validate, train, evaluate and audit with --chunk-rows (docs/scale.md).

        Example: equicare run --example care
        """
        from equicare.pipeline._run import run_pipeline

        if show_config:
            src = example_path(example.value) if example is not None else config
            if src is None or not src.is_file():
                fail("--show-config needs a run configuration TOML or --example NAME.")
            if not set_ and seed is None:  # the file as written, comments and all
                typer.echo(src.read_text(encoding="utf-8"), nl=False)
                return
            with user_errors():  # what would run: the overrides applied, every setting
                cfg, _ = _load(config, example, set_, store)
                if seed is not None:
                    cfg = cfg.with_overrides({"seed": seed})
            typer.echo(f"# {src} with --set/--seed applied (every setting, defaults included)")
            typer.echo(cfg.to_toml(), nl=False)
            return
        with user_errors():
            cfg, root = _load(config, example, set_, store)
            if seed is not None:
                cfg = cfg.with_overrides({"seed": seed})
        try:
            with user_errors():
                out = run_pipeline(cfg, store_root=root, progress=progress)
        except KeyboardInterrupt:
            from equicare.cli._utils import err_console

            err_console.print("[bold red]error:[/] interrupted; the run is marked "
                              "'interrupted' in the run store.", highlight=False)
            raise typer.Exit(code=130) from None
        if json_out:
            print_json({"run_id": out.run_id, "report": str(out.report),
                        "stage_seconds": out.stage_seconds, "summary": out.summary})
            return
        _print_outcome(out)

    @app.command()
    def sweep(
        config: Annotated[Path | None, _CONFIG_ARG] = None,
        grid: Annotated[
            list[str] | None,
            typer.Option(help="Grid axis 'section.key=[v1,v2,...]' (repeat for more axes); "
                                "'seed=[0,1,2]' runs each point with those seeds (else each "
                                "point gets its own, derived from the config's seed); a "
                                "synthetic panel keeps data.synthetic.seed unless that is "
                                "an axis too."),
        ] = None,
        example: Annotated[Example | None, _EXAMPLE_OPT] = None,
        set_: Annotated[list[str] | None, _SET_OPT] = None,
        executor: Annotated[
            ExecutorName | None,
            typer.Option(help="local (process pool), serial or ray (default: output.executor)."),
        ] = None,
        jobs: Annotated[
            int | None,
            typer.Option(min=1, help="Worker processes (local), or CPUs of a Ray cluster "
                                     "started here."),
        ] = None,
        address: Annotated[
            str | None,
            typer.Option(
                help="Ray address: auto (a running cluster), local (start one here with --jobs "
                "CPUs) or HOST:PORT (default: output.address)."
            ),
        ] = None,
        store: Annotated[Path | None, typer.Option(help=_STORE_HELP)] = None,
        progress: Progress = True,
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """Train and evaluate over a grid of settings; heatmaps in the sweep report.

        --executor runs grid points in parallel; there is no streamed mode (no --chunk-rows):
        each point loads the panel in memory (docs/scale.md).

        Example: equicare sweep --example care --set learner.encoder=lstm
        --grid 'learner.window=[2,4,6,8]' --grid 'reward.engagement=[0,0.1,0.3,0.5]'
        --jobs 2 (on Ray: --executor ray --address auto)
        """
        from equicare.pipeline import parse_grid
        from equicare.pipeline._sweep import run_sweep

        if not grid:
            fail("give at least one --grid 'section.key=[v1,v2,...]'.")
        with user_errors():
            cfg, root = _load(config, example, set_, store)
            axes = dict(parse_grid(g) for g in grid or [])
            given = {"executor": None if executor is None else executor.value, "jobs": jobs,
                     "address": address}
            cfg = cfg.with_overrides({f"output.{k}": v for k, v in given.items() if v is not None})
            # run_sweep builds the executor from output.* and shuts down a Ray session it opens
            res = run_sweep(cfg, axes, store_root=root, progress=progress)
        cols = [c for c in res.table.columns if not str(c).endswith(("_ci_low", "_ci_high"))]
        if json_out:
            print_json({"run_id": res.run_id, "report": str(res.report),
                        "table": res.table.to_dict(orient="records")})
            return
        from rich.table import Table

        t = Table(title=f"Sweep {res.run_id}")
        for c in cols:
            t.add_column(str(c), overflow="fold")
        # by column (itertuples), not by row (iterrows upcasts an int seed to float: 1.371e+09)
        for r in res.table[cols].itertuples(index=False):
            t.add_row(*[_sweep_cell(v) for v in r])
        print_table(t)
        console.print(f"report: {res.report}", highlight=False, markup=False)

    @app.command()
    def report(
        run_id: Annotated[str, typer.Argument(
            help="Run id, a unique prefix, latest or latest~N.")],
        store: Annotated[Path, typer.Option(help=_STORE_HELP)] = Path("runs"),
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Write the report here, figures embedded; the run's folder "
                                "is left as it is (default: report.html in the run's folder, "
                                "with --force).")] = None,
        force: Force = False,
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """Regenerate a run's HTML report from the run store.

        Example: equicare report latest --store runs --out report.html
        """
        from equicare.report import build_run_report

        with user_errors():
            s = _existing_store(store)
            row = _resolve_run(s, run_id)
            if row["status"] != "finished":
                fail(f"run {row['run_id']} is {row['status']}; only finished runs have a report.")
            d = s.run_dir(row["run_id"])
            path = out if out is not None else d / "report.html"
            check_out_path(path, force, file=True)
            if (d / "sweep.csv").is_file():
                import tempfile

                import pandas as pd

                from equicare.pipeline._sweep import _sweep_report
                from equicare.utils import atomic_write

                grid = row["config"]["sweep"]
                with tempfile.TemporaryDirectory() as tmp:
                    html = _sweep_report(pd.read_csv(d / "sweep.csv"), list(grid), Path(tmp),
                                         row["run_id"], grid).read_bytes()
                with atomic_write(path, "wb") as fh:
                    fh.write(html)
            else:
                # A finished run's folder is an archive: a report written elsewhere embeds its
                # figures and writes no copies (they went to the run's figures/ before);
                # only the run's own report.html (--force) refreshes the run's figures.
                in_place = path.resolve() == (d / "report.html").resolve()
                build_run_report(d, run_id=row["run_id"], config=row["config"],
                                 figure_copies=in_place).write(path)
        if json_out:
            print_json({"run_id": row["run_id"], "report": str(path)})
            return
        console.print(f"report: {path}", highlight=False, markup=False)

    runs_app = typer.Typer(
        cls=EquicareGroup,
        help="List, show and compare runs in the run store.\n\n"
        "Example: equicare runs list --store runs",
        no_args_is_help=True,
    )
    app.add_typer(runs_app, name="runs")

    @runs_app.command("list")
    def runs_list(
        store: Annotated[Path, typer.Option(help=_STORE_HELP)] = Path("runs"),
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """List runs, newest first.

        Example: equicare runs list --store runs
        """
        from rich.table import Table
        from rich.text import Text

        with user_errors():
            df = _existing_store(store).list_runs()
        if json_out:
            print_json(df.to_dict(orient="records"))
            return
        t = Table(title=f"Runs in {store}")
        for c in ("run_id", "name", "status", "started", "seed", "config_hash"):
            t.add_column(c, no_wrap=c in ("run_id", "status"), overflow="fold")
        for _, r in df.iterrows():
            color = {"finished": "green", "running": "yellow"}.get(r["status"], "red")
            t.add_row(
                r["run_id"],
                str(r["name"] or ""),
                Text(str(r["status"]), style=color),  # a style, not markup: cells are literal
                str(r["started"])[:19],
                str(r["seed"]),
                r["config_hash"],
            )
        print_table(t)

    @runs_app.command("show")
    def runs_show(
        run_id: Annotated[str, typer.Argument(
            help="Run id, a unique prefix, latest or latest~N.")],
        store: Annotated[Path, typer.Option(help=_STORE_HELP)] = Path("runs"),
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """Show one run's status and metrics.

        Example: equicare runs show latest --store runs
        """
        from rich.table import Table


        with user_errors():
            s = _existing_store(store)
            row = _resolve_run(s, run_id)
            m = s.metrics(row["run_id"])
            inputs = s.inputs(row["run_id"])
        if json_out:
            print_json({"run": dict(row.items()), "metrics": m.to_dict("records"),
                        "inputs": inputs})
            return
        console.print(
            f"{row['run_id']} {row['status']}  started {row['started']}  "
            f"seed {row['seed']}  git {row['git_revision']}", highlight=False, markup=False
        )
        message = _text(row.get("message"))
        if row["status"] != "finished" and message:
            console.print(f"message: {message}", highlight=False, markup=False)
        for role, files in (inputs or {}).items():
            for f in files:
                console.print(f"{role}: {f['path']} (sha256 {f['sha256'][:12]}, "
                              f"{f['bytes']:,} bytes)", highlight=False, markup=False)
        t = Table()
        for c in ("name", "group", "value", "ci_low", "ci_high"):
            t.add_column(c, overflow="fold")
        for _, r in m.iterrows():
            t.add_row(
                r["name"],
                _text(r["group"]),
                _fmt(r["value"], "n/a"),
                _fmt(r["ci_low"]),
                _fmt(r["ci_high"]),
            )
        if m["value"].isna().any():
            t.caption = NO_VALUE_CAPTION
        print_table(t)

    @runs_app.command("compare")
    def runs_compare(
        run_a: Annotated[str, typer.Argument(
            help="First run: id, unique prefix, latest or latest~N.")],
        run_b: Annotated[str, typer.Argument(
            help="Second run: id, unique prefix, latest or latest~N.")],
        store: Annotated[Path, typer.Option(help=_STORE_HELP)] = Path("runs"),
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """Compare two runs' metrics side by side.

        A metric named after a run's learner is compared under its role (``ope.dr.learned``),
        and the settings the two configs differ in are listed first, then the input files
        whose SHA-256 differ (a panel regenerated in place under the same config). Two sweeps
        compare point by point (``sweep.dr`` per grid point); a sweep and a single run do not
        (exit code 2).

        Example: equicare runs compare latest~1 latest --store runs
        """
        from rich.markup import escape
        from rich.table import Table


        with user_errors():
            s = _existing_store(store)
            ra, rb = _resolve_run(s, run_a), _resolve_run(s, run_b)
            a, b = ra["run_id"], rb["run_id"]
            df = s.compare(a, b)
            diff = s.config_diff(a, b)
            files = s.inputs_diff(a, b)
        if json_out:
            print_json({"a": a, "b": b, "status_a": ra["status"], "status_b": rb["status"],
                        "metrics": df.to_dict(orient="records"),
                        "config_diff": [{"key": k, "a": va, "b": vb} for k, va, vb in diff],
                        "inputs_diff": [{"role": r, "a": da, "b": db} for r, da, db in files]})
            return
        if diff:
            console.print(escape(
                "The configs differ (differences below may come from these): "
                + "; ".join(f"{k}: {va!r} -> {vb!r}" for k, va, vb in diff)), highlight=False)
        for label, r in (("A", ra), ("B", rb)):  # its column is blank: say why
            if r["status"] != "finished":
                console.print(MSG_COMPARE_UNFINISHED.format(label=label, run=r["run_id"],
                                                            status=r["status"]),
                              highlight=False, markup=False)
        if files:  # the same config can read other data: a panel regenerated in place
            console.print(escape(
                "The input files differ (SHA-256 in the runs' inputs.json; differences below "
                "may come from these): " + "; ".join(
                    f"{r}: {', '.join(d[:12] for d in da) or 'none'} -> "
                    f"{', '.join(d[:12] for d in db) or 'none'}" for r, da, db in files)),
                highlight=False)
        t = Table(title=f"{a} vs {b}")
        for c in ("name", "group", "A", "B", "B - A"):
            t.add_column(c, overflow="fold")
        for _, r in df.iterrows():
            t.add_row(
                r["name"],
                _text(r["group"]),
                _fmt(r["value_a"]),
                _fmt(r["value_b"]),
                _fmt(r["diff"]),
            )
        print_table(t)


#: ``runs compare`` of a run that did not finish (tests match it).
MSG_COMPARE_UNFINISHED = ("{label} ({run}) is {status}: metrics are recorded when a run "
                          "finishes, so its column is empty.")


def _existing_store(store: Path) -> Any:
    """The run store at ``store``, or a user error when there is none (never create one)."""
    from equicare.exceptions import InvalidParameterError
    from equicare.pipeline import RunStore
    from equicare.pipeline._store import check_store_folder

    check_store_folder(store)
    if not (Path(store) / "equicare.duckdb").is_file():
        raise InvalidParameterError(
            f"No run store at {store} (no equicare.duckdb there); runs are stored where "
            "`equicare run --store` or the config's [output] store put them (default: runs).")
    # a store this user may not write (an auditor's read-only copy) is still read; only a
    # writable one marks the runs of processes gone as interrupted
    writable = all(os.access(p, os.W_OK) for p in (store, Path(store) / "equicare.duckdb"))
    return RunStore(store, read_only=not writable)


def _text(v: object) -> str:
    """A table cell: ``""`` for a missing value (``None``, ``NaN``), else ``str(v)``."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return str(v)


def _sweep_cell(v: object) -> str:
    """A sweep table cell: integers (a point's seed) in full, ``run --seed S`` takes them."""
    import numpy as np

    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def _fmt(v: object, missing: str = "") -> str:
    """A metric's number with 4 significant digits, ``missing`` when it has none."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return missing
    return missing if f != f else f"{f:.4g}"


#: Under ``runs show``/``runs compare`` tables that hold a value without a number.
NO_VALUE_CAPTION = ("n/a: no value stored (withheld: a small cell, or importance weights "
                    "resting on fewer than 11 episodes; or not computable); the run folder's "
                    "result.json and audit.json say why for each")


def _num(x: float) -> str:
    """A value of the run's table: 4 decimals, :func:`~equicare.utils.value_text` from 1,000 on.

    Blown-up importance weights gave an ICU run's IS as 48 digits and a 4-decimal tail
    (1206224360637499935839637233738023323098834534400.0000), its interval twice as wide;
    costs in dollars read -5863.0250 (now -5,863).
    """
    from equicare.utils import value_text

    return value_text(x, ".4f")


def _print_outcome(out: object) -> None:
    from rich.table import Table

    # the id on a line of its own: a table title wraps to the table's width, splitting it
    console.print(f"Run {out.run_id} finished",  # type: ignore[attr-defined]
                  highlight=False, soft_wrap=True, markup=False)
    t = Table(title="Stages")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for k, v in out.stage_seconds.items():  # type: ignore[attr-defined]
        t.add_row(k, f"{v:.1f}")
    print_table(t)
    s = out.summary  # type: ignore[attr-defined]
    if "estimates" in s:
        t2 = Table(title="Policy value (held-out episodes)")
        far = set(s.get("out_of_range") or [])  # far outside the observed returns: not values
        for c in ("estimator", "value", "95% CI") + (("note",) if far else ()):
            t2.add_column(c)
        pad = ("",) if far else ()
        t2.add_row("behaviour (observed)", _num(s["behavior_value"]), "", *pad)
        for k, e in s["estimates"].items():
            t2.add_row(k, _num(e["value"]), f"[{_num(e['ci'][0])}, {_num(e['ci'][1])}]",
                       *(("off range: not a value" if k in far else "",) if far else ()))
        for k, tr in s.get("truth", {}).items():
            t2.add_row(f"TRUE {k} (simulator)", _num(tr["value"]), f"± {_num(1.96 * tr['se'])}",
                       *pad)
        print_table(t2)
    for k, v in s.get("parity_gap_pp", {}).items():
        console.print(f"parity gap ({k}): {v:.2f} pp", markup=False)
    console.print(f"report: {out.report}", highlight=False, markup=False)  # type: ignore[attr-defined]
