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
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from equicare.fairness._rows import action_label
from equicare.report._figures import _plt
from equicare.report._html import Report
from equicare.utils import atomic_write_text, value_text

__all__ = ["build_card_report", "card_frontier_plot", "check_card_target", "write_card",
           "CARD_FILES"]

#: Files of a card folder.
CARD_FILES = {"html": "policy_card.html", "json": "policy_card.json", "rules": "rules.txt",
              "model": "model"}


#: What the two values of exception rules are (the evidence table's last two rows).
DEPLOYED_NOTE = (
    "Two values of the rules. As predict outputs them, a row no rule names gets current practice "
    "as stored with the rules (an estimate of the clinicians' distribution); that is the policy "
    "in card/model/ as stored, which evaluate, audit and mediate value with --usual-care "
    "stored. As deployed (their default), the clinicians decide where no rule applies: those "
    "rows keep the action they actually took (importance ratio 1), so no estimate of practice "
    "enters the value. The fairness columns are the stored policy's.")
#: How the card orders its rules.
RULE_ORDER = ("listed by the plan they recommend (rules naming the same plan together, the most "
              "used plan first); a row follows exactly one rule.")
#: What a rule's p is (and is not) on a card of exception rules.
P_MEANING_EXCEPTIONS = (
    "p is the probability the rules give that action at the rule's rows: its share among the "
    "fitting rows where the source policy departs from current practice, each weighted by what "
    "the departure gains. It is not the share of the rule's rows where the source makes that "
    "choice (a rule can read p=1.00 where the source's most likely action is another one on "
    "most of its rows); that share, on held-out rows, is the held-out agreement.")
#: What a rule's p is on a card of imitation rules.
P_MEANING_IMITATE = (
    "p is the probability the rules give that action at the rule's rows: its share among the "
    "source policy's choices on the fitting rows the rule covers, each row weighted by how much "
    "the choice matters there. The unweighted share of held-out rows where the source's most "
    "likely action is the rule's is the held-out agreement.")


