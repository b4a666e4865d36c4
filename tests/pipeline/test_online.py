"""Tests of the online experiment runner, its statistics, figures and the ``online`` CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from equicare.cli._online import run_online
from equicare.pipeline._online import (
    EXISTS_MESSAGE,
    OnlineExperimentConfig,
    compare_runs,
    evaluate_hospital_policy,
    lambda_sweep,
    run_experiment,
    run_seed,
    seed_mean_ci,
)

TINY = {"steps": 4 * 168, "n_envs": 4, "eval_episodes": 4}


def test_config_round_trip_and_learner_config() -> None:
    cfg = OnlineExperimentConfig(algo="grpo", lam=0.4, mode="dro", steps=1000)
    assert OnlineExperimentConfig.from_dict(cfg.to_dict()) == cfg
    lc = cfg.learner_config()
    assert type(lc).__name__ == "GRPOConfig" and lc.lam == 0.4 and lc.total_steps == 1000
    assert cfg.label == "grpo-dro-0.4"
    assert OnlineExperimentConfig().label == "ppo"
    with pytest.raises(ValueError, match=re.escape(
            "The 'scenario' parameter of OnlineExperimentConfig must be one of")):
        OnlineExperimentConfig(scenario="moon")
    with pytest.raises(ValueError, match=re.escape("The 'total_steps' parameter of PPOConfig")):
        OnlineExperimentConfig(steps=0)


def test_seed_mean_ci_keeps_its_level_with_few_seeds() -> None:
    """The percentile bootstrap it replaces covered 51% of normal draws with 2 seeds (the range
    of the two values), 74% with 3, 85% with 5, 90% with 10; the t interval keeps 95%."""
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        draws = rng.normal(2.0, 1.0, size=(2000, n))
        ci = np.array([seed_mean_ci(x)["ci"] for x in draws])
        cover = np.mean((ci[:, 0] <= 2.0) & (2.0 <= ci[:, 1]))
        assert 0.935 <= cover <= 0.965, (n, cover)
    x = rng.normal(2.0, 1.0, size=400)
    s = seed_mean_ci(x)
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert s["mean"] == pytest.approx(x.mean()) and s["ci_method"] == "student_t"
    assert s["ci"][1] - s["mean"] == pytest.approx(1.966 * se, rel=1e-3)
    assert seed_mean_ci([np.nan])["n"] == 0


def test_evaluate_baselines_share_patients() -> None:
    a = evaluate_hospital_policy("fcfs", "urban", n_episodes=16, random_state=3)
    b = evaluate_hospital_policy("random", "urban", n_episodes=16, random_state=3)
    c = evaluate_hospital_policy(lambda e, o, m: e.fcfs_actions(), "urban", n_episodes=16,
                                 random_state=3)
    assert c == a  # a callable and a named baseline face the very same episodes
    for g in a["groups"]:
        assert a["groups"][g]["arrived"] == b["groups"][g]["arrived"]  # same patients
    assert a["worst_group_wait"] >= a["groups"]["adult"]["mean_wait"]
    assert a["wait_gap"] == pytest.approx(a["worst_group_wait"] - a["best_group_wait"])


def test_run_seed_is_deterministic_and_paired() -> None:
    cfg = OnlineExperimentConfig(**TINY)
    r1 = run_seed(cfg, 1)
    r2 = run_seed(cfg.to_dict(), 1)
    assert r1["final"] == r2["final"] and r1["curve"] == r2["curve"]
    assert len(r1["curve"]) == 1  # one batch of training episodes ended
    assert set(r1["baselines"]) == {"fcfs", "severity_first", "random"}
    json.dumps(r1)  # JSON-ready
    g = run_seed(OnlineExperimentConfig(**TINY, algo="grpo", lam=0.0), 1)
    assert g["final"] == r1["final"]  # lambda = 0 is PPO exactly
    c = compare_runs([r1], [g])
    assert c["worst_group_wait"]["mean"] == 0.0 and c["seeds"] == [1]


def test_run_experiment_writes_and_refuses_overwrite(tmp_path: Path) -> None:
    cfg = OnlineExperimentConfig(**TINY)
    out = tmp_path / "exp"
    res = run_experiment(cfg, seeds=2, out=out)
    for name in ("results.json", "config.json", "curves.csv", "final_groups.csv",
                 "seeds/seed_0.json", "seeds/seed_1.json"):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["ppo"]["n_seeds"] == 2
    assert {"ppo", "baseline:fcfs"} <= set(res["summary"])
    header = (out / "final_groups.csv").read_text().splitlines()[0]
    assert header.startswith("seed,policy,group,mean_wait,p90_wait")
    with pytest.raises(FileExistsError, match=re.escape(
            EXISTS_MESSAGE.format(path=out, name="results.json"))):
        run_experiment(cfg, seeds=2, out=out)
    before = json.loads((out / "results.json").read_text())
    run_experiment(cfg, seeds=[0, 1], out=out, force=True)
    after = json.loads((out / "results.json").read_text())
    assert after["summary"] == before["summary"]  # same seeds, same numbers (timings differ)
    assert [r["final"] for r in after["seeds"]] == [r["final"] for r in before["seeds"]]


def test_force_replaces_earlier_outputs_whole_and_keeps_user_files(tmp_path: Path) -> None:
    cfg = OnlineExperimentConfig(**TINY, baselines=False)
    out = tmp_path / "exp"
    lambda_sweep(cfg, [0.0, 0.5], seeds=1, out=out)
    (out / "frontier.png").write_bytes(b"old figure")
    (out / "notes.txt").write_text("mine")
    # a single run into a sweep folder is refused (frontier.json marks it), before training
    with pytest.raises(FileExistsError, match=re.escape(
            EXISTS_MESSAGE.format(path=out, name="frontier.json"))):
        run_experiment(cfg, seeds=1, out=out)
    # a smaller grid with force: no stale lambda_0.5/, figures of the old sweep gone
    lambda_sweep(cfg, [0.0], seeds=1, out=out, force=True)
    assert not (out / "lambda_0.5").exists() and (out / "lambda_0" / "results.json").exists()
    assert not (out / "frontier.png").exists()
    assert (out / "notes.txt").read_text() == "mine"
    # a sweep replaced by a single run: no frontier left behind
    run_experiment(cfg, seeds=1, out=out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "curves.csv", "final_groups.csv", "notes.txt", "results.json", "seeds"]


def test_partial_results_are_refused_without_force(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    (out / "seeds").mkdir(parents=True)
    (out / "learning_curves.png").write_bytes(b"old")
    cfg = OnlineExperimentConfig(**TINY, baselines=False)
    with pytest.raises(FileExistsError, match="already holds results"):
        run_experiment(cfg, seeds=1, out=out)
    with pytest.raises(FileExistsError, match="already holds results"):
        lambda_sweep(cfg, [0.0], seeds=1, out=out)


@pytest.mark.parametrize("force", [False, True])
def test_folder_without_online_results_is_refused_before_training(
        tmp_path: Path, force: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import equicare.pipeline._online as mod

    monkeypatch.setattr(mod, "_run_many", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data.csv").write_text("x")
    cfg = OnlineExperimentConfig(**TINY)
    for run in (lambda: run_experiment(cfg, seeds=1, out=out, force=force),
                lambda: lambda_sweep(cfg, [0.0], seeds=1, out=out, force=force)):
        with pytest.raises(FileExistsError, match="holds no equicare online results"):
            run()
    assert [p.name for p in out.iterdir()] == ["data.csv"]


def test_run_seed_pickles() -> None:
    import pickle

    cfg = OnlineExperimentConfig(**TINY)
    assert pickle.loads(pickle.dumps(run_seed)) is run_seed
    assert pickle.loads(pickle.dumps(cfg.to_dict())) == cfg.to_dict()


@pytest.mark.slow
def test_process_pool_gives_the_same_numbers() -> None:
    cfg = OnlineExperimentConfig(**TINY, baselines=False)
    inline = run_experiment(cfg, seeds=2, jobs=1)
    pooled = run_experiment(cfg, seeds=2, jobs=2)
    assert [r["final"] for r in inline["seeds"]] == [r["final"] for r in pooled["seeds"]]


def test_lambda_sweep_and_figures(tmp_path: Path) -> None:
    from equicare.report._online_figures import (
        plot_frontier,
        plot_group_waits,
        plot_learning_curves,
    )

    cfg = OnlineExperimentConfig(**TINY, baselines=False)
    sweep = lambda_sweep(cfg, [0.5, 0.0], seeds=2, out=tmp_path / "sw")
    assert sweep["lambdas"] == [0.0, 0.5]
    assert sweep["frontier"][0]["vs_lambda0"]["mean_wait"]["mean"] == 0.0
    assert (tmp_path / "sw" / "frontier.csv").exists()
    assert (tmp_path / "sw" / "lambda_0.5" / "results.json").exists()
    fig = plot_frontier(sweep)
    assert len(fig.axes) == 1
    runs: dict[str, Any] = {k: v for k, v in sweep["runs"].items()}
    assert plot_learning_curves(runs).axes[0].get_xlabel() == "environment steps"
    assert plot_group_waits(runs, include_baselines=False).axes[0].get_ylabel() == "mean wait (h)"


def _app() -> Any:
    from equicare.cli import app

    return app


def test_cli_runs_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["online", "--env", "hospital", "--scenario", "rural", "--algo", "grpo", "--lambda",
            "0.3", "--seeds", "2", "--steps", str(4 * 168), "--n-envs", "4",
            "--eval-episodes", "4", "--out", str(out)]
    res = runner.invoke(_app(), args)
    assert res.exit_code == 0, res.output
    assert "grpo-max-0.3" in res.output and "baseline:fcfs" in res.output
    assert (out / "results.json").exists() and (out / "learning_curves.png").exists()
    res2 = runner.invoke(_app(), args)
    assert res2.exit_code == 2
    assert "already holds results" in res2.output
    assert "Traceback" not in res2.output
    # a sweep into the single-run folder is refused too (its figures are not overwritten)
    png = (out / "learning_curves.png").read_bytes()
    sweep = [a for a in args if a not in ("--lambda", "0.3")] + ["--lambdas", "0,0.5"]
    res3 = runner.invoke(_app(), sweep)
    assert res3.exit_code == 2 and "already holds results (results.json)" in res3.output
    assert (out / "learning_curves.png").read_bytes() == png


@pytest.mark.parametrize(("extra", "message"), [
    (["--scenario", "moon"], "Invalid value for '--scenario'"),
    (["--algo", "ppo", "--lambdas", "0,0.5"], "--lambdas does not apply to --algo ppo"),
    # GRPO options given to PPO were ignored without a word
    (["--algo", "ppo", "--lambda", "0.5"], "--lambda does not apply to --algo ppo"),
    (["--algo", "ppo", "--mode", "dro"], "--mode does not apply to --algo ppo"),
    (["--group-signal", "welfare"], "--group-signal does not apply to --algo ppo"),
    (["--algo", "grpo", "--lambda", "0.3", "--lambdas", "0,1"],
     "--lambda does not apply to a --lambdas sweep"),
    (["--algo", "grpo", "--lambdas", "0,x"], "--lambdas must be comma-separated numbers"),
    (["--algo", "grpo", "--lambda", "2"], "The 'lam' parameter of OnlineExperimentConfig"),
])
def test_cli_bad_options(tmp_path: Path, extra: list[str], message: str) -> None:
    res = CliRunner().invoke(_app(), ["online", "--out", str(tmp_path / "x"), "--steps", "672",
                                      "--n-envs", "4", "--eval-episodes", "4", *extra])
    assert res.exit_code == 2
    assert message in res.output


def test_run_online_sweep(tmp_path: Path) -> None:
    r = run_online(out=tmp_path / "s", algo="grpo", lambdas="0,1", seeds=1, steps=4 * 168,
                   n_envs=4, eval_episodes=4, figures=False, group_signal="welfare")
    assert r["kind"] == "sweep" and r["lambdas"] == [0.0, 1.0]
    from equicare.cli._online import format_summary

    assert "lambda" in format_summary(r)


def test_one_seed_has_no_interval_and_says_why(tmp_path: Path) -> None:
    """One seed printed zero-width intervals ([x, x]) as if the run were exact."""
    from equicare.pipeline._online import ONE_SEED_REASON

    s = seed_mean_ci([3.0])
    assert s["ci"] is None and s["ci_reason"] == ONE_SEED_REASON and s["mean"] == 3.0
    assert seed_mean_ci([1.0, 2.0])["ci_reason"] is None
    res = CliRunner().invoke(_app(), [
        "online", "--seeds", "1", "--steps", str(4 * 168), "--n-envs", "4", "--eval-episodes",
        "4", "--no-figures", "--no-progress", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "[n/a]" in res.output and f"n/a: {ONE_SEED_REASON}" in res.output
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    ret = saved["summary"]["ppo"]["return"]
    assert ret["ci"] is None and ret["ci_reason"] == ONE_SEED_REASON


def test_progress_follows_the_environment_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """online showed nothing while it trained; now a bar over every seed's environment steps."""
    import equicare._progress as prog

    seen: list[tuple[str, float | None, list[float]]] = []

    class Task:
        def __init__(self, total: float | None) -> None:
            self.done: list[float] = []
            self.total = total
            self.value = 0.0

        def update(self, *, completed: float | None = None, advance: float | None = None,
                   info: str | None = None, total: float | None = None) -> None:
            if completed is not None:
                self.value = completed
            if advance is not None:
                self.value += advance
            self.done.append(self.value)

    import contextlib

    @contextlib.contextmanager
    def fake(description: str, total: float | None, *, enabled: bool = True, **_: Any):
        t = Task(total)
        yield t
        seen.append((description, total, t.done))

    monkeypatch.setattr(prog, "progress_task", fake)
    cfg = OnlineExperimentConfig(**TINY, baselines=False)
    run_experiment(cfg, seeds=2, progress=True)
    (desc, total, done), = seen
    assert desc == "online (ppo)" and total == 2 * 4 * 168
    assert done[-1] == total and len(set(done)) > 20          # moves during training
    assert done == sorted(done)


