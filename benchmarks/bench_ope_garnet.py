"""Benchmark: ``equicare evaluate`` end to end on Garnet test-bed panels, against SCOPE-RL + d3rlpy.

Workload
--------
Two clinical-shaped panels from ``equicare.sim.garnet`` (exact truth in ``truth.json``):

* ``700x25``: preset ``s700_a25_g1`` (700 states, 25 actions, gamma 1), about 50,000 rows;
* ``5000x100``: preset ``s5000_a100_g1`` (5,000 states, 100 actions, gamma 1), about 50,000 rows.

Target policy: the ``soft_optimal`` family (stochastic, in the clinicians' support).

Measures (per panel)
--------------------
* ``ope_garnet_<S>x<A>_end_to_end``: wall time of ``equicare evaluate PANEL --manifest ...
  --policy policies/soft_optimal.parquet --bootstrap 1000 --out r.json`` in a fresh subprocess
  (load, propensities, support check, ``q_model=auto`` with every candidate cross-fitted, all
  seven estimators, 1,000 bootstrap replicates, subgroups). Budgets: 30 s (700x25), 120 s
  (5000x100). Peer: SCOPE-RL 0.2.1 with d3rlpy 2.8.1's ``DiscreteFQE`` on the same panel in its
  own subprocess: episodes padded to the longest stay (reward 0, propensity 1 and target
  probability 1 on action 0 after the end), states one-hot (S <= 1,000) or
  ``[severity, state / S]``, FQE ``n_steps`` = ``FQE_STEPS``, then SCOPE-RL's DM, TIS, PDIS,
  DR, SNTIS, SNPDIS, SNDR with 1,000 bootstrap replicates.
* ``ope_garnet_<S>x<A>_peak_memory``: peak resident memory of that subprocess alone (MB, its
  own ``VmHWM``; budgets 1,024 / 2,048); peer: the SCOPE-RL + d3rlpy subprocess, measured the
  same way.
* ``ope_garnet_<S>x<A>_dr_rel_error``: |DR - truth| / truth of our run; peer: SCOPE-RL's DR
  with the d3rlpy FQE.
* ``ope_garnet_5000x100_estimated_propensities_end_to_end`` and ``..._peak_memory``: the same
  in-memory command on the 5000x100 panel with ``behavior_prob`` removed from the manifest, so
  that ``evaluate`` estimates the propensities (the default behaviour model: the state is a
  saturated categorical column, so one flat multinomial logistic model over the 100 actions,
  fitted in-sample) and uses them for every weighted estimator and the support check. Same
  budgets as the logged-propensity run. No peer: SCOPE-RL's OPE takes the logged ``pscore`` and
  has no behaviour-policy estimation, so it would not do this work.
* ``ope_garnet_<S>x<A>_stream_end_to_end`` and ``..._stream_peak_memory``: the same command
  streamed, ``--chunk-rows`` :data:`CHUNK_ROWS` (passes over episode-aligned chunks; ``auto``
  chooses on a sample of whole episodes, here the whole panel; its point estimates equal the
  in-memory run's, checked here). Same budgets as in memory. No peer: SCOPE-RL and d3rlpy hold
  the whole padded panel in memory and have no streamed mode, so there is nothing to run on
  their side.

And the README's quick tour (issue 14's third budget, 10 s): ``equicare synth --members 1000
--weeks 52``, ``train --algo awr --steps 3000``, ``predict`` (not timed), then
``ope_care_quick_tour_end_to_end``, the wall time of the tour's ``equicare evaluate
data/panel.parquet --manifest data/manifest.toml --policy awr_probs.parquet --bootstrap 1000``
in a fresh subprocess, and ``ope_care_quick_tour_peak_memory``, its own peak memory (MB). No
peer: SCOPE-RL has no equivalent of the care panel's 300 factored actions and numeric states
end to end, so these entries are our own budget only.

``EQUICARE_BENCH_SCALE=small`` runs 300-episode panels (a smoke test of the harness); peers are
skipped when not importable (the entry then has no peer). ``run(quick=True)`` (``run_all.py
--quick``, or ``--quick`` here) is a smoke run whose numbers mean nothing: both panels become
:data:`QUICK_PRESET` with :data:`QUICK_EPISODES` episodes, :data:`QUICK_BOOT` bootstrap
replicates, no peer, and the quick tour simulates 100 members x 10 weeks and trains 20 steps.
Run: ``.venv/bin/python benchmarks/bench_ope_garnet.py [--quick]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Panels: name -> (preset, episodes at full scale).
PANELS = {"700x25": ("s700_a25_g1", 3900), "5000x100": ("s5000_a100_g1", 3900)}
SMALL_EPISODES = 300
N_BOOT = 1000
FAMILY = "soft_optimal"
FQE_STEPS = 10_000
#: Panels also evaluated with estimated propensities (``behavior_prob`` left out of the manifest).
ESTIMATED_PANELS = ("5000x100",)
#: The note of the estimated-propensity entries (no peer).
ESTIMATED_NOTE = ("no peer: SCOPE-RL's OPE reads logged propensities and cannot estimate them; "
                  "ours fits the behaviour model (flat multinomial logistic, in-sample) first")
#: Rows per chunk of the streamed runs (about a third of a full panel, so 3-4 chunks).
CHUNK_ROWS = 20_000
#: ``quick`` mode (a smoke run): every panel is this tiny preset with this many episodes, and
#: every ``evaluate`` draws this many bootstrap replicates.
QUICK_PRESET, QUICK_EPISODES, QUICK_BOOT = "s50_a5_g1", 100, 20
_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

#: Peak resident memory of the running process itself, in MB: ``VmHWM`` of ``/proc/self/status``
#: (the high-water mark of this process's own address space). ``ru_maxrss`` is not used on Linux:
#: across fork/vfork + exec it keeps the high-water mark of the parent's address space (the
#: bench process that synthesised the panels), and ``RUSAGE_CHILDREN`` is the maximum over all
#: children so far, so neither is one child's own peak. Falls back to ``ru_maxrss`` without
#: ``/proc``.
_PEAK = """
def _peak_mb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