def card_frontier_plot(card: Mapping[str, Any]) -> Any:
    """Size/fidelity/value trade-off over depths: agreement and value by depth.

    The x axis is the depth, each tick labelled with its number of rules (depths with the same
    number of rules would overlap on a rules axis).
    """
    plt = _plt()
    fr = pd.DataFrame(card["frontier"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    depth = fr["depth"].astype(int) if len(fr) else pd.Series(dtype=int)
    ticks = ([f"{d}\n({n} rule{'s' if n != 1 else ''})" for d, n in
              zip(depth, fr["n_rules"].astype(int), strict=True)] if len(fr) else [])
    ax1.plot(depth, fr["agreement"], "o-", color="#1f77b4", label="agreement (argmax)")
    ax1.plot(depth, 1 - fr["tv"], "s--", color="#2ca02c", label="1 - total variation")
    ax1.set_ylabel("fidelity to the source (held out)")
    ax1.set_ylim(0, 1.02)
    ax1.legend(fontsize=8, loc="lower right")
    key = str(fr["estimator"].iloc[0]) if len(fr) else "dr"
    fr["value"] = pd.to_numeric(fr["value"]).astype(float)  # None (no estimate): a gap
    lo = pd.to_numeric(fr["ci"].map(lambda c: (c or [None, None])[0])).astype(float)
    hi = pd.to_numeric(fr["ci"].map(lambda c: (c or [None, None])[1])).astype(float)
    ok = np.isfinite(fr["value"].to_numpy()) & np.isfinite(lo.to_numpy()) & np.isfinite(
        hi.to_numpy())
    if ok.any():
        v = fr["value"][ok]
        ax2.errorbar(depth[ok], v, yerr=[v - lo[ok], hi[ok] - v],
                     fmt="o-", color="#1f77b4", capsize=3, label=f"rules ({key})")
    else:  # no depth has an estimate (e.g. WIS with every weight 0)
        ax2.text(0.5, 0.5, f"no {key} estimate of the rules (n/a)", transform=ax2.transAxes,
                 ha="center", va="center", color="#555")
    val = card["evidence"]["value"]
    src = val["source"].get(key)
    if src and src.get("value") is not None:
        ax2.axhline(src["value"], color="#d62728", ls="--", lw=1.2, label=f"source ({key})")
    ax2.axhline(val["behavior"]["value"], color="#555", ls=":", lw=1.2,
                label="current practice (observed)")
    ax2.set_ylabel("estimated value (held out)")
    ax2.legend(fontsize=8, loc="best")
    for ax in (ax1, ax2):
        ax.set_xticks(list(depth), ticks, fontsize=8)
        ax.set_xlabel("depth (number of rules)")
    fig.tight_layout()
    return fig


def frontier_caption(card: Mapping[str, Any]) -> str:
    """Where the frontier table's intervals come from (rows of the card's rules: Evidence)."""
    rows = card["frontier"]
    if not rows or "card_rules" not in rows[0]:  # a card written before rows recorded it
        return "95% episode-bootstrap intervals."
    own = [r for r in rows if r["card_rules"]]
    others = sorted({int(r["bootstrap"]) for r in rows if not r["card_rules"]})
    depths = ", ".join(str(r["depth"]) for r in own)
    n_own = int(own[0]["bootstrap"]) if own else 0
    line = (f"Depth{'s' if len(own) > 1 else ''} {depths}, the card's rules: the Evidence "
            "estimate and interval "
            f"({n_own} bootstrap replicates)") if own else "95% episode-bootstrap intervals"
    if own and others:
        line += f"; the other depths: {', '.join(map(str, others))} replicates"
        if max(others) < n_own:
            line += " (the frontier's replicates are capped), so their intervals are rougher"
    return line + "."


def card_number(x: float) -> str:
    """A number of the card: 3 significant digits, but never an exponent from 1,000 to 1e9.

    A care panel's values (discounted cost avoidance over half a year) read ``1.57e+03
    [1.51e+03, 1.63e+03]`` with ``.3g``; they read ``1,573 [1,510, 1,630]`` here.
    """
    return value_text(x, ".3g")


def _ci(cell: Mapping[str, Any] | None) -> str:
    if cell and cell.get("reason") is not None and not cell.get("suppressed"):
        return "n/a"  # an estimate that cannot be computed (e.g. WIS with every weight 0)
    if not cell or cell.get("suppressed") or cell.get("value") is None:
        return ""
    ci = cell.get("ci") or [None, None]
    if ci[0] is None:
        return card_number(cell["value"])
    return f"{card_number(cell['value'])} [{card_number(ci[0])}, {card_number(ci[1])}]"


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
    exceptions = card["data"].get("mode") == "exceptions"
    if exceptions and card["data"].get("usual_care_model") in (None, "none"):
        rep.text("Exception rules: the source departs from current practice in every state the "
                 "rules distinguish, so each rule names a deviation and the complete action "
                 "(every component) to take; no row is left with current practice. Rules are "
                 f"{RULE_ORDER}")
    elif exceptions:
        model = {"cells": "the observed frequency of each action in each state cell",
                 "tree": "a tree of the logged actions"}.get(
                     str(card["data"].get("usual_care_model")), "an estimate of practice")
        rep.text("Exception rules: each names where to deviate from current practice and the "
                 "complete action (every component) to take there. Every other row stays "
                 f"with current practice: the clinicians' own distribution ({model}, stored "
                 f"with the rules). Rules are {RULE_ORDER}")
    else:
        rep.text(f"Each rule recommends one complete action (every component). Rules are "
                 f"{RULE_ORDER}")
    rep.text(P_MEANING_EXCEPTIONS if exceptions else P_MEANING_IMITATE, note=True)
    rows = [{"rule": r["rule"], "plan": "" if r.get("plan") is None else r["plan"],
             "if": r["if"], "then": r["then"],
             "p": float("nan") if r["p"] is None else r["p"],
             "share of rows": r.get("share"),
             "held-out agreement": ("n/a" if r.get("test_suppressed")
                                    else "" if r.get("test_agreement") is None
                                    else f"{r['test_agreement']:.2f}")}
            for r in card["rules"]]
    rep.table(pd.DataFrame(rows), caption="Rules in plain language", n_col=None,
              floatfmt="{:.2f}")
    hidden = [str(r["rule"]) for r in card["rules"] if r.get("test_suppressed")]
    if hidden:
        reason = next(r["test_suppressed"] for r in card["rules"] if r.get("test_suppressed"))
        rep.text(f"Held-out agreement of rule{'s' if len(hidden) > 1 else ''} "
                 f"{', '.join(hidden)}: n/a, {reason}.", note=True)
    rep.heading("The rules as text")
    for r in card["rules"]:
        rep.text(f"{r['rule']}. {r['text']}")
    from equicare.explain._rules import level_lists, plan_summary

    plans = plan_summary(card["rules"])
    if plans:
        rep.text("Same plan: " + "; ".join(plans) + ".", note=True)
    full = level_lists(card["rules"])
    if full:
        rep.heading("Complete lists of levels")
        for line in full:
            rep.text(line)

    rep.section("Evidence")
    rep.text(f"Measured on {card['data']['test_episodes']:,} held-out episodes "
             f"({card['data']['test_rows']:,} {card['data']['time_unit']}s); the rules were "
             f"fitted on the other {card['data']['fit_episodes']:,} episodes. Values are "
             f"off-policy estimates with 95% episode-bootstrap intervals "
             f"(propensities: {val.get('propensities', 'logged')}).")
    pols = fair["policies"]
    absent = "suppressed" if fair.get("suppressed") else "none"  # no audit: why
    table = []
    stored = val.get("usual_care") is not None
    deployed = val.get("rules_deployed") is not None
    for label, pol_key in (("current practice", "behavior"),
                           *([("current practice as stored with the rules", "usual_care")]
                             if stored else []),
                           (name, "source"),
                           ("rules" + (" (as predict outputs them: stored practice where no "
                                       "rule applies)" if deployed else ""), "rules"),
                           *([("rules as deployed (the clinicians decide where no rule "
                               "applies)", "rules_deployed")] if deployed else [])):
        row: dict[str, Any] = {"policy": label}
        if pol_key == "behavior":
            for k in val["rules"]:
                row[f"value ({k})"] = _ci(val["behavior"]) + " (observed)"
            row.update({"agreement": "", "total variation": "", "rarely taken %": ""})
        elif pol_key == "usual_care":  # the estimate the rules' usual-care rows follow
            for k, e in val["usual_care"].items():
                row[f"value ({k})"] = _ci(e)
            pct = sup.get("usual_care_pct")
            row.update({"agreement": "", "total variation": "",
                        "rarely taken %": "" if pct is None else f"{pct:.1f}"})
        elif pol_key == "rules_deployed":  # logged actions where the rules defer (ratio 1)
            for k, e in val["rules_deployed"].items():
                row[f"value ({k})"] = _ci(e)
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
        label = action_label(fair.get("action", absent))
        row[f"parity gap pp ({label})"] = _ci(p.get("parity_gap_pp"))
        row["parity ratio"] = _ci(p.get("parity_ratio"))
        wg = p.get("worst_group")
        row["worst group (value)"] = ("" if wg is None else
                                      f"{wg} ({card_number(p['worst_group_value'])})")
        table.append(row)
    rep.table(pd.DataFrame(table), caption=f"Evidence by policy (groups: "
              f"{fair.get('group', absent)})", n_col=None)
    if deployed:
        rep.text(DEPLOYED_NOTE, note=True)
    if fair.get("suppressed"):
        rep.text(f"Fairness audit suppressed: {fair['reason']}", note=True)
    elif not fair.get("available", True):
        rep.text(f"Fairness audit unavailable: {fair['reason']}.", note=True)
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
                          f"by {fair['group']}; cells under 11 episodes, or with under 11 "
                          "episodes with (or without) need, suppressed")

    rep.section("Size, fidelity and value")
    rep.figure(card_frontier_plot(card), "card_frontier",
               "Left: agreement of the most likely actions and 1 - total variation on held-out "
               "episodes, by number of rules (depth d1-d6). Right: estimated value of the rules "
               "with 95% intervals; the source policy (dashed) and current practice (dotted).")
    def bound(x: float | None) -> str:
        return "" if x is None else card_number(x)

    fr = pd.DataFrame([{"depth": r["depth"], "rules": r["n_rules"], "agreement": r["agreement"],
                        "total variation": r["tv"],
                        f"value ({r['estimator']})": "n/a" if r["value"] is None else
                        card_number(r["value"]),
                        "ci low": bound((r["ci"] or [None, None])[0]),
                        "ci high": bound((r["ci"] or [None, None])[1]),
                        "rarely taken %": r["support_pct"]} for r in card["frontier"]])
    rep.table(fr, caption=frontier_caption(card), n_col=None, floatfmt="{:.3g}")

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


#: A folder that is not a card is never replaced, even with ``overwrite``.
MSG_NOT_A_CARD = ("{path} is not empty and is not a policy card folder (it holds {extra}); "
                  "refusing to replace it even with --force. Choose a new or empty folder.")
#: The card folder may not hold the current directory or an input.
MSG_HOLDS = ("{path} is {what}; a card folder is replaced whole, so choose a new or empty "
             "folder for the card (e.g. --out {suggest}).")


def _card_entries() -> set[str]:
    return set(CARD_FILES.values())


def check_card_target(out: str | os.PathLike[str], *, overwrite: bool = False,
                      inputs: tuple[str | os.PathLike[str], ...] = ()) -> None:
    """Refuse a card folder that cannot be written (before any work).

    A card folder is replaced whole, so ``out`` must be new, empty or an earlier card: a
    non-empty folder holding only card files (``policy_card.json`` among them). Any other
    non-empty folder is refused even with ``overwrite``, and so is the current directory, a
    folder holding it, or a folder holding one of ``inputs``.

    Parameters
    ----------
    out : str or Path
        The card folder.
    overwrite : bool
        Replace an earlier card.
    inputs : tuple of str or Path
        Files and folders the run reads (panel, manifest, policy).

    Raises
    ------
    FileExistsError
        ``out`` is a file, a non-empty folder without ``overwrite``, or a folder that is not a
        card.
    InvalidParameterError
        ``out`` is or holds the current directory or an input.
    """
    from equicare.exceptions import InvalidParameterError

    dest = Path(out)
    full = Path(os.path.abspath(dest))
    suggest = "card"
    cwd = Path(os.path.abspath(os.getcwd()))
    if full == cwd or full in cwd.parents:
        raise InvalidParameterError(MSG_HOLDS.format(
            path=out, what="the current directory" if full == cwd
            else "a folder holding the current directory", suggest=suggest))
    for item in inputs:
        p = Path(os.path.abspath(item))
        if full == p or full in p.parents:
            raise InvalidParameterError(MSG_HOLDS.format(
                path=out, what=f"the input {item} or a folder holding it", suggest=suggest))
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a folder.")
    if dest.is_dir():
        names = {p.name for p in dest.iterdir()}
        if not names:
            return
        if not overwrite:
            raise FileExistsError(f"{dest} exists and is not empty; refusing to overwrite it "
                                  "(pass --force to replace it).")
        extra = sorted(names - _card_entries())
        if extra or CARD_FILES["json"] not in names:
            shown = ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else "") if extra else \
                f"no {CARD_FILES['json']}"
            raise FileExistsError(MSG_NOT_A_CARD.format(path=dest, extra=shown))


