"""Benchmark of OMG-RL on the heparin simulator: stage times and the table of methods.

``python benchmarks/bench_omg.py`` times the full pipeline (dynamics ensemble + guided reward
learning + conservative SAC) on 2,000 simulated patients with the default configuration, single
threaded, and evaluates the policy in the true simulator.

``python benchmarks/bench_omg.py --table --seeds 0 1 2`` trains every method of the comparison in
``docs/dosing.md`` (behaviour, BC, discrete CQL, model-free conservative SAC with r_p, model-based
conservative SAC with r_p, OMG-RL) for each seed and prints the table (mean +- SE over seeds); with
``--out results.json`` it writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

N_PATIENTS = 2000
N_EVAL = 4000
EVAL_SEED = 7


def _entry(value: float, unit: str) -> dict[str, Any]:
    return {"value": float(value), "unit": unit, "peer": None, "peer_value": None, "ratio": None}


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Stage times of the full OMG-RL pipeline on 2,000 patients (single thread).

    ``quick``: ``OMGConfig.small()`` on 100 patients, a smoke run (its numbers mean nothing).
    """
    import torch

    from equicare.dosing._omg import OMG, OMGConfig
    from equicare.sim.heparin import evaluate_heparin_policy, heparin_dataset

    torch.set_num_threads(1)
    print("peer: none (no maintained implementation of OMG-RL / guided cost learning with a "
          "discrete conservative SAC to compare against)")
    t0 = time.perf_counter()
    n_patients, n_eval = (100, 100) if quick else (N_PATIENTS, N_EVAL)
    ds = heparin_dataset(n_patients, random_state=0)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    omg = OMG(OMGConfig.small() if quick else OMGConfig(), random_state=0).fit(ds)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = evaluate_heparin_policy(omg, n_patients=n_eval, random_state=EVAL_SEED, greedy=True)
    t_eval = time.perf_counter() - t0
    beh = evaluate_heparin_policy("behavior", n_patients=n_eval, random_state=EVAL_SEED)
    st = omg.stage_seconds_
    return {
        "simulate_2000_patients": _entry(t_sim, "s"),
        "omg_stage_dynamics": _entry(st["dynamics"], "s"),
        "omg_stage_reward": _entry(st["reward"], "s"),
        "omg_stage_policy": _entry(st["policy"], "s"),
        "omg_total_2000_patients": _entry(total, "s"),
        "evaluate_4000_patients": _entry(t_eval, "s"),
        "omg_tir": _entry(ev.value("tir"), "fraction"),
        "behavior_tir": _entry(beh.value("tir"), "fraction"),
        "dynamics_aptt_rmse": _entry(omg.dynamics_.holdout_metrics_["rmse"]["aptt"]
                                     if omg.dynamics_ is not None else float("nan"), "s (aPTT)"),
    }


# ---------------------------------------------------------------------------- methods table
def _summ(ev: Any) -> dict[str, Any]:
    g = ev.by_group.set_index("group")
    return {"tir": ev.value("tir"), "tir_mc_se": ev.se("tir"),
            "reach24": ev.value("reach24"), "ae_rate": ev.value("ae_rate"),
            "ae_mc_se": ev.se("ae_rate"), "return": ev.value("return"),
            "tir_gap": ev.tir_gap, "group_tir": {k: float(v) for k, v in g["tir"].items()},
            "_per_patient_tir": ev.per_patient["tir"].tolist()}


