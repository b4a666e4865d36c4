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

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE

if TYPE_CHECKING:  # pragma: no cover
    import typer

from equicare.cli._choices import Algo, Encoder, Form, OmgReward, Select
from equicare.cli._utils import (
    PANEL_HELP,
    ChunkRows,
    Force,
    JsonOut,
    Progress,
    Seed,
    Threads,
    check_out_path,
    console,
    fail,
    not_applicable,
    print_json,
    provenance,
    user_errors,
)

__all__ = ["train_model", "predict_policy", "select_train", "print_selection", "register",
           "ALGOS", "ENCODERS"]

ALGOS = ("bc", "awr", "cql", "spibb", "pvi")
TABULAR = ("spibb", "pvi")
ENCODERS = ("mlp", "lstm")
STREAM_NO_VALIDATION = (
    "{params} do not apply with --chunk-rows: the streamed trainer has no validation split, so "
    "it runs all --steps with no early stopping and no validation loss. Drop them, or train in "
    "memory (without --chunk-rows)."
)


def _fail(name: str, expected: str, got: Any) -> None:
    raise InvalidParameterError(
        PARAM_MESSAGE.format(name=name, owner="equicare train", expected=expected,
                                          got=got))


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` learner settings; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidParameterError(
                f"--param must look like KEY=VALUE (e.g. beta=0.3), got {item!r}.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def _refuse_existing(path: Path, force: bool, what: str) -> None:
    if path.exists() and not force and (path.is_file() or any(path.iterdir())):
        raise FileExistsError(f"{what} {path} exists; refusing to overwrite it (pass --force to "
                              "replace it).")


#: predict's note under "Wrote ...": its file is row-level, not a publishable output.
MSG_ROW_LEVEL = ("This file is row-level data like the panel (one row per panel row, keyed by "
                 "its episode ids; no small-cell suppression applies): keep it where the panel "
                 "may be kept, never in a report or a shared folder.")
#: The note of a tabular learner that ignored numeric state columns, by its ``numeric`` mode.
MSG_IGNORED_NUMERIC = (
    "note: the {algo} policy ignores the numeric state columns {columns} ({why}): its cells "
    "do not read them; --param numeric=bin cuts every numeric column into quantile bins that "
    "join the cells.")
WHY_IGNORED = {"ignore": "numeric='ignore'",
               "auto": "numeric='auto', the default: their quantile bins did not predict the "
                       "logged actions beyond the cells"}

#: Learner settings that have a flag of their own: ``--param`` may not set them (the flag's
#: value, or its default, would silently win; the same key twice is ambiguous).
FLAG_PARAMS = {"n_steps": "--steps", "seed": "--seed", "encoder": "--encoder",
               "window": "--window", "fair_action": "--fair-action",
               "fair_lambda": "--fair-lambda", "group_robust": "--group-robust"}


def _refuse_flag_params(params: dict[str, Any]) -> None:
    """A user error naming the flag for each ``--param`` key that has one."""
    dup = [k for k in params if k in FLAG_PARAMS]
    if dup:
        raise InvalidParameterError(
            "--param " + ", ".join(dup) + (" has" if len(dup) == 1 else " have")
            + " a flag of " + ("its" if len(dup) == 1 else "their") + " own: use "
            + ", ".join(FLAG_PARAMS[k] for k in dup) + " instead.")


def train_model(data: str | os.PathLike[str], manifest: str | os.PathLike[str], *,
                out: str | os.PathLike[str], algo: str = "awr", encoder: str = "mlp",
                window: int = 4, fair_action: str | None = None,
                fair_lambda: float | None = None, group_robust: float | None = None,
                steps: int = 20000, seed: int = 42, params: dict[str, Any] | None = None,
                force: bool = False, progress: bool = False,
                chunk_rows: int | None = None) -> dict[str, Any]:
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
    chunk_rows : int, optional
        Stream the panel in chunks of whole episodes (bc, awr, cql;
        :func:`equicare.learn._stream.fit_stream`): mini-batches from a shuffle buffer of two
        chunks, never the whole table in memory. The training pass reads about 2 x steps x batch
        rows, whole episodes drawn at random across a clustered Parquet panel (the whole panel
        when that covers it, or for CSV, DuckDB and unclustered Parquet).

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
    klass: Any = LEARNERS[algo]
    kw: dict[str, Any] = dict(params or {})
    _refuse_flag_params(kw)
    if algo not in TABULAR:  # SPIBB and PVI are tabular: no encoder, steps or seed
        kw.update(encoder=encoder, window=window, n_steps=steps, seed=seed)
    if fair_action is not None:
        kw.update(fair_action=fair_action, fair_lambda=1.0 if fair_lambda is None else fair_lambda)
    if group_robust is not None:
        kw["group_robust"] = group_robust
    known = sorted(klass.config_class.__dataclass_fields__)
    unknown = sorted(set(kw) - set(known))
    if unknown:
        raise InvalidParameterError(
            f"Unknown learner setting for {algo}: {', '.join(unknown)}; known "
                         f"settings: {', '.join(known)}.")
    try:
        config = klass.config_class(**kw)
    except TypeError as exc:  # a setting of the wrong type (house-style message)
        raise InvalidParameterError(str(exc)) from exc
    if chunk_rows is not None:
        from equicare.learn._stream import STREAM_ALGOS, VALIDATION_FIELDS, fit_stream

        if algo not in STREAM_ALGOS:
            _fail("algo", "one of " + ", ".join(repr(a) for a in STREAM_ALGOS)
                  + " with --chunk-rows", algo)
        given = [k for k in VALIDATION_FIELDS if k in kw]
        if given:
            raise InvalidParameterError(STREAM_NO_VALIDATION.format(
                params=", ".join(f"--param {k}" for k in given)))
        t0 = time.perf_counter()
        learner = fit_stream(klass(config), data, manifest, chunk_rows=chunk_rows,
                             progress=progress)
        seconds = time.perf_counter() - t0
        learner.save(out_path, overwrite=force)
        info = learner.stream_info_
        return {"model_dir": str(out_path), "algo": algo, "encoder": encoder,
                "window": config.input_window, "n_steps": learner.n_steps_done_,
                "best_step": learner.best_step_, "valid_loss": None,
                "n_actions": int(learner.action_space_.n_actions),
                "support_size": int(learner.support_.size),
                "n_episodes": info["n_episodes"], "n_rows": info["n_rows"],
                "streaming": {k: info[k] for k in ("chunk_rows", "buffer_chunks", "chunks_read",
                                                   "read", "rows_read_per_pass", "sample_rate",
                                                   "steps_per_second")},
                "seconds": round(seconds, 2)}
    ds = load_dataset(data, manifest, emit_warnings=False)
    if fair_action is not None:
        ds.action_space.parse_action_set(fair_action)  # unknown component / level -> ValueError
    t0 = time.perf_counter()
    learner = klass(config).fit(ds, progress=progress)
    seconds = time.perf_counter() - t0
    learner.save(out_path, overwrite=force)
    if algo in TABULAR:
        from equicare.learn._spibb import bootstrapped_share

        return {"model_dir": str(out_path), "algo": algo, "n_cells": learner.n_cells_,
                "pooled_cells": learner.pooled_cells_,
                "cell_columns": list(learner.cell_columns_),
                "ignored_numeric": list(learner.ignored_numeric_),
                "binned_numeric": list(learner.policy_.numeric),
                "numeric": learner.config.numeric,
                "bootstrapped_share": bootstrapped_share(learner.bootstrapped_),
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
    from equicare.pipeline._select import SelectConfig, train_select

    kw = dict(params or {})
    _refuse_flag_params(kw)
    kw["seed"] = seed
    known = sorted(SelectConfig.__dataclass_fields__)
    unknown = sorted(set(kw) - set(known))
    if unknown:
        raise InvalidParameterError(f"Unknown selection setting: {', '.join(unknown)}; known "
                                    f"settings: {', '.join(known)}.")
    try:
        cfg = SelectConfig(**kw)
    except TypeError as exc:
        raise InvalidParameterError(str(exc)) from exc

    from equicare._progress import Stages

    say = Stages("select", progress)

    return train_select(data, manifest, out=out, config=cfg, force=force, progress=say)


def print_selection(res: dict[str, Any]) -> None:
    """Print the candidates table (Rich) and the choice."""
    from rich.table import Table

    from equicare.cli._utils import console as con
    from equicare.cli._utils import print_table

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    beh = res["behavior"]
    cfg = (res.get("settings") or {}).get("config") or {}
    by, rank = cfg.get("rank_by"), cfg.get("rank", "bound")
    t = Table(title=f"Candidates (held-out; behaviour value {beh['value']:.4f})")
    cols = ["candidate", "value", "lower", "upper", "gain lower", "beats behaviour"]
    if by:  # the estimator that orders the candidates that pass
        cols.append(f"{by} gain {'lower' if rank == 'bound' else 'estimate'}")
    for col in (*cols, "train s"):
        t.add_column(col)
    t.add_column("note", overflow="fold", max_width=60)
    for c in res["candidates"]:
        gain = c.get("lcb_gain")
        beats = "" if gain is None else ("yes" if gain > 0 else "no")
        mark = " *" if c["name"] == res["chosen"] else ""
        row = [c["name"] + mark, f(c["value"]), f(c["lcb"]), f(c["ucb"]), f(gain), beats]
        if by:
            e = (c.get("estimates") or {}).get(by)
            row.append("-" if e is None or gain is None else f(
                e["gain_lcb"] if rank == "bound" else e["value"] - beh["value"]))
        t.add_row(*row, f"{c['train_seconds']:.1f}", c["error"] or "")
    censoring = (res.get("settings") or {}).get("censoring") or {}
    window = [n for n, c in censoring.items() if c.get("switched_to_window")]
    if window:
        t.caption = (f"Valued with the window table ({', '.join(window)}): censored stays bias "
                     "the stationary table there (evaluate's censoring check; docs/learn.md, "
                     "\"Censored stays\").")
    print_table(t)
    if by:
        con.print(f"Candidates whose gain lower bound is above 0 pass; the kept one has the "
                  f"largest {by} gain {'lower bound' if rank == 'bound' else 'estimate'}.",
                  highlight=False)
    how = ("fallback: no candidate's lower bound shows a gain over the behaviour; the model "
           "leaves every decision to the clinicians (current practice; predict marks every row "
           "follows_practice)" if res["fallback"] else f"kept {res['chosen']}")
    con.print(f"{how}. Wrote {res['model_dir']} (selection.json) in {res['seconds']:.1f} s.",
              highlight=False, markup=False)


def predict_policy(model_dir: str | os.PathLike[str], data: str | os.PathLike[str],
                   manifest: str | os.PathLike[str], *, out: str | os.PathLike[str],
                   form: str = "wide", force: bool = False,
                   chunk_rows: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Write a trained policy's probabilities for every row of a panel (Contract 2 file).

    With ``chunk_rows`` the panel is read and the file written chunk by chunk (whole episodes),
    so memory holds one chunk, never the panel or the whole file. ``progress``: stage lines on
    stderr and a bar over the rows, advanced per chunk (:class:`equicare._progress.Stages`).

    A policy that leaves rows to current practice (exception rules: ``deferred_rows``) gets a
    ``follows_practice`` column (1 on those rows): their probabilities are the estimate of
    practice stored with the rules, while deployed the clinicians decide there (how
    ``evaluate`` and ``audit`` value them by default). The summary then has the share of
    such rows (``follows_practice``).

    Raises
    ------
    PolicyError
        The model folder is missing/malformed or was trained on another action space or other
        state columns.
    FileExistsError
        ``out`` exists and ``force`` is False.
    """
    import numpy as np

    from equicare._progress import ProgressTask, Stages
    from equicare.data import load_dataset
    from equicare.data._manifest import manifest_of
    from equicare.policy import load_policy, write_policy_file
    from equicare.policy._file import FOLLOWS_PRACTICE

    if form not in ("wide", "long"):
        raise InvalidParameterError(PARAM_MESSAGE.format(name="form", owner="equicare predict",
                                              expected="one of 'wide', 'long'", got=form))
    out_path = Path(out)
    if out_path.suffix.lower() not in (".parquet", ".pq", ".csv"):
        raise InvalidParameterError(f"--out must end in .parquet or .csv, got {out_path.name!r}.")
    _refuse_existing(out_path, force, "Output file")
    policy = load_policy(model_dir)
    say = Stages("predict", progress)
    if chunk_rows is not None:
        from equicare.data import iter_chunks, scan_panel
        from equicare.policy import write_policy_stream

        stats: dict[str, Any] = {"rows": 0, "support": None, "n_actions": 0}
        man = manifest_of(manifest)
        say(f"first pass over {data}: episodes and rows")
        scan = scan_panel(data, man)
        say(f"{scan.n_rows} rows: the policy's probabilities in chunks of {chunk_rows} rows, "
            f"written to {out_path}")

        def parts(rows: ProgressTask) -> Any:
            for chunk in iter_chunks(data, man, chunk_rows=chunk_rows, scan=scan):
                p = np.asarray(policy.action_probs(chunk.dataset), dtype=np.float64)
                used = p.any(axis=0)
                stats["support"] = used if stats["support"] is None else stats["support"] | used
                stats["rows"] += chunk.dataset.n_steps
                stats["n_actions"] = chunk.dataset.n_actions
                more = practice_column(policy, chunk.dataset)
                if more is not None:
                    stats["practice"] = (stats.get("practice", 0)
                                         + int(more[FOLLOWS_PRACTICE].sum()))
                yield chunk.dataset, p, more
                rows.update(advance=chunk.dataset.n_steps)

        with say.bar("rows", scan.n_rows) as rows:
            write_policy_stream(parts(rows), out_path, form=form,  # type: ignore[arg-type]
                                overwrite=force)
        return {"out": str(out_path), "n_rows": stats["rows"], "n_actions": stats["n_actions"],
                "support_size": int(np.count_nonzero(stats["support"])), "form": form,
                "chunk_rows": chunk_rows,
                **({} if "practice" not in stats else
                   {FOLLOWS_PRACTICE: stats["practice"] / max(stats["rows"], 1)})}
    man = manifest_of(manifest)  # a bad manifest: its one error line, no stage line first
    say(f"loading {data}")
    ds = load_dataset(data, man, emit_warnings=False)
    say(f"{ds.n_steps} rows: the policy's probabilities, written to {out_path}")
    probs = policy.action_probs(ds)
    more = practice_column(policy, ds)
    write_policy_file(ds, probs, out_path, form=form, overwrite=force,  # type: ignore[arg-type]
                      extra=more)
    return {"out": str(out_path), "n_rows": ds.n_steps, "n_actions": ds.n_actions,
            "support_size": int(np.count_nonzero(probs.any(axis=0))), "form": form,
            **({} if more is None else
               {FOLLOWS_PRACTICE: float(more[FOLLOWS_PRACTICE].mean())})}


def practice_column(policy: Any, dataset: Any) -> dict[str, Any] | None:
    """``{"follows_practice": 0/1 per row}`` for a policy that can defer rows, else None."""
    from equicare.policy._deployed import deferred_rows_of
    from equicare.policy._file import FOLLOWS_PRACTICE

    rows = deferred_rows_of(policy, dataset)
    return None if rows is None else {FOLLOWS_PRACTICE: rows.astype("int8")}


def register(app: "typer.Typer") -> None:
    """Add the ``train`` and ``predict`` commands to a Typer app."""
    import typer


    @app.command("train")
    def train(
        data: Annotated[Path, typer.Argument(help=PANEL_HELP)],
        manifest: Annotated[Path, typer.Option("--manifest", "-m",
                                               help="TOML manifest of the panel.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
        algo: Annotated[Algo | None, typer.Option(
            help="Learner: bc, awr, cql (offline RL on the logged reward), spibb or pvi "
                 "(tabular safe improvement on discrete states) or omg (dosing: OMG-RL, "
                 "learned reward) [default: awr].")] = None,
        encoder: Annotated[Encoder | None, typer.Option(
            help="bc/awr/cql: state encoder [default: mlp].")] = None,
        window: Annotated[int | None, typer.Option(
            min=1, help="bc/awr/cql with --encoder lstm: rows of history read, the current "
                        "row included (steps, whatever the time unit) [default: 4].")
        ] = None,
        fair_action: Annotated[str | None, typer.Option(
            help="bc/awr/cql: action set of the parity penalty, e.g. modality=home_visit.")
        ] = None,
        fair_lambda: Annotated[float | None, typer.Option(
            help="bc/awr/cql: weight of the parity penalty (>= 0; default 1.0 with "
                 "--fair-action).")] = None,
        group_robust: Annotated[float | None, typer.Option(
            help="bc/awr/cql: weight in [0, 1] of the group-robust (group DRO) objective.")
        ] = None,
        steps: Annotated[int | None, typer.Option(
            min=1, help="bc/awr/cql: gradient steps [default: 20000].")] = None,
        param: Annotated[list[str] | None, typer.Option(
            help="bc/awr/cql/spibb/pvi: other learner setting KEY=VALUE (repeatable), e.g. "
                 "beta=0.3.")
        ] = None,
        iterations: Annotated[int | None, typer.Option(
            min=1, help="omg: outer iterations (rollouts + reward + policy updates) "
                        "[default: 40].")] = None,
        policy_updates: Annotated[int | None, typer.Option(
            min=1, help="omg: SAC updates per iteration [default: 500].")] = None,
        dynamics_epochs: Annotated[int | None, typer.Option(
            min=1, help="omg: maximum epochs of the dynamics ensemble (early stopping on "
                        "held-out episodes) [default: 60].")] = None,
        rollout_horizon: Annotated[int | None, typer.Option(
            min=1, max=50, help="omg: length of branched model rollouts [default: 5].")] = None,
        reward: Annotated[OmgReward | None, typer.Option(
            help="omg: learned (OMG-RL) or dataset (the known reward) [default: learned].")
        ] = None,
        model_free: Annotated[bool, typer.Option(
            "--model-free", help="omg: train the policy on logged data only (needs --reward "
                                 "dataset).")] = False,
        conservative_weight: Annotated[float | None, typer.Option(
            min=0.0, help="omg: weight of the COMBO/CQL penalty [default: 1.0].")] = None,
        small: Annotated[bool, typer.Option(
            "--small", help="omg: tiny networks and budgets (smoke tests; --iterations, "
            "--policy-updates and --dynamics-epochs still apply).")] = False,
        select: Annotated[Select | None, typer.Option(
            help="auto: train candidates (SPIBB at several N_wedge, PVI at several penalties, "
                 "BC/AWR/CQL briefly), keep the best held-out lower confidence bound of the "
                 "gain over the behaviour, or the behaviour policy if none is above 0; writes "
                 "selection.json into the model folder.")] = None,
        chunk_rows: ChunkRows = None,
        seed: Seed = 42,
        force: Force = False,
        progress: Progress = True,
        json_out: JsonOut = False,
        threads: Threads = "auto",
    ) -> None:
        """Train a policy on a panel and save it as a model folder.

        bc, awr and cql learn from the logged reward (fairness penalty and group DRO
        optional); spibb is tabular safe policy improvement on discrete states (it keeps the
        clinicians' action where the data are thin); pvi is tabular pessimistic value
        iteration (count-based penalties, rare pairs shrunk toward their state's pooled
        model); omg learns the reward too (dynamics ensemble, guided cost learning,
        conservative SAC; made for dosing panels such as `equicare synth --sim heparin`).
        --select auto picks among candidates by a held-out lower confidence bound of the gain
        over current practice and falls back to current practice.
        Options marked with a learner apply to it only; giving one to another learner is an
        error. With --chunk-rows, bc, awr and cql train from the panel streamed in chunks of
        whole episodes (mini-batches from a shuffle buffer; no validation split, so --param
        early_stopping, valid_fraction, eval_every and patience are refused; about 2 x steps x
        batch rows read, whole episodes at random across a clustered Parquet panel).

        Example: equicare train data/panel.parquet --manifest data/manifest.toml --algo awr
        --encoder lstm --window 4 --fair-action modality=home_visit --fair-lambda 1.0
        --steps 20000 --out models/awr_fair

        Example: equicare train garnet/panel.parquet -m garnet/manifest.toml --select auto
        --out models/safe
        """
        offline = {"--encoder": encoder is not None, "--window": window is not None,
                   "--fair-action": fair_action is not None,
                   "--fair-lambda": fair_lambda is not None,
                   "--group-robust": group_robust is not None, "--steps": steps is not None,
                   "--param": bool(param)}
        omg_only = {"--iterations": iterations is not None,
                    "--policy-updates": policy_updates is not None,
                    "--dynamics-epochs": dynamics_epochs is not None,
                    "--rollout-horizon": rollout_horizon is not None,
                    "--reward": reward is not None, "--model-free": model_free,
                    "--conservative-weight": conservative_weight is not None, "--small": small}
        check_out_path(out, force, folder=True)
        from equicare.policy._learned import check_model_target

        with user_errors():  # --force replaces an earlier model only: say so before training
            check_model_target(out, overwrite=force)
        from equicare.policy._learned import model_provenance

        def record() -> Any:
            """The model folder's provenance (hashing the panel: after the options' checks)."""
            tabular = select is None and algo in (Algo.SPIBB, Algo.PVI)  # no seed
            return model_provenance(provenance({"data": data, "manifest": manifest},
                                               seed=None if tabular else True))

        memory_only = (Algo.SPIBB, Algo.PVI, Algo.OMG)
        if chunk_rows is not None and (select is not None or algo in memory_only):
            what = ("--select auto" if select is not None or algo is None
                    else f"--algo {algo.value}")
            fail(f"--chunk-rows does not apply to {what} (bc, awr and cql train from a "
                 "stream).")
        if select is not None:
            not_applicable({**omg_only, "--algo": algo is not None,
                            **{k: v for k, v in offline.items() if k != "--param"}},
                           "--select auto")
            with user_errors(), record():
                sel = select_train(data, manifest, out=out, seed=seed,
                                   params=parse_params(param), force=force, progress=progress)
            if json_out:
                print_json(sel)
                return
            print_selection(sel)
            return
        algo = algo or Algo.AWR
        if algo in (Algo.SPIBB, Algo.PVI):
            not_applicable({**omg_only, **{k: v for k, v in offline.items() if k != "--param"}},
                           f"--algo {algo.value}")
            with user_errors(), record():
                res = train_model(data, manifest, out=out, algo=algo.value,
                                  params=parse_params(param), force=force, progress=progress)
            if json_out:
                print_json(res)
                return
            n_pooled = res.get("pooled_cells") or 0
            pooled = (f", {n_pooled} cell{'' if n_pooled == 1 else 's'} of fewer than 11 "
                      "episodes left to current practice" if n_pooled else "")
            cells = " x ".join(([", ".join(res["cell_columns"])] if res["cell_columns"] else [])
                               + [f"{c} bins" for c in res["binned_numeric"]])
            console.print(f"Wrote {res['model_dir']} ({algo.value}, {res['n_cells']} cells of "
                          f"{cells}, "
                          f"{100 * res['bootstrapped_share']:.0f}% of (cell, action) pairs kept "
                          f"at the clinicians' probability{pooled}, {res['seconds']:.1f} s)",
                          highlight=False, markup=False)
            if res["ignored_numeric"]:
                console.print(MSG_IGNORED_NUMERIC.format(
                    algo=algo.value, columns=", ".join(res["ignored_numeric"]),
                    why=WHY_IGNORED.get(res["numeric"], f"numeric={res['numeric']!r}")),
                    highlight=False, markup=False)
            return
        if algo is Algo.OMG:
            not_applicable(offline, "--algo omg")
            if model_free and (reward or OmgReward.LEARNED) is OmgReward.LEARNED:
                fail("--model-free needs --reward dataset: the learned reward (guided cost "
                     "learning, the default --reward learned) trains on model rollouts.")
            from equicare.cli._dosing import build_omg_config, stage_progress, train_omg

            with user_errors():
                cfg = build_omg_config(
                    iterations=iterations, policy_updates=policy_updates,
                    dynamics_epochs=dynamics_epochs,
                    rollout_horizon=5 if rollout_horizon is None else rollout_horizon,
                    reward=(reward or OmgReward.LEARNED).value, model_free=model_free,
                    conservative_weight=(1.0 if conservative_weight is None
                                         else conservative_weight), small=small)
                with stage_progress(enabled=progress) as bars, record():
                    res = train_omg(data, manifest, out, config=cfg, seed=seed, force=force,
                                    progress=bars)
            if json_out:
                print_json(res)
                return
            secs = ", ".join(f"{k} {v:.1f} s" for k, v in res["stage_seconds"].items())
            console.print(f"Wrote {res['out']} (omg; {secs})", highlight=False, markup=False)
            if res["reward_grid"] is not None:
                g = res["reward_grid"]
                moved = f" (with {', '.join(g['linked'])})" if g["linked"] else ""
                console.print(f"reward_grid.csv: learned reward over {g['feature']}{moved}",
                              highlight=False, markup=False)
            return
        not_applicable(omg_only, f"--algo {algo.value}")
        if window is not None and (encoder or Encoder.MLP) is not Encoder.LSTM:
            not_applicable({"--window": True}, "--encoder mlp (it reads one week; use "
                           "--encoder lstm)")
        with user_errors(), record():
            res = train_model(data, manifest, out=out, algo=algo.value,
                              encoder=(encoder or Encoder.MLP).value,
                              window=4 if window is None else window,
                              fair_action=fair_action, fair_lambda=fair_lambda,
                              group_robust=group_robust,
                              steps=20000 if steps is None else steps, seed=seed,
                              params=parse_params(param), force=force, progress=progress,
                              chunk_rows=chunk_rows)
        if json_out:
            print_json(res)
            return
        console.print(f"Wrote {res['model_dir']} ({res['algo']}, {res['n_steps']} steps, best "
                      f"step {res['best_step']}, validation loss "
                      f"{_num(res['valid_loss'])}, {res['seconds']:.1f} s)", highlight=False,
                      markup=False)

    @app.command("predict")
    def predict(
        model_dir: Annotated[Path, typer.Argument(help="Model folder written by equicare train.")],
        data: Annotated[Path, typer.Argument(help=PANEL_HELP)],
        manifest: Annotated[Path, typer.Option("--manifest", "-m",
                                               help="TOML manifest of the panel.")],
        out: Annotated[Path, typer.Option("--out", "-o",
                                          help="Policy file to write (.parquet or .csv).")],
        form: Annotated[Form, typer.Option(help="wide (p_0..p_n-1) or long (action, prob).")
                        ] = Form.WIDE,
        chunk_rows: ChunkRows = None,
        force: Force = False,
        json_out: JsonOut = False,
        progress: Progress = True,
        threads: Threads = "auto",
    ) -> None:
        """Write a trained policy's action probabilities for every row of a panel.

        The file is a policy file (docs/contracts.md): keyed by the episode and time columns,
        one probability per action. Exception rules (explain's card/model) also get a
        follows_practice column: 1 where no rule applies and the rules leave the decision to
        current practice; those rows' probabilities are the estimate of practice stored with
        the rules (deployed, the clinicians decide there, as evaluate and audit value them).
        Its provenance (command, settings, inputs' SHA-256) is written beside it, in
        OUT.provenance.json. The file is row-level data like the panel (one row per panel row,
        keyed by its episode ids; no small-cell suppression applies): keep it where the panel
        may be kept, never in a report or a shared folder.

        Example: equicare predict models/awr data/panel.parquet --manifest data/manifest.toml
        --out awr_probs.parquet
        """
        from equicare.cli._utils import check_out_path, provenance, sidecar_path, write_sidecar

        sidecar = sidecar_path(out)
        check_out_path(sidecar, force, file=True)
        with user_errors():
            res = predict_policy(model_dir, data, manifest, out=out, form=form.value, force=force,
                                 chunk_rows=chunk_rows, progress=progress)
            write_sidecar(sidecar, {"policy_file": out}, provenance(
                {"policy": model_dir, "data": data, "manifest": manifest}))
        res["provenance"] = str(sidecar)
        if json_out:
            print_json(res)
            return
        console.print(f"Wrote {res['out']} ({res['n_rows']:,} rows x {res['n_actions']} "
                      f"actions, {res['form']} form)", highlight=False, markup=False)
        console.print(MSG_ROW_LEVEL, highlight=False, markup=False)
        from equicare.policy._file import FOLLOWS_PRACTICE

        if FOLLOWS_PRACTICE in res:
            console.print(f"{FOLLOWS_PRACTICE}: {100 * res[FOLLOWS_PRACTICE]:.1f}% of rows "
                          "are left to current practice; their probabilities are the estimate "
                          "of practice stored with the rules (deployed, the clinicians decide "
                          "there)", highlight=False, markup=False)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"
