"""Medicaid care-management panel with heavy-tailed monthly costs; knows its truth.

The Medicaid cost panel of session 25 (docs/ope.md "heavy tails", docs/learn.md, docs/rmab.md,
README). Built with numpy/pandas only (not ``equicare.sim``).

Usage::

    python benchmarks/panels/medicaid_cost.py --seed 0 --out DIR [--members 20000]
        [--truth-members 400000]

Writes ``DIR/panel.parquet`` (one row per member-month; reward = minus the month's cost in
dollars), ``DIR/manifest.toml``, ``DIR/policy_<name>.parquet`` for the target policies
``targeted``, ``near`` and ``none`` (wide ``p_0..p_11`` keyed by ``member_id`` and ``month``)
and, with ``--truth-members``, ``DIR/truth.json`` (value of those policies and of practice,
overall and per group: ``[mean, SE]``; seed ``--seed + 7``). The documented numbers use the
defaults (20,000 members, 131,384 rows; truth over 400,000 members).

Dynamics are explicit so that the value of any state-dependent target policy can be computed
by Rao-Blackwellised Monte Carlo (expected reward given state and action, sampled state paths).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

MODS = ["none", "phone", "home_visit", "telehealth"]
PROVS = ["rn", "social_worker", "chw"]
NA = len(MODS) * len(PROVS)
REGIONS = [f"R{k:02d}" for k in range(15)]
RACES = ["white", "black", "hispanic", "asian", "aian", "nhpi", "other"]
RACE_P = [0.40, 0.27, 0.22, 0.06, 0.0045, 0.0006, 0.0449]
AGES = ["0-17", "18-34", "35-49", "50-64", "65+"]
AGE_P = [0.30, 0.25, 0.20, 0.17, 0.08]
REGION_MULT = np.linspace(0.8, 1.3, 15)
MOD_COST = np.array([0.0, 25.0, 250.0, 60.0])
PROV_MULT = np.array([1.0, 0.8, 0.5])
ED_COST = 1500.0
INP_LO, INP_HI = 50_000.0, 300_000.0
CAT_LO, CAT_HI = 1_000_000.0, 2_500_000.0
INP_MEAN = (INP_HI - INP_LO) / math.log(INP_HI / INP_LO)
CAT_MEAN = (CAT_HI - CAT_LO) / math.log(CAT_HI / CAT_LO)
BODY_SIGMA = 1.2
WINDOW = 24


def members(n, rng):
    race = rng.choice(len(RACES), n, p=RACE_P)
    sex = rng.integers(0, 2, n)
    age = rng.choice(len(AGES), n, p=AGE_P)
    dual = (rng.random(n) < np.where(age >= 4, 0.6, np.where(age == 3, 0.15, 0.03))).astype(int)
    region = rng.integers(0, 15, n)
    chronic = np.minimum(rng.binomial(10, 0.08 + 0.07 * age + 0.05 * dual), 10)
    housing = (rng.random(n) < 0.08 + 0.07 * (race == 1) + 0.04 * (race == 2)).astype(int)
    mu = -0.6 + 0.18 * chronic + 0.25 * dual + 0.1 * (race == 1)
    lr = mu + 0.5 * rng.standard_normal(n)
    start = rng.integers(0, WINDOW, n)
    L = 1 + rng.geometric(1 / 10, n) - 1  # >= 1
    L = np.minimum(L, 24)
    length = np.minimum(L, WINDOW - start)
    terminal = (L <= WINDOW - start) & (L < 24)
    return dict(
        race=race,
        sex=sex,
        age=age,
        dual=dual,
        region=region,
        chronic=chronic,
        housing=housing,
        mu=mu,
        lr=lr,
        start=start,
        length=length,
        terminal=terminal,
    )


def ed_rate(risk, housing):
    return 0.04 * risk * (1 + 0.8 * housing)


def effects(mod, prov, risk, housing):
    """Multipliers on inpatient prob, ED rate, and additive log-risk change."""
    inp = np.ones_like(risk)
    ed = np.ones_like(risk)
    dlr = np.zeros_like(risk)
    hv = mod == 2
    ph = mod == 1
    th = mod == 3
    hi = np.minimum(risk / 2.0, 1.0)
    inp = np.where(hv & (prov == 0), 1 - 0.35 * hi, inp)
    inp = np.where(hv & (prov != 0), 1 - 0.15 * hi, inp)
    inp = np.where(th & (prov == 0), 1 - 0.15 * hi, inp)
    inp = np.where(ph, 1 - 0.05 * hi, inp)
    ed = np.where((prov == 2) & (mod > 0) & (housing == 1), 0.6, ed)
    ed = np.where((prov == 1) & (mod > 0) & (housing == 1), 0.7, ed)
    dlr = np.where(hv, -0.08, dlr) + np.where((mod > 0) & (prov == 1) & (housing == 1), -0.05, 0.0)
    return inp, ed, dlr


def cost_params(risk, chronic, ed_prev, region, housing, mod, prov):
    inpm, edm, _ = effects(mod, prov, risk, housing)
    p_nonzero = 1 / (1 + np.exp(-(-0.3 + 0.9 * np.log(risk) + 0.25 * chronic)))
    body_mu = 5.0 + 0.5 * np.log(risk) + 0.08 * chronic
    lam_ed = ed_rate(risk, housing) * edm
    p_inp = np.minimum(0.004 * risk * (1 + 0.5 * ed_prev) * inpm, 0.3)
    p_cat = np.minimum(0.00004 * risk, 0.01)
    return p_nonzero, body_mu, lam_ed, p_inp, p_cat


def expected_cost(risk, chronic, ed_prev, region, housing, mod, prov):
    p0, bmu, lam, pi, pc = cost_params(risk, chronic, ed_prev, region, housing, mod, prov)
    body = p0 * np.exp(bmu + BODY_SIGMA**2 / 2) * REGION_MULT[region]
    return body + lam * ED_COST + pi * INP_MEAN + pc * CAT_MEAN + MOD_COST[mod] * PROV_MULT[prov]


def sample_cost(rng, risk, chronic, ed_prev, region, housing, mod, prov):
    p0, bmu, lam, pi, pc = cost_params(risk, chronic, ed_prev, region, housing, mod, prov)
    n = risk.shape[0]
    body = (
        (rng.random(n) < p0)
        * np.exp(bmu + BODY_SIGMA * rng.standard_normal(n))
        * REGION_MULT[region]
    )
    ed = rng.poisson(lam)
    inp = (rng.random(n) < pi) * np.exp(rng.uniform(math.log(INP_LO), math.log(INP_HI), n))
    cat = (rng.random(n) < pc) * np.exp(rng.uniform(math.log(CAT_LO), math.log(CAT_HI), n))
    act = MOD_COST[mod] * PROV_MULT[prov]
    # ED/inpatient/other make zero months "all zero" only when no event at all
    return body + ed * ED_COST + inp + cat + act, ed


# ---- policies: return (n, 12) probabilities over flat index m*3+p
PROV_GIVEN_MOD = np.array([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2], [0.6, 0.1, 0.3], [0.9, 0.1, 0.0]])


def behaviour(risk, chronic, ed_prev, housing, race, dual):
    z_phone = -2.2 + 0.3 * np.log(risk) + 0.05 * chronic
    z_hv = -3.6 + 0.6 * np.log(risk) + 0.1 * chronic + 0.3 * ed_prev - 0.5 * np.isin(race, [1, 2])
    z_th = -3.0 + 0.2 * np.log(risk) + 0.3 * dual
    z = np.stack([np.zeros_like(risk), z_phone, z_hv, z_th], 1)
    pm = np.exp(z - z.max(1, keepdims=True))
    pm /= pm.sum(1, keepdims=True)
    return (pm[:, :, None] * PROV_GIVEN_MOD[None]).reshape(-1, NA)


def targeted(risk, chronic, ed_prev, housing, race, dual):
    hi = (risk > 1.5) | (ed_prev > 0)
    pm = np.where(hi[:, None], [[0.35, 0.15, 0.4, 0.1]], [[0.85, 0.1, 0.03, 0.02]])
    prov = np.where(
        housing[:, None, None] == 1,
        np.array([[1.0, 0, 0], [0.3, 0.3, 0.4], [0.4, 0.2, 0.4], [0.9, 0.1, 0]])[None],
        PROV_GIVEN_MOD[None],
    )
    return (pm[:, :, None] * prov).reshape(-1, NA)


def near(*a):
    return 0.8 * behaviour(*a) + 0.2 * targeted(*a)


def donothing(risk, *a):
    p = np.zeros((risk.shape[0], NA))
    p[:, 0] = 1.0
    return p


POLICIES = {"targeted": targeted, "near": near, "none": donothing}
TRUTH_POLICIES = dict(POLICIES, behaviour=behaviour)


def draw(rng, P):
    c = P.cumsum(1)
    u = rng.random(P.shape[0])[:, None]
    return np.minimum((u > c).sum(1), P.shape[1] - 1)


def simulate(n, seed, policy=None, log=True):
    """Simulate n members. policy None -> behaviour panel (sampled costs);
    else returns Rao-Blackwellised returns per member (expected costs given paths)."""
    rng = np.random.default_rng(seed)
    m = members(n, rng)
    lr = m["lr"].copy()
    housing = m["housing"].copy()
    ed_prev = np.zeros(n, dtype=np.int64)
    ret = np.zeros(n)
    rows = []
    for t in range(24):
        alive = m["length"] > t
        if not alive.any():
            break
        risk = np.exp(lr)
        args = (risk, m["chronic"], ed_prev, housing, m["race"], m["dual"])
        Pb = behaviour(*args)
        P = Pb if policy is None else TRUTH_POLICIES[policy](*args)
        a = draw(rng, P)
        mod, prov = a // 3, a % 3
        if policy is None:
            cost, ed = sample_cost(
                rng, risk, m["chronic"], ed_prev, m["region"], housing, mod, prov
            )
            idx = np.flatnonzero(alive)
            rows.append(
                pd.DataFrame(
                    {
                        "member_id": idx,
                        "t": t,
                        "risk": risk[idx],
                        "chronic": m["chronic"][idx],
                        "ed_prev": ed_prev[idx],
                        "region": m["region"][idx],
                        "housing": housing[idx],
                        "a": a[idx],
                        "prop": Pb[idx, a[idx]],
                        "cost": cost[idx],
                    }
                )
            )
        else:
            ec = expected_cost(risk, m["chronic"], ed_prev, m["region"], housing, mod, prov)
            ret += np.where(alive, -ec, 0.0)
            _, edm, _ = effects(mod, prov, risk, housing)
            ed = rng.poisson(ed_rate(risk, housing) * edm)
        _, _, dlr = effects(mod, prov, risk, housing)
        lr = 0.85 * lr + 0.15 * m["mu"] + 0.25 * rng.standard_normal(n) + dlr
        ed_prev = ed
        flip = rng.random(n)
        housing = np.where(housing == 1, (flip > 0.08).astype(int), (flip < 0.02).astype(int))
    return m, ret, rows


def write_panel(n, seed, out):
    os.makedirs(out, exist_ok=True)
    m, _, rows = simulate(n, seed)
    df = pd.concat(rows, ignore_index=True).sort_values(["member_id", "t"])
    i = df["member_id"].to_numpy()
    df["month"] = df["t"] + m["start"][i]  # calendar month index, contiguous within episode
    df["member_id"] = [f"M{k:06d}" for k in i]
    df["modality"] = np.array(MODS)[df["a"] // 3]
    df["provider"] = np.array(PROVS)[df["a"] % 3]
    df["region"] = np.array(REGIONS)[df["region"]]
    df["race_ethnicity"] = np.array(RACES)[m["race"][i]]
    df["sex"] = np.array(["female", "male"])[m["sex"][i]]
    df["age_band"] = np.array(AGES)[m["age"][i]]
    df["dual_eligible"] = m["dual"][i]
    last = df.groupby("member_id")["t"].transform("max") == df["t"]
    df["disenrolled"] = (last & m["terminal"][i]).astype(int)
    df["total_cost"] = df["cost"].round(2)
    df["reward"] = -df["total_cost"]
    df["propensity"] = df["prop"]
    df["high_need"] = (m["chronic"][i] >= 3).astype(int)
    cols = [
        "member_id",
        "month",
        "risk",
        "chronic",
        "ed_prev",
        "region",
        "housing",
        "modality",
        "provider",
        "propensity",
        "reward",
        "total_cost",
        "disenrolled",
        "race_ethnicity",
        "sex",
        "age_band",
        "dual_eligible",
        "high_need",
    ]
    df = df[cols]
    df.to_parquet(os.path.join(out, "panel.parquet"), index=False)
    # target policy files: wide p_0..p_11
    args = (
        df["risk"].to_numpy(),
        df["chronic"].to_numpy(),
        df["ed_prev"].to_numpy(),
        df["housing"].to_numpy(),
        m["race"][i],
        m["dual"][i],
    )
    for name, f in POLICIES.items():
        P = f(*args)
        pf = pd.DataFrame(P, columns=[f"p_{k}" for k in range(NA)])
        pf.insert(0, "month", df["month"].to_numpy())
        pf.insert(0, "member_id", df["member_id"].to_numpy())
        pf.to_parquet(os.path.join(out, f"policy_{name}.parquet"), index=False)
    with open(os.path.join(out, "manifest.toml"), "w") as fh:
        fh.write(MANIFEST)
    return df


MANIFEST = """[dataset]
episode = "member_id"
time = "month"
states = ["risk", "chronic", "ed_prev", "housing"]
categorical_states = ["region"]
groups = ["race_ethnicity", "sex", "age_band", "dual_eligible"]
terminal = "disenrolled"
behavior_prob = "propensity"
need = "high_need"
gamma = 1.0

