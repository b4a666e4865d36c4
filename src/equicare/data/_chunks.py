"""Panels larger than memory: read them in chunks of whole episodes.

A panel (a Parquet file, a folder of Parquet files, hive-partitioned or not, a CSV file or a table
in a DuckDB file) is read as a stream of Arrow record batches. One cheap first pass reads only the
episode and categorical columns (:func:`scan_panel`): it counts rows per episode, finds every
categorical level (so every chunk codes its categories like the whole panel) and checks whether
each episode's rows are stored contiguously. If they are not, DuckDB sorts the panel by
(episode, time) into a temporary Parquet file with bounded memory (an external sort that spills to
disk) and the chunks are read from there. The second pass (:func:`iter_chunks`) cuts the stream
at episode boundaries into chunks of about ``chunk_rows`` rows, validates each chunk against the
manifest (messages name the panel's own rows) and builds one
:class:`~equicare.data.TrajectoryDataset` per chunk. Peak memory is bounded by the chunk, not by
the panel.

Only the columns the manifest names are read; other columns are not carried along in streamed
chunks (unlike :func:`~equicare.data.load_dataset`).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare._progress import Stages
from equicare.data._dataset import TrajectoryDataset
from equicare.data._io import (
    _DUCKDB_EXT,
    _build,
    check_csv_header,
    check_folder_columns,
    check_panel_file,
    check_utf8,
    connect_read_only,
    folder_dataset,
    parquet_files,
)
from equicare.data._labels import categorical_labels, text_labels
from equicare.data._manifest import Manifest
from equicare.data._manifest import manifest_of as _manifest_of
from equicare.data._stream_summary import SummaryParts, tail_keep
from equicare.data.validate import (
    _SHOW,
    CSV_NULLS,
    EXAMPLE_ROW_RE,
    NO_TERMINAL_NOTE,
    PanelCounts,
    ValidationReport,
    panel_warnings,
    validate_frame,
)
from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.utils import PARAM_MESSAGE

#: How to get a clustered Parquet panel (no CLI command writes one: a Python call).
CLUSTER_HINT = (
    "No equicare command does that; it is one Python call: python -c \"from equicare.data "
    "import cluster_panel; cluster_panel('{path}', 'manifest.toml', 'clustered.parquet')\" "
    "(then pass clustered.parquet). Without --executor a single process reads any layout."
)

__all__ = ["PanelScan", "Chunk", "ShardSpec", "scan_panel", "iter_chunks", "validate_stream",
           "plan_shards", "iter_shard_chunks", "cluster_panel", "random_access", "sample_ranges",
           "iter_range_chunks", "concat_datasets"]

#: Rows per Arrow record batch read from storage.
BATCH_ROWS = 65_536
#: Default rows per chunk (whole episodes; an episode longer than this forms its own chunk).
CHUNK_ROWS = 500_000
_ROW = "__equicare_row__"


@dataclass(frozen=True)
class PanelScan:
    """What the first, cheap pass over a panel finds.

    Attributes
    ----------
    source : str
        The panel's path.
    n_rows : int
    episode_ids : ndarray of shape (n_episodes,)
        Episode ids in storage order of their first row.
    lengths : ndarray of shape (n_episodes,), int64
        Rows per episode.
    clustered : bool
        True when every episode's rows are contiguous in storage.
    categorical_levels : dict of str to tuple
        Sorted levels of every categorical state column over the whole panel.
    episode_groups : dict of str to ndarray of shape (n_episodes,)
        Each group attribute's value on each episode's first stored row.
    episode_members : ndarray of shape (n_episodes,), optional
        With the manifest's ``member``: each episode's person (people who re-enrol), for the
        suppression of group levels of fewer than 11 people.
    """

    source: str
    n_rows: int
    episode_ids: NDArray[Any]
    lengths: NDArray[np.int64]
    clustered: bool
    categorical_levels: dict[str, tuple[Any, ...]]
    episode_groups: dict[str, NDArray[Any]] = field(default_factory=dict)
    episode_members: NDArray[Any] | None = None

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return int(self.episode_ids.shape[0])

    @property
    def max_len(self) -> int:
        """Longest episode, in rows."""
        return int(self.lengths.max()) if self.lengths.size else 0


@dataclass(frozen=True)
class Chunk:
    """One chunk of whole episodes.

    Attributes
    ----------
    index : int
        Position of the chunk in the stream (0, 1, ...).
    dataset : TrajectoryDataset
        The chunk's episodes.
    first_row : int
        Storage row of the chunk's first row (in the clustered order).
    """

    index: int
    dataset: TrajectoryDataset
    first_row: int


def _columns(man: Manifest) -> list[str]:
    return list(dict.fromkeys(man.named_columns))


def _source_kind(p: Path) -> str:
    if p.is_dir():
        return "parquet_dir"
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    if suffix in _DUCKDB_EXT:
        return "duckdb"
    raise DataValidationError(
        f"{p}: unsupported panel type {suffix!r}; expected a .parquet file, a folder of Parquet "
        f"files, a .csv file or a DuckDB file ({', '.join(_DUCKDB_EXT)})."
    )


def _batches(path: Path, man: Manifest, columns: list[str], batch_rows: int = BATCH_ROWS
             ) -> Iterator[Any]:
    """Arrow record batches of ``columns`` in storage order."""
    import pyarrow as pa

    kind = _source_kind(path)
    try:
        if kind in ("parquet", "parquet_dir"):
            if kind == "parquet_dir":
                check_folder_columns(path, parquet_files(path), columns, man.source)
            ds = _parquet_dataset(path)
            _check_columns(path, ds.schema.names, columns, man)
            # no read-ahead across files: Arrow's default (4 files, 16 batches) buffers whole
            # files and made the peak grow with the number of parts (+270 MB at 5M rows)
            yield from ds.to_batches(columns=columns, batch_size=batch_rows, use_threads=False,
                                     batch_readahead=1, fragment_readahead=1)
        elif kind == "csv":
            import csv

            import pyarrow.csv as pacsv

            # before open_csv: Arrow refuses include_columns naming a missing column with an
            # ArrowKeyError that names neither the file nor the manifest
            with path.open(newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh), [])
            check_csv_header(path, header)
            if header:  # an empty file is Arrow's "Empty CSV file" below
                _check_columns(path, header, columns, man)
            reader = pacsv.open_csv(
                str(path),
                read_options=pacsv.ReadOptions(block_size=1 << 22),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns, null_values=list(CSV_NULLS),
                    strings_can_be_null=True,
                    # labels as text (as read_table does): "007" is not 7 (Contract 1)
                    column_types={c: pa.string() for c in man.label_columns
                                  if c in columns}),
            )
            _check_columns(path, reader.schema.names, columns, man)
            for b in reader:
                yield b
        else:
            con = connect_read_only(path)
            try:
                tables = [r[0] for r in con.execute(
                    "SELECT table_name FROM information_schema.tables").fetchall()]
                table = man.table
                if table is None:
                    if len(tables) != 1:
                        raise DataValidationError(
                            f"{path}: name the table to read (manifest dataset.table); "
                            f"tables: {tables}.")
                    table = tables[0]
                if table not in tables:
                    raise DataValidationError(f"{path}: no table {table!r}; tables: {tables}.")
                names = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
                _check_columns(path, names, columns, man)
                sel = ", ".join(f'"{c}"' for c in columns)
                rdr = con.sql(f'SELECT {sel} FROM "{table}"').to_arrow_reader(batch_rows)
                for b in rdr:
                    yield b
            finally:
                con.close()
    except DataValidationError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DataValidationError(f"{path}: cannot read the panel ({exc}).") from exc


def _check_columns(path: Path, present: list[str], columns: list[str], man: Manifest) -> None:
    missing = [c for c in columns if c not in present]
    if missing:
        import difflib

        msgs = []
        for c in missing:
            close = difflib.get_close_matches(c, present, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msgs.append(f"{path}: column {c!r} (named in {man.source}) is missing{hint}")
        raise DataValidationError(msgs[0] if len(msgs) == 1 else
                                  f"{len(msgs)} problems in {path}:\n  " + "\n  ".join(msgs), msgs)


def _column_numpy(batch: Any, name: str) -> NDArray[Any]:
    return np.asarray(batch.column(name).to_numpy(zero_copy_only=False))


def _shared_values(values: NDArray[Any]) -> NDArray[Any]:
    """The same values, every repeat of a level pointing to one object.

    Arrow converts each row of a string column to its own Python string (~60 bytes each); a
    group label repeats a handful of levels over hundreds of thousands of episodes, so sharing
    them keeps the scan at 8 bytes per episode and attribute.
    """
    if values.dtype != object or values.size == 0:
        return values
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    out: NDArray[Any] = np.asarray(uniques, dtype=object)[codes]
    return out


def scan_panel(path: str | os.PathLike[str],
               manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str]) -> PanelScan:
    """First pass: episodes, their lengths, categorical levels and whether rows are clustered.

    Reads only the episode and categorical state columns.

    Parameters
    ----------
    path : path-like
        Parquet file or folder, CSV file or DuckDB file.
    manifest : Manifest, dict or path to a TOML manifest

    Returns
    -------
    PanelScan
    """
    man = _manifest_of(manifest)
    p = Path(path)
    check_panel_file(p)
    if _source_kind(p) == "csv":  # as read_table does: a CSV must be UTF-8 text
        check_utf8(p)
    keyed = list(dict.fromkeys([*man.groups, *([man.member] if man.member else [])]))
    cols = list(dict.fromkeys([man.episode, *man.categorical_states, *keyed]))
    run_ids: list[NDArray[Any]] = []
    run_groups: dict[str, list[NDArray[Any]]] = {g: [] for g in keyed}
    run_lens: list[NDArray[np.int64]] = []
    levels: dict[str, set[Any]] = {c: set() for c in man.categorical_states}
    prev: Any = None
    n = 0
    text = set(_text_columns(p, man))

    def values(b: Any, c: str) -> NDArray[Any]:
        v = _column_numpy(b, c)
        return text_labels(v).to_numpy() if c in text else v  # CSV labels as written

    for b in _batches(p, man, cols):
        m = b.num_rows
        if m == 0:
            continue
        ep = values(b, man.episode)
        if pd.isna(ep).any():
            bad = int(np.flatnonzero(pd.isna(ep))[0]) + n
            raise DataValidationError(
                f"{p}: column {man.episode!r} (episode id) is empty in row {bad} (0-based).")
        change = np.empty(m, dtype=bool)
        change[0] = n == 0 or ep[0] != prev
        change[1:] = ep[1:] != ep[:-1]
        starts = np.flatnonzero(change)
        if not change[0]:  # the batch's first rows continue the previous batch's last run
            run_lens[-1][-1] += int(starts[0]) if starts.size else m
        if starts.size:
            run_ids.append(ep[starts])
            run_lens.append(np.diff(np.r_[starts, m]).astype(np.int64))
            for g in keyed:
                run_groups[g].append(_shared_values(values(b, g)[starts]))
        for c in man.categorical_states:
            levels[c].update(pd.unique(categorical_labels(values(b, c))).tolist())
        prev = ep[-1]
        n += m
    if n == 0:
        raise DataValidationError(
            f"{p}: the table is empty (no rows); expected one row per member and time step.")
    ids = np.concatenate(run_ids)
    lens = np.concatenate(run_lens)
    groups = {g: np.concatenate(v) for g, v in run_groups.items()}
    # in order of first appearance; np.unique sorted them, which a CSV panel's ids read as
    # written cannot be ('0000254' stays text, '1234567' is the integer: a TypeError)
    inverse, uniq_index = pd.factorize(ids, use_na_sentinel=False)
    uniq = np.asarray(uniq_index, dtype=ids.dtype)
    clustered = uniq.shape[0] == ids.shape[0]
    if not clustered:  # rows of some episodes are scattered: count per episode instead
        first = np.full(uniq.shape[0], ids.shape[0], dtype=np.int64)
        np.minimum.at(first, inverse, np.arange(ids.shape[0]))
        ids = uniq
        lens = np.bincount(inverse, weights=lens, minlength=uniq.shape[0]).astype(np.int64)
        groups = {g: v[first] for g, v in groups.items()}
    cat_levels: dict[str, tuple[Any, ...]] = {}
    for c, s in levels.items():
        vals = [v for v in s if not (isinstance(v, float) and np.isnan(v))]
        try:
            cat_levels[c] = tuple(sorted(vals))
        except TypeError:  # mixed types ("007" and 100): ordered as in memory (_build)
            cat_levels[c] = tuple(pd.factorize(pd.Series(vals, dtype=object), sort=True)[1]
                                  .tolist())
    members = groups.pop(man.member) if man.member and man.member not in man.groups else (
        groups[man.member] if man.member else None)
    return PanelScan(source=str(p), n_rows=n, episode_ids=ids, lengths=lens, clustered=clustered,
                     categorical_levels=cat_levels, episode_groups=groups,
                     episode_members=members)


def _with_rows(batches: Iterator[Any]) -> Iterator[Any]:
    """Append each row's storage number (0-based) as a column."""
    import pyarrow as pa

    n = 0
    for b in batches:
        m = b.num_rows
        yield b.append_column(_ROW, pa.array(np.arange(n, n + m, dtype=np.int64)))
        n += m


