"""Tests of OMG-RL: SAC correctness (terminals, entropy), guided cost learning, CLI, and the
full-size claims against the heparin simulator's truth (slow)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from equicare.cli._dosing import EXISTS_MESSAGE, synth_heparin, train_omg
from equicare.data import TrajectoryDataset
from equicare.dosing._irl import gcl_loss
from equicare.dosing._omg import OMG, OMGConfig
from equicare.dosing._sac import DiscreteSAC, SACConfig, discrete_target_entropy, td_target
from equicare.exceptions import DataValidationError, NotFittedError
from equicare.sim.heparin import heparin_dataset
from equicare.spaces import FactoredActionSpace
from equicare.utils import PARAM_MESSAGE

torch.set_num_threads(1)


def _bandit(n_episodes: int, rewards: list[float], length: int = 1, seed: int = 0,
            final_only: bool = False) -> TrajectoryDataset:
    """Episodes of ``length`` steps, uniform logged actions, terminal flag at the last row.

    State: (noise, step). Reward ``rewards[a]`` at every step, or only at the last step.
    """
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    k = len(rewards)
    step = np.tile(np.arange(length), n_episodes)
    states = np.c_[rng.normal(size=n), step].astype(np.float32)
    actions = rng.integers(0, k, size=n)
    r = np.asarray(rewards)[actions]
    if final_only:
        r = np.where(step == length - 1, r, 0.0)
    return TrajectoryDataset(
        states=states, actions=actions.astype(np.int64), reward_components=r[:, None],
        terminals=step == length - 1, episode_offsets=np.arange(0, n + 1, length),
        episode_ids=np.arange(n_episodes), times=step.astype(np.int64),
        action_space=FactoredActionSpace.single(k), state_names=("noise", "step"), gamma=0.9)


MODEL_FREE = dict(reward="dataset", use_model=False, n_iterations=8, policy_updates=100)


# ---------------------------------------------------------------------------- SAC pieces
def test_td_target_done_means_no_bootstrap():
    r = torch.tensor([1.0, 1.0])
    d = torch.tensor([1.0, 0.0])
    v = torch.tensor([10.0, 10.0])
    np.testing.assert_allclose(td_target(r, d, v, 0.9).numpy(), [1.0, 10.0])


def test_discrete_target_entropy_is_positive_fraction_of_max():
    h = discrete_target_entropy(6, 0.3)
    assert 0 < h < math.log(6)
    assert h == pytest.approx(0.3 * math.log(6))
    agent = DiscreteSAC(4, 6, SACConfig(), 0.9)
    assert agent.target_entropy == pytest.approx(h)      # not the continuous -dim(A) = -1
    with pytest.raises(ValueError, match=re.escape(PARAM_MESSAGE.format(
            name="ratio", owner="discrete_target_entropy", expected="a number in (0, 1)",
            got=1.0))):
        discrete_target_entropy(6, 1.0)


def test_terminal_transitions_are_not_bootstrapped():
    """One-step episodes: Q(s, a) must equal r(a), not r(a) + gamma V."""
    ds = _bandit(400, [0.0, 0.5, 1.0])
    cfg = OMGConfig(sac=SACConfig(hidden=(32, 32), conservative_weight=0.0, critic_lr=3e-3,
                                  batch_size=64), **MODEL_FREE)
    q = OMG(cfg, random_state=0).fit(ds).q_values(ds)
    np.testing.assert_allclose(q.mean(axis=0), [0.0, 0.5, 1.0], atol=0.1)


def test_non_terminal_transitions_are_bootstrapped():
    """Two-step episodes, reward only at the end: Q at the first step = gamma * E[r]."""
    ds = _bandit(500, [0.0, 1.0], length=2, final_only=True)
    cfg = OMGConfig(sac=SACConfig(hidden=(32, 32), conservative_weight=0.0, critic_lr=3e-3,
                                  target_entropy_ratio=0.05, tau=0.05, batch_size=64),
                    **MODEL_FREE)
    model = OMG(cfg, random_state=0).fit(ds)
    q = model.q_values(ds)
    first, last = ds.step == 0, ds.step == 1
    np.testing.assert_allclose(q[last].mean(axis=0), [0.0, 1.0], atol=0.1)
    # soft value of the last step is close to max_a Q = 1 (low target entropy); r_first = 0
    v_last = (model.action_probs(ds)[last] * q[last]).sum(axis=1).mean()
    assert q[first].mean() == pytest.approx(0.9 * v_last, abs=0.1)


def test_temperature_reaches_the_target_entropy():
    ds = _bandit(300, [1.0, 0.0, 0.0, 0.0])
    cfg = OMGConfig(sac=SACConfig(hidden=(32, 32), conservative_weight=0.0, alpha_lr=1e-2,
                                  actor_lr=3e-3, critic_lr=3e-3, target_entropy_ratio=0.5,
                                  batch_size=64), **MODEL_FREE)
    model = OMG(cfg, random_state=0).fit(ds)
    p = model.action_probs(ds)
    entropy = float(-(p * np.log(p)).sum(axis=1).mean())
    assert entropy == pytest.approx(0.5 * math.log(4), abs=0.1)
    assert p[:, 0].mean() > 0.5                         # the rewarded action is preferred


def test_conservative_penalty_pushes_down_unlogged_actions():
    """Logged action always 0: with the CQL penalty, Q of unseen actions stays below Q(s, 0)."""
    ds = _bandit(300, [0.5, 0.5, 0.5])
    ds = TrajectoryDataset(**{**{f: getattr(ds, f) for f in (
        "states", "reward_components", "terminals", "episode_offsets", "episode_ids", "times",
        "action_space", "state_names", "gamma")}, "actions": np.zeros(300, dtype=np.int64)})
    cfg = OMGConfig(sac=SACConfig(hidden=(32, 32), conservative_weight=1.0, batch_size=64),
                    **MODEL_FREE)
    q = OMG(cfg, random_state=0).fit(ds).q_values(ds)
    assert np.all(q[:, 0] > q[:, 1:].max(axis=1))


def test_gcl_loss_matches_formula():
    rd = torch.tensor([1.0, 2.0])
    rb = torch.tensor([1.0, 2.0, 0.5])
    lq = torch.tensor([-1.0, -2.0, -0.5])
    expected = -1.5 + math.log(np.mean(np.exp([2.0, 4.0, 1.0])))
    assert float(gcl_loss(rd, rb, lq)) == pytest.approx(expected)


# ---------------------------------------------------------------------------- config / API
@pytest.mark.parametrize(("kwargs", "name", "expected"), [
    ({"reward": "oracle"}, "reward", "one of 'learned', 'dataset'"),
    ({"n_iterations": 0}, "n_iterations", "an int >= 1"),
    ({"real_ratio": 0.0}, "real_ratio", "a number in (0, 1]"),
    ({"reward_inputs": "action"}, "reward_inputs",
     "one of 'state_action', 'next_state', 'transition'"),
    ({"use_model": False}, "use_model",
     "True when reward='learned' (guided cost learning needs model rollouts)"),
])
def test_config_errors(kwargs, name, expected):
    msg = PARAM_MESSAGE.format(name=name, owner="OMGConfig", expected=expected, got=kwargs[name])
    with pytest.raises(ValueError, match=re.escape(msg)):
        OMGConfig(**kwargs)


def test_config_round_trip():
    cfg = OMGConfig.small(reward_inputs="state_action")
    assert OMGConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert OMGConfig().dynamics.n_members == 7 and OMGConfig().dynamics.n_elites == 5


def test_not_fitted():
    with pytest.raises(NotFittedError, match="This OMG instance is not fitted yet"):
        OMG().action_probs(heparin_dataset(2, random_state=0))


@pytest.fixture(scope="module")
def small_fit():
    ds = heparin_dataset(60, random_state=0)
    return ds, OMG(OMGConfig.small(), random_state=0).fit(ds)


def test_small_fit_api(small_fit, tmp_path):
    ds, model = small_fit
    p = model.action_probs(ds)
    assert p.shape == (ds.n_steps, 6)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    assert set(model.stage_seconds_) == {"dynamics", "reward", "policy"}
    assert len(model.history_) == OMGConfig.small().n_iterations
    r = model.dataset_reward(ds)
    assert r.shape == (ds.n_steps,) and np.isfinite(r).all()
    grid = model.reward_grid("aptt", np.linspace(30, 150, 7), linked=("aptt_prev",))
    assert list(grid.columns) == ["aptt", "reward"]              # next-state reward (default)
    model.save(tmp_path / "m")
    back = OMG.load(tmp_path / "m")
    np.testing.assert_allclose(back.action_probs(ds), p, rtol=1e-6)
    np.testing.assert_allclose(back.dataset_reward(ds), r, rtol=1e-5, atol=1e-6)


def test_state_action_reward_grid_has_one_column_per_action():
    ds = heparin_dataset(30, random_state=3)
    model = OMG(OMGConfig.small(reward_inputs="state_action"), random_state=0).fit(ds)
    grid = model.reward_grid("aptt", np.linspace(30, 150, 5))
    per_action = grid[[f"reward_a{a}" for a in range(6)]].to_numpy()
    np.testing.assert_allclose(grid["reward"], per_action.mean(axis=1))
    assert np.ptp(per_action, axis=1).max() > 0               # depends on the action


def test_same_seed_same_policy(small_fit):
    ds, model = small_fit
    again = OMG(OMGConfig.small(), random_state=0).fit(ds)
    np.testing.assert_allclose(again.action_probs(ds), model.action_probs(ds), rtol=1e-6)


def test_wrong_dataset_is_rejected(small_fit):
    _, model = small_fit
    with pytest.raises(DataValidationError, match="state columns"):
        model.action_probs(_bandit(5, [0.0, 1.0]))


def test_reward_exclude_removes_features():
    ds = heparin_dataset(30, random_state=2)
    model = OMG(OMGConfig.small(reward_exclude=("rate_prev", "aptt_prev")),
                random_state=0).fit(ds)
    s = ds.states[:20].copy()
    base = model.learned_reward(s, ds.actions[:20], s)
    s[:, [1, 15]] += 50.0                                  # excluded columns do not matter
    np.testing.assert_array_equal(model.learned_reward(s, ds.actions[:20], s), base)
    with pytest.raises(DataValidationError, match="unknown state feature"):
        OMG(OMGConfig.small(reward_exclude=("dose",)), random_state=0).fit(ds)
    # "auto" (default): the features the dynamics found to be f(action) or copies of the state
    auto = OMG(OMGConfig.small(), random_state=0).fit(ds)
    assert set(auto.reward_exclude_) == {"rate_prev", "aptt_prev"}
    assert OMG(OMGConfig.small(reward_exclude=()), random_state=0).fit(ds).reward_exclude_ == ()


def test_demo_outcomes_from_model_use_the_logged_actions():
    """Demonstration segments keep logged actions; outcomes are one-step model samples."""
    from equicare.dosing._irl import expert_segments

    s = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    a = torch.tensor([0, 1, 2, 0, 1, 2])
    model_next = -s
    seg = expert_segments(np.array([0, 3]), 3, s, a, s + 100, np.array([3, 3, 3, 6, 6, 6]),
                          model_next)
    np.testing.assert_array_equal(seg.actions.numpy(), [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(seg.states[:, 0].numpy(), s[[0, 3]].numpy())
    mn = model_next.numpy()
    np.testing.assert_array_equal(seg.states[:, 1:].numpy(), mn[np.array([[0, 1], [3, 4]])])
    np.testing.assert_array_equal(seg.next_states.numpy(), mn[np.array([[0, 1, 2], [3, 4, 5]])])
    data_seg = expert_segments(np.array([4]), 3, s, a, s + 100, np.array([3, 3, 3, 6, 6, 6]))
    np.testing.assert_array_equal(data_seg.valid.numpy(), [[1.0, 1.0, 0.0]])


def test_known_reward_variant_has_no_learned_reward():
    ds = heparin_dataset(30, random_state=1)
    model = OMG(OMGConfig.small(reward="dataset"), random_state=0).fit(ds)
    assert model.reward_net_ is None and model.dynamics_ is not None
    with pytest.raises(ValueError, match="no learned reward"):
        model.learned_reward(ds.states, ds.actions, ds.states)


# ---------------------------------------------------------------------------- CLI
def test_cli_synth_and_train(tmp_path):
    from equicare.cli import app

    runner = CliRunner()
    folder = tmp_path / "hep"
    data, manifest = folder / "panel.parquet", folder / "manifest.toml"
    res = runner.invoke(app, ["synth", "--sim", "heparin", "--out", str(folder), "--members",
                              "40", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert data.exists() and manifest.exists()
    # refuses to overwrite without --force
    res = runner.invoke(app, ["synth", "--sim", "heparin", "--out", str(folder), "--members",
                              "40"])
    assert res.exit_code == 2
    assert EXISTS_MESSAGE.format(path=data) in res.output.replace("\n", "")
    before = data.stat().st_mtime_ns
    res = runner.invoke(app, ["synth", "--sim", "heparin", "--out", str(folder), "--members",
                              "30", "--force"])
    assert res.exit_code == 0 and data.stat().st_mtime_ns != before
    # options of the care simulator are refused, not ignored
    res = runner.invoke(app, ["synth", "--sim", "heparin", "--out", str(folder), "--weeks", "4",
                              "--force"])
    assert res.exit_code == 2 and "--weeks does not apply to --sim heparin" in res.output
    out = tmp_path / "run"
    args = ["train", str(data), "--manifest", str(manifest), "--algo", "omg", "--out", str(out),
            "--no-progress", "--small"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    files = {p.name for p in out.iterdir()}
    assert files == {"config.json", "model.safetensors", "reward_grid.csv", "metrics.json"}
    grid = (out / "reward_grid.csv").read_text().splitlines()
    assert grid[0].startswith("aptt,") and "clinical_reward" in grid[0] and len(grid) == 82
    assert "reward_grid.csv: learned reward over aptt (with aptt_prev)" in res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--force" in res.output
    bad = runner.invoke(app, [*args[:-1], "--reward", "oracle", "--force"])
    assert bad.exit_code == 2 and "Invalid value for '--reward'" in bad.output
    bad = runner.invoke(app, [*args, "--steps", "10", "--force"])
    assert bad.exit_code == 2 and "--steps does not apply to --algo omg" in bad.output


def test_synth_function_rejects_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match=re.escape("must end in .parquet or .csv")):
        synth_heparin(tmp_path / "x.json", n_patients=5)


def test_train_function_refuses_existing_folder(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match=re.escape(EXISTS_MESSAGE.format(path=out))):
        train_omg(tmp_path / "d.parquet", tmp_path / "d.toml", out)
    assert (out / "keep.txt").read_text() == "x"


def _train_refused(tmp_path, monkeypatch, edit, levels=None):
    """``train --algo omg`` on a 15-patient heparin panel changed by ``edit(frame)``.

    ``levels`` replaces the manifest's action levels. Checks that it exits 2 before training
    and writes nothing; returns the one-line output and the panel and manifest paths.
    """
    import pandas as pd

    from equicare.cli import app

    res = synth_heparin(tmp_path / "panel.parquet", n_patients=15, seed=0,
                        manifest=tmp_path / "manifest.toml")
    df = pd.read_parquet(res["data"])
    edit(df)
    df.to_parquet(res["data"])
    man = Path(res["manifest"])
    if levels is not None:
        man.write_text(re.sub(r"levels = \[.*\]", f"levels = {levels}", man.read_text()))
    monkeypatch.setattr(OMG, "_fit", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "run"
    cli = CliRunner().invoke(app, ["train", str(res["data"]), "-m", str(man), "--algo", "omg",
                                   "--small", "--no-progress", "--out", str(out)])
    assert cli.exit_code == 2, cli.output
    assert not out.exists()
    return cli.output.replace("\n", ""), res["data"], man


def test_episodes_of_one_row_are_refused_before_training(tmp_path, monkeypatch):
    def one_row(df):
        df["patient_id"], df["step"], df["done"] = np.arange(len(df)), 0, 0

    said, data, man = _train_refused(tmp_path, monkeypatch, one_row)
    assert said == (
        f"error: {data} has no transitions (every episode has one row); OMG learns the "
        "dynamics from consecutive rows of an episode (only the model-free, known-reward variant "
        "trains on single rows).")
    from equicare.data import load_dataset

    ds = load_dataset(data, man, emit_warnings=False)
    with pytest.raises(DataValidationError, match=re.escape(
            f"{data} has no transitions (every episode has one row)")):
        OMG(OMGConfig(), random_state=0).fit(ds)


def test_one_action_is_refused_naming_the_panel_file(tmp_path, monkeypatch):
    """A one-level action column: one line naming the panel file and the action space."""
    def one_level(df):
        df["rate"] = "0U"

    said, data, _ = _train_refused(tmp_path, monkeypatch, one_level, levels='["0U"]')
    assert said == (
        f"error: {data}: OMG needs at least 2 actions; the manifest's action space (rate: "
        "1 level) has 1, so there is no choice to learn a reward or a policy for. Expected an "
        "action column with 2 or more levels.")


# ---------------------------------------------------------------------------- full size (slow)
@pytest.mark.slow
def test_full_size_claims():
    """2,000 patients, default configuration. Numbers recorded in docs/dosing.md."""
    from scipy.stats import spearmanr

    from equicare.sim.heparin import clinical_reward, evaluate_heparin_policy

    train, test = heparin_dataset(2000, random_state=0), heparin_dataset(500, random_state=1000)
    omg = OMG(OMGConfig(), random_state=0).fit(train)
    known = OMG(OMGConfig(reward="dataset"), random_state=0).fit(train, dynamics=omg.dynamics_)
    # learned reward of held-out states vs the clinical reward of their aPTT
    s = test.states
    rho_states = spearmanr(omg.learned_reward(s, test.actions, s), clinical_reward(s[:, 0]))[0]
    assert rho_states >= 0.7
    # stricter: per held-out transition, r(s') vs the logged r_p (observed 0.71-0.72)
    has = test.next_index >= 0
    rho_rows = spearmanr(omg.dataset_reward(test)[has], test.rewards[has])[0]
    assert rho_rows >= 0.65
    grid = omg.reward_grid("aptt", np.arange(20.0, 181.0, 5.0), linked=("aptt_prev",))
    peak = grid["aptt"][grid["reward"].idxmax()]
    assert 60.0 <= peak <= 100.0
    # policy, evaluated in the true simulator
    beh = evaluate_heparin_policy("behavior", n_patients=4000, random_state=7)
    ev = evaluate_heparin_policy(omg, n_patients=4000, random_state=7, greedy=True)
    ref = evaluate_heparin_policy(known, n_patients=4000, random_state=7, greedy=True)
    d, se, _ = ev.difference(beh, "tir")
    assert d > 3 * se
    d_ae, se_ae, _ = ev.difference(beh, "ae_rate")
    assert d_ae < 2 * se_ae                               # not worse than the nomogram
    gap_known, _, _ = ref.difference(ev, "tir")
    assert gap_known < 0.05                               # within 5 points of known-reward SAC
    assert np.isfinite(ev.tir_gap) and ev.tir_gap < beh.tir_gap


def test_categorical_states_draw_a_warning_naming_them(monkeypatch):
    """OMG reads numeric states only; a categorical column was dropped without a word."""
    from dataclasses import replace

    from equicare.exceptions import DataWarning

    ds = heparin_dataset(4, random_state=0)
    cat = (np.arange(ds.n_steps) % 2).astype(np.int64)[:, None]
    ds = replace(ds, categorical=cat, categorical_names=("site",),
                 categorical_levels=(("a", "b"),))
    monkeypatch.setattr(OMG, "_fit", lambda *a, **k: None)
    with pytest.warns(DataWarning, match="categorical state column\\(s\\) 'site' are not used"):
        OMG(OMGConfig.small(), random_state=0).fit(ds)


# ---------------------------------------------------------------------------- privacy
def _saved_numbers(folder) -> np.ndarray:
    """Every number a model folder saves except network weights and biases (learned parameters,
    not copies of data): config.json, metrics.json, reward_grid.csv, and the other tensors
    (normalisation, log-variance bounds, temperature)."""
    import pandas as pd
    from safetensors.numpy import load_file

    found: list[float] = []

    def walk(o):
        if isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        elif isinstance(o, (int, float)) and not isinstance(o, bool):
            found.append(float(o))

    for name in ("config.json", "metrics.json"):
        walk(json.loads((folder / name).read_text()))
    found += pd.read_csv(folder / "reward_grid.csv").to_numpy(dtype=np.float64).ravel().tolist()
    for key, t in load_file(str(folder / "model.safetensors")).items():
        if not key.endswith(("weight", "bias")) and t.dtype.kind == "f":
            found += t.astype(np.float64).ravel().tolist()
    return np.asarray(found)


def test_model_folder_holds_no_row_level_state_value(tmp_path):
    """No saved number equals a value of the panel's state columns that fewer than 11 rows
    share (a value shared by 11 rows or more, e.g. a dose level, 0/1 or a clock time, identifies
    nobody). The extremes (min and max) used to be saved as clipping bounds, the spline knots
    of INR(PT) were exact rows, the median state was a row's value."""
    import pandas as pd

    data, manifest = tmp_path / "hep.parquet", tmp_path / "hep.toml"
    synth_heparin(data, n_patients=60, seed=0, manifest=manifest)
    out = tmp_path / "m"
    train_omg(data, manifest, out, config=OMGConfig.small(), seed=0)
    from equicare.data import load_dataset

    ds = load_dataset(data, manifest, emit_warnings=False)
    panel = pd.read_parquet(data)[list(ds.state_names)].to_numpy(np.float64)
    # compared in float32 (the precision the model works in; equal float64 values stay equal)
    vals, counts = np.unique(panel.astype(np.float32), return_counts=True)
    rare = vals[counts < 11]
    leaked = np.intersect1d(_saved_numbers(out).astype(np.float32), rare)
    assert leaked.size == 0, f"row-level values saved in the model folder: {leaked[:10]}"
    # the model still predicts in range on its training rows
    back = OMG.load(out)
    ns = back.dynamics_.predict(ds.states, ds.actions, random_state=0)[0]
    inr = list(ds.state_names).index("inr")
    pt = list(ds.state_names).index("pt")
    assert np.isfinite(ns).all()
    assert np.corrcoef(ns[:, pt], ns[:, inr])[0, 1] > 0.99     # INR still follows PT


