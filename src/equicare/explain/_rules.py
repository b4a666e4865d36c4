"""Rules in plain language from a :class:`~equicare.policy.TreePolicy`.

Every leaf is one rule: the conditions on its root-to-leaf path, merged per column (the tightest
bounds of a numeric column; "is", "is one of ...", "is not", "is neither ... nor ..." or "is
none of ..." for the levels of a categorical column, as one-hot and set-valued splits leave
them, or of the previous action), and the leaf's most likely action
with its probability, e.g.::

    if risk > 0.62 and engagement <= 0.1 then modality=home_visit, provider=chw (p=0.81)

Exception rules (leaves that follow current practice) list only the deviations, then one last
rule for every other row::

    otherwise: as current practice

A set-valued split names many levels ("state is one of s3, s8, s12, ..."): the text lists the
first :data:`MAX_LEVELS_SHOWN` and "and K more", the rule's conditions all of them, and
:func:`rules_text` and the policy card add the complete lists (:func:`level_lists`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.policy._tree import TreePolicy, feature_label, known_levels

__all__ = ["tree_rules", "action_text", "rules_text", "rule_count", "plan_summary",
           "level_lists", "USUAL_TEXT", "MAX_LEVELS_SHOWN"]

#: Text of the rule that covers every row no exception names.
USUAL_TEXT = "otherwise: as current practice"


def _num(x: float) -> str:
    """A threshold as the tree tests it: a value recorded at the printed number goes as it says.

    Thresholds are half-steps of a coarse grid (``0.345``, ``-1.205``), stored as
    ``float32(0.425)`` where that is above the half-step
    (:func:`equicare.explain._features.half_steps`): those print as the shortest decimal of their
    float32 value ("0.425"), the others with up to 12 significant digits. A 3-digit rounding
    ("-1.21" for -1.205) would put the rows between the printed and the real threshold on the
    wrong side of the text.
    """
    x32 = np.float32(x)
    if np.isfinite(x32) and float(x32) == float(x):
        return str(np.format_float_positional(x32, unique=True, trim="-"))
    return f"{x:.12g}"


def action_text(space: Any, flat: int) -> str:
    """``"modality=home_visit, provider=chw"`` for a flat action."""
    codes = space.from_flat(np.array([flat]))[0]
    return ", ".join(f"{c.name}={c.levels[int(k)]}"
                     for c, k in zip(space.components, codes, strict=True))


#: Most levels a rule's text lists in full; a longer list shows its first
#: ``MAX_LEVELS_SHOWN - 2`` and "and K more" (the rule's conditions, the card and ``rules.txt``
#: list every level: :func:`level_lists`).
MAX_LEVELS_SHOWN = 12


def _listed(levels: list[str]) -> str:
    """``"a, b, c"``, or the first few and ``"and K more"`` (:data:`MAX_LEVELS_SHOWN`)."""
    if len(levels) <= MAX_LEVELS_SHOWN:
        return ", ".join(levels)
    head = MAX_LEVELS_SHOWN - 2
    return f"{', '.join(levels[:head])} and {len(levels) - head} more"


def _none_of(levels: list[str]) -> str:
    """The text of a path that excludes ``levels``: "is not a", "is neither a nor b", ...

    "is none of a, b, c" for three or more: "is not a or b" would read as "(is not a) or (is b)"
    to a committee applying the rule by hand.
    """
    if len(levels) == 1:
        return f"is not {levels[0]}"
    if len(levels) == 2:
        return f"is neither {levels[0]} nor {levels[1]}"
    return f"is none of {_listed(levels)}"


def _one_of(levels: list[str]) -> str:
    """The text of a path that keeps only ``levels``: "is a", "is one of a, b, c"."""
    if len(levels) == 1:
        return f"is {levels[0]}"
    return f"is one of {_listed(levels)}"


def _paths(tree: TreePolicy) -> dict[int, list[tuple[int, bool, float]]]:
    """Conditions ``(feature, goes_right, threshold)`` on the path to each leaf."""
    out: dict[int, list[tuple[int, bool, float]]] = {}
    stack: list[tuple[int, list[tuple[int, bool, float]]]] = [(0, [])]
    while stack:  # nodes of a shallow tree, not rows
        node, path = stack.pop()
        left, right = int(tree.children_left[node]), int(tree.children_right[node])
        if left < 0:
            out[node] = path
            continue
        f, t = int(tree.feature[node]), float(tree.threshold[node])
        stack.append((right, [*path, (f, True, t)]))
        stack.append((left, [*path, (f, False, t)]))
    return out


def _all_levels(tree: TreePolicy, kind: str, name: str) -> list[str]:
    """Every level of a categorical state (from the tree's features) or action component."""
    if kind == "prev_action":
        return list(tree.action_space.component(name).levels)
    return list(dict.fromkeys(known_levels(tree.features, name)))


def _in_order(levels: list[str], known: list[str]) -> list[str]:
    """``levels`` without repeats, in the column's order (``known``; others last, sorted)."""
    pos = {lv: i for i, lv in enumerate(known)}
    return sorted(set(levels), key=lambda v: (pos.get(v, len(pos)), v))


#: Feature kinds that read 0 at an episode's first row (it has no previous row).
_ZERO_AT_FIRST = ("prev_action", "prev_reward", "recent_action")


def first_rows_reach(tree: TreePolicy, path: list[tuple[int, bool, float]]) -> bool:
    """Whether an episode's first row can follow ``path`` (as far as its history tests say).

    A first row has no previous row: its previous-action indicators, action counts and previous
    reward are 0 and its previous states are the current ones (see
    :func:`equicare.policy.tree_features`). A test on the former that 0 fails keeps every first
    row out of the leaf; otherwise some may reach it.

    Parameters
    ----------
    tree : TreePolicy
    path : list of (feature, goes_right, threshold)

    Returns
    -------
    bool
    """
    for f, right, t in path:
        if tree.features[f]["kind"] in _ZERO_AT_FIRST and (float(np.float32(0.0)) > t) != right:
            return False
    return True


def _conditions(tree: TreePolicy, path: list[tuple[int, bool, float]], time_unit: str
                ) -> list[dict[str, Any]]:
    """Merge a path's tests into readable conditions, one per column.

    When an episode's first row can reach the leaf, every condition on the previous row says
    what it means there, so the text is true for every row the rule routes: "last week's
    modality is not phone (or first week)" (no previous action and no previous reward: the
    condition holds), "risk last week (or this week, in a first week) <= 0.6" (a first row reads
    its current state). Counts ("no modality=phone in the last 3 weeks") need no note.
    """
    first = first_rows_reach(tree, path)
    or_first = f" (or first {time_unit})" if first else ""
    bounds: dict[int, list[float]] = {}
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, Any]] = []
    for f, right, t in path:
        rec = tree.features[f]
        kind = rec["kind"]
        if kind in ("categorical", "categorical_set", "prev_action"):
            # a one-hot test or a set test ("is one of"): the path keeps the levels of every
            # set it goes into ("is") and drops those of every set it goes around ("not")
            group = "prev_action" if kind == "prev_action" else "categorical"
            key = (group, str(rec.get("name", rec.get("component"))))
            if key not in groups:
                groups[key] = {"is": None, "not": []}
                order.append(("group", key))
            levels = ([str(v) for v in rec["levels"]] if kind == "categorical_set"
                      else [str(rec["level"])])
            g = groups[key]
            if right:
                g["is"] = levels if g["is"] is None else [v for v in g["is"] if v in levels]
            else:
                g["not"] += levels
            continue
        if f not in bounds:
            bounds[f] = [-math.inf, math.inf]
            order.append(("num", f))
        lo, hi = bounds[f]
        bounds[f] = [max(lo, t), hi] if right else [lo, min(hi, t)]
    out: list[dict[str, Any]] = []
    for typ, key in order:
        if typ == "group":
            kind, name = key
            g = groups[key]
            subject = name if kind == "categorical" else f"last {time_unit}'s {name}"
            known = _all_levels(tree, kind, name)
            if g["is"] is not None:
                kept = _in_order([v for v in g["is"] if v not in set(g["not"])], known)
                text = f"{subject} {_one_of(kept)}"
                out.append({"column": subject, "op": "is", "levels": kept, "text": text})
            else:
                levels = _in_order(g["not"], known)
                rest = [lv for lv in known if lv not in levels]
                note = or_first if kind == "prev_action" else ""
                if len(rest) == 1:  # "is not a" of a two-level column reads "is b"
                    text = f"{subject} is {rest[0]}{note}"
                    out.append({"column": subject, "op": "is", "levels": rest, "text": text})
                    continue
                text = f"{subject} {_none_of(levels)}{note}"
                out.append({"column": subject, "op": "is not", "levels": levels, "text": text})
            continue
        rec = tree.features[key]
        lo, hi = bounds[key]
        if rec["kind"] == "recent_action":
            what = f"{rec['component']}={rec['level']} in the last {rec['rows']} {time_unit}s"
            lo_n = None if lo == -math.inf else math.floor(lo) + 1
            hi_n = None if hi == math.inf else math.floor(hi)
            if hi_n == 0:
                text = f"no {what}"
            elif lo_n is not None and hi_n is not None:
                text = f"{lo_n} to {hi_n} times {what}"
            elif lo_n is not None:
                text = f"at least {lo_n} times {what}"
            else:
                text = f"at most {hi_n} times {what}"
            out.append({"column": what, "op": "count", "low": lo_n, "high": hi_n, "text": text})
            continue
        name = feature_label(rec, time_unit)
        shown = (f"{name} (or this {time_unit}, in a first {time_unit})"
                 if first and rec["kind"] == "prev_state" else name)
        note = or_first if rec["kind"] == "prev_reward" else ""
        if lo > -math.inf and hi < math.inf:
            text = f"{_num(lo)} < {shown} <= {_num(hi)}{note}"
        elif lo > -math.inf:
            text = f"{shown} > {_num(lo)}{note}"
        else:
            text = f"{shown} <= {_num(hi)}{note}"
        out.append({"column": name, "op": "range",
                    "low": None if lo == -math.inf else lo,
                    "high": None if hi == math.inf else hi, "text": text})
    return out


