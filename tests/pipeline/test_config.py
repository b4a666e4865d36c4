from __future__ import annotations

import re

import pytest

from equicare.pipeline._config import ConfigError, RunConfig, load_run_config, parse_grid


def test_defaults_filled():
    cfg = RunConfig.from_dict({})
    assert cfg["data"]["synthetic"]["members"] == 2000
    assert cfg["ope"]["bootstrap"] == 1000


@pytest.mark.parametrize(
    ("d", "msg"),
    [
        ({"opee": {}}, "unknown key 'opee'; did you mean 'ope'?"),
        ({"ope": {"bootstap": 5}}, "unknown key ope.bootstap; did you mean 'bootstrap'?"),
        ({"ope": {"bootstrap": "many"}}, "ope.bootstrap must be an integer, got 'many'."),
        (
            {"ope": {"q_model": "forest"}},
            "ope.q_model must be one of 'linear', 'auto', 'gbm', 'mlp', 'tabular', "
            "'tabular_stationary', 'tabular_backward', 'tabular_window'; got 'forest'.",
        ),
        ({"ope": {"estimators": ["dr", "magic"]}}, "unknown estimator 'magic'"),
        (
            {"learner": {"algo": "ppo"}},
            "learner.algo must be one of 'bc', 'awr', 'cql'; got 'ppo'.",
        ),
        ({"data": {"path": "x.csv"}}, "data.path needs data.manifest"),
        (
            {"data": {"synthetic": {"memberz": 3}}},
            "unknown key data.synthetic.memberz; did you mean 'members'?",
        ),
        ({"reward": {"engagement": float("nan")}}, "reward.engagement must be a finite number"),
        ({"output": {"executor": "spark"}}, "output.executor must be one of"),
        # values checked at load (not after training, nor under an internal parameter's name)
        ({"frontier": {"lambdas": ["a"]}},
         "run.toml: frontier.lambdas must be a list of numbers >= 0, got 'a' in ['a']."),
        ({"frontier": {"lambdas": [0, "0.5"]}}, "frontier.lambdas must be a list of numbers"),
        ({"frontier": {"lambdas": [0.5, 2], "kind": "group_robust"}},
         "frontier.lambdas must be a list of numbers in [0, 1] (frontier.kind = "
         "'group_robust'), got 2"),
        ({"audit": {"permutations": -5}},
         "run.toml: audit.permutations must be an integer >= 0 (0: no permutation test), "
         "got -5."),
        ({"ope": {"truncate": -1}},
         "run.toml: ope.truncate must be a number >= 0 (0: no truncation), got -1."),
        ({"ope": {"truncate": float("nan")}}, "ope.truncate must be a number >= 0"),
        ({"ope": {"bootstrap": -1}}, "run.toml: ope.bootstrap must be an integer >= 0, got -1."),
        ({"output": {"jobs": 0}},
         "run.toml: output.jobs must be an integer >= 1 (or -1: every core), got 0."),
        ({"plan": {"arms": -3}}, "run.toml: plan.arms must be an integer >= 1, got -3."),
        ({"plan": {"seeds": 0}}, "run.toml: plan.seeds must be an integer >= 1, got 0."),
        ({"plan": {"budget": 1.5}}, "run.toml: plan.budget must be a share in [0, 1]"),
        ({"plan": {"policies": ["opt", "bogus"]}},
         "run.toml: plan.policies has unknown policy 'bogus'; allowed: noact, random, opt"),
        ({"data": {"synthetic": {"members": 0}}},
         "run.toml: data.synthetic.members must be an integer >= 1, got 0."),
        ({"seed": -1}, "run.toml: seed must be an integer >= 0, got -1."),
        ({"explain": {"deviation_margin": 1}},
         "run.toml: explain.deviation_margin must be \"auto\" or a number in [0, 1), got 1."),
        ({"explain": {"deviation_margin": "noise"}},
         "run.toml: explain.deviation_margin must be a number, got 'noise'."),
        ({"explain": {"set_splits": "yes"}}, "explain.set_splits must be true/false"),
    ],
)
def test_errors(d, msg):
    with pytest.raises(ConfigError, match=re.escape(msg)):
        RunConfig.from_dict(d, source="run.toml")