[actions.modality]
levels = ["none", "phone", "home_visit", "telehealth"]
[actions.provider]
levels = ["rn", "social_worker", "chw"]

[reward]
column = "reward"
"""


def truth(policy, n, seed, chunks=10):
    """Mean return (and SE) overall and per group; Rao-Blackwellised."""
    out = []
    for c in range(chunks):
        m, ret, _ = simulate(n // chunks, seed * 1000 + c, policy)
        out.append(
            pd.DataFrame(
                {
                    "ret": ret,
                    "race": np.array(RACES)[m["race"]],
                    "sex": m["sex"],
                    "age": np.array(AGES)[m["age"]],
                    "dual": m["dual"],
                }
            )
        )
    d = pd.concat(out)
    res = {"overall": (d.ret.mean(), d.ret.std() / math.sqrt(len(d)))}
    for col in ["race", "sex", "age", "dual"]:
        g = d.groupby(col).ret.agg(["mean", "std", "count"])
        res[col] = {str(k): (r["mean"], r["std"] / math.sqrt(r["count"])) for k, r in g.iterrows()}
    return res


def main(argv: list[str] | None = None) -> None:
    """Write the panel, its manifest, the target policies and (optionally) the truth."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="panel seed (docs: 0)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--members", type=int, default=20000, help="members (docs: 20000)")
    ap.add_argument("--truth-members", type=int, default=0,
                    help="members of the Monte-Carlo truth (docs: 400000; 0: none)")
    ap.add_argument("--force", action="store_true",
                    help="overwrite the panel files in a non-empty --out")
    a = ap.parse_args(argv)
    if Path(a.out).is_dir() and any(Path(a.out).iterdir()) and not a.force:
        ap.error(f"{a.out} is not empty: pass --force to overwrite its panel files")
    df = write_panel(a.members, a.seed, a.out)
    print(len(df), df.member_id.nunique(), (df.total_cost == 0).mean())
    if a.truth_members:
        res = {p: truth(p, a.truth_members, a.seed + 7) for p in TRUTH_POLICIES}
        with open(os.path.join(a.out, "truth.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        for p, r in res.items():
            print(p, r["overall"])


if __name__ == "__main__":
    main()