def rule_count(tree: TreePolicy) -> int:
    """Rules a reader sees: one per leaf, the usual-care leaves counted once ("otherwise")."""
    leaves = tree.leaves
    if tree.usual is None:
        return int(leaves.size)
    n_usual = int(tree.usual[leaves].sum())
    return int(leaves.size - n_usual + (1 if n_usual else 0))


def tree_rules(tree: TreePolicy, *, leaves: NDArray[np.int64] | None = None,
               weights: NDArray[np.float64] | None = None, time_unit: str = "step",
               top: int = 3, min_p: float = 0.05) -> list[dict[str, Any]]:
    """One readable rule per leaf, grouped by the plan it recommends, most used first.

    Parameters
    ----------
    tree : TreePolicy
    leaves : ndarray of shape (n,), optional
        Leaf of each row of some data (e.g. the fitting rows) to report each rule's share.
    weights : ndarray of shape (n,), optional
        Row weights of the shares.
    time_unit : str
        Word for one row of an episode ("week").
    top : int
        Alternatives listed per rule (actions with probability >= ``min_p``).
    min_p : float

    Returns
    -------
    list of dict
        ``{"rule", "leaf", "conditions", "if", "then", "action", "p", "alternatives", "share",
        "text", "usual", "plan", "plan_share"}``: rules recommending the same action are
        listed together (``plan`` numbers the distinct recommendations, most used first;
        ``plan_share`` is their total share). With usual-care leaves, the last rule is
        ``"otherwise: as current practice"`` (``leaf`` None, ``leaves`` the usual-care leaves,
        ``action``, ``p`` and ``plan`` None); the others are the exceptions.
    """
    space = tree.action_space
    share: Mapping[int, float] = {}
    if leaves is not None:
        w = np.ones(leaves.shape[0]) if weights is None else np.asarray(weights, float)
        tot = np.bincount(leaves, weights=w, minlength=tree.n_nodes)
        share = {int(k): float(v) for k, v in enumerate(tot / max(tot.sum(), 1e-300))}
    rules: list[dict[str, Any]] = []
    usual = tree.usual if tree.usual is not None else np.zeros(tree.n_nodes, dtype=bool)
    usual_leaves: list[int] = []
    for leaf, path in _paths(tree).items():
        if usual[leaf]:
            usual_leaves.append(int(leaf))
            continue
        conds = _conditions(tree, path, time_unit)
        p = tree.probs[leaf]
        order = np.argsort(-p, kind="stable")
        best = int(order[0])
        alts = [{"then": action_text(space, int(a)), "action": int(a), "p": float(p[a])}
                for a in order[1:1 + top] if p[a] >= min_p]
        cond_text = " and ".join(c["text"] for c in conds) if conds else "always"
        then = action_text(space, best)
        text = (f"if {cond_text} then {then} (p={p[best]:.2f})" if conds
                else f"always {then} (p={p[best]:.2f})")
        rules.append({"leaf": int(leaf), "conditions": conds, "if": cond_text, "then": then,
                      "action": best, "p": float(p[best]), "alternatives": alts,
                      "share": share.get(int(leaf)), "text": text, "usual": False})
    rules = _by_plan(rules)
    if usual_leaves:
        tot_share = (sum(share.get(k, 0.0) for k in usual_leaves) if share else None)
        rules.append({"leaf": None, "leaves": sorted(usual_leaves), "conditions": [],
                      "if": "otherwise" if rules else "always",
                      "then": "as current practice", "action": None, "p": None,
                      "alternatives": [], "share": tot_share,
                      "text": USUAL_TEXT if rules else "always: as current practice",
                      "usual": True, "plan": None, "plan_share": None})
    for i, r in enumerate(rules, 1):
        r["rule"] = i
    return [{"rule": r.pop("rule"), **r} for r in rules]


