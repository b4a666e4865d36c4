from __future__ import annotations

import json
import re
from importlib import resources

import numpy as np
import pytest

from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.rmab import RMABDomain, load_domain
from equicare.rmab._domain import (
    EMPTY_GROUP,
    INIT_BAD,
    P_NEGATIVE,
    P_ROWSUM,
    diabetes_transitions,
)

SYN_FILE = {"name": "tiny", "n_states": 2, "horizon": 12, "gamma": 1.0,
            "types": [{"name": "A", "group": "A", "fraction": 0.5,
                       "P": [[[0.9, 0.1], [0.1, 0.9]], [[0.6, 0.4], [0.1, 0.9]]],
                       "R": [0.0, 1.0], "init": [1.0, 0.0], "noise_sd": 0.0},
                      {"name": "B", "group": "B", "fraction": 0.5,
                       "P": [[[0.8, 0.2], [0.3, 0.7]], [[0.5, 0.5], [0.2, 0.8]]],
                       "R": [0.0, 1.0], "init": [0.5, 0.5], "noise_sd": 0.1}]}


def test_domains_ship_inside_the_package():
    names = {p.name for p in resources.files("equicare.rmab").joinpath("domains").iterdir()}
    assert {"synthetic.json", "maternal.json", "diabetes.json"} <= names


def test_synthetic_matches_reference_facts():
    d = load_domain("synthetic")
    assert d.n_arms == 100 and d.n_states == 2 and d.horizon == 20
    assert d.group_names == ("A", "B", "C", "D", "E")
    assert d.group_sizes.tolist() == [25, 25, 5, 25, 20]
    a = d.P[0]  # group A
    assert a[0, 0, 1] == pytest.approx(0.05) and a[0, 1, 1] == pytest.approx(0.35)
    assert a[1, 0, 1] == pytest.approx(0.99) and a[1, 1, 1] == pytest.approx(0.99)
    np.testing.assert_allclose(d.init, 0.5)


def test_maternal_experiments_and_noise():
    for exp, sizes in (("A", [120, 40, 40]), ("B", [40, 120, 40]), ("C", [40, 40, 120])):
        d = load_domain("maternal", experiment=exp, random_state=0)
        assert d.group_sizes.tolist() == sizes
    d1 = load_domain("maternal", random_state=1)
    d2 = load_domain("maternal", random_state=1)
    np.testing.assert_array_equal(d1.P, d2.P)
    assert not np.array_equal(d1.P, d1.redraw(2).P)
    # structural zeros and remaining mass to the persuadable state
    assert (d1.P[:, :, 0, 2] == 0).all() and (d1.P[:, 0, 1, 0] == 0).all()
    # noise around the group means: mean of sampled p110 for group C near 0.25
    c = d1.P[d1.groups == 2, 1, 1, 0]
    assert abs(c.mean() - 0.25) < 0.02 and c.std() > 0


def test_diabetes_structure():
    d = load_domain("diabetes", alpha=0.0, random_state=0)
    assert d.n_states == 24 and d.group_sizes.tolist() == [53, 45, 60, 45, 37, 60]
    assert d.high_risk.sum() == 12
    # alpha = 0: reward is 1 exactly for A1c < 8
    np.testing.assert_array_equal(d.R[0], (~d.high_risk).astype(float))
    # memory shifts deterministically: from (engaged, A1c>=8, MM) the next memory is (E, M)
    nxt = np.flatnonzero(d.P[0, 1, 16] > 0)
    assert set(nxt % 4) == {2}
    # dropout is absorbing under both actions
    drop = np.arange(8)
    assert (d.P[:, :, drop][..., 8:].sum(axis=-1) == 0).all()
    p = np.array([[0.56, 0.03, 0.99, 0.12, 0.07, 0.99, 0.09, 0.99]])
    P = diabetes_transitions(p)
    np.testing.assert_allclose(P.sum(axis=3), 1.0)
    # maintenance (1), A1c>=8, memory EE (3): engaged two steps ago -> eng rates for A1c
    s = 8 * 1 + 0 + 3
    to_lt8 = P[0, 0, s].reshape(3, 2, 4).sum(axis=(0, 2))[1]
    assert to_lt8 == pytest.approx(0.09)


def test_contract4_file(tmp_path):
    f = tmp_path / "dom.json"
    f.write_text(json.dumps(SYN_FILE))
    d = load_domain(f, n_arms=10, random_state=0)
    assert d.name == "tiny" and d.horizon == 12 and d.group_sizes.tolist() == [5, 5]
    np.testing.assert_allclose(d.P[:5], np.array(SYN_FILE["types"][0]["P"])[None].repeat(5, 0))
    assert not np.allclose(d.P[5:], np.array(SYN_FILE["types"][1]["P"]))  # noise_sd > 0
    np.testing.assert_allclose(d.P.sum(axis=3), 1.0)
    arms = dict(SYN_FILE)
    del arms["types"]
    arms["arms"] = [dict(t) for t in SYN_FILE["types"]]
    d2 = load_domain(arms)
    assert d2.n_arms == 2


def _bad(path_key, value, tmp_path):
    raw = json.loads(json.dumps(SYN_FILE))
    raw["types"][0]["P"] = value
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(raw))
    return f


