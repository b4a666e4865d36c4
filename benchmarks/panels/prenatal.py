"""Prenatal care-management panel with known dynamics (built outside equicare.sim).

The prenatal panel of session 26 (docs/learn.md "group-robust", docs/ope.md, docs/fairness.md).
Built with numpy/pandas only.

Usage::

    python benchmarks/panels/prenatal.py --seed 0 --out DIR [--pregnancies 12000]

Writes ``DIR/panel.parquet`` and ``DIR/manifest.toml``. The panel logs propensities on 80% of
the rows only, so the manifest does not name them (equicare estimates them, as in the docs).
The documented numbers use the defaults (12,000 pregnancies of 10,667 women, 196,640 rows).

Pregnancies enrol at gestational week 8-30 and are followed weekly until delivery (week 37-41,
fixed by biology) or an adverse end (preterm birth / complication / loss); about 10% drop out
(censored). Actions: 0 none, 1 nurse_call, 2 home_visit, 3 doula, 4 transport.
Reward: -cost(a) every week, +1 at a healthy delivery.

`true_value(policy_fn, ...)` simulates any policy (a function of the week's state frame ->
(n, 5) probabilities) without dropout, overall and per group.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ACTIONS = ["none", "nurse_call", "home_visit", "doula", "transport"]
COST = np.array([0.0, 0.003, 0.015, 0.012, 0.006])
RACES = ["white", "black", "hispanic", "asian", "aian"]
RACE_P = np.array([0.45, 0.25, 0.22, 0.055, 0.025])  # aian ~300 of 12,000 pregnancies
RACE_RISK = {"white": 0.0, "black": 0.35, "hispanic": 0.15, "asian": 0.0, "aian": 0.6}
AGES = ["<20", "20-34", "35+"]
AGE_P = np.array([0.1, 0.7, 0.2])
INS = ["commercial", "medicaid", "uninsured"]

MANIFEST = """[dataset]
episode = "pregnancy_id"
time = "gest_week"
member = "woman_id"
states = ["gest_week_s", "bp_cat", "gdm", "missed_visits", "social_needs"]
categorical_states = ["insurance"]
groups = ["race_ethnicity", "age_band"]
terminal = "ended"
gamma = 1.0

[actions.intervention]
levels = ["none", "nurse_call", "home_visit", "doula", "transport"]

