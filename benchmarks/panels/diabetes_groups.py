"""Diabetes-program panel built with pandas/numpy (not equicare.sim), with Monte Carlo group truth.

Members (race groups with different latent HbA1c means) are followed weekly for up to 26 weeks.
State logged: clinic (categorical), hba1c (last lab carried forward; 8.0 before the first lab),
a1c_known (0/1), engagement (numeric). Latent HbA1c drives the (negative) reward and the
disenrolment hazard. Actions: none / text / phone / visit; practice's propensities are logged.

The diabetes-program panel of session 25 (docs/ope.md "Subgroups": group FQE against the
truth). ``tests/ope/_diabetes.py`` is a shrunk copy for the tests; this is the documented one.

Usage::

    python benchmarks/panels/diabetes_groups.py --seed 0 --out DIR [--members 8000]
        [--truth-members 100000]

Writes ``DIR/panel.parquet``, ``DIR/manifest.toml``, ``DIR/policy_<name>.parquet`` (targets
``practice``, ``outreach``, ``nudge``: ``p_0..p_3`` keyed by ``member_id`` and ``week``) and,
with ``--truth-members``, ``DIR/truth.json`` (Monte Carlo value per race group of each target,
``[mean, SE]``, that many members per group, seed 12345). The documented numbers use the
defaults (8,000 members, 189,970 rows; truth over 100,000 members per group).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

RACES = ["White", "Black", "Hispanic", "Asian", "AIAN", "NHPI"]
SHARE = np.array([0.50, 0.22, 0.16, 0.07, 0.035, 0.015])
A1C_MEAN = np.array([7.5, 8.4, 8.2, 7.8, 9.0, 8.7])
N_CLINIC = 8
ACTIONS = ["none", "text", "phone", "visit"]
WEEKS = 26
GAMMA = 0.99
EFFECT = np.array([0.0, 0.01, 0.025, 0.05])  # weekly HbA1c drop by action (x engagement)
COST = np.array([0.0, 0.0005, 0.002, 0.006])


def practice_logits(a1c_obs, known, eng, clinic):
    """(n, 4) logits of current practice from the logged state only."""
    hi = np.where(known > 0, a1c_obs - 8.0, 0.0)
    cl = (clinic % 3 - 1) * 0.3
    return np.stack(
        [np.full_like(eng, 1.2), 0.2 + 0.8 * eng + cl, -0.6 + 0.5 * hi, -1.6 + 0.7 * hi - cl],
        axis=1,
    )


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def practice_probs(a1c_obs, known, eng, clinic):
    return softmax(practice_logits(a1c_obs, known, eng, clinic))


def outreach_probs(a1c_obs, known, eng, clinic):
    """Target: 70% a rule (visit if known >= 9, phone if known >= 8 or unknown, else text)
    + 30% practice (keeps support)."""
    rule = np.where(known > 0, np.where(a1c_obs >= 9, 3, np.where(a1c_obs >= 8, 2, 1)), 2)
    onehot = np.eye(4)[rule]
    return 0.7 * onehot + 0.3 * practice_probs(a1c_obs, known, eng, clinic)


def nudge_probs(a1c_obs, known, eng, clinic):
    """Target: 30% the outreach rule + 70% practice."""
    rule = np.where(known > 0, np.where(a1c_obs >= 9, 3, np.where(a1c_obs >= 8, 2, 1)), 2)
    return 0.3 * np.eye(4)[rule] + 0.7 * practice_probs(a1c_obs, known, eng, clinic)


POLICIES = {"practice": practice_probs, "outreach": outreach_probs, "nudge": nudge_probs}


def simulate(n, rng, policy=practice_probs, race=None, weeks=WEEKS, log=True):
    """Simulate n members; returns a DataFrame (log) or per-member discounted returns."""
    race_ix = (
        rng.choice(len(RACES), size=n, p=SHARE) if race is None else np.full(n, race, dtype=int)
    )
    clinic_p = np.full((len(RACES), N_CLINIC), 1.0)
    clinic_p[1, :3] += 2.0  # Black members more often at clinics 0-2
    clinic_p[2, 3:5] += 2.0  # Hispanic at 3-4
    clinic_p[4, 7] += 6.0  # AIAN mostly at clinic 7
    clinic_p /= clinic_p.sum(axis=1, keepdims=True)
    u = rng.random(n)
    clinic = (u[:, None] > np.cumsum(clinic_p[race_ix], axis=1)).sum(axis=1)
    clinic = np.minimum(clinic, N_CLINIC - 1)
    a1c = A1C_MEAN[race_ix] + rng.normal(0, 1.0, n)
    known = (rng.random(n) < 0.7).astype(float)
    obs = np.where(known > 0, np.round(a1c + rng.normal(0, 0.15, n), 1), 8.0)
    eng = np.round(np.clip(rng.beta(2, 3, n), 0, 1), 3)
    alive = np.ones(n, dtype=bool)
    ret = np.zeros(n)
    rows = []
    for t in range(weeks):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        p = policy(obs[idx], known[idx], eng[idx], clinic[idx])
        cum = np.cumsum(p, axis=1)
        a = (rng.random(idx.size)[:, None] > cum).sum(axis=1)
        a = np.minimum(a, 3)
        prop = practice_probs(obs[idx], known[idx], eng[idx], clinic[idx])[np.arange(idx.size), a]
        # reward: excess HbA1c burden, a complication event, the action's cost
        x = a1c[idx]
        p_event = 1.0 / (1.0 + np.exp(-(-5.0 + 0.6 * (x - 8.0))))
        event = rng.random(idx.size) < p_event
        r = -(0.003 * np.maximum(x - 6.5, 0.0) + 0.05 * event + COST[a])
        ret[idx] += GAMMA**t * r
        hazard = 0.006 + 0.004 * np.maximum(x - 8.0, 0.0) + 0.01 * (eng[idx] < 0.15)
        term = rng.random(idx.size) < hazard
        if log:
            rows.append(
                pd.DataFrame(
                    {
                        "member_id": idx,
                        "week": t,
                        "clinic": clinic[idx],
                        "hba1c": obs[idx],
                        "a1c_known": known[idx],
                        "engagement": eng[idx],
                        "outreach": np.array(ACTIONS)[a],
                        "propensity": prop,
                        "reward": r,
                        "disenrolled": term.astype(int),
                        "race": np.array(RACES)[race_ix[idx]],
                        "sex": np.where(idx % 2 == 0, "female", "male"),
                    }
                )
            )
        # transitions
        e = eng[idx]
        drift = 0.04 * (A1C_MEAN[race_ix[idx]] - x)
        a1c[idx] = x + drift - EFFECT[a] * (0.5 + e) + rng.normal(0, 0.08, idx.size)
        eng[idx] = np.round(
            np.clip(0.85 * e + 0.06 + 0.08 * (a > 0) + rng.normal(0, 0.05, idx.size), 0, 1), 3
        )
        lab = rng.random(idx.size) < (0.06 + 0.25 * (a == 3))
        obs[idx[lab]] = np.round(a1c[idx[lab]] + rng.normal(0, 0.15, lab.sum()), 1)
        known[idx[lab]] = 1.0
        alive[idx[term]] = False
    if log:
        return pd.concat(rows, ignore_index=True).sort_values(
            ["member_id", "week"], ignore_index=True
        )
    return race_ix, ret


def truth(policy_name, n_per_group=200_000, seed=12345):
    """Monte Carlo value per race group and overall (mixture by SHARE), with MC standard errors."""
    pol = POLICIES[policy_name]
    out = {}
    for g, name in enumerate(RACES):
        _, ret = simulate(
            n_per_group, np.random.default_rng(seed + g), policy=pol, race=g, log=False
        )
        out[name] = (float(ret.mean()), float(ret.std() / np.sqrt(ret.size)))
    out["overall"] = (float(sum(SHARE[g] * out[r][0] for g, r in enumerate(RACES))), 0.0)
    return out


MANIFEST = """[dataset]
episode = "member_id"
time = "week"
states = ["hba1c", "a1c_known", "engagement"]
categorical_states = ["clinic"]
groups = ["race", "sex"]
terminal = "disenrolled"
behavior_prob = "propensity"
gamma = 0.99