def test_file_errors(tmp_path):
    f = _bad("P", [[[0.9, 0.2], [0.1, 0.9]], [[0.6, 0.4], [0.1, 0.9]]], tmp_path)
    with pytest.raises(DataValidationError, match=re.escape(P_ROWSUM.format(
            source=f"{f}: ", arm=0, a=0, s=0, total=1.1))):
        load_domain(f)
    f = _bad("P", [[[1.1, -0.1], [0.1, 0.9]], [[0.6, 0.4], [0.1, 0.9]]], tmp_path)
    with pytest.raises(DataValidationError, match=re.escape(P_NEGATIVE.format(
            source=f"{f}: ", arm=0, a=0, s=0, t=1, value=-0.1))):
        load_domain(f)
    raw = json.loads(json.dumps(SYN_FILE))
    raw["types"][0]["fraction"], raw["types"][1]["fraction"] = 0.95, 0.05
    with pytest.raises(DataValidationError, match=re.escape(EMPTY_GROUP.format(
            name="B", detail=" at n_arms=10 (fraction 0.05)"))):
        load_domain(raw, n_arms=10)
    with pytest.raises(ValueError, match="Unknown domain 'nope'"):
        load_domain("nope")
    with pytest.raises(ValueError, match=re.escape("The 'experiment' parameter")):
        load_domain("maternal", experiment="Z")


def _edit(tmp_path, where, key, value):
    raw = json.loads(json.dumps(SYN_FILE))
    (raw if where is None else raw["types"][where])[key] = value
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(raw))
    return f


@pytest.mark.parametrize(("where", "key", "value", "expected"), [
    # a one-element R was stretched over every state, so a typo planned on a wrong reward
    (0, "R", [0.0], "types[0]: 'R' must be a list of 2 numbers (one reward per state) or one "
                    "number; got [0.0]."),
    (0, "R", [0.0, 1.0, 2.0], "types[0]: 'R' must be a list of 2 numbers (one reward per "
                              "state) or one number; got [0.0, 1.0, 2.0]."),
    # values of the wrong type were internal errors (exit code 1)
    (0, "P", "x", "types[0]: 'P' must be numbers of shape (2, 2, 2) (P[a][s][s']); got \"x\"."),
    (0, "fraction", "x", "types[0]: 'fraction' must be a finite number; got \"x\"."),
    (0, "init", [1.0], "types[0]: 'init' must be a list of 2 probabilities; got [1.0]."),
    (None, "n_states", "two", "'n_states' must be a whole number >= 1; got \"two\"."),
    (None, "n_states", 2.5, "'n_states' must be a whole number >= 1; got 2.5."),
    (None, "horizon", "x", "'horizon' must be a whole number >= 1; got \"x\"."),
    (None, "budget_fracs", ["a"], "'budget_fracs[0]' must be a finite number; got \"a\"."),
    (None, "types", [1], "types[0]: must be a JSON object with keys P, R, ...; got 1."),
    (None, "state_names", ["a"], "'state_names' must be a list of 2 names (one per state); "
                                 "got [\"a\"]."),
    (None, "high_risk", [1], "'high_risk' must be a list of 2 0/1 flags (one per state); "
                             "got [1]."),
])
def test_contract4_values_of_the_wrong_type_or_size_name_key_and_file(tmp_path, where, key,
                                                                       value, expected):
    f = _edit(tmp_path, where, key, value)
    with pytest.raises(DataValidationError, match=re.escape(f"{f}: {expected}")):
        load_domain(f)


def test_contract4_one_number_reward_applies_to_every_state(tmp_path):
    d = load_domain(_edit(tmp_path, 0, "R", 0.5), n_arms=10, random_state=0)
    np.testing.assert_allclose(d.R[:5], 0.5)


def test_array_errors():
    P = np.array([[[0.9, 0.1], [0.1, 0.9]], [[0.6, 0.4], [0.1, 0.9]]])
    with pytest.raises(DataValidationError, match=re.escape(INIT_BAD.format(
            source="", n_states=2, arm=0, row=[0.7, 0.7]))):
        RMABDomain(P=P, R=[0, 1], init=[0.7, 0.7], groups=["a"])
    d = RMABDomain(P=np.stack([P, P]), R=[0, 1], init=[1.0, 0.0], groups=["x", "y"])
    assert d.group_names == ("x", "y") and d.n_arms == 2
    assert d.redraw(0) is d  # arrays have no generator
    assert load_domain(d.to_dict()).n_arms == 2


@pytest.mark.parametrize("name, kwargs, msg", [
    ("maternal", {"alpha": 0.5},
     "'alpha' applies only to the diabetes domain (the reward's engagement weight); domain "
     "'maternal' has no such setting."),
    ("synthetic", {"experiment": "B"},
     "'experiment' applies only to the maternal domain (which group is 60%); domain "
     "'synthetic' has no such setting."),
])
def test_settings_of_another_domain_are_refused(name, kwargs, msg):
    with pytest.raises(InvalidParameterError) as err:
        load_domain(name, **kwargs)
    assert str(err.value) == msg
