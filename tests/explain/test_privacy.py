"""Privacy of distilled rules: grid thresholds, rules and usual-care cells of >= 11 episodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from equicare.explain import ExplainConfig, explain_policy
from equicare.explain._features import grid_steps, snap_to_grid
from equicare.policy import tree_features
from tests.explain import tree_sim
from tests.explain.test_evidence import _TablePolicy

CFG = ExplainConfig(bootstrap=0, frontier_bootstrap=0, depths=(2, 4), depth=4)


def _pins_rows(t: float, values: np.ndarray) -> bool:
    """Whether ``t`` is a row's value or the midpoint of the two rows' values around it (the
    float32 midpoint scikit-learn takes, or the float64 one)."""
    return any(_pins(t, np.unique(v)) for v in (values.astype(np.float64),
                                                  values.astype(np.float32).astype(np.float64)))


def _pins(t: float, u: np.ndarray) -> bool:
    i = int(np.searchsorted(u, t))
    if i < u.size and u[i] == t:
        return True
    if i == 0 or i == u.size:
        return False
    lo, hi = u[i - 1], u[i]
    return abs(t - (lo + hi) / 2) <= 1e-12 * max(abs(t), 1.0)


@pytest.fixture(scope="module")
def exception_card(tmp_path_factory):
    train, test = tree_sim.generate(400, seed=10), tree_sim.generate(300, seed=11)
    card = explain_policy(train, tree_sim.NoisyExpert(), CFG, test=test, random_state=0)
    folder = tmp_path_factory.mktemp("rules") / "model"
    card.tree.save(folder)
    return card, train, folder, test


def test_no_saved_threshold_pins_a_row(exception_card):
    """Every numeric threshold of the card JSON, the rules' tensors and the usual-care tree's
    tensors is a half-step of a coarse grid, not a row's value nor the midpoint of two rows'
    (scikit-learn's own thresholds are)."""
    card, train, folder, _ = exception_card
    cols = {n: train.states[:, j] for j, n in enumerate(train.state_names)}
    checked = 0
    for r in card.to_dict()["rules"]:
        for c in r["conditions"]:
            for side in ("low", "high"):
                if c.get("op") == "range" and c.get(side) is not None:
                    assert not _pins_rows(c[side], cols[c["column"]]), (r["text"], c[side])
                    checked += 1
    tensors = load_file(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    assert "usual.threshold" in tensors  # the behaviour tree of the usual-care rows
    for prefix, feats in (("tree", card.tree.features),
                          ("usual", card.tree.usual_policy.features)):
        thr, feat = tensors[f"{prefix}.threshold"], tensors[f"{prefix}.feature"]
        inner = tensors[f"{prefix}.children_left"] >= 0
        for t, f in zip(thr[inner], feat[inner], strict=True):
            if feats[int(f)]["kind"] == "state":
                assert not _pins_rows(float(t), cols[feats[int(f)]["name"]]), (prefix, t)
                checked += 1
    assert checked >= 5 and config["kind"] == "tree"


def test_rules_route_raw_rows_as_their_rounded_values(exception_card):
    """Fitted on the rounded features, the rules send every raw row where its rounded value
    goes: predictions on raw data are those of the fit."""
    card, train, _, _ = exception_card
    for tree in (card.tree, card.tree.usual_policy):
        x = tree_features(train, tree.features)
        xs = snap_to_grid(x, grid_steps(x, tree.features))
        assert not np.array_equal(x, xs)
        np.testing.assert_array_equal(tree.apply_features(x), tree.apply_features(xs))


def test_grid_steps_are_a_hundredth_of_the_spread():
    train = tree_sim.generate(200, seed=3)
    feats = [{"kind": "state", "name": "x1"}, {"kind": "categorical", "name": "site",
                                                "level": "a"}]
    x = tree_features(train, feats)
    x[:, 0] *= 37.0  # IQR about 18.5: steps of 1
    steps = grid_steps(x, feats)
    assert steps[0] == 1.0 and np.isnan(steps[1])
    xs = snap_to_grid(x, steps)
    np.testing.assert_array_equal(xs[:, 0], np.ceil(x[:, 0] - 0.5))
    np.testing.assert_array_equal(xs[:, 1], x[:, 1])


# ------------------------------------------------------------------ rules of >= 11 episodes
def _rare_panel():
    """tree_sim's panel where 3 episodes (about 15 rows) have x3 = 5, site c and action a2."""
    from equicare.data import from_frame
    from equicare.data._io import to_frame

    frame = to_frame(tree_sim.generate(400, seed=21))
    rare = frame["id"].isin([0, 1, 2])
    frame.loc[rare, "x3"] = 5.0
    frame.loc[rare, "site"] = "c"
    frame.loc[rare, "action"] = "a2"
    return from_frame(frame, tree_sim.MANIFEST, emit_warnings=False), rare.to_numpy()


class _RareExpert:
    """a2 where x3 > 2 (the 3 rare episodes), else the optimal tree's action."""

    n_actions = 3
    window = 1

    def action_probs(self, ds):
        best = np.where(ds.states[:, 2] > 2, 2, (tree_sim.optimal_of(ds) + 1) % 3)
        return np.eye(3)[best]


def _episodes_per_leaf(tree, ds):
    leaf = tree.apply(ds)
    return {int(k): np.unique(ds.episode_index[leaf == k]).size for k in tree.leaves}


@pytest.mark.parametrize("mode", ["imitate", "exceptions"])
def test_every_rule_covers_11_episodes(mode):
    """The source treats 3 episodes apart (a leaf of 15 rows passes min_samples_leaf=5): no rule
    may describe them, in the rules nor in the usual-care tree stored with them."""
    from equicare.explain import DistillConfig, Distiller

    ds, _ = _rare_panel()
    d = Distiller(DistillConfig(max_depth=4, min_samples_leaf=5, mode=mode,
                                usual_care="tree")).fit(ds, _RareExpert(), random_state=0)
    trees = [d.policy_] + ([d.usual_care_] if mode == "exceptions" else [])
    for tree in trees:
        per_leaf = _episodes_per_leaf(tree, ds)
        assert min(per_leaf.values()) >= 11, per_leaf
    # the other rules are untouched: the tree still reads x1 at 0.6
    assert any(f == {"kind": "state", "name": "x1"} for f in
               (d.policy_.features[j] for j in d.policy_.used_features))


def test_usual_care_tree_and_cells_pool_small_cells():
    """The behaviour tree's leaves hold >= 11 episodes even with min_samples_leaf=5; a site
    held by 3 episodes gets no row of its own (all a2): it is left to the clinicians, with the
    overall frequencies as the table's stand-in."""
    from equicare.explain import fit_usual_care
    from equicare.explain._usual import usual_care_probs

    ds, rare = _rare_panel()
    tree = fit_usual_care(ds, "tree", min_samples_leaf=5, random_state=0)
    assert min(_episodes_per_leaf(tree, ds).values()) >= 11
    cells = fit_usual_care(ds, "cells")
    p = usual_care_probs(cells, ds)
    marginal = np.bincount(ds.actions, minlength=3) / ds.n_steps
    np.testing.assert_allclose(p[rare], np.tile(marginal, (int(rare.sum()), 1)))
    assert cells.deferred_mask(ds)[rare].all() and not cells.deferred_mask(ds)[~rare].any()
    assert cells.keys.shape[0] == 2 and cells.table.shape[0] == 3
    assert not np.isclose(cells.table, [0.0, 0.0, 1.0]).all(axis=1).any()


def test_held_out_evidence_of_small_rules_is_suppressed_with_a_complement():
    """Rule 3 reaches 4 held-out episodes: its share and agreement are n/a, and so are rule
    2's (the next smallest), else the overall figures minus rule 1's would give them."""
    from equicare.explain._evidence import _held_out_by_rule

    rules = [{"rule": i + 1, "leaf": i + 1} for i in range(3)]
    episodes = np.concatenate([np.arange(50), np.arange(50, 80), np.arange(80, 84)])
    leaves = np.concatenate([np.full(50, 1), np.full(30, 2), np.full(4, 3)])
    agree = np.arange(leaves.size) % 2 == 0
    _held_out_by_rule(rules, leaves, episodes, agree, 4, 11)
    assert rules[0]["test_share"] == pytest.approx(50 / 84) and "test_suppressed" not in rules[0]
    for r in rules[1:]:
        assert r["test_share"] is None and r["test_agreement"] is None
        assert "fewer than 11 held-out episodes" in r["test_suppressed"]
    # a small rule beside two that together exceed 11 episodes only needs one complement
    rules = [{"rule": i + 1, "leaf": i + 1} for i in range(3)]
    episodes = np.concatenate([np.arange(50), np.arange(50, 58), np.arange(58, 66)])
    leaves = np.concatenate([np.full(50, 1), np.full(8, 2), np.full(8, 3)])
    _held_out_by_rule(rules, leaves, episodes, np.ones(66, bool), 4, 11)
    assert [r["test_share"] is None for r in rules] == [False, True, True]


def test_card_publishes_no_held_out_figure_of_a_small_rule(exception_card):
    """Every rule of the card covers >= 11 fitting episodes; a published held-out share or
    agreement comes from >= 11 held-out episodes, else it is n/a with the reason."""
    card, train, _, test = exception_card
    assert min(_episodes_per_leaf(card.tree, train).values()) >= 11
    leaf = card.tree.apply(test)
    for r in card.to_dict()["rules"]:
        ks = r["leaves"] if r["leaf"] is None else [r["leaf"]]
        n_ep = np.unique(test.episode_index[np.isin(leaf, ks)]).size
        assert (r["test_share"] is None) == ("test_suppressed" in r)
        assert r["test_share"] is None or n_ep >= 11 or n_ep == 0, (r["text"], n_ep)


def test_the_card_json_names_no_categorical_level_of_fewer_than_11_members():
    """The card JSON listed every candidate feature of the tree, one per categorical level of
    the fitting rows: on an ICU panel, all 300 diagnosis groups, those of one or two patients
    too ("someone in the panel had DRG 287"). It lists the features the rules test (each rule
    covers at least 11 members) and counts the candidates."""
    from tests.ope._garnet import make

    _, ds, pols = make("s50_a5_g1", 300, seed=7)
    cfg = ExplainConfig(bootstrap=0, frontier_bootstrap=0, depths=(1, 2), depth=2)
    card = explain_policy(ds, _TablePolicy(pols["soft_optimal"]), cfg, random_state=0)
    episodes = {}
    for lv, ep in zip(ds.categorical[:, 0], ds.episode_index, strict=True):
        episodes.setdefault(str(ds.categorical_levels[0][lv]), set()).add(ep)
    assert min(len(v) for v in episodes.values()) < 11  # the panel has rare levels
    tree = card.to_dict()["tree"]
    named = [lv for f in tree["features"] if f["kind"] in ("categorical", "categorical_set")
             for lv in ([f["level"]] if f["kind"] == "categorical" else f["levels"])]
    assert named and all(len(episodes[str(lv)]) >= 11 for lv in named), named
    assert tree["n_features"] == len(card.tree.features) > len(tree["features"])
    tested = {card.tree.features[j]["level"] for j in card.tree.used_features
              if card.tree.features[j]["kind"] == "categorical"}
    assert tested <= set(named)
    # a set split ("state is one of ...") lists only levels of at least 11 members, in its
    # model-folder record and in the rules' conditions (without that rule: 8 states listed,
    # one of them of fewer than 11 members)
    listed = {lv for r in card.rules for c in r["conditions"] for lv in c.get("levels", [])}
    assert all(len(episodes[str(lv)]) >= 11 for lv in listed), listed
    sets = [f for f in card.tree.features if f["kind"] == "categorical_set"]
    assert sets and all(len(episodes[lv]) >= 11 for f in sets for lv in f["levels"])


def test_the_cards_disagreement_table_withholds_groups_of_few_members():
    """The policy card's subgroup table (agreement of the rules with their source) counted
    episodes: with the manifest's member, race d (15 episodes of 5 people) was a row of its
    own. It is now suppressed, as in the audit."""
    import warnings

    import numpy as np

    from equicare.data import from_frame
    from equicare.explain._evidence import _disagreement

    from ..conftest import make_reenrolled_frame

    frame, man = make_reenrolled_frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = from_frame(frame, man)
    rows = _disagreement(ds, np.ones(ds.n_steps, dtype=bool), np.zeros(ds.n_steps), 11, 100)
    assert not [r for r in rows if r["attribute"].startswith("race") and
                r["group"].split(" x ")[0] == "d"]  # no row of d, alone or crossed
    assert rows[-1]["attribute"] == "(suppressed)"
