"""Figure of a mediation decomposition (matplotlib is imported only when called)."""

from __future__ import annotations

from typing import Any

import numpy as np

from equicare.causal._result import MediationResult

__all__ = ["plot_mediation"]

_COMPONENTS = ("ide", "ime", "dde", "dme")
_LABELS = {"ide": "immediate direct (IDE)", "ime": "immediate mediator (IME)",
           "dde": "delayed direct (DDE)", "dme": "delayed mediator (DME)"}
_COLORS = {"ide": "#1b9e77", "ime": "#d95f02", "dde": "#7570b3", "dme": "#e7298a"}


def plot_mediation(result: MediationResult, *, estimators: tuple[str, ...] | None = None,
                   title: str | None = None) -> Any:
    """Stacked decomposition bars with confidence intervals.

    Left panel: for each estimator a bar stacking IDE, IME, DDE and DME (positive parts upward,
    negative downward) with the total effect and its CI as a black marker. Right panel: each
    component with its CI, grouped by estimator.

    Parameters
    ----------
    result : MediationResult
    estimators : tuple of str, optional
        Which estimators to show (default: all in the result).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    names = [e for e in (estimators or tuple(result.estimators)) if e in result.estimators]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    xs = np.arange(len(names))
    for i, name in enumerate(names):
        eff = result.estimators[name].effects
        up = down = 0.0
        for comp in _COMPONENTS:
            v = eff[comp].value
            if v is None:
                continue
            base = up if v >= 0 else down
            ax1.bar(i, v, bottom=base, color=_COLORS[comp], width=0.6,
                    label=_LABELS[comp] if i == 0 else None)
            if v >= 0:
                up += v
            else:
                down += v
        tot = eff["total"]
        if tot.value is not None:
            err = None if tot.ci is None else [[tot.value - tot.ci[0]], [tot.ci[1] - tot.value]]
            ax1.errorbar(i, tot.value, yerr=err, fmt="D", color="black", capsize=4,
                         label="total (95% CI)" if i == 0 else None)
    ax1.axhline(0, color="grey", lw=0.8)
    ax1.set_xticks(xs, [n.upper() for n in names])
    ax1.set_ylabel("effect on long-run average reward")
    ax1.set_title("decomposition of the total effect")
    ax1.legend(fontsize=8, loc="best")
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        eff = result.estimators[name].effects
        for j, comp in enumerate(_COMPONENTS):
            e = eff[comp]
            if e.value is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            err = None if e.ci is None else [[e.value - e.ci[0]], [e.ci[1] - e.value]]
            ax2.bar(x, e.value, width=width * 0.9, color=f"C{i}",
                    label=name.upper() if j == 0 else None)
            ax2.errorbar(x, e.value, yerr=err, fmt="none", ecolor="black", capsize=3)
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xticks(np.arange(len(_COMPONENTS)), [c.upper() for c in _COMPONENTS])
    ax2.set_title("components with confidence intervals")
    ax2.legend(fontsize=8, loc="best")
    fig.suptitle(title or f"Mediation of {result.target} vs {result.control} "
                 f"({result.n_episodes} episodes, {result.n_steps} transitions)")
    return fig
