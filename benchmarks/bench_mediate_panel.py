"""Benchmark of ``equicare mediate`` on a diabetes-program-shaped panel, built without equicare.sim.

The panel (pandas/numpy, :func:`diabetes_panel`): members enrolling and leaving at different
calendar weeks of a 104-week window (stays censored), about 5 % ending in a terminal event;
states: a clinic code (60 zero-padded string levels, a categorical state), an HbA1c lab value
(carried forward between labs, with a 0/1 column for the rows before the first lab) and an
engagement score; a sparse outreach action modality x provider (25 combinations, about 9 % of
weeks with outreach); a binary mediator (an engagement / social-need contact); negative reward
components (HbA1c excess, an adverse event); race (with groups of 136 and 66 members) and sex.
Full size: 8,000 members, 200,957 member-weeks (the session-25 panel, docs/mediation.md
'Timing on a program panel').

Entries, each ``mediate_path`` as the command runs it with its defaults (all four estimators,
2 folds, 500 bootstrap replicates, ``--basis auto``, seed 42), one BLAS thread:

* ``mediate_diabetes_8000_binary_action``:
  ``--action 'modality=phone|text|video|in_person' --control 0`` (any outreach against none,
  the README's way to compare an action set);
* ``mediate_diabetes_8000_flat_actions``: the 25 flat actions with a control policy file
  (no outreach).

No peer library: the reference code of Ge et al. (2023) is not a package.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

MODALITY = ["none", "phone", "text", "video", "in_person"]
PROVIDER = ["none", "rn", "social_worker", "chw", "pharmacist"]
WINDOW = 104
MANIFEST = """[dataset]
episode = "member_id"
time = "week"
states = ["hba1c", "hba1c_no_lab", "engagement"]
categorical_states = ["clinic"]
mediators = ["contact"]
groups = ["race", "sex"]
terminal = "event"
gamma = 0.99

[actions.modality]
levels = ["none", "phone", "text", "video", "in_person"]
[actions.provider]
levels = ["none", "rn", "social_worker", "chw", "pharmacist"]