def test_overrides_and_grid(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text('name = "x"\n[learner]\nalgo = "bc"\n')
    cfg = load_run_config(p)
    assert cfg.base_dir == tmp_path.resolve()
    cfg2 = cfg.with_overrides({"learner.window": 4, "reward.engagement": 0.1})
    assert cfg2["learner"]["window"] == 4 and cfg2["reward"]["engagement"] == 0.1
    assert parse_grid("learner.window=[2,4,6,8]") == ("learner.window", [2, 4, 6, 8])
    assert parse_grid("learner.encoder=[mlp, lstm]") == ("learner.encoder", ["mlp", "lstm"])
    # without brackets the values were the strings '10' and '20'
    assert parse_grid("learner.n_steps=10,20") == ("learner.n_steps", [10, 20])
    assert parse_grid("ope.truncate=[0.5, none]") == ("ope.truncate", [0.5, "none"])
    with pytest.raises(ConfigError, match="must look like"):
        parse_grid("learner.window")


def test_to_toml_round_trips_and_show_config_applies_set(tmp_path):
    """``run --show-config --set ...`` printed the file and ignored the overrides; it now
    prints the config that would run, which loads back to the same settings."""
    from typer.testing import CliRunner

    from equicare.cli import app
    from equicare.cli._pipeline import example_path
    from equicare.pipeline import load_run_config

    want = load_run_config(example_path("care")).with_overrides({"learner.n_steps": 5})
    res = CliRunner().invoke(app, ["run", "--example", "care", "--show-config",
                                   "--set", "learner.n_steps=5", "--seed", "3"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "shown.toml"
    out.write_text(res.output)
    got = load_run_config(out)
    assert got.to_dict() == want.with_overrides({"seed": 3}).to_dict()
    assert got["learner"]["n_steps"] == 5 and got["seed"] == 3


def test_values_in_range_pass():
    cfg = RunConfig.from_dict({"frontier": {"lambdas": [0, 0.5, 3]}, "output": {"jobs": -1},
                               "plan": {"budget": 5, "arms": 20}, "ope": {"truncate": 0}})
    assert cfg["frontier"]["lambdas"] == [0, 0.5, 3] and cfg["plan"]["budget"] == 5


def test_explain_deviation_margin_is_auto_by_default_and_takes_a_number():
    """The default margin is "auto" (DistillConfig's); a number in [0, 1) stays accepted."""
    assert RunConfig.from_dict({})["explain"]["deviation_margin"] == "auto"
    for margin in (0, 0.2):
        cfg = RunConfig.from_dict({"explain": {"deviation_margin": margin}})
        assert cfg["explain"]["deviation_margin"] == margin


def test_audit_intersect_takes_a_string_or_a_list_like_the_repeatable_option():
    from equicare.pipeline._config import audit_intersect

    for value, expected in (("", []), ("sex", ["sex"]), (["sex"], ["sex"]),
                            (["sex", "age_band"], ["sex", "age_band"]), ([], [])):
        cfg = RunConfig.from_dict({"audit": {"intersect": value}}, source="run.toml")
        assert audit_intersect(cfg["audit"]) == expected
    for bad, msg in (([1], "run.toml: audit.intersect must be a string or a list of non-empty "
                           "strings, got [1]."),
                     ([""], "audit.intersect must be a string or a list of non-empty strings"),
                     (3, "audit.intersect must be a string or a list"),
                     (["sex", "sex"], "run.toml: audit.intersect must name each attribute "
                                      "once, got ['sex', 'sex'].")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            RunConfig.from_dict({"audit": {"intersect": bad}}, source="run.toml")


@pytest.mark.parametrize(
    ("learner", "msg"),
    [
        ({"algo": "bc", "n_stpes": 10},
         "run.toml: unknown key learner.n_stpes for algo 'bc'; did you mean 'n_steps'?"),
        ({"algo": "awr", "zzz": 1}, "run.toml: unknown key learner.zzz for algo 'awr'; known "
                                    "keys: algo, encoder, window,"),
        ({"algo": "bc", "hidden": "big"},
         "run.toml: [learner] for algo 'bc': The 'hidden' parameter of BCConfig must be a "
         "non-empty tuple of positive ints. Got 'big' instead."),
    ],
)
def test_learner_keys_are_checked_at_load_with_the_closest_key_suggested(learner, msg):
    """[learner] was checked only when training started, with no "did you mean" and the key
    list printed twice; it is now checked at load like every other section."""
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"learner": learner}, source="run.toml")
    said = str(info.value)
    assert said.startswith(msg), said
    assert said.count("known keys") <= 1 and "known: [" not in said


def test_show_config_refuses_an_unknown_learner_key():
    from typer.testing import CliRunner

    from equicare.cli import app

    res = CliRunner().invoke(app, ["run", "--example", "care", "--show-config",
                                   "--set", "learner.n_stepz=5"])
    assert res.exit_code == 2, res.output
    said = " ".join(res.output.split())
    assert "unknown key learner.n_stepz for algo 'awr'; did you mean 'n_steps'?" in said
    # the flag is named first: the shipped file it names is not the user's mistake
    assert said.startswith("error: --set learner.n_stepz=5: "), said
    ok = RunConfig.from_dict({"learner": {"algo": "cql", "steps": 5, "hidden": [8]}})
    assert ok["learner"]["steps"] == 5  # the alias and a list of sizes still pass


def test_plan_domain_and_estimators_are_checked_at_load(tmp_path, monkeypatch):
    """`plan.domain = "nowhere"` failed after the whole run (44 s in the audit), `ope.estimators
    = []` in the evaluate stage, each leaving a failed run; both are config errors at load. A
    domain file is found relative to the config file's folder, like data.path."""
    import json

    from equicare.rmab._domain import _read_builtin

    msg = ("run.toml: plan.domain must be one of 'synthetic', 'maternal', 'diabetes' or the "
           "path of a Contract-4 JSON file (relative to the config file's folder), got "
           "'nowhere'.")
    for enabled in (True, False):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            RunConfig.from_dict({"plan": {"enabled": enabled, "domain": "nowhere"}},
                                source="run.toml")
    with pytest.raises(ConfigError, match=re.escape(
            "run.toml: ope.estimators must name at least one estimator; allowed: is, wis,")):
        RunConfig.from_dict({"ope": {"estimators": []}}, source="run.toml")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "dom.json").write_text(json.dumps(_read_builtin("synthetic")))
    (tmp_path / "cfg" / "run.toml").write_text('[plan]\nenabled = true\ndomain = "dom.json"\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder
    cfg = load_run_config(tmp_path / "cfg" / "run.toml")
    from equicare.pipeline._config import plan_domain

    assert plan_domain(cfg["plan"]["domain"], cfg.base_dir) == str(tmp_path / "cfg" / "dom.json")
    (tmp_path / "cfg" / "run.toml").write_text('[plan]\nenabled = true\ndomain = "no.json"\n')
    with pytest.raises(ConfigError, match=re.escape("plan.domain 'no.json': no such file")):
        load_run_config(tmp_path / "cfg" / "run.toml")
    (tmp_path / "cfg" / "bad.json").write_text('{"kind": "contract4"}')
    (tmp_path / "cfg" / "run.toml").write_text('[plan]\nenabled = true\ndomain = "bad.json"\n')
    with pytest.raises(ConfigError, match=re.escape("plan.domain 'bad.json': ")):
        load_run_config(tmp_path / "cfg" / "run.toml")
