"""Command line of online experiments: ``equicare online`` (plain functions + ``register``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from equicare.cli._choices import Env, GroupSignal, Mode, OnlineAlgo, Scenario
from equicare.cli._utils import Force, JsonOut, Progress, Threads, print_json, user_errors
from equicare.exceptions import InvalidParameterError

__all__ = ["run_online", "format_summary", "register"]


def _parse_lambdas(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise InvalidParameterError(
            f"--lambdas must be comma-separated numbers in [0, 1]; got {text!r}.") \
            from exc
    if not vals or any(not 0.0 <= v <= 1.0 for v in vals):
        raise InvalidParameterError(
            f"--lambdas must be comma-separated numbers in [0, 1]; got {text!r}.")
    return vals


def run_online(
    *,
    out: str | Path,
    env: str = "hospital",
    scenario: str = "urban",
    algo: str = "ppo",
    lam: float = 0.3,
    lambdas: str | list[float] | None = None,
    mode: str = "max",
    group_signal: str = "served",
    seeds: int = 5,
    seed: int = 0,
    steps: int = 200_000,
    n_envs: int = 16,
    jobs: int = 1,
    eval_episodes: int = 512,
    force: bool = False,
    figures: bool = True,
    progress: bool = False,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run an online experiment (or a lambda sweep) and write its results folder.

    Parameters mirror the CLI options (``progress``: a bar over the seeds' environment steps;
    the runs use seeds ``seed .. seed + seeds - 1``; ``provenance``: the command's block,
    written into ``results.json`` and ``frontier.json``).
    With ``lambdas`` the run is a GRPO sweep over those
    values (``algo`` must be ``'grpo'``) and the folder gets ``frontier.json`` / ``.csv``.

    Returns
    -------
    dict
        ``{"kind": "experiment", "summary": ...}`` or ``{"kind": "sweep", "frontier": ...}``
        plus ``out``, ``training`` (the environment steps each seed ran: ``steps`` rounded down
        to whole rollouts of ``n_envs * n_steps``) and ``figures`` (paths written).

    Raises
    ------
    ValueError
        Bad option values (one clear message).
    FileExistsError
        ``out`` already holds online results and ``force`` is false, or is a non-empty folder
        holding none.
    """
    from equicare.pipeline._online import (
        OnlineExperimentConfig,
        lambda_sweep,
        run_experiment,
    )

    cfg = OnlineExperimentConfig(env=env, scenario=scenario, algo=algo, lam=lam,  # type: ignore[arg-type]
                                 mode=mode, group_signal=group_signal,  # type: ignore[arg-type]
                                 steps=steps, n_envs=n_envs, eval_episodes=eval_episodes)
    folder = Path(out)
    written: list[str] = []
    seed_list = list(range(seed, seed + seeds))
    if lambdas is not None:
        lams = _parse_lambdas(lambdas) if isinstance(lambdas, str) else [float(v) for v in lambdas]
        if algo != "grpo":
            raise InvalidParameterError("--lambdas sweeps GRPO; use it with --algo grpo.")
        sweep = lambda_sweep(cfg, lams, seeds=seed_list, jobs=jobs, out=folder, force=force,
                             progress=progress, provenance=provenance)
        if figures:
            written = _sweep_figures(sweep, folder)
        return {"kind": "sweep", "out": str(folder), "training": sweep["training"],
                "lambdas": sweep["lambdas"], "frontier": sweep["frontier"], "figures": written}
    res = run_experiment(cfg, seeds=seed_list, jobs=jobs, out=folder, force=force,
                         progress=progress, provenance=provenance)
    if figures:
        written = _experiment_figures({cfg.label: res["seeds"]}, folder)
    return {"kind": "experiment", "out": str(folder), "label": cfg.label,
            "training": res["training"], "summary": res["summary"], "figures": written}


def _save(fig: Any, path: Path) -> str:
    from equicare.utils import atomic_write

    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    return str(path)


