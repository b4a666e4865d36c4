"""Three families of panels where a column the target reads drives only the transitions.

The generator families of session 26 behind docs/ope.md's table "Columns that drive only the
transitions" (measured with 2,000 members and seeds 0-9 per family). Built with numpy/pandas only
(not ``equicare.sim``); the truth is exact, by a linear solve over the health states.

* ``A``: a score ``x ~ U(0, 1)`` drawn each row; acting when ``x >= 0.5`` (a match) moves the
  health ``h`` in 0..2 up with probability ``0.35 + effect`` and down with ``0.35 - effect``, a
  mismatch the reverse; reward ``2h`` at the terminal row only (plus noise 0.3). The target acts
  iff ``x >= 0.5``.
* ``B``: a site per episode (20 levels); acting helps ``h`` at the first 10 sites and harms it at
  the others; reward ``2h`` at the terminal row only. The target acts at the first 10 sites.
* ``C``: a persistent adherence ``u ~ U(0, 1)`` per episode and a 5-level health with reward
  ``h`` per row; acting helps for ``u >= 0.4`` and harms below; practice acts more in low
  states. The target acts iff ``u >= 0.4``.

With ``--no-drive`` the column changes no transition (the same targets).

Usage::

    python benchmarks/panels/transition_families.py --family A --seed S --out DIR
        [--members 2000] [--effect 0.25] [--no-drive]

Writes ``DIR/panel.parquet``, ``DIR/manifest.toml``, ``DIR/target.parquet`` (``p_0``, ``p_1``
keyed by ``id`` and ``t``) and ``DIR/truth.json`` (the target's exact value averaged over the
episodes' first states). The docs' weaker effects of family A are ``--effect 0.1`` and
``--effect 0.05``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def _manifest(states, cats, gamma):
    return {
        "dataset": {
            "episode": "id",
            "time": "t",
            "states": states,
            "categorical_states": cats,
            "terminal": "end",
            "behavior_prob": "p",
            "gamma": gamma,
        },
        "actions": {"act": {"levels": [0, 1]}},
        "reward": {"r": {"column": "r", "weight": 1.0}},
    }


def _chain(n_h, up, down):
    P = np.zeros((n_h, n_h))
    for s in range(n_h):
        P[s, min(s + 1, n_h - 1)] += up
        P[s, max(s - 1, 0)] += down
        P[s, s] += 1 - up - down
    return P


def score_panel(n, seed, drives=True, gamma=0.95, p_end=0.1, t_max=150, noise=1.0, effect=0.25):
    """Family A: an i.i.d. score ``x`` each row decides whether acting helps.

    Parameters
    ----------
    n : int
        Episodes (members).
    seed : int
        Seed.
    drives : bool
        Whether ``x`` changes the transitions (else acting moves ``h`` up and down 0.35 alike).
    gamma, p_end, t_max, noise : float, float, int, float
        Discount, per-row end probability, longest episode, reward noise's standard deviation.
    effect : float
        A match moves ``h`` up ``0.35 + effect`` and down ``0.35 - effect``.

    Returns
    -------
    frame : pandas.DataFrame
        The panel, one row per episode step.
    manifest : dict
        The manifest.
    truth : float
        The target's exact value averaged over the episodes' first states.
    """
    rng = np.random.default_rng(seed)
    up_m, down_m = (0.35 + effect, 0.35 - effect) if drives else (0.35, 0.35)
    up_n, down_n = (0.35 - effect, 0.35 + effect) if drives else (0.35, 0.35)
    h = rng.integers(0, 3, n)
    h0 = h.copy()
    site = np.array(["A", "B"])[rng.integers(0, 2, n)]
    alive, frames = np.ones(n, dtype=bool), []
    for t in range(t_max):
        x = rng.random(n).round(3)
        a = (rng.random(n) < 0.5).astype(int)
        end = (rng.random(n) < p_end) | (t == t_max - 1)
        r = np.where(end, 2.0 * h, 0.0) + rng.normal(0, noise, n)
        frames.append(
            pd.DataFrame(
                {
                    "id": np.arange(n),
                    "t": t,
                    "h": h,
                    "site": site,
                    "x": x,
                    "act": a,
                    "p": 0.5,
                    "r": r,
                    "end": end,
                }
            )[alive]
        )
        alive &= ~end
        m = a == (x >= 0.5)
        pu, pd_ = np.where(m, up_m, up_n), np.where(m, down_m, down_n)
        u = rng.random(n)
        h = np.where(u < pu, np.minimum(h + 1, 2), np.where(u < pu + pd_, np.maximum(h - 1, 0), h))
    df = pd.concat(frames, ignore_index=True)
    man = _manifest(["x"], ["h", "site"], gamma)
    P = np.zeros((3, 3))
    for s in range(3):
        P[s, min(s + 1, 2)] += up_m
        P[s, max(s - 1, 0)] += down_m
        P[s, s] += 1 - up_m - down_m
    R = p_end * 2.0 * np.arange(3)
    V = np.linalg.solve(np.eye(3) - gamma * (1 - p_end) * P, R)
    return df, man, float(V[h0].mean())


def sites_panel(n, seed, drives=True, n_sites=20, gamma=0.95, p_end=0.1, t_max=150, noise=0.5):
    """Family B: acting helps at the first half of the sites and harms at the others.

    Parameters and returns as :func:`score_panel` (``n_sites``: sites; no ``effect``).
    """
    rng = np.random.default_rng(seed)
    site = rng.integers(0, n_sites, n)
    good = site < n_sites // 2
    h = rng.integers(0, 3, n)
    h0 = h.copy()
    alive, frames = np.ones(n, dtype=bool), []
    for t in range(t_max):
        a = (rng.random(n) < 0.5).astype(int)
        end = (rng.random(n) < p_end) | (t == t_max - 1)
        r = np.where(end, 2.0 * h, 0.0) + rng.normal(0, noise, n)
        frames.append(
            pd.DataFrame(
                {
                    "id": np.arange(n),
                    "t": t,
                    "h": h,
                    "site": site,
                    "z": 0.0,
                    "act": a,
                    "p": 0.5,
                    "r": r,
                    "end": end,
                }
            )[alive]
        )
        alive &= ~end
        if drives:
            pu = np.where(a == 1, np.where(good, 0.6, 0.1), 0.2)
            pdn = np.where(a == 1, np.where(good, 0.1, 0.6), 0.3)
        else:
            pu, pdn = np.where(a == 1, 0.35, 0.2), np.where(a == 1, 0.35, 0.3)
        u = rng.random(n)
        h = np.where(u < pu, np.minimum(h + 1, 2), np.where(u < pu + pdn, np.maximum(h - 1, 0), h))
    df = pd.concat(frames, ignore_index=True)
    man = _manifest(["z"], ["h", "site"], gamma)
    R = p_end * 2.0 * np.arange(3)
    c = gamma * (1 - p_end)
    if drives:
        Vg = np.linalg.solve(np.eye(3) - c * _chain(3, 0.6, 0.1), R)
        Vb = np.linalg.solve(np.eye(3) - c * _chain(3, 0.2, 0.3), R)
    else:
        Vg = np.linalg.solve(np.eye(3) - c * _chain(3, 0.35, 0.35), R)
        Vb = np.linalg.solve(np.eye(3) - c * _chain(3, 0.2, 0.3), R)
    return df, man, float(np.where(good, Vg[h0], Vb[h0]).mean())


def adherence_panel(n, seed, drives=True, gamma=0.95, p_end=0.05, t_max=300, noise=1.0):
    """Family C: a persistent adherence ``u`` per episode decides whether acting helps.

    Parameters and returns as :func:`score_panel` (no ``effect``).
    """
    rng = np.random.default_rng(seed)
    u = rng.random(n).round(3)
    hi = u >= 0.4
    h = rng.integers(0, 5, n)
    h0 = h.copy()
    alive, frames = np.ones(n, dtype=bool), []
    for t in range(t_max):
        p1 = 0.7 - 0.1 * h
        a = (rng.random(n) < p1).astype(int)
        end = (rng.random(n) < p_end) | (t == t_max - 1)
        r = h + rng.normal(0, noise, n)
        frames.append(
            pd.DataFrame(
                {
                    "id": np.arange(n),
                    "t": t,
                    "h": h,
                    "u": u,
                    "act": a,
                    "p": np.where(a == 1, p1, 1 - p1),
                    "r": r,
                    "end": end,
                }
            )[alive]
        )
        alive &= ~end
        if drives:
            pu = np.where(a == 1, np.where(hi, 0.5, 0.05), 0.15)
            pdn = np.where(a == 1, np.where(hi, 0.1, 0.5), 0.25)
        else:
            pu, pdn = np.where(a == 1, 0.3, 0.15), np.where(a == 1, 0.2, 0.25)
        v = rng.random(n)
        h = np.where(v < pu, np.minimum(h + 1, 4), np.where(v < pu + pdn, np.maximum(h - 1, 0), h))
    df = pd.concat(frames, ignore_index=True)
    man = _manifest(["u"], ["h"], gamma)
    R = np.arange(5.0)
    c = gamma * (1 - p_end)
    if drives:
        Vh = np.linalg.solve(np.eye(5) - c * _chain(5, 0.5, 0.1), R)
        Vl = np.linalg.solve(np.eye(5) - c * _chain(5, 0.15, 0.25), R)
    else:
        Vh = np.linalg.solve(np.eye(5) - c * _chain(5, 0.3, 0.2), R)
        Vl = np.linalg.solve(np.eye(5) - c * _chain(5, 0.15, 0.25), R)
    return df, man, float(np.where(hi, Vh[h0], Vl[h0]).mean())


def target_acts(family: str, df: pd.DataFrame, n_sites: int = 20) -> np.ndarray:
    """Whether the family's target acts on each row, shape (n_rows,) of 0.0 / 1.0."""
    if family == "A":
        return (df["x"].to_numpy() >= 0.5).astype(float)
    if family == "B":
        return (df["site"].to_numpy() < n_sites // 2).astype(float)
    return (df["u"].to_numpy() >= 0.4).astype(float)


def manifest_toml(man: dict) -> str:
    """The manifest dictionary of a family as equicare's TOML."""
    d = man["dataset"]

    def strs(xs):
        return "[" + ", ".join(f'"{x}"' for x in xs) + "]"

    return (
        f'[dataset]\nepisode = "{d["episode"]}"\ntime = "{d["time"]}"\n'
        f"states = {strs(d['states'])}\ncategorical_states = {strs(d['categorical_states'])}\n"
        f'terminal = "{d["terminal"]}"\nbehavior_prob = "{d["behavior_prob"]}"\n'
        f"gamma = {d['gamma']}\n\n[actions]\nact = {{ levels = [0, 1] }}\n\n"
        '[reward]\nr = { column = "r", weight = 1.0 }\n'
    )


def main(argv: list[str] | None = None) -> None:
    """Write one family's panel, its manifest, the target and its exact value."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["A", "B", "C"], required=True)
    ap.add_argument("--seed", type=int, default=0, help="panel seed (docs: 0-9)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--members", type=int, default=2000, help="episodes (docs: 2000)")
    ap.add_argument(
        "--effect",
        type=float,
        default=0.25,
        help="family A's effect (docs: 0.25, weaker 0.1 and 0.05)",
    )
    ap.add_argument("--no-drive", action="store_true", help="the read column drives nothing")
    ap.add_argument("--force", action="store_true",
                    help="overwrite the panel files in a non-empty --out")
    a = ap.parse_args(argv)
    if Path(a.out).is_dir() and any(Path(a.out).iterdir()) and not a.force:
        ap.error(f"{a.out} is not empty: pass --force to overwrite its panel files")
    drives = not a.no_drive
    if a.family == "A":
        df, man, truth = score_panel(a.members, a.seed, drives, noise=0.3, effect=a.effect)
    elif a.family == "B":
        df, man, truth = sites_panel(a.members, a.seed, drives)
    else:
        df, man, truth = adherence_panel(a.members, a.seed, drives)
    a.out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(a.out / "panel.parquet", index=False)
    (a.out / "manifest.toml").write_text(manifest_toml(man))
    act = target_acts(a.family, df)
    pd.DataFrame({"id": df["id"], "t": df["t"], "p_0": 1.0 - act, "p_1": act}).to_parquet(
        a.out / "target.parquet", index=False
    )
    meta = {"family": a.family, "seed": a.seed, "members": a.members, "drives": drives}
    if a.family == "A":
        meta["effect"] = a.effect
    (a.out / "truth.json").write_text(json.dumps({"target_value": truth, **meta}, indent=1))
    print(len(df), "rows; target value", truth)


if __name__ == "__main__":
    main()
