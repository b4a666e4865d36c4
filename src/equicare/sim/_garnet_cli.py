"""Writer of the Garnet test bed: panel, manifest, target-policy files and the exact truth."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import Manifest
from equicare.privacy import tail_range
from equicare.sim.garnet import (
    GarnetConfig,
    GarnetMDP,
    GarnetPanel,
    garnet_panel,
    garnet_target_policies,
    state_labels,
)
from equicare.utils import atomic_write, atomic_write_text

__all__ = ["synth_garnet", "garnet_manifest", "garnet_frame", "garnet_truth", "PANEL_FILE",
           "MANIFEST_FILE", "TRUTH_FILE", "POLICY_DIR"]

PANEL_FILE = "panel.parquet"
MANIFEST_FILE = "manifest.toml"
TRUTH_FILE = "truth.json"
POLICY_DIR = "policies"


def garnet_manifest(config: GarnetConfig, sites: int = 0) -> Manifest:
    """The Contract-1 manifest of a Garnet panel (``sites``: a second categorical ``site``)."""
    return Manifest.from_dict({
        "dataset": {"episode": "episode", "time": "t", "states": ["severity"],
                    "categorical_states": ["state", "site"] if sites else ["state"],
                    "groups": ["group"],
                    "terminal": "terminal", "behavior_prob": "propensity",
                    "gamma": float(config.gamma)},
        "actions": {"action": {"levels": int(config.n_actions)}},
        "reward": {"column": "reward"},
    }, source="garnet manifest")


def garnet_frame(mdp: GarnetMDP, panel: GarnetPanel) -> pd.DataFrame:
    """The panel as a table: one row per step.

    Columns: episode, t, state (categorical), severity, action, reward, terminal, propensity,
    group.
    """
    labels = state_labels(mdp.n_states)
    groups = [f"g{g}" for g in range(mdp.config.n_groups)]
    return pd.DataFrame({
        "episode": panel.episode,
        "t": panel.t,
        "state": pd.Categorical.from_codes(panel.state, categories=labels),
        "severity": panel.severity,
        "action": panel.action,
        "reward": panel.reward,
        "terminal": panel.terminal.astype(np.int8),
        "propensity": panel.propensity,
        "group": pd.Categorical.from_codes(panel.group[panel.episode], categories=groups),
    })


def _policy_frame(pi: NDArray[np.float64], panel: GarnetPanel) -> pd.DataFrame:
    """Long-form Contract-2 rows (only non-zero probabilities) of ``pi`` at the panel's rows."""
    import scipy.sparse as sp

    csr = sp.csr_matrix(pi)
    counts = np.diff(csr.indptr)[panel.state]
    row = np.repeat(np.arange(panel.state.size), counts)
    start = np.repeat(csr.indptr[panel.state], counts)
    within = np.arange(row.size) - np.repeat(np.cumsum(counts) - counts, counts)
    pos = start + within
    return pd.DataFrame({"episode": panel.episode[row], "t": panel.t[row],
                         "action": csr.indices[pos].astype(np.int64), "prob": csr.data[pos]})


def garnet_truth(mdp: GarnetMDP, panel: GarnetPanel,
                 policies: dict[str, NDArray[np.float64]]) -> dict[str, Any]:
    """Exact values of each policy (overall and per group) and their support diagnostics.

    ``value`` is the expected ``sum_{t < H} gamma^t r_t`` over the logged window (the same
    definition as the panel's returns, Contract 1); ``value_untruncated`` drops the horizon.
    ``never_logged_mass_rows``: mean over panel rows of the policy's mass on (state, action)
    pairs with no logged row; ``never_logged_mass_occupancy``: the same under the policy's own
    discounted state occupancy; ``zero_propensity_mass_rows``: mass on actions the clinicians
    never take in the state.
    """
    S, A = mdp.n_states, mdp.n_actions
    n_sa = np.bincount(panel.state * A + panel.action, minlength=S * A).reshape(S, A)
    never = n_sa == 0
    zero = mdp.behavior_policy == 0
    lengths = panel.lengths
    out: dict[str, Any] = {
        "value_definition": "E[sum_{t<H} gamma^t r_t] over the logged window (H = max_horizon)",
        "config": mdp.config.to_dict(),
        "n_episodes": panel.n_episodes,
        "n_rows": int(panel.state.size),
        "gamma": mdp.config.gamma,
        "horizon": mdp.config.max_horizon,
        "data": {
            "mean_return": float(panel.returns.mean()),
            "mean_return_se": float(panel.returns.std(ddof=1) / np.sqrt(panel.n_episodes)),
            "censored_share": float(panel.censored.mean()),
            "episode_length": {"median": float(np.median(lengths)),
                               "mean": float(lengths.mean()), **tail_range(lengths)},
            "observed_state_action_share": float((~never).mean()),
            "zero_propensity_pair_share": float(zero.mean()),
        },
        "policies": {},
    }
    for name, pi in policies.items():
        occ = mdp.occupancy(pi)
        mass_never = (pi * never).sum(axis=1)
        out["policies"][name] = {
            "value": mdp.value(pi),
            "groups": mdp.group_values(pi),
            "value_untruncated": mdp.value(pi, horizon=None),
            "deterministic": bool(np.all(pi.max(axis=1) == 1.0)),
            "never_logged_mass_rows": float(mass_never[panel.state].mean()),
            "never_logged_mass_occupancy": float(occ @ mass_never / occ.sum()),
            "zero_propensity_mass_rows": float((pi * zero).sum(axis=1)[panel.state].mean()),
            "file": f"{POLICY_DIR}/{name}.parquet",
        }
    return out


