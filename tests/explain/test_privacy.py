"""Privacy of distilled rules: thresholds on a coarse grid, not midpoints of two rows' values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from equicare.explain import ExplainConfig, explain_policy
from equicare.explain._features import grid_steps, snap_to_grid
from equicare.policy import tree_features
from tests.explain import tree_sim

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
    return card, train, folder


def test_no_saved_threshold_pins_a_row(exception_card):
    """Every numeric threshold of the card JSON, the rules' tensors and the usual-care tree's
    tensors is a half-step of a coarse grid, not a row's value nor the midpoint of two rows'
    (scikit-learn's own thresholds are)."""
    card, train, folder = exception_card
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
    card, train, _ = exception_card
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