#: Runs the CLI in-process and prints its wall time and own peak memory as JSON.
_OURS = _PEAK + """
import json, sys, time
t0 = time.perf_counter()
from equicare.cli import main
sys.argv = ["equicare"] + sys.argv[1:]
try:
    main()
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
print("BENCH " + json.dumps({"seconds": time.perf_counter() - t0, "max_rss_mb": _peak_mb()}))
"""

_PEER = _PEAK + r"""
import json, sys, time, warnings
t0 = time.perf_counter()
import numpy as np, pandas as pd
try:
    import d3rlpy, torch
    from scope_rl.ope import OffPolicyEvaluation
    from scope_rl.ope.discrete import (DirectMethod, DoublyRobust, PerDecisionImportanceSampling,
        SelfNormalizedDR, SelfNormalizedPDIS, SelfNormalizedTIS, TrajectoryWiseImportanceSampling)
except Exception as exc:
    print("BENCH " + json.dumps({"skipped": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
torch.set_num_threads(1)
d, fqe_steps, n_boot = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
truth = json.load(open(f"{d}/truth.json"))
df = pd.read_parquet(f"{d}/panel.parquet")
pol = pd.read_parquet(f"{d}/policies/FAMILY.parquet")
n_s = int(truth["config"]["n_states"]); n_a = int(truth["config"]["n_actions"])
gamma = float(truth["config"]["gamma"])
ep = df["episode"].to_numpy(); t = df["t"].to_numpy()
s = df["state"].cat.codes.to_numpy().astype(np.int64)
n_ep = int(ep.max()) + 1; h = int(t.max()) + 1
grid = ep * h + t
size = n_ep * h
state = np.zeros(size, np.int64); sev = np.zeros(size, np.float32)
act = np.zeros(size, np.int64); rew = np.zeros(size); pscore = np.ones(size)
alive = np.zeros(size, bool)
state[grid] = s; sev[grid] = df["severity"].to_numpy(); act[grid] = df["action"].to_numpy()
rew[grid] = df["reward"].to_numpy(); pscore[grid] = df["propensity"].to_numpy(); alive[grid] = True
done = np.zeros(size); done[np.arange(n_ep) * h + h - 1] = 1.0
term = np.zeros(size); term[grid] = df["terminal"].to_numpy()
pe = np.zeros((size, n_a)); pe[~alive, 0] = 1.0
prow = pol["episode"].to_numpy() * h + pol["t"].to_numpy()
pe[prow, pol["action"].to_numpy()] = pol["prob"].to_numpy()
if n_s <= 1000:
    obs = np.zeros((size, n_s + 1), np.float32); obs[np.arange(size), state] = 1.0
    obs[:, -1] = sev; obs[~alive] = 0.0
else:
    obs = np.stack([sev, state / n_s], axis=1).astype(np.float32); obs[~alive] = 0.0
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    data = d3rlpy.dataset.MDPDataset(observations=obs, actions=act[:, None],
        rewards=rew.astype(np.float32), terminals=np.maximum(done, term).astype(np.float32),
        action_space=d3rlpy.constants.ActionSpace.DISCRETE, action_size=n_a)
    base = d3rlpy.algos.DiscreteBCConfig().create(device="cpu:0")
    base.build_with_dataset(data)
    # d3rlpy's FQE evaluates algo.impl.predict_best_action at the next observations: make that
    # a draw from the (stochastic) target policy's table, so FQE targets the same policy
    table = torch.zeros((n_s, n_a)); table[:, 0] = 1.0
    table[torch.as_tensor(state[alive])] = torch.as_tensor(pe[alive], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    def _target_action(x):
        st = x[:, :n_s].argmax(dim=1) if n_s <= 1000 else (x[:, 1] * n_s).round().long()
        return torch.multinomial(table[st.clamp(0, n_s - 1)], 1, generator=gen).squeeze(1)
    base.impl.predict_best_action = _target_action
    fqe = d3rlpy.ope.DiscreteFQE(algo=base, config=d3rlpy.ope.FQEConfig(gamma=gamma))
    fqe.fit(data, n_steps=fqe_steps, n_steps_per_epoch=fqe_steps, show_progress=False,
            logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    q = np.stack([fqe.predict_value(obs, np.full(size, a)) for a in range(n_a)], axis=1)
q[~alive] = 0.0
v0 = (q * pe).sum(axis=1)[np.arange(n_ep) * h]
logged = {"size": size, "n_trajectories": n_ep, "step_per_trajectory": h,
          "action_type": "discrete", "n_actions": n_a, "action_dim": None, "action_keys": None,
          "action_meaning": None, "state_dim": obs.shape[1], "state_keys": None, "state": obs,
          "action": act, "reward": rew, "done": done, "terminal": done, "info": {},
          "pscore": pscore, "behavior_policy": "behavior", "dataset_id": 0}
inp = {"target": {"evaluation_policy_action": None, "evaluation_policy_action_dist": pe,
                  "state_action_value_prediction": q, "initial_state_value_prediction": v0,
                  "state_action_marginal_importance_weight": None,
                  "state_marginal_importance_weight": None, "on_policy_policy_value": None,
                  "gamma": gamma, "behavior_policy": "behavior", "evaluation_policy": "target",
                  "dataset_id": 0}}
ests = [DirectMethod(), TrajectoryWiseImportanceSampling(), PerDecisionImportanceSampling(),
        DoublyRobust(), SelfNormalizedTIS(), SelfNormalizedPDIS(), SelfNormalizedDR()]
ope = OffPolicyEvaluation(logged_dataset=logged, ope_estimators=ests,
                          disable_reward_after_done=False)
values = ope.estimate_policy_value(inp)["target"]
ope.estimate_intervals(inp, ci="bootstrap", n_bootstrap_samples=n_boot, random_state=0)
print("BENCH " + json.dumps({"seconds": time.perf_counter() - t0, "dr": float(values["dr"]),
      "max_rss_mb": _peak_mb()}))
""".replace("FAMILY", FAMILY)


