"""Care-management panels larger than memory: written as a folder of Parquet files, part by part."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE, atomic_write_text

__all__ = ["write_care_parts"]

#: Folder of the Parquet parts inside the output folder.
PARTS_DIR = "panel"


def write_care_parts(
    sim: Any,
    out_dir: str | os.PathLike[str],
    *,
    n_members: int,
    n_weeks: int = 52,
    members_per_part: int = 50_000,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Simulate a cohort part by part and write ``panel/part-NNNNN.parquet`` + ``manifest.toml``.

    Part ``k`` holds members ``k * members_per_part`` onwards, simulated with the ``k``-th child
    of ``numpy.random.SeedSequence(seed)``, so memory is bounded by one part and the same
    (seed, members_per_part) always gives the same panel. Members are independent in the
    simulator, so the panel has the same distribution as one :meth:`CareManagementSim.generate`
    call (not the same draws). Each part is sorted by member and week: the folder is a clustered
    panel that :func:`equicare.data.iter_chunks` streams and :func:`equicare.data.plan_shards`
    splits without sorting.

    Parameters
    ----------
    sim : CareManagementSim
    out_dir : path-like
        Output folder; the parts are written to a temporary sibling and moved in at the end.
    n_members, n_weeks : int
    members_per_part : int
    seed : int
    overwrite : bool
        Replace an existing ``panel/`` folder and manifest.
    progress : callable, optional
        ``progress(parts_done, parts_total)``.

    Returns
    -------
    dict
        ``{"out_dir", "panel", "manifest", "n_rows", "n_parts"}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from equicare.sim._care_engine import BehaviorActor, simulate
    from equicare.sim._care_panel import MANIFEST_FILE, panel_frame

    for name, v, low in (("n_members", n_members, 1), ("n_weeks", n_weeks, 1),
                         ("members_per_part", members_per_part, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
            raise InvalidParameterError(PARAM_MESSAGE.format(name=name, owner="write_care_parts",
                                                             expected=f"an int >= {low}", got=v))
    d = Path(out_dir)
    parts_dir, man_path = d / PARTS_DIR, d / MANIFEST_FILE
    if not overwrite:
        for t in (parts_dir, man_path):
            if t.exists():
                raise FileExistsError(f"{t} exists; refusing to overwrite (pass overwrite=True).")
    d.mkdir(parents=True, exist_ok=True)
    n_parts = -(-int(n_members) // int(members_per_part))
    children = np.random.SeedSequence(int(seed)).spawn(n_parts)
    model, manifest = sim._model, sim._manifest
    n_rows = 0
    tmp = Path(tempfile.mkdtemp(dir=d, prefix=".parts-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the panel is for other analysts too
        for k in range(n_parts):
            m = min(int(members_per_part), int(n_members) - k * int(members_per_part))
            rng = np.random.default_rng(children[k])
            cohort = model.draw_cohort(m, int(n_weeks), rng)
            out = simulate(model, cohort, int(n_weeks), rng, BehaviorActor(model), manifest,
                           record=True, gamma=sim.config.gamma)
            frame = panel_frame(out)
            frame["member_id"] = frame["member_id"].to_numpy() + k * int(members_per_part)
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                           tmp / f"part-{k:05d}.parquet", row_group_size=65_536)
            n_rows += len(frame)
            del frame, out, cohort
            if progress is not None:
                progress(k + 1, n_parts)
        if parts_dir.exists():
            shutil.rmtree(parts_dir)
        os.replace(tmp, parts_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(man_path, manifest.to_toml())
    return {"out_dir": str(d), "panel": str(parts_dir), "manifest": str(man_path),
            "n_rows": n_rows, "n_parts": n_parts}
