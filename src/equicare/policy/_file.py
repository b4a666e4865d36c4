"""Policies as files (Contract 2): probabilities per dataset row, keyed by episode and time."""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import InvalidParameterError, PolicyError
from equicare.policy._base import PROB_TOL, check_probs
from equicare.utils import row_blocks

__all__ = ["FilePolicy", "write_policy_file", "write_policy_stream", "read_policy_file",
           "FOLLOWS_PRACTICE"]

#: Column marking the rows a policy leaves to current practice (``predict`` writes it for
#: exception rules; 1 on those rows). A file with it is valued as deployed, like the rules.
FOLLOWS_PRACTICE = "follows_practice"
MSG_FOLLOWS = "0 or 1 (1: the row is left to current practice)"

_WIDE = re.compile(r"^p_(.+)$")
_ROWS = "0-based data rows of the policy file"
#: A long-form file's dense index has one column per action; for the "small enough to read
#: whole" test its rows count as this many cells each.
_LONG_WIDTH = 256
#: Rows per batch when a Parquet row group, or a CSV file, is read for the rows of some episodes.
_BATCH_ROWS = 65_536
#: A CSV file has no row count without a pass: for the "small enough to read whole" test its
#: size counts as one cell per this many bytes.
_CSV_CELL_BYTES = 8


def read_policy_file(path: str | os.PathLike[str], labels: Sequence[str] = ()) -> pd.DataFrame:
    """Read a policy file (Parquet or CSV) into a DataFrame.

    Parameters
    ----------
    path : str or Path
        ``.parquet``/``.pq`` or ``.csv``.
    labels : sequence of str, optional
        Columns of a CSV file holding labels (the episode id): read as text, then
        :func:`~equicare.data._labels.text_labels`, as the panel reader reads them (Contract 1,
        "Labels are read as written": ``"000123"`` stays ``"000123"``, ``"101"`` is ``101``).
        Parquet files keep their column types.
    """
    p = _checked_path(path)
    if p.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(p)
    return _csv_labels(pd.read_csv(p, dtype=_text_dtypes(p, labels)), labels)


def _text_dtypes(p: Path, labels: Sequence[str]) -> dict[str, type[str]]:
    """``read_csv``'s ``dtype``: the label columns the file has, as text."""
    if not labels:
        return {}
    header = [str(c) for c in pd.read_csv(p, nrows=0).columns]
    return {c: str for c in labels if c in header}