def _cluster(path: Path, man: Manifest, cols: list[str], tmp: Path, memory_limit: str) -> Path:
    """Sort the panel by (episode, time) into one temporary Parquet file (external sort)."""
    import itertools

    import duckdb
    import pyarrow as pa

    gen = _with_rows(_batches(path, man, cols))
    first = next(gen)
    reader = pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], gen))
    out = tmp / "clustered.parquet"
    con = duckdb.connect()
    try:
        spill = tmp / "spill"
        spill.mkdir()
        con.execute(f"SET memory_limit = '{memory_limit}'")
        con.execute(f"SET temp_directory = '{spill}'")
        con.execute("SET preserve_insertion_order = false")
        con.register("equicare_panel", reader)
        con.execute(
            f'COPY (SELECT * FROM equicare_panel ORDER BY "{man.episode}", "{man.time}") '
            f"TO '{out}' (FORMAT parquet, ROW_GROUP_SIZE {BATCH_ROWS})"
        )
    finally:
        con.close()
    return out


def _episode_starts(table: Any, episode: str) -> NDArray[np.int64]:
    """Rows (> 0) where a new episode starts."""
    ep = table.column(episode).to_numpy(zero_copy_only=False)
    return np.flatnonzero(ep[1:] != ep[:-1]).astype(np.int64) + 1


