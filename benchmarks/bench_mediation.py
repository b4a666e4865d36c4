"""Benchmark of dynamic mediation analysis (equicare.causal.DynamicMediation).

N = 1,000 trajectories x T = 100 steps, all four estimators (DM, MIS, MR, point-exposure
baseline) with 2-fold cross-fitting and a 500-replicate cluster bootstrap (MR's resamples its
influence values; DM's, MIS's and the baseline's refit every model, batched,
docs/mediation.md 'Inference'):

* ``toy1``: the discrete toy model of Ge et al. (2023) (one-hot basis); the timing includes the
  refitting bootstrap (measured on a loaded machine: 2.6 s with it, 1.6 s before it);
* ``continuous``: 3 continuous state features, a continuous mediator (spline basis, Gaussian
  mediator model, 9 Gauss-Hermite nodes), linear-sieve and kernel (random Fourier feature)
  ratio estimators; a continuous mediator is not batched, so DM, MIS and the baseline give
  point estimates there and the timing has MR's bootstrap only.

BLAS is limited to one thread (the benchmark machine is shared). No peer library: the paper's
reference code is not a package.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from equicare.causal import DynamicMediation
from equicare.sim.mediation import toy1, toy_target


def continuous_data(n_episodes: int = 1000, horizon: int = 100, seed: int = 0) -> dict[str, Any]:
    """Linear-Gaussian mediated MDP with 3 state features and one continuous mediator."""
    rng = np.random.default_rng(seed)
    N, T = n_episodes, horizon
    S = np.zeros((N, T + 1, 3))
    A = np.zeros((N, T), dtype=np.int64)
    M = np.zeros((N, T))
    R = np.zeros((N, T))
    S[:, 0] = rng.normal(size=(N, 3))
    for t in range(T):
        s = S[:, t]
        a = (rng.random(N) < 1 / (1 + np.exp(-(0.5 * s[:, 0] - 0.3 * s[:, 1])))).astype(int)
        m = 0.45 * s[:, 0] - 0.25 * a + 0.3 * s[:, 2] + 0.5 * rng.normal(size=N)
        R[:, t] = 0.5 * s[:, 0] - 0.5 * a + 0.5 * m + 0.2 * s[:, 1] + 0.3 * rng.normal(size=N)
        S[:, t + 1] = (0.7 * s - 0.3 * a[:, None] + 0.2 * m[:, None] * np.array([1, 0, -1])
                       + 0.5 * rng.normal(size=(N, 3)))
        A[:, t], M[:, t] = a, m
    return {"states": S[:, :-1].reshape(-1, 3), "next_states": S[:, 1:].reshape(-1, 3),
            "actions": A.reshape(-1), "mediators": M.reshape(-1), "rewards": R.reshape(-1),
            "episode_index": np.repeat(np.arange(N), T)}


def _target(x: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-(1 + 0.5 * x[:, 0])))
    return np.column_stack([1 - p, p])


def _time(fn: Any, repeats: int = 2) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return float(best)


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Time the estimators; returns ``{name: {value, unit, peer, peer_value, ratio}}``.

    ``quick``: a smoke run at tiny sizes (its numbers mean nothing).
    """
    n, horizon, n_boot = (60, 10, 10) if quick else (1000, 100, 500)
    print("peer: none (the reference implementation of Ge et al. 2023 is research code, "
          "not an importable package)")
    out: dict[str, dict[str, Any]] = {}
    with threadpool_limits(limits=1):
        mdp = toy1()
        data = mdp.sample(n, horizon, random_state=0)
        pol = mdp.policy_fn(toy_target())
        cfg = DynamicMediation(n_bootstrap=n_boot, n_folds=2)
        out["toy1_1000x100_all_estimators"] = _time(
            lambda: cfg.estimate(data, pol, 0, random_state=0))
        cdata = continuous_data(n, horizon)
        for method in ("linear", "kernel"):
            c = DynamicMediation(n_bootstrap=n_boot, n_folds=2, ratio_method=method)
            out[f"continuous_1000x100_all_estimators_{method}"] = _time(
                lambda c=c: c.estimate(cdata, _target, 0, random_state=0), repeats=1)
    return {k: {"value": v, "unit": "s", "peer": None, "peer_value": None, "ratio": None}
            for k, v in out.items()}


if __name__ == "__main__":
    import sys

    for name, entry in run(quick="--quick" in sys.argv).items():
        print(f"{name}: {entry['value']:.2f} {entry['unit']}")