def test_reward_grid_is_written_for_the_panels_own_state_column(tmp_path):
    """A panel whose aPTT column is not named 'aptt' got no reward_grid.csv without a word; the
    grid now uses the manifest's first state column and moves its detected copy with it."""
    import pandas as pd

    data, manifest = tmp_path / "hep.parquet", tmp_path / "hep.toml"
    synth_heparin(data, n_patients=40, seed=0, manifest=manifest)
    rename = {"aptt": "aPTT_sec", "aptt_prev": "aPTT_prev_sec"}
    pd.read_parquet(data).rename(columns=rename).to_parquet(data)
    text = manifest.read_text()
    for old, new in rename.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    manifest.write_text(text)
    res = train_omg(data, manifest, tmp_path / "m", config=OMGConfig.small(), seed=0)
    assert res["reward_grid"] == {"feature": "aPTT_sec", "linked": ["aPTT_prev_sec"]}
    grid = pd.read_csv(tmp_path / "m" / "reward_grid.csv")
    assert list(grid.columns) == ["aPTT_sec", "reward"] and len(grid) == 81
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["reward_grid"] == res["reward_grid"]
    with pytest.raises(DataValidationError, match="grid_feature 'ptt' is not a state column"):
        train_omg(data, manifest, tmp_path / "m2", config=OMGConfig.small(), grid_feature="ptt")


def test_fit_and_predict_on_an_array_name_the_argument(small_fit):
    """OMG.fit(ndarray) raised AttributeError: 'numpy.ndarray' object has no attribute ..."""
    from equicare.dosing._omg import NOT_A_DATASET_MESSAGE
    from equicare.exceptions import InvalidParameterError

    ds, model = small_fit
    got = f"numpy.ndarray of shape {ds.states.shape}"
    with pytest.raises(InvalidParameterError, match=re.escape(
            NOT_A_DATASET_MESSAGE.format(method="fit", got=got))):
        OMG(OMGConfig.small()).fit(ds.states)
    with pytest.raises(InvalidParameterError, match=re.escape(
            NOT_A_DATASET_MESSAGE.format(method="action_probs", got=got))):
        model.action_probs(ds.states)
