"""Safe policy improvement and selection on the Garnet test bed, against exact values.

For each configuration and seed (5,000 episodes): the exact value of the policy kept by
``select_policy`` (SPIBB and PVI candidates, held-out OPE lower bounds, behaviour fallback), of
every candidate, of the behaviour reproduction (``N_wedge = inf``) and optionally of BC, AWR and
CQL trained alone on all episodes; as the share of the behaviour-to-optimum gap closed. With
``--time-cli`` it also times ``equicare train --select auto`` end to end (defaults, 700 x 25).

Usage::

    python benchmarks/bench_select.py --configs s50_a5_g1 s700_a25_g1 --seeds 5
    python benchmarks/bench_select.py --neural bc awr cql --neural-steps 2000 --seeds 2
    python benchmarks/bench_select.py --time-cli --configs --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _panel(cfg, n: int, seed: int):
    from equicare.data import from_frame
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest
    from equicare.sim.garnet import garnet_panel

    mdp, pan = garnet_panel(cfg, n, seed)
    return mdp, from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)


def run_one(name: str, seed: int, episodes: int, neural: list[str], neural_steps: int,
            bound: str = "paired", pvi: tuple | None = None, folds: int = 2,
            refit_full: bool = False, estimators: tuple[str, ...] | None = None,
            full_exact: bool = False, n_wedges: tuple[float, ...] | None = None,
            rank_by: str | None = None, multiplicity: str | None = None,
            bootstrap: int | None = None, q_model: str | None = None) -> dict:
    """Exact values of every policy for one configuration and seed.

    ``estimators``: the OPE estimators of the selection (default: ``SelectConfig``'s); a
    superset lets :func:`rescore` re-apply any rule over a subset of them to the same run.
    ``full_exact``: also the exact value of every candidate retrained on all episodes
    (``candidates_full``; what a rule that keeps it saves with ``folds = 2`` or
    ``refit_full``), so that :func:`rescore` is exact, not the half-trained fit's value.
    """
    from equicare.learn import SPIBB
    from equicare.learn._registry import LEARNERS
    from equicare.pipeline._select import SelectConfig, select_policy
    from equicare.sim.garnet import garnet_policy_table, garnet_preset, garnet_target_policies

    cfg = garnet_preset(name)
    mdp, ds = _panel(cfg, episodes, seed)
    vb = mdp.value(mdp.behavior_policy)
    vo = mdp.value(garnet_target_policies(mdp)["optimal"])

    def exact(policy) -> float:
        table, _ = garnet_policy_table(mdp, ds, policy)
        return mdp.value(table)

    t0 = time.perf_counter()
    extra: dict = {} if pvi is None else {"pvi": pvi}
    if n_wedges is not None:
        extra["n_wedges"] = tuple(n_wedges)
    if estimators is not None:
        extra["estimators"] = tuple(estimators)
    if rank_by is not None:
        extra["rank_by"] = rank_by
    if multiplicity is not None:  # else SelectConfig's default (bonferroni)
        extra["multiplicity"] = multiplicity
    if bootstrap is not None:
        extra["bootstrap"] = bootstrap
    if q_model is not None:
        extra["q_model"] = q_model
    res = select_policy(ds, SelectConfig(neural=(), seed=seed, bound=bound, folds=folds,
                                         refit_full=refit_full, **extra))
    sel_s = time.perf_counter() - t0
    row = {"config": name, "seed": seed, "behavior": vb, "optimal": vo,
           "n_rows": ds.n_steps, "selected": exact(res.learner.policy_),
           "chosen": res.chosen, "select_seconds": sel_s,
           "candidates": {k: exact(v.policy_) for k, v in res.learners.items()},
           "behavior_estimate": exact(SPIBB(n_wedge=float("inf")).fit(ds).policy_),
           "behavior_heldout": res.behavior_value,
           "table": [c.to_dict() for c in res.candidates]}
    # per candidate, per estimator: pooled point value and paired lower bound of the gain
    row["bounds"] = {c.name: {k: {"value": e["value"], "gain_lcb": e["gain_lcb"]}
                              for k, e in c.estimates.items()}
                     for c in res.candidates if c.error is None and c.estimates}
    if full_exact:
        from equicare.pipeline._select import _candidate_specs, _fit

        t1 = time.perf_counter()
        row["candidates_full"] = {name: exact(_fit(algo, params, ds).policy_)
                                  for name, algo, params in _candidate_specs(
                                      ds, SelectConfig(neural=(), seed=seed, **extra))
                                  if name in res.learners}
        row["full_seconds"] = time.perf_counter() - t1
    for algo in neural:
        t1 = time.perf_counter()
        learner = LEARNERS[algo](n_steps=neural_steps, valid_fraction=0.0, seed=seed)
        learner.fit(ds, progress=False)
        row[algo] = exact(learner.policy_)
        row[f"{algo}_seconds"] = time.perf_counter() - t1
    return row


def gap(v: float, r: dict) -> float:
    """Share of the behaviour-to-optimum gap closed by value ``v``."""
    return (v - r["behavior"]) / (r["optimal"] - r["behavior"])


def summarise(rows: list[dict], neural: list[str]) -> list[dict]:
    """Per configuration: mean gap closed and worst drop below behaviour."""
    out = []
    for name in dict.fromkeys(r["config"] for r in rows):
        rs = [r for r in rows if r["config"] == name]
        cands = sorted({k for r in rs for k in r["candidates"]})
        best_fixed = max(cands, key=lambda k: np.mean([gap(r["candidates"][k], r) for r in rs]))
        s = {"config": name, "seeds": len(rs),
             "behavior": float(np.mean([r["behavior"] for r in rs])),
             "optimal": float(np.mean([r["optimal"] for r in rs])),
             "selected_gap": float(np.mean([gap(r["selected"], r) for r in rs])),
             "selected_worst_drop": float(min(r["selected"] - r["behavior"] for r in rs)),
             "fallbacks": sum(r["chosen"] == "behavior" for r in rs),
             "chosen": ",".join(sorted({r["chosen"] for r in rs})),
             "behavior_estimate_gap": float(np.mean([gap(r["behavior_estimate"], r)
                                                     for r in rs])),
             "best_fixed": best_fixed,
             "best_fixed_gap": float(np.mean([gap(r["candidates"][best_fixed], r) for r in rs])),
             "select_seconds": float(np.mean([r["select_seconds"] for r in rs]))}
        for algo in neural:
            s[f"{algo}_gap"] = float(np.mean([gap(r[algo], r) for r in rs]))
            s[f"{algo}_worst_drop"] = float(min(r[algo] - r["behavior"] for r in rs))
        out.append(s)
    return out


def reselect(rows: list[dict], names: set[str] | None = None, bound: str = "paired",
             rank: str = "estimate") -> list[dict]:
    """The rows as ``select_policy`` would have chosen among a subset of their candidates.

    Each candidate's held-out evaluation is independent of the others (same split, same
    bootstrap counts), so choosing among a subset of a run's candidates from its saved table is
    exactly what a run with only that subset would choose. ``bound="separate"`` applies the
    earlier rule (a candidate's own lower bound above the behaviour's held-out value; with
    ``rank="bound"`` this is the rule before the paired bound); the saved ``lcb_gain`` must come
    from a paired run for ``bound="paired"``.
    """
    out = []
    for r in rows:
        passed = []
        for c in r["table"]:
            if names is not None and c["name"] not in names or c["lcb"] is None:
                continue
            lg = c["lcb_gain"] if bound == "paired" else c["lcb"] - r["behavior_heldout"]
            if lg is not None and lg > 0:
                passed.append((c["gain"] if rank == "estimate" else lg, c["name"]))
        chosen = max(passed, key=lambda t: t[0])[1] if passed else "behavior"  # first on ties
        value = r["candidates"][chosen] if passed else r["behavior_estimate"]
        out.append({**r, "chosen": chosen, "selected": value})
    return out


def merge_runs(rows: list[dict]) -> list[dict]:
    """Join runs of the same configuration and seed that trained different candidates.

    Candidates are evaluated independently (same split, Q-model seed and bootstrap counts), so
    the tables of two runs with disjoint candidate sets are one run's table over their union
    (checked: same behaviour held-out value).
    """
    out: dict[tuple[str, int], dict] = {}
    for r in rows:
        key = (r["config"], r["seed"])
        if key not in out:
            out[key] = {**r, "table": list(r["table"]), "candidates": dict(r["candidates"]),
                        "candidates_full": dict(r.get("candidates_full") or {})}
            continue
        m = out[key]
        if abs(m["behavior_heldout"] - r["behavior_heldout"]) > 1e-12:
            raise ValueError(f"{key}: runs with different held-out behaviour values")
        names = {c["name"] for c in m["table"]}
        m["table"] += [c for c in r["table"] if c["name"] not in names]
        m["candidates"].update(r["candidates"])
        m["candidates_full"].update(r.get("candidates_full") or {})
    return list(out.values())


def rescore(rows: list[dict], estimators: tuple[str, ...], rank: str = "estimate",
            names: set[str] | None = None, rank_by: str | None = None) -> list[dict]:
    """The rows as a paired rule over ``estimators`` would have chosen (offline, exact).

    Each row must come from a run whose selection computed (at least) ``estimators``; the
    choice is :func:`equicare.pipeline.choose_by_bounds` on the saved table, and its value is
    the kept candidate's exact value retrained on all episodes (``candidates_full``, from
    ``--full-exact``; without it the half-trained fit's, a pessimistic stand-in) or the
    behaviour reproduction's when nothing passes.
    """
    from equicare.pipeline._select import choose_by_bounds

    out = []
    for r in rows:
        table = [c for c in r["table"] if names is None or c["name"] in names]
        chosen = choose_by_bounds(table, r["behavior_heldout"], tuple(estimators), rank,
                                  rank_by)
        values = r.get("candidates_full") or r["candidates"]
        value = r["behavior_estimate"] if chosen == "behavior" else values[chosen]
        out.append({**r, "chosen": chosen, "selected": value})
    return out


def compare_rules(rows: list[dict], rules: list[tuple[str, ...]],
                  names: set[str] | None = None) -> list[dict]:
    """Per rule: gap closed and (selected - behaviour) per row, mean gap, worst, fallbacks.

    A rule is a tuple of estimators, optionally with ``"rank=bound"`` (keep the largest bound
    among those that pass instead of the largest estimated gain) and ``"rank_by=fqe"`` (order
    them by that estimator, :attr:`SelectConfig.rank_by`).
    """
    out = []
    for rule in rules:
        ests = tuple(k for k in rule if not k.startswith(("rank=", "rank_by=")))
        rank = next((k[5:] for k in rule if k.startswith("rank=")), "estimate")
        rank_by = next((k[8:] for k in rule if k.startswith("rank_by=")), None)
        rs = rescore(rows, ests, rank, names, rank_by)
        per = [{"config": r["config"], "seed": r["seed"], "chosen": r["chosen"],
                "gap": gap(r["selected"], r), "drop": r["selected"] - r["behavior"]}
               for r in rs]
        by_cfg = {}
        for p in per:
            by_cfg.setdefault(p["config"], []).append(p["gap"])
        out.append({"rule": "+".join(rule), "rows": per,
                    "mean_gap": float(np.mean([np.mean(v) for v in by_cfg.values()])),
                    "worst": float(min(p["drop"] for p in per)),
                    "fallbacks": sum(p["chosen"] == "behavior" for p in per)})
    return out


def print_rules(cmp: list[dict]) -> None:
    """One line per (configuration, seed), one column per rule: gap closed (F: fallback)."""
    head = f"{'config':16s} {'seed':>4s} " + " ".join(f"{c['rule']:>16s}" for c in cmp)
    print(head)
    for i, r0 in enumerate(cmp[0]["rows"]):
        cells = []
        for c in cmp:
            p = c["rows"][i]
            cells.append(f"{100 * p['gap']:+6.1f}% {'F' if p['chosen'] == 'behavior' else ' '}"
                         f"{p['drop']:+.3f}")
        print(f"{r0['config']:16s} {r0['seed']:4d} " + " ".join(f"{x:>16s}" for x in cells))
    print(f"{'mean over configs':21s} " + " ".join(f"{100 * c['mean_gap']:15.1f}%"
                                                  for c in cmp))
    print(f"{'worst drop':21s} " + " ".join(f"{c['worst']:+16.4f}" for c in cmp))
    print(f"{'fallbacks':21s} " + " ".join(f"{c['fallbacks']:16d}" for c in cmp))


def time_cli(episodes: int = 5000) -> dict:
    """CPU and wall seconds of ``equicare train --select auto`` (defaults) on 700 x 25."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}
        exe = [sys.executable, "-c", "from equicare.cli import main; main()"]
        subprocess.run([*exe, "synth", "--sim", "garnet", "--states", "700", "--actions", "25",
                        "--episodes", str(episodes), "--seed", "1", "--out", str(d / "g")],
                       check=True, env=env, capture_output=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([*exe, "train", str(d / "g" / "panel.parquet"), "-m",
                               str(d / "g" / "manifest.toml"), "--select", "auto", "--out",
                               str(d / "m"), "--no-progress"], env=env, capture_output=True,
                              text=True, check=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        doc = json.loads((d / "m" / "selection.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(proc.stdout)
    return {"wall_seconds": wall, "cpu_seconds": cpu, "chosen": doc["chosen"]}


def run(quick: bool = False) -> dict[str, dict]:
    """``make bench`` entries: time of ``train --select auto`` (700 x 25) and gap closed.

    The study over every configuration and five seeds is ``main`` (by hand; minutes per
    configuration). Here: the CLI end to end on the 700-state, 25-action panel (issue #15's
    time-to-quality budget: 3 minutes of CPU on 2 cores), and the exact share of the
    behaviour-to-optimum gap the kept policy closes on that configuration (one seed).
    """
    episodes = 300 if quick else 5000
    timed = time_cli(episodes)
    row = run_one("s50_a5_g1" if quick else "s700_a25_g1", 1, episodes, [], 0)

    def entry(value: float, unit: str, note: str | None = None) -> dict:
        e = {"value": value, "unit": unit, "peer": None, "peer_value": None, "ratio": None}
        if note:
            e["note"] = note
        return e

    return {
        "select_auto_700x25_cpu": entry(timed["cpu_seconds"], "s",
                                        f"wall {timed['wall_seconds']:.1f} s; kept "
                                        f"{timed['chosen']}"),
        "select_auto_700x25_gap_closed": entry(
            100.0 * gap(row["selected"], row), "%",
            f"exact values: behaviour {row['behavior']:.4f}, kept {row['selected']:.4f}, "
            f"optimum {row['optimal']:.4f} (one seed)"),
    }


def main() -> None:
    from equicare.sim.garnet import GARNET_PRESETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="*", default=list(GARNET_PRESETS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=1,
                    help="seeds first-seed .. first-seed + seeds - 1 (tune on other seeds "
                         "than the ones you report)")
    ap.add_argument("--episodes", type=int, default=5000)
    ap.add_argument("--neural", nargs="*", default=[])
    ap.add_argument("--neural-steps", type=int, default=2000)
    ap.add_argument("--time-cli", action="store_true")
    ap.add_argument("--bound", choices=("paired", "separate"), default="paired")
    ap.add_argument("--pvi", type=json.loads, default=None,
                    help='PVI candidates as JSON [[beta, prior, mix, tau], ...] ("[]": SPIBB only)')
    ap.add_argument("--folds", type=int, default=2,
                    help="K >= 2: K-fold cross-fitted selection (default 2; candidates' exact "
                         "values: the first fold's fit); 1: one 70/30 split")
    ap.add_argument("--refit-full", action="store_true",
                    help="with --folds 1: retrain the chosen candidate on all episodes")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--from", dest="saved", type=Path, default=None,
                    help="re-apply the rule (--bound, --rank, --candidates) to a saved study")
    ap.add_argument("--rank", choices=("estimate", "bound"), default="estimate")
    ap.add_argument("--candidates", nargs="*", default=None,
                    help="with --from: choose among these candidates only")
    ap.add_argument("--estimators", nargs="*", default=None,
                    help="OPE estimators of the selection (a superset lets --rules compare "
                         "bound rules on the same run)")
    ap.add_argument("--n-wedges", type=float, nargs="*", default=None,
                    help="SPIBB candidates' N_wedge values (default: SelectConfig's)")
    ap.add_argument("--full-exact", action="store_true",
                    help="also the exact value of every candidate retrained on all episodes")
    ap.add_argument("--rank-by", default=None,
                    help="SelectConfig.rank_by: the estimator that orders the candidates that pass")
    ap.add_argument("--multiplicity", choices=("none", "bonferroni"), default=None,
                    help="SelectConfig.multiplicity (default: SelectConfig's, bonferroni)")
    ap.add_argument("--bootstrap", type=int, default=None, help="SelectConfig.bootstrap")
    ap.add_argument("--q-model", default=None, help="SelectConfig.q_model (default: auto)")
    ap.add_argument("--rules", type=json.loads, default=None,
                    help='bound rules to compare, JSON [["wis","wdr"],["wdr"],...]: per run, '
                         "the candidate each keeps (paired bounds of every listed estimator "
                         "above 0) and its exact value")
    args = ap.parse_args()
    rows = []
    saved: list[dict] = []
    if args.saved is not None:
        for path in str(args.saved).split(","):
            saved += json.loads(Path(path).read_text())["rows"]
        names = None if args.candidates is None else set(args.candidates)
        rows = merge_runs(saved) if args.rules else reselect(saved, names, args.bound,
                                                              args.rank)
        args.configs = []
    for name in args.configs:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            r = run_one(name, seed, args.episodes, args.neural, args.neural_steps, args.bound,
                        None if args.pvi is None else tuple(map(tuple, args.pvi)), args.folds,
                        args.refit_full,
                        None if args.estimators is None else tuple(args.estimators),
                        args.full_exact, None if args.n_wedges is None else tuple(args.n_wedges),
                        args.rank_by, args.multiplicity, args.bootstrap, args.q_model)
            rows.append(r)
            if args.out:  # after every run: a long study keeps what it measured
                args.out.write_text(json.dumps({"rows": rows}, indent=2, default=str) + "\n")
            print(f"{name} seed {seed}: selected {r['chosen']} gap {gap(r['selected'], r):+.3f}"
                  f" ({r['select_seconds']:.1f} s)"
                  + "".join(f" {a} {gap(r[a], r):+.3f}" for a in args.neural), flush=True)
    if args.rules:
        cmp = compare_rules(rows, [tuple(r) for r in args.rules],
                            None if args.candidates is None else set(args.candidates))
        print_rules(cmp)
        if args.out and args.saved is not None:  # a fresh study's --out keeps its rows
            args.out.write_text(json.dumps({"rules": cmp}, indent=2) + "\n")
        if args.saved is not None:
            return
    summary = summarise(rows, args.neural) if rows else []
    if summary:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="Share of the behaviour-to-optimum gap closed (exact values)")
        cols = ["config", "behavior", "optimal", "selected_gap", "selected_worst_drop",
                "fallbacks", "chosen", "behavior_estimate_gap", "best_fixed", "best_fixed_gap",
                *[f"{a}_gap" for a in args.neural], "select_seconds"]
        for c in cols:
            t.add_column(c)
        for s in summary:
            t.add_row(*[f"{s[c]:.3f}" if isinstance(s[c], float) else str(s[c]) for c in cols])
        Console().print(t)
        mean_gap = float(np.mean([s["selected_gap"] for s in summary]))
        print(f"mean gap closed by the selected policy over configurations: {mean_gap:.3f}")
        worst = min(s["selected_worst_drop"] for s in summary)
        print(f"worst (selected - behaviour) over all runs: {worst:+.4f}; fallbacks "
              f"{sum(s['fallbacks'] for s in summary)}/{len(rows)}")
    timing = time_cli(args.episodes) if args.time_cli else None
    if timing:
        print(f"equicare train --select auto, 700 x 25, {args.episodes} episodes: "
              f"{timing['wall_seconds']:.1f} s wall, {timing['cpu_seconds']:.1f} s CPU")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary, "cli": timing},
                                       indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