def _raw_chunks(path: Path, man: Manifest, scan: PanelScan, chunk_rows: int, tmp: Path,
                memory_limit: str) -> Iterator[Any]:
    """Arrow tables of whole episodes, about ``chunk_rows`` rows each, with storage row numbers."""
    cols = _columns(man)
    if scan.clustered:
        batches = _with_rows(_batches(path, man, cols))
    else:
        batches = _batches(_cluster(path, man, cols, tmp, memory_limit), man, [*cols, _ROW])
    yield from _cut(batches, man.episode, chunk_rows)


def _cut(batches: Iterator[Any], episode: str, chunk_rows: int) -> Iterator[Any]:
    """Regroup record batches into tables that end at episode boundaries."""
    import pyarrow as pa

    buf: list[Any] = []
    rows = 0
    for b in batches:
        if b.num_rows == 0:
            continue
        buf.append(b)
        rows += b.num_rows
        if rows < chunk_rows:
            continue
        table = pa.Table.from_batches(buf)
        starts = _episode_starts(table, episode)
        begin = 0
        while True:  # cut at the first episode start at least chunk_rows after the last cut
            k = int(np.searchsorted(starts, begin + chunk_rows))
            if k == starts.size:
                break
            yield table.slice(begin, int(starts[k]) - begin)
            begin = int(starts[k])
        rest = table.slice(begin)
        buf = rest.to_batches()
        rows = rest.num_rows
    if rows:
        yield pa.Table.from_batches(buf)