[reward]
outcome = { column = "r_outcome", weight = 1.0 }
cost = { column = "r_cost", weight = 1.0 }
"""


def women(
    n_preg: int, rng: np.random.Generator, second_share: float = 0.125, race_only: int | None = None
) -> pd.DataFrame:
    """Baseline covariates of pregnancies; some women hold two pregnancies."""
    n_women = int(round(n_preg / (1 + second_share)))
    race = rng.choice(len(RACES), n_women, p=RACE_P)
    age = rng.choice(len(AGES), n_women, p=AGE_P)
    if race_only is not None:
        race[:] = race_only
    woman = np.arange(n_women)
    extra = rng.choice(n_women, n_preg - n_women, replace=False)
    w = np.r_[woman, extra]
    ins_p = np.where(
        race[w, None] == 4,
        [[0.15, 0.6, 0.25]],
        np.where(race[w, None] == 0, [[0.6, 0.33, 0.07]], [[0.35, 0.52, 0.13]]),
    )
    u = rng.random(len(w))
    ins = (u[:, None] > np.cumsum(ins_p, 1)).sum(1)
    return pd.DataFrame(
        {
            "woman_id": w,
            "race": race[w],
            "age": age[w],
            "ins": ins,
        }
    )


def _init(base: pd.DataFrame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(base)
    race = base["race"].to_numpy()
    ins = base["ins"].to_numpy()
    risk = np.array([RACE_RISK[r] for r in RACES])[race]
    frail = rng.normal(0, 1, n) + risk + 0.3 * (base["age"].to_numpy() == 2)
    social = np.clip(np.round(rng.normal(1.2 + 0.8 * (ins >= 1) + 1.0 * (race == 4), 1.0)), 0, 5)
    start = np.clip(np.round(rng.gamma(4, 3.2, n) + 8), 8, 30).astype(int)
    deliv = rng.choice([37, 38, 39, 40, 41], n, p=[0.1, 0.2, 0.35, 0.25, 0.1])
    bp = (rng.random(n) < 0.08 + 0.05 * np.clip(frail, 0, None)).astype(int)
    return {
        "frail": frail,
        "social": social,
        "start": start,
        "deliv": deliv,
        "bp": bp,
        "gdm": np.zeros(n, int),
        "missed": np.zeros(n, int),
        "race": race,
        "ins": ins,
    }


def behavior_probs(f: pd.DataFrame) -> np.ndarray:
    """Current practice: calls for missed visits, scarce home visits / doulas, vouchers."""
    bp, gdm, missed, soc = (
        f[c].to_numpy(float) for c in ("bp_cat", "gdm", "missed_visits", "social_needs")
    )
    unins = (f["insurance"].to_numpy() == "uninsured").astype(float)
    aian = (f["race_ethnicity"].to_numpy() == "aian").astype(float)
    logit = np.stack(
        [
            np.full(len(f), 1.5),
            0.2 + 0.5 * missed + 0.4 * gdm,
            -3.2 + 0.8 * bp,
            -3.8 + 0.3 * soc,
            -1.5 + 0.3 * soc + 0.5 * unins + 1.0 * aian,
        ],
        1,
    )
    e = np.exp(logit - logit.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _frame(
    s: dict[str, np.ndarray], base: pd.DataFrame, idx: np.ndarray, gw: np.ndarray
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "gest_week_s": gw[idx].astype(float),
            "bp_cat": s["bp"][idx],
            "gdm": s["gdm"][idx],
            "missed_visits": np.minimum(s["missed"][idx], 8),
            "social_needs": s["social"][idx],
            "insurance": np.array(INS)[s["ins"][idx]],
            "race_ethnicity": np.array(RACES)[s["race"][idx]],
            "age_band": np.array(AGES)[base["age"].to_numpy()[idx]],
        }
    )


def _step(
    s: dict[str, np.ndarray], idx: np.ndarray, gw: np.ndarray, a: np.ndarray, u: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One week for rows idx with actions a; u (len(idx), 6) uniforms.

    Returns adverse end flag, delivery flag, healthy flag (for delivered).
    """
    race = s["race"][idx]
    aian = race == 4
    bp, gdm, missed, soc, frail = (
        s["bp"][idx],
        s["gdm"][idx],
        s["missed"][idx],
        s["social"][idx],
        s["frail"][idx],
    )
    ins = s["ins"][idx]
    g = gw[idx]
    call, hv, doula, tv = a == 1, a == 2, a == 3, a == 4
    # adverse (preterm / complication / loss) hazard this week
    lo = (
        -6.3
        + 1.1 * bp
        + 0.6 * gdm * (1 - 0.5 * call)
        + 0.22 * np.minimum(missed, 5)
        + 0.18 * soc
        + 0.35 * frail
        + 0.04 * (g - 20)
    )
    lo = lo - 1.0 * hv * (bp >= 1) - 0.15 * hv - 0.12 * soc * doula - 0.1 * call * (~aian)
    adverse = u[:, 0] < 1 / (1 + np.exp(-lo))
    # transitions
    p_up = 0.02 + 0.012 * np.clip(frail, -1, 3) + 0.002 * np.clip(g - 20, 0, None)
    p_up = p_up * np.where(hv, 0.4, np.where(call & ~aian, 0.85, 1.0))
    p_dn = 0.08 + 0.25 * hv + 0.04 * call
    up = u[:, 1] < p_up
    dn = (u[:, 1] > 1 - p_dn) & (bp > 0)
    s["bp"][idx] = np.clip(bp + up - dn, 0, 2)
    onset = (g >= 24) & (g <= 30) & (u[:, 2] < 0.012 + 0.01 * np.clip(frail, 0, 3))
    s["gdm"][idx] = np.maximum(gdm, onset)
    p_miss = 0.06 + 0.035 * soc + 0.08 * (ins == 2) + 0.05 * aian
    # transport works for everyone who needs it, strongly for rural aian members
    p_miss = p_miss * np.where(tv, np.where(aian, 0.15, 0.6), 1.0) * np.where(call & ~aian, 0.75, 1)
    s["missed"][idx] = missed + (u[:, 3] < p_miss)
    s["social"][idx] = np.clip(soc - (doula & (u[:, 4] < 0.3)) + (u[:, 4] > 0.985), 0, 5)
    deliver = (~adverse) & (g + 1 >= s["deliv"][idx])
    lh = (
        2.8
        - 0.7 * s["bp"][idx]
        - 0.5 * s["gdm"][idx]
        - 0.15 * np.minimum(s["missed"][idx], 6)
        - 0.12 * s["social"][idx]
        - 0.3 * frail
    )
    healthy = u[:, 5] < 1 / (1 + np.exp(-lh))
    return adverse, deliver, healthy


