r"""Online experiments as code: seeds, learning curves, group metrics, frontiers, CIs over seeds.

One seed is one call of the top-level, picklable :func:`run_seed` (so any executor can run it);
:func:`run_experiment` runs several seeds (in a process pool with ``jobs > 1``) and writes the
results atomically; :func:`lambda_sweep` runs GRPO over a grid of :math:`\lambda` and summarises
the efficiency-versus-equity frontier. Every number comes from a real run: nothing is filled in.

Seeds pair runs: seed ``s`` gives the same initial weights, the same training environment stream
and the same evaluation episodes (common random numbers: arrivals and lengths of stay do not
depend on the policy) for every learner, so differences between learners are paired by seed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from equicare.exceptions import InvalidParameterError
from equicare.utils import (
    PARAM_MESSAGE,
    atomic_write_text,
    check_out_location,
    check_param,
    check_random_state,
)

__all__ = [
    "OnlineExperimentConfig",
    "run_seed",
    "run_experiment",
    "lambda_sweep",
    "evaluate_hospital_policy",
    "summarize_runs",
    "compare_runs",
    "seed_mean_ci",
    "EXISTS_MESSAGE",
]

#: Error when an output folder already holds results.
EXISTS_MESSAGE = "{path} already holds results ({name}); pass force=True (--force) to overwrite."

#: Files an online run (and its CLI figures) writes into a results folder; with ``force`` a run
#: replaces these (and ``seeds/``, ``lambda_<v>/``) whole and leaves any other file alone.
_OUTPUT_FILES = frozenset({
    "results.json", "config.json", "curves.csv", "final_groups.csv", "frontier.json",
    "frontier.csv", "learning_curves.png", "group_waits.png", "frontier.png",
    "frontier_gap.png"})
_MARKERS = ("results.json", "frontier.json")

#: ``ci_reason`` of a summary over one seed (one value has no spread to estimate).
ONE_SEED_REASON = "one seed gives no interval (run two or more seeds)"
#: ``ci_reason`` of a summary without any finite value.
NO_VALUE_REASON = "no finite value"

_OWNER = "OnlineExperimentConfig"
_EVAL_SEED_OFFSET = 1_000_003
_SUMMARY_METRICS = ("return", "mean_wait", "worst_group_wait", "wait_gap", "critical_waits")


@dataclass(frozen=True, kw_only=True)
class OnlineExperimentConfig:
    r"""One online experiment: environment, learner and budget (JSON round-trip).

    Parameters
    ----------
    env : {'hospital'}
        Simulator (the hospital patient-flow simulator of :mod:`equicare.sim.hospital`).
    scenario : str
        Hospital scenario (``urban``, ``rural``, ``paediatric``, ``surge``).
    algo : {'ppo', 'grpo'}
    lam : float
        GRPO's worst-group weight :math:`\lambda` (ignored by PPO).
    mode : {'max', 'dro'}
        GRPO's robust term.
    dro_step : float
        GRPO's exponentiated-gradient step (``mode='dro'``).
    group_signal : {'served', 'welfare'}
        GRPO's group losses: decisions grouped by the patient served (the issue's definition)
        or the groups' own waiting costs (see :mod:`equicare.online._grpo`).
    steps : int
        Training environment steps per seed.
    n_envs, n_steps, n_epochs, n_minibatches : int
        Vectorised environments, rollout length and update schedule of PPO.
    learning_rate, gamma, gae_lambda, ent_coef, clip_coef, reward_scale : float
        PPO hyperparameters (defaults tuned once on the urban scenario, see docs/online.md).
    hidden_sizes : tuple of int
    eval_episodes : int
        Evaluation episodes per seed (one vectorised batch).
    eval_deterministic : bool
        Evaluate the most probable action (else sample from the trained stochastic policy).
    baselines : bool
        Also evaluate first-come-first-served, severity-first and uniformly random policies on
        the same evaluation episodes.
    """

    env: Literal["hospital"] = "hospital"
    scenario: str = "urban"
    algo: Literal["ppo", "grpo"] = "ppo"
    lam: float = 0.3
    mode: Literal["max", "dro"] = "max"
    dro_step: float = 0.1
    group_signal: Literal["served", "welfare"] = "served"
    steps: int = 200_000
    n_envs: int = 16
    n_steps: int = 168
    n_epochs: int = 4
    n_minibatches: int = 4
    learning_rate: float = 1e-3
    gamma: float = 0.95
    gae_lambda: float = 0.9
    ent_coef: float = 0.01
    clip_coef: float = 0.2
    reward_scale: float = 0.1
    hidden_sizes: tuple[int, ...] = (64, 64)
    eval_episodes: int = 512
    eval_deterministic: bool = True
    baselines: bool = True

    def __post_init__(self) -> None:
        from equicare.sim.hospital import SCENARIOS

        check_param(self.env, "env", _OWNER, choices=("hospital",))
        check_param(self.scenario, "scenario", _OWNER, choices=SCENARIOS)
        check_param(self.algo, "algo", _OWNER, choices=("ppo", "grpo"))
        check_param(self.lam, "lam", _OWNER, kind=(int, float), low=0, high=1)
        check_param(self.mode, "mode", _OWNER, choices=("max", "dro"))
        check_param(self.group_signal, "group_signal", _OWNER, choices=("served", "welfare"))
        check_param(self.eval_episodes, "eval_episodes", _OWNER, kind=int, low=1)
        check_param(self.eval_deterministic, "eval_deterministic", _OWNER, kind=bool)
        check_param(self.baselines, "baselines", _OWNER, kind=bool)
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        self.learner_config()  # checks the learner fields with the learner's own messages

    def learner_config(self) -> Any:
        """Return the :class:`PPOConfig` / :class:`GRPOConfig` this experiment trains with."""
        from equicare.online._grpo import GRPOConfig
        from equicare.online._ppo import PPOConfig

        common: dict[str, Any] = {
            "total_steps": self.steps, "n_envs": self.n_envs, "n_steps": self.n_steps,
            "n_epochs": self.n_epochs, "n_minibatches": self.n_minibatches,
            "learning_rate": self.learning_rate, "gamma": self.gamma,
            "gae_lambda": self.gae_lambda, "ent_coef": self.ent_coef,
            "clip_coef": self.clip_coef, "reward_scale": self.reward_scale,
            "hidden_sizes": self.hidden_sizes, "clip_vloss": False, "torch_threads": 1,
        }
        if self.algo == "ppo":
            return PPOConfig(**common)
        return GRPOConfig(**common, lam=self.lam, mode=self.mode, dro_step=self.dro_step,
                          group_signal=self.group_signal)

    @property
    def env_steps_per_seed(self) -> int:
        """Environment steps one seed trains for.

        ``steps`` in whole rollouts of ``n_envs * n_steps``: rounded down, at least one rollout.
        """
        batch = self.n_envs * self.n_steps
        return max(self.steps // batch, 1) * batch

    def training(self) -> dict[str, int]:
        """What one seed trains for.

        ``steps_requested``, ``env_steps`` (whole rollouts), ``rollouts``, ``n_envs`` and
        ``n_steps`` (a rollout: ``n_envs * n_steps`` steps).
        """
        return {"steps_requested": self.steps, "env_steps": self.env_steps_per_seed,
                "rollouts": self.env_steps_per_seed // (self.n_envs * self.n_steps),
                "n_envs": self.n_envs, "n_steps": self.n_steps}

    @property
    def label(self) -> str:
        """Short name, e.g. ``ppo``, ``grpo-max-0.3`` or ``grpo-welfare-dro-0.3``."""
        if self.algo == "ppo":
            return "ppo"
        signal = "" if self.group_signal == "served" else "welfare-"
        return f"grpo-{signal}{self.mode}-{self.lam:g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of all fields."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnlineExperimentConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidParameterError(f"Unknown {cls.__name__} keys: {', '.join(unknown)}.")
        kwargs: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in data.items()}
        return cls(**kwargs)


# ---------------------------------------------------------------------- evaluation

def _metrics_from_episodes(m: dict[str, np.ndarray], group_names: Sequence[str]) -> dict[str, Any]:
    """Average per-episode metrics (arrays (n_episodes, n_groups)) into one result."""
    def mean_over(v: np.ndarray) -> np.ndarray:
        ok = np.isfinite(v)
        return np.where(ok.any(axis=0), np.where(ok, v, 0).sum(axis=0)
                        / np.maximum(ok.sum(axis=0), 1), np.nan)

    gmean = mean_over(m["mean_wait"])
    groups = {
        name: {"mean_wait": float(gmean[g]), "p90_wait": float(mean_over(m["p90_wait"])[g]),
               "treatment_rate": float(mean_over(m["treatment_rate"])[g]),
               "critical_waits": float(m["critical_waits"][:, g].mean()),
               "arrived": float(m["arrived"][:, g].mean()),
               "diverted": float(m["diverted"][:, g].mean())}
        for g, name in enumerate(group_names)
    }
    worst = int(np.nanargmax(gmean))
    ret = m["return"]
    return {
        "return": float(ret.mean()),
        "return_se": float(ret.std(ddof=1) / math.sqrt(ret.size)) if ret.size > 1 else math.nan,
        "mean_wait": float(np.nanmean(m["overall_mean_wait"])),
        "worst_group": group_names[worst],
        "worst_group_wait": float(gmean[worst]),
        "best_group_wait": float(np.nanmin(gmean)),
        "wait_gap": float(np.nanmax(gmean) - np.nanmin(gmean)),
        "critical_waits": float(m["critical_waits"].sum(axis=1).mean()),
        "diverted": float(m["diverted"].sum(axis=1).mean()),
        "n_episodes": int(ret.size),
        "groups": groups,
    }


def evaluate_hospital_policy(
    policy: Callable[[Any, np.ndarray, np.ndarray], np.ndarray] | str,
    hospital: Any,
    *,
    n_episodes: int = 128,
    random_state: int | np.random.Generator | None = None,
) -> dict[str, Any]:
    """Run ``n_episodes`` hospital episodes (one vectorised batch) and average group metrics.

    Parameters
    ----------
    policy : callable or {'fcfs', 'severity_first', 'random'}
        ``policy(env, obs, action_mask) -> actions`` with ``obs`` of shape
        (n_episodes, obs_dim), ``action_mask`` (n_episodes, n_actions); or a baseline name.
    hospital : HospitalConfig or str
        Scenario.
    n_episodes : int
    random_state : int, Generator or None
        Seeds the episodes (arrivals and stays do not depend on the policy, so two policies
        evaluated with the same seed face the same patients).

    Returns
    -------
    dict
        ``return`` (mean episode return), ``return_se``, ``mean_wait`` (hours, all patients),
        ``worst_group``, ``worst_group_wait``, ``best_group_wait``, ``wait_gap``,
        ``critical_waits``, ``diverted``, ``n_episodes`` and ``groups`` (per-group
        ``mean_wait``, ``p90_wait``, ``treatment_rate``, ``critical_waits``, ``arrived``,
        ``diverted``), all averaged over episodes.
    """
    from equicare.sim.hospital import HospitalVectorEnv

    rng = check_random_state(random_state)
    env_seed = int(rng.integers(2**31 - 1))  # first draw: the same episodes for every policy
    env = HospitalVectorEnv(hospital, num_envs=n_episodes)
    if isinstance(policy, str):
        check_param(policy, "policy", "evaluate_hospital_policy",
                    choices=("fcfs", "severity_first", "random"))
        name = policy
        prng = np.random.default_rng(rng.integers(2**63 - 1))

        def policy(e: Any, o: np.ndarray, mask: np.ndarray) -> np.ndarray:
            if name == "fcfs":
                return np.asarray(e.fcfs_actions())
            if name == "severity_first":
                return np.asarray(e.severity_first_actions())
            return np.asarray(prng.integers(0, e.config.n_actions, e.num_envs))

    obs, info = env.reset(seed=env_seed)
    while True:
        obs, _, _, trunc, info = env.step(np.asarray(policy(env, obs, info["action_mask"])))
        if trunc.any():
            return _metrics_from_episodes(info["episode_metrics"], env.config.group_names)


# ---------------------------------------------------------------------- one seed

def run_seed(config: OnlineExperimentConfig | dict[str, Any], seed: int, *,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train one learner with one seed and evaluate it (top-level so executors can pickle it).

    Parameters
    ----------
    config : OnlineExperimentConfig or its ``to_dict()``
    seed : int
        Seeds training (weights, environments, actions) and, offset, the evaluation episodes.
    progress : callable, optional
        ``progress(env_steps)`` after every vector step of training.

    Returns
    -------
    dict
        ``seed``, ``label``, ``config``, ``train_seconds``, ``env_steps``, ``sps``, ``curve``
        (one entry per finished batch of training episodes: ``env_steps``, ``return``,
        ``mean_wait``, ``worst_group_wait``, ``wait_gap``, ``group_mean_wait``), ``final`` (see
        :func:`evaluate_hospital_policy`) and, when ``config.baselines``, ``baselines``
        (``fcfs``, ``severity_first``, ``random``) on the same evaluation episodes.
    """
    from equicare.online._grpo import GRPO
    from equicare.online._ppo import PPO
    from equicare.sim.hospital import HospitalVectorEnv, hospital_scenario

    cfg = config if isinstance(config, OnlineExperimentConfig) \
        else OnlineExperimentConfig.from_dict(config)
    check_param(seed, "seed", "run_seed", kind=int, low=0)
    hospital = hospital_scenario(cfg.scenario)
    names = hospital.group_names
    curve: list[dict[str, Any]] = []

    def record(env_steps: int, info: dict[str, Any]) -> None:
        if progress is not None:
            progress(env_steps)
        m = info.get("episode_metrics")
        if m is None:
            return
        gm = np.nanmean(m["mean_wait"], axis=0)
        curve.append({"env_steps": env_steps, "return": float(m["return"].mean()),
                      "mean_wait": float(np.nanmean(m["overall_mean_wait"])),
                      "worst_group_wait": float(np.nanmax(gm)),
                      "wait_gap": float(np.nanmax(gm) - np.nanmin(gm)),
                      "group_mean_wait": [float(x) for x in gm]})

    learner_cfg = cfg.learner_config()
    learner = PPO(learner_cfg) if cfg.algo == "ppo" else GRPO(learner_cfg)
    env = HospitalVectorEnv(hospital, num_envs=cfg.n_envs)
    t0 = time.perf_counter()
    learner.fit(env, random_state=seed, callback=record)
    train_seconds = time.perf_counter() - t0

    act_rng = np.random.default_rng([seed, 7])

    def trained(e: Any, o: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(learner.predict(o, action_mask=mask,
                                          deterministic=cfg.eval_deterministic,
                                          random_state=act_rng))

    eval_seed = _EVAL_SEED_OFFSET + seed
    out: dict[str, Any] = {
        "seed": seed, "label": cfg.label, "config": cfg.to_dict(), "groups": list(names),
        "train_seconds": train_seconds, "env_steps": int(learner.n_env_steps_),
        "sps": learner.n_env_steps_ / max(train_seconds, 1e-9), "curve": curve,
        "final": evaluate_hospital_policy(trained, hospital, n_episodes=cfg.eval_episodes,
                                          random_state=eval_seed),
    }
    if cfg.baselines:
        out["baselines"] = {
            b: evaluate_hospital_policy(b, hospital, n_episodes=cfg.eval_episodes,
                                        random_state=eval_seed)
            for b in ("fcfs", "severity_first", "random")}
    return out


# ---------------------------------------------------------------------- statistics

def seed_mean_ci(values: Sequence[float] | np.ndarray, *, level: float = 0.95
                 ) -> dict[str, Any]:
    """Mean of ``values`` (one per seed) with a Student-t interval, ``mean +- t sd / sqrt(n)``.

    A percentile bootstrap over a handful of seeds is far too narrow: with 2 seeds it is the
    range of the two values (about 51% coverage of normal draws), with 5 about 85%, with 10
    about 90%; the t interval keeps its level (94-96% at 2, 3, 5 and 10 seeds;
    ``tests/pipeline/test_online.py``).

    Parameters
    ----------
    values : array-like of shape (n,)
        One number per seed (non-finite values are dropped).
    level : float

    Returns
    -------
    dict
        ``{"mean", "ci": [low, high], "sd", "n", "ci_reason", "ci_method"}``. With fewer than
        two finite values there is no interval: ``ci`` is None and ``ci_reason`` says why
        (:data:`ONE_SEED_REASON`, :data:`NO_VALUE_REASON`; None when ``ci`` is given).
    """
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"mean": math.nan, "ci": None, "sd": math.nan, "n": 0,
                "ci_reason": NO_VALUE_REASON, "ci_method": SEED_CI_METHOD}
    if x.size == 1:
        return {"mean": float(x[0]), "ci": None, "sd": math.nan, "n": 1,
                "ci_reason": ONE_SEED_REASON, "ci_method": SEED_CI_METHOD}
    sd = float(x.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2.0, x.size - 1)) * sd / math.sqrt(x.size)
    m = float(x.mean())
    return {"mean": m, "ci": [m - half, m + half], "sd": sd, "n": int(x.size),
            "ci_reason": None, "ci_method": SEED_CI_METHOD}