def _check_chunk_rows(chunk_rows: int, owner: str) -> None:
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int | np.integer) \
            or chunk_rows < 1:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="chunk_rows", owner=owner,
                                                         expected="an int >= 1", got=chunk_rows))


def iter_chunks(
    path: str | os.PathLike[str],
    manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str],
    *,
    chunk_rows: int = CHUNK_ROWS,
    scan: PanelScan | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    memory_limit: str = "1GB",
) -> Iterator[Chunk]:
    """Read a panel as chunks of whole episodes, each a validated TrajectoryDataset.

    Parameters
    ----------
    path : path-like
        Parquet file or folder, CSV file or DuckDB file.
    manifest : Manifest, dict or path to a TOML manifest
    chunk_rows : int
        Target rows per chunk; a chunk ends at the first episode boundary after this many rows
        (an episode is never split).
    scan : PanelScan, optional
        The result of :func:`scan_panel` when already computed.
    tmp_dir : path-like, optional
        Where an unclustered panel is sorted (default: the system's temporary folder).
    memory_limit : str
        DuckDB's memory limit for that sort (it spills to ``tmp_dir`` beyond it).

    Yields
    ------
    Chunk
        Chunks in storage order of their episodes (sorted by episode id when the panel had to
        be clustered). Categorical states are coded with the whole panel's levels.

    Raises
    ------
    DataValidationError
        The first chunk with problems, naming the panel's rows.
    """
    _check_chunk_rows(chunk_rows, "iter_chunks")
    man = _manifest_of(manifest)
    p = Path(path)
    scan = scan if scan is not None else scan_panel(p, man)
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="equicare-chunks-") as tmp:
        for k, table in enumerate(_raw_chunks(p, man, scan, chunk_rows, Path(tmp),
                                              memory_limit)):
            ds, rep = _chunk_dataset(table, man, scan, str(p), _text_columns(p, man))
            raise_chunk_errors(rep, whole=table.num_rows >= scan.n_rows)
            assert ds is not None
            yield Chunk(index=k, dataset=ds,
                        first_row=int(table.column(_ROW)[0].as_py()))


def chunk_rows_message(message: str) -> str:
    """A chunk's problem as a statement about the panel: its rows are "at least" the panel's.

    A stream stops at the first chunk with a problem, so the rows it counts are those of that
    chunk only (``empty in 124 rows`` where the panel has 550): ``N rows (first: ...; 0-based
    data rows)`` becomes ``at least N rows (first chunk with any: ...; 0-based data rows;
    equicare validate counts them all)``. Other messages are returned as they are.
    """
    m = _ROWS_RE.search(message)
    if m is None:
        return message
    noun = "row" if m.group(1) == "1" else "rows"
    return (message[:m.start()] + f"at least {m.group(1)} {noun} (first chunk with any: "
            f"{m.group(2)}{m.group(3) or ''}; 0-based data rows; equicare validate counts them "
            "all)" + message[m.end():])


def raise_chunk_errors(rep: ValidationReport, *, whole: bool) -> None:
    """Raise a chunk's problems (:meth:`ValidationReport.raise_if_errors`), worded honestly.

    Parameters
    ----------
    rep : ValidationReport
        One chunk's validation.
    whole : bool
        The chunk is the whole panel: its row counts are the panel's. Otherwise each count is
        a lower bound (:func:`chunk_rows_message`).
    """
    if not rep.errors or whole:
        rep.raise_if_errors()
        return
    rep.errors[:] = [chunk_rows_message(e) for e in rep.errors]
    rep.raise_if_errors()


def _text_columns(path: Path, man: Manifest) -> list[str]:
    """The label columns a panel stores as text (a CSV's), read with :func:`text_labels`."""
    return man.label_columns if _source_kind(path) == "csv" else []