def test_compare_runs_names_a_wrong_argument() -> None:
    """compare_runs(run_experiment(...), ...) raised TypeError: string indices must be integers."""
    from equicare.exceptions import InvalidParameterError

    run = {"seed": 0, "final": {k: 1.0 for k in ("return", "mean_wait", "worst_group_wait",
                                                  "wait_gap", "critical_waits")}}
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'base' parameter of compare_runs must be a list of run_seed outputs")) as e:
        compare_runs({"config": {}, "summary": {}, "seeds": [run]}, [run])
    assert "pass its ['seeds']" in str(e.value)
    with pytest.raises(InvalidParameterError, match="The 'other' parameter of compare_runs"):
        compare_runs([run], [1, 2])
    with pytest.raises(InvalidParameterError, match=re.escape("have no seed in common")):
        compare_runs([run], [{**run, "seed": 1}])
    assert compare_runs([run], [run])["seeds"] == [0]


def test_steps_rounded_to_whole_rollouts_are_said_and_recorded(tmp_path: Path) -> None:
    """--steps 1000 ran 672 steps (whole rollouts of 4 x 168) without a word."""
    res = CliRunner().invoke(_app(), [
        "online", "--seeds", "1", "--steps", "1000", "--n-envs", "4", "--eval-episodes", "4",
        "--no-figures", "--no-progress", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert ("trained 672 environment steps per seed (1 rollout of 4 environments x 168 "
            "steps); --steps 1,000 is rounded down to whole rollouts") in res.output
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["training"] == {"steps_requested": 1000, "env_steps": 672, "rollouts": 1,
                                 "n_envs": 4, "n_steps": 168}
    assert saved["seeds"][0]["env_steps"] == 672


def test_seed_draws_an_independent_replication(tmp_path: Path) -> None:
    """--seed S runs seeds S..S+n-1 (the runs used 0..n-1 whatever the user wanted, so no
    independent replication could be drawn); the default keeps seed 0."""
    args = ["online", "--seeds", "1", "--steps", str(4 * 168), "--n-envs", "4",
            "--eval-episodes", "4", "--no-figures", "--no-progress"]
    runs = {}
    for name, extra in (("a", []), ("b", ["--seed", "0"]), ("c", ["--seed", "7"])):
        res = CliRunner().invoke(_app(), [*args, *extra, "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
    seeds = {k: [s["seed"] for s in v["seeds"]] for k, v in runs.items()}
    assert seeds == {"a": [0], "b": [0], "c": [7]}
    assert runs["a"]["summary"] == runs["b"]["summary"] != runs["c"]["summary"]
