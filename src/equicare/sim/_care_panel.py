"""CarePanel (a generated member-week table + its manifest) and the care manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from equicare.data import Manifest, TrajectoryDataset, from_frame
from equicare.exceptions import InvalidParameterError
from equicare.privacy import tail_range
from equicare.sim._care_config import (
    CARE_ACTION_LEVELS,
    CARE_GROUP_LEVELS,
    CARE_REWARD_COLUMNS,
    CARE_STATE_NAMES,
    CareConfig,
)
from equicare.sim._care_engine import SimOutput
from equicare.sim._care_model import N_PGU
from equicare.utils import atomic_write, atomic_write_text

__all__ = ["CarePanel", "care_manifest", "panel_frame", "PANEL_FILE", "MANIFEST_FILE"]

PANEL_FILE = "panel.parquet"
MANIFEST_FILE = "manifest.toml"


def care_manifest(config: CareConfig) -> Manifest:
    """Build the manifest of care-management panels (Contract 1)."""
    raw = {
        "dataset": {
            "episode": "member_id",
            "time": "week",
            "states": list(CARE_STATE_NAMES),
            "mediators": ["engaged"],
            "groups": list(CARE_GROUP_LEVELS),
            # a true end only (disenrolment); the end of the follow-up window is censoring
            "terminal": "disenrolled",
            "behavior_prob": "propensity",
            "need": "high_need",
            "gamma": float(config.gamma),
        },
        "actions": {k: {"levels": list(v)} for k, v in CARE_ACTION_LEVELS.items()},
        "reward": {name: {"column": col, "weight": w} for (name, col), w in
                   zip(CARE_REWARD_COLUMNS.items(), config.reward_weights, strict=True)},
    }
    return Manifest.from_dict(raw, source="<CareManagementSim>")


def _categorical(codes: np.ndarray[Any, Any], levels: tuple[str, ...]) -> pd.Categorical:
    return pd.Categorical.from_codes(codes.astype(np.int8), categories=list(levels))


def panel_frame(out: SimOutput) -> pd.DataFrame:
    """Member-week table of a recorded simulation (one row per member-week, member-major)."""
    rows = out.rows
    if rows is None:
        raise InvalidParameterError("The simulation was run without recording rows.")
    c = out.cohort
    member = rows["member"]
    week = rows["week"]
    n = member.shape[0]
    last_row = np.zeros(n, dtype=bool)
    if n:
        last_row[:-1] = member[1:] != member[:-1]
        last_row[-1] = True
    a = rows["action"]
    data: dict[str, Any] = {
        "member_id": member,
        "week": week,
        "tenure": week - c.entry[member],
    }
    st = rows["states"]
    for j, name in enumerate(CARE_STATE_NAMES):
        data[name] = st[:, j]
    data["race_ethnicity"] = _categorical(c.race[member], CARE_GROUP_LEVELS["race_ethnicity"])
    data["sex"] = _categorical(c.sex[member], CARE_GROUP_LEVELS["sex"])
    data["age_band"] = _categorical(c.age[member], CARE_GROUP_LEVELS["age_band"])
    data["high_need"] = c.high_need[member]
    sizes = [len(v) for v in CARE_ACTION_LEVELS.values()]
    radix = [N_PGU, sizes[2] * sizes[3], sizes[3], 1]
    for (name, levels), size, rad in zip(CARE_ACTION_LEVELS.items(), sizes, radix, strict=True):
        data[name] = _categorical((a // rad) % size, levels)
    data["engaged"] = rows["engaged"]
    r = rows["rewards"]
    for j, col in enumerate(CARE_REWARD_COLUMNS.values()):
        data[col] = r[:, j].astype(np.float64)
    data["propensity"] = rows["propensity"]
    # terminal column (Contract 1): 1 on the last row of a member who disenrolled (the episode
    # truly ends); a member still enrolled when the calendar window closes is censored (0)
    data["disenrolled"] = (last_row & c.disenrolled[member]).astype(np.int8)
    return pd.DataFrame(data)


@dataclass(frozen=True)
class CarePanel:
    """A simulated member-week panel and its manifest.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per member-week (columns: docs/care_simulator.md).
    manifest : Manifest
    config : CareConfig
        Configuration of the simulator that made it.
    n_weeks : int
        Length of the calendar window.
    """

    frame: pd.DataFrame
    manifest: Manifest
    config: CareConfig
    n_weeks: int

    def dataset(self) -> TrajectoryDataset:
        """Return the panel as a validated :class:`~equicare.data.TrajectoryDataset`."""
        return from_frame(self.frame, self.manifest, source="<CarePanel>", emit_warnings=False)

    def write(self, out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write ``panel.parquet`` and ``manifest.toml`` into ``out_dir`` (each atomically).

        Parameters
        ----------
        out_dir : str or Path
            Folder (created if missing).
        overwrite : bool
            Replace existing files; otherwise an existing file raises ``FileExistsError`` before
            anything is written.

        Returns
        -------
        Path
            The folder.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        d = Path(out_dir)
        targets = [d / PANEL_FILE, d / MANIFEST_FILE]
        if not overwrite:
            for t in targets:
                if t.exists():
                    raise FileExistsError(
                        f"{t} exists; refusing to overwrite (pass overwrite=True).")
        d.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.frame, preserve_index=False)
        with atomic_write(targets[0], "wb") as fh:
            pq.write_table(table, fh)
        atomic_write_text(targets[1], self.manifest.to_toml())
        return d

    def summary(self) -> dict[str, Any]:
        """Statistics of the panel (sparsity, contact, support, home-visit rates by group).

        Home-visit rates are shares of member-weeks; ``home_visit_gap_pp`` is the largest minus the
        smallest race/ethnicity rate after direct standardisation over ``high_need`` (both strata
        weighted by their share of all member-weeks).
        """
        f = self.frame
        n_rows = len(f)
        mod = f["modality"].cat.codes.to_numpy()
        contact = mod > 0
        home = f["modality"].to_numpy() == "home_visit"
        race = f["race_ethnicity"].to_numpy()
        need = f["high_need"].to_numpy()
        space = self.manifest.action_space
        codes = np.stack([f[k].cat.codes.to_numpy().astype(np.int64)
                          for k in CARE_ACTION_LEVELS], axis=1)
        flat = space.to_flat(codes)
        lengths = f.groupby("member_id", sort=False).size().to_numpy()
        w_need = np.array([np.mean(need == 0), np.mean(need == 1)])
        raw: dict[str, float] = {}
        std: dict[str, float] = {}
        for lv in CARE_GROUP_LEVELS["race_ethnicity"]:
            g = race == lv
            raw[lv] = _pct(home[g])
            std[lv] = float(sum(w_need[k] * _pct(home[g & (need == k)]) for k in (0, 1)
                                if w_need[k] > 0))
        return {
            "n_members": int(f["member_id"].nunique()),
            "n_rows": int(n_rows),
            "episode_length": {"mean": float(lengths.mean()), **tail_range(lengths)},
            "disenrolled_pct": float(100 * f["disenrolled"].sum() / lengths.size),
            "late_entry_pct": float(100 * np.mean(f.loc[f["tenure"] == 0, "week"] > 0)),
            "nonzero_pct": {col: float(100 * np.mean(f[col].to_numpy() != 0))
                            for col in CARE_REWARD_COLUMNS.values()},
            "engaged_pct": float(100 * f["engaged"].mean()),
            "contact_pct": float(100 * contact.mean()),
            "home_visit_pct": float(100 * home.mean()),
            "observed_combinations": int((space.counts(flat) > 0).sum()),
            "high_need_pct": float(100 * need.mean()),
            "home_visit_pct_by_race": raw,
            "home_visit_pct_by_race_need_standardised": std,
            "home_visit_gap_pp": float(np.nanmax(list(std.values()))
                                       - np.nanmin(list(std.values()))),
            "mean_return": float(np.mean(_returns(f, self.manifest))),
        }


def _pct(x: np.ndarray[Any, Any]) -> float:
    """Percentage of True in ``x`` (NaN when empty)."""
    return float(100.0 * x.mean()) if x.size else float("nan")


def _returns(f: pd.DataFrame, man: Manifest) -> np.ndarray[Any, Any]:
    """Discounted shaped return of each member (rows are member-major, week-minor)."""
    r = sum(rc.weight * f[rc.column].to_numpy(dtype=np.float64) for rc in man.reward)
    step = f["tenure"].to_numpy()
    v = np.asarray(r) * man.gamma ** step.astype(np.float64)
    member = f["member_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, member[1:] != member[:-1]])
    return np.add.reduceat(v, starts)
