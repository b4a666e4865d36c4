"""Outreach panel for profiling `equicare mediate` (pandas/numpy only, not equicare.sim).

8,000 members x ~25 weekly steps, 25 flat actions (one 'none' and 24 rare outreach kinds,
clinic-specific mixes), a binary engagement mediator, a continuous outcome (symptom score).
States: a clinic code (40 levels, categorical), a continuous score, engagement.

The outreach panel of session 26 on which docs/mediation.md ("Timing on a program panel",
session 26: the behaviour model's Newton steps preconditioned) profiled ``equicare mediate``.

Usage::

    python benchmarks/panels/mediation_outreach.py --seed 11 --out DIR [--members 8000]

Writes ``DIR/panel.parquet``, ``DIR/manifest.toml``, ``DIR/target.parquet`` (a score-driven mix
of three outreach kinds) and ``DIR/control.parquet`` (never act), both wide ``p_0..p_24`` keyed by
``member_id`` and ``week``. The documented numbers use the defaults (8,000 members, 179,196 rows).
The generator does not compute the mediation effects' truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

MANIFEST = """[dataset]
episode = "member_id"
time = "week"
states = ["score", "engagement"]
categorical_states = ["clinic"]
mediators = ["engaged"]
groups = ["sex"]
gamma = 0.99

[actions]
action = { levels = 25 }

[reward]
primary = { column = "outcome", weight = 1.0 }
"""


def sig(x):
    """Logistic function."""
    return 1 / (1 + np.exp(-x))


def panel(n=8000, T=25, seed=11):
    """Simulate the panel and the two policy files.

    Parameters
    ----------
    n : int
        Members.
    T : int
        Longest stay in weeks (stays last 15 to ``T`` weeks).
    seed : int
        Seed.

    Returns
    -------
    tuple of pandas.DataFrame
        The panel (one row per member-week), the target and the control (one row per panel row,
        ``member_id``, ``week``, ``p_0..p_24``).
    """
    rng = np.random.default_rng(seed)
    clinic = rng.integers(0, 40, n)
    mix = rng.dirichlet(np.full(24, 0.3), size=40)
    ceff = rng.normal(0, 0.5, 40)
    score = rng.normal(0, 1, n)
    eng = rng.beta(2, 3, n)
    L = np.clip(rng.integers(15, 36, n), 2, T)
    rows = []
    for t in range(T):
        out = rng.random(n) < sig(-1.6 + 0.4 * score + ceff[clinic] - 0.5 * eng)
        k = np.minimum((rng.random(n)[:, None] > np.cumsum(mix[clinic], 1)).sum(1), 23)
        a = np.where(out, 1 + k, 0)
        m = rng.random(n) < sig(-1.2 + 1.5 * out + 0.1 * (a % 3) + 1.5 * eng)
        y = -0.5 * score + 0.4 * m + 0.1 * out + rng.normal(0, 0.5, n)
        rows.append(
            pd.DataFrame(
                {
                    "member_id": np.arange(n),
                    "week": t,
                    "clinic": clinic,
                    "score": score.round(4),
                    "engagement": eng.round(4),
                    "action": a,
                    "engaged": m.astype(int),
                    "outcome": y.round(4),
                    "sex": np.where(np.arange(n) % 2, "f", "m"),
                    "L": L,
                }
            )
        )
        eng = np.clip(0.8 * eng + 0.15 * m + rng.normal(0, 0.05, n), 0, 1)
        score = 0.9 * score - 0.1 * m - 0.05 * out + rng.normal(0, 0.3, n)
    df = pd.concat(rows)
    df = df[df["week"] < df["L"]].drop(columns="L").sort_values(["member_id", "week"])
    df["clinic"] = df["clinic"].map(lambda c: f"c{c:02d}")
    p = sig(-1.0 + 0.6 * df["score"].to_numpy())
    P = np.zeros((len(df), 25))
    P[:, 0] = 1 - p
    P[:, 1], P[:, 5], P[:, 9] = 0.5 * p, 0.3 * p, 0.2 * p
    pol = pd.DataFrame(P, columns=[f"p_{k}" for k in range(25)])
    pol.insert(0, "week", df["week"].to_numpy())
    pol.insert(0, "member_id", df["member_id"].to_numpy())
    ctl = pol.copy()
    ctl.iloc[:, 2:] = 0.0
    ctl["p_0"] = 1.0
    return df.reset_index(drop=True), pol, ctl


def main(argv: list[str] | None = None) -> None:
    """Write the panel, its manifest and the two policy files."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=11, help="panel seed (docs: 11)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--members", type=int, default=8000, help="members (docs: 8000)")
    ap.add_argument("--force", action="store_true",
                    help="overwrite the panel files in a non-empty --out")
    a = ap.parse_args(argv)
    if Path(a.out).is_dir() and any(Path(a.out).iterdir()) and not a.force:
        ap.error(f"{a.out} is not empty: pass --force to overwrite its panel files")
    d = a.out
    d.mkdir(parents=True, exist_ok=True)
    df, pol, ctl = panel(a.members, seed=a.seed)
    df.to_parquet(d / "panel.parquet", index=False)
    pol.to_parquet(d / "target.parquet", index=False)
    ctl.to_parquet(d / "control.parquet", index=False)
    (d / "manifest.toml").write_text(MANIFEST)
    print(len(df), df["action"].value_counts().sort_index().to_dict())


if __name__ == "__main__":
    main()