def _experiment_figures(runs: dict[str, Any], folder: Path) -> list[str]:
    from equicare.report._online_figures import plot_group_waits, plot_learning_curves

    return [_save(plot_learning_curves(runs), folder / "learning_curves.png"),
            _save(plot_group_waits(runs), folder / "group_waits.png")]


def _sweep_figures(sweep: dict[str, Any], folder: Path) -> list[str]:
    from equicare.report._online_figures import plot_frontier, plot_learning_curves

    runs = {f"λ={float(k):g}": v for k, v in sweep["runs"].items()}
    return [_save(plot_frontier(sweep), folder / "frontier.png"),
            _save(plot_frontier(sweep, y="wait_gap"), folder / "frontier_gap.png"),
            _save(plot_learning_curves(runs), folder / "learning_curves.png")]


def _fmt(s: dict[str, Any], digits: int = 2) -> str:
    if s["ci"] is None:   # one seed: no interval (the reason is printed under the table)
        return f"{s['mean']:.{digits}f} [n/a]"
    lo, hi = s["ci"]
    return f"{s['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def training_line(training: dict[str, Any]) -> str:
    """One line saying how many environment steps each seed ran (and why, when rounded)."""
    t = training
    plural = "" if t["rollouts"] == 1 else "s"
    line = (f"trained {t['env_steps']:,} environment steps per seed ({t['rollouts']} "
            f"rollout{plural} of {t['n_envs']} environments x {t['n_steps']} steps)")
    if t["env_steps"] != t["steps_requested"]:
        line += (f"; --steps {t['steps_requested']:,} is rounded "
                 f"{'down' if t['env_steps'] < t['steps_requested'] else 'up'} to whole "
                 "rollouts")
    return line


def _reasons(stats: list[dict[str, Any]]) -> list[str]:
    return sorted({s["ci_reason"] for s in stats if s.get("ci") is None and s.get("ci_reason")})


def format_summary(result: dict[str, Any]) -> str:
    """Plain-text table of :func:`run_online` output (means and 95% Student-t CIs over seeds)."""
    lines = []
    shown: list[dict[str, Any]] = []
    if result["kind"] == "experiment":
        lines.append(f"{'policy':24s} {'return':>24s} {'mean wait h':>22s} "
                     f"{'worst-group wait h':>22s} {'wait gap h':>22s}")
        for label, s in result["summary"].items():
            shown += [s[k] for k in ("return", "mean_wait", "worst_group_wait", "wait_gap")]
            lines.append(f"{label:24s} {_fmt(s['return'], 1):>24s} {_fmt(s['mean_wait']):>22s} "
                         f"{_fmt(s['worst_group_wait']):>22s} {_fmt(s['wait_gap']):>22s}")
    else:
        lines.append(f"{'lambda':>6s} {'return':>24s} {'mean wait h':>22s} "
                     f"{'worst-group wait h':>22s} {'wait gap h':>22s} "
                     f"{'d worst vs min lambda':>24s}")
        for f in result["frontier"]:
            shown += [f[k] for k in ("return", "mean_wait", "worst_group_wait", "wait_gap")]
            shown.append(f["vs_lambda0"]["worst_group_wait"])
            lines.append(f"{f['lam']:6g} {_fmt(f['return'], 1):>24s} {_fmt(f['mean_wait']):>22s} "
                         f"{_fmt(f['worst_group_wait']):>22s} {_fmt(f['wait_gap']):>22s} "
                         f"{_fmt(f['vs_lambda0']['worst_group_wait']):>24s}")
    lines += [f"n/a: {r}" for r in _reasons(shown)]
    if "training" in result:
        lines.append(training_line(result["training"]))
    lines.append(f"results: {result['out']}")
    return "\n".join(lines)


