"""A policy trained on the panel it is evaluated on: evaluate, audit and explain say so
(cli/_utils.in_sample_warnings, equicare._provenance.trained_on)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

# ------------------------------------------------------------- a policy trained on the panel
CAMPAIGN_MANIFEST = """[dataset]
episode = "member"
time = "wave"
states = ["risk", "prior"]
groups = ["sex"]
terminal = "last"
behavior_prob = "prop"
gamma = 1.0

[actions]
channel = { levels = 4 }

[reward]
column = "enrolled"
"""


def _campaign(path, n: int, seed: int) -> None:
    """A one-step outreach campaign: one row per member, epsilon-greedy logging, binary reward."""
    rng = np.random.default_rng(seed)
    risk, prior = rng.normal(size=n), (rng.random(n) < 0.3).astype(float)
    greedy = np.where(risk > 0, 1, 0)
    pb = np.full((n, 4), 0.05)
    pb[np.arange(n), greedy] = 0.85
    a = (rng.random(n)[:, None] > pb.cumsum(1)).sum(1).clip(0, 3)
    p = 1 / (1 + np.exp(-(-2.5 + 0.5 * risk + 0.6 * prior + 0.4 * (a == 2))))
    pd.DataFrame({"member": np.arange(n), "wave": 0, "risk": risk, "prior": prior,
                  "sex": np.where(rng.random(n) < 0.5, "f", "m"), "last": 1,
                  "prop": pb[np.arange(n), a], "channel": a,
                  "enrolled": (rng.random(n) < p).astype(float)}).to_csv(path, index=False)


def test_a_policy_trained_on_the_evaluated_panel_is_flagged_as_in_sample(tmp_path, monkeypatch):
    """On 60,000 members AWR's in-sample IS was 0.132 against a true 0.116: evaluate, audit
    and explain (stderr and the card's caveats) say so."""
    from equicare.cli._utils import IN_SAMPLE_POLICY

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.toml").write_text(CAMPAIGN_MANIFEST)
    _campaign(tmp_path / "train.csv", 300, seed=1)
    _campaign(tmp_path / "new.csv", 300, seed=2)
    run = CliRunner().invoke
    from equicare.cli import app

    res = run(app, ["train", "train.csv", "-m", "m.toml", "--algo", "bc", "--steps", "5",
                    "--seed", "0", "--out", "bc", "--no-progress"])
    assert res.exit_code == 0, res.output
    for panel in ("train", "new"):
        res = run(app, ["predict", "bc", f"{panel}.csv", "-m", "m.toml", "--out",
                        f"p_{panel}.parquet", "--no-progress"])
        assert res.exit_code == 0, res.output
    flag = IN_SAMPLE_POLICY.split("{model}")[1].split("{data}")[0]  # " was trained on this panel ("
    cases = [(["evaluate", "train.csv", "--policy", "p_train.parquet"], True),
             (["evaluate", "train.csv", "--policy", "bc"], True),
             (["audit", "train.csv", "--policy", "bc=p_train.parquet", "--action", "channel=2"],
              True),
             (["evaluate", "new.csv", "--policy", "p_new.parquet"], False),
             (["evaluate", "new.csv", "--policy", "bc"], False)]
    for args, flagged in cases:
        res = run(app, [*args, "-m", "m.toml", "--bootstrap", "0", "--estimators", "wis",
                        "--no-progress"])
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())
        assert (flag in text) is flagged, (args, text[:400])
        if flagged:  # named as typed; the model folder as typed or as predict recorded it
            name = "bc" if args[0] == "audit" else args[3]
            model = "bc" if args[3] == "bc" else (tmp_path / "bc").absolute()
            assert IN_SAMPLE_POLICY.format(name=name, model=model, data="train.csv") in text
    for panel, flagged in (("train", True), ("new", False)):  # explain: on its card too
        res = run(app, ["explain", "bc", f"{panel}.csv", "-m", "m.toml", "--out", f"card_{panel}",
                        "--bootstrap", "0", "--depth", "1", "--no-progress"])
        assert res.exit_code == 0, res.output
        assert (flag in " ".join(res.output.split())) is flagged
        caveats = json.loads((tmp_path / f"card_{panel}" / "policy_card.json").read_text())[
            "caveats"]
        assert any(flag in c for c in caveats) is flagged
