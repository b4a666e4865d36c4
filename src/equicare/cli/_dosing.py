"""CLI layer of the heparin simulator and OMG-RL: plain functions behind two commands.

``equicare synth --sim heparin`` (``cli/__init__.py``) and ``equicare train --algo omg``
(``cli/_learn.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.utils import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from equicare.dosing._omg import OMGConfig

__all__ = ["synth_heparin", "train_omg", "build_omg_config", "stage_progress", "EXISTS_MESSAGE"]

#: Message when an output exists and ``--force`` was not given (tests match it).
EXISTS_MESSAGE = "{path} exists; refusing to overwrite it (pass --force to replace it)."

_DATA_SUFFIXES = (".parquet", ".pq", ".csv")


def _refuse(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(EXISTS_MESSAGE.format(path=path))


def synth_heparin(out: str | os.PathLike[str], *, n_patients: int = 1000, seed: int = 42,
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
    # the nomogram's truth on as many fresh patients as the panel has (at most 2,000; at least
    # 2, the fewest that give a standard error: a one-patient panel raised an error about
    # evaluate_heparin_policy's n_patients after the panel was written)
    truth = evaluate_heparin_policy("behavior", n_patients=min(max(n_patients, 2), 2000),
                                    random_state=seed + 1)
    return {"data": str(path), "manifest": str(man_path), "n_patients": n_patients,
            "n_rows": int(len(frame)),
            "behavior": {k: {"value": v, "se": s} for k, (v, s) in truth.overall.items()}}


def train_omg(data: str | os.PathLike[str], manifest: str | os.PathLike[str],
              out: str | os.PathLike[str], *, config: OMGConfig | None = None, seed: int = 42,
              force: bool = False, grid_feature: str | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Train OMG-RL on a panel and write the model folder atomically.

    The model folder (Contract 2) holds ``config.json`` and ``model.safetensors`` (policy,
    learned reward and dynamics ensemble), plus ``reward_grid.csv`` (learned reward over a grid
    of ``grid_feature``, one column per action with action-dependent rewards, and the
    simulator's clinical reward when the feature is the simulator's ``aptt``) and
    ``metrics.json`` (stage times, held-out dynamics errors, last training statistics, and
    ``reward_grid``: the feature and the features moved with it).

    Parameters
    ----------
    data, manifest : path
        Panel (CSV, Parquet, DuckDB) and its manifest.
    out : path
        Output folder; must not exist (or be empty) unless ``force``.
    config : OMGConfig, optional
    seed : int
    force : bool
    grid_feature : str, optional
        Feature of the exported reward grid. Default: ``aptt`` when the panel has that state
        column, else the manifest's first state column. The features the dynamics found to be
        copies of it one step later (e.g. the previous aPTT) move with it. A name that is not a
        state column raises :class:`~equicare.exceptions.DataValidationError`.
    progress : callable, optional
        ``progress(stage, done, total)``.

    Returns
    -------
    dict
        ``out``, ``n_episodes``, ``n_steps``, ``stage_seconds``, ``dynamics`` (held-out aPTT
        one-step RMSE when available), ``reward_grid`` (``feature``, ``linked``; None without a
        learned reward), ``files``.
    """
    from equicare.data import load_dataset
    from equicare.dosing._omg import NO_TRANSITIONS_MESSAGE, OMG, OMGConfig
    from equicare.privacy import coarse_bounds, round_significant

    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
        raise FileExistsError(EXISTS_MESSAGE.format(path=target))
    ds = load_dataset(data, manifest, emit_warnings=False)
    names = list(ds.state_names)
    if grid_feature is None:
        grid_feature = "aptt" if "aptt" in names else (names[0] if names else None)
    elif grid_feature not in names:
        raise DataValidationError(
            f"grid_feature {grid_feature!r} is not a state column of {manifest}; its states are "
            f"{names}.")
    cfg = config if config is not None else OMGConfig()
    if ds.n_steps == ds.n_episodes and (cfg.use_model or cfg.reward == "learned"):
        raise DataValidationError(NO_TRANSITIONS_MESSAGE.format(data=data))
    model = OMG(cfg, random_state=seed).fit(ds, progress=progress)
    metrics: dict[str, Any] = {"stage_seconds": model.stage_seconds_,
                               "history_last": model.history_[-1] if model.history_ else {},
                               "n_episodes": ds.n_episodes, "n_steps": ds.n_steps}
    if model.dynamics_ is not None:
        metrics["dynamics_holdout"] = model.dynamics_.holdout_metrics_
    grid_info: dict[str, Any] | None = None
    extra: dict[str, str | bytes] = {}
    if model.reward_net_ is not None and grid_feature is not None:
        j = names.index(grid_feature)
        # between the 0.1% and 99.9% quantiles (at least 11 rows beyond), rounded outward to a
        # coarse grid: no grid value is a patient's
        lo, hi = coarse_bounds(ds.states[:, j], margin=0.0)
        values = round_significant(np.linspace(float(lo[0]), float(hi[0]), 81), 4)
        # features that are the grid feature one step later (s'_i = s_j: "previous aPTT") take
        # the same values, as they would in the next state the reward scores
        copies = model.dynamics_.structure_.copy_of if model.dynamics_ is not None else {}
        linked = tuple(names[i] for i, k in sorted(copies.items()) if k == j)
        grid = model.reward_grid(grid_feature, values, linked=linked)
        if grid_feature == "aptt":   # the heparin simulator's column: its clinical reward
            from equicare.sim.heparin import clinical_reward
            grid["clinical_reward"] = clinical_reward(values)
        extra["reward_grid.csv"] = grid.to_csv(index=False)
        grid_info = {"feature": grid_feature, "linked": list(linked)}
        metrics["reward_grid"] = grid_info
    extra["metrics.json"] = json.dumps(metrics, indent=1, default=float)
    model.save(target, overwrite=force, extra_files=extra)  # one atomic swap of the folder
    dyn = {}
    if model.dynamics_ is not None:
        hm = model.dynamics_.holdout_metrics_
        dyn = {"rmse": hm["rmse"], "reward_rmse": hm["reward_rmse"]}
    return {"out": str(target), "n_episodes": ds.n_episodes, "n_steps": ds.n_steps,
            "stage_seconds": model.stage_seconds_, "dynamics": dyn, "reward_grid": grid_info,
            "files": sorted(p.name for p in target.iterdir())}