def _entry(value: float, unit: str, peer: str | None = None, peer_value: float | None = None
           ) -> dict[str, Any]:
    ratio = None if peer_value is None or value == 0 else float(peer_value / value)
    return {"value": float(value), "unit": unit, "peer": peer, "peer_value": peer_value,
            "ratio": ratio}


def _run(code: str, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, **_ENV}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, check=False)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = json.loads(lines[-1][6:])
    out["wall"] = wall
    return out


def run_panel(name: str, preset: str, n_episodes: int, workdir: Path, quick: bool = False
              ) -> dict[str, Any]:
    """Synthesise one panel, run ours and the peer (not when ``quick``); return the raw
    measurements."""
    from equicare.sim._garnet_cli import synth_garnet
    from equicare.sim.garnet import garnet_preset

    d = workdir / name
    synth_garnet(d, config=garnet_preset(preset), n_episodes=n_episodes, seed=1, overwrite=True)
    truth = json.loads((d / "truth.json").read_text())
    ours = _run(_OURS, ["evaluate", str(d / "panel.parquet"), "--manifest",
                        str(d / "manifest.toml"), "--policy",
                        str(d / "policies" / f"{FAMILY}.parquet"), "--bootstrap",
                        str(QUICK_BOOT if quick else N_BOOT), "--out", str(d / "result.json"),
                        "--force"])
    res = json.loads((d / "result.json").read_text())
    estimated = None
    if name in ESTIMATED_PANELS:  # the same command, the propensities estimated
        from equicare.data import Manifest, read_manifest

        md = read_manifest(d / "manifest.toml").to_dict()
        md["dataset"].pop("behavior_prob", None)
        (d / "manifest_estimated.toml").write_text(Manifest.from_dict(md).to_toml())
        estimated = _run(_OURS, ["evaluate", str(d / "panel.parquet"), "--manifest",
                                 str(d / "manifest_estimated.toml"), "--policy",
                                 str(d / "policies" / f"{FAMILY}.parquet"), "--bootstrap",
                                 str(QUICK_BOOT if quick else N_BOOT), "--out",
                                 str(d / "result_estimated.json"), "--force"])
        estimated["result"] = json.loads((d / "result_estimated.json").read_text())
    stream = _run(_OURS, ["evaluate", str(d / "panel.parquet"), "--manifest",
                          str(d / "manifest.toml"), "--policy",
                          str(d / "policies" / f"{FAMILY}.parquet"), "--bootstrap",
                          str(QUICK_BOOT if quick else N_BOOT), "--chunk-rows",
                          str(max(200, CHUNK_ROWS // 100) if quick else CHUNK_ROWS),
                          "--out", str(d / "result_stream.json"), "--force"])
    res_stream = json.loads((d / "result_stream.json").read_text())
    peer = ({"skipped": "quick run"} if quick
            else _run(_PEER, [str(d), str(FQE_STEPS), str(N_BOOT)]))
    return {"truth": float(truth["policies"][FAMILY]["value"]), "ours": ours, "result": res,
            "stream": stream, "result_stream": res_stream, "peer": peer, "estimated": estimated,
            "rows": int(res["n_steps"])}


def measure_panels(run_one: Any, quick: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(name, run_one(name, preset, n_episodes, workdir, quick=quick))`` for each of
    :data:`PANELS`, in a temporary folder (300 episodes with ``EQUICARE_BENCH_SCALE=small``;
    :data:`QUICK_PRESET` with :data:`QUICK_EPISODES` episodes when ``quick``)."""
    small = os.environ.get("EQUICARE_BENCH_SCALE") == "small"
    with tempfile.TemporaryDirectory() as tmp:
        for name, (preset, n_ep) in PANELS.items():
            if quick:
                preset, n_ep = QUICK_PRESET, QUICK_EPISODES
            elif small:
                n_ep = SMALL_EPISODES
            yield name, run_one(name, preset, n_ep, Path(tmp), quick=quick)


def _cli(args: list[str]) -> None:
    """Run one untimed CLI step of the quick tour in a subprocess (raise on failure)."""
    env = {**os.environ, **_ENV}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import sys; from equicare.cli import main; "
            "sys.argv = ['equicare'] + sys.argv[1:]; main()")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"equicare {' '.join(args)} failed: {proc.stderr[-2000:]}")


def run_quick_tour(workdir: Path, *, members: int = 1000, steps: int = 3000, weeks: int = 52,
                   n_boot: int = N_BOOT) -> dict[str, Any]:
    """The README's quick tour up to ``evaluate``; only ``evaluate`` is timed (module docstring)."""
    data, model, probs = workdir / "data", workdir / "models" / "awr", workdir / "awr_probs.parquet"
    panel, manifest = str(data / "panel.parquet"), str(data / "manifest.toml")
    _cli(["synth", "--members", str(members), "--weeks", str(weeks), "--out", str(data)])
    _cli(["train", panel, "--manifest", manifest, "--algo", "awr", "--steps", str(steps),
          "--out", str(model), "--no-progress"])
    _cli(["predict", str(model), panel, "--manifest", manifest, "--out", str(probs)])
    ours = _run(_OURS, ["evaluate", panel, "--manifest", manifest, "--policy", str(probs),
                        "--bootstrap", str(n_boot), "--out", str(workdir / "tour_result.json"),
                        "--no-progress"])
    res = json.loads((workdir / "tour_result.json").read_text())
    return {"ours": ours, "rows": int(res["n_steps"]), "q_model": res["q_model"].get("chosen")}


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Measure both panels and the README's quick-tour evaluate (see the module docstring).

    ``quick``: a smoke run at tiny sizes without peers (its numbers mean nothing).
    """
    out: dict[str, dict[str, Any]] = {}
    small = os.environ.get("EQUICARE_BENCH_SCALE") == "small"
    with tempfile.TemporaryDirectory() as tmp:
        if quick:
            tour = run_quick_tour(Path(tmp), members=100, steps=20, weeks=10, n_boot=QUICK_BOOT)
        else:
            tour = run_quick_tour(Path(tmp), members=100 if small else 1000,
                                  steps=100 if small else 3000)
    out["ope_care_quick_tour_end_to_end"] = _entry(tour["ours"]["wall"], "s")
    out["ope_care_quick_tour_peak_memory"] = _entry(tour["ours"]["max_rss_mb"], "MB")
    print(f"quick tour: {tour['rows']} rows, q_model {tour['q_model']}, "
          f"{tour['ours']['wall']:.1f} s, {tour['ours']['max_rss_mb']:.0f} MB")
    for name, m in measure_panels(run_panel, quick=quick):
        peer = m["peer"]
        has_peer = "skipped" not in peer
        label = "scope-rl 0.2.1 + d3rlpy 2.8.1 DiscreteFQE" if has_peer else None
        if not has_peer:
            print(f"{name}: peer skipped ({peer['skipped']})")
        truth = m["truth"]
        dr = m["result"]["estimates"]["dr"]["value"]
        out[f"ope_garnet_{name}_end_to_end"] = _entry(
            m["ours"]["wall"], "s", label, peer["wall"] if has_peer else None)
        out[f"ope_garnet_{name}_peak_memory"] = _entry(
            m["ours"]["max_rss_mb"], "MB", label, peer["max_rss_mb"] if has_peer else None)
        out[f"ope_garnet_{name}_dr_rel_error"] = _entry(
            abs(dr / truth - 1.0), "relative", label,
            abs(peer["dr"] / truth - 1.0) if has_peer else None)
        if m["estimated"] is not None:
            est = m["estimated"]
            key = f"ope_garnet_{name}_estimated_propensities"
            out[f"{key}_end_to_end"] = {**_entry(est["wall"], "s"), "note": ESTIMATED_NOTE}
            out[f"{key}_peak_memory"] = {**_entry(est["max_rss_mb"], "MB"),
                                         "note": ESTIMATED_NOTE}
            e = est["result"]["estimates"]
            print(f"{name}, estimated propensities: {est['wall']:.1f} s, "
                  f"{est['max_rss_mb']:.0f} MB, DR {e['dr']['value']:.4f}, "
                  f"IS {e['is']['value']:.4f} vs truth {truth:.4f}")
        out[f"ope_garnet_{name}_stream_end_to_end"] = _entry(m["stream"]["wall"], "s")
        out[f"ope_garnet_{name}_stream_peak_memory"] = _entry(m["stream"]["max_rss_mb"], "MB")
        same = all(abs(m["result_stream"]["estimates"][k]["value"] - e["value"])
                   <= 1e-9 * max(1.0, abs(e["value"]))
                   for k, e in m["result"]["estimates"].items() if e.get("value") is not None)
        print(f"{name}: {m['rows']} rows, q_model {m['result']['q_model'].get('chosen')}, "
              f"DR {dr:.4f} vs truth {truth:.4f}; streamed {m['stream']['wall']:.1f} s, "
              f"{m['stream']['max_rss_mb']:.0f} MB, point estimates "
              f"{'equal' if same else 'DIFFERENT'} to in memory")
        if not same:
            raise RuntimeError(f"{name}: streamed point estimates differ from in memory")
    return out


if __name__ == "__main__":
    for k, v in run(quick="--quick" in sys.argv).items():
        print(k, v)
