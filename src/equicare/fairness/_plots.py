"""Figures of an audit for the HTML report (matplotlib, imported lazily); suppression applied."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from equicare.fairness._allocation import AllocationFrame
from equicare.fairness._audit import AuditResult

__all__ = ["plot_allocation", "plot_parity_gaps"]


def _frames(result: AuditResult | Mapping[str, AllocationFrame] | AllocationFrame
            ) -> dict[str, AllocationFrame]:
    if isinstance(result, AllocationFrame):
        return {result.policy: result}
    if isinstance(result, AuditResult):
        return {k: v.allocation for k, v in result.policies.items()}
    return dict(result)


def _published(frame: AllocationFrame) -> np.ndarray:
    """Return the indices of groups that may be drawn (at least ``min_cell`` episodes)."""
    return np.flatnonzero(np.asarray(frame.counts) >= frame.min_cell)


def _new_axes(ax: Any, ncols: int = 1, width: float = 6.4) -> tuple[Any, list[Any]]:
    if ax is not None:
        axes = list(ax) if isinstance(ax, list | tuple | np.ndarray) else [ax]
        return axes[0].figure, axes
    from matplotlib.figure import Figure  # no pyplot: no global state, any backend

    fig = Figure(figsize=(width * ncols, 4.0), layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _yerr(value: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.vstack([np.clip(value - lo, 0, None), np.clip(hi - value, 0, None)])


def plot_allocation(result: AuditResult | Mapping[str, AllocationFrame] | AllocationFrame, *,
                    ax: Any = None) -> Any:
    """Bar chart of the allocation rate (%) by group and policy, with interval bars.

    Groups with fewer than the frame's ``min_cell`` episodes never appear (they are already
    suppressed in the frame; the check is repeated here). The overall rate of each policy is a
    dashed line.

    Parameters
    ----------
    result : AuditResult, mapping of name to AllocationFrame, or AllocationFrame
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    frames = _frames(result)
    fig, (a,) = _new_axes(ax)
    first = next(iter(frames.values()))
    labels = [first.groups[i] for i in _published(first)]
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(frames))
    for k, (name, f) in enumerate(frames.items()):
        idx = np.array([f.groups.index(g) for g in labels if g in f.groups], dtype=int)
        idx = np.array([i for i in idx if f.counts[i] >= f.min_cell], dtype=int)
        vals = 100 * f.rates[idx]
        err = None
        if f.rate_reps is not None:
            ci = 100 * f.by_group_ci.to_numpy()[idx]
            err = _yerr(vals, ci[:, 0], ci[:, 1])
        pos = x[: idx.size] + (k - (len(frames) - 1) / 2) * width
        bars = a.bar(pos, vals, width, yerr=err, capsize=3, label=name)
        a.axhline(100 * f.overall, color=bars.patches[0].get_facecolor() if bars.patches
                  else "k", linestyle="--", linewidth=0.8)
    a.set_xticks(x, labels, rotation=30 if len(labels) > 5 else 0, ha="right"
                 if len(labels) > 5 else "center")
    a.set_ylabel(f"{first.action} (% of {'steps' if first.level == 'step' else 'episodes'})")
    a.set_xlabel(first.group)
    ci_txt = f" ({100 * (1 - first.alpha):.0f}% CI)" if first.rate_reps is not None else ""
    a.set_title(f"Allocation by group{ci_txt}")
    a.legend(frameon=False, fontsize="small")
    return fig


def plot_parity_gaps(result: AuditResult | Mapping[str, AllocationFrame] | AllocationFrame, *,
                     ax: Any = None) -> Any:
    """Parity gaps in percentage points: max-min gap per policy, and each group minus overall.

    Left panel: demographic-parity gap (max minus min group rate) of each policy with its interval
    and the permutation p-value. Right panel: each published group's rate minus the overall rate.

    Parameters
    ----------
    result : AuditResult, mapping of name to AllocationFrame, or AllocationFrame
    ax : sequence of two matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    frames = _frames(result)
    fig, axes = _new_axes(ax, ncols=2, width=4.8)
    a0, a1 = axes[0], axes[1] if len(axes) > 1 else axes[0]
    names = list(frames)
    gaps = np.array([100 * f.difference() for f in frames.values()])
    err = None
    if all(f.rate_reps is not None for f in frames.values()):
        ci = np.array([100 * np.asarray(f.difference_ci()) for f in frames.values()])
        err = _yerr(gaps, ci[:, 0], ci[:, 1])
    y = np.arange(len(names))
    a0.barh(y, gaps, xerr=err, capsize=3, color="tab:gray")
    for i, f in enumerate(frames.values()):
        if f.permutation_p is not None:
            a0.annotate(f"p={f.permutation_p:.2g}", (gaps[i], y[i]), xytext=(4, 4),
                        textcoords="offset points", fontsize="small")
    a0.set_yticks(y, names)
    a0.invert_yaxis()
    a0.set_xlabel("parity gap, max - min (pp)")
    a0.set_title(next(iter(frames.values())).action)
    width = 0.8 / max(1, len(frames))
    first = next(iter(frames.values()))
    labels = [first.groups[i] for i in _published(first)]
    x = np.arange(len(labels))
    for k, (name, f) in enumerate(frames.items()):
        idx = np.array([f.groups.index(g) for g in labels if g in f.groups], dtype=int)
        idx = np.array([i for i in idx if f.counts[i] >= f.min_cell], dtype=int)
        d = 100 * (f.rates[idx] - f.overall)
        e = None
        if f.rate_reps is not None:
            c = 100 * f.difference_to_overall_ci().to_numpy()[idx]
            e = _yerr(d, c[:, 0], c[:, 1])
        a1.bar(x[: idx.size] + (k - (len(frames) - 1) / 2) * width, d, width, yerr=e, capsize=3,
               label=name)
    a1.axhline(0.0, color="k", linewidth=0.8)
    a1.set_xticks(x, labels, rotation=30 if len(labels) > 5 else 0)
    a1.set_ylabel("group minus overall (pp)")
    a1.set_xlabel(first.group)
    a1.legend(frameon=False, fontsize="small")
    return fig
