"""Substance-use treatment panel: re-enrolment, irregular attendance, a known truth.

The "new user" panel of session 25 (docs/ope.md, docs/fairness.md, docs/contracts.md,
README). Built with numpy/pandas only (not ``equicare.sim``).

Usage::

    python benchmarks/panels/substance_use.py --seed 2026 --out DIR [--members 5000]
        [--truth-members 200000 --truth-seed 7]

Writes ``DIR/raw_panel.parquet`` (the generator's panel: missing days since use, calendar weeks),
``DIR/panel.parquet`` (the user's preparation: ``step`` numbered within the episode,
``days_since_use`` forward-filled plus a ``dsu_missing`` flag), ``DIR/manifest.toml`` (estimated
propensities: 5 of the 40 sites log none), ``DIR/manifest_member.toml`` (the same plus
``member = "member_id"``),
``DIR/mat_first.parquet`` and ``DIR/blend.parquet`` (the two target policies, wide ``p_0..p_6``
keyed by ``episode_id`` and ``step``) and, with ``--truth-members``, ``DIR/truth.json`` (Monte
Carlo value of behaviour, ``mat_first`` and ``blend``, overall and per group: ``[mean, SE, n]``).
``--with-z`` adds a score ``z`` that drives nothing (seed ``--seed + 77``) and the target
``zrule.parquet`` reading it (its truth is not computed here).
The documented numbers use the defaults (5,000 members, 127,362 rows; truth over 200,000 members).

Decision process: one row per *contact* (attended week). After a contact the member's next contact
comes g >= 1 weeks later (weeks without contact have no row). The row's reward counts the
relapse/ED events over those g weeks (-1 each); a terminal dropout/overdose ends the episode
(-10, terminal=1); a discharge (constant hazard, independent of everything) ends it otherwise.
Members have 1-4 episodes (most 2-4) separated by 4-40 weeks. Episodes are independent given
member traits and the episode number, so the value of a policy (sum_t gamma^t r_t, t = contact
index within the episode) averaged over episodes is well defined; the truth is by Monte Carlo on
a large fresh population with the same design.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

ACTIONS = [
    "none",
    "group_therapy",
    "individual_counseling",
    "peer_support",
    "MAT_visit",
    "family_therapy",
    "residential_referral",
]
NA = len(ACTIONS)
HOUSING = ["stable", "unstable", "homeless", "unknown"]
RACE = [
    "white",
    "black",
    "hispanic",
    "asian",
    "american_indian",
    "multiracial",
    "nhpi",
    "middle_eastern",
]
RACE_P = [0.5211, 0.20, 0.18, 0.04, 0.025, 0.027, 0.006, 0.0009]
AGE = ["18-25", "26-34", "35-49", "50+"]
N_SITES = 40
GAMMA = 0.97
NO_PROP_SITES = {3, 11, 17, 29, 36}  # sites that do not log propensities


def members(rng: np.random.Generator, n: int, n_x: int | None = None) -> pd.DataFrame:
    race = rng.choice(len(RACE), size=n, p=RACE_P)
    sex = rng.choice(2, size=n, p=[0.45, 0.55])  # 0 female 1 male
    if n_x is None:
        sex = np.where(rng.random(n) < 0.001, 2, sex)
    else:
        sex[rng.choice(n, size=n_x, replace=False)] = 2
    age = rng.choice(4, size=n, p=[0.2, 0.35, 0.3, 0.15])
    spanish = np.where(race == 2, rng.random(n) < 0.45, rng.random(n) < 0.01).astype(int)
    site_p = np.random.default_rng(12345).dirichlet(np.full(N_SITES, 1.5))
    site = rng.choice(N_SITES, size=n, p=site_p)
    n_ep = rng.choice([1, 2, 3, 4], size=n, p=[0.1, 0.4, 0.3, 0.2])
    return pd.DataFrame(dict(race=race, sex=sex, age=age, spanish=spanish, site=site, n_ep=n_ep))


SITE_EFF = np.random.default_rng(999).normal(0, 0.25, N_SITES)  # relapse site effect
SITE_PRAC = np.random.default_rng(998).normal(0, 0.5, (N_SITES, NA))  # practice variation


def initial_states(rng, race, age, ep_no):
    n = len(race)
    phq = np.clip(
        np.round(rng.normal(12 + 1.0 * (race == 1) + 0.8 * ep_no - 0.5 * (age == 3), 4.5)), 0, 27
    )
    dsu = rng.lognormal(np.log(25) - 0.3 * ep_no, 1.1, n)  # days since last use, right-skewed
    hp = np.array([0.5, 0.25, 0.12, 0.13])
    housing = rng.choice(4, size=n, p=hp)
    housing = np.where((race == 1) & (rng.random(n) < 0.1), 2, housing)
    return phq, dsu, housing


def behaviour_probs(phq, dsu_obs, housing, site, race, spanish):
    n = len(phq)
    lg = np.zeros((n, NA))
    recent = np.where(np.isnan(dsu_obs), 0.5, (dsu_obs < 60).astype(float))
    lg[:, 0] = 0.4
    lg[:, 1] = 0.6 + 0.02 * (phq - 12)
    lg[:, 2] = 0.3 + 0.07 * (phq - 12) - 0.8 * spanish
    lg[:, 3] = 0.1 + 0.6 * (housing >= 1)
    lg[:, 4] = -0.2 + 1.0 * recent - 0.6 * (race == 1) - 0.4 * (race == 2)
    lg[:, 5] = -5.2
    lg[:, 6] = -6.0 + 0.6 * (housing == 2)
    lg += SITE_PRAC[site]
    lg[:, 5:] -= SITE_PRAC[site][:, 5:]  # rare actions: no site variation
    lg -= lg.max(1, keepdims=True)
    p = np.exp(lg)
    return p / p.sum(1, keepdims=True)


def policy_mat_first(phq, dsu_obs, housing, site, race, spanish):
    """pi1: deterministic rule: MAT if recent use known (<60 days), else counselling if PHQ>=15,
    else group therapy."""
    n = len(phq)
    a = np.where(~np.isnan(dsu_obs) & (dsu_obs < 60), 4, np.where(phq >= 15, 2, 1))
    p = np.zeros((n, NA))
    p[np.arange(n), a] = 1.0
    return p


def policy_blend(phq, dsu_obs, housing, site, race, spanish):
    """pi2: 0.5 x behaviour + 0.5 x (peer support if housing unstable/homeless, else individual)."""
    b = behaviour_probs(phq, dsu_obs, housing, site, race, spanish)
    n = len(phq)
    a = np.where((housing == 1) | (housing == 2), 3, 2)
    r = np.zeros((n, NA))
    r[np.arange(n), a] = 1.0
    return 0.5 * b + 0.5 * r


EFFECT = None


def action_effect(a, phq, dsu, housing, spanish):
    eff = np.zeros(len(a))
    eff += np.where(a == 1, -0.25, 0)
    eff += np.where(a == 2, np.where(phq >= 15, -0.55, -0.15), 0)
    eff += np.where(a == 3, np.where(housing >= 1, -0.45, -0.1) - 0.2 * spanish, 0)
    eff += np.where(a == 4, np.where(dsu < 60, -0.9, -0.2), 0)
    eff += np.where(a == 5, -0.3, 0)
    eff += np.where(a == 6, -1.0, 0)
    return eff


def simulate(rng, mem: pd.DataFrame, policy=None, record=True, max_rows=200):
    """Roll out every episode of every member. policy=None -> behaviour (logged)."""
    ep_mem = np.repeat(np.arange(len(mem)), mem.n_ep.to_numpy())
    ep_no = np.concatenate([np.arange(k) for k in mem.n_ep.to_numpy()])
    m = mem.iloc[ep_mem].reset_index(drop=True)
    race, sex, age, spanish, site = (
        m[c].to_numpy() for c in ["race", "sex", "age", "spanish", "site"]
    )
    E = len(ep_mem)
    phq, dsu, housing = initial_states(rng, race, age, ep_no)
    alive = np.ones(E, bool)
    ret = np.zeros(E)
    disc = np.ones(E)
    rows = []
    week = np.zeros(E, dtype=np.int64)
    t = 0
    while alive.any() and t < max_rows:
        idx = np.flatnonzero(alive)
        dsu_obs = np.where(
            rng.random(len(idx)) < 0.10 + 0.15 * (housing[idx] == 3), np.nan, dsu[idx]
        )
        args = (phq[idx], dsu_obs, housing[idx], site[idx], race[idx], spanish[idx])
        pb = behaviour_probs(*args)
        pt = pb if policy is None else policy(*args)
        u = rng.random(len(idx))
        a = (pt.cumsum(1) < u[:, None]).sum(1).clip(0, NA - 1)
        # outcome over the gap to the next contact
        gap = (
            1
            + rng.geometric(
                np.clip(0.75 - 0.2 * (housing[idx] == 2) - 0.01 * (phq[idx] - 12), 0.2, 0.95)
            )
            - 1
        )
        eff = action_effect(a, phq[idx], dsu[idx], housing[idx], spanish[idx])
        lg = (
            -1.9
            + 0.07 * (phq[idx] - 12)
            - 0.35 * np.log1p(dsu[idx] / 7)
            + 0.3 * (housing[idx] == 2)
            + SITE_EFF[site[idx]]
            + eff
            + 0.2 * (race[idx] == 4)
        )
        prel = 1 / (1 + np.exp(-lg))
        events = rng.binomial(gap, prel)
        lt = (
            -5.9
            + 0.9 * (dsu[idx] < 14)
            - 0.8 * (a == 4)
            + 0.6 * (housing[idx] == 2)
            + 0.1 * (gap - 1)
        )
        term = rng.random(len(idx)) < 1 / (1 + np.exp(-lt))
        r = -events.astype(float) - 10.0 * term
        ret[idx] += disc[idx] * r
        disc[idx] *= GAMMA
        if record:
            rows.append(
                dict(
                    ep=idx,
                    t=np.full(len(idx), t),
                    week=week[idx].copy(),
                    gap=gap,
                    phq9=phq[idx].copy(),
                    dsu=dsu_obs,
                    housing=housing[idx].copy(),
                    action=a,
                    prop=pb[np.arange(len(idx)), a],
                    events=events,
                    terminal=term.astype(int),
                )
            )
        # transitions
        relapsed = events > 0
        phq[idx] = np.clip(
            np.round(
                phq[idx]
                + rng.normal(
                    0.1 * (12 - phq[idx])
                    + 2.0 * relapsed
                    - 1.0 * (a == 2)
                    - 0.5 * (a == 1)
                    - 0.4 * (a == 3),
                    1.8,
                )
            ),
            0,
            27,
        )
        dsu[idx] = np.where(relapsed, rng.uniform(0, 7 * gap), dsu[idx] + 7 * gap)
        housing[idx] = np.where(
            rng.random(len(idx)) < 0.05,
            rng.choice(4, len(idx), p=[0.5, 0.25, 0.12, 0.13]),
            housing[idx],
        )
        week[idx] += gap
        discharge = rng.random(len(idx)) < 0.10
        alive[idx] = ~(term | discharge)
        t += 1
    out = dict(ep_mem=ep_mem, ep_no=ep_no, race=race, sex=sex, age=age, spanish=spanish, ret=ret)
    if record:
        out["rows"] = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    return out


GROUPS = {
    "race_ethnicity": ("race", RACE),
    "sex": ("sex", ["female", "male", "X"]),
    "age_band": ("age", AGE),
    "spanish": ("spanish", ["0", "1"]),
}


def truth(seed, n_members, policies):
    res = {}
    for name, pol in policies.items():
        rng = np.random.default_rng(seed)
        mem = members(rng, n_members)
        out = simulate(rng, mem, pol, record=False)
        r = out["ret"]
        d = {"overall": [float(r.mean()), float(r.std() / np.sqrt(len(r))), len(r)]}
        for g, (col, labels) in GROUPS.items():
            d[g] = {}
            for k, lab in enumerate(labels):
                s = r[out[col] == k]
                if len(s):
                    d[g][lab] = [float(s.mean()), float(s.std() / np.sqrt(len(s))), int(len(s))]
        res[name] = d
    return res


def panel(seed=2026, n_members=5000):
    rng = np.random.default_rng(seed)
    mem = members(rng, n_members, n_x=5)
    out = simulate(rng, mem, None)
    R = out["rows"]
    ep = R["ep"]
    em = out["ep_mem"][ep]
    # calendar weeks: first episode starts in weeks 0-51, later ones 4-40 weeks after the last end
    df = pd.DataFrame({"ep": ep, "t": R["t"], "rel_week": R["week"]})
    ep_len_weeks = df.groupby("ep").rel_week.max().to_numpy() + 1
    start = np.zeros(len(out["ep_mem"]), dtype=np.int64)
    prev_mem = -1
    for e in range(len(out["ep_mem"])):  # episodes are in member order; fine for 13k episodes
        mm = out["ep_mem"][e]
        if mm != prev_mem:
            start[e] = rng.integers(0, 52)
        else:
            start[e] = start[e - 1] + ep_len_weeks[e - 1] + rng.integers(4, 41)
        prev_mem = mm
    mem_ids = np.array([f"M{100000 + i}" for i in range(n_members)])
    site = mem.site.to_numpy()[em]
    frame = pd.DataFrame(
        {
            "member_id": mem_ids[em],
            "episode_id": [
                f"M{100000 + a}-E{b + 1}" for a, b in zip(em, out["ep_no"][ep], strict=True)
            ],
            "week": start[ep] + R["week"],
            "phq9": R["phq9"].astype(int),
            "days_since_use": np.round(R["dsu"], 1),
            "housing": np.array(HOUSING)[R["housing"]],
            "site": np.array([f"site_{k:02d}" for k in range(N_SITES)])[site],
            "service": np.array(ACTIONS)[R["action"]],
            "relapse_ed": -R["events"].astype(float),
            "dropout_overdose": R["terminal"],
            "r_terminal": -10.0 * R["terminal"],
            "propensity": np.where(np.isin(site, list(NO_PROP_SITES)), np.nan, R["prop"]),
            "propensity_true": R["prop"],
            "attended_next_week": (R["gap"] == 1).astype(int),
            "race_ethnicity": np.array(RACE)[out["race"][ep]],
            "sex": np.array(["female", "male", "X"])[out["sex"][ep]],
            "age_band": np.array(AGE)[out["age"][ep]],
            "spanish": out["spanish"][ep],
        }
    )
    # true target probabilities on the logged rows (for policy files), keyed by episode_id + step
    dsu_obs = R["dsu"]
    args = (R["phq9"], dsu_obs, R["housing"], site, out["race"][ep], out["spanish"][ep])
    frame = frame.sort_values(["member_id", "week"], kind="stable").reset_index(drop=True)
    order = np.lexsort((start[ep] + R["week"], em))
    pols = {
        "mat_first": policy_mat_first(*[x[order] for x in args]),
        "blend": policy_blend(*[x[order] for x in args]),
    }
    return frame, pols, mem


MANIFEST = """[dataset]
episode = "episode_id"
time = "step"
states = ["phq9", "days_since_use", "dsu_missing"]
categorical_states = ["housing", "site"]
groups = ["race_ethnicity", "sex", "age_band", "spanish"]
terminal = "dropout_overdose"
gamma = 0.97

