"""CLI helpers of the care-management simulator (the lead wires ``register`` into ``cli.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from equicare.exceptions import InvalidParameterError

__all__ = ["synth_care", "care_sim"]


def synth_care(out_dir: str | Path, *, n_members: int = 1000, n_weeks: int = 52,
               seed: int = 0, history_dependence: bool | None = None, churn: bool | None = None,
               config: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Generate a care-management panel and write ``panel.parquet`` + ``manifest.toml``.

    Parameters
    ----------
    out_dir : str or Path
        Output folder.
    n_members, n_weeks, seed : int
        Cohort size, calendar weeks and random seed.
    history_dependence, churn : bool, optional
        Override the matching :class:`CareConfig` fields when given (``None``: the value of
        ``config``, else the :class:`CareConfig` default).
    config : str or Path, optional
        JSON file with :class:`CareConfig` fields (``CareConfig.to_dict()`` output); the two flags
        above override it.
    overwrite : bool
        Replace existing files.

    Returns
    -------
    dict
        ``{"out_dir", "panel", "manifest", "summary"}`` (summary: :meth:`CarePanel.summary`).

    Raises
    ------
    ValueError
        Bad sizes, an unreadable config file or unknown config keys.
    FileExistsError
        Output files exist and ``overwrite`` is False.
    """
    sim = care_sim(history_dependence=history_dependence, churn=churn, config=config)
    panel = sim.generate(n_members=n_members, n_weeks=n_weeks, random_state=seed)
    d = panel.write(out_dir, overwrite=overwrite)
    return {"out_dir": str(d), "panel": str(d / "panel.parquet"),
            "manifest": str(d / "manifest.toml"), "summary": panel.summary()}


def care_sim(*, history_dependence: bool | None = None, churn: bool | None = None,
             config: str | Path | None = None) -> Any:
    """The care simulator of a JSON config file (``CareConfig`` fields) and option overrides.

    ``history_dependence`` and ``churn`` override the file's values only when given.
    """
    from equicare.sim.care import CareConfig, CareManagementSim

    fields: dict[str, Any] = {}
    if config is not None:
        p = Path(config)
        try:
            fields = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidParameterError(f"Cannot read the config file {p}: {exc}.") from exc
        if not isinstance(fields, dict):
            raise InvalidParameterError(
                f"The config file {p} must hold a JSON object of CareConfig fields.")
    if history_dependence is not None:
        fields["history_dependence"] = history_dependence
    if churn is not None:
        fields["churn"] = churn
    return CareManagementSim(CareConfig.from_dict(fields))
