"""Figures of the run report, drawn from the result files (aggregates only, small cells dropped)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from equicare.fairness._rows import action_label

__all__ = [
    "forest_plot",
    "ess_plot",
    "sensitivity_plot",
    "allocation_plot",
    "parity_gap_plot",
    "frontier_plot",
    "sweep_heatmap",
    "plan_group_plot",
]

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _ok(cell: Any) -> bool:
    return (
        isinstance(cell, Mapping) and not cell.get("suppressed") and cell.get("value") is not None
    )


def forest_plot(
    result: Mapping[str, Any], truth: Mapping[str, Any] | None = None, policy_name: str = "learned"
) -> Any:
    """Policy value by estimator with 95% CIs, behaviour and truth marked.

    ``result`` follows Contract 3. Estimates listed in its ``out_of_range`` (far outside the
    range of the observed returns: blown-up importance weights, not values) are left out of
    the axis' scale and written at its edge, so they do not squeeze every other estimate into
    one point.
    """
    plt = _plt()
    ests = result["estimates"]
    names = list(ests)
    far = set(result.get("out_of_range") or [])
    fig, ax = plt.subplots(figsize=(7, 0.45 * (len(names) + 2) + 1))
    y = np.arange(len(names))[::-1] + 1
    b = result["behavior"]
    span = [b["value"], *(b.get("ci") or [])]
    span += [t["value"] for t in (truth or {}).values()]
    for k in names:
        if k not in far:
            span += [ests[k]["value"], *(ests[k].get("ci") or [])]
    finite = [float(v) for v in span if v is not None and np.isfinite(v)]
    lo_ax, hi_ax = min(finite), max(finite)
    pad = 0.05 * (hi_ax - lo_ax) or 0.05 * max(abs(hi_ax), 1.0)
    lo_ax, hi_ax = lo_ax - pad, hi_ax + pad
    for yi, k in zip(y, names, strict=True):
        e = ests[k]
        if k in far:
            edge, ha = (hi_ax, "right") if e["value"] > hi_ax else (lo_ax, "left")
            ax.annotate(f"{e['value']:.3g}: off scale, not a value", (edge, yi), ha=ha,
                        va="center", fontsize=8, color="#b00")
            continue
        lo, hi = e.get("ci") or (np.nan, np.nan)
        ax.plot([lo, hi], [yi, yi], color=_COLORS[0], lw=2)
        ax.plot(e["value"], yi, "o", color=_COLORS[0])
    ax.plot(b["ci"], [0, 0], color="#555", lw=2)
    ax.plot(b["value"], 0, "s", color="#555")
    ax.axvline(b["value"], color="#555", ls=":", lw=1)
    if far:
        ax.set_xlim(lo_ax, hi_ax)
        ax.set_ylim(-0.6, len(names) + 0.6)  # an off-scale estimate has no point to fit to
    labels = [f"{k.upper()} ({policy_name})" for k in names]
    ax.set_yticks(list(y) + [0], labels + ["behaviour (observed)"])
    if truth:
        for i, (lab, t) in enumerate(truth.items()):
            ax.axvline(
                t["value"],
                color=_COLORS[1 + i],
                ls="--",
                lw=1,
                label=f"true value: {lab} (simulator)",
            )
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"policy value (discounted return, gamma={result.get('gamma', 1):g})")
    ax.set_title("Off-policy estimates with 95% bootstrap CIs")
    fig.tight_layout()
    return fig


def ess_plot(result: Mapping[str, Any]) -> Any:
    """Effective sample size (% of episodes) of the importance weights."""
    plt = _plt()
    ess = result["ess"]
    items = [
        (k.replace("_pct", ""), v)
        for k, v in ess.items()
        if k.endswith("_pct") and isinstance(v, int | float)
    ]
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(items) + 1.2))
    if items:
        ax.barh([k for k, _ in items], [v for _, v in items], color=_COLORS[0])
        for i, (_, v) in enumerate(items):
            ax.text(v, i, f" {v:.2f}%", va="center", fontsize=8)
    ax.set_xlabel("effective sample size, % of episodes")
    ax.set_title("How many episodes the weights effectively use")
    fig.tight_layout()
    return fig


def sensitivity_plot(table: pd.DataFrame) -> Any:
    """DR value (with CI) across each sensitivity analysis (medians over the noise draws)."""
    plt = _plt()
    analyses = [a for a in table["analysis"].unique() if a != "baseline"]
    fig, axes = plt.subplots(
        1, max(len(analyses), 1), figsize=(4.2 * max(len(analyses), 1), 3.4), squeeze=False
    )
    base = table[table["analysis"] == "baseline"]
    for ax, a in zip(axes[0], analyses, strict=False):
        t = table[table["analysis"] == a]
        g = (
            t.groupby("parameter", sort=True)
            .agg(value=("value", "median"), lo=("ci_low", "median"), hi=("ci_high", "median"))
            .reset_index()
        )
        x = pd.to_numeric(g["parameter"], errors="coerce")
        ax.fill_between(x, g["lo"], g["hi"], alpha=0.2, color=_COLORS[0])
        ax.plot(x, g["value"], "o-", color=_COLORS[0])
        if not base.empty:
            ax.axhline(float(base["value"].iloc[0]), color="#555", ls=":", lw=1, label="baseline")
        ax.set_title(str(a).replace("_", " "))
        ax.set_xlabel("parameter")
    axes[0][0].set_ylabel("estimate (median over draws)")
    fig.tight_layout()
    return fig


def allocation_plot(audit: Mapping[str, Any]) -> Any:
    """Rate of the audited action by group and policy, with 95% CIs (suppressed cells omitted)."""
    plt = _plt()
    pols = list(audit["policies"])
    groups = sorted({g for p in pols for g, c in audit["policies"][p]["rate"].items() if _ok(c)})
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups) * len(pols) / 2 + 3), 3.8))
    w = 0.8 / max(len(pols), 1)
    x = np.arange(len(groups))
    for i, p in enumerate(pols):
        rate = audit["policies"][p]["rate"]
        vals = np.array([100 * rate[g]["value"] if _ok(rate.get(g)) else np.nan for g in groups])
        lo = np.array(
            [
                100 * rate[g]["ci"][0] if _ok(rate.get(g)) and "ci" in rate[g] else np.nan
                for g in groups
            ]
        )
        hi = np.array(
            [
                100 * rate[g]["ci"][1] if _ok(rate.get(g)) and "ci" in rate[g] else np.nan
                for g in groups
            ]
        )
        yerr = np.vstack([vals - lo, hi - vals]) if np.isfinite(lo).any() else None
        ax.bar(
            x + (i - (len(pols) - 1) / 2) * w,
            vals,
            w,
            yerr=yerr,
            capsize=3,
            color=_COLORS[i % len(_COLORS)],
            label=p,
        )
    ax.set_xticks(x, groups, rotation=20)
    ax.set_ylabel(f"{action_label(audit['action'])} rate (%)")
    ax.set_title(f"Allocation of {action_label(audit['action'])} by {audit['group']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def parity_gap_plot(audit: Mapping[str, Any]) -> Any:
    """Demographic-parity gap (max - min, percentage points) per policy with 95% CIs."""
    plt = _plt()
    pols = list(audit["policies"])
    vals = np.array([audit["policies"][p]["parity_gap_pp"].get("value", np.nan)  # suppressed
                     for p in pols], float)
    cis = [audit["policies"][p]["parity_gap_pp"].get("ci") for p in pols]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(pols) + 1.4))
    y = np.arange(len(pols))
    ax.barh(y, vals, color=[_COLORS[i % len(_COLORS)] for i in range(len(pols))])
    for yi, ci, v in zip(y, cis, vals, strict=True):
        if ci:
            ax.plot(ci, [yi, yi], color="k", lw=1.5)
        if not np.isfinite(v):  # an empty bar would read as no gap
            ax.text(0.0, yi, " suppressed (a group rate of fewer than 11 members)", va="center",
                    fontsize=8, color="#555")
    ax.set_yticks(y, pols)
    ax.set_xlabel("parity gap, max - min rate (percentage points)")
    ax.set_title(f"Parity gap of {action_label(audit['action'])}")
    fig.tight_layout()
    return fig


def frontier_plot(table: pd.DataFrame) -> Any:
    """Value vs parity gap over the fairness weights, Pareto-efficient points highlighted."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    xcol = "gap_pp" if "gap_pp" in table else "parity_gap_pp"
    ycol = "value" if "value" in table else table.columns[2]
    pareto = table["pareto"].to_numpy(bool) if "pareto" in table else np.zeros(len(table), bool)
    ax.plot(table[xcol], table[ycol], "-", color="#999", lw=1)
    ax.scatter(table[xcol][~pareto], table[ycol][~pareto], color="#999", label="dominated")
    ax.scatter(table[xcol][pareto], table[ycol][pareto], color=_COLORS[1], label="Pareto-efficient")
    if "lambda" in table:
        for _, r in table.iterrows():
            ax.annotate(
                f"λ={r['lambda']:g}",
                (r[xcol], r[ycol]),
                fontsize=8,
                textcoords="offset points",
                xytext=(4, 4),
            )
    ax.set_xlabel("parity gap (pp)")
    ax.set_ylabel("policy value (DR)")
    ax.set_title("Fairness-value trade-off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_heatmap(table: pd.DataFrame, row: str, col: str, value: str,
                  far: str | None = None) -> Any:
    """Heatmap of a metric over a two-way sweep grid (one-way sweeps give one row).

    ``far`` names a boolean column of ``table``: points whose ``value`` lies far outside the
    range of the observed returns (not a value; the result JSON's ``out_of_range``). Their
    cells are grey and read "off scale", and the colour scale spans the other points only.
    """
    plt = _plt()
    t = table
    if far is not None and far in table:
        t = table.assign(**{value: table[value].where(~table[far].astype(bool))})
    piv = t.pivot_table(index=row, columns=col, values=value, aggfunc="mean", dropna=False)
    raw = table.pivot_table(index=row, columns=col, values=value, aggfunc="mean",
                            dropna=False).reindex(index=piv.index, columns=piv.columns)
    fig, ax = plt.subplots(figsize=(1.2 * piv.shape[1] + 2.5, 0.8 * piv.shape[0] + 1.8))
    ax.set_facecolor("#ccc")  # a masked (off-scale) cell
    im = ax.imshow(np.ma.masked_invalid(piv.to_numpy(dtype=float)), cmap="viridis",
                   aspect="auto")
    ax.set_xticks(range(piv.shape[1]), [str(c) for c in piv.columns])
    ax.set_yticks(range(piv.shape[0]), [str(r) for r in piv.index])
    ax.set_xlabel(col)
    ax.set_ylabel(row)
    for i in range(piv.shape[0]):
        for j in range(piv.shape[1]):
            v = piv.iloc[i, j]
            if v == v:
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
            elif raw.iloc[i, j] == raw.iloc[i, j]:
                ax.text(j, i, f"{raw.iloc[i, j]:.3g}\noff scale", ha="center", va="center",
                        color="#b00", fontsize=7)
    fig.colorbar(im, ax=ax, label=value)
    ax.set_title(f"{value} over the sweep")
    fig.tight_layout()
    return fig


def plan_group_plot(plan: Mapping[str, Any]) -> Any:
    """Group mean total reward per restless-bandit policy (Contract-5 ``plan``), Gini in labels."""
    plt = _plt()
    pols = list(plan["policies"])
    groups = sorted({g for p in pols for g in plan["policies"][p]["group_mean"]})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 3), 3.8))
    w = 0.8 / max(len(pols), 1)
    x = np.arange(len(groups))
    for i, p in enumerate(pols):
        gm = plan["policies"][p]["group_mean"]
        ax.bar(
            x + (i - (len(pols) - 1) / 2) * w,
            [gm.get(g, np.nan) for g in groups],
            w,
            color=_COLORS[i % len(_COLORS)],
            label=(f"{p} (Gini n/a)" if plan["policies"][p]["gini"] is None
                   else f"{p} (Gini {plan['policies'][p]['gini']:.3f})"),
        )
    ax.set_xticks(x, groups)
    ax.set_ylabel("mean total reward per arm")
    ax.set_title(f"{plan['domain']}: group outcomes by policy, budget {plan['budget']}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