[actions.outreach]
levels = ["none", "text", "phone", "visit"]

[reward]
column = "reward"
"""


def write(out, members=8000, seed=0):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = simulate(members, np.random.default_rng(seed))
    df.to_parquet(out / "panel.parquet", index=False)
    (out / "manifest.toml").write_text(MANIFEST)
    for name, pol in POLICIES.items():
        p = pol(
            df["hba1c"].to_numpy(),
            df["a1c_known"].to_numpy(),
            df["engagement"].to_numpy(),
            df["clinic"].to_numpy(),
        )
        pf = pd.DataFrame(
            {
                "member_id": df["member_id"],
                "week": df["week"],
                **{f"p_{j}": p[:, j] for j in range(4)},
            }
        )
        pf.to_parquet(out / f"policy_{name}.parquet", index=False)
    return df


def main(argv: list[str] | None = None) -> None:
    """Write the panel, its manifest, the target policies and (optionally) the truth."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="panel seed (docs: 0)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--members", type=int, default=8000, help="members (docs: 8000)")
    ap.add_argument(
        "--truth-members",
        type=int,
        default=0,
        help="members per race group of the Monte-Carlo truth (docs: 100000; 0: none)",
    )
    ap.add_argument("--force", action="store_true",
                    help="overwrite the panel files in a non-empty --out")
    a = ap.parse_args(argv)
    if Path(a.out).is_dir() and any(Path(a.out).iterdir()) and not a.force:
        ap.error(f"{a.out} is not empty: pass --force to overwrite its panel files")
    df = write(a.out, a.members, a.seed)
    print(len(df), df.groupby("race").member_id.nunique().to_dict())
    if a.truth_members:
        tr = {p: truth(p, n_per_group=a.truth_members) for p in POLICIES}
        (a.out / "truth.json").write_text(json.dumps(tr))
        for p, v in tr.items():
            print(p, v["overall"])


if __name__ == "__main__":
    main()
