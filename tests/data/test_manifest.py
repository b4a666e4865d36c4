from __future__ import annotations

import re

import pytest

from equicare.data import Manifest, read_manifest
from equicare.exceptions import ManifestError


def test_parse_and_round_trip(manifest_dict, tmp_path):
    m = Manifest.from_dict(manifest_dict)
    assert m.action_space.n_actions == 6
    assert [r.weight for r in m.reward] == [1.0, 0.5]
    p = tmp_path / "m.toml"
    p.write_text(m.to_toml())
    m2 = read_manifest(p)
    assert m2 == m


def test_single_column_forms(manifest_dict):
    manifest_dict["actions"] = {"action": {"levels": 25}}
    manifest_dict["reward"] = {"column": "r"}
    m = Manifest.from_dict(manifest_dict)
    assert m.action_space.n_actions == 25 and m.actions[0].integer_levels
    assert m.reward[0].column == "r" and m.reward[0].weight == 1.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["dataset"].update(epsiode="x"),
            "unknown key dataset.epsiode; did you mean 'episode'?",
        ),
        (lambda d: d.update(rewards={}), "unknown key rewards; did you mean 'reward'?"),
        (lambda d: d["dataset"].pop("time"), "missing key dataset.time"),
        (
            lambda d: d["dataset"].update(states="risk", categorical_states=["risk"]),
            "are in both dataset.states and dataset.categorical_states",
        ),
        (lambda d: d["dataset"].update(gamma=1.5), "dataset.gamma must be a number in (0, 1]"),
        (
            lambda d: d["dataset"].update(groups=[1, 2]),
            "dataset.groups must be a list of column names",
        ),
        (lambda d: d["dataset"].update(episode=3), "dataset.episode must be a column name"),
        (
            lambda d: d["dataset"].update(time=d["dataset"]["episode"]),
            "dataset.episode and dataset.time both name column",
        ),
        (
            lambda d: d["reward"]["primary"].update(weight=float("inf")),
            "reward.primary.weight must be a finite number",
        ),
        (
            lambda d: d["reward"]["primary"].update(weight="1"),
            "reward.primary.weight must be a finite number",
        ),
        (
            lambda d: d["actions"]["modality"].update(levles=3),
            "unknown key actions.modality.levles; did you mean 'levels'?",
        ),
        (
            lambda d: d["actions"].update(urgency={"levels": []}),
            "actions.urgency.levels must be a non-empty list",
        ),
        (lambda d: d["actions"].update(urgency={"levels": ["a", "a"]}), "duplicated labels"),
        (lambda d: d.pop("actions"), "missing table [actions]"),
    ],
)
def test_manifest_errors(manifest_dict, edit, message):
    edit(manifest_dict)
    with pytest.raises(ManifestError, match=re.escape(message)):
        Manifest.from_dict(manifest_dict, source="m.toml")


def test_all_problems_reported(manifest_dict):
    manifest_dict["dataset"]["epsiode"] = "x"
    manifest_dict["dataset"]["gamma"] = 0
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(manifest_dict, source="m.toml")
    assert len(info.value.problems) == 2
    assert str(info.value).startswith("2 problems in m.toml")


def test_file_errors(tmp_path):
    with pytest.raises(ManifestError, match="Manifest file not found"):
        read_manifest(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[dataset\n")
    with pytest.raises(ManifestError, match="not valid TOML"):
        read_manifest(bad)


def test_the_member_key_names_the_person_column_and_round_trips():
    """``member`` (people who re-enrol have several episodes) is a column name, read as text
    from CSV, and kept by to_dict."""
    from ..conftest import make_reenrolled_frame

    _, raw = make_reenrolled_frame()
    man = Manifest.from_dict(raw)
    assert man.member == "person" and "person" in man.label_columns
    assert "person" in man.named_columns
    assert Manifest.from_dict(man.to_dict()) == man
