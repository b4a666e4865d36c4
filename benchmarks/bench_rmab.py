"""Benchmarks of equicare.rmab: Whittle indices, one equitable decision step, the Synthetic grid.

Run: ``.venv/bin/python benchmarks/bench_rmab.py``. Each entry reports the best of a few repeats
(wall-clock seconds; the machine is shared, so the minimum is the least noisy statistic).

Peer: the reference implementation (google-research/socialgood, branch equitable-rmab) is not a
package, needs numba/pulp and is not available offline, so its own code path is not run. As a
stand-in, the reference *algorithm* (one scalar bisection per arm and state, each step a
finite-horizon value iteration) is re-implemented here in plain NumPy, timed on a subset of
arms and scaled linearly to the benchmark's size. Every entry with that peer carries the note
"not like-for-like" (our re-implementation, not the reference code; scaled from a subset; and on
the Synthetic domain equicare deduplicates identical arms, which the per-arm loop does not).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from equicare.rmab import (
    allocate_budget,
    group_value_curves,
    load_domain,
    plan,
    whittle_indices,
)
from equicare.rmab._simulate import _top_per_unit

PEER = "reference algorithm: per-arm scalar bisection (plain NumPy, scaled from a subset)"
NOTE = ("not like-for-like: the peer is equicare's own NumPy re-implementation of the reference "
        "algorithm (the reference code is not available offline), timed on {n} arms and scaled "
        "linearly")


_MAX_REPEATS: int | None = None  # one repeat in quick mode


def best_of(fn: Callable[[], Any], repeats: int = 5) -> float:
    times = []
    for _ in range(min(repeats, _MAX_REPEATS or repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _scalar_vi_action(P: np.ndarray, R: np.ndarray, lam: float, s: int, h: int,
                      gamma: float) -> int:
    V = np.zeros(P.shape[-1])
    for _ in range(1, h):
        V = R + np.maximum(gamma * P[0] @ V, gamma * P[1] @ V - lam)
    return int(-lam + gamma * (P[1, s] - P[0, s]) @ V > 0)


def reference_style_seconds(P: np.ndarray, R: np.ndarray, h: int, n_sample: int,
                            tol: float = 1e-6) -> float:
    """Time the per-arm, per-state bisection on ``n_sample`` arms, scaled to all arms."""
    t0 = time.perf_counter()
    for i in range(n_sample):
        for s in range(P.shape[-1]):
            lo, hi = -1.0, 1.0
            while hi - lo > tol:
                mid = 0.5 * (lo + hi)
                if _scalar_vi_action(P[i], R[i], mid, s, h, 1.0):
                    lo = mid
                else:
                    hi = mid
    return (time.perf_counter() - t0) * P.shape[0] / n_sample


def entry(value: float, unit: str = "s", peer_value: float | None = None,
          peer: str | None = PEER, note: str | None = None) -> dict[str, Any]:
    out = {"value": value, "unit": unit, "peer": peer if peer_value is not None else None,
           "peer_value": peer_value,
           "ratio": None if peer_value is None else peer_value / value}
    if note and peer_value is not None:
        out["note"] = note
    return out


def decision_step(d: Any, states: np.ndarray, budget: int, rule: str,
                  rng: np.random.Generator) -> np.ndarray:
    """One full equitable step: indices, value curves, budget split, top arms per group."""
    W = whittle_indices(d.P, d.R, horizon=20, remaining=20, states=states, check=False)
    curves = group_value_curves(d, states, remaining=20, indices=W)
    b = allocate_budget(curves, budget, rule)  # type: ignore[arg-type]
    return _top_per_unit(d.groups, [rng.random(d.n_arms), W], b)


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Time every entry (best of a few repeats).

    ``quick``: 200 / 1,000 arms, 2 seeds, one repeat (a smoke run; its numbers mean nothing).
    """
    global _MAX_REPEATS
    n10, n100, n_sample, seeds = (200, 1000, 2, 2) if quick else (10_000, 100_000, 20, 25)
    _MAX_REPEATS = 1 if quick else None
    try:
        return _run(n10, n100, n_sample, seeds)
    finally:
        _MAX_REPEATS = None


def _run(n10: int, n100: int, n_sample: int, seeds: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    note = NOTE.format(n=n_sample)
    d10 = load_domain("synthetic", n_arms=n10)
    d100 = load_domain("synthetic", n_arms=n100)
    peer10 = reference_style_seconds(d10.P, d10.R, 20, n_sample=n_sample)
    out["whittle_synthetic_10k_h20_all_states"] = entry(
        best_of(lambda: whittle_indices(d10.P, d10.R, horizon=20, remaining=20, check=False)),
        peer_value=peer10, note=note + "; equicare deduplicates the domain's identical arms")
    out["whittle_synthetic_10k_full_table_h1to20"] = entry(
        best_of(lambda: whittle_indices(d10.P, d10.R, horizon=20, check=False)))
    out["whittle_synthetic_100k_h20_all_states"] = entry(
        best_of(lambda: whittle_indices(d100.P, d100.R, horizon=20, remaining=20, check=False),
                3), peer_value=peer10 * n100 / n10,
        note=note + f" (x{n100 // n10} more); equicare deduplicates identical arms")
    # honest case: every arm distinct (synthetic probabilities with 5% relative noise)
    rng = np.random.default_rng(0)
    Pn = d10.P.copy()
    Pn[..., 1] = np.clip(Pn[..., 1] * (1 + 0.05 * rng.standard_normal(Pn[..., 1].shape)),
                         0.001, 0.999)
    Pn[..., 0] = 1 - Pn[..., 1]
    out["whittle_distinct_10k_h20_all_states"] = entry(
        best_of(lambda: whittle_indices(Pn, d10.R, horizon=20, remaining=20, check=False), 3),
        peer_value=peer10, note=note)
    states = rng.integers(0, 2, d10.n_arms)
    for rule in ("mmr", "mnw-eg"):
        out[f"decision_step_{rule}_10k_B1000"] = entry(
            best_of(lambda rule=rule: decision_step(d10, states, n10 // 10, rule, rng)))
    d100a = load_domain("synthetic")
    out["synthetic_grid_6pol_3budgets_25seeds"] = entry(best_of(lambda: [
        plan(d100a, budget=f, seeds=seeds, random_state=0,
             policies=["opt", "mmr", "mnw", "mnw-eg", "random", "noact"])
        for f in (0.1, 0.2, 0.33)], 2))
    dm = load_domain("maternal", random_state=0)
    out["maternal_N200_5pol_budget0.1_25seeds"] = entry(best_of(lambda: plan(
        dm, budget=0.1, seeds=seeds, policies=["opt", "mmr", "mnw", "mnw-eg", "random"]), 1))
    return out


if __name__ == "__main__":
    print("peer: google-research/socialgood is not installable (not a package; needs numba and "
          "pulp) - its algorithm is re-implemented per arm below as the peer.")
    import sys

    for name, e in run(quick="--quick" in sys.argv).items():
        peer = "" if e["peer_value"] is None else \
            f"   peer {e['peer_value']:.3g} {e['unit']}  (x{e['ratio']:.0f} faster)"
        print(f"{name:45s} {e['value']:.4g} {e['unit']}{peer}")
