"""Sweeps: the same run over a grid of config values, through an executor, recorded as one run.

Each grid point loads (or simulates) the data, trains the learner and evaluates it on the held-out
episodes as ``run`` does (the ``[ope]`` estimators, bootstrap, interval method, truncation and
Q-model, the ``[behavior]`` model; plus the simulator's true value when the data is simulated).
It runs no other stage, so a grid over a key only those read (``ope.sensitivity``, ``[audit]``,
``[frontier]``, ...) is refused. Points are independent tasks, each with its own seed (split,
training, evaluation), so ``local`` and ``ray`` executors give identical numbers: the value of a
``seed`` grid axis, else one derived from the run seed and the point's settings
(:func:`point_seed`; the same command gives the same seeds, and adding grid values leaves the
other points' seeds alone). The seed is the point's ``seed`` column.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from equicare._progress import progress_task
from equicare.pipeline._config import RunConfig
from equicare.pipeline._executor import (
    Executor,
    Interrupted,
    RayExecutor,
    get_executor,
    iter_map,
    sigterm_as_interrupt,
    torch_threads,
)
from equicare.pipeline._store import USER_ERRORS, Metric, RunStore
from equicare.utils import atomic_write_text

__all__ = ["SweepOutcome", "run_sweep", "sweep_point", "check_grid_keys", "point_seed"]


@dataclass
class SweepOutcome:
    """A finished sweep: its run id, folder, report and the tidy table of points."""

    run_id: str
    run_dir: Path
    report: Path
    table: pd.DataFrame


def sweep_point(task: tuple[dict[str, Any], str, str, dict[str, Any]]) -> dict[str, Any]:
    """Train and evaluate one grid point (a top-level function so executors can ship it).

    Torch and BLAS run on one thread, so the sums are taken in the same order whether the point
    runs in-process, in a local worker or on a Ray worker (which limits threads to its CPUs), on
    any number of cores: the same seeds give bit-identical numbers on every executor. Both
    limits are restored afterwards (a serial sweep runs its points in the caller's process).
    """
    from threadpoolctl import threadpool_limits

    with torch_threads(1), threadpool_limits(limits=1):
        return _sweep_point(task)


def _sweep_point(task: tuple[dict[str, Any], str, str, dict[str, Any]]) -> dict[str, Any]:
    from equicare.ope import evaluate
    from equicare.pipeline._run import (
        behavior_spec,
        build_learner,
        load_run_data,
        propensity_data,
    )

    raw, source, base_dir, overrides = task
    cfg = RunConfig.from_dict(raw, source, Path(base_dir))
    seed = int(cfg["seed"])
    ds, sim = load_run_data(cfg)
    ds = propensity_data(cfg, ds)  # [behavior] model, as in `run`
    train, test = ds.split(
        cfg["ope"]["holdout"], random_state=seed, stratify=ds.group_attrs[0] if ds.groups else None
    )
    learner = build_learner(cfg, seed)
    learner.fit(train, progress=False)
    o = cfg["ope"]
    res = evaluate(  # every [ope] and [behavior] setting of the evaluation, as `run` uses them
        test,
        learner.action_probs(test),
        estimators=o["estimators"],
        q_model=o["q_model"],
        behavior_model=behavior_spec(cfg, seed),
        bootstrap=o["bootstrap"],
        ci_method=o["ci"],
        truncate=o["truncate"] or None,
        random_state=seed,
        groups=[],
    )
    row: dict[str, Any] = dict(overrides)
    row["behavior"] = res.behavior.value
    for k, e in res.estimates.items():
        row[k] = e.value
        row[f"{k}_ci_low"], row[f"{k}_ci_high"] = e.ci
    row["out_of_range"] = ",".join(res.out_of_range)  # not values (blown-up weights)
    if sim is not None and cfg["ope"]["truth_members"] > 0:
        t = sim.true_value(
            learner,
            n_members=cfg["ope"]["truth_members"],
            n_weeks=cfg["data"]["synthetic"]["weeks"],
            random_state=seed + 7,
        )
        row["true_value"], row["true_se"] = t.value, t.se
    return row


#: Config keys a sweep point does not read (its stages: data, train, evaluate, truth): a grid
#: over one of them would give identical points, so it is refused.
_NOT_SWEPT = {
    "ope.sensitivity": "a sweep point runs no sensitivity stage",
    "name": "the name labels the sweep's run",
    "output": "[output] says where the sweep runs and is stored, not what it computes",
    "audit": "a sweep point runs no fairness audit",
    "frontier": "a sweep point runs no frontier",
    "mediation": "a sweep point runs no mediation",
    "explain": "a sweep point writes no policy card",
    "plan": "a sweep point runs no planning",
}


def check_grid_keys(grid: dict[str, list[Any]], source: str = "<config>") -> None:
    """Refuse a grid axis over a key no sweep point reads (it would give identical points).

    Raises
    ------
    ConfigError
        Naming the key and why the sweep ignores it.
    """
    from equicare.pipeline._config import ConfigError

    for key in grid:
        why = _NOT_SWEPT.get(key) or _NOT_SWEPT.get(key.split(".", 1)[0])
        if why is not None:
            raise ConfigError(
                f"{source}: --grid {key}: a sweep point only loads the data, trains and "
                f"evaluates ({why}), so every point would be the same; sweep a key of [data], "
                "[reward], [behavior], [learner] or [ope] (or `equicare run` per setting).")


def point_seed(run_seed: int, overrides: dict[str, Any]) -> int:
    """The seed of a grid point: ``overrides["seed"]`` on a seed axis, else derived.

    Derived from the run seed and the point's settings alone (not its position in the grid),
    with NumPy's ``SeedSequence``: reproducible across processes and machines.

    Parameters
    ----------
    run_seed : int
        The config's ``seed``.
    overrides : dict
        The point's grid values (dotted key -> value).
    """
    import zlib

    import numpy as np

    if "seed" in overrides:
        return int(overrides["seed"])
    key = json.dumps(overrides, sort_keys=True, default=str).encode()
    state = np.random.SeedSequence([int(run_seed), zlib.crc32(key)]).generate_state(1)
    return int(state[0]) % (2**31 - 1)


def run_sweep(
    cfg: RunConfig,
    grid: dict[str, list[Any]],
    *,
    executor: Executor | None = None,
    store_root: str | Path | None = None,
    progress: bool = True,
) -> SweepOutcome:
    """Run every combination of ``grid`` (dotted config keys -> values) and record one run.

    Parameters
    ----------
    cfg : RunConfig
    grid : dict of str to list
        e.g. ``{"learner.window": [2, 4, 6, 8], "reward.engagement": [0, 0.1, 0.3, 0.5]}``;
        ``{"seed": [0, 1, 2]}`` runs each point with those seeds (else each point gets its own,
        :func:`point_seed`).
    executor : Executor, optional
        Default: the config's ``output.executor`` with ``output.jobs`` and ``output.address``;
        a Ray session that default opens is shut down when the sweep ends.

    A user mistake (e.g. a config that does not fit the data) found before the first point
    finished leaves no run in the store; any later failure is recorded as ``failed``.
    """
    keys = list(grid)
    check_grid_keys(grid, cfg.source)
    combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*grid.values())]
    tasks = []
    points = []
    for ov in combos:
        seed = point_seed(int(cfg["seed"]), ov)
        c = cfg.with_overrides({**ov, "seed": seed})  # checks every point before anything runs
        points.append(c)
        tasks.append((c.to_dict(), cfg.source, str(cfg.base_dir), {**ov, "seed": seed}))
    o = cfg["output"]
    ex = executor or get_executor(o["executor"], o["jobs"], o["address"])
    if isinstance(ex, RayExecutor):
        ex.connect()  # a missing cluster fails before the run is recorded
    from equicare.pipeline._run import check_run_inputs, input_files

    check_run_inputs(cfg)
    root = Path(store_root) if store_root is not None else cfg.resolve(o["store"])
    store = RunStore(root)
    run_id = store.start(
        {"sweep": grid, "base": cfg.to_dict()},
        name=f"sweep {cfg['name']}".strip(),
        seed=int(cfg["seed"]),
    )
    out = store.partial_dir(run_id)
    rows: list[dict[str, Any]] = []
    try:
        store.write_inputs(run_id, input_files(points))
        with sigterm_as_interrupt(), progress_task(
            f"sweep ({len(tasks)} points)", total=len(tasks), enabled=progress
        ) as bar:
            for row in iter_map(ex, sweep_point, tasks):  # one pool for the whole grid
                rows.append(row)
                bar.update(advance=1)
        table = pd.DataFrame(rows)
        tmp = out / ".sweep.csv.tmp"
        table.to_csv(tmp, index=False)
        tmp.replace(out / "sweep.csv")
        metrics = []
        for r in rows:
            label = ",".join(f"{k}={r[k]}" for k in keys)
            for m in ("dr", "wdr", "wis", "true_value"):
                if m in r:
                    metrics.append(
                        Metric(
                            f"sweep.{m}",
                            r[m],
                            group=label,
                            ci_low=r.get(f"{m}_ci_low"),
                            ci_high=r.get(f"{m}_ci_high"),
                        )
                    )
        report = _sweep_report(table, keys, out, run_id, grid)
        atomic_write_text(
            out / "sweep.json", json.dumps({"grid": grid, "points": rows}, indent=2, default=float)
        )
        final = store.finish(run_id, metrics)
    except (KeyboardInterrupt, Interrupted) as exc:
        store.fail(run_id, "interrupted", str(exc) or "interrupted by the user")
        raise KeyboardInterrupt from None
    except BaseException as exc:
        if isinstance(exc, USER_ERRORS) and not rows:  # no point done: leave no run behind
            store.discard(run_id)
        else:
            store.fail(run_id, "failed", str(exc))
        raise
    finally:
        if executor is None and hasattr(ex, "shutdown"):
            ex.shutdown()  # a Ray session this sweep opened for itself
    return SweepOutcome(run_id, final, final / report.name, table)


def _sweep_report(
    table: pd.DataFrame, keys: list[str], out: Path, run_id: str, grid: dict[str, list[Any]]
) -> Path:
    from equicare.report import Report
    from equicare.report._build import report_caveats
    from equicare.report._figures import sweep_heatmap

    rep = Report(
        title="equicare sweep report", subtitle=f"run {run_id}", figure_dir=out / "figures"
    )
    rep.section("Sweep")
    rep.text("Grid: " + json.dumps(grid))
    row = keys[0]
    col = keys[1] if len(keys) > 1 else None
    far_of = (table["out_of_range"].fillna("").astype(str).str.split(",")
              if "out_of_range" in table else None)
    shown = [m for m in ("dr", "wdr", "true_value") if m in table]
    flagged = [] if far_of is None else [m for m in shown if far_of.apply(
        lambda f, m=m: m in f).any()]
    if flagged:
        rep.text(
            f"Some points' {', '.join(flagged)} lie far outside the range of the observed "
            "returns (column out_of_range): the importance weights are extreme, so those "
            "are not values of the policy. Their heatmap cells are grey and read 'off scale'; "
            "the colour scale spans the other points.",
            note=True,
        )
    for metric in shown:
        t = table.copy()
        if col is None:
            t["_"] = ""
        if far_of is not None:
            t["_far"] = far_of.apply(lambda f, m=metric: m in f)
        rep.figure(
            sweep_heatmap(t, row, col or "_", metric, far="_far" if far_of is not None
                          else None), f"sweep_{metric}", f"{metric} over the grid"
        )
    rep.table(table, n_col=None)
    rep.section("Caveats")
    for c in report_caveats(support=False, sensitivity=False, sweep=True):
        rep.text(c, note=True)
    return rep.write(out / "report.html")