def _chunk_dataset(table: Any, man: Manifest, scan: PanelScan, source: str,
                   text: Sequence[str] = ()) -> tuple[TrajectoryDataset | None, ValidationReport]:
    df = table.to_pandas()
    for c in text:  # CSV labels as written, as read_table reads them
        df[c] = text_labels(df[c].to_numpy(dtype=object, na_value=None))
    row_numbers = df.pop(_ROW).to_numpy(dtype=np.int64)
    # the panel-level warnings need the whole panel: callers sum rep.counts (validate_stream)
    rep = validate_frame(df, man, source, row_numbers=row_numbers, panel_level=False)
    if not rep.ok:
        return None, rep
    return _build(df, man, rep, categorical_levels=scan.categorical_levels, source=source), rep


def validate_stream(
    path: str | os.PathLike[str],
    manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str],
    *,
    chunk_rows: int = CHUNK_ROWS,
    tmp_dir: str | os.PathLike[str] | None = None,
    memory_limit: str = "1GB",
    max_errors: int = 50,
    executor: Any = None,
    n_shards: int | None = None,
    chunk_stat: Callable[[TrajectoryDataset, int], Any] | None = None,
    progress: bool = False,
) -> tuple[ValidationReport, PanelScan | None]:
    """Validate a panel chunk by chunk with bounded memory.

    Every problem names the file, the column and the panel's own rows, as
    :func:`~equicare.data.validate_path` does for a panel in memory. The panel-level warnings
    (unobserved action combinations, sparse rewards, small group levels) come from counts summed
    over the chunks, so they are the in-memory ones whatever the chunking; a problem that every
    chunk finds alike is reported once.

    Parameters
    ----------
    path, manifest, chunk_rows, tmp_dir, memory_limit
        As for :func:`iter_chunks`.
    max_errors : int
        Stop collecting after this many problems (a last line says how many chunks were left).
    executor : object with ``map(fn, items)``, optional
        Validate shards in parallel (local processes or a Ray cluster); the panel must be a
        clustered Parquet file or folder every worker can read.
    n_shards : int, optional
        Shards for the executor (default: its worker count, else 2).
    chunk_stat : callable, optional
        ``chunk_stat(chunk, n_rows)`` of every readable chunk, ``n_rows`` the panel's rows
        (picklable with an executor); the results, summed with ``+``, are
        ``report.counts.summary.extra`` (``equicare validate`` samples episodes with it).
    progress : bool, default=False
        ``[validate] ...`` lines before and after the first pass and a bar over the rows,
        advanced per chunk or shard (:class:`equicare._progress.Stages`).

    Returns
    -------
    report : ValidationReport
        ``report.ok`` is True when no chunk has a problem.
    scan : PanelScan or None
        The first pass's findings (None when the panel could not be read at all).
    """
    _check_chunk_rows(chunk_rows, "validate_stream")
    man = _manifest_of(manifest)
    p = Path(path)
    report = ValidationReport(source=str(p))
    say = Stages("validate", progress)
    say(f"first pass over {p}: episodes and rows")
    try:
        scan = scan_panel(p, man)
    except DataValidationError as exc:
        report.errors.extend(exc.problems or [str(exc)])
        return report, None
    totals: list[PanelCounts] = []
    keep = tail_keep(scan.n_rows)  # propensities kept per tail for the summary's range
    seen_warnings: set[str] = set()
    merged = _ErrorMerger()

    def add(errors: list[str], warns: list[str], counts: PanelCounts | None) -> None:
        for e in errors:
            merged.add(e)
        report.errors[:] = merged.messages()
        for w in warns:
            if _shape(w) not in seen_warnings:  # a chunk's own finding: once per kind
                seen_warnings.add(_shape(w))
                report.warnings.append(w)
        if counts is not None:
            totals[:] = [counts if not totals else totals[0] + counts]

    say(f"{scan.n_rows} rows, {len(scan.episode_ids)} episodes: checking chunks of "
        f"{chunk_rows} rows")
    with say.bar("rows", scan.n_rows) as bar:
        if executor is not None:
            shards = n_shards or int(getattr(executor, "n_workers", 2) or 2)
            specs = plan_shards(p, man, shards, scan=scan)
            for s, (errors, warns, counts) in zip(specs, executor.map(
                    _validate_shard, [(s, chunk_rows, keep, chunk_stat, scan.n_rows)
                                      for s in specs]), strict=True):
                add(errors, warns, counts)
                bar.update(advance=s.stop - s.start)
            if len(report.errors) > max_errors:
                extra = len(report.errors) - max_errors
                report.errors[max_errors:] = [f"{p}: {extra} more problems not shown."]
        else:
            with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="equicare-chunks-") as tmp:
                for k, table in enumerate(_raw_chunks(p, man, scan, chunk_rows, Path(tmp),
                                                      memory_limit)):
                    ds, rep = _chunk_dataset(table, man, scan, str(p), _text_columns(p, man))
                    if ds is not None and rep.counts is not None:
                        rep.counts.summary = SummaryParts.of(
                            ds, keep, None if chunk_stat is None else chunk_stat(ds, scan.n_rows))
                    add(rep.errors, rep.warnings, rep.counts)
                    bar.update(advance=table.num_rows)
                    if len(report.errors) >= max_errors:
                        report.errors.append(f"{p}: stopped after {len(report.errors)} problems "
                                             f"(chunk {k + 1}); fix these and validate again.")
                        break
    if report.ok and totals:  # the whole panel's counts: the in-memory warnings, once
        report.warnings.extend(panel_warnings(totals[0], man, str(p)))
        report.counts = totals[0]  # with ``summary``: see equicare.data._stream_summary
    if report.ok and not man.terminal:
        report.notes.append(NO_TERMINAL_NOTE)
    return report, scan