def register(app: Any) -> None:
    """Add the ``online`` command to a :class:`typer.Typer` app."""
    import typer


    @app.command("online")  # type: ignore[untyped-decorator, unused-ignore]
    def online(
        out: Annotated[Path, typer.Option(
            "--out", "-o", help="Results folder (refuses to overwrite earlier results without "
                                "--force).")],
        env: Annotated[Env, typer.Option(help="Simulator.")] = Env.HOSPITAL,
        scenario: Annotated[Scenario, typer.Option(help="Hospital scenario.")
                            ] = Scenario.URBAN,
        algo: Annotated[OnlineAlgo, typer.Option(
            help="Learner: ppo or grpo (group-robust PPO).")] = OnlineAlgo.PPO,
        lam: Annotated[float | None, typer.Option(
            "--lambda", help="GRPO weight of the worst group's loss, in [0, 1] "
                             "[default: 0.3].")] = None,
        lambdas: Annotated[str | None, typer.Option(
            help="Sweep GRPO over these lambdas (comma-separated) for the efficiency-equity "
                 "frontier, e.g. 0,0.3,0.6,1.")] = None,
        mode: Annotated[Mode | None, typer.Option(
            help="GRPO robust term: max (worst group) or dro (exponentiated-gradient "
                 "weights) [default: max].")] = None,
        group_signal: Annotated[GroupSignal | None, typer.Option(
            help="GRPO group losses: served (decisions grouped by the patient served) or "
                 "welfare (each group's own waiting cost) [default: served].")] = None,
        seeds: Annotated[int, typer.Option(
            min=1, help="Number of seeds (runs use seeds S..S+n-1, S from --seed).")] = 5,
        seed: Annotated[int, typer.Option(
            min=0, help="First seed S (another S draws an independent replication).")] = 0,
        steps: Annotated[int, typer.Option(
            min=1, help="Training environment steps per seed, run in whole rollouts of "
                        "n-envs x 168 steps (rounded down; the run says what it ran).")] = 200_000,
        n_envs: Annotated[int, typer.Option(
            min=1, help="Vectorised environments per learner.")] = 16,
        jobs: Annotated[int, typer.Option(min=1, help="Worker processes for the seeds.")] = 1,
        eval_episodes: Annotated[int, typer.Option(
            min=1, help="Evaluation episodes per seed.")] = 512,
        figures: Annotated[bool, typer.Option(
            help="Write PNG figures next to the results.")] = True,
        force: Force = False,
        json_out: JsonOut = False,
        progress: Progress = True,
        threads: Threads = "auto",
    ) -> None:
        """Train PPO or group-robust PPO online over seeds; write curves and group metrics.

        It reads no panel, so it has no streamed mode (no --chunk-rows).

        Example: equicare online --env hospital --scenario urban --algo grpo --lambda 0.3
        --seeds 5 --steps 200000 --out runs/urban_grpo
        """
        from equicare.cli._utils import not_applicable

        if algo is not OnlineAlgo.GRPO:
            not_applicable({"--lambda": lam is not None, "--lambdas": lambdas is not None,
                            "--mode": mode is not None,
                            "--group-signal": group_signal is not None},
                           f"--algo {algo.value} (GRPO options; use --algo grpo)")
        elif lambdas is not None:
            not_applicable({"--lambda": lam is not None}, "a --lambdas sweep")
        from equicare.cli._utils import check_out_folder

        check_out_folder(out)
        from equicare.cli._utils import provenance

        with user_errors():
            result = run_online(out=out, env=env.value, scenario=scenario.value,
                                algo=algo.value, lam=0.3 if lam is None else lam,
                                lambdas=lambdas, mode=(mode or Mode.MAX).value,
                                group_signal=(group_signal or GroupSignal.SERVED).value,
                                seeds=seeds, seed=seed, steps=steps,
                                n_envs=n_envs, jobs=jobs, eval_episodes=eval_episodes,
                                force=force, figures=figures, progress=progress,
                                provenance=provenance({}))
        if json_out:
            print_json(result)
            return
        typer.echo(format_summary(result))
