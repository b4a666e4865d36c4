"""CLI layer of the heparin simulator and OMG-RL (plain functions + ``register(app)``).

The lead wires :func:`synth_heparin` as ``equicare synth --sim heparin`` and :func:`train_omg` as
``equicare train --algo omg``; :func:`register` adds stand-alone ``synth-heparin`` and
``train-omg`` commands to any Typer app.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.utils import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from equicare.dosing._omg import OMGConfig

__all__ = ["synth_heparin", "train_omg", "build_omg_config", "stage_progress", "register",
           "EXISTS_MESSAGE"]

#: Message when an output exists and ``--force`` was not given (tests match it).
EXISTS_MESSAGE = "{path} already exists; pass --force to overwrite it."

_DATA_SUFFIXES = (".parquet", ".pq", ".csv")


def _refuse(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(EXISTS_MESSAGE.format(path=path))


def synth_heparin(out: str | os.PathLike[str], *, n_patients: int = 2000, seed: int = 0,
                  manifest: str | os.PathLike[str] | None = None, gamma: float = 0.95,
                  force: bool = False) -> dict[str, Any]:
    """Simulate a heparin dosing panel and write it with its manifest.

    Parameters
    ----------
    out : path
        ``.parquet`` or ``.csv`` file.
    n_patients : int
    seed : int
    manifest : path, optional
        Manifest TOML (default: ``out`` with suffix ``.toml``).
    gamma : float
        Discount written to the manifest.
    force : bool
        Overwrite existing files.

    Returns
    -------
    dict
        ``data``, ``manifest``, ``n_patients``, ``n_rows``, ``behavior`` (ground-truth summary of
        the logging policy: time in range and adverse-event rate).
    """
    from equicare.sim.heparin import evaluate_heparin_policy, generate_heparin_data

    path = Path(out)
    if path.suffix.lower() not in _DATA_SUFFIXES:
        raise InvalidParameterError(
            f"The output file must end in .parquet or .csv; got {path.name!r}.")
    if isinstance(n_patients, bool) or not isinstance(n_patients, int) or n_patients < 1:
        raise InvalidParameterError(f"n_patients must be a positive integer; got {n_patients!r}.")
    man_path = Path(manifest) if manifest is not None else path.with_suffix(".toml")
    _refuse(path, force)
    _refuse(man_path, force)
    frame, man = generate_heparin_data(n_patients, random_state=seed, gamma=gamma)
    if path.suffix.lower() == ".csv":
        with atomic_write(path, "w") as fh:
            frame.to_csv(fh, index=False)
    else:
        with atomic_write(path, "wb") as fh:
            frame.to_parquet(fh, index=False)
    atomic_write_text(man_path, man.to_toml())
    truth = evaluate_heparin_policy("behavior", n_patients=min(n_patients, 2000),
                                    random_state=seed + 1)
    return {"data": str(path), "manifest": str(man_path), "n_patients": n_patients,
            "n_rows": int(len(frame)),
            "behavior": {k: {"value": v, "se": s} for k, (v, s) in truth.overall.items()}}


def train_omg(data: str | os.PathLike[str], manifest: str | os.PathLike[str],
              out: str | os.PathLike[str], *, config: OMGConfig | None = None, seed: int = 0,
              force: bool = False, grid_feature: str = "aptt",
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Train OMG-RL on a panel and write the model folder atomically.

    The folder holds ``config.json``, ``meta.json``, ``policy.safetensors``,
    ``reward_net.safetensors``, ``dynamics/``, ``reward_grid.csv`` (learned reward over a grid of
    ``grid_feature``, one column per action, and the clinical reward when the feature is ``aptt``)
    and ``metrics.json`` (stage times, held-out dynamics errors, last training statistics).

    Parameters
    ----------
    data, manifest : path
        Panel (CSV, Parquet, DuckDB) and its manifest.
    out : path
        Output folder; must not exist (or be empty) unless ``force``.
    config : OMGConfig, optional
    seed : int
    force : bool
    grid_feature : str
        Feature of the exported reward grid (skipped when absent).
    progress : callable, optional
        ``progress(stage, done, total)``.

    Returns
    -------
    dict
        ``out``, ``n_episodes``, ``n_steps``, ``stage_seconds``, ``dynamics`` (held-out aPTT
        one-step RMSE when available), ``files``.
    """
    from equicare.data import load_dataset
    from equicare.dosing._omg import OMG, OMGConfig

    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
        raise FileExistsError(EXISTS_MESSAGE.format(path=target))
    ds = load_dataset(data, manifest, emit_warnings=False)
    cfg = config if config is not None else OMGConfig()
    model = OMG(cfg, random_state=seed).fit(ds, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)            # mkdtemp makes 0700; use the usual permissions
    try:
        model.save(tmp)
        metrics: dict[str, Any] = {"stage_seconds": model.stage_seconds_,
                                   "history_last": model.history_[-1] if model.history_ else {},
                                   "n_episodes": ds.n_episodes, "n_steps": ds.n_steps}
        if model.dynamics_ is not None:
            metrics["dynamics_holdout"] = model.dynamics_.holdout_metrics_
        if model.reward_net_ is not None and grid_feature in ds.state_names:
            j = list(ds.state_names).index(grid_feature)
            lo, hi = np.quantile(ds.states[:, j], [0.001, 0.999])
            values = np.linspace(float(lo), float(hi), 81)
            linked = ("aptt_prev",) if grid_feature == "aptt" and "aptt_prev" in ds.state_names \
                else ()
            grid = model.reward_grid(grid_feature, values, linked=linked)
            if grid_feature == "aptt":
                from equicare.sim.heparin import clinical_reward
                grid["clinical_reward"] = clinical_reward(values)
            with atomic_write(tmp / "reward_grid.csv", "w") as fh:
                grid.to_csv(fh, index=False)
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=1, default=float))
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dyn = {}
    if model.dynamics_ is not None:
        hm = model.dynamics_.holdout_metrics_
        dyn = {"rmse": hm["rmse"], "reward_rmse": hm["reward_rmse"]}
    return {"out": str(target), "n_episodes": ds.n_episodes, "n_steps": ds.n_steps,
            "stage_seconds": model.stage_seconds_, "dynamics": dyn,
            "files": sorted(p.name for p in target.iterdir())}


