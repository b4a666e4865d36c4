"""One-shot outreach campaign (contextual bandit, ~15% get a 2nd wave) with exact truth.

The outreach campaign of session 26 (docs/ope.md "One-step campaigns", docs/learn.md,
README). Built with numpy/pandas only (not ``equicare.sim``).

Usage::

    python benchmarks/panels/outreach_campaign.py --seed 0 --out DIR [--members 60000]
        [--no-wave2]

Writes ``DIR/panel.parquet``, ``DIR/manifest.toml``, ``DIR/pol_<name>.parquet`` (wide
``p_0..p_7`` keyed by ``member_id`` and ``wave``) and ``DIR/truth.json`` (each policy's exact
value, no Monte Carlo). The documented numbers use seed 0 and 60,000 members (the 70 fresh
campaigns of 20,000 members used seeds 100-169).
Actions: channel (mail, phone, text, email) x framing (info, incentive); flat = 2*channel + framing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

CHANNELS = ["mail", "phone", "text", "email"]
FRAMINGS = ["info", "incentive"]
NA = 8
AGE = ["18-34", "35-49", "50-64", "65+"]
RACE = ["white", "black", "hispanic", "asian", "aian"]
LANG = [
    "english",
    "spanish",
    "chinese",
    "vietnamese",
    "korean",
    "russian",
    "arabic",
    "tagalog",
    "haitian_creole",
    "portuguese",
    "somali",
    "hmong",
]
Q_WAVE2 = 0.165  # chance a non-enrollee gets a second wave


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def members(n, rng):
    age = rng.choice(4, n, p=[0.25, 0.3, 0.3, 0.15])
    sex = rng.choice(2, n)
    race = rng.choice(4, n, p=[0.56, 0.2, 0.18, 0.06])
    race[rng.choice(n, 400, replace=False)] = 4  # one group of exactly 400 people
    risk = np.exp(rng.normal(0, 0.5, n))
    prior = (rng.random(n) < 0.3).astype(float)
    depriv = rng.beta(2, 3, n)
    lp = np.array([0.78, 0.12, 0.025, 0.02, 0.015, 0.012, 0.01, 0.008, 0.006, 0.004])
    lang = rng.choice(10, n, p=lp / lp.sum())
    idx = rng.choice(n, 8 + 6, replace=False)
    lang[idx[:8]] = 10  # somali: 8 people
    lang[idx[8:]] = 11  # hmong: 6 people
    return dict(age=age, sex=sex, race=race, risk=risk, prior=prior, depriv=depriv, lang=lang)


def p_open(x, wave, opened_before):
    """P(open | x, a) for every action: (n, 8)."""
    ch = np.arange(NA) // 2
    fr = np.arange(NA) % 2
    base = np.array([-0.6, -0.2, 0.3, -0.9])[ch][None, :]
    young = (x["age"] <= 1)[:, None]
    old = (x["age"] == 3)[:, None]
    text = (ch == 2)[None, :]
    mail = (ch == 0)[None, :]
    email = (ch == 3)[None, :]
    nonen = (x["lang"] != 0)[:, None]
    z = (
        base
        + 0.7 * young * text
        - 0.8 * old * text
        + 0.6 * old * mail
        + 0.4 * young * email
        - 0.5 * nonen * (text | email)
        + 0.1 * fr[None, :]
        + 0.5 * x["prior"][:, None]
        - 0.3 * wave
        + 0.4 * opened_before[:, None]
    )
    return sigmoid(z)


def p_enroll(x, wave, opened_before, opened):
    """P(enroll | x, a, opened): (n, 8); opened is a scalar 0/1 for every action."""
    ch = np.arange(NA) // 2
    fr = np.arange(NA) % 2
    phone = (ch == 1)[None, :]
    inc = (fr == 1)[None, :]
    rz = (np.log(x["risk"]) / 0.5)[:, None]
    dep = x["depriv"][:, None]
    z = (
        -4.0
        + 0.45 * rz
        + 0.7 * x["prior"][:, None]
        + 1.7 * opened
        + 0.5 * phone * (rz > 0.5)
        + 0.6 * inc * (dep > 0.5)
        - 0.3 * inc * (dep <= 0.5)
        - 0.2 * wave
        + 0.3 * opened_before[:, None]
        + 0.0 * ch[None, :]
    )
    return sigmoid(z)


def p_y(x, wave, ob):
    po = p_open(x, wave, ob)
    return po * p_enroll(x, wave, ob, 1.0) + (1 - po) * p_enroll(x, wave, ob, 0.0)


def logging_policy(x, wave, ob, eps):
    """Epsilon-greedy over a Thompson-like softmax of a rough score: (n, 8)."""
    ch = np.arange(NA) // 2
    fr = np.arange(NA) % 2
    young = (x["age"] <= 1)[:, None]
    hi = (x["risk"] > 1.3)[:, None]
    score = (
        1.5 * young * (ch == 2)[None, :]
        + 1.5 * hi * (ch == 1)[None, :]
        + 1.0 * (ch == 0)[None, :]
        + 0.5 * (fr == 1)[None, :]
        - 1.5 * (ch == 3)[None, :]
        + 0.8 * ob[:, None] * (ch == 3)[None, :]
        - 0.5 * wave * (ch == 1)[None, :]
    )
    temp = np.where(x["prior"] > 0, 0.25, 0.6)[:, None]
    sm = np.exp((score - score.max(1, keepdims=True)) / temp)
    sm /= sm.sum(1, keepdims=True)
    return (1 - eps[:, None]) * sm + eps[:, None] / NA


def targets(x, wave, ob, eps):
    n = len(x["age"])
    out = {}
    out["logging"] = logging_policy(x, wave, ob, eps)
    out["uniform"] = np.full((n, NA), 1.0 / NA)
    # a readable rule: phone/incentive for high risk, text/info for young, else mail/incentive
    a = np.where(x["risk"] > 1.3, 3, np.where(x["age"] <= 1, 4, 1))
    out["rule"] = np.eye(NA)[a]
    best = np.eye(NA)[p_y(x, wave, ob).argmax(1)]
    out["greedy_true"] = best
    out["mix30"] = 0.7 * out["logging"] + 0.3 * best
    out["email_info"] = np.eye(NA)[np.full(n, 6)]
    return out


def exact_values(x, eps, names, q):
    """Exact expected return of each target, averaged over the members' covariates."""
    n = len(x["age"])
    z = np.zeros(n)
    res = {}
    t1 = targets(x, 0.0, z, eps)
    po1 = p_open(x, 0.0, z)
    pe1 = [p_enroll(x, 0.0, z, 0.0), p_enroll(x, 0.0, z, 1.0)]
    v2 = {}
    for o in (0, 1):
        obv = np.full(n, float(o))
        t2 = targets(x, 1.0, obv, eps)
        py2 = p_y(x, 1.0, obv)
        v2[o] = {k: (t2[k] * py2).sum(1) for k in names}
    for k in names:
        per = np.zeros(n)
        step1 = np.zeros(n)
        for o in (0, 1):
            po = po1 if o == 1 else 1 - po1
            pe = pe1[o]
            contrib = po * (pe + (1 - pe) * q * v2[o][k][:, None])
            per += (t1[k] * contrib).sum(1)
            step1 += (t1[k] * po * pe).sum(1)
        res[k] = {
            "value": float(per.mean()),
            "sd_over_members": float(per.std()),
            "step1_value": float(step1.mean()),
        }
    return res


