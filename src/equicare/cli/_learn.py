"""``equicare train`` and ``equicare predict``: plain functions + a Typer ``register(app)``.

The functions take parsed arguments, return a plain result dictionary and raise
``ValueError`` / :class:`~equicare.exceptions.DataValidationError` with a one-line message on bad
input; the Typer commands print that message on stderr and exit with code 2.
"""

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from equicare.exceptions import DataValidationError, PolicyError
from equicare.utils import PARAM_MESSAGE

if TYPE_CHECKING:  # pragma: no cover
    import typer

__all__ = ["train_model", "predict_policy", "select_train", "print_selection", "register",
           "ALGOS", "ENCODERS"]

ALGOS = ("bc", "awr", "cql", "spibb")
ENCODERS = ("mlp", "lstm")


def _fail(name: str, expected: str, got: Any) -> None:
    raise ValueError(PARAM_MESSAGE.format(name=name, owner="equicare train", expected=expected,
                                          got=got))


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` learner settings; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param must look like KEY=VALUE (e.g. beta=0.3), got {item!r}.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def _refuse_existing(path: Path, force: bool, what: str) -> None:
    if path.exists() and not force and (path.is_file() or any(path.iterdir())):
        raise FileExistsError(f"{what} {path} exists; pass --force to overwrite it.")


def train_model(data: str | os.PathLike[str], manifest: str | os.PathLike[str], *,
                out: str | os.PathLike[str], algo: str = "awr", encoder: str = "mlp",
                window: int = 4, fair_action: str | None = None,
                fair_lambda: float | None = None, group_robust: float | None = None,
                steps: int = 20000, seed: int = 0, params: dict[str, Any] | None = None,
                force: bool = False, progress: bool = False) -> dict[str, Any]:
    """Train an offline learner on a panel and save the model folder.

    Parameters
    ----------
    data, manifest : path
        Panel table (CSV, Parquet, DuckDB) and its TOML manifest.
    out : path
        Model folder to write (refused if it exists and is not empty, unless ``force``).
    algo : {"bc", "awr", "cql"}
    encoder : {"mlp", "lstm"}
    window : int
        History rows of the LSTM encoder (>= 1).
    fair_action : str, optional
        Action set of the parity penalty, e.g. ``"modality=home_visit"``.
    fair_lambda : float, optional
        Penalty weight (>= 0; default 1.0 when ``fair_action`` is given).
    group_robust : float, optional
        Group-DRO weight in [0, 1].
    steps, seed : int
    params : dict, optional
        Other learner config fields (``{"beta": 0.3, "hidden": (128, 128)}``).
    force, progress : bool

    Returns
    -------
    dict
        Model folder, algorithm, steps, best step, last validation loss, support size, seconds.
    """
    from equicare.data import load_dataset
    from equicare.learn._registry import LEARNERS

    if algo not in ALGOS:
        _fail("algo", "one of " + ", ".join(repr(a) for a in ALGOS), algo)
    if encoder not in ENCODERS:
        _fail("encoder", "one of " + ", ".join(repr(e) for e in ENCODERS), encoder)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        _fail("window", "an int >= 1", window)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        _fail("steps", "an int >= 1", steps)
    if fair_lambda is not None and not fair_lambda >= 0:
        _fail("fair_lambda", "a number >= 0", fair_lambda)
    if fair_lambda is not None and fair_lambda > 0 and fair_action is None:
        _fail("fair_action", "an action set such as 'modality=home_visit' when --fair-lambda "
              "is given", None)
    if group_robust is not None and not 0 <= group_robust <= 1:
        _fail("group_robust", "a number in [0, 1]", group_robust)
    out_path = Path(out)
    _refuse_existing(out_path, force, "Model folder")
    klass = LEARNERS[algo]
    kw: dict[str, Any] = dict(params or {})
    if algo != "spibb":  # SPIBB is tabular: no encoder, steps or seed
        kw.update(encoder=encoder, window=window, n_steps=steps, seed=seed)
    if fair_action is not None:
        kw.update(fair_action=fair_action, fair_lambda=1.0 if fair_lambda is None else fair_lambda)
    if group_robust is not None:
        kw["group_robust"] = group_robust
    known = sorted(klass.config_class.__dataclass_fields__)
    unknown = sorted(set(kw) - set(known))
    if unknown:
        raise ValueError(f"Unknown learner setting for {algo}: {', '.join(unknown)}; known "
                         f"settings: {', '.join(known)}.")
    try:
        config = klass.config_class(**kw)
    except TypeError as exc:  # a setting of the wrong type (house-style message)
        raise ValueError(str(exc)) from exc
    ds = load_dataset(data, manifest, emit_warnings=False)
    if fair_action is not None:
        ds.action_space.parse_action_set(fair_action)  # unknown component / level -> ValueError
    t0 = time.perf_counter()
    learner = klass(config).fit(ds, progress=progress)
    seconds = time.perf_counter() - t0
    learner.save(out_path, overwrite=force)
    if algo == "spibb":
        return {"model_dir": str(out_path), "algo": algo, "n_cells": learner.n_cells_,
                "bootstrapped_share": float(learner.bootstrapped_.mean()),
                "model_value": learner.value_, "model_behavior_value": learner.behavior_value_,
                "n_actions": ds.n_actions, "n_episodes": ds.n_episodes, "n_rows": ds.n_steps,
                "seconds": round(seconds, 2)}
    last = learner.history_[-1] if learner.history_ else {}
    return {"model_dir": str(out_path), "algo": algo, "encoder": encoder,
            "window": config.input_window, "n_steps": learner.n_steps_done_,
            "best_step": learner.best_step_, "valid_loss": last.get("valid_loss"),
            "n_actions": ds.n_actions, "support_size": int(learner.support_.size),
            "n_episodes": ds.n_episodes, "n_rows": ds.n_steps, "seconds": round(seconds, 2)}


def select_train(data: str | os.PathLike[str], manifest: str | os.PathLike[str], *,
                 out: str | os.PathLike[str], seed: int = 0, params: dict[str, Any] | None = None,
                 force: bool = False, progress: bool = False) -> dict[str, Any]:
    """``equicare train --select auto``: :func:`equicare.pipeline._select.train_select`.

    ``params`` holds :class:`~equicare.pipeline._select.SelectConfig` fields
    (``n_wedges=[5,20]``, ``neural=[]``, ``bootstrap=500`` ...).
    """
    import sys

    from equicare.pipeline._select import SelectConfig, train_select

    kw = dict(params or {})
    kw.setdefault("seed", seed)
    known = sorted(SelectConfig.__dataclass_fields__)
    unknown = sorted(set(kw) - set(known))
    if unknown:
        raise ValueError(f"Unknown selection setting: {', '.join(unknown)}; known settings: "
                         f"{', '.join(known)}.")
    try:
        cfg = SelectConfig(**kw)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc

    def say(msg: str) -> None:
        if progress:
            print(f"[select] {msg}", file=sys.stderr, flush=True)

    return train_select(data, manifest, out=out, config=cfg, force=force, progress=say)


def print_selection(res: dict[str, Any]) -> None:
    """Print the candidates table (Rich) and the choice."""
    from rich.console import Console
    from rich.table import Table

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    beh = res["behavior"]
    t = Table(title=f"Candidates (held-out; behaviour value {beh['value']:.4f})")
    for col in ("candidate", "value", "lower", "upper", "beats behaviour", "train s", "note"):
        t.add_column(col)
    for c in res["candidates"]:
        beats = "" if c["lcb"] is None else ("yes" if c["lcb"] > beh["value"] else "no")
        mark = " *" if c["name"] == res["chosen"] else ""
        t.add_row(c["name"] + mark, f(c["value"]), f(c["lcb"]), f(c["ucb"]), beats,
                  f"{c['train_seconds']:.1f}", c["error"] or "")
    con = Console()
    con.print(t)
    how = ("fallback: no lower bound beats the behaviour; the model reproduces the behaviour "
           "policy" if res["fallback"] else f"kept {res['chosen']}")
    con.print(f"{how}. Wrote {res['model_dir']} (selection.json) in {res['seconds']:.1f} s.")


def predict_policy(model_dir: str | os.PathLike[str], data: str | os.PathLike[str],
                   manifest: str | os.PathLike[str], *, out: str | os.PathLike[str],
                   form: str = "wide", force: bool = False) -> dict[str, Any]:
    """Write a trained policy's probabilities for every row of a panel (Contract 2 file).

    Raises
    ------
    PolicyError
        The model folder is missing/malformed or was trained on another action space or other
        state columns.
    FileExistsError
        ``out`` exists and ``force`` is False.
    """
    from equicare.data import load_dataset
    from equicare.policy import write_policy_file
    from equicare.policy._learned import load_policy

    if form not in ("wide", "long"):
        raise ValueError(PARAM_MESSAGE.format(name="form", owner="equicare predict",
                                              expected="one of 'wide', 'long'", got=form))
    out_path = Path(out)
    if out_path.suffix.lower() not in (".parquet", ".pq", ".csv"):
        raise ValueError(f"--out must end in .parquet or .csv, got {out_path.name!r}.")
    _refuse_existing(out_path, force, "Output file")
    policy = load_policy(model_dir)
    ds = load_dataset(data, manifest, emit_warnings=False)
    probs = policy.action_probs(ds)
    write_policy_file(ds, probs, out_path, form=form, overwrite=force)  # type: ignore[arg-type]
    return {"out": str(out_path), "n_rows": ds.n_steps, "n_actions": ds.n_actions,
            "support_size": int(policy.support.size), "form": form}


def register(app: "typer.Typer") -> None:
    """Add the ``train`` and ``predict`` commands to a Typer app."""
    import typer

    def _error(exc: BaseException) -> "typer.Exit":
        from rich.console import Console

        Console(stderr=True).print(f"[red]Error:[/red] {exc}", markup=True, highlight=False,
                                   soft_wrap=True)
        return typer.Exit(code=2)

    @app.command("train")
    def train(
        data: Annotated[Path, typer.Argument(help="Panel table: CSV, Parquet or DuckDB file.")],
        manifest: Annotated[Path, typer.Option("--manifest", "-m",
                                               help="TOML manifest of the panel.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
        algo: Annotated[str, typer.Option(
            help="Learner: bc, awr, cql, spibb (tabular safe improvement), or omg (dosing: "
                 "learned reward).")] = "awr",
        encoder: Annotated[str, typer.Option(help="State encoder: mlp or lstm.")] = "mlp",
        window: Annotated[int, typer.Option(help="History weeks read by the lstm encoder.")] = 4,
        fair_action: Annotated[str | None, typer.Option(
            help="Action set of the parity penalty, e.g. modality=home_visit.")] = None,
        fair_lambda: Annotated[float | None, typer.Option(
            help="Weight of the parity penalty (>= 0; default 1.0 with --fair-action).")] = None,
        group_robust: Annotated[float | None, typer.Option(
            help="Weight in [0, 1] of the group-robust (group DRO) objective.")] = None,
        steps: Annotated[int, typer.Option(help="Gradient steps.")] = 20000,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        param: Annotated[list[str] | None, typer.Option(
            help="Other learner setting KEY=VALUE (repeatable), e.g. beta=0.3.")] = None,
        force: Annotated[bool, typer.Option(help="Overwrite an existing model folder.")] = False,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
        select: Annotated[str | None, typer.Option(
            help="auto: train candidates (SPIBB at several N_wedge, BC/AWR/CQL briefly), keep "
                 "the best held-out lower confidence bound, or the behaviour policy if none "
                 "beats it; writes selection.json into the model folder.")] = None,
    ) -> None:
        """Train an offline policy (BC, AWR, CQL, SPIBB) on a panel and save it as a model folder.

        Example: equicare train panel.parquet --manifest manifest.toml --algo awr
        --encoder lstm --window 4 --fair-action modality=home_visit --fair-lambda 1.0
        --steps 20000 --seed 0 --out models/awr_fair

        Example: equicare train garnet/panel.parquet -m garnet/manifest.toml --select auto
        --out models/safe
        """
        if select is not None:
            if select != "auto":
                raise _error(ValueError(f"--select must be 'auto', got {select!r}."))
            try:
                res = select_train(data, manifest, out=out, seed=seed,
                                   params=parse_params(param), force=force, progress=progress)
            except (DataValidationError, PolicyError, ValueError, FileExistsError,
                    KeyError) as exc:
                raise _error(exc) from None
            print_selection(res)
            return
        if algo == "omg":  # model-based offline reward learning (dosing): its own stages
            from equicare.cli._dosing import stage_progress, train_omg

            try:
                with stage_progress() as bars:
                    res = train_omg(data, manifest, out, seed=seed, force=force,
                                    progress=bars if progress else None)
            except (DataValidationError, PolicyError, ValueError, FileExistsError,
                    KeyError) as exc:
                raise _error(exc) from None
            typer.echo(json.dumps(res, indent=2, default=str))
            return
        try:
            res = train_model(data, manifest, out=out, algo=algo, encoder=encoder, window=window,
                              fair_action=fair_action, fair_lambda=fair_lambda,
                              group_robust=group_robust, steps=steps, seed=seed,
                              params=parse_params(param), force=force, progress=progress)
        except (DataValidationError, PolicyError, ValueError, FileExistsError, KeyError) as exc:
            raise _error(exc) from None
        typer.echo(json.dumps(res, indent=2))

    @app.command("predict")
    def predict(
        model_dir: Annotated[Path, typer.Argument(help="Model folder written by equicare train.")],
        data: Annotated[Path, typer.Argument(help="Panel table: CSV, Parquet or DuckDB file.")],
        manifest: Annotated[Path, typer.Option("--manifest", "-m",
                                               help="TOML manifest of the panel.")],
        out: Annotated[Path, typer.Option("--out", "-o",
                                          help="Policy file to write (.parquet or .csv).")],
        form: Annotated[str, typer.Option(help="wide (p_0..p_n-1) or long (action, prob).")
                        ] = "wide",
        force: Annotated[bool, typer.Option(help="Overwrite an existing output file.")] = False,
    ) -> None:
        """Write a trained policy's action probabilities for every row of a panel (Contract 2).

        Example: equicare predict models/awr_fair panel.parquet --manifest manifest.toml
        --out probs.parquet
        """
        try:
            res = predict_policy(model_dir, data, manifest, out=out, form=form, force=force)
        except (DataValidationError, PolicyError, ValueError, FileExistsError) as exc:
            raise _error(exc) from None
        typer.echo(json.dumps(res, indent=2))