#: How the intervals over seeds are computed (``ci_method`` of :func:`seed_mean_ci`).
SEED_CI_METHOD = "student_t"


def summarize_runs(results: Sequence[dict[str, Any]], *, policy: str = "final") -> dict[str, Any]:
    """Across-seed means and Student-t CIs of the headline metrics of one learner.

    Parameters
    ----------
    results : list of dict
        :func:`run_seed` outputs.
    policy : str
        ``"final"`` (the trained policy) or a baseline name.

    Returns
    -------
    dict
        ``{metric: seed_mean_ci(...)}`` for ``return``, ``mean_wait``,
        ``worst_group_wait``, ``wait_gap``, ``critical_waits``, plus ``group_mean_wait``
        (``{group: {...}}``) and ``n_seeds``.
    """
    def pick(r: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = r["final"] if policy == "final" else r["baselines"][policy]
        return out

    out: dict[str, Any] = {k: seed_mean_ci([pick(r)[k] for r in results])
                           for k in _SUMMARY_METRICS}
    names = results[0]["groups"] if results else []
    out["group_mean_wait"] = {g: seed_mean_ci([pick(r)["groups"][g]["mean_wait"]
                                                    for r in results]) for g in names}
    out["n_seeds"] = len(results)
    return out


def compare_runs(
    base: Sequence[dict[str, Any]], other: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Paired (by seed) differences ``other - base`` of the headline metrics.

    Parameters
    ----------
    base, other : sequence of dict
        :func:`run_seed` outputs: the ``"seeds"`` list of a :func:`run_experiment` result.

    Returns
    -------
    dict
        ``{metric: seed_mean_ci(differences)}`` and ``seeds`` (the seeds paired).

    Raises
    ------
    InvalidParameterError
        An argument that is not a list of :func:`run_seed` outputs (e.g. a whole
        :func:`run_experiment` result), or no seed in common.
    """
    b = _finals(base, "base")
    o = _finals(other, "other")
    seeds = sorted(set(b) & set(o))
    if not seeds:
        raise InvalidParameterError(
            f"compare_runs pairs runs by seed, and base (seeds {sorted(b)}) and other (seeds "
            f"{sorted(o)}) have no seed in common.")
    out: dict[str, Any] = {k: seed_mean_ci([o[s][k] - b[s][k] for s in seeds])
                           for k in _SUMMARY_METRICS}
    out["seeds"] = seeds
    return out


def _finals(runs: Any, name: str) -> dict[int, dict[str, Any]]:
    """``{seed: final metrics}`` of a list of :func:`run_seed` outputs, or a clear error."""
    expected = ("a list of run_seed outputs (dicts with 'seed' and 'final'), e.g. "
                "run_experiment(...)['seeds']")
    if isinstance(runs, dict):
        hint = (" (a run_experiment result: pass its ['seeds'])" if "seeds" in runs else "")
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name=name, owner="compare_runs", expected=expected,
            got=f"a dict with keys {sorted(map(str, runs))[:6]}") + hint)
    if isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence) or not all(
            isinstance(r, dict) and "seed" in r and isinstance(r.get("final"), dict)
            for r in runs):
        shown = type(runs).__name__ if not isinstance(runs, Sequence) else \
            f"a {type(runs).__name__} of {sorted({type(r).__name__ for r in runs})}"
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name=name, owner="compare_runs", expected=expected, got=shown))
    return {int(r["seed"]): r["final"] for r in runs}


# ---------------------------------------------------------------------- runs and files

def _run_many(tasks: list[tuple[OnlineExperimentConfig, int]], jobs: int,
              progress: bool = False, description: str = "online") -> list[dict[str, Any]]:
    """Run the (config, seed) tasks; a progress bar over their environment steps.

    Inline (``jobs == 1``) the bar moves with every vector step; with worker processes it moves
    when a seed finishes.
    """
    from equicare._progress import progress_task

    check_param(jobs, "jobs", "run_experiment", kind=int, low=1)
    total = sum(c.env_steps_per_seed for c, _ in tasks)
    with progress_task(description, total, enabled=progress) as bar:
        if jobs == 1 or len(tasks) == 1:
            out, done = [], 0
            for i, (c, s) in enumerate(tasks):
                bar.update(info=f"seed {s} ({i + 1}/{len(tasks)})")

                def moved(n: int, base: int = done) -> None:
                    bar.update(completed=base + n)

                out.append(run_seed(c, s, progress=moved))
                done += c.env_steps_per_seed
                bar.update(completed=done)
            return out
        import multiprocessing as mp
        from concurrent.futures import as_completed

        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                                 mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_seed, c.to_dict(), s): i
                       for i, (c, s) in enumerate(tasks)}
            results: list[dict[str, Any]] = [{} for _ in tasks]
            for n_done, f in enumerate(as_completed(futures), start=1):
                i = futures[f]
                results[i] = f.result()
                bar.update(advance=tasks[i][0].env_steps_per_seed,
                           info=f"{n_done}/{len(tasks)} seeds done")
            return results


def _is_partial(name: str) -> bool:
    """A temporary file left by an interrupted :func:`atomic_write` of an output."""
    return re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name) is not None and name.endswith(".tmp") and (
        name[1:].split(".")[0] in {n.split(".")[0] for n in _OUTPUT_FILES}
        or re.match(r"\.seed_\d+\.json\.", name) is not None)


def _is_output(entry: Path) -> bool:
    """Whether ``entry`` (in a results folder) is something an online run writes."""
    name = entry.name
    if _is_partial(name):
        return True
    if entry.is_dir():
        return name == "seeds" or re.fullmatch(r"lambda_[0-9.e+-]+", name) is not None
    return name in _OUTPUT_FILES


def _check_out(out: Path, force: bool) -> None:
    """Refuse ``out`` before any training unless it is new, empty or (``force``) earlier results.

    A folder that holds online results needs ``force``; a non-empty folder that holds none is
    refused even with ``force`` (its files are not equicare's to replace).
    """
    check_out_location(out, folder=True, option="out")
    if not out.exists():
        return
    entries = sorted(out.iterdir())
    if not entries:
        return
    ours = [e for e in entries if _is_output(e)]
    if not ours:
        raise FileExistsError(
            f"{out} is not empty and holds no equicare online results; choose a new or empty "
            "folder (force=True / --force only replaces earlier online results).")
    if not force:
        marker = next((m for m in _MARKERS if (out / m).exists()), ours[0].name)
        raise FileExistsError(EXISTS_MESSAGE.format(path=out, name=marker))


def _clear_outputs(folder: Path) -> None:
    """Remove an earlier run's outputs from ``folder``, leaving any other file in place.

    Figures, ``seeds/`` and ``lambda_<v>/`` subfolders are outputs too.
    """
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if not _is_output(entry):
            continue
        if entry.is_dir():
            if entry.name == "seeds":
                for f in entry.iterdir():
                    if f.is_file() and (re.fullmatch(r"seed_\d+\.json", f.name)
                                        or _is_partial(f.name)):
                        f.unlink()
            else:
                _clear_outputs(entry)
            if not any(entry.iterdir()):
                entry.rmdir()
        else:
            entry.unlink()


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def _curve_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        for p in r["curve"]:
            row = {"label": r["label"], "seed": r["seed"], "env_steps": p["env_steps"],
                   "return": p["return"], "mean_wait": p["mean_wait"],
                   "worst_group_wait": p["worst_group_wait"], "wait_gap": p["wait_gap"]}
            row.update({f"wait_{g}": w for g, w in zip(r["groups"], p["group_mean_wait"],
                                                       strict=True)})
            rows.append(row)
    return rows


def _group_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        policies = {r["label"]: r["final"], **{f"baseline:{k}": v
                                               for k, v in r.get("baselines", {}).items()}}
        for pol, m in policies.items():
            for g, gm in m["groups"].items():
                rows.append({"seed": r["seed"], "policy": pol, "group": g, **gm})
    return rows


def _write_results(out: Path, config: OnlineExperimentConfig, results: list[dict[str, Any]],
                   summary: dict[str, Any], provenance: Mapping[str, Any] | None = None
                   ) -> None:
    for r in results:
        atomic_write_text(out / "seeds" / f"seed_{r['seed']}.json", json.dumps(r, indent=1))
    atomic_write_text(out / "curves.csv", _csv(_curve_rows(results)))
    atomic_write_text(out / "final_groups.csv", _csv(_group_rows(results)))
    atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2))
    # results.json last: its presence marks a complete folder
    doc = {"config": config.to_dict(), "training": config.training(), "summary": summary,
           "seeds": results}
    if provenance is not None:
        doc["provenance"] = dict(provenance)
    atomic_write_text(out / "results.json", json.dumps(doc, indent=1))


def run_experiment(
    config: OnlineExperimentConfig,
    *,
    seeds: int | Sequence[int] = 5,
    jobs: int = 1,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``config`` over seeds and (optionally) write the results folder.

    Parameters
    ----------
    config : OnlineExperimentConfig
    seeds : int or sequence of int
        Number of seeds (``0 .. seeds-1``) or the seeds themselves.
    jobs : int
        Worker processes (``concurrent.futures.ProcessPoolExecutor``); 1 runs inline.
    out : path, optional
        Folder for ``results.json`` (config, summary, every seed), ``seeds/seed_<s>.json``,
        ``curves.csv`` (learning curves) and ``final_groups.csv`` (per-group final metrics of
        the learner and the baselines). All files are written atomically.
    force : bool
        Replace the outputs of an earlier run (results, seeds, figures, sweep subfolders) in
        ``out``; other files in the folder are kept. Without it a folder holding online results
        is refused, and a non-empty folder holding none is refused either way (before any
        training).
    progress : bool
        A progress bar over the seeds' environment steps (a line per tenth off a terminal).
    provenance : mapping, optional
        How the results were made (the command line's ``provenance`` block,
        docs/contracts.md), written into ``results.json``.

    Returns
    -------
    dict
        ``{"config", "training", "summary", "seeds"}`` where ``training`` is
        :meth:`OnlineExperimentConfig.training` (the environment steps each seed ran: ``steps``
        rounded down to whole rollouts) and ``summary`` holds the learner's and each baseline's
        :func:`summarize_runs`.
    """
    if not isinstance(config, OnlineExperimentConfig):
        raise InvalidParameterError(PARAM_MESSAGE.format(name="config", owner="run_experiment",
                                             expected="an OnlineExperimentConfig", got=config))
    seed_list = _seed_list(seeds)
    if out is not None:
        _check_out(Path(out), force)
    results = _run_many([(config, s) for s in seed_list], jobs, progress,
                        f"online ({config.label})")
    summary = {config.label: summarize_runs(results)}
    if config.baselines:
        for b in results[0]["baselines"]:
            summary[f"baseline:{b}"] = summarize_runs(results, policy=b)
    if out is not None:
        _clear_outputs(Path(out))
        _write_results(Path(out), config, results, summary, provenance)
    return {"config": config.to_dict(), "training": config.training(), "summary": summary,
            "seeds": results}


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        check_param(seeds, "seeds", "run_experiment", kind=int, low=1)
        return list(range(seeds))
    lst = [int(s) for s in cast(Sequence[int], seeds)]
    if not lst or min(lst) < 0 or len(set(lst)) != len(lst):
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="seeds", owner="run_experiment",
            expected="a positive int or distinct non-negative ints", got=seeds))
    return lst


def lambda_sweep(
    config: OnlineExperimentConfig,
    lambdas: Sequence[float],
    *,
    seeds: int | Sequence[int] = 5,
    jobs: int = 1,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    r"""GRPO over a grid of :math:`\lambda`: the efficiency-versus-equity frontier.

    :math:`\lambda = 0` is PPO exactly (same seed, same weights), so it is the reference of the
    paired differences.

    Parameters
    ----------
    config : OnlineExperimentConfig
        Template; ``algo`` is set to ``'grpo'`` and ``lam`` to each value.
    lambdas : sequence of float in [0, 1]
    seeds, jobs, out, force, progress, provenance
        As for :func:`run_experiment` (``provenance`` also goes into ``frontier.json``); each
        :math:`\lambda` gets a subfolder ``lambda_<v>``,
        and ``out`` gets ``frontier.json`` and ``frontier.csv``.

    Returns
    -------
    dict
        ``{"config", "training", "lambdas", "frontier": [...], "runs": {lam: results}}``.
        Each frontier row holds :math:`\lambda`, the summary (mean and Student-t CI over seeds) of
        ``return``, ``mean_wait`` (efficiency), ``worst_group_wait`` and ``wait_gap`` (equity),
        and ``vs_lambda0``: paired differences from the smallest :math:`\lambda` in the grid.
    """
    lams = sorted({float(check_param(v, "lambdas", "lambda_sweep", kind=(int, float), low=0,
                                     high=1)) for v in lambdas})
    if not lams:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="lambdas", owner="lambda_sweep",
                                              expected="at least one value", got=lambdas))
    seed_list = _seed_list(seeds)
    root = Path(out) if out is not None else None
    if root is not None:
        _check_out(root, force)
    cfgs = {lam: dataclasses.replace(config, algo="grpo", lam=lam) for lam in lams}
    tasks = [(cfgs[lam], s) for lam in lams for s in seed_list]
    flat = _run_many(tasks, jobs, progress, "online (lambda sweep)")
    runs = {lam: flat[i * len(seed_list):(i + 1) * len(seed_list)] for i, lam in enumerate(lams)}
    ref = runs[lams[0]]
    frontier = []
    for lam in lams:
        s = summarize_runs(runs[lam])
        frontier.append({"lam": lam, **{k: s[k] for k in _SUMMARY_METRICS},
                         "group_mean_wait": s["group_mean_wait"],
                         "vs_lambda0": compare_runs(ref, runs[lam])})
    result = {"config": config.to_dict(), "training": config.training(), "lambdas": lams,
              "frontier": frontier,
              "runs": {str(lam): r for lam, r in runs.items()}}
    if root is not None:
        _clear_outputs(root)
        for lam in lams:
            summary = {cfgs[lam].label: summarize_runs(runs[lam])}
            _write_results(root / f"lambda_{lam:g}", cfgs[lam], runs[lam], summary,
                           provenance)
        rows = [{"lam": f["lam"], **{f"{k}_{part}": (
            f[k]["mean"] if part == "mean" else
            None if f[k]["ci"] is None else f[k]["ci"][0 if part == "lo" else 1])
            for k in _SUMMARY_METRICS for part in ("mean", "lo", "hi")}}
            for f in frontier]
        atomic_write_text(root / "frontier.csv", _csv(rows))
        front = {k: v for k, v in result.items() if k != "runs"}
        if provenance is not None:
            front["provenance"] = dict(provenance)
        atomic_write_text(root / "frontier.json", json.dumps(front, indent=1))
    return result
