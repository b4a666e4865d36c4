"""Figures of online experiments (matplotlib, imported only when a figure is drawn).

Every function takes results as returned by :mod:`equicare.pipeline._online` and returns
a :class:`matplotlib.figure.Figure` built without pyplot (no global state, works headless); pass
``ax`` to draw into an existing axes instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["plot_learning_curves", "plot_frontier", "plot_group_waits"]


def _axes(ax: Any, size: tuple[float, float] = (6.0, 4.0)) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def plot_learning_curves(
    runs: Mapping[str, Sequence[dict[str, Any]]],
    *,
    metric: str = "return",
    smooth: int = 5,
    ax: Any = None,
) -> Any:
    """Learning curves: mean over seeds (line) and the seeds' range (band) per learner.

    Parameters
    ----------
    runs : mapping of label -> list of :func:`run_seed` outputs
    metric : {'return', 'mean_wait', 'worst_group_wait', 'wait_gap'}
        Training-episode metric on the y axis (x: environment steps).
    smooth : int
        Trailing moving-average window over curve points (1: raw).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax)
    for label, results in runs.items():
        n = min(len(r["curve"]) for r in results)
        if n == 0:
            continue
        x = np.asarray([p["env_steps"] for p in results[0]["curve"][:n]], dtype=float)
        y = np.asarray([[p[metric] for p in r["curve"][:n]] for r in results], dtype=float)
        if smooth > 1:
            c = np.cumsum(np.pad(y, ((0, 0), (1, 0))), axis=1)
            k = np.minimum(np.arange(1, n + 1), smooth)
            y = (c[:, 1:] - c[:, np.arange(1, n + 1) - k]) / k
        line = ax.plot(x, y.mean(axis=0), label=f"{label} (n={len(results)})")[0]
        ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(metric.replace("_", " ") + (f" (moving average of {smooth})"
                                               if smooth > 1 else ""))
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_frontier(
    sweep: dict[str, Any],
    *,
    x: str = "mean_wait",
    y: str = "worst_group_wait",
    ax: Any = None,
) -> Any:
    """Efficiency-versus-equity frontier of a :func:`lambda_sweep` (95% Student-t CIs over seeds).

    Parameters
    ----------
    sweep : dict
        Output of :func:`lambda_sweep` (or the ``frontier.json`` it writes).
    x, y : str
        Summary metrics for the axes (default: mean wait vs the worst group's mean wait).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax)
    rows = sweep["frontier"]
    xs = np.asarray([r[x]["mean"] for r in rows])
    ys = np.asarray([r[y]["mean"] for r in rows])
    # no interval (one seed): no error bar
    xerr = np.abs(np.asarray([r[x]["ci"] or [r[x]["mean"]] * 2 for r in rows]).T - xs)
    yerr = np.abs(np.asarray([r[y]["ci"] or [r[y]["mean"]] * 2 for r in rows]).T - ys)
    ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o-", capsize=3)
    for r, xi, yi in zip(rows, xs, ys, strict=True):
        ax.annotate(f"λ={r['lam']:g}", (xi, yi), textcoords="offset points", xytext=(5, 5),
                    fontsize="small")
    ax.set_xlabel(f"{x.replace('_', ' ')} (h)")
    ax.set_ylabel(f"{y.replace('_', ' ')} (h)")
    return fig


def plot_group_waits(
    runs: Mapping[str, Sequence[dict[str, Any]]],
    *,
    include_baselines: bool = True,
    ax: Any = None,
) -> Any:
    """Mean wait of each group under each learner (bars: mean over seeds; whiskers: range).

    Parameters
    ----------
    runs : mapping of label -> list of :func:`run_seed` outputs
    include_baselines : bool
        Add the baselines of the first learner's runs as extra bars.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax, (7.0, 4.0))
    bars: dict[str, np.ndarray] = {}
    groups: list[str] = []
    for label, results in runs.items():
        groups = list(results[0]["groups"])
        bars[label] = np.asarray([[r["final"]["groups"][g]["mean_wait"] for g in groups]
                                  for r in results])
    if include_baselines and runs:
        first = next(iter(runs.values()))
        for b in first[0].get("baselines", {}):
            bars[b] = np.asarray([[r["baselines"][b]["groups"][g]["mean_wait"] for g in groups]
                                  for r in first])
    width = 0.8 / max(len(bars), 1)
    pos = np.arange(len(groups))
    for i, (label, v) in enumerate(bars.items()):
        m = v.mean(axis=0)
        err = np.vstack([m - v.min(axis=0), v.max(axis=0) - m])
        ax.bar(pos + i * width, m, width, yerr=err, capsize=2, label=label)
    ax.set_xticks(pos + width * (len(bars) - 1) / 2, groups)
    ax.set_ylabel("mean wait (h)")
    ax.legend(loc="best", fontsize="small")
    return fig
