"""Rules in plain language: the text is true for every row a rule routes."""

from __future__ import annotations

import numpy as np

from equicare.explain import tree_rules
from equicare.policy import TreePolicy
from tests.explain import tree_sim


def _history_tree(ds):
    """Splits on the previous action, the previous x1 and the previous reward."""
    feats = [{"kind": "state", "name": "x1"}, {"kind": "prev_state", "name": "x1"},
             {"kind": "prev_action", "component": "action", "level": "a0"},
             {"kind": "prev_reward"}]
    #        0: last action a0?  1: x1 last <= 0.5?  3: last reward <= 0.5?
    left = np.array([1, 3, -1, 5, -1, -1, -1])
    right = np.array([2, 4, -1, 6, -1, -1, -1])
    feature = np.array([2, 1, -2, 3, -2, -2, -2])
    threshold = np.array([0.5, 0.5, -2, 0.5, -2, -2, -2], dtype=float)
    probs = np.full((7, ds.n_actions), 1.0 / ds.n_actions)
    for leaf, a in ((2, 0), (4, 1), (5, 2), (6, 0)):
        probs[leaf] = np.eye(ds.n_actions)[a]
    return TreePolicy(children_left=left, children_right=right, feature=feature,
                      threshold=threshold, probs=probs, features=feats,
                      action_space=ds.action_space)


def test_rules_on_the_previous_row_say_what_they_mean_at_a_first_row():
    """A first row has no previous row: a rule it can follow says so on every condition on the
    previous row ("or first t"); a rule no first row follows has no such note."""
    ds = tree_sim.generate(200, seed=5)
    tree = _history_tree(ds)
    leaves = tree.apply(ds)
    first = ds.step == 0
    by_leaf = {r["leaf"]: r for r in tree_rules(tree, time_unit="t")}
    reached = set()
    for leaf, r in by_leaf.items():
        n_first = int((first & (leaves == leaf)).sum())
        history = [c["text"] for c in r["conditions"] if "last t" in c["text"]]
        assert history, r["text"]
        if n_first:
            reached.add(leaf)
            assert all("first t" in h for h in history), r["text"]
        else:
            assert "first t" not in r["text"], r["text"]
    assert reached == {4, 5}  # no previous a0 and (x1 last > 0.5, or reward last <= 0.5)
    assert by_leaf[4]["if"] == ("last t's action is not a0 (or first t) and "
                                "x1 last t (or this t, in a first t) > 0.5")
    assert by_leaf[6]["if"] == ("last t's action is not a0 and x1 last t <= 0.5 and "
                                "last t's reward > 0.5")
    assert by_leaf[2]["if"] == "last t's action is a0"


def test_numeric_thresholds_are_printed_exactly():
    """A rule's text names the threshold the tree tests, not a 3-digit rounding of it: a
    half-step such as 1.285 printed as "1.28" would send a row with x1 = 1.283 to the wrong
    rule when the committee applies the text by hand."""
    ds = tree_sim.generate(50, seed=1)
    feats = [{"kind": "state", "name": "x1"}]
    for t, text in ((1.285, "1.285"), (0.1085, "0.1085"), (-1.205, "-1.205"), (0.345, "0.345"),
                    (123.45, "123.45")):
        probs = np.vstack([np.full(ds.n_actions, 1 / ds.n_actions), np.eye(ds.n_actions)[:2]])
        tree = TreePolicy(children_left=np.array([1, -1, -1]),
                          children_right=np.array([2, -1, -1]), feature=np.array([0, -2, -2]),
                          threshold=np.array([t, -2.0, -2.0]), probs=probs, features=feats,
                          action_space=ds.action_space)
        by_leaf = {r["leaf"]: r for r in tree_rules(tree)}
        assert by_leaf[1]["if"] == f"x1 <= {text}"
        assert by_leaf[2]["if"] == f"x1 > {text}"
        assert float(text) == t