# ---------------------------------------------------------------------- shards for executors
@dataclass(frozen=True)
class ShardSpec:
    """Rows ``[start, stop)`` of a clustered Parquet panel: whole episodes, readable by any worker.

    Attributes
    ----------
    path : str
        Parquet file or folder, on storage every worker can read.
    manifest : Manifest
    start, stop : int
        Storage rows (episode-aligned).
    categorical_levels : dict of str to tuple
        The whole panel's levels (from :class:`PanelScan`).
    """

    path: str
    manifest: Manifest
    start: int
    stop: int
    categorical_levels: dict[str, tuple[Any, ...]]


def _parquet_dataset(path: Path) -> Any:
    """A Parquet file, or a folder of Parquet files (hive-partitioned or not): an Arrow dataset."""
    import pyarrow.dataset as pads

    if path.is_file():
        return pads.dataset([str(path)], format="parquet")
    return folder_dataset(path)


def _row_groups(ds: Any) -> list[tuple[Any, int]]:
    """Row-group fragments of a Parquet dataset in storage order, with their row counts."""
    out = []
    for frag in ds.get_fragments():
        for rg in frag.split_by_row_group():
            out.append((rg, int(rg.row_groups[0].num_rows)))
    return out


def plan_shards(
    path: str | os.PathLike[str],
    manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str],
    n_shards: int,
    *,
    scan: PanelScan | None = None,
) -> list[ShardSpec]:
    """Split a clustered Parquet panel into about ``n_shards`` episode-aligned row ranges.

    Parameters
    ----------
    path : path-like
        A Parquet file or folder whose episodes are stored contiguously (see
        :func:`cluster_panel` for any other panel).
    manifest : Manifest, dict or path to a TOML manifest
    n_shards : int
        Wanted shards (fewer when the panel has fewer episodes).
    scan : PanelScan, optional

    Returns
    -------
    list of ShardSpec
    """
    _check_chunk_rows(n_shards, "plan_shards")
    man = _manifest_of(manifest)
    p = Path(path)
    if _source_kind(p) not in ("parquet", "parquet_dir"):
        raise DataValidationError(f"{p}: shards are read from Parquet; write the panel as "
                                  f"clustered Parquet first. {CLUSTER_HINT.format(path=p)}")
    scan = scan if scan is not None else scan_panel(p, man)
    if not scan.clustered:
        raise DataValidationError(f"{p}: the rows of some episodes are not stored together; "
                                  f"cluster the panel first. {CLUSTER_HINT.format(path=p)}")
    starts = np.r_[0, np.cumsum(scan.lengths)].astype(np.int64)  # episode starts + end
    targets = np.linspace(0, scan.n_rows, n_shards + 1)[1:-1]
    cuts = np.unique(starts[np.clip(np.searchsorted(starts, targets), 0, starts.size - 1)])
    bounds = np.unique(np.r_[0, cuts, scan.n_rows])
    return [ShardSpec(path=str(p), manifest=man, start=int(a), stop=int(b),
                      categorical_levels=scan.categorical_levels)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _range_batches(path: str, man: Manifest, ranges: list[tuple[int, int]]) -> Iterator[Any]:
    """Record batches of storage rows ``[start, stop)`` of each range, in the ranges' order.

    Only the row groups a range overlaps are read; the ranges may come in any order.
    """
    import pyarrow as pa

    cols = _columns(man)
    ds = _parquet_dataset(Path(path))
    schema = ds.schema
    groups = _row_groups(ds)
    bounds = np.r_[0, np.cumsum([n for _, n in groups])].astype(np.int64)
    for start, stop in ranges:
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        for g in range(max(first, 0), len(groups)):
            lo, hi = int(bounds[g]), int(bounds[g + 1])
            if lo >= stop:
                break
            if hi <= start:
                continue
            tab = groups[g][0].to_table(schema=schema, columns=cols)
            a, b = max(start - lo, 0), min(stop, hi) - lo
            tab = tab.slice(a, b - a)
            rows = pa.array(np.arange(lo + a, lo + b, dtype=np.int64))
            yield from tab.append_column(_ROW, rows).to_batches()


def _shard_batches(spec: ShardSpec) -> Iterator[Any]:
    """Record batches of a shard's rows (only the row groups it overlaps are read)."""
    yield from _range_batches(spec.path, spec.manifest, [(spec.start, spec.stop)])


def random_access(path: str | os.PathLike[str], scan: PanelScan) -> bool:
    """Whether episode-aligned row ranges of the panel can be read without reading the rest.

    True for a Parquet file or folder whose episodes are stored contiguously (row groups are
    read on their own); a CSV or DuckDB file, or a panel that must be clustered first, is read
    from the start.
    """
    p = Path(path)
    return scan.clustered and p.exists() and _source_kind(p) in ("parquet", "parquet_dir")


def sample_ranges(
    path: str | os.PathLike[str],
    scan: PanelScan,
    rows: int,
    *,
    seed: int,
    unit_rows: int = BATCH_ROWS,
) -> list[tuple[int, int]]:
    """A random set of episode-aligned row ranges with about ``rows`` rows, in random order.

    The panel is cut into units of whole episodes at row-group boundaries (about ``unit_rows``
    rows each: every ``k``-th row-group boundary, moved forward to the next episode start, so an
    episode straddling two row groups belongs to the unit of its first row). Units are drawn
    uniformly without replacement until they hold at least ``rows`` rows. Reading a unit reads
    only its row groups (plus the next one for a straddling last episode), so the cost of reading
    the sample does not grow with the panel.

    Parameters
    ----------
    path : path-like
        A clustered Parquet file or folder (:func:`random_access`).
    scan : PanelScan
        Its scan (episode lengths in storage order).
    rows : int
        Rows wanted (at least one unit is drawn; all of them when ``rows >= scan.n_rows``).
    seed : int
        Seed of the draw (the same seed gives the same ranges in the same order).
    unit_rows : int
        Target rows per unit (at least one row group).

    Returns
    -------
    list of (start, stop)
        Storage rows ``[start, stop)`` of each drawn unit, in the (random) order to read them.
    """
    _check_chunk_rows(unit_rows, "sample_ranges")
    p = Path(path)
    if not random_access(p, scan):
        raise DataValidationError(f"{p}: row ranges are read from a clustered Parquet panel. "
                                  f"{CLUSTER_HINT.format(path=p)}")
    sizes = np.array([n for _, n in _row_groups(_parquet_dataset(p))], dtype=np.int64)
    rg_bounds = np.cumsum(sizes)[:-1]
    stride = max(1, int(round(unit_rows / max(float(np.median(sizes)), 1.0))))
    starts = np.r_[0, np.cumsum(scan.lengths)].astype(np.int64)  # episode starts + the end
    cuts = starts[np.searchsorted(starts, rg_bounds[stride - 1::stride])]
    bounds = np.unique(np.r_[0, cuts, scan.n_rows])
    units = np.c_[bounds[:-1], bounds[1:]]
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A3])).permutation(
        units.shape[0])
    lens = units[order, 1] - units[order, 0]
    take = int(np.searchsorted(np.cumsum(lens), min(int(rows), scan.n_rows))) + 1
    return [(int(a), int(b)) for a, b in units[order[:take]]]