def build_omg_config(*, iterations: int = 40, policy_updates: int = 500,
                     dynamics_epochs: int = 60, rollout_horizon: int = 5,
                     reward: str = "learned", model_free: bool = False,
                     conservative_weight: float = 1.0, small: bool = False) -> OMGConfig:
    """Build an :class:`~equicare.dosing.OMGConfig` from CLI options.

    ``small=True`` starts from :meth:`OMGConfig.small` (tiny networks; ``iterations``,
    ``policy_updates`` and ``dynamics_epochs`` are then ignored). Raises ``ValueError`` in the
    house style for bad values.
    """
    from dataclasses import replace

    from equicare.dosing._omg import OMGConfig
    from equicare.models._dynamics import DynamicsConfig

    base = OMGConfig.small() if small else OMGConfig(
        n_iterations=iterations, policy_updates=policy_updates,
        dynamics=DynamicsConfig(max_epochs=dynamics_epochs))
    return replace(base, reward=reward, use_model=not model_free,  # type: ignore[arg-type]
                   rollout_horizon=rollout_horizon,
                   sac=replace(base.sac, conservative_weight=conservative_weight))


@contextlib.contextmanager
def stage_progress(console: Any = None) -> Iterator[Callable[[str, int, int], None]]:
    """Rich progress bars of the three stages; yields a ``progress(stage, done, total)``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {"dynamics": "dynamics ensemble", "reward": "reward (guided cost learning)",
              "policy": "policy (conservative SAC)"}
    with Progress(TextColumn("{task.description:<32}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=console) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress


# ---------------------------------------------------------------------------- Typer layer
def register(app: typer.Typer) -> None:
    """Add the ``synth-heparin`` and ``train-omg`` commands to a Typer app."""
    @app.command("synth-heparin")
    def synth_heparin_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help=(
            "Output panel (.parquet or .csv). Example: --out heparin.parquet"))],
        n_patients: Annotated[int, typer.Option("--n-patients", "-n", min=1, help=(
            "Number of simulated patients. Example: --n-patients 2000"))] = 2000,
        seed: Annotated[int, typer.Option(help="Random seed. Example: --seed 0")] = 0,
        manifest: Annotated[Path | None, typer.Option(help=(
            "Manifest TOML to write (default: OUT with suffix .toml). "
            "Example: --manifest heparin.toml"))] = None,
        force: Annotated[bool, typer.Option("--force", help=(
            "Overwrite existing files. Example: --force"))] = False,
    ) -> None:
        """Simulate heparin dosing under the clinical nomogram.

        Example: equicare synth-heparin --out heparin.parquet --n-patients 2000 --seed 0
        """
        from rich.console import Console

        try:
            res = synth_heparin(out, n_patients=n_patients, seed=seed, manifest=manifest,
                                force=force)
        except (FileExistsError, ValueError, DataValidationError) as exc:
            Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(code=2) from None
        b = res["behavior"]
        Console().print(
            f"wrote {res['n_rows']} rows ({res['n_patients']} patients) to {res['data']} and "
            f"{res['manifest']}; nomogram time in range {b['tir']['value']:.3f} "
            f"(SE {b['tir']['se']:.3f}), adverse events {b['ae_rate']['value']:.3f}",
            highlight=False)

    @app.command("train-omg")
    def train_omg_cmd(
        data: Annotated[Path, typer.Option(help="Panel file. Example: --data heparin.parquet")],
        manifest: Annotated[Path, typer.Option(help=(
            "Manifest TOML. Example: --manifest heparin.toml"))],
        out: Annotated[Path, typer.Option("--out", "-o", help=(
            "Output folder for the model. Example: --out runs/omg"))],
        seed: Annotated[int, typer.Option(help="Random seed. Example: --seed 0")] = 0,
        iterations: Annotated[int, typer.Option(min=1, help=(
            "Outer iterations (rollouts + reward + policy updates). Example: --iterations 40"))
        ] = 40,
        policy_updates: Annotated[int, typer.Option(min=1, help=(
            "SAC updates per iteration. Example: --policy-updates 500"))] = 500,
        dynamics_epochs: Annotated[int, typer.Option(min=1, help=(
            "Maximum epochs of the dynamics ensemble (early stopping on held-out episodes). "
            "Example: --dynamics-epochs 60"))] = 60,
        rollout_horizon: Annotated[int, typer.Option(min=1, max=50, help=(
            "Length of branched model rollouts. Example: --rollout-horizon 5"))] = 5,
        reward: Annotated[str, typer.Option(help=(
            "'learned' (OMG-RL) or 'dataset' (known reward). Example: --reward learned"))
        ] = "learned",
        model_free: Annotated[bool, typer.Option("--model-free", help=(
            "Train the policy on logged data only (needs --reward dataset). "
            "Example: --model-free"))] = False,
        conservative_weight: Annotated[float, typer.Option(min=0.0, help=(
            "Weight of the COMBO/CQL penalty. Example: --conservative-weight 1.0"))] = 1.0,
        small: Annotated[bool, typer.Option("--small", help=(
            "Tiny networks and budgets (smoke tests). Example: --small"))] = False,
        force: Annotated[bool, typer.Option("--force", help=(
            "Replace an existing output folder. Example: --force"))] = False,
    ) -> None:
        """Train OMG-RL (dynamics ensemble, guided reward learning, conservative SAC).

        Example: equicare train-omg --data heparin.parquet --manifest heparin.toml --out runs/omg
        """
        from rich.console import Console

        err = Console(stderr=True)
        try:
            cfg = build_omg_config(iterations=iterations, policy_updates=policy_updates,
                                   dynamics_epochs=dynamics_epochs,
                                   rollout_horizon=rollout_horizon, reward=reward,
                                   model_free=model_free,
                                   conservative_weight=conservative_weight, small=small)
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(code=2) from None
        with stage_progress(err) as progress:
            try:
                res = train_omg(data, manifest, out, config=cfg, seed=seed, force=force,
                                progress=progress)
            except (FileExistsError, ValueError, DataValidationError, KeyError) as exc:
                msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                err.print(f"[red]error:[/red] {msg}", highlight=False)
                raise typer.Exit(code=2) from None
        secs = ", ".join(f"{k} {v:.1f} s" for k, v in res["stage_seconds"].items())
        Console().print(f"wrote {res['out']} ({', '.join(res['files'])}); {secs}", highlight=False)