def test_excluded_levels_read_unambiguously():
    """A path that excludes two or three levels must not read "state is not s1 or s2" (which a
    reader takes as "(not s1) or s2"): "is neither s1 nor s2", "is none of s1, s2, s3"."""
    import pandas as pd

    from equicare.data import from_frame

    levels = [f"s{i}" for i in range(5)]
    df = pd.DataFrame({"id": np.repeat(np.arange(20), 5), "t": np.tile(np.arange(5), 20),
                       "state": np.tile(levels, 20), "action": 0, "r": 0.0})
    manifest = {"dataset": {"episode": "id", "time": "t", "categorical_states": ["state"]},
                "actions": {"action": {"levels": ["a0", "a1"]}},
                "reward": {"r": {"column": "r", "weight": 1.0}}}
    ds = from_frame(df, manifest, emit_warnings=False)
    feats = [{"kind": "categorical", "name": "state", "level": lv} for lv in levels]
    # 0: s0? -> 2 ; 1: s1? -> 4 ; 3: s2? -> 6 ; 5 (none of s0, s1, s2) ; leaves 2, 4, 5, 6
    left = np.array([1, 3, -1, 5, -1, -1, -1])
    right = np.array([2, 4, -1, 6, -1, -1, -1])
    feature = np.array([0, 1, -2, 2, -2, -2, -2])
    threshold = np.array([0.5, 0.5, -2, 0.5, -2, -2, -2], dtype=float)
    probs = np.tile(np.eye(2)[[0]], (7, 1))
    probs[[4, 6]] = np.eye(2)[1]
    tree = TreePolicy(children_left=left, children_right=right, feature=feature,
                      threshold=threshold, probs=probs, features=feats,
                      action_space=ds.action_space)
    by_leaf = {r["leaf"]: r for r in tree_rules(tree)}
    assert by_leaf[2]["if"] == "state is s0"
    assert by_leaf[4]["if"] == "state is s1"
    assert by_leaf[6]["if"] == "state is s2"
    assert by_leaf[5]["if"] == "state is none of s0, s1, s2"
    assert by_leaf[5]["conditions"][0]["op"] == "is not"
    assert by_leaf[5]["conditions"][0]["levels"] == ["s0", "s1", "s2"]
    left2, right2 = np.array([1, 3, -1, -1, -1]), np.array([2, 4, -1, -1, -1])
    two = TreePolicy(children_left=left2, children_right=right2,
                     feature=np.array([0, 1, -2, -2, -2]),
                     threshold=np.array([0.5, 0.5, -2, -2, -2], dtype=float), probs=probs[:5],
                     features=feats, action_space=ds.action_space)
    by_leaf = {r["leaf"]: r for r in tree_rules(two)}
    assert by_leaf[3]["if"] == "state is neither s0 nor s1"


def test_rules_naming_the_same_plan_are_listed_together():
    """Cousin leaves (not siblings, so not merged when fitted) that recommend the same action
    are listed side by side, the most used plan first, and the text says which rules share a
    plan; numbering, shares and each rule's conditions are those of its own leaf."""
    from equicare.explain import rules_text
    from equicare.explain._rules import plan_summary

    ds = tree_sim.generate(300, seed=3)
    tree = _history_tree(ds)  # leaves 2 and 6 recommend a0; 4 a1; 5 a2
    leaves = tree.apply(ds)
    share = np.bincount(leaves, minlength=tree.n_nodes) / leaves.size
    # shares 0.27 (a0), 0.36 (a1), 0.31 (a2), 0.06 (a0): by share alone the a0 rules are
    # 3rd and 4th; by plan a1 (0.36), a0 (0.33), a2 (0.31)
    rules = tree_rules(tree, leaves=leaves, time_unit="t")
    assert [r["rule"] for r in rules] == [1, 2, 3, 4]
    assert [r["leaf"] for r in rules] == [4, 2, 6, 5]
    assert [r["plan"] for r in rules] == [1, 2, 2, 3]
    a0_share = share[2] + share[6]
    assert rules[1]["plan_share"] == rules[2]["plan_share"] == a0_share
    bare = tree_rules(tree, time_unit="t")
    by_leaf = {r["leaf"]: r for r in bare}
    for r in rules:
        assert r["share"] == share[r["leaf"]]
        assert r["if"] == by_leaf[r["leaf"]]["if"] and r["text"] == by_leaf[r["leaf"]]["text"]
    assert plan_summary(rules) == [f"rules 2 and 3 recommend action=a0 "
                                   f"({100 * a0_share:.0f}% of rows)"]
    assert rules_text(rules).splitlines()[-1] == f"Same plan: {plan_summary(rules)[0]}."
    # without shares the leaf order stands within and across plans
    assert [r["leaf"] for r in bare] == [5, 6, 2, 4]  # the tree's leaf order is 5, 6, 2, 4
    assert all(r["plan_share"] is None for r in bare)
    assert plan_summary(bare) == ["rules 2 and 3 recommend action=a0"]
    # every plan its own rule: no summary line
    assert plan_summary([r for r in rules if r["leaf"] != 6]) == []


