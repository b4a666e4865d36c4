"""Figures for restless-bandit plans (matplotlib is imported only when a figure is drawn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from equicare.exceptions import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from equicare.rmab._capacity import CapacityResult
    from equicare.rmab._simulate import PlanResult

__all__ = ["plot_group_outcomes", "plot_pareto", "plot_capacity"]


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def plot_group_outcomes(result: PlanResult) -> Figure:
    """Bars of each published group's mean total reward per policy (error bars: 1 SE).

    Suppressed groups (:attr:`PlanResult.suppressed_groups`) have no bar.

    Parameters
    ----------
    result : PlanResult

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = list(result.published_groups)
    pols = list(result.policies)
    fig, ax = _figure((max(6.0, 1.1 * len(pols) * len(names) / 3), 4.0))
    width = 0.8 / max(1, len(names))
    x = np.arange(len(pols))
    for j, g in enumerate(names):
        means = [result.policies[p].group_mean[g] for p in pols]
        errs = [result.policies[p].group_mean_se[g] for p in pols]
        ax.bar(x + (j - (len(names) - 1) / 2) * width, means, width, yerr=errs, capsize=2,
               label=g)
    ax.set_xticks(x, [f"{p}\nGini {result.policies[p].gini:.3f}"
                      if np.isfinite(result.policies[p].gini) else f"{p}\nGini n/a"
                      for p in pols])
    ax.set_ylabel(f"mean total reward per arm over {result.horizon} steps")
    ax.set_title(f"{result.domain}: {result.n_arms} arms, budget {result.budget} per step, "
                 f"{result.seeds} seeds")
    ax.legend(title="group", ncols=min(len(names), 6), fontsize="small")
    return fig


def plot_pareto(results: Sequence[PlanResult]) -> Figure:
    """Gini of group means against mean reward, one line per policy across budgets.

    Parameters
    ----------
    results : sequence of PlanResult
        Plans of the same domain at different budgets.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not results:
        raise InvalidParameterError("plot_pareto needs at least one PlanResult.")
    fig, ax = _figure((6.0, 4.5))
    pols = list(dict.fromkeys(p for r in results for p in r.policies))
    for p in pols:
        pts = [(r.policies[p].gini, r.policies[p].mean_reward, r.budget) for r in results
               if p in r.policies]
        xs, ys, bs = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", label=p)
        for xv, yv, b in pts:
            ax.annotate(f"B={b}", (xv, yv), fontsize="x-small", xytext=(3, 3),
                        textcoords="offset points")
        del bs
    ax.set_xlabel("Gini of group means (lower is more equal)")
    ax.set_ylabel("mean total reward per arm")
    ax.set_title(f"{results[0].domain}: equity vs utility")
    ax.legend(fontsize="small")
    return fig


def plot_capacity(result: CapacityResult) -> Figure:
    """Share of arms in the goal states after the horizon against the budget, per policy.

    Parameters
    ----------
    result : CapacityResult

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _figure((6.0, 4.5))
    for p, sh in result.share.items():
        line = ax.errorbar(result.budgets, sh, yerr=result.share_se[p], marker="o", capsize=2,
                           label=p)
        b = result.min_budget[p]
        if b is not None:
            ax.axvline(b, linestyle=":", color=line[0].get_color(), alpha=0.7)
    ax.axhline(result.target_share, linestyle="--", color="k", label="target")
    ax.set_xlabel("actions per step (budget)")
    ax.set_ylabel("share of arms in " + (", ".join(result.goal_states)
                                         if len(result.goal_states) <= 3 else "goal states"))
    ax.set_title(f"Capacity planning: {result.n_arms} arms, {result.horizon} steps")
    ax.legend(fontsize="small")
    return fig