def build_omg_config(*, iterations: int | None = None, policy_updates: int | None = None,
                     dynamics_epochs: int | None = None, rollout_horizon: int = 5,
                     reward: str = "learned", model_free: bool = False,
                     conservative_weight: float = 1.0, small: bool = False) -> OMGConfig:
    """Build an :class:`~equicare.dosing.OMGConfig` from CLI options.

    ``small=True`` starts from :meth:`OMGConfig.small` (tiny networks, 3 iterations, 20 policy
    updates); ``iterations``, ``policy_updates`` and ``dynamics_epochs`` given explicitly
    override the base either way (None: the base's value; the full defaults are 40, 500 and
    60). Raises an equicare exception in the house style for bad values.
    """
    from dataclasses import replace

    from equicare.dosing._omg import OMGConfig

    base = OMGConfig.small() if small else OMGConfig()
    if iterations is not None:
        base = replace(base, n_iterations=iterations)
    if policy_updates is not None:
        base = replace(base, policy_updates=policy_updates)
    if dynamics_epochs is not None:
        base = replace(base, dynamics=replace(base.dynamics, max_epochs=dynamics_epochs))
    return replace(base, reward=reward, use_model=not model_free,  # type: ignore[arg-type]
                   rollout_horizon=rollout_horizon,
                   sac=replace(base.sac, conservative_weight=conservative_weight))


@contextlib.contextmanager
def stage_progress(console: Any = None, *, enabled: bool = True
                   ) -> Iterator[Callable[[str, int, int], None] | None]:
    """Progress of the three OMG stages; yields a ``progress(stage, done, total)`` callback.

    Rich bars on a terminal; one line per stage (start, tenths, end) otherwise; ``None`` when
    not ``enabled``.
    """
    from equicare._progress import progress_task

    if not enabled:
        yield None
        return
    labels = {"dynamics": "dynamics ensemble", "reward": "reward (guided cost learning)",
              "policy": "policy (conservative SAC)"}
    with contextlib.ExitStack() as stack:
        tasks: dict[str, Any] = {}
        current: list[str] = []

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                if current:  # the previous stage ended
                    stack.pop_all().close()
                current[:] = [stage]
                tasks[stage] = stack.enter_context(
                    progress_task(labels.get(stage, stage), total))
            tasks[stage].update(completed=done, total=total)

        yield progress
