"""The policy card: a self-contained HTML page (and its JSON) for distilled rules.

The page is built from the card JSON alone (``equicare.explain.PolicyCard.to_dict()``), so it
can be rebuilt from a saved card. It holds only aggregates: the rules, the evidence table, the
size/fidelity/value frontier (inline PNG), the subgroups where the rules and the source policy
disagree most (cells below 11 episodes suppressed) and the caveats.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from equicare.fairness._rows import action_label
from equicare.report._figures import _plt
from equicare.report._html import Report
from equicare.utils import atomic_write_text

__all__ = ["build_card_report", "card_frontier_plot", "write_card", "CARD_FILES"]

#: Files of a card folder.
CARD_FILES = {"html": "policy_card.html", "json": "policy_card.json", "rules": "rules.txt",
              "model": "model"}


def card_frontier_plot(card: Mapping[str, Any]) -> Any:
    """Size/fidelity/value trade-off over depths: agreement and value against number of rules."""
    plt = _plt()
    fr = pd.DataFrame(card["frontier"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(fr["n_rules"], fr["agreement"], "o-", color="#1f77b4", label="agreement (argmax)")
    ax1.plot(fr["n_rules"], 1 - fr["tv"], "s--", color="#2ca02c", label="1 - total variation")
    for _, r in fr.iterrows():
        ax1.annotate(f"d{int(r['depth'])}", (r["n_rules"], r["agreement"]),
                     textcoords="offset points", xytext=(3, 4), fontsize=8)
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("number of rules")
    ax1.set_ylabel("fidelity to the source (held out)")
    ax1.set_ylim(0, 1.02)
    ax1.legend(fontsize=8, loc="lower right")
    key = str(fr["estimator"].iloc[0]) if len(fr) else "dr"
    lo = fr["ci"].map(lambda c: c[0])
    hi = fr["ci"].map(lambda c: c[1])
    ax2.errorbar(fr["n_rules"], fr["value"], yerr=[fr["value"] - lo, hi - fr["value"]],
                 fmt="o-", color="#1f77b4", capsize=3, label=f"rules ({key})")
    val = card["evidence"]["value"]
    src = val["source"].get(key)
    if src:
        ax2.axhline(src["value"], color="#d62728", ls="--", lw=1.2, label=f"source ({key})")
    ax2.axhline(val["behavior"]["value"], color="#555", ls=":", lw=1.2,
                label="current practice (observed)")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("number of rules")
    ax2.set_ylabel("estimated value (held out)")
    ax2.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _ci(cell: Mapping[str, Any] | None) -> str:
    if not cell or cell.get("suppressed") or cell.get("value") is None:
        return ""
    ci = cell.get("ci") or [None, None]
    if ci[0] is None:
        return f"{cell['value']:.3g}"
    return f"{cell['value']:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"


def build_card_report(card: Mapping[str, Any], *, figure_dir: Path | None = None) -> Report:
    """Assemble the policy card page from the card JSON."""
    src = card["source"]
    name = str(src.get("algo") or src.get("name") or "source")
    ev = card["evidence"]
    fid, val, fair, sup = ev["fidelity"], ev["value"], ev["fairness"], ev["support"]
    key = val.get("estimator_for_frontier", "dr")
    rep = Report(title="Policy card: readable rules",
                 subtitle=f"distilled from {name}" + (f" ({src['path']})" if src.get("path")
                                                      else ""),
                 figure_dir=figure_dir)
    rep.section("Rules")
    kept = val["improvement_kept"].get(key)
    rep.kpis({"rules": str(card["tree"]["n_rules"]), "depth": str(card["tree"]["depth"]),
              "agreement with the source": f"{100 * fid['agreement']:.1f}%",
              "mean total variation": f"{fid['tv']:.3f}",
              f"improvement kept ({key})": "n/a" if kept is None else f"{100 * kept:.0f}%",
              "mass on rarely taken actions": f"{sup['rules_pct']:.1f}%"})
    if card["data"].get("mode") == "exceptions" and card["data"].get("usual_care_model") in (
            None, "none"):
        rep.text("Exception rules: the source departs from current practice in every state the "
                 "rules distinguish, so each rule names a deviation and the complete action "
                 "(every component) to take, with the share of those rows where the source "
                 "policy made that choice (p); no row is left with current practice. Rules are "
                 "listed from the most to the least used; a row follows exactly one rule.")
    elif card["data"].get("mode") == "exceptions":
        model = {"cells": "the observed frequency of each action in each state cell",
                 "tree": "a tree of the logged actions"}.get(
                     str(card["data"].get("usual_care_model")), "an estimate of practice")
        rep.text("Exception rules: each names where to deviate from current practice and the "
                 "complete action (every component) to take there, with the share of those "
                 "rows where the source policy made that choice (p). Every other row stays "
                 f"with current practice: the clinicians' own distribution ({model}, stored "
                 "with the rules). Rules are listed from the most to the least used; a row "
                 "follows exactly one rule.")
    else:
        rep.text("Each rule recommends one complete action (every component) with the share of "
                 "the fitting rows where the source policy made that choice (p). Rules are "
                 "listed from the most to the least used; a row follows exactly one rule.")
    rows = [{"rule": r["rule"], "if": r["if"], "then": r["then"],
             "p": float("nan") if r["p"] is None else r["p"],
             "share of rows": r.get("share"), "held-out agreement": r.get("test_agreement")}
            for r in card["rules"]]
    rep.table(pd.DataFrame(rows), caption="Rules in plain language", n_col=None,
              floatfmt="{:.2f}")
    rep.heading("The rules as text")
    for r in card["rules"]:
        rep.text(f"{r['rule']}. {r['text']}")

    rep.section("Evidence")
    rep.text(f"Measured on {card['data']['test_episodes']:,} held-out episodes "
             f"({card['data']['test_rows']:,} {card['data']['time_unit']}s); the rules were "
             f"fitted on the other {card['data']['fit_episodes']:,} episodes. Values are "
             f"off-policy estimates with 95% episode-bootstrap intervals "
             f"(propensities: {val.get('propensities', 'logged')}).")
    pols = fair["policies"]
    table = []
    for label, pol_key in (("current practice", "behavior"), (name, "source"),
                           ("rules", "rules")):
        row: dict[str, Any] = {"policy": label}
        if pol_key == "behavior":
            for k in val["rules"]:
                row[f"value ({k})"] = _ci(val["behavior"]) + " (observed)"
            row.update({"agreement": "", "total variation": "", "rarely taken %": ""})
        else:
            for k, e in val[pol_key].items():
                row[f"value ({k})"] = _ci(e)
            if pol_key == "rules":
                row.update({"agreement": f"{100 * fid['agreement']:.1f}%",
                            "total variation": f"{fid['tv']:.3f}",
                            "rarely taken %": f"{sup['rules_pct']:.1f}"})
            else:
                row.update({"agreement": "100%", "total variation": "0",
                            "rarely taken %": f"{sup['source_pct']:.1f}"})
        p = pols.get(pol_key, {})
        label = action_label(fair.get("action", "suppressed"))
        row[f"parity gap pp ({label})"] = _ci(p.get("parity_gap_pp"))
        row["parity ratio"] = _ci(p.get("parity_ratio"))
        wg = p.get("worst_group")
        row["worst group (value)"] = ("" if wg is None else
                                      f"{wg} ({p['worst_group_value']:.3g})")
        table.append(row)
    rep.table(pd.DataFrame(table), caption=f"Evidence by policy (groups: "
              f"{fair.get('group', 'suppressed')})", n_col=None)
    if fair.get("suppressed"):
        rep.text(f"Fairness audit suppressed: {fair['reason']}", note=True)
    pp_rows = []
    groups = sorted({g for p in pols.values() for g in (p.get("proportional_parity") or {})})
    for g in groups:
        row = {"group": g}
        n_ep = None
        for label, pol_key in (("current practice", "behavior"), (name, "source"),
                               ("rules", "rules")):
            cell = (pols.get(pol_key, {}).get("proportional_parity") or {}).get(g)
            row[label] = _ci(cell)
            vb = (pols.get(pol_key, {}).get("value_by_group") or {}).get(g) or {}
            n_ep = vb.get("n_episodes", n_ep)
        row["n_episodes"] = n_ep
        pp_rows.append(row)
    if pp_rows:
        rep.table(pd.DataFrame(pp_rows),
                  caption=f"Proportional parity of {action_label(fair['action'])} (rate "
                          "relative to need) "
                          f"by {fair['group']}; cells under 11 episodes suppressed")

    rep.section("Size, fidelity and value")
    rep.figure(card_frontier_plot(card), "card_frontier",
               "Left: agreement of the most likely actions and 1 - total variation on held-out "
               "episodes, by number of rules (depth d1-d6). Right: estimated value of the rules "
               "with 95% intervals; the source policy (dashed) and current practice (dotted).")
    fr = pd.DataFrame([{"depth": r["depth"], "rules": r["n_rules"], "agreement": r["agreement"],
                        "total variation": r["tv"], f"value ({r['estimator']})": r["value"],
                        "ci low": r["ci"][0], "ci high": r["ci"][1],
                        "rarely taken %": r["support_pct"]} for r in card["frontier"]])
    rep.table(fr, n_col=None, floatfmt="{:.3g}")

    rep.section("Where the rules and the source disagree")
    rep.text("Protected subgroups (and pairs of them) with the largest mean total variation "
             "between the rules and the source policy on held-out rows.")
    dis = pd.DataFrame([{"subgroup": f"{r['attribute']}: {r['group']}",
                         "n_episodes": r.get("n_episodes"), "agreement": r.get("agreement"),
                         "total variation": r.get("tv")} for r in card["disagreement"]])
    if len(dis):
        rep.table(dis, floatfmt="{:.3f}")

    rep.section("Caveats")
    for c in card["caveats"]:
        rep.text(c, note=True)
    return rep


def write_card(card: Any, out: str | os.PathLike[str], *, overwrite: bool = False
               ) -> dict[str, Path]:
    """Write a policy card folder atomically: HTML page, JSON, rules as text, model folder.

    Parameters
    ----------
    card : equicare.explain.PolicyCard
    out : str or Path
        Folder; an existing non-empty folder is refused unless ``overwrite`` (then replaced
        whole, only after the new card is complete).
    overwrite : bool

    Returns
    -------
    dict of str to Path
        ``{"html", "json", "rules", "model"}``.
    """
    from equicare.explain._rules import rules_text

    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a folder.")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} exists and is not empty; refusing to overwrite it "
                              "(pass --force to replace it).")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        d = card.to_dict()
        atomic_write_text(tmp / CARD_FILES["json"], json.dumps(d, indent=2, default=float) + "\n")
        atomic_write_text(tmp / CARD_FILES["rules"], rules_text(card.rules) + "\n")
        card.tree.save(tmp / CARD_FILES["model"])
        build_card_report(d).write(tmp / CARD_FILES["html"])
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {k: dest / v for k, v in CARD_FILES.items()}