def _csv_labels(df: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """The label columns of a CSV frame read as text, as written (:func:`text_labels`)."""
    from equicare.data._labels import text_labels

    for c in labels:
        if c in df.columns:
            df[c] = text_labels(df[c])
    return df


#: Policy files already checked (:func:`_check_csv_text`, :func:`_check_parquet`), keyed by
#: path, mtime and size.
_CSV_CHECKED: set[tuple[str, int, int]] = set()


def _check_csv_text(p: Path) -> None:
    """Refuse a CSV policy file that is empty, not UTF-8 or separated by another character.

    The checks (and messages) of the panel reader, :func:`equicare.data.read_table`: pandas
    raised an ``EmptyDataError`` or ``UnicodeDecodeError`` (internal errors), and a
    semicolon-separated file was said to miss its key columns.
    """
    import csv

    from equicare.data._io import check_csv_header, check_utf8

    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key in _CSV_CHECKED:
        return
    check_utf8(p)
    with p.open(newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    if not header:
        raise PolicyError(f"{p}: the policy file is empty; expected a header with the episode "
                          "and time columns and p_0 ... p_(n-1) (or action, prob).")
    check_csv_header(p, header)
    _CSV_CHECKED.add(key)


def _checked_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"Policy file not found: {p}")
    if p.suffix.lower() not in (".parquet", ".pq", ".csv"):
        raise PolicyError(
            f"{p}: unsupported policy file type {p.suffix!r}; expected .parquet or .csv.")
    if p.suffix.lower() == ".csv":
        _check_csv_text(p)
    else:
        _check_parquet(p)
    return p


def _check_parquet(p: Path) -> None:
    """Refuse a ``.parquet`` policy file that Arrow cannot open (an ArrowInvalid was a bug)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key in _CSV_CHECKED:
        return
    try:
        pq.ParquetFile(p).close()
    except (pa.ArrowInvalid, OSError) as exc:
        raise PolicyError(f"{p}: cannot read it as Parquet ({' '.join(str(exc).split())}).") \
            from None
    _CSV_CHECKED.add(key)


def _spans(idx: NDArray[np.int64]) -> str:
    """``p_0..p_9, p_12`` for sorted flat indices (at most four runs shown)."""
    if idx.size == 0:
        return "none"
    cut = np.flatnonzero(np.diff(idx) != 1) + 1
    starts, stops = idx[np.r_[0, cut]], idx[np.r_[cut - 1, idx.size - 1]]
    runs = [f"p_{a}" if a == b else f"p_{a}..p_{b}"
            for a, b in zip(starts[:4].tolist(), stops[:4].tolist(), strict=True)]
    return ", ".join(runs) + (", ..." if starts.size > 4 else "")


@dataclass(frozen=True)
class _Layout:
    """Where a wide file keeps each flat action: column ``cols[k]`` holds action ``idx[k]``."""

    form: Literal["long", "wide"]
    cols: tuple[str, ...]
    idx: NDArray[np.int64]


@dataclass(frozen=True)
class _Indexed:
    """Rows of (part of) a policy file indexed by their (episode, time) key.

    Attributes
    ----------
    episodes : pandas.Index
        Distinct episode ids of the rows read.
    lookup : pandas.MultiIndex
        ``(episode code, time)`` of each key, length ``n_keys``.
    probs : ndarray of shape (n_keys, n_actions)
    first : ndarray of shape (n_keys,)
        File row (0-based data row) of each key's first row.
    key_of_row : ndarray of shape (n_read,)
        Key of each row read (-1 when its episode id is missing).
    rows : ndarray of shape (n_read,)
        File row of each row read.
    prob : ndarray of shape (n_read,) or None
        The long form's ``prob`` column (None for the wide form).
    names : tuple of str
        The column holding each flat action (``"prob"`` in the long form).
    follows : ndarray of shape (n_keys,), bool, or None
        The :data:`FOLLOWS_PRACTICE` column of each key (None when the file has none).
    """

    episodes: pd.Index
    lookup: pd.MultiIndex
    probs: NDArray[np.float64]
    first: NDArray[np.int64]
    key_of_row: NDArray[np.int64]
    rows: NDArray[np.int64]
    prob: NDArray[np.float64] | None
    names: tuple[str, ...]
    follows: NDArray[np.bool_] | None = None


@dataclass(frozen=True)
class FilePolicy:
    """A policy given as a table of probabilities per (episode, time) row.

    Long form: columns ``episode, time, action, prob`` (every action with non-zero probability
    listed; ``action`` is the flat index or the manifest's action label such as
    ``"phone/rn/chronic/routine"``); wide form: ``episode, time, p_0 ... p_{n-1}`` (or
    ``p_<label>``). The episode and time columns carry the dataset manifest's names.

    A Parquet file larger than ``ROW_BLOCK_ELEMENTS`` cells, or a CSV file larger than
    ``8 * ROW_BLOCK_ELEMENTS`` bytes, is never read whole: each call of :meth:`action_probs`
    keeps only the rows of the dataset's episodes, so memory follows the dataset asked about,
    e.g. one chunk of a streamed panel. A Parquet file skips the row groups whose episode
    statistics cannot hold them; a CSV file is read in batches of ``_BATCH_ROWS`` rows, the
    whole file once per call (Parquet is faster for many chunks). Smaller files and frames are
    read once and indexed. The cache is per process: a pickled policy carries its path, not its
    rows.

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

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the per-process cache (rows read, open Parquet file)."""
        return {**self.__dict__, "_table": {}}

    @property
    def source(self) -> str:
        """File name used in messages."""
        return str(self.path) if self.path is not None else "<policy frame>"

    def _cached(self, key: Any, make: Any) -> Any:
        if key not in self._table:
            self._table[key] = make()
        return self._table[key]

    def _pfile(self) -> Any:
        """The open ``pyarrow.parquet.ParquetFile`` (Parquet paths only), once per process."""
        import pyarrow.parquet as pq

        return self._cached("pfile", lambda: pq.ParquetFile(self.path))

    def _is_parquet(self) -> bool:
        return self.frame is None and _checked_path(self.path).suffix.lower() in (  # type: ignore[arg-type]
            ".parquet", ".pq")

    def _columns(self) -> list[str]:
        """Column names of the file (no rows read)."""
        def make() -> list[str]:
            if self.frame is not None:
                return [str(c) for c in self.frame.columns]
            if self._is_parquet():
                return [str(c) for c in self._pfile().schema_arrow.names]
            return [str(c) for c in pd.read_csv(_checked_path(self.path), nrows=0).columns]  # type: ignore[arg-type]
        return self._cached("columns", make)  # type: ignore[no-any-return]

    def _whole(self) -> bool:
        """Whether the file is read whole (frames, small CSV files, Parquet files of few cells)."""
        if self.frame is not None:
            return True
        from equicare import utils

        if not self._is_parquet():
            size = os.path.getsize(_checked_path(self.path))  # type: ignore[arg-type]
            return size <= _CSV_CELL_BYTES * utils.ROW_BLOCK_ELEMENTS
        width = (sum(1 for c in self._columns() if _WIDE.match(c)) if self.form == "wide"
                 else _LONG_WIDTH)
        return int(self._pfile().metadata.num_rows) * max(1, width) <= utils.ROW_BLOCK_ELEMENTS

    def _df(self, labels: tuple[str, ...] = ()) -> pd.DataFrame:
        """The whole table (frames, CSV files and small Parquet files).

        ``labels``: the columns a CSV file holds labels in (the episode id), read as written.
        """
        def make() -> pd.DataFrame:
            if self.frame is not None:
                return self.frame
            return read_policy_file(self.path, labels)  # type: ignore[arg-type]
        return self._cached(("df", labels), make)

    @property
    def form(self) -> Literal["long", "wide"]:
        """``"long"`` or ``"wide"``."""
        cols = set(self._columns())
        if {"action", "prob"} <= cols:
            return "long"
        if any(_WIDE.match(c) for c in cols):
            return "wide"
        raise PolicyError(
            f"{self.source}: expected columns 'action' and 'prob' (long form) or "
            "'p_0' ... 'p_{n-1}' (wide form)."
        )

    @property
    def n_actions(self) -> int:
        """Number of flat actions (from the wide columns or the largest long-form action)."""
        if self.form == "wide":
            suffixes = [c[2:] for c in self._columns() if _WIDE.match(c)]
            if all(s.isdigit() for s in suffixes):
                return 1 + max(int(s) for s in suffixes)
            return len(suffixes)
        if self._whole():
            cols = [self._df()["action"]]
        elif self._is_parquet():
            cols = [self._pfile().read(columns=["action"]).column(0).to_pandas()]
        else:  # batch by batch
            cols = [b["action"] for b in self._csv_batches(usecols=["action"])]
        if not all(pd.api.types.is_numeric_dtype(c) for c in cols):
            raise PolicyError(f"{self.source}: column 'action' holds action labels; the number "
                              "of actions is the dataset's.")
        return int(max((c.max() for c in cols if len(c)), default=-1)) + 1

    def _csv_batches(self, usecols: list[str] | None = None, labels: tuple[str, ...] = ()
                     ) -> Iterable[pd.DataFrame]:
        """The CSV file in consecutive frames of at most ``_BATCH_ROWS`` rows (one pass).

        ``labels``: columns holding labels (the episode id), read as written, as
        :func:`read_policy_file` reads them.
        """
        p = _checked_path(self.path)  # type: ignore[arg-type]
        with pd.read_csv(p, usecols=usecols, dtype=_text_dtypes(p, labels),
                         chunksize=_BATCH_ROWS) as reader:
            for batch in reader:
                yield _csv_labels(batch, labels)

    def _layout(self, ep_col: str, t_col: str, labels: list[str]) -> _Layout:
        """Check the key and probability columns against the dataset's actions (no rows read)."""
        cols = self._columns()
        missing = [c for c in (ep_col, t_col) if c not in cols]
        if missing:
            raise PolicyError(
                f"{self.source}: key column(s) {missing} missing; a policy file is "
                f"keyed by the dataset's episode and time columns ({ep_col!r}, {t_col!r})."
            )
        if self.form == "long":
            return _Layout("long", (), np.zeros(0, dtype=np.int64))
        n_a = len(labels)
        pos = {lab: i for i, lab in enumerate(labels)}
        pcols = [c for c in cols if _WIDE.match(c)]
        idx = []
        for c in pcols:  # one per column, not per row
            s = c[2:]
            if s not in pos and not s.isdigit():
                raise PolicyError(
                    f"{self.source}: column {c!r} is neither p_<flat action index> nor "
                    f"p_<action label> (labels look like {labels[0]!r}).")
            i = int(s) if s.isdigit() else pos[s]
            if i >= n_a:
                raise PolicyError(
                    f"{self.source}: column {c} but the dataset has only {n_a} actions "
                    f"(p_0..p_{n_a - 1}).")
            idx.append(i)
        arr = np.asarray(idx, dtype=np.int64)
        uniq, counts = np.unique(arr, return_counts=True)
        if (counts > 1).any():
            twice = [c for c, i in zip(pcols, idx, strict=True) if i == uniq[counts > 1][0]]
            raise PolicyError(f"{self.source}: columns {twice} are the same action.")
        absent = np.setdiff1d(np.arange(n_a), uniq)
        if absent.size:
            raise PolicyError(
                f"{self.source}: has {_spans(uniq)}; the dataset has {n_a} actions "
                f"({_spans(absent)} missing); a wide policy file has one column per action.")
        return _Layout("wide", tuple(pcols), arr)

    def _read_episodes(self, ep_col: str, ids: NDArray[Any]
                       ) -> tuple[pd.DataFrame, NDArray[np.int64]]:
        """The file's rows whose episode is one of ``ids``, and their file rows (0-based).

        Memory follows the rows returned (and one batch): see :meth:`_read_parquet_episodes`
        and :meth:`_read_csv_episodes`.
        """
        if self._is_parquet():
            return self._read_parquet_episodes(ep_col, ids)
        return self._read_csv_episodes(ep_col, ids)

    def _read_csv_episodes(self, ep_col: str, ids: NDArray[Any]
                           ) -> tuple[pd.DataFrame, NDArray[np.int64]]:
        """The CSV file's rows whose episode is one of ``ids``: one pass, batch by batch.

        Each batch is parsed as ``read_policy_file`` parses the whole file (pandas), and only
        its matching rows are kept; the episode ids match as in the whole file's index.
        """
        want = pd.Index(pd.unique(np.asarray(ids))).astype(str)  # as text: _positions matches
        pieces: list[pd.DataFrame] = []
        rows: list[NDArray[np.int64]] = []
        start = 0
        for batch in self._csv_batches(labels=(ep_col,)):
            if ep_col not in batch.columns:  # the layout check names it first
                break
            hit = np.flatnonzero(batch[ep_col].astype(str).isin(want).to_numpy())
            if hit.size:
                pieces.append(batch.iloc[hit])
                rows.append(start + hit.astype(np.int64))
            start += len(batch)
        if not pieces:
            return (pd.DataFrame(columns=self._columns()), np.zeros(0, dtype=np.int64))
        return (pd.concat(pieces, ignore_index=True),
                np.concatenate(rows))

    def _read_parquet_episodes(self, ep_col: str, ids: NDArray[Any]
                               ) -> tuple[pd.DataFrame, NDArray[np.int64]]:
        """The Parquet file's rows whose episode is one of ``ids``, and their file rows.

        Reads the episode column of each row group whose statistics may hold one of ``ids``,
        then, batch by batch, only the rows that match: memory follows the rows returned.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        pf = self._pfile()
        schema = pf.schema_arrow
        typ = schema.field(ep_col).type
        if pa.types.is_dictionary(typ):
            typ = typ.value_type
        try:
            raw = np.asarray(ids)
            want = pa.array(raw.astype(str) if pa.types.is_string(typ)
                            or pa.types.is_large_string(typ) else raw).cast(typ)
        except (pa.ArrowException, TypeError, ValueError):
            want = pa.array([], type=typ)  # no file row can match; reported as missing rows
        meta = pf.metadata
        j = next(k for k in range(meta.num_columns)
                 if meta.row_group(0).column(k).path_in_schema == ep_col) if (
            meta.num_row_groups) else 0
        pieces: list[Any] = []
        rows: list[NDArray[np.int64]] = []
        start = 0
        for g in range(meta.num_row_groups):  # row groups, not rows
            n = int(meta.row_group(g).num_rows)
            if len(want) and _may_hold(meta.row_group(g).column(j).statistics, want, typ):
                keys = pf.read_row_group(g, columns=[ep_col]).column(0).cast(typ)
                hit = np.flatnonzero(
                    pc.is_in(keys, value_set=want).to_numpy(zero_copy_only=False))
                off = 0
                for batch in (pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=[g])
                              if hit.size else ()):
                    sel = hit[(hit >= off) & (hit < off + batch.num_rows)] - off
                    if sel.size:
                        pieces.append(batch.take(pa.array(sel)))
                        rows.append(start + off + sel)
                    off += batch.num_rows
            start += n
        table = (pa.Table.from_batches(pieces, schema=schema) if pieces
                 else schema.empty_table())
        pieces.clear()  # the table holds the only reference: converting may free it as it goes
        # one block per column, Arrow buffers released column by column: no consolidated copy
        frame = table.to_pandas(split_blocks=True, self_destruct=True)
        del table
        # Arrow's allocator (mimalloc) keeps freed pages: hand them back before NumPy's copies
        pa.default_memory_pool().release_unused()
        return (frame.reset_index(drop=True),
                np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64))

    def _indexed(self, dataset: TrajectoryDataset, ep_col: str, t_col: str, layout: _Layout,
                 labels: list[str]) -> _Indexed:
        """The indexed rows serving ``dataset``: the whole file once, else its episodes' rows."""
        if self._whole():
            df = self._df((ep_col,))
            return self._cached(  # type: ignore[no-any-return]
                ("index", ep_col, t_col, tuple(labels)),
                lambda: _index(df, np.arange(len(df), dtype=np.int64), ep_col, t_col, layout,
                               labels, self.source))
        df, rows = self._read_episodes(ep_col, dataset.episode_ids)
        return _index(df, rows, ep_col, t_col, layout, labels, self.source)

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Probabilities aligned to the dataset's rows, shape ``(n_steps, dataset.n_actions)``.

        The file may hold more episodes than ``dataset`` (any subset of the panel it was written
        for is served, e.g. the row blocks of an audit); every row of ``dataset`` must be in it.
        A small file is indexed once and the index reused by later calls; a large Parquet file
        is read for ``dataset``'s episodes only.

        Raises
        ------
        PolicyError
            Missing key or action columns, dataset rows not covered, unknown actions,
            probabilities that are negative or do not sum to 1 within 1e-6 (naming the file's
            0-based data row, its (episode, time) key and the column).
        """
        ix, pos, ep_col, t_col = self._positions(dataset)
        # an index read for this call alone is not kept: its rows in the file's order are the
        # answer as they stand (no copy of the (n_steps, n_actions) matrix)
        return _checked_rows(ix, pos, ep_col, t_col, self.source, copy=self._whole())

    @property
    def may_defer(self) -> bool:
        """Whether the file marks rows left to current practice.

        It does with a :data:`FOLLOWS_PRACTICE` column, as ``predict`` writes for exception
        rules.
        """
        return FOLLOWS_PRACTICE in self._columns()

    def deferred_rows(self, dataset: TrajectoryDataset) -> NDArray[np.bool_] | None:
        """The file's :data:`FOLLOWS_PRACTICE` flags of ``dataset``'s rows, shape ``(n_steps,)``.

        None when the file has no such column. With it, ``evaluate`` and ``audit`` value the
        file as deployed, like the exception rules it was written from
        (:mod:`equicare.policy._deployed`).
        """
        if not self.may_defer:
            return None
        # asked several times per dataset (the target, the propensities, the support check, the
        # share): a large file's episodes are read once for them, the flags kept until the next
        last = self._table.get("follows")
        if last is not None and last[0]() is dataset:
            return last[1]  # type: ignore[no-any-return]
        ix, pos, _, _ = self._positions(dataset)
        assert ix.follows is not None
        flags = np.asarray(ix.follows[pos], dtype=bool)
        flags.setflags(write=False)
        self._table["follows"] = (weakref.ref(dataset), flags)
        return flags

    def _positions(self, dataset: TrajectoryDataset
                   ) -> tuple[_Indexed, NDArray[np.int64], str, str]:
        """The index serving ``dataset`` and each dataset row's key in it (every row covered).

        Returns the index, the positions, and the episode and time column names.
        """
        man = dataset.manifest
        ep_col = man.episode if man is not None else "episode"
        t_col = man.time if man is not None else "time"
        labels = dataset.action_space.labels()
        layout = self._layout(ep_col, t_col, labels)
        ix = self._indexed(dataset, ep_col, t_col, layout, labels)
        # dataset row r <-> (file code of episode_index[r], times[r]); -1 = episode not in file
        ids = pd.Index(dataset.episode_ids)
        ep_code = ix.episodes.get_indexer(ids).astype(np.int64)
        if (ep_code < 0).any() and (ids.inferred_type != ix.episodes.inferred_type):
            # ids of a CSV panel read as written (a mix of text and numbers) against a file
            # of text ids, or back: the same labels as text (_episode_keys)
            as_text = ix.episodes.astype(str).get_indexer(ids.astype(str)).astype(np.int64)
            ep_code = np.where(ep_code < 0, as_text, ep_code)
        want = pd.MultiIndex.from_arrays([ep_code[dataset.episode_index],
                                          np.asarray(dataset.times, dtype=np.int64)])
        pos = ix.lookup.get_indexer(want)
        if (pos < 0).any():
            miss = np.flatnonzero(pos < 0)
            e0 = dataset.episode_ids[dataset.episode_index[miss[0]]]
            e0 = e0.item() if isinstance(e0, np.generic) else e0
            raise PolicyError(
                f"{self.source}: {miss.size} dataset rows have no probabilities "
                f"(first: {ep_col}={e0!r}, {t_col}={int(dataset.times[miss[0]])}); "
                "a policy file must cover every row of the dataset."
            )
        return ix, pos.astype(np.int64), ep_col, t_col


def _may_hold(stats: Any, want: Any, typ: Any) -> bool:
    """Whether a row group whose episode column has ``stats`` may hold one of ``want``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if stats is None or not stats.has_min_max:
        return True
    try:
        lo, hi = pa.scalar(stats.min).cast(typ), pa.scalar(stats.max).cast(typ)
        inside = pc.and_(pc.greater_equal(want, lo), pc.less_equal(want, hi))
        return bool(pc.any(inside).as_py())
    except (pa.ArrowException, TypeError, ValueError):
        return True


def _py(v: Any) -> Any:
    """A NumPy scalar as the Python value (for messages)."""
    return v.item() if isinstance(v, np.generic) else v


def _key(ix: _Indexed, k: int, ep_col: str, t_col: str) -> str:
    """``row 5 (member_id=731, week=11)`` for key ``k``."""
    code, t = ix.lookup[k]
    ep = _py(ix.episodes[int(code)])
    return f"row {int(ix.first[k])} ({ep_col}={ep!r}, {t_col}={int(t)})"


def _row_key(df: pd.DataFrame, rows: NDArray[np.int64], i: int, ep_col: str, t_col: str) -> str:
    """``row 5 (member_id=731, week=11)`` for the ``i``-th row read."""
    ep, t = _py(df[ep_col].iloc[i]), _py(df[t_col].iloc[i])
    return f"row {int(rows[i])} ({ep_col}={ep!r}, {t_col}={t!r})"


def _numbers(df: pd.DataFrame, col: str, rows: NDArray[np.int64], ep_col: str, t_col: str,
             source: str, what: str) -> NDArray[np.float64]:
    """Column ``col`` as float64, or a PolicyError naming its first non-number."""
    s = df[col]
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return np.asarray(s.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    num = np.asarray(pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64,
                                                                 na_value=np.nan))
    bad = np.flatnonzero(np.isnan(num) & s.notna().to_numpy())
    if bad.size:
        raise PolicyError(
            f"{source}: column {col!r} must hold {what}; {bad.size} rows do not (first: "
            f"{_row_key(df, rows, int(bad[0]), ep_col, t_col)} has {_py(s.iloc[bad[0]])!r}; "
            f"{_ROWS}).")
    return num


def _index(df: pd.DataFrame, rows: NDArray[np.int64], ep_col: str, t_col: str, layout: _Layout,
           labels: list[str], source: str) -> _Indexed:
    """Index the rows ``df`` (file rows ``rows``) by (episode, time) over ``len(labels)`` actions.

    Returns
    -------
    _Indexed
        ``probs`` has shape ``(n_keys, len(labels))``.
    """
    n_a = len(labels)
    codes, uniq = pd.factorize(df[ep_col])
    codes = codes.astype(np.int64)
    tf = _numbers(df, t_col, rows, ep_col, t_col, source, "integer times")
    badt = np.flatnonzero((codes >= 0) & ~(np.isfinite(tf) & (tf == np.round(tf))))
    if badt.size:
        raise PolicyError(
            f"{source}: column {t_col!r} must hold integer times; {badt.size} rows do not "
            f"(first: {_row_key(df, rows, int(badt[0]), ep_col, t_col)}; {_ROWS}).")
    times = np.where(np.isfinite(tf), tf, -1).astype(np.int64)
    ok = codes >= 0  # rows with a missing episode id can match no dataset row
    names: tuple[str, ...]
    prob: NDArray[np.float64] | None
    if layout.form == "wide":
        text = [c for c in layout.cols if not pd.api.types.is_numeric_dtype(df[c])
                or pd.api.types.is_bool_dtype(df[c])]
        for c in text:  # columns, not rows: a non-number is reported by name
            _numbers(df, c, rows, ep_col, t_col, source, "probabilities")
        probs = np.zeros((int(ok.sum()), n_a))
        for j, c in zip(layout.idx, layout.cols, strict=True):  # column by column: no copy
            col = (pd.to_numeric(df[c], errors="coerce") if c in text else df[c]).to_numpy(
                dtype=np.float64, na_value=np.nan)
            probs[:, j] = col if ok.all() else col[ok]
        lookup = pd.MultiIndex.from_arrays([codes[ok], times[ok]])
        first = rows[ok]
        key_of_row = np.where(ok, np.cumsum(ok) - 1, -1).astype(np.int64)
        names_arr = np.empty(n_a, dtype=object)
        names_arr[layout.idx] = layout.cols
        names, prob = tuple(names_arr.tolist()), None
        if lookup.has_duplicates:
            k = int(np.argmax(lookup.duplicated()))
            raise PolicyError(
                f"{source}: duplicate (episode, time) rows in the policy file (first repeat: "
                f"{_row_key(df, rows, int(np.flatnonzero(ok)[k]), ep_col, t_col)}; {_ROWS}).")
    else:
        a = _actions(df, rows, labels, ep_col, t_col, source)
        prob = _numbers(df, "prob", rows, ep_col, t_col, source, "probabilities")
        row_codes, key_ep, key_t = _factorize_keys(codes[ok], times[ok])
        n_keys = key_ep.size
        probs = np.zeros((n_keys, n_a))
        np.add.at(probs, (row_codes, a[ok]), prob[ok])
        first = np.full(n_keys, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, row_codes, rows[ok])
        key_of_row = np.full(len(df), -1, dtype=np.int64)
        key_of_row[ok] = row_codes
        lookup = pd.MultiIndex.from_arrays([key_ep, key_t])
        names = ("prob",) * n_a
    follows = None
    if FOLLOWS_PRACTICE in df.columns:
        flag = _follows(df, rows, ok, ep_col, t_col, source)
        if layout.form == "wide":
            follows = flag[ok]
        else:  # a key's lines repeat its flag: any of them marks the row
            follows = np.zeros(lookup.size, dtype=bool)
            np.logical_or.at(follows, row_codes, flag[ok])
    return _Indexed(pd.Index(uniq), lookup, probs, first, key_of_row, rows, prob, names,
                    follows)


def _follows(df: pd.DataFrame, rows: NDArray[np.int64], ok: NDArray[np.bool_], ep_col: str,
             t_col: str, source: str) -> NDArray[np.bool_]:
    """The :data:`FOLLOWS_PRACTICE` column as bool, or a PolicyError naming a row not 0 or 1."""
    f = _numbers(df, FOLLOWS_PRACTICE, rows, ep_col, t_col, source, MSG_FOLLOWS)
    bad = np.flatnonzero(ok & ~np.isin(f, (0.0, 1.0)))
    if bad.size:
        raise PolicyError(
            f"{source}: column {FOLLOWS_PRACTICE!r} must hold {MSG_FOLLOWS}; {bad.size} rows "
            f"do not (first: {_row_key(df, rows, int(bad[0]), ep_col, t_col)} has "
            f"{_py(df[FOLLOWS_PRACTICE].iloc[bad[0]])!r}; {_ROWS}).")
    return np.asarray(f == 1.0)


def _factorize_keys(ep: NDArray[np.int64], t: NDArray[np.int64]
                    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Codes of the (episode code, time) pairs in order of first appearance, and the pairs.

    ``pd.factorize`` of a MultiIndex, without building its tuples (seconds per call on a long
    policy file): the pairs are packed into one int64 when they fit, else the MultiIndex is
    factorized.

    Returns
    -------
    codes : ndarray of shape (n_rows,)
    key_ep, key_t : ndarray of shape (n_keys,)
    """
    if ep.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    t_min = int(t.min())
    span = int(t.max()) - t_min + 1
    if (int(ep.max()) + 1) * span < 2**62:
        codes, uniq = pd.factorize(ep * span + (t - t_min))
        uniq = np.asarray(uniq, dtype=np.int64)
        return codes.astype(np.int64), uniq // span, uniq % span + t_min
    codes, keys = pd.factorize(pd.MultiIndex.from_arrays([ep, t]))
    return (codes.astype(np.int64), keys.get_level_values(0).to_numpy().astype(np.int64),
            keys.get_level_values(1).to_numpy().astype(np.int64))


def _actions(df: pd.DataFrame, rows: NDArray[np.int64], labels: list[str], ep_col: str,
             t_col: str, source: str) -> NDArray[np.int64]:
    """The long form's ``action`` column as flat indices (integers or the manifest's labels)."""
    s = df["action"]
    n_a = len(labels)
    a: NDArray[np.float64]
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        a = np.asarray(s.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    else:
        a = pd.Index(labels).get_indexer(s.astype(object)).astype(np.float64)
        rest = a < 0
        a[rest] = pd.to_numeric(s[rest], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(a) | (a != np.round(a))
    if bad.any():
        i = int(np.argmax(bad))
        raise PolicyError(
            f"{source}: column 'action' must hold the flat action index (an integer in "
            f"[0, {n_a})) or an action label of the manifest such as {labels[0]!r}; "
            f"{int(bad.sum())} rows do not (first: {_row_key(df, rows, i, ep_col, t_col)} has "
            f"{_py(s.iloc[i])!r}; {_ROWS}).")
    out = (a < 0) | (a >= n_a)
    if out.any():
        i = int(np.argmax(out))
        raise PolicyError(
            f"{source}: {int(out.sum())} rows have an action outside [0, {n_a}) (first: "
            f"{_row_key(df, rows, i, ep_col, t_col)} has action {_py(s.iloc[i])!r}; {_ROWS}).")
    return a.astype(np.int64)


def _checked_rows(ix: _Indexed, pos: NDArray[np.int64], ep_col: str, t_col: str, source: str,
                  *, copy: bool = True) -> NDArray[np.float64]:
    """``ix.probs[pos]``, checked like :func:`check_probs` but naming the file's rows.

    With ``copy=False`` and ``pos`` selecting every key in order, ``ix.probs`` itself is
    returned (for an index that is not kept).

    Returns
    -------
    ndarray of shape (len(pos), n_actions)
    """
    identity = (not copy and pos.size == ix.probs.shape[0]
                and bool(np.array_equal(pos, np.arange(pos.size))))
    p = ix.probs if identity else ix.probs[pos]
    bad = np.zeros(p.shape[0], dtype=bool)
    for sl in row_blocks(p.shape[0], p.shape[1]):  # no (n_steps, n_actions) masks
        block = p[sl]
        bad[sl] = ~np.isfinite(block).all(axis=1) | (block < 0).any(axis=1)
    if bad.any():
        keys = np.unique(pos[bad])
        keys = keys[np.argsort(ix.first[keys], kind="stable")][:5]
        shown = []
        for k in keys.tolist():  # at most five keys
            if ix.prob is None:
                j = int(np.argmax(~np.isfinite(ix.probs[k]) | (ix.probs[k] < 0)))
                shown.append(f"{_key(ix, k, ep_col, t_col)} {ix.names[j]}={ix.probs[k, j]:g}")
            else:
                r = np.flatnonzero((ix.key_of_row == k)
                                   & ~(np.isfinite(ix.prob) & (ix.prob >= 0)))
                i = int(r[np.argmin(ix.rows[r])]) if r.size else -1
                shown.append(f"{_key(ix, k, ep_col, t_col)} prob="
                             f"{ix.prob[i] if i >= 0 else np.nan:g}"
                             + (f" at row {int(ix.rows[i])}" if i >= 0 else ""))
        raise PolicyError(
            f"{source}: {int(np.unique(pos[bad]).size)} rows have negative or non-finite "
            f"probabilities (first: {'; '.join(shown)}; {_ROWS}).")
    s = p.sum(axis=1)
    off = np.abs(s - 1.0) > PROB_TOL
    if off.any():
        keys, at = np.unique(pos[off], return_index=True)
        order = np.argsort(ix.first[keys], kind="stable")[:5]
        sums = s[np.flatnonzero(off)[at[order]]]
        shown = [f"{_key(ix, int(k), ep_col, t_col)} sums to {v:.6g}"
                 for k, v in zip(keys[order].tolist(), sums.tolist(), strict=True)]
        raise PolicyError(
            f"{source}: probabilities of {int(keys.size)} rows do not sum to 1 within "
            f"{PROB_TOL:g} (first: {'; '.join(shown)}; {_ROWS}).")
    return p


def write_policy_file(
    dataset: TrajectoryDataset,
    probs: NDArray[np.float64],
    path: str | os.PathLike[str],
    *,
    form: Literal["wide", "long"] = "wide",
    overwrite: bool = False,
    extra: Mapping[str, NDArray[Any]] | None = None,
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
    extra : mapping of str to ndarray of shape (n_steps,), optional
        More columns, one value per dataset row (repeated on each of the row's lines in long
        form), e.g. ``follows_practice``; readers of the file ignore them.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; refusing to overwrite.")
    df = _policy_frame(dataset, probs, form, "write_policy_file", extra)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    if p.suffix.lower() == ".csv":
        df.to_csv(tmp, index=False, float_format="%.17g")
    else:
        df.to_parquet(tmp, index=False)
    os.replace(tmp, p)
    return p


def _policy_frame(dataset: TrajectoryDataset, probs: NDArray[np.float64], form: str, owner: str,
                  extra: Mapping[str, NDArray[Any]] | None = None, chunked: bool = False
                  ) -> pd.DataFrame:
    """The Contract-2 rows of one dataset: keys plus wide ``p_i`` or long ``action, prob``.

    ``extra``: more columns, one value per dataset row, after the probabilities.
    """
    probs = check_probs(probs, dataset.n_steps, dataset.n_actions, owner)
    man = dataset.manifest
    ep_col = man.episode if man is not None else "episode"
    t_col = man.time if man is not None else "time"
    eps = dataset.episode_rows(_episode_keys(np.asarray(dataset.episode_ids), chunked))
    more = {k: np.asarray(v) for k, v in (extra or {}).items()}
    if form == "wide":
        df = pd.DataFrame({ep_col: eps, t_col: dataset.times})
        wide = pd.DataFrame(probs, columns=[f"p_{i}" for i in range(probs.shape[1])])
        return pd.concat([df, wide, pd.DataFrame(more)], axis=1)
    r, a = np.nonzero(probs > 0)
    return pd.DataFrame({ep_col: eps[r], t_col: dataset.times[r], "action": a,
                         "prob": probs[r, a], **{k: v[r] for k, v in more.items()}})


def _episode_keys(ids: NDArray[Any], chunked: bool = False) -> NDArray[Any]:
    """Episode ids to write: a mix of types (text and numbers) as the text they were read from.

    A CSV panel's ids are read as written (docs/contracts.md), so zero-padded member ids give
    a mix: ``'0000254'`` stays text, ``'1234567'`` is the integer. A Parquet column holds one
    type (predict failed with ``ArrowInvalid``, exit 1); ``str`` of such a label is its text
    as written, which the reader matches back (:meth:`FilePolicy._positions`). ``chunked``
    (a file written chunk by chunk): every label id as text, so that no chunk of integers
    fixes a column type that a later chunk's ``'0000254'`` would be cast to (as 254).
    """
    if ids.dtype == object and (chunked or pd.api.types.infer_dtype(
            ids, skipna=False).startswith("mixed")):
        return ids.astype(str)
    return ids


def write_policy_stream(
    parts: Iterable[tuple[Any, ...]],
    path: str | os.PathLike[str],
    *,
    form: Literal["wide", "long"] = "wide",
    overwrite: bool = False,
) -> Path:
    """Write a policy file chunk by chunk: memory holds one chunk, never the whole file.

    Parameters
    ----------
    parts : iterable of (TrajectoryDataset, ndarray of shape (n_steps, n_actions)[, dict])
        Each chunk of the panel with the policy's probabilities for its rows, and optionally
        more columns for its rows (``extra`` of :func:`write_policy_file`).
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
        for k, (ds, probs, *more) in enumerate(parts):
            df = _policy_frame(ds, probs, form, "write_policy_stream",
                               more[0] if more else None, chunked=not csv)
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
            raise InvalidParameterError("The 'chunks' parameter of write_policy_stream must "
                                        "yield at least one chunk. Got none instead; nothing "
                                        "was written.")
        os.replace(tmp, p)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return p