Policy = Callable[[pd.DataFrame], np.ndarray]


def simulate(
    n_preg: int,
    seed: int,
    policy: Policy | None = None,
    dropout: bool = True,
    race_only: int | None = None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Simulate pregnancies; returns (panel rows or empty, per-pregnancy returns)."""
    rng = np.random.default_rng(seed)
    base = women(n_preg, rng, race_only=race_only)
    s = _init(base, rng)
    n = len(base)
    gw = s["start"].copy()
    alive = np.ones(n, bool)
    ret = np.zeros(n)
    rows: list[pd.DataFrame] = []
    # common random numbers: week-indexed uniform streams, independent of the policy
    wrng = np.random.default_rng(seed + 10_000)
    for week in range(8, 42):
        U = wrng.random((n, 8))
        idx = np.flatnonzero(alive & (gw == week))
        if len(idx) == 0:
            if not (alive & (gw > week)).any():
                break
            continue
        f = _frame(s, base, idx, gw)
        pb = behavior_probs(f)
        p = pb if policy is None else policy(f)
        a = (U[idx, 6, None] > np.cumsum(p, 1)).sum(1)
        a = np.minimum(a, 4)
        adverse, deliver, healthy = _step(s, idx, gw, a, U[idx, :6])
        end = adverse | deliver
        r_out = (deliver & healthy).astype(float)
        r_cost = -COST[a]
        ret[idx] += r_out + r_cost
        drop = np.zeros(len(idx), bool)
        if dropout:
            drop = (~end) & (U[idx, 7] < 0.006 + 0.002 * np.minimum(s["missed"][idx], 5))
        if policy is None and dropout:
            f["pregnancy_id"] = idx
            f["woman_id"] = base["woman_id"].to_numpy()[idx]
            f["gest_week"] = week
            f["intervention"] = np.array(ACTIONS)[a]
            f["propensity"] = pb[np.arange(len(idx)), a]
            f["r_outcome"] = r_out
            f["r_cost"] = r_cost
            f["ended"] = end.astype(int)
            rows.append(f)
        alive[idx[end | drop]] = False
        gw[idx[~(end | drop)]] += 1
    panel = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return panel, {"ret": ret, "race": s["race"], "age": base["age"].to_numpy()}


def true_value(
    policy: Policy | None, n_preg: int = 20000, seed: int = 7, n_small: int = 6000
) -> dict[str, float]:
    """Monte-Carlo value overall (population mix) and for the small aian group (oversampled)."""
    _, o = simulate(n_preg, seed, policy, dropout=False)
    _, sm = simulate(n_small, seed + 1, policy, dropout=False, race_only=4)
    out = {
        "overall": o["ret"].mean(),
        "overall_se": o["ret"].std() / np.sqrt(n_preg),
        "aian": sm["ret"].mean(),
        "aian_se": sm["ret"].std() / np.sqrt(n_small),
    }
    for k, r in enumerate(RACES[:4]):
        m = o["race"] == k
        out[r] = o["ret"][m].mean()
    for k, a in enumerate(AGES):
        out["age " + a] = o["ret"][o["age"] == k].mean()
    return out


def write_panel(out: str | Path, n_preg: int = 12000, seed: int = 0) -> None:
    """Simulate the logged panel and write it with its manifest.

    Parameters
    ----------
    out : str or pathlib.Path
        Output directory (created).
    n_preg : int
        Pregnancies.
    seed : int
        Seed of the panel; ``seed + 5`` draws the rows whose propensity is not logged.
    """
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    panel, _ = simulate(n_preg, seed)
    rng = np.random.default_rng(seed + 5)
    panel.loc[rng.random(len(panel)) < 0.2, "propensity"] = np.nan  # 80% logged
    panel = panel.drop(columns=[])
    panel.to_parquet(d / "panel.parquet", index=False)
    (d / "manifest.toml").write_text(MANIFEST)
    print(len(panel), panel["pregnancy_id"].nunique(), panel["woman_id"].nunique())


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--seed``, ``--out``, ``--pregnancies``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="panel seed (docs: 0)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--pregnancies", type=int, default=12000, help="pregnancies (docs: 12000)")
    ap.add_argument("--force", action="store_true",
                    help="overwrite the panel files in a non-empty --out")
    a = ap.parse_args(argv)
    if Path(a.out).is_dir() and any(Path(a.out).iterdir()) and not a.force:
        ap.error(f"{a.out} is not empty: pass --force to overwrite its panel files")
    write_panel(a.out, a.pregnancies, a.seed)


if __name__ == "__main__":
    main()