def write_card(card: Any, out: str | os.PathLike[str], *, overwrite: bool = False,
               provenance: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write a policy card folder atomically: HTML page, JSON, rules as text, model folder.

    Parameters
    ----------
    card : equicare.explain.PolicyCard
    out : str or Path
        Folder; a new or empty folder, or (with ``overwrite``) an earlier card folder, which
        is replaced whole by renames only after the new card is complete. A non-empty folder
        holding anything but card files, the current directory and the folders holding it are
        refused (see :func:`check_card_target`); nothing outside ``out`` is touched.
    overwrite : bool
    provenance : mapping, optional
        How the card was made (the command line's ``provenance`` block, docs/contracts.md):
        added to the card JSON and to the rules' model folder ``config.json``.

    Returns
    -------
    dict of str to Path
        ``{"html", "json", "rules", "model"}``.
    """
    from equicare.explain._rules import rules_text
    from equicare.policy._learned import model_provenance

    dest = Path(out)
    check_card_target(dest, overwrite=overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; use the usual permissions
        d = card.to_dict()
        doc = d if provenance is None else {**d, "provenance": dict(provenance)}
        atomic_write_text(tmp / CARD_FILES["json"],
                          json.dumps(doc, indent=2, default=float) + "\n")
        atomic_write_text(tmp / CARD_FILES["rules"], rules_text(card.rules) + "\n")
        with model_provenance(provenance):
            card.tree.save(tmp / CARD_FILES["model"])
        build_card_report(d).write(tmp / CARD_FILES["html"])
        if dest.is_dir():
            check_card_target(dest, overwrite=overwrite)  # it may have changed meanwhile
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
            os.rmdir(old)
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {k: dest / v for k, v in CARD_FILES.items()}
