"""Benchmark: fairness audit of a 1.04M-row panel (equicare.fairness).

Measures
--------
* ``FairnessAudit.run`` on a care-management panel of 20,000 members x 52 weeks (churn off:
  exactly 1,040,000 rows, 300 flat actions) with the behaviour and 3 policies, 1,000 bootstrap
  replicates, 1,000 permutations, the level table and WIS group values. Target: < 30 s (wall).
  The policies are linear-softmax policies over the 5 state features on the behaviour's
  support (NumPy, like equicare's learned policies; evaluated block-wise by the audit); their
  own inference time is measured separately, so the audit's own cost is ``total - inference``.
* The same audit of the behaviour alone.
* Per-group allocation-rate intervals with 1,000 replicates for one policy: equicare
  (``allocation_rates``, one matrix product) vs Fairlearn's ``MetricFrame(n_boot=1000)`` on the
  same 20,000 episode totals (the peer; skipped with a printed reason if Fairlearn is missing).
* The permutation test (1,000 permutations, 4 policies at once).

The machine is shared: wall times depend on its load, CPU times (``time.process_time``, all
threads) are printed too. Run: ``.venv/bin/python benchmarks/bench_audit.py``.
"""

from __future__ import annotations

import resource
import time
import warnings
from typing import Any

import numpy as np

N_MEMBERS, N_WEEKS, N_BOOT, N_PERM = 20_000, 52, 1000, 1000


def _entry(value: float, unit: str, peer: str | None = None, peer_value: float | None = None
           ) -> dict[str, Any]:
    ratio = None if peer_value is None or value == 0 else float(peer_value / value)
    return {"value": float(value), "unit": unit, "peer": peer, "peer_value": peer_value,
            "ratio": ratio}


def _policies(ds: Any, k: int) -> dict[str, Any]:
    from equicare.policy import CallablePolicy

    support = np.flatnonzero(np.bincount(ds.actions, minlength=ds.n_actions) > 0)
    out = {}
    for j in range(k):
        rng = np.random.default_rng(100 + j)
        w = rng.normal(size=(ds.n_features, support.size))
        b = rng.normal(size=support.size)

        def fn(x: np.ndarray, w: np.ndarray = w, b: np.ndarray = b) -> np.ndarray:
            # softmax over the behaviour's support, like equicare's learned policies
            z = np.asarray(x, dtype=np.float64) @ w + b
            z -= z.max(axis=1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)
            p = np.zeros((z.shape[0], ds.n_actions))
            p[:, support] = z
            return p

        out[f"linear_{j}"] = CallablePolicy(fn, ds.n_actions)
    return out


def _timed(fn: Any) -> tuple[Any, float, float]:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Run every measurement; returns ``{name: {value, unit, peer, peer_value, ratio}}``.

    ``quick``: a smoke run at tiny sizes (its numbers mean nothing).
    """
    n_members, n_weeks, n_boot, n_perm = (200, 10, 20, 20) if quick else (
        N_MEMBERS, N_WEEKS, N_BOOT, N_PERM)
    from equicare.fairness import FairnessAudit, allocation_rates, permutation_test
    from equicare.fairness._rows import row_pass
    from equicare.sim.care import CareConfig, CareManagementSim

    sim = CareManagementSim(CareConfig(churn=False))
    ds = sim.generate(n_members=n_members, n_weeks=n_weeks, random_state=0).dataset()
    print(f"panel: {ds.n_steps:,} rows, {ds.n_episodes:,} episodes, {ds.n_actions} actions")
    pols = _policies(ds, 3)
    mask = ds.action_space.parse_action_set("modality=home_visit")[:, None].astype(float)
    res: dict[str, dict[str, Any]] = {}

    # policy inference alone (the same blocks the audit uses)
    _, t_inf, c_inf = _timed(lambda: [row_pass(ds, p, mask) for p in pols.values()])
    res["policy_inference_3"] = _entry(t_inf, "s")
    print(f"inference of 3 policies: {t_inf:.1f} s wall, {c_inf:.1f} s cpu")

    cfg = FairnessAudit(action="modality=home_visit", n_boot=n_boot, n_permutations=n_perm)
    audit, t_all, c_all = _timed(lambda: cfg.run(ds, pols, random_state=0))
    res["audit_1m_rows_3_policies"] = _entry(t_all, "s")
    res["audit_1m_rows_3_policies_cpu"] = _entry(c_all, "s")
    res["audit_own_cost_3_policies"] = _entry(t_all - t_inf, "s")
    print(f"audit, behaviour + 3 policies: {t_all:.1f} s wall ({c_all:.1f} s cpu); "
          f"without inference {t_all - t_inf:.1f} s  [target < 30 s]")
    beh = audit["behavior"].allocation
    lo, hi = beh.difference_ci()
    print(f"behaviour home-visit gap {100 * beh.difference():.2f} pp [{100 * lo:.2f}, "
          f"{100 * hi:.2f}], permutation p = {beh.permutation_p:.4f}")

    _, t_beh, _ = _timed(lambda: cfg.run(ds, random_state=0))
    res["audit_1m_rows_behavior_only"] = _entry(t_beh, "s")
    print(f"audit, behaviour only: {t_beh:.1f} s")

    # per-group rate intervals: equicare vs Fairlearn on the same episode totals (behaviour)
    frame, t_eq, _ = _timed(lambda: allocation_rates(
        ds, None, action="modality=home_visit", n_boot=n_boot, random_state=0))
    peer_value = None
    try:
        import fairlearn  # noqa: F401
    except ImportError:
        print("fairlearn not importable: peer skipped")
    else:
        def peer() -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mf = frame.to_metric_frame(n_boot=n_boot, random_state=0)
                return mf.by_group_ci
        _, peer_value, _ = _timed(peer)
        print(f"group-rate CIs ({n_boot} replicates): equicare {t_eq:.2f} s (from the panel, "
              f"incl. replicate draw), Fairlearn MetricFrame {peer_value:.2f} s (from the "
              "episode totals)")
    res["group_rate_ci_1000"] = _entry(t_eq, "s", f"fairlearn.MetricFrame(n_boot={n_boot})",
                                       peer_value)
    if peer_value is not None:
        res["group_rate_ci_1000"]["note"] = (
            "not like-for-like: equicare starts from the panel rows and draws its replicates, "
            "Fairlearn from the per-episode totals (equicare does more work)")
    _, t_pol, _ = _timed(lambda: allocation_rates(
        ds, pols["linear_0"], action="modality=home_visit", n_boot=n_boot, random_state=0))
    res["allocation_rates_1_policy_1000_boot"] = _entry(t_pol, "s")
    print(f"allocation_rates of one policy with {n_boot} replicates: {t_pol:.2f} s")

    # permutation test alone: 4 columns at once
    num = np.stack([audit[n].allocation.episode_num for n in audit.policies], axis=1)
    den = beh.episode_den
    codes = np.unique(beh.episode_labels, return_inverse=True)[1]
    _, t_perm, _ = _timed(lambda: permutation_test(num, den, codes, n_perm, random_state=0))
    res["permutation_test_1000_x4"] = _entry(t_perm, "s")
    print(f"permutation test, {n_perm} permutations x 4 policies: {t_perm:.2f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    res["peak_rss"] = _entry(peak, "GB")
    print(f"peak resident memory: {peak:.2f} GB")
    return res


if __name__ == "__main__":
    import sys

    for k, v in run(quick="--quick" in sys.argv).items():
        print(f"{k}: {v}")
