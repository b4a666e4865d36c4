"""Benchmark: the OPE engine (equicare.ope) against SCOPE-RL, Open Bandit Pipeline and d3rlpy.

Workload
--------
2,000 episodes x 52 steps (104,000 transitions), state dimension 10, 97 actions. Behaviour and
target policies are softmax policies over the state with different weights, so the importance
ratios are heavy-tailed (trajectory ESS well under 1%). ``Q-hat`` is given as an (n, 97) array.

Measures
--------
* ``ope_all``: ``equicare.ope.ope_arrays`` from the raw arrays (ratios, ``Q(s_t, a_t)``, ``V``):
  all seven estimators (is, wis, pdis, wpdis, fqe, dr, wdr) + Kish ESS + a 1,000-replicate
  episode-level bootstrap (self-normalised estimators re-normalised inside every replicate), end
  to end, with percentile intervals like the peer's. Peer: SCOPE-RL 0.2.1's
  ``OffPolicyEvaluation`` with its seven discrete estimators (DM, TIS, PDIS, DR, SNTIS, SNPDIS,
  SNDR), point estimates + 1,000-replicate percentile bootstrap intervals,
  ``disable_reward_after_done=False`` (its default drops the last reward of every episode).
* ``ope_all_studentized``: the same with ``ope_arrays``' default studentized (bootstrap-t)
  intervals, which also compute every replicate's delta-method standard error (no peer computes
  them).
* ``ope_bandit``: the same call plus the single-step DR (``bandit_dr``). Peer: Open Bandit
  Pipeline 0.5.7 (IPW, SNIPW, DM, DR, SNDR on the 104,000 rows as bandit rounds, point
  estimates + 1,000-replicate intervals).
* ``point_*``: largest absolute difference of the point estimates where definitions coincide
  (the seven SCOPE-RL estimators; OBP's DR = our bandit_dr). Must be < 1e-6.
* ``fqe_time_to_accuracy``: time to an estimate within a tolerance of the true value, on the
  same transitions with gamma 0.9 (the value is known in closed form; see the FQE section
  below), for the deterministic greedy version of the target policy (d3rlpy's FQE evaluates
  deterministic policies only); both models get the state plus the scaled step and its square.
  equicare: ``fit_fqe`` (linear, fixed point) including the full (n, 97) Q matrix; its error
  sets the tolerance, ``max(error, 1% of the true value)``. Peer: d3rlpy 2.8.1 ``DiscreteFQE``
  (default MLP, batch 100), trained epoch by epoch until its estimate is within the tolerance
  (at most 30 epochs; if it never gets there, the entry's note says the ratio is a lower
  bound).

BLAS/OpenMP threads are limited to 1 for every library (the machine is shared; oversubscribed
BLAS threads made small products 1,000x slower in our runs) and torch to 1 thread. Run:
``.venv/bin/python benchmarks/bench_ope.py``.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

N_EPISODES, HORIZON, STATE_DIM, N_ACTIONS, N_BOOT, GAMMA = 2000, 52, 10, 97, 1000, 0.99
SEVEN = ("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr")
SCOPE_NAMES = {"is": "tis", "wis": "sntis", "pdis": "pdis", "wpdis": "snpdis", "fqe": "dm",
               "dr": "dr", "wdr": "sndr"}


def _entry(value: float, unit: str, peer: str | None = None, peer_value: float | None = None,
           note: str | None = None) -> dict[str, Any]:
    ratio = None if peer_value is None or value == 0 else float(peer_value / value)
    out = {"value": float(value), "unit": unit, "peer": peer, "peer_value": peer_value,
           "ratio": ratio}
    if note:
        out["note"] = note
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def make_workload(seed: int = 0) -> dict[str, Any]:
    """Arrays of the benchmark workload (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = N_EPISODES * HORIZON
    x = rng.normal(size=(n, STATE_DIM))
    wb = rng.normal(scale=0.6, size=(STATE_DIM, N_ACTIONS))
    bb = rng.normal(scale=1.5, size=N_ACTIONS)
    pb = _softmax(x @ wb + bb)
    we = wb + rng.normal(scale=0.25, size=wb.shape)
    be = bb + rng.normal(scale=0.5, size=N_ACTIONS)
    pe = _softmax(x @ we + be)
    cdf = np.cumsum(pb, axis=1)
    a = np.minimum((cdf < rng.random(n)[:, None]).sum(axis=1), N_ACTIONS - 1).astype(np.int64)
    effect = rng.normal(scale=0.3, size=N_ACTIONS)
    beta = rng.normal(scale=0.2, size=STATE_DIM)
    r = x @ beta + effect[a] + rng.normal(scale=0.5, size=n)
    steps_left = np.tile(HORIZON - np.arange(HORIZON), N_EPISODES).astype(np.float64)
    q = ((x @ beta)[:, None] + effect[None, :]) * np.minimum(steps_left, 30.0)[:, None] * 0.5
    q += rng.normal(scale=0.2, size=q.shape)
    offsets = np.arange(0, n + 1, HORIZON, dtype=np.int64)
    done = np.zeros(n)
    done[offsets[1:] - 1] = 1.0
    return {"x": x, "pb": pb, "pe": pe, "a": a, "r": r, "q": q, "offsets": offsets,
            "done": done, "b_logged": pb[np.arange(n), a], "we": we, "be": be, "beta": beta,
            "effect": effect}


# ---------------------------------------------------------------------- equicare
def run_equicare(w: dict[str, Any], estimators: Any = "all", ci_method: str = "percentile"
                 ) -> tuple[float, Any]:
    from equicare.ope import ope_arrays

    t0 = time.perf_counter()
    res = ope_arrays(rewards=w["r"], episode_offsets=w["offsets"], gamma=GAMMA, actions=w["a"],
                     target_probs=w["pe"], behavior_prob=w["b_logged"], q=w["q"],
                     estimators=estimators, bootstrap=N_BOOT, random_state=0,
                     ci_method=ci_method)  # type: ignore[arg-type]
    return time.perf_counter() - t0, res


# ---------------------------------------------------------------------- SCOPE-RL
def run_scope(w: dict[str, Any]) -> tuple[float, dict[str, float]] | str:
    try:
        from scope_rl.ope import OffPolicyEvaluation
        from scope_rl.ope.discrete import (
            DirectMethod,
            DoublyRobust,
            PerDecisionImportanceSampling,
            SelfNormalizedDR,
            SelfNormalizedPDIS,
            SelfNormalizedTIS,
            TrajectoryWiseImportanceSampling,
        )
    except Exception as exc:  # pragma: no cover - optional peer
        return f"scope-rl not importable ({type(exc).__name__}: {exc})"
    n = w["a"].size
    logged = {"size": n, "n_trajectories": N_EPISODES, "step_per_trajectory": HORIZON,
              "action_type": "discrete", "n_actions": N_ACTIONS, "action_dim": None,
              "action_keys": None, "action_meaning": None, "state_dim": STATE_DIM,
              "state_keys": None, "state": w["x"], "action": w["a"], "reward": w["r"],
              "done": w["done"], "terminal": w["done"], "info": {}, "pscore": w["b_logged"],
              "behavior_policy": "behavior", "dataset_id": 0}
    v0 = (w["q"] * w["pe"]).sum(axis=1)[w["offsets"][:-1]]
    inp = {"target": {"evaluation_policy_action": None,
                      "evaluation_policy_action_dist": w["pe"],
                      "state_action_value_prediction": w["q"],
                      "initial_state_value_prediction": v0,
                      "state_action_marginal_importance_weight": None,
                      "state_marginal_importance_weight": None,
                      "on_policy_policy_value": None, "gamma": GAMMA,
                      "behavior_policy": "behavior", "evaluation_policy": "target",
                      "dataset_id": 0}}
    ests = [DirectMethod(), TrajectoryWiseImportanceSampling(), PerDecisionImportanceSampling(),
            DoublyRobust(), SelfNormalizedTIS(), SelfNormalizedPDIS(), SelfNormalizedDR()]
    t0 = time.perf_counter()
    ope = OffPolicyEvaluation(logged_dataset=logged, ope_estimators=ests,
                              disable_reward_after_done=False)
    values = ope.estimate_policy_value(inp)["target"]
    ope.estimate_intervals(inp, ci="bootstrap", n_bootstrap_samples=N_BOOT, random_state=0)
    return time.perf_counter() - t0, {k: float(values[v]) for k, v in SCOPE_NAMES.items()}


# ---------------------------------------------------------------------- Open Bandit Pipeline
def run_obp(w: dict[str, Any]) -> tuple[float, dict[str, float]] | str:
    try:
        from obp.ope import (
            DirectMethod,
            DoublyRobust,
            InverseProbabilityWeighting,
            OffPolicyEvaluation,
            SelfNormalizedDoublyRobust,
            SelfNormalizedInverseProbabilityWeighting,
        )
    except Exception as exc:  # pragma: no cover - optional peer
        return f"obp not importable ({type(exc).__name__}: {exc})"
    n = w["a"].size
    feedback = {"n_rounds": n, "n_actions": N_ACTIONS, "action": w["a"], "reward": w["r"],
                "pscore": w["b_logged"], "position": None, "context": w["x"]}
    ests = [InverseProbabilityWeighting(), SelfNormalizedInverseProbabilityWeighting(),
            DirectMethod(), DoublyRobust(), SelfNormalizedDoublyRobust()]
    t0 = time.perf_counter()
    ope = OffPolicyEvaluation(bandit_feedback=feedback, ope_estimators=ests)
    dist, qhat = w["pe"][:, :, None], w["q"][:, :, None]
    values = ope.estimate_policy_values(action_dist=dist, estimated_rewards_by_reg_model=qhat)
    ope.estimate_intervals(action_dist=dist, estimated_rewards_by_reg_model=qhat,
                           n_bootstrap_samples=N_BOOT, random_state=0)
    return time.perf_counter() - t0, {"dr": float(values["dr"])}


# ---------------------------------------------------------------------- FQE
# Time to accuracy against the truth. The workload's states are i.i.d. N(0, I) at every step
# whatever the action, and r = x @ beta + effect[a] + noise, so the value of a policy pi over the
# episode's HORIZON steps (the last one terminal) is known in closed form:
# V(x_0) = x_0 @ beta + effect[pi(x_0)] + m * sum_{t=1}^{H-1} gamma^t, m = E_x[effect[pi(x)]].
# d3rlpy's DiscreteFQE evaluates a deterministic policy (the greedy action of an algo), so both
# libraries evaluate the same deterministic policy pi(x) = argmax(x @ we + be) (the mode of the
# workload's target policy). The value depends on the step, so both get the same inputs: the state
# plus the scaled step tau = t / (H - 1) and tau^2 (equicare's linear FQE adds exactly these; d3rlpy
# gets them as extra observation columns). GAMMA_FQE = 0.9 keeps d3rlpy's iterative fit short.
GAMMA_FQE, FQE_REL_FLOOR, D3_MAX_EPOCHS = 0.9, 0.01, 30


def _greedy(w: dict[str, Any], x: np.ndarray) -> np.ndarray:
    return np.argmax(x @ w["we"] + w["be"], axis=1)


def fqe_truth(w: dict[str, Any], n_draws: int = 2_000_000, seed: int = 1) -> float:
    """True value of the greedy target policy, averaged over the data's initial states."""
    rng = np.random.default_rng(seed)
    m, done = 0.0, 0
    while done < n_draws:  # m = E_x[effect[pi(x)]] by Monte Carlo over fresh states (exact model)
        k = min(250_000, n_draws - done)
        m += float(w["effect"][_greedy(w, rng.normal(size=(k, STATE_DIM)))].sum())
        done += k
    m /= n_draws
    x0 = w["x"][w["offsets"][:-1]]
    r0 = x0 @ w["beta"] + w["effect"][_greedy(w, x0)]
    horizon = int(np.diff(w["offsets"])[0])
    return float(r0.mean() + m * sum(GAMMA_FQE ** t for t in range(1, horizon)))


def _dataset(w: dict[str, Any]) -> Any:
    from equicare.data import TrajectoryDataset
    from equicare.spaces import FactoredActionSpace

    n_ep = w["offsets"].size - 1
    horizon = w["a"].size // n_ep
    return TrajectoryDataset(
        states=w["x"].astype(np.float32), actions=w["a"], reward_components=w["r"][:, None],
        terminals=w["done"].astype(bool), episode_offsets=w["offsets"],
        episode_ids=np.arange(n_ep), times=np.tile(np.arange(horizon), n_ep),
        action_space=FactoredActionSpace.single(N_ACTIONS), gamma=GAMMA_FQE,
        state_names=tuple(f"x{i}" for i in range(STATE_DIM)))


def run_fqe(w: dict[str, Any]) -> tuple[float, float, Any]:
    """equicare's linear FQE (state + scaled step and its square): seconds, estimate."""
    from equicare.ope import FQEConfig, fit_fqe

    ds = _dataset(w)
    pe = np.zeros((w["a"].size, N_ACTIONS))
    pe[np.arange(w["a"].size), _greedy(w, w["x"])] = 1.0
    t0 = time.perf_counter()
    fit = fit_fqe(ds, pe, FQEConfig(model="linear", time_features=True))
    est = float(fit.v[w["offsets"][:-1]].mean())
    return time.perf_counter() - t0, est, fit


def run_d3rlpy_fqe(w: dict[str, Any], truth: float, tol: float,
                   max_epochs: int = D3_MAX_EPOCHS) -> tuple[float, float, int, bool] | str:
    """Train d3rlpy's DiscreteFQE epoch by epoch until its estimate is within ``tol`` of the truth.

    Returns (training seconds, last estimate, epochs, reached); the estimate after each epoch is
    taken outside the timed training.
    """
    try:
        import d3rlpy
        import torch
    except Exception as exc:  # pragma: no cover - optional peer
        return f"d3rlpy not importable ({type(exc).__name__}: {exc})"
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    torch.set_num_threads(1)
    n = w["a"].size
    horizon = int(np.diff(w["offsets"])[0])
    tau = np.tile(np.arange(horizon) / max(horizon - 1, 1), n // horizon)
    obs = np.column_stack([w["x"], tau, tau * tau]).astype(np.float32)
    we = torch.as_tensor(w["we"], dtype=torch.float32)
    be = torch.as_tensor(w["be"], dtype=torch.float32)
    obs0 = obs[w["offsets"][:-1]]
    a0 = _greedy(w, w["x"][w["offsets"][:-1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = d3rlpy.dataset.MDPDataset(
            observations=obs, actions=w["a"][:, None],
            rewards=w["r"].astype(np.float32), terminals=w["done"].astype(np.float32),
            action_space=d3rlpy.constants.ActionSpace.DISCRETE, action_size=N_ACTIONS)
        algo = d3rlpy.algos.DiscreteBCConfig().create(device="cpu:0")
        algo.build_with_dataset(data)
        assert algo.impl is not None
        # the evaluated policy: the same greedy target as equicare's
        algo.impl.predict_best_action = (  # type: ignore[method-assign]
            lambda x: torch.argmax(x[:, :STATE_DIM] @ we + be, dim=1))
        fqe = d3rlpy.ope.DiscreteFQE(algo=algo, config=d3rlpy.ope.FQEConfig(gamma=GAMMA_FQE))
        per_epoch = data.transition_count // fqe.config.batch_size
        seconds, est = 0.0, float("nan")
        for epoch in range(1, max_epochs + 1):
            t0 = time.perf_counter()
            fqe.fit(data, n_steps=per_epoch, n_steps_per_epoch=per_epoch, show_progress=False,
                    logger_adapter=d3rlpy.logging.NoopAdapterFactory())
            seconds += time.perf_counter() - t0
            est = float(np.mean(fqe.predict_value(obs0, a0)))
            print(f"  d3rlpy DiscreteFQE epoch {epoch}: estimate {est:.4f} (truth {truth:.4f}, "
                  f"tolerance {tol:.4f}), {seconds:.1f} s of training", flush=True)
            if abs(est - truth) <= tol:
                return seconds, est, epoch, True
    return seconds, est, max_epochs, False


# ---------------------------------------------------------------------- run
def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Measure everything (see the module docstring); peers are skipped if missing.

    ``quick``: 100 episodes, 20 bootstrap replicates, 2 d3rlpy epochs at most (a smoke run).
    """
    global N_EPISODES, N_BOOT
    saved = N_EPISODES, N_BOOT
    if quick:
        N_EPISODES, N_BOOT = 100, 20
    try:
        return _run(quick)
    finally:
        N_EPISODES, N_BOOT = saved


def _run(quick: bool) -> dict[str, dict[str, Any]]:
    from threadpoolctl import threadpool_limits

    out: dict[str, dict[str, Any]] = {}
    w = make_workload()
    with threadpool_limits(limits=1):
        # equicare: best of 3 after a warm-up (imports, page faults); SCOPE-RL: timed after one
        # warm-up call; OBP (dominated by its Python bootstrap loop) and d3rlpy: one timed run
        run_equicare(w)
        t_ours, res = min((run_equicare(w) for _ in range(3)), key=lambda x: x[0])
        t_stud = min(run_equicare(w, ci_method="studentized")[0] for _ in range(3))
        t_bandit, res_b = min((run_equicare(w, estimators="all,bandit_dr") for _ in range(3)),
                              key=lambda x: x[0])
        scope = run_scope(w)
        if not isinstance(scope, str):
            scope = run_scope(w)
        obp = run_obp(w)
        t_fqe, est_fqe, fit = min((run_fqe(w) for _ in range(2)), key=lambda x: x[0])
        truth = fqe_truth(w, 100_000 if quick else 2_000_000)
        err = abs(est_fqe - truth)
        tol = max(err, FQE_REL_FLOOR * abs(truth))
        d3 = run_d3rlpy_fqe(w, truth, tol, 2 if quick else D3_MAX_EPOCHS)
    ess = res.ess
    if isinstance(scope, str):
        print(f"SCOPE-RL skipped: {scope}")
        out["ope_all"] = _entry(t_ours, "s")
    else:
        t_scope, vals = scope
        out["ope_all"] = _entry(t_ours, "s", "scope-rl 0.2.1", t_scope,
                                f"like-for-like: the same seven estimators, point estimates and "
                                f"{N_BOOT}-replicate percentile intervals on the same arrays")
        diff = max(abs(res.estimates[k].value - vals[k]) / max(1.0, abs(vals[k]))
                   for k in SEVEN)
        out["point_scope_max_rel_diff"] = _entry(diff, "relative")
    out["ope_all_studentized"] = _entry(t_stud, "s", note=(
        "ours only: the same call with the default studentized intervals (every replicate's "
        "delta-method standard error as well)"))
    if isinstance(obp, str):
        print(f"OBP skipped: {obp}")
        out["ope_bandit"] = _entry(t_bandit, "s")
    else:
        t_obp, vals_o = obp
        out["ope_bandit"] = _entry(t_bandit, "s", "obp 0.5.7", t_obp,
                                   "not like-for-like: equicare computes its seven trajectory "
                                   "estimators plus bandit_dr, OBP five bandit estimators (IPW, "
                                   "SNIPW, DM, DR, SNDR); both with bootstrap intervals")
        out["point_obp_dr_abs_diff"] = _entry(
            abs(res_b.estimates["bandit_dr"].value - vals_o["dr"]), "absolute")
    out["ess_trajectory_pct"] = _entry(ess.trajectory_pct, "%")
    out["ess_per_decision_pct"] = _entry(ess.per_decision_pct, "%")
    print(f"FQE: truth {truth:.4f}, equicare {est_fqe:.4f} (error {err:.4f}), tolerance {tol:.4f}")
    out["fqe_abs_error"] = _entry(err, "value units")
    out["fqe_tolerance"] = _entry(tol, "value units")
    if isinstance(d3, str):
        print(f"d3rlpy skipped: {d3}")
        out["fqe_time_to_accuracy"] = _entry(t_fqe, "s")
    else:
        t_d3, est_d3, epochs, reached = d3
        print(f"d3rlpy DiscreteFQE: estimate {est_d3:.4f} after {epochs} epochs, {t_d3:.1f} s, "
              f"{'reached' if reached else 'did NOT reach'} the tolerance")
        note = (f"like-for-like: both within {tol:.3g} of the truth; d3rlpy took {epochs} epochs"
                if reached else
                f"lower bound: d3rlpy was still {abs(est_d3 - truth):.3g} from the truth after "
                f"{epochs} epochs (tolerance {tol:.3g})")
        out["fqe_time_to_accuracy"] = _entry(t_fqe, "s", "d3rlpy 2.8.1 DiscreteFQE (default MLP)",
                                             t_d3, note)
        out["fqe_d3rlpy_abs_error"] = _entry(abs(est_d3 - truth), "value units")
    out["fqe_q_matrix_rows"] = _entry(float(fit.q.shape[0]), "rows")
    return out


if __name__ == "__main__":
    import sys

    results = run(quick="--quick" in sys.argv)
    for name, e in results.items():
        peer = "" if e["peer_value"] is None else (
            f"   {e['peer']}: {e['peer_value']:.4g} {e['unit']}")
        ratio = "" if e["ratio"] is None or e["unit"] != "s" else (
            f"   peer/equicare {e['ratio']:.1f}x")
        print(f"{name:28s} {e['value']:.4g} {e['unit']}{peer}{ratio}")