def iter_range_chunks(
    path: str | os.PathLike[str],
    manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str],
    ranges: list[tuple[int, int]],
    *,
    categorical_levels: Mapping[str, tuple[Any, ...]],
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[Chunk]:
    """Read episode-aligned row ranges of a clustered Parquet panel as chunks of whole episodes.

    The ranges (from :func:`sample_ranges` or :func:`plan_shards`) are read in the given order
    and regrouped into validated chunks of about ``chunk_rows`` rows; categories are coded with
    ``categorical_levels`` (the whole panel's, from its scan).
    """
    _check_chunk_rows(chunk_rows, "iter_range_chunks")
    man = _manifest_of(manifest)
    p = Path(path)
    scan = PanelScan(source=str(p), n_rows=sum(b - a for a, b in ranges),
                     episode_ids=np.zeros(0), lengths=np.zeros(0, dtype=np.int64),
                     clustered=True, categorical_levels=dict(categorical_levels))
    for k, table in enumerate(_cut(_range_batches(str(p), man, list(ranges)), man.episode,
                                   chunk_rows)):
        ds, rep = _chunk_dataset(table, man, scan, str(p))
        raise_chunk_errors(rep, whole=table.num_rows >= scan.n_rows)
        assert ds is not None
        yield Chunk(index=k, dataset=ds, first_row=int(table.column(_ROW)[0].as_py()))