[reward]
hba1c_excess = { column = "r_hba1c", weight = 0.1 }
adverse = { column = "r_adverse", weight = 1.0 }
"""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def diabetes_panel(n: int = 8000, n_rows: int = 200_957, seed: int = 7
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The panel (one row per member-week) and a target policy file (wide ``p_0..p_24``).

    Stays are ``min(censoring, event)`` weeks; censoring lengths are then moved by one week at
    a time (censored members only) until the panel has exactly ``n_rows`` rows.
    """
    rng = np.random.default_rng(seed)
    n_aian, n_nhpi = round(136 * n / 8000), round(66 * n / 8000)
    rest = n - n_aian - n_nhpi
    counts = np.floor(np.array([0.46, 0.24, 0.20, 0.07, 0.03]) * rest).astype(int)
    counts[0] += rest - counts.sum()
    race = np.concatenate([np.repeat(["white", "black", "hispanic", "asian", "other"], counts),
                           np.repeat("aian", n_aian), np.repeat("nhpi", n_nhpi)])
    rng.shuffle(race)
    sex = np.where(rng.random(n) < 0.54, "female", "male")
    clinic = rng.choice(60, size=n, p=rng.dirichlet(np.full(60, 1.5)))
    clinic_eff = rng.normal(0, 0.5, 60)                       # outreach intensity by clinic
    clinic_mix = rng.dirichlet(np.full(16, 0.3), size=60)     # modality x provider by clinic
    offset = {"white": 0.0, "black": 0.4, "hispanic": 0.3, "asian": -0.1, "other": 0.1,
              "aian": 0.5, "nhpi": 0.4}
    race_off = np.array([offset[r] for r in race])
    h = rng.normal(8.3, 1.3, n) + race_off                    # true HbA1c
    eng = rng.beta(2, 3, n)
    enrol = rng.integers(0, WINDOW - 4, n)
    censor = np.minimum(np.ceil(rng.exponential(32.0, n)).astype(int) + 3, WINDOW - enrol)
    T = WINDOW
    HO, E = np.empty((n, T)), np.empty((n, T))
    NOLAB, A, M = (np.empty((n, T), dtype=np.int64) for _ in range(3))
    ADV = np.zeros((n, T))
    first_lab = rng.integers(0, 13, n)
    obs = np.full(n, np.nan)
    event = np.full(n, T + 1)
    for t in range(T):                                        # weeks, vectorised over members
        lab = (t >= first_lab) & ((t - first_lab) % 13 == 0) & (rng.random(n) < 0.85)
        obs = np.where(lab, np.round(h + rng.normal(0, 0.2, n), 1), obs)
        nolab = np.isnan(obs)
        hobs = np.where(nolab, 8.2, obs)
        HO[:, t], NOLAB[:, t], E[:, t] = hobs, nolab, eng
        out = rng.random(n) < _sigmoid(-2.4 + 0.35 * (hobs - 8.0) + clinic_eff[clinic]
                                       - 0.8 * eng + 0.3 * nolab)
        combo = np.minimum((rng.random(n)[:, None]
                            > np.cumsum(clinic_mix[clinic], axis=1)).sum(axis=1), 15)
        a = np.where(out, (1 + combo // 4) * 5 + 1 + combo % 4, 0)
        m = rng.random(n) < _sigmoid(-1.6 + 1.2 * out + 0.4 * (a // 5 == 4) + 2.0 * eng
                                     - 0.3 * (race_off > 0.3))
        adv = rng.random(n) < _sigmoid(-6.0 + 0.5 * (h - 8.0) - 0.4 * m)
        term = rng.random(n) < _sigmoid(-6.55 + 0.5 * (h - 8.0) + 1.5 * adv)
        A[:, t], M[:, t], ADV[:, t] = a, m, adv
        event = np.where(term & (event > T), t, event)
        eng = np.clip(0.85 * eng + 0.12 * m + 0.04 * out + rng.normal(0, 0.04, n), 0, 1)
        h = h + 0.02 * (8.6 - h) - 0.05 * m - 0.02 * out + rng.normal(0, 0.06, n)
    L = np.minimum(censor, event + 1)
    censored = censor <= event
    diff = n_rows - int(L.sum())
    for i in rng.permutation(n):                             # exact row count (generator only)
        if diff == 0:
            break
        if censored[i] and diff > 0 and L[i] < WINDOW - enrol[i] and L[i] + 1 <= event[i]:
            L[i] += 1
            diff -= 1
        elif censored[i] and diff < 0 and L[i] > 2:
            L[i] -= 1
            diff += 1
    terminal = (event + 1 == L) & (event < T)
    im, it = np.nonzero(np.arange(T)[None, :] < L[:, None])
    a = A[im, it]
    df = pd.DataFrame({
        "member_id": np.char.add("D", np.char.zfill((im + 10000).astype(str), 6)),
        "week": enrol[im] + it,
        "clinic": np.char.zfill((clinic[im] + 1).astype(str), 3),
        "hba1c": HO[im, it], "hba1c_no_lab": NOLAB[im, it],
        "engagement": np.round(E[im, it], 4),
        "modality": np.array(MODALITY)[a // 5], "provider": np.array(PROVIDER)[a % 5],
        "contact": M[im, it],
        "r_hba1c": -np.round(np.maximum(HO[im, it] - 7.0, 0.0), 2), "r_adverse": -ADV[im, it],
        "event": ((it == L[im] - 1) & terminal[im]).astype(np.int64),
        "race": race[im], "sex": sex[im]})
    p_out = _sigmoid(-1.2 + 0.6 * (df["hba1c"].to_numpy() - 8.0))   # target: more outreach
    P = np.zeros((len(df), 25))                                     # when HbA1c is high
    P[:, 0] = 1 - p_out
    P[:, 6], P[:, 21], P[:, 7] = 0.5 * p_out, 0.3 * p_out, 0.2 * p_out
    pol = pd.DataFrame(P, columns=[f"p_{k}" for k in range(25)])
    pol.insert(0, "week", df["week"].to_numpy())
    pol.insert(0, "member_id", df["member_id"].to_numpy())
    return df, pol


def write_panel(folder: Path, n: int, n_rows: int) -> None:
    """``panel.parquet``, ``manifest.toml``, ``target.parquet`` and ``no_outreach.parquet``."""
    df, pol = diabetes_panel(n, n_rows)
    df.to_parquet(folder / "panel.parquet", index=False)
    pol.to_parquet(folder / "target.parquet", index=False)
    none = pol.copy()
    none.iloc[:, 2:] = 0.0
    none["p_0"] = 1.0
    none.to_parquet(folder / "no_outreach.parquet", index=False)
    (folder / "manifest.toml").write_text(MANIFEST)


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Time ``mediate`` on the panel; returns ``{name: {value, unit, peer, peer_value, ratio}}``.

    ``quick``: a smoke run on 1,000 members (its numbers mean nothing).
    """
    import warnings

    from equicare.cli._causal import mediate_path

    n, n_rows = (1000, 25_000) if quick else (8000, 200_957)
    print("peer: none (the reference implementation of Ge et al. 2023 is research code, "
          "not an importable package)")
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=1), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the panel's support warnings are expected
        d = Path(tmp)
        write_panel(d, n, n_rows)
        for name, kw in (("binary_action", {"control": 0,
                                            "action": "modality=phone|text|video|in_person"}),
                         ("flat_actions", {"control": d / "no_outreach.parquet"})):
            t0 = time.perf_counter()
            mediate_path(d / "panel.parquet", d / "manifest.toml", d / "target.parquet",
                         random_state=42, **kw)
            out[f"mediate_diabetes_8000_{name}"] = time.perf_counter() - t0
    return {k: {"value": v, "unit": "s", "peer": None, "peer_value": None, "ratio": None}
            for k, v in out.items()}


if __name__ == "__main__":
    import sys

    for name, entry in run(quick="--quick" in sys.argv).items():
        print(f"{name}: {entry['value']:.2f} {entry['unit']}")