def site_column(n_episodes: int, sites: int, seed: int) -> NDArray[np.int64]:
    """A care site per episode, uniform over ``sites`` levels (seeded; ``seed + 7919``)."""
    return np.asarray(np.random.default_rng(seed + 7919).integers(0, sites, n_episodes),
                      dtype=np.int64)


def synth_garnet(out_dir: str | os.PathLike[str], *, config: GarnetConfig | None = None,
                 n_episodes: int = 5000, seed: int = 0, overwrite: bool = False,
                 sites: int = 0, provenance: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Generate a Garnet test-bed panel and write it with its manifest, policies and truth.

    Writes ``panel.parquet``, ``manifest.toml``, ``policies/<family>.parquet`` (long form
    ``episode, t, action, prob``, non-zero probabilities only) and ``truth.json``; each file
    atomically.

    Parameters
    ----------
    out_dir : str or Path
    config : GarnetConfig, optional
    n_episodes, seed : int
        Episodes; seed of the MDP and of the episodes (see :func:`garnet_panel`).
    overwrite : bool
        Replace existing files; otherwise any existing target raises before anything is written.
    sites : int
        With ``sites > 0`` a second categorical state column ``site`` (``site00``, ...): one
        level per episode, drawn uniformly, that changes nothing in the dynamics, the behaviour
        or the target policies (so ``truth.json`` holds). Real panels carry such columns; the
        tables of ``evaluate``, SPIBB and PVI should pool over it (docs/ope.md, "Cells").
    provenance : mapping, optional
        How the files were made (the command line's ``provenance`` block, docs/contracts.md),
        written into ``truth.json`` (the panel and the manifest stay the same bytes for the
        same settings: later commands fingerprint them).

    Returns
    -------
    dict
        ``{"out_dir", "panel", "manifest", "truth", "policies"}`` (paths as strings).
    """
    cfg = config or GarnetConfig()
    d = Path(out_dir)
    mdp, panel = garnet_panel(cfg, n_episodes, seed)
    policies = garnet_target_policies(mdp)
    targets = [d / PANEL_FILE, d / MANIFEST_FILE, d / TRUTH_FILE]
    targets += [d / POLICY_DIR / f"{k}.parquet" for k in policies]
    if not overwrite:
        for t in targets:
            if t.exists():
                raise FileExistsError(f"{t} exists; refusing to overwrite (pass --force).")
    d.mkdir(parents=True, exist_ok=True)
    (d / POLICY_DIR).mkdir(exist_ok=True)
    frame = garnet_frame(mdp, panel)
    if sites:
        site = site_column(panel.n_episodes, sites, seed)
        width = len(str(sites - 1))
        frame["site"] = pd.Categorical.from_codes(
            site[panel.episode], categories=[f"site{j:0{width}d}" for j in range(sites)])
    with atomic_write(d / PANEL_FILE, "wb") as fh:
        frame.to_parquet(fh, index=False)
    atomic_write_text(d / MANIFEST_FILE, garnet_manifest(cfg, sites).to_toml())
    paths = {}
    for name, pi in policies.items():
        p = d / POLICY_DIR / f"{name}.parquet"
        with atomic_write(p, "wb") as fh:
            _policy_frame(pi, panel).to_parquet(fh, index=False)
        paths[name] = str(p)
    truth = garnet_truth(mdp, panel, policies)
    truth["seed"] = int(seed)
    if sites:
        truth["site"] = {"levels": int(sites), "effect": "none (drawn per episode; the "
                         "dynamics, the behaviour and the target policies ignore it)"}
    if provenance is not None:
        truth["provenance"] = dict(provenance)
    atomic_write_text(d / TRUTH_FILE, json.dumps(truth, indent=2) + "\n")
    return {"out_dir": str(d), "panel": str(d / PANEL_FILE), "manifest": str(d / MANIFEST_FILE),
            "truth": str(d / TRUTH_FILE), "policies": paths}


def synth_garnet_cli(out_dir: str | os.PathLike[str], *, episodes: int, states: int | None,
                     actions: int | None, gamma: float | None, preset: str | None, seed: int,
                     force: bool, sites: int = 0,
                     provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``equicare synth --sim garnet``: a preset (default ``s700_a25_g1``) with overrides."""
    from dataclasses import replace

    from equicare.sim.garnet import garnet_preset

    cfg = garnet_preset(preset or "s700_a25_g1")
    over: dict[str, Any] = {}
    if states is not None:
        over["n_states"] = states
        if states < 100 and preset is None:
            over["n_successors"] = min(3, states)
        # the groups are blocks of the states: no more groups than states (--states 2)
        over["n_groups"] = min(cfg.n_groups, states)
    if actions is not None:
        over["n_actions"] = actions
    if gamma is not None:
        over["gamma"] = gamma
    cfg = replace(cfg, **over)
    return synth_garnet(out_dir, config=cfg, n_episodes=episodes, seed=seed, overwrite=force,
                        sites=sites, provenance=provenance)
