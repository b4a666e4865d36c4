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