def one_seed(seed: int, methods: tuple[str, ...]) -> dict[str, Any]:
    """Train every method on the data of one seed and evaluate it in the simulator."""
    import torch
    from scipy.stats import spearmanr

    from equicare.dosing._omg import OMG, OMGConfig
    from equicare.models._dynamics import DynamicsEnsemble
    from equicare.sim.heparin import clinical_reward, evaluate_heparin_policy, heparin_dataset

    torch.set_num_threads(1)
    ds = heparin_dataset(N_PATIENTS, random_state=seed)
    test = heparin_dataset(500, random_state=seed + 1000)
    out: dict[str, Any] = {"seed": seed, "methods": {}, "times": {}}

    def ev(policy: Any, greedy: bool) -> dict[str, Any]:
        return _summ(evaluate_heparin_policy(policy, n_patients=N_EVAL, random_state=EVAL_SEED,
                                             greedy=greedy))

    out["methods"]["behavior"] = ev("behavior", False)
    cfg = OMGConfig()
    t0 = time.perf_counter()
    dyn = DynamicsEnsemble(cfg.dynamics, random_state=seed).fit(ds)
    out["times"]["dynamics"] = time.perf_counter() - t0
    hm = dyn.holdout_metrics_
    out["dynamics"] = {"aptt_rmse": hm["rmse"]["aptt"],
                       "aptt_rmse_persistence": hm["rmse_persistence"]["aptt"],
                       "reward_rmse": hm["reward_rmse"]}
    if "bc" in methods:
        from equicare.learn import BC

        t0 = time.perf_counter()
        bc = BC(n_steps=5000, hidden=(128, 128), seed=seed, valid_fraction=0.0).fit(
            ds, progress=False)
        out["times"]["bc"] = time.perf_counter() - t0
        out["methods"]["bc"] = ev(bc, False)
        out["methods"]["bc_greedy"] = ev(bc, True)
    if "cql" in methods:
        from equicare.learn import CQL

        t0 = time.perf_counter()
        cql = CQL(n_steps=10000, hidden=(128, 128), seed=seed, valid_fraction=0.0, alpha=1.0,
                  support="all").fit(ds, progress=False)
        out["times"]["cql"] = time.perf_counter() - t0
        out["methods"]["cql"] = ev(cql, True)
    variants = {"sac_modelfree_rp": OMGConfig(reward="dataset", use_model=False),
                "sac_model_rp": OMGConfig(reward="dataset"),
                "omg": OMGConfig()}
    for name, c in variants.items():
        if name not in methods:
            continue
        t0 = time.perf_counter()
        model = OMG(c, random_state=seed).fit(ds, dynamics=dyn if c.use_model else None)
        out["times"][name] = time.perf_counter() - t0
        out["methods"][name] = ev(model, True)
        if name == "omg":
            has = test.next_index >= 0
            rho = spearmanr(model.dataset_reward(test)[has], test.rewards[has])[0]
            grid = model.reward_grid("aptt", np.arange(20.0, 181.0, 5.0), linked=("aptt_prev",))
            st = test.states
            rho_s = spearmanr(model.learned_reward(st, test.actions, st),
                              clinical_reward(st[:, 0]))[0]
            out["reward"] = {"spearman": float(rho), "spearman_states": float(rho_s),
                             "peak_aptt": float(grid["aptt"][grid["reward"].idxmax()]),
                             "grid": grid[["aptt", "reward"]].round(4).to_dict(orient="list")}
            out["times"]["omg_stages"] = model.stage_seconds_
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table: mean +- SE over seeds of each method's ground truth."""
    names = {"behavior": "Behaviour (nomogram, logged)", "bc": "BC (sampled)",
             "bc_greedy": "BC (greedy)", "cql": "Discrete CQL, r_p",
             "sac_modelfree_rp": "Conservative SAC, model-free, r_p",
             "sac_model_rp": "Conservative SAC + model, r_p (known reward)",
             "omg": "OMG-RL (learned reward)"}
    rows = ["| method | TIR | reach 24 h | adverse events | TIR gap (groups) | return |",
            "|---|---|---|---|---|---|"]
    for key, label in names.items():
        vals = [r["methods"][key] for r in results if key in r["methods"]]
        if not vals:
            continue

        def ms(f: str, scale: float = 1.0, vals: list[dict[str, Any]] = vals) -> str:
            x = np.array([v[f] for v in vals]) * scale
            se = x.std(ddof=1) / np.sqrt(x.size) if x.size > 1 else float("nan")
            return f"{x.mean():.1f} +- {se:.1f}"

        rows.append(f"| {label} | {ms('tir', 100)} | {ms('reach24', 100)} | "
                    f"{ms('ae_rate', 100)} | {ms('tir_gap', 100)} | {ms('return')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run of run()")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+",
                    default=["bc", "cql", "sac_modelfree_rp", "sac_model_rp", "omg"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not args.table:
        for k, v in run(quick=args.quick).items():
            print(f"{k:28s} {v['value']:10.3f} {v['unit']}")
        return
    results = []
    for s in args.seeds:
        res = one_seed(s, tuple(args.methods))
        results.append(res)
        if args.out:
            with open(args.out + f".seed{s}.json", "w") as fh:
                json.dump(res, fh)
        print(json.dumps({k: v for k, v in res.items() if k != "methods"}, default=float)[:2000])
        sys.stdout.flush()
    print(table(results))
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(results, fh)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