def _by_plan(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules grouped by the action they recommend (their *plan*), then most used first.

    A tree often reaches one plan by several paths (CART splits to sharpen a leaf's
    distribution, not to change its recommendation; siblings with one recommendation are merged
    when the tree is fitted, cousins are not). Listing such rules side by side answers a
    committee's question "when do we do X?". Plans come in the order of their total share, the
    rules of a plan in the order of their own (the leaf order when no share is known). Each rule
    gets ``plan`` (1 for the most used plan) and ``plan_share``.
    """
    total: dict[int, float] = {}
    first: dict[int, int] = {}
    for i, r in enumerate(rules):
        total[r["action"]] = total.get(r["action"], 0.0) + float(r["share"] or 0.0)
        first.setdefault(r["action"], i)
    plans = sorted(total, key=lambda a: (-total[a], first[a]))
    rank = {a: k for k, a in enumerate(plans, 1)}
    out = sorted(enumerate(rules), key=lambda ir: (rank[ir[1]["action"]],
                                                   -float(ir[1]["share"] or 0.0), ir[0]))
    known = any(r["share"] is not None for r in rules)
    return [{**r, "plan": rank[r["action"]],
             "plan_share": total[r["action"]] if known else None} for _, r in out]


def _rule_span(numbers: list[int]) -> str:
    if len(numbers) == 2:
        return f"rules {numbers[0]} and {numbers[1]}"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"rules {numbers[0]}-{numbers[-1]}"
    return "rules " + ", ".join(map(str, numbers))


def plan_summary(rules: list[dict[str, Any]]) -> list[str]:
    """One line per plan that several rules recommend; empty when every rule names its own.

    E.g. ``"rules 1-3 recommend modality=home_visit, provider=rn (68% of rows)"``.
    """
    by_plan: dict[int, list[dict[str, Any]]] = {}
    for r in rules:
        if not r.get("usual") and r.get("plan") is not None:
            by_plan.setdefault(int(r["plan"]), []).append(r)
    lines = []
    for _, rs in sorted(by_plan.items()):
        if len(rs) < 2:
            continue
        share = rs[0].get("plan_share")
        tail = "" if share is None else f" ({share_text(share)} of rows)"
        lines.append(f"{_rule_span([int(r['rule']) for r in rs])} recommend {rs[0]['then']}"
                     f"{tail}")
    return lines


def level_lists(rules: list[dict[str, Any]]) -> list[str]:
    """Every level of the conditions whose text lists only the first few ("and K more").

    One line per such condition, e.g. ``"rule 2: state is one of these 35 levels: s3, s8,
    ..."`` with all 35, so a reader of the card or of ``rules.txt`` sees the complete set; empty
    when every text lists its levels in full.
    """
    lines = []
    for r in rules:
        for c in r.get("conditions", []):
            levels = c.get("levels") or []
            if c.get("op") not in ("is", "is not") or len(levels) <= MAX_LEVELS_SHOWN:
                continue
            verb = "is one of" if c["op"] == "is" else "is none of"
            lines.append(f"rule {r['rule']}: {c['column']} {verb} these {len(levels)} levels: "
                         f"{', '.join(str(v) for v in levels)}")
    return lines


def share_text(share: float) -> str:
    """A rule's share of rows in whole percent; ``<1%`` for a share that rounds to 0 but is not.

    A rule over 0.4% of the rows (300 of 69,124) read "0% of rows", as if it matched none.
    """
    return "<1%" if 0 < share < 0.005 else f"{100 * share:.0f}%"


def rules_text(rules: list[dict[str, Any]]) -> str:
    """The rules as numbered plain-text lines, which share a plan and the complete level lists.

    Rules come grouped by plan; the level lists are those the rules' text shortens
    (:func:`level_lists`).
    """
    lines = []
    for r in rules:
        share = "" if r.get("share") is None else f"  [{share_text(r['share'])} of rows]"
        lines.append(f"{r['rule']}. {r['text']}{share}")
    plans = plan_summary(rules)
    if plans:
        lines += ["", "Same plan: " + "; ".join(plans) + "."]
    full = level_lists(rules)
    if full:
        lines += ["", "Complete lists of levels:", *full]
    return "\n".join(lines)