def test_set_splits_read_one_of_and_list_every_level():
    """A set-valued split reads "state is one of ..." on its right branch and "state is none of
    ..." on its left, merged with the one-hot tests below it; the text lists at most
    MAX_LEVELS_SHOWN levels ("and K more"), the conditions, rules.txt and the card every one,
    in the column's order (s2 before s10)."""
    import pandas as pd

    from equicare.data import from_frame
    from equicare.explain import rules_text
    from equicare.explain._rules import MAX_LEVELS_SHOWN, level_lists

    levels = [f"s{i}" for i in range(20)]
    df = pd.DataFrame({"id": np.repeat(np.arange(40), 5), "t": np.tile(np.arange(5), 40),
                       "state": np.tile(levels, 10), "action": 0, "r": 0.0})
    manifest = {"dataset": {"episode": "id", "time": "t", "categorical_states": ["state"]},
                "actions": {"action": {"levels": ["a0", "a1", "a2"]}},
                "reward": {"r": {"column": "r", "weight": 1.0}}}
    ds = from_frame(df, manifest, emit_warnings=False)
    big, small = levels[:15], ["s2", "s10", "s12"]
    feats = [*({"kind": "categorical", "name": "state", "level": lv} for lv in levels),
             {"kind": "categorical_set", "name": "state", "levels": big},
             {"kind": "categorical_set", "name": "state", "levels": small}]
    # 0: in big? -> 2 ; 1 (not big): leaf ; 2: s2? -> 4 ; 3 (big, not s2): in small? -> 6
    left = np.array([1, -1, 3, 5, -1, -1, -1])
    right = np.array([2, -1, 4, 6, -1, -1, -1])
    feature = np.array([20, -2, 2, 21, -2, -2, -2])
    threshold = np.array([0.5, -2, 0.5, 0.5, -2, -2, -2], dtype=float)
    probs = np.tile(np.eye(3)[[0]], (7, 1))
    probs[[4, 6]] = np.eye(3)[1]
    probs[5] = np.eye(3)[2]
    tree = TreePolicy(children_left=left, children_right=right, feature=feature,
                      threshold=threshold, probs=probs, features=feats,
                      action_space=ds.action_space)
    rules = tree_rules(tree, leaves=tree.apply(ds))
    by_leaf = {r["leaf"]: r for r in rules}
    assert MAX_LEVELS_SHOWN == 12
    assert by_leaf[1]["if"] == "state is none of s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 and 5 more"
    assert by_leaf[1]["conditions"][0]["op"] == "is not"
    assert by_leaf[1]["conditions"][0]["levels"] == big
    assert by_leaf[4]["if"] == "state is s2"
    assert by_leaf[6]["if"] == "state is one of s10, s12"
    rest = [lv for lv in big if lv not in small]  # 12 levels: listed in full
    assert by_leaf[5]["if"] == f"state is one of {', '.join(rest)}"
    assert by_leaf[5]["conditions"][0] == {"column": "state", "op": "is", "levels": rest,
                                           "text": by_leaf[5]["if"]}
    # every rule's conditions route the rows the tree routes
    lab = np.asarray(ds.categorical_levels[0])[ds.categorical[:, 0]]
    leaf = tree.apply(ds)
    for r in rules:
        c = r["conditions"][0]
        inside = np.isin(lab, c["levels"])
        np.testing.assert_array_equal(leaf == r["leaf"], inside if c["op"] == "is" else ~inside)
    full = level_lists(rules)
    rule_1 = next(r["rule"] for r in rules if r["leaf"] == 1)
    assert full == [f"rule {rule_1}: state is none of these 15 levels: {', '.join(big)}"]
    assert rules_text(rules).splitlines()[-2:] == ["Complete lists of levels:", full[0]]


def test_a_rule_over_a_few_rows_does_not_read_zero_percent():
    """300 of 69,124 rows (0.4%) printed "[0% of rows]"; now "<1%", while 0 stays 0%."""
    from equicare.explain import rules_text

    rules = [{"rule": 1, "text": "if risk > 3 then channel=phone", "share": 300 / 69124},
             {"rule": 2, "text": "if risk > 9 then channel=mail", "share": 0.0},
             {"rule": 3, "text": "otherwise: as current practice", "share": 0.996}]
    lines = rules_text(rules).splitlines()
    assert lines[0].endswith("[<1% of rows]")
    assert lines[1].endswith("[0% of rows]") and lines[2].endswith("[100% of rows]")
