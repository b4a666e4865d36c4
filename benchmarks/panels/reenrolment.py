"""Re-enrolment panel with a person-level random effect (outside equicare.sim); knows its truth.

People enrol 2-4 times; each episode has T steps, binary action logged with p(a=1)=0.5
(propensity column), reward r_t = u_p + 0.5 a_t + eps, u_p ~ N(0, sd_u), eps ~ N(0, 0.5).
Target policy: p(a=1) = 0.8 at every row. gamma = 1. True target value = T * 0.8 * 0.5.
Episode order in the file: by episode id, which interleaves people (ids assigned at random).

The re-enrolment panel of session 26 (docs/ope.md "People who re-enrol (`member`)"). Built with
numpy/pandas only (not ``equicare.sim``).

Usage::

    python benchmarks/panels/reenrolment.py --seed 7 --out DIR [--people 5000]

Writes ``DIR/panel.parquet``, ``DIR/manifest.toml``, ``DIR/policy.parquet`` (the target,
``p_0``/``p_1`` keyed by ``episode_id`` and ``t``) and ``DIR/truth.json`` (the exact target
value, ``T * 0.8 * 0.5``). The documented numbers use the defaults (5,000 people).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

T = 4
P_TARGET = 0.8
TRUTH = T * P_TARGET * 0.5

MANIFEST = """[dataset]
episode = "episode_id"
time = "t"
member = "person"
states = ["x"]
groups = ["grp"]
behavior_prob = "propensity"
gamma = 1.0

[actions]
a = { levels = 2 }

[reward]
r = { column = "r", weight = 1.0 }
"""


def make(n_people: int, seed: int, sd_u: float = 1.0) -> pd.DataFrame:
    """Simulate the panel.

    Parameters
    ----------
    n_people : int
        People (2-4 episodes each, ``T`` rows per episode).
    seed : int
        Seed.
    sd_u : float
        Standard deviation of the person effect ``u_p``.

    Returns
    -------
    pandas.DataFrame
        One row per person-episode-step, shape (T * n_episodes, 8), in storage order (people
        contiguous; sort by ``episode_id`` to interleave them).
    """
    rng = np.random.default_rng(seed)
    k = rng.integers(2, 5, size=n_people)  # 2-4 enrolments
    u = rng.normal(0.0, sd_u, size=n_people)
    person = np.repeat(np.arange(n_people), k)
    n_ep = person.size
    ep_id = rng.permutation(n_ep)  # ids interleave people in storage order
    rows_person = np.repeat(person, T)
    n = rows_person.size
    a = (rng.random(n) < 0.5).astype(np.int64)
    r = u[rows_person] + 0.5 * a + rng.normal(0.0, 0.5, size=n)
    grp = np.where(np.repeat(person, T) % 3 == 0, "g0", "g1")
    return pd.DataFrame(
        {
            "episode_id": np.repeat(ep_id, T),
            "t": np.tile(np.arange(T), n_ep),
            "person": [f"p{i}" for i in rows_person],
            "x": rng.normal(size=n),
            "grp": grp,
            "a": a,
            "r": r,
            "propensity": 0.5,
        }
    )


def main(argv: list[str] | None = None) -> None:
    """Write the panel, its manifest, the target policy and the truth."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7, help="panel seed (docs: 7)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--people", type=int, default=5000, help="people (docs: 5000)")
    ap.add_argument("--force", action="store_true",
                    help="overwrite the panel files in a non-empty --out")
    a = ap.parse_args(argv)
    if Path(a.out).is_dir() and any(Path(a.out).iterdir()) and not a.force:
        ap.error(f"{a.out} is not empty: pass --force to overwrite its panel files")
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    df = make(a.people, seed=a.seed).sort_values(["episode_id", "t"])
    df.to_parquet(out / "panel.parquet", index=False)
    (out / "manifest.toml").write_text(MANIFEST)
    probs = pd.DataFrame({"episode_id": df["episode_id"], "t": df["t"],
                          "p_0": 1 - P_TARGET, "p_1": P_TARGET})
    probs.to_parquet(out / "policy.parquet", index=False)
    (out / "truth.json").write_text(json.dumps({"target_value": TRUTH, "gamma": 1.0}, indent=1))
    print(len(df), "rows", df["episode_id"].nunique(), "episodes", a.people, "people")


if __name__ == "__main__":
    main()