def simulate(n, seed, q):
    rng = np.random.default_rng(seed)
    x = members(n, rng)
    eps = np.where(rng.random(n) < 0.5, 0.08, 0.3)  # two campaign arms of exploration
    rows = []
    z = np.zeros(n)
    pb = logging_policy(x, 0.0, z, eps)
    a1 = (rng.random(n)[:, None] > pb.cumsum(1)).sum(1)
    a1 = np.minimum(a1, NA - 1)
    ii = np.arange(n)
    o1 = (rng.random(n) < p_open(x, 0.0, z)[ii, a1]).astype(int)
    y1 = (
        rng.random(n)
        < np.where(o1 == 1, p_enroll(x, 0.0, z, 1.0)[ii, a1], p_enroll(x, 0.0, z, 0.0)[ii, a1])
    ).astype(int)
    w2 = (y1 == 0) & (rng.random(n) < q)
    rows.append(
        pd.DataFrame(
            dict(
                member_id=ii,
                wave=0,
                a=a1,
                prop=pb[ii, a1],
                opened=o1,
                enrolled=y1,
                opened_before=0.0,
                last=(~w2).astype(int),
            )
        )
    )
    j = ii[w2]
    xj = {k: v[j] for k, v in x.items()}
    ob = o1[j].astype(float)
    pb2 = logging_policy(xj, 1.0, ob, eps[j])
    a2 = np.minimum((rng.random(len(j))[:, None] > pb2.cumsum(1)).sum(1), NA - 1)
    jj = np.arange(len(j))
    o2 = (rng.random(len(j)) < p_open(xj, 1.0, ob)[jj, a2]).astype(int)
    y2 = (
        rng.random(len(j))
        < np.where(o2 == 1, p_enroll(xj, 1.0, ob, 1.0)[jj, a2], p_enroll(xj, 1.0, ob, 0.0)[jj, a2])
    ).astype(int)
    rows.append(
        pd.DataFrame(
            dict(
                member_id=j,
                wave=1,
                a=a2,
                prop=pb2[jj, a2],
                opened=o2,
                enrolled=y2,
                opened_before=ob,
                last=1,
            )
        )
    )
    df = pd.concat(rows).sort_values(["member_id", "wave"]).reset_index(drop=True)
    m = df["member_id"].to_numpy()
    df["age_band"] = np.array(AGE)[x["age"][m]]
    df["sex"] = np.array(["female", "male"])[x["sex"][m]]
    df["race_ethnicity"] = np.array(RACE)[x["race"][m]]
    df["risk"] = x["risk"][m]
    df["prior_engagement"] = x["prior"][m]
    df["deprivation"] = x["depriv"][m]
    df["language"] = np.array(LANG)[x["lang"][m]]
    df["eps"] = eps[m]
    df["young"] = (x["age"][m] <= 1).astype(float)
    df["old"] = (x["age"][m] == 3).astype(float)
    df["non_english"] = (x["lang"][m] != 0).astype(float)
    df["channel"] = np.array(CHANNELS)[df["a"] // 2]
    df["framing"] = np.array(FRAMINGS)[df["a"] % 2]
    df["member_id"] = "M" + df["member_id"].astype(str).str.zfill(6)
    return x, eps, df


def policy_frames(x, eps, df):
    """Wide policy files keyed by (member_id, wave), from the same functions as the truth."""
    m = df["member_id"].str[1:].astype(int).to_numpy()
    xr = {k: v[m] for k, v in x.items()}
    wave = df["wave"].to_numpy().astype(float)
    ob = df["opened_before"].to_numpy()
    # targets take a scalar wave; compute per wave and stitch
    out = {}
    for w in (0, 1):
        sel = wave == w
        xs = {k: v[sel] for k, v in xr.items()}
        t = targets(xs, float(w), ob[sel], eps[m][sel])
        for k, p in t.items():
            out.setdefault(k, np.zeros((len(df), NA)))[sel] = p
    return out


MANIFEST = """[dataset]
episode = "member_id"
time = "wave"
states = [
    "risk", "prior_engagement", "deprivation", "wave", "opened_before", "young", "old",
    "non_english",
]
categorical_states = ["language"]
mediators = ["opened"]
groups = ["race_ethnicity", "sex", "age_band", "language"]
terminal = "last"
behavior_prob = "prop"
gamma = 1.0

[actions.channel]
levels = ["mail", "phone", "text", "email"]
[actions.framing]
levels = ["info", "incentive"]

[reward]
column = "enrolled"
"""


def main(argv: list[str] | None = None) -> None:
    """Write the campaign, its manifest, the target policies and their exact values."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="campaign seed (docs: 0)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--members", type=int, default=60000, help="members (docs: 60000)")
    ap.add_argument("--no-wave2", action="store_true", help="no second wave (one row each)")
    ap.add_argument("--force", action="store_true",
                    help="overwrite the panel files in a non-empty --out")
    a = ap.parse_args(argv)
    if Path(a.out).is_dir() and any(Path(a.out).iterdir()) and not a.force:
        ap.error(f"{a.out} is not empty: pass --force to overwrite its panel files")
    if a.members < 400:
        ap.error("--members must be at least 400 (one race group has exactly 400 people)")
    out, n, seed = a.out, a.members, a.seed
    q = 0.0 if a.no_wave2 else Q_WAVE2
    out.mkdir(parents=True, exist_ok=True)
    x, eps, df = simulate(n, seed, q)
    df.drop(columns=["a"]).to_parquet(out / "panel.parquet", index=False)
    (out / "manifest.toml").write_text(MANIFEST)
    pols = policy_frames(x, eps, df)
    for k, p in pols.items():
        pf = pd.DataFrame(p, columns=[f"p_{i}" for i in range(NA)])
        pf.insert(0, "wave", df["wave"].to_numpy())
        pf.insert(0, "member_id", df["member_id"].to_numpy())
        pf.to_parquet(out / f"pol_{k}.parquet", index=False)
    truth = exact_values(x, eps, list(pols), q)
    truth["_meta"] = {
        "n_members": n,
        "n_rows": len(df),
        "seed": seed,
        "q_wave2": q,
        "wave2_share": float((df["wave"] == 1).sum() / n),
        "enroll_rate_rows": float(df["enrolled"].mean()),
        "min_prop": float(df["prop"].min()),
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    print(json.dumps(truth, indent=1))


if __name__ == "__main__":
    main()