def iter_shard_chunks(spec: ShardSpec, *, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """Read one shard as chunks of whole episodes (only the row groups it overlaps are read)."""
    _check_chunk_rows(chunk_rows, "iter_shard_chunks")
    yield from iter_range_chunks(spec.path, spec.manifest, [(spec.start, spec.stop)],
                                 categorical_levels=spec.categorical_levels,
                                 chunk_rows=chunk_rows)


def cluster_panel(
    path: str | os.PathLike[str],
    manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    memory_limit: str = "1GB",
    overwrite: bool = False,
) -> Path:
    """Write a panel as one Parquet file sorted by (episode, time), with bounded memory.

    Any layout (CSV, DuckDB, scattered rows) becomes a panel that :func:`plan_shards` can split.
    Only the manifest's columns are written.

    Returns
    -------
    Path
        ``out``.
    """
    man = _manifest_of(manifest)
    src = Path(path)
    dst = Path(out)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; refusing to overwrite it (pass overwrite=True).")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".equicare-cluster-") as tmp:
        sorted_path = _cluster(src, man, _columns(man), Path(tmp), memory_limit)
        import pyarrow.parquet as pq

        tab = pq.ParquetFile(sorted_path)
        part = Path(tmp) / "out.parquet"
        with pq.ParquetWriter(part, tab.schema_arrow.remove(
                tab.schema_arrow.get_field_index(_ROW))) as w:
            for b in tab.iter_batches(batch_size=BATCH_ROWS):
                w.write_batch(b.drop_columns([_ROW]))
        os.replace(part, dst)
    return dst


_ROWS_RE = re.compile(r"(\d+) rows? \(first: ([\d, ]+?)(, \.\.\.)?; 0-based data rows\)")


@dataclass
class _ErrorMerger:
    """Chunks' problems as the whole panel's: one message per problem, rows counted over chunks.

    A message naming rows (``N rows (first: a, b, ...; 0-based data rows)``) that another chunk
    found alike (the same text but for its rows, and for the example row it shows,
    :data:`~equicare.data.validate.EXAMPLE_ROW_RE`) is merged with it: the counts add up, the
    first rows are the smallest of every chunk's first rows, i.e. the panel's (each chunk shows
    its smallest), and the example is the one of the smallest row. Any other message is kept
    once.
    """

    found: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, message: str) -> None:
        m = _ROWS_RE.search(message)
        if m is None:
            self.found.setdefault(message, [message, 0, [], None])
            return
        key = message[:m.start()] + "\0" + message[m.end():]
        ex = EXAMPLE_ROW_RE.search(key)  # a time column's first bad value: each chunk's own
        if ex is not None:
            key = key[:ex.start()] + "\1" + key[ex.end():]
        entry = self.found.setdefault(key, [key, 0, [], None])
        entry[1] += int(m.group(1))
        entry[2] = sorted({*entry[2], *(int(r) for r in m.group(2).split(", "))})[:_SHOW]
        if ex is not None and (entry[3] is None or int(ex.group(1)) < entry[3][0]):
            entry[3] = (int(ex.group(1)), ex.group(0))

    def messages(self) -> list[str]:
        out = []
        for text, n, rows, example in self.found.values():
            if "\0" not in text:
                out.append(text)
                continue
            more = ", ..." if n > len(rows) else ""
            noun = "row" if n == 1 else "rows"
            shown = ", ".join(str(r) for r in rows)
            text = text if example is None else text.replace("\1", example[1])
            out.append(text.replace("\0", f"{n} {noun} (first: {shown}{more}; 0-based data rows)"))
        return out


def _shape(message: str) -> str:
    """A warning without its numbers: chunks report the same finding with their own counts."""
    return re.sub(r"\d+(\.\d+)?", "#", message)


def _validate_shard(task: tuple[ShardSpec, int, int, Any, int]
                    ) -> tuple[list[str], list[str], PanelCounts | None]:
    """Problems, warnings and summed panel counts of one shard (run by an executor)."""
    spec, chunk_rows, keep, chunk_stat, n_rows = task
    scan = PanelScan(source=spec.path, n_rows=spec.stop - spec.start, episode_ids=np.zeros(0),
                     lengths=np.zeros(0, dtype=np.int64), clustered=True,
                     categorical_levels=spec.categorical_levels)
    errors: list[str] = []
    warns: list[str] = []
    total: PanelCounts | None = None
    for table in _cut(_shard_batches(spec), spec.manifest.episode, chunk_rows):
        ds, rep = _chunk_dataset(table, spec.manifest, scan, spec.path)
        if ds is not None and rep.counts is not None:
            rep.counts.summary = SummaryParts.of(
                ds, keep, None if chunk_stat is None else chunk_stat(ds, n_rows))
        errors += rep.errors
        warns += [w for w in rep.warnings if w not in warns]
        if rep.counts is not None:
            total = rep.counts if total is None else total + rep.counts
    return errors, warns, total


def concat_datasets(parts: list[TrajectoryDataset]) -> TrajectoryDataset:
    """One dataset of the episodes of several (same panel, same coding) datasets.

    Parameters
    ----------
    parts : list of TrajectoryDataset
        Non-empty; chunks of one panel, read with the same manifest and level coding.

    Returns
    -------
    TrajectoryDataset
        Their episodes in order (``parts[0]`` itself when there is one part).
    """
    first = parts[0]
    if len(parts) == 1:
        return first
    lengths = np.concatenate([p.episode_lengths for p in parts])
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])

    def cat(name: str) -> Any:
        vals = [getattr(p, name) for p in parts]
        return None if vals[0] is None else np.concatenate(vals)

    return replace(
        first, states=cat("states"), actions=cat("actions"),
        reward_components=cat("reward_components"), terminals=cat("terminals"),
        episode_offsets=offsets, episode_ids=cat("episode_ids"), times=cat("times"),
        groups={k: np.concatenate([p.groups[k] for p in parts]) for k in first.groups},
        categorical=cat("categorical"), behavior_prob=cat("behavior_prob"), need=cat("need"),
        members=cat("members"), mediators=cat("mediators"),
        extras={k: np.concatenate([p.extras[k] for p in parts]) for k in first.extras},
        _cache={})
