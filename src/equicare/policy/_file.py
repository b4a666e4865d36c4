"""Policies as files (Contract 2): probabilities per dataset row, keyed by episode and time."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import InvalidParameterError, PolicyError
from equicare.policy._base import check_probs

__all__ = ["FilePolicy", "write_policy_file", "write_policy_stream", "read_policy_file"]

_WIDE = re.compile(r"^p_(\d+)$")


def read_policy_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a policy file (Parquet or CSV) into a DataFrame."""
    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"Policy file not found: {p}")
    if p.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if p.suffix.lower() == ".csv":
        return pd.read_csv(p)
    raise PolicyError(f"{p}: unsupported policy file type {p.suffix!r}; expected .parquet or .csv.")


@dataclass(frozen=True)
class FilePolicy:
    """A policy given as a table of probabilities per (episode, time) row.

    Long form: columns ``episode, time, action, prob`` (every action with non-zero probability
    listed); wide form: ``episode, time, p_0 ... p_{n-1}``. The episode and time columns carry the
    dataset manifest's names.

    Parameters
    ----------
    path : str or Path
    frame : pandas.DataFrame, optional
        Use an in-memory table instead of reading ``path``.
    """

    path: str | os.PathLike[str] | None = None
    frame: pd.DataFrame | None = None
    window: int = 1
    _table: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.frame is None):
            raise InvalidParameterError("Give exactly one of path or frame.")

    @property
    def source(self) -> str:
        """File name used in messages."""
        return str(self.path) if self.path is not None else "<policy frame>"

    def _df(self) -> pd.DataFrame:
        if "df" not in self._table:
            if self.frame is not None:
                self._table["df"] = self.frame
            else:  # __post_init__ guarantees a path when there is no frame
                self._table["df"] = read_policy_file(self.path)  # type: ignore[arg-type]
        return self._table["df"]

    @property
    def form(self) -> Literal["long", "wide"]:
        """``"long"`` or ``"wide"``."""
        cols = set(self._df().columns)
        if {"action", "prob"} <= cols:
            return "long"
        if any(_WIDE.match(str(c)) for c in cols):
            return "wide"
        raise PolicyError(
            f"{self.source}: expected columns 'action' and 'prob' (long form) or "
            "'p_0' ... 'p_{n-1}' (wide form)."
        )

    @property
    def n_actions(self) -> int:
        """Number of flat actions (from the wide columns or the largest long-form action)."""
        df = self._df()
        if self.form == "wide":
            return 1 + max(
                int(_WIDE.match(str(c)).group(1))  # type: ignore[union-attr]
                for c in df.columns
                if _WIDE.match(str(c))
            )
        return int(df["action"].max()) + 1

    def _index(self, ep_col: str, t_col: str, n_a: int
               ) -> tuple[pd.Index, pd.MultiIndex, NDArray[np.float64]]:
        """Row index of the file, built once per (key columns, action count) and cached.

        Returns the file's distinct episode ids, a ``(episode code, time)`` index of its rows and
        the probabilities of those rows, shape ``(n_file_rows, n_a)``. The file may cover more
        episodes than any dataset it is asked about (e.g. one block of its panel).
        """
        key = ("index", ep_col, t_col, n_a)
        if key in self._table:
            return self._table[key]  # type: ignore[no-any-return]
        df = self._df()
        missing = [c for c in (ep_col, t_col) if c not in df.columns]
        if missing:
            raise PolicyError(
                f"{self.source}: key column(s) {missing} missing; a policy file is "
                f"keyed by the dataset's episode and time columns ({ep_col!r}, {t_col!r})."
            )
        codes, uniq = pd.factorize(df[ep_col])
        times = df[t_col].to_numpy(dtype=np.int64)
        if self.form == "wide":
            pcols = sorted(
                (c for c in df.columns if _WIDE.match(str(c))),
                key=lambda c: int(_WIDE.match(str(c)).group(1)),  # type: ignore[union-attr]
            )
            idx = [int(_WIDE.match(str(c)).group(1)) for c in pcols]  # type: ignore[union-attr]
            if max(idx) >= n_a:
                raise PolicyError(
                    f"{self.source}: column p_{max(idx)} but the dataset has only {n_a} actions."
                )
            probs_rows = np.zeros((len(df), n_a))
            probs_rows[:, idx] = df[pcols].to_numpy(dtype=np.float64)
            keys_e, keys_t = codes.astype(np.int64), times
        else:
            a = df["action"].to_numpy()
            if (a < 0).any() or (a >= n_a).any():
                bad = np.flatnonzero((a < 0) | (a >= n_a))
                raise PolicyError(
                    f"{self.source}: {bad.size} rows have an action outside "
                    f"[0, {n_a}) (first rows: {bad[:5].tolist()})."
                )
            row_codes, row_keys = pd.factorize(pd.MultiIndex.from_arrays([codes, times]))
            probs_rows = np.zeros((len(row_keys), n_a))
            np.add.at(probs_rows, (row_codes, a.astype(np.int64)),
                      df["prob"].to_numpy(np.float64))
            keys_e = row_keys.get_level_values(0).to_numpy().astype(np.int64)
            keys_t = row_keys.get_level_values(1).to_numpy().astype(np.int64)
        ok = keys_e >= 0  # rows with a missing episode id can match no dataset row
        lookup = pd.MultiIndex.from_arrays([keys_e[ok], keys_t[ok]])
        if lookup.has_duplicates:
            raise PolicyError(f"{self.source}: duplicate (episode, time) rows in the policy file.")
        out = (pd.Index(uniq), lookup, probs_rows[ok])
        self._table[key] = out
        return out

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Probabilities aligned to the dataset's rows, shape ``(n_steps, dataset.n_actions)``.

        The file may hold more episodes than ``dataset`` (any subset of the panel it was written
        for is served, e.g. the row blocks of an audit); every row of ``dataset`` must be in it.
        The file is indexed once and the index reused by later calls.

        Raises
        ------
        PolicyError
            Missing key columns, dataset rows not covered, unknown actions, probabilities that are
            negative or do not sum to 1 within 1e-6.
        """
        man = dataset.manifest
        ep_col = man.episode if man is not None else "episode"
        t_col = man.time if man is not None else "time"
        n_a = dataset.n_actions
        episodes, lookup, probs_rows = self._index(ep_col, t_col, n_a)
        # dataset row r <-> (file code of episode_index[r], times[r]); -1 = episode not in file
        ep_code = episodes.get_indexer(pd.Index(dataset.episode_ids)).astype(np.int64)
        want = pd.MultiIndex.from_arrays([ep_code[dataset.episode_index],
                                          np.asarray(dataset.times, dtype=np.int64)])
        pos = lookup.get_indexer(want)
        if (pos < 0).any():
            miss = np.flatnonzero(pos < 0)
            e0 = dataset.episode_ids[dataset.episode_index[miss[0]]]
            e0 = e0.item() if isinstance(e0, np.generic) else e0
            raise PolicyError(
                f"{self.source}: {miss.size} dataset rows have no probabilities "
                f"(first: {ep_col}={e0!r}, {t_col}={int(dataset.times[miss[0]])}); "
                "a policy file must cover every row of the dataset."
            )
        return check_probs(probs_rows[pos], dataset.n_steps, n_a, self.source)


def write_policy_file(
    dataset: TrajectoryDataset,
    probs: NDArray[np.float64],
    path: str | os.PathLike[str],
    *,
    form: Literal["wide", "long"] = "wide",
    overwrite: bool = False,
) -> Path:
    """Write probabilities for every dataset row as a Contract-2 policy file (atomically).

    Parameters
    ----------
    dataset : TrajectoryDataset
    probs : ndarray of shape (n_steps, n_actions)
    path : str or Path
        ``.parquet`` or ``.csv``.
    form : {"wide", "long"}
    overwrite : bool
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; refusing to overwrite.")
    df = _policy_frame(dataset, probs, form, "write_policy_file")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    if p.suffix.lower() == ".csv":
        df.to_csv(tmp, index=False, float_format="%.17g")
    else:
        df.to_parquet(tmp, index=False)
    os.replace(tmp, p)
    return p