[actions.service]
levels = [
    "none", "group_therapy", "individual_counseling", "peer_support", "MAT_visit",
    "family_therapy", "residential_referral",
]

[reward]
relapse = { column = "relapse_ed", weight = 1.0 }
terminal = { column = "r_terminal", weight = 1.0 }
"""

MANIFEST_MEMBER = MANIFEST.replace(
    'episode = "episode_id"\n', 'episode = "episode_id"\nmember = "member_id"\n'
)


def prepare(raw: pd.DataFrame) -> pd.DataFrame:
    """Prepare the raw panel as the new user did (session 25's ``prep.py``).

    Parameters
    ----------
    raw : pandas.DataFrame
        The generator's panel, shape (n_rows, 18).

    Returns
    -------
    pandas.DataFrame
        Sorted by episode and week, shape (n_rows, 21): ``step`` (row number in the episode),
        ``dsu_missing`` (1 where days since use was missing), ``days_since_use`` forward-filled
        within the episode (the median where an episode starts missing) and ``log_dsu``.
    """
    df = raw.sort_values(["episode_id", "week"]).reset_index(drop=True)
    df["step"] = df.groupby("episode_id").cumcount()
    df["dsu_missing"] = df["days_since_use"].isna().astype(int)
    df["days_since_use"] = df.groupby("episode_id")["days_since_use"].ffill()
    df["days_since_use"] = df["days_since_use"].fillna(df["days_since_use"].median())
    df["log_dsu"] = np.log1p(df["days_since_use"])
    return df


def policy_frame(raw: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """Target probabilities as an equicare policy file.

    Parameters
    ----------
    raw : pandas.DataFrame
        The generator's panel in its own order (member, week), shape (n_rows, 18).
    probs : numpy.ndarray
        Target probabilities in the same order, shape (n_rows, 7).

    Returns
    -------
    pandas.DataFrame
        ``episode_id``, ``step`` and ``p_0..p_6``, shape (n_rows, 9).
    """
    out = pd.DataFrame(probs, columns=[f"p_{i}" for i in range(probs.shape[1])])
    out.insert(0, "episode_id", raw.episode_id.to_numpy())
    out.insert(1, "step", raw.groupby("episode_id").cumcount().to_numpy())
    return out


def main(argv: list[str] | None = None) -> None:
    """Write the panel, its manifests, the target policies and (optionally) the truth."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=2026, help="panel seed (docs: 2026)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--members", type=int, default=5000, help="members (docs: 5000)")
    ap.add_argument("--truth-members", type=int, default=0,
                    help="members per policy of the Monte-Carlo truth (docs: 200000; 0: none)")
    ap.add_argument("--truth-seed", type=int, default=7, help="seed of the truth (docs: 7)")
    ap.add_argument("--with-z", action="store_true",
                    help="add a score z ~ U(0,1) that drives nothing and the target zrule "
                    "(MAT when z < 0.5, else group therapy), as in docs/ope.md's table")
    ap.add_argument("--force", action="store_true",
                    help="overwrite the panel files in a non-empty --out")
    a = ap.parse_args(argv)
    if Path(a.out).is_dir() and any(Path(a.out).iterdir()) and not a.force:
        ap.error(f"{a.out} is not empty: pass --force to overwrite its panel files")
    a.out.mkdir(parents=True, exist_ok=True)
    frame, pols, _ = panel(a.seed, a.members)
    if a.with_z:
        frame["z"] = np.random.default_rng(a.seed + 77).random(len(frame)).round(3)
        zp = np.zeros((len(frame), NA))
        zp[np.arange(len(frame)), np.where(frame["z"].to_numpy() < 0.5, 4, 1)] = 1.0
        pols["zrule"] = zp
    frame.to_parquet(a.out / "raw_panel.parquet", index=False)
    prepare(frame).to_parquet(a.out / "panel.parquet", index=False)
    (a.out / "manifest.toml").write_text(MANIFEST)
    (a.out / "manifest_member.toml").write_text(MANIFEST_MEMBER)
    for k, p in pols.items():
        policy_frame(frame, p).to_parquet(a.out / f"{k}.parquet", index=False)
    print(frame.shape, frame.episode_id.nunique(), frame.member_id.nunique())
    if a.truth_members:
        tr = truth(a.truth_seed, a.truth_members,
                   {"behaviour": None, "mat_first": policy_mat_first, "blend": policy_blend})
        (a.out / "truth.json").write_text(json.dumps(tr, indent=1))
        for k, v in tr.items():
            print(k, v["overall"])


if __name__ == "__main__":
    main()
