"""Offline-learning throughput: equicare BC / CQL vs d3rlpy and a plain PyTorch loop.

Same data (care-management panel, 2,000 members x 52 weeks without churn = 104,000 transitions,
5 state features, 300 flat actions), same network (MLP 256-256, d3rlpy's default for discrete
actions), batch 256, one torch thread, Adam. Gradient steps per second are measured after a
warm-up. Also: one epoch of AWR with the LSTM history encoder (window 4) and its peak memory.

Output sizes: d3rlpy and the plain loop have one output per flat action (300). equicare is
measured twice: with ``support="all"`` (300 outputs, the like-for-like comparison:
``{algo}_steps_per_s_vs_d3rlpy``, ``{algo}_steps_per_s_vs_plain_torch``) and with its default
``support="observed"`` (one output per action combination seen in the data, about 100 here:
``{algo}_observed_support_steps_per_s_vs_d3rlpy``, labelled not like-for-like).

Run: ``.venv/bin/python benchmarks/bench_learn.py`` (d3rlpy optional: ``pip install d3rlpy``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from typing import Any

import numpy as np

N_MEMBERS, N_WEEKS, BATCH, HIDDEN = 2000, 52, 256, (256, 256)


def _threads() -> None:
    import torch

    torch.set_num_threads(1)


def care_dataset(n_members: int = N_MEMBERS, n_weeks: int = N_WEEKS) -> Any:
    """The benchmark panel (no churn: every member observed every week)."""
    from equicare.sim.care import CareConfig, CareManagementSim

    sim = CareManagementSim(CareConfig(churn=False))
    return sim.generate(n_members, n_weeks, random_state=0).dataset()


# ----------------------------------------------------------------------------- equicare
def ours_steps_per_s(algo: str, ds: Any, n_steps: int, support: str = "all"
                     ) -> tuple[float, int]:
    """Gradient steps/s of an equicare learner, from its own timed history (after warm-up),
    and the number of network outputs (the size of its action support)."""
    from equicare.learn import BC, CQL

    klass = {"bc": BC, "cql": CQL}[algo]
    learner = klass(n_steps=n_steps + n_steps // 4, eval_every=n_steps // 4, hidden=HIDDEN,
                    batch_size=BATCH, valid_fraction=0.0, support=support)
    learner.fit(ds, progress=False)
    h = learner.history_
    rate = float((h[-1]["step"] - h[0]["step"]) / (h[-1]["seconds"] - h[0]["seconds"]))
    return rate, int(learner.support_.size)


# ----------------------------------------------------------------------------- plain PyTorch
def plain_steps_per_s(algo: str, ds: Any, n_steps: int) -> float:
    """A minimal hand-written loop with the same network and batch (the practical ceiling)."""
    import torch
    from torch import nn

    x = torch.as_tensor(ds.features())
    a = torch.as_tensor(ds.actions)
    r = torch.as_tensor(ds.rewards, dtype=torch.float32)
    nxt = torch.as_tensor(np.where(ds.next_index >= 0, ds.next_index, np.arange(ds.n_steps)))
    done = torch.as_tensor(ds.terminals | (ds.next_index < 0), dtype=torch.float32)

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, 256),
                             nn.ReLU(), nn.Linear(256, ds.n_actions))

    q = net()
    target = net()
    target.load_state_dict(q.state_dict())
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    warm = n_steps // 4
    t0 = 0.0
    for step in range(n_steps + warm):
        if step == warm:
            t0 = time.perf_counter()
        rows = torch.randint(0, ds.n_steps, (BATCH,), generator=gen)
        out = q(x[rows])
        q_sa = out.gather(1, a[rows][:, None]).squeeze(1)
        if algo == "bc":
            loss = nn.functional.cross_entropy(out, a[rows])
        else:
            with torch.no_grad():
                y = r[rows] + 0.99 * (1 - done[rows]) * target(x[nxt[rows]]).max(dim=1).values
            loss = ((q_sa - y) ** 2).mean() + (torch.logsumexp(out, dim=1) - q_sa).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return n_steps / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- d3rlpy
def d3rlpy_steps_per_s(algo: str, ds: Any, n_steps: int) -> float | None:
    """d3rlpy DiscreteBC / DiscreteCQL with its defaults (MLP 256-256), batch 256."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import d3rlpy
        import logging

        import structlog
    except ImportError as exc:
        print(f"[skip] d3rlpy not importable ({exc}); pip install d3rlpy to compare")
        return None
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    from equicare.learn import to_d3rlpy

    mdp = to_d3rlpy(ds)
    cfg = (d3rlpy.algos.DiscreteBCConfig(batch_size=BATCH) if algo == "bc"
           else d3rlpy.algos.DiscreteCQLConfig(batch_size=BATCH, target_update_interval=100))
    learner = cfg.create(device="cpu:0")
    learner.build_with_dataset(mdp)
    kw = dict(show_progress=False, logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
              save_interval=10**9)
    learner.fit(mdp, n_steps=n_steps // 4, n_steps_per_epoch=n_steps // 4, **kw)  # warm-up
    t0 = time.perf_counter()
    learner.fit(mdp, n_steps=n_steps, n_steps_per_epoch=n_steps, **kw)
    return n_steps / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- LSTM AWR epoch
def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    return float("nan")


def lstm_awr_epoch(quick: bool = False) -> dict[str, float]:
    """One epoch (n_rows / 256 steps) of AWR with the LSTM encoder (window 4).

    Memory: resident set size sampled every 10 ms during ``fit`` (peak) and just before it.
    """
    import threading

    _threads()
    from equicare.learn import AWR

    ds = care_dataset(100, 10) if quick else care_dataset()
    n = max(2, ds.n_steps // BATCH)
    learner = AWR(encoder="lstm", window=4, hidden=HIDDEN, batch_size=BATCH, n_steps=n,
                  eval_every=n, valid_fraction=0.0)
    rss0 = _rss_mb()
    peak = [rss0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.01)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    learner.fit(ds, progress=False)
    seconds = time.perf_counter() - t0
    stop.set()
    th.join()
    return {"seconds": seconds, "steps": float(n), "peak_rss_mb": max(peak[0], _rss_mb()),
            "rss_before_mb": rss0}


def _lstm_epoch_subprocess(quick: bool = False) -> dict[str, float]:
    args = [sys.executable, __file__, "--lstm-epoch"] + (["--quick"] if quick else [])
    out = subprocess.run(args, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- run
def _entry(value: float, unit: str, peer: str | None = None,
           peer_value: float | None = None, note: str | None = None) -> dict[str, Any]:
    if peer_value is None:
        peer = None
    ratio = None if peer_value in (None, 0) else value / peer_value
    out = {"value": value, "unit": unit, "peer": peer, "peer_value": peer_value, "ratio": ratio}
    if note:
        out["note"] = note
    return out


def run(n_steps: int = 400, quick: bool = False) -> dict[str, dict[str, Any]]:
    """Measure everything; entries follow the benchmark contract of the project.

    ``quick``: 100 members x 10 weeks and 8 steps, a smoke run (its numbers mean nothing).
    """
    _threads()
    ds = care_dataset(100, 10) if quick else care_dataset()
    if quick:
        n_steps = 8
    print(f"data: {ds.n_steps} transitions, {ds.n_features} features, {ds.n_actions} actions "
          f"({int((ds.action_space.counts(ds.actions) > 0).sum())} observed); one torch thread")
    res: dict[str, dict[str, Any]] = {}
    for algo in ("bc", "cql"):
        ours, k_all = ours_steps_per_s(algo, ds, n_steps, support="all")
        ours_obs, k_obs = ours_steps_per_s(algo, ds, n_steps, support="observed")
        plain = plain_steps_per_s(algo, ds, n_steps)
        peer = d3rlpy_steps_per_s(algo, ds, n_steps)
        name = "DiscreteBC" if algo == "bc" else "DiscreteCQL"
        if k_all != ds.n_actions:
            raise RuntimeError(f"support='all' gave {k_all} outputs, expected {ds.n_actions}")
        res[f"{algo}_steps_per_s_vs_d3rlpy"] = _entry(
            ours, "steps/s", f"d3rlpy {name} ({ds.n_actions} outputs)", peer,
            f"like-for-like: {k_all} outputs each")
        res[f"{algo}_steps_per_s_vs_plain_torch"] = _entry(
            ours, "steps/s", f"plain PyTorch loop ({ds.n_actions} outputs)", plain,
            f"like-for-like: {k_all} outputs each")
        res[f"{algo}_observed_support_steps_per_s_vs_d3rlpy"] = _entry(
            ours_obs, "steps/s", f"d3rlpy {name} ({ds.n_actions} outputs)", peer,
            f"not like-for-like: equicare's default support='observed' has {k_obs} outputs, "
            f"the peer {ds.n_actions}")
    lstm = _lstm_epoch_subprocess(quick)
    res["awr_lstm_epoch_seconds"] = _entry(lstm["seconds"], "s")
    res["awr_lstm_steps_per_s"] = _entry(lstm["steps"] / lstm["seconds"], "steps/s")
    res["awr_lstm_peak_rss_mb"] = _entry(lstm["peak_rss_mb"], "MB")
    res["awr_lstm_rss_increase_mb"] = _entry(lstm["peak_rss_mb"] - lstm["rss_before_mb"], "MB")
    return res


if __name__ == "__main__":
    if "--lstm-epoch" in sys.argv:
        print(json.dumps(lstm_awr_epoch(quick="--quick" in sys.argv)))
        sys.exit(0)
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} cores)")
    results = run(quick="--quick" in sys.argv)
    for k, v in results.items():
        ratio = "" if v["ratio"] is None else f"  ratio {v['ratio']:.2f}x vs {v['peer']} " \
                                              f"({v['peer_value']:.1f} {v['unit']})"
        print(f"{k:38s} {v['value']:10.2f} {v['unit']}{ratio}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