def _policy_frame(dataset: TrajectoryDataset, probs: NDArray[np.float64], form: str, owner: str
                  ) -> pd.DataFrame:
    """The Contract-2 rows of one dataset: keys plus wide ``p_i`` or long ``action, prob``."""
    probs = check_probs(probs, dataset.n_steps, dataset.n_actions, owner)
    man = dataset.manifest
    ep_col = man.episode if man is not None else "episode"
    t_col = man.time if man is not None else "time"
    eps = dataset.episode_rows(dataset.episode_ids)
    if form == "wide":
        df = pd.DataFrame({ep_col: eps, t_col: dataset.times})
        wide = pd.DataFrame(probs, columns=[f"p_{i}" for i in range(probs.shape[1])])
        return pd.concat([df, wide], axis=1)
    r, a = np.nonzero(probs > 0)
    return pd.DataFrame({ep_col: eps[r], t_col: dataset.times[r], "action": a,
                         "prob": probs[r, a]})


def write_policy_stream(
    parts: Iterable[tuple[TrajectoryDataset, NDArray[np.float64]]],
    path: str | os.PathLike[str],
    *,
    form: Literal["wide", "long"] = "wide",
    overwrite: bool = False,
) -> Path:
    """Write a policy file chunk by chunk: memory holds one chunk, never the whole file.

    Parameters
    ----------
    parts : iterable of (TrajectoryDataset, ndarray of shape (n_steps, n_actions))
        Each chunk of the panel with the policy's probabilities for its rows.
    path : str or Path
        ``.parquet`` (one row group per chunk) or ``.csv``; written to a temporary sibling and
        moved into place when complete.
    form : {"wide", "long"}
    overwrite : bool

    Returns
    -------
    Path
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; refusing to overwrite.")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    csv = p.suffix.lower() == ".csv"
    writer: Any = None
    try:
        for k, (ds, probs) in enumerate(parts):
            df = _policy_frame(ds, probs, form, "write_policy_stream")
            if csv:
                df.to_csv(tmp, index=False, float_format="%.17g", mode="w" if k == 0 else "a",
                          header=k == 0)
                continue
            table = pa.Table.from_pandas(df, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
        if writer is not None:
            writer.close()
            writer = None
        if not tmp.exists():
            raise ValueError("write_policy_stream received no chunks; nothing was written.")
        os.replace(tmp, p)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return p
