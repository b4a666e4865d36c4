"""Reading panels (CSV, Parquet, DuckDB) into TrajectoryDataset and writing them back."""

from __future__ import annotations

import codecs
import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from equicare.data._dataset import TrajectoryDataset
from equicare.data._labels import categorical_labels, text_labels
from equicare.data._manifest import Manifest
from equicare.data._manifest import manifest_of as _manifest_of
from equicare.data.validate import ValidationReport, validate_frame
from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.utils import atomic_write_text

__all__ = [
    "read_table",
    "load_dataset",
    "from_frame",
    "to_frame",
    "write_parquet",
    "write_csv",
    "write_duckdb",
    "validate_path",
    "parquet_files",
    "check_utf8",
    "check_panel_file",
    "MSG_EMPTY_FILE",
]

_DUCKDB_EXT = (".duckdb", ".db", ".ddb")


def _as_pandas(df: Any) -> pd.DataFrame:
    if isinstance(df, pd.DataFrame):
        return df
    if hasattr(df, "to_pandas"):  # polars, pyarrow
        out = df.to_pandas()
        if isinstance(out, pd.DataFrame):
            return out
    raise InvalidParameterError(f"Expected a pandas, polars or pyarrow table, got "
                                f"{type(df).__name__}.")


def read_table(
    path: str | os.PathLike[str], table: str | None = None, *, labels: Sequence[str] = (),
    columns: Sequence[str] = (), source: str = "the manifest",
) -> tuple[pd.DataFrame, list[str]]:
    """Read a panel table from CSV, Parquet or a DuckDB database file.

    Parameters
    ----------
    path : str or Path
        ``.csv`` (UTF-8 text, :func:`check_utf8`), ``.parquet``/``.pq`` or a DuckDB file
        (``.duckdb``, ``.db``).
    table : str, optional
        Table name inside a DuckDB file (required there unless the file has exactly one table).
    labels : sequence of str
        Columns holding labels (:attr:`Manifest.label_columns`): a CSV reads them as text, then
        :func:`~equicare.data._labels.text_labels` (``"007"`` stays ``"007"``, ``"101"`` is
        ``101``). Other columns, and other formats, keep their types.
    columns : sequence of str
        For a folder of Parquet files: the columns every file must hold
        (:func:`check_folder_columns`; :attr:`Manifest.named_columns`).
    source : str
        Where ``columns`` are named (the manifest's file), for the message.

    Returns
    -------
    frame : pandas.DataFrame
    raw_columns : list of str
        Column names as stored (to detect duplicates that readers rename).
    """
    p = Path(path)
    check_panel_file(p)
    if p.is_dir():
        files = parquet_files(p)
        check_folder_columns(p, files, columns, source)
        try:
            tab = folder_dataset(p, files).to_table()
        except Exception as exc:
            raise DataValidationError(f"{p}: cannot read the Parquet files ({exc}).") from exc
        return tab.to_pandas(), list(tab.column_names)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        check_utf8(p)
        with p.open(newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        check_csv_header(p, header)
        unique = len(set(header)) == len(header)
        text = [c for c in dict.fromkeys(labels) if c in header] if unique else []
        try:
            df = (
                pd.read_csv(p, engine="pyarrow", dtype={c: str for c in text})
                if unique
                else pd.read_csv(p)
            )
        except Exception as exc:  # pyarrow raises several types for malformed CSV
            raise DataValidationError(f"{p}: cannot parse CSV ({exc}).") from exc
        for c in text:  # labels as written: "007" is not 7 (Contract 1)
            df[c] = text_labels(df[c])
        return df, header
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            tab = pq.read_table(p)
        except Exception as exc:
            raise DataValidationError(f"{p}: cannot read Parquet ({exc}).") from exc
        names = list(tab.column_names)
        if len(set(names)) != len(names):
            return pd.DataFrame(), names
        return tab.to_pandas(), names
    if suffix in _DUCKDB_EXT:
        con = connect_read_only(p)
        try:
            tables = [
                r[0]
                for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
            ]
            if table is None:
                if len(tables) != 1:
                    raise DataValidationError(
                        f"{p}: name the table to read (manifest dataset.table); tables: {tables}."
                    )
                table = tables[0]
            if table not in tables:
                raise DataValidationError(f"{p}: no table {table!r}; tables: {tables}.")
            df = con.execute(f'SELECT * FROM "{table}"').df()
        finally:
            con.close()
        return df, [str(c) for c in df.columns]
    raise DataValidationError(
        f"{p}: unsupported file type {suffix!r}; expected .csv, .parquet or a DuckDB file "
        f"({', '.join(_DUCKDB_EXT)})."
    )


#: Bytes read at a time by :func:`check_utf8`.
UTF8_BLOCK = 1 << 22
#: Bytes of a line kept to name the column of a bad byte (longer lines: no column named).
UTF8_LINE = 1 << 20
MSG_NOT_UTF8 = ("{path}: the file is not UTF-8 text: byte {byte} at line {line}{column} cannot "
                "be decoded as UTF-8 (byte offset {offset}). equicare reads CSV files as UTF-8; "
                "re-encode the file, e.g. `iconv -f latin1 -t utf-8 {path} > {fixed}` (or in "
                "pandas: pd.read_csv(path, encoding='latin-1').to_csv(new_path, index=False)), "
                "or write the panel as Parquet.")


#: A panel file of 0 bytes (an export that failed, a file created but never written).
MSG_EMPTY_FILE = ("{path}: the file is empty (0 bytes); expected the panel: one row per member "
                  "and time step, with the columns the manifest names.")


def check_panel_file(path: str | os.PathLike[str]) -> None:
    """Refuse a panel path that does not exist or is an empty (0-byte) file.

    The in-memory and streamed readers both call it, so both say the same (before, a 0-byte
    CSV was "cannot parse CSV (No columns to parse from file)" in memory and "cannot read the
    panel (Empty CSV file)" streamed, and a 0-byte Parquet file Arrow's "Parquet file size is 0
    bytes" in two wordings).

    Raises
    ------
    DataValidationError
        The path does not exist, or is a file of 0 bytes (:data:`MSG_EMPTY_FILE`).
    """
    p = Path(path)
    if not p.exists():
        raise DataValidationError(f"Data file not found: {p}")
    if p.is_file() and p.stat().st_size == 0:
        raise DataValidationError(MSG_EMPTY_FILE.format(path=p))


def connect_read_only(path: str | os.PathLike[str]) -> Any:
    """Open a DuckDB panel file read-only; a file that is not a DuckDB database is a user error.

    DuckDB's ``IOException`` ("not a valid DuckDB database file") was an internal error.
    """
    import duckdb

    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise DataValidationError(f"{path}: cannot open it as a DuckDB database "
                                  f"({' '.join(str(exc).split())}).") from None


#: A CSV whose header is one column holding another separator (tests match it).
MSG_CSV_SEPARATOR = ("{path}: the header is one column {header!r}: the file looks separated by "
                     "{name} ({sep!r}), and equicare reads comma-separated CSV. Re-save it with "
                     "commas (e.g. pandas: pd.read_csv(path, sep={sep!r}, decimal={decimal!r})"
                     ".to_csv(new_path, index=False)) or save it as Parquet.")
_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


def check_csv_header(path: str | os.PathLike[str], header: Sequence[str]) -> None:
    """Refuse a CSV read as one column because it is separated by ``;``, tabs or ``|``.

    Spreadsheets in many locales save "CSV" with semicolons (and decimal commas); read with
    commas, the whole header is one column and every manifest column looks missing. The
    in-memory and streamed readers both call it, so both say the same.

    Raises
    ------
    DataValidationError
        ``header`` is a single name holding one of those separators.
    """
    if len(header) != 1:
        return
    for sep, name in _SEPARATORS.items():
        if sep in header[0]:
            shown = header[0] if len(header[0]) <= 60 else header[0][:57] + "..."
            raise DataValidationError(MSG_CSV_SEPARATOR.format(
                path=path, header=shown, name=name, sep=sep,
                decimal="," if sep == ";" else "."))


def check_utf8(path: str | os.PathLike[str]) -> None:
    """Refuse a CSV file that is not UTF-8 text (Contract 1), naming its first bad byte.

    Reads the file in blocks of :data:`UTF8_BLOCK` bytes (memory stays bounded by a block and
    the current line, at most :data:`UTF8_LINE` bytes of it); the in-memory and streamed readers
    both call it, so both refuse the same files.

    Raises
    ------
    DataValidationError
        A byte sequence is not UTF-8; the message names the line, the column and how to
        re-encode the file.
    """
    p = Path(path)
    offset = 0  # absolute position of ``data[0]``
    line = 1
    pending = b""
    head = b""  # the current line's bytes before ``data`` (capped)
    header: list[str] | None = None
    with p.open("rb") as fh:
        while True:
            block = fh.read(UTF8_BLOCK)
            final = not block
            data = pending + block
            try:
                _, used = codecs.utf_8_decode(data, "strict", final)
            except UnicodeDecodeError as exc:
                nl = data.rfind(b"\n", 0, exc.start)
                before = data[nl + 1:exc.start] if nl >= 0 else head + data[:exc.start]
                first = data.find(b"\n", 0, exc.start)
                if header is None and first >= 0 and len(head) <= UTF8_LINE:
                    header = _csv_fields(head + data[:first])
                column = ""
                if header is not None and len(before) <= UTF8_LINE:
                    k = len(_csv_fields(before)) - 1
                    if 0 <= k < len(header):
                        column = f", column {header[k]!r}"
                raise DataValidationError(MSG_NOT_UTF8.format(
                    path=p, byte=f"0x{data[exc.start]:02x}",
                    line=line + data.count(b"\n", 0, exc.start), column=column,
                    offset=offset + exc.start, fixed=p.with_name(f"{p.stem}_utf8{p.suffix}"))
                ) from exc
            nl = data.rfind(b"\n", 0, used)
            if header is None and nl >= 0 and len(head) <= UTF8_LINE:
                header = _csv_fields(head + data[:data.find(b"\n")])
            head = data[nl + 1:used] if nl >= 0 else head + data[:used]
            head = head if len(head) <= UTF8_LINE else head[:UTF8_LINE + 1]
            line += data.count(b"\n", 0, used)
            pending = data[used:]
            offset += used
            if final:
                return


def _csv_fields(raw: bytes) -> list[str]:
    """The fields of one CSV line (bytes read as Latin-1, which never fails)."""
    return next(csv.reader([raw.decode("latin-1").rstrip("\r")]), [])


def parquet_files(folder: str | os.PathLike[str]) -> list[str]:
    """The Parquet files of a panel folder (hive partitions too), in a fixed (sorted) order.

    Raises
    ------
    DataValidationError
        The folder holds no ``.parquet`` file.
    """
    p = Path(folder)
    files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in (".parquet", ".pq")
                   and f.is_file() and not f.name.startswith((".", "_")))
    if not files:
        raise DataValidationError(f"{p}: the folder holds no .parquet files; expected a panel "
                                  "written as Parquet files (hive-partitioned folders work too).")
    return files


MSG_FOLDER_COLUMN = ("{folder}: column {column!r} (named in {source}) is missing from {n_missing} "
                     "of the folder's {n_files} Parquet files (first: {first}); every file of a "
                     "folder panel must hold every column the manifest names (Arrow reads the "
                     "folder with its first file's columns: a later file without the column "
                     "reads as empty cells, a first file without it drops the column).")


def check_folder_columns(folder: str | os.PathLike[str], files: Sequence[str],
                         columns: Sequence[str], source: str) -> None:
    """Refuse a folder panel whose Parquet files do not all hold the manifest's columns.

    Arrow reads a folder with the first file's schema: a column that a later file lacks becomes
    empty cells (reported as missing values of those rows, without the file), and a column the
    first file lacks is dropped (reported as missing from the panel, though the other files hold
    it). Only the files' footers are read. A hive partition key counts as a column of the files
    under it. A column missing from every file is left to the usual "is missing" message.

    Parameters
    ----------
    folder : path-like
        The panel folder (for the message and the partition keys).
    files : sequence of str
        Its Parquet files (:func:`parquet_files`).
    columns : sequence of str
        The columns to check (the manifest's, or those a pass reads).
    source : str
        Where the columns are named (the manifest's file), for the message.

    Raises
    ------
    DataValidationError
        Some, but not all, files lack a column (:data:`MSG_FOLDER_COLUMN`, one line per column).
    """
    import pyarrow.parquet as pq

    base = Path(folder)
    if len(files) < 2 or not columns:
        return
    present: list[set[str]] = []
    for f in files:
        try:
            names = set(pq.read_schema(f).names)
        except Exception as exc:  # Arrow raises several types for a damaged footer
            raise DataValidationError(f"{f}: cannot read Parquet ({exc}).") from exc
        rel = Path(f).relative_to(base).parts[:-1] if Path(f).is_relative_to(base) else ()
        names.update(part.split("=", 1)[0] for part in rel if "=" in part)
        present.append(names)
    msgs = []
    for c in dict.fromkeys(columns):
        lack = [f for f, names in zip(files, present, strict=True) if c not in names]
        if lack and len(lack) < len(files):
            first = Path(lack[0])
            msgs.append(MSG_FOLDER_COLUMN.format(
                folder=base, column=c, source=source, n_missing=len(lack), n_files=len(files),
                first=first.relative_to(base) if first.is_relative_to(base) else first))
    if msgs:
        raise DataValidationError(msgs[0] if len(msgs) == 1 else
                                  f"{len(msgs)} problems in {base}:\n  " + "\n  ".join(msgs),
                                  msgs)


def _plain_schema(schema: Any) -> Any:
    """The schema with every dictionary (pandas ``category``) column as its value type."""
    import pyarrow as pa

    return pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                      for f in schema], metadata=schema.metadata)


def folder_dataset(folder: str | os.PathLike[str], files: Sequence[str] | None = None) -> Any:
    """A folder of Parquet files as one Arrow dataset, each column in a type holding every file's.

    Arrow types a folder by its first file: an int64 value past 2^31 in a later file failed to
    cast to a first file's int32 (``Integer value 3000000000 not in range``, naming no file) and
    float64 columns were narrowed to a first file's float32. The files' schemas (their footers)
    are unified with Arrow's permissive promotion (int32 + int64 -> int64, float32 + float64 ->
    float64), dictionary columns as their values when the files disagree; when no common type
    exists (text in one file, numbers in another) the first file's types stay, as before, and
    the loader's checks say what is wrong.

    Parameters
    ----------
    folder : path-like
        The panel folder (hive partitions too: their keys become columns).
    files : sequence of str, optional
        Its Parquet files (default: :func:`parquet_files`).

    Returns
    -------
    pyarrow.dataset.Dataset
    """
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    files = list(parquet_files(folder) if files is None else files)
    kw: dict[str, Any] = {"format": "parquet", "partitioning": "hive",
                          "partition_base_dir": str(folder)}
    ds = pads.dataset(files, **kw)
    if len(files) < 2:
        return ds
    schemas = [ds.schema, *(pq.read_schema(f) for f in files)]
    for cand in (schemas, [_plain_schema(x) for x in schemas]):
        try:
            unified = pa.unify_schemas(cand, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            continue
        return ds if unified.equals(ds.schema) else pads.dataset(files, schema=unified, **kw)
    return ds


def validate_path(
    path: str | os.PathLike[str], manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str]
) -> tuple[ValidationReport, pd.DataFrame, Manifest]:
    """Read a file and validate it; returns the report (errors are not raised)."""
    man = _manifest_of(manifest)
    df, raw = read_table(path, man.table, labels=man.label_columns, columns=man.named_columns,
                         source=man.source)
    return validate_frame(df, man, str(path), raw_columns=raw), df, man


def load_dataset(
    path: str | os.PathLike[str],
    manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str],
    *,
    emit_warnings: bool = True,
) -> TrajectoryDataset:
    """Read, validate and build a :class:`TrajectoryDataset`.

    Parameters
    ----------
    path : str or Path
        CSV, Parquet or DuckDB file.
    manifest : Manifest, dict or path to a TOML manifest
    emit_warnings : bool
        Emit :class:`~equicare.exceptions.DataWarning` for valid but suspicious data.

    Raises
    ------
    DataValidationError
        Listing every problem with file, column and first offending rows.
    """
    rep, df, man = validate_path(path, manifest)
    rep.raise_if_errors()
    if emit_warnings:
        rep.emit_warnings()
    return _build(df, man, rep, source=str(path))


def from_frame(
    df: Any,
    manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str],
    *,
    source: str = "<DataFrame>",
    emit_warnings: bool = True,
) -> TrajectoryDataset:
    """Build a :class:`TrajectoryDataset` from a pandas or polars DataFrame and a manifest."""
    pdf = _as_pandas(df)
    man = _manifest_of(manifest)
    rep = validate_frame(pdf, man, source)
    rep.raise_if_errors()
    if emit_warnings:
        rep.emit_warnings()
    return _build(pdf, man, rep, source=source)


def _build(
    df: pd.DataFrame,
    man: Manifest,
    rep: ValidationReport,
    categorical_levels: Mapping[str, Sequence[Any]] | None = None,
    source: str | None = None,
) -> TrajectoryDataset:
    """Build the dataset from a validated frame (read from ``source``, the panel file).

    ``categorical_levels`` fixes each categorical column's levels (a chunk of a larger panel must
    code its categories like the whole panel does); by default they are the sorted levels present.
    Labels are normalised first (:func:`~equicare.data._labels.categorical_labels`: a whole
    number is an integer, so ``136.0`` and ``136`` are one level).
    """
    assert rep.order is not None and rep.episode_codes is not None  # guaranteed when rep.ok
    assert rep.action_codes is not None and rep.episode_uniques is not None
    if rep.numbers:  # numeric columns stored as text, read as numbers by validation
        df = df.copy(deep=False)
        for c, values in rep.numbers.items():
            df[c] = values
    order = rep.order
    codes_sorted = rep.episode_codes[order]
    n = len(order)
    starts = np.flatnonzero(np.r_[True, codes_sorted[1:] != codes_sorted[:-1]])
    offsets = np.r_[starts, n].astype(np.int64)
    first_rows = order[starts]

    def col(c: str, dtype: Any) -> np.ndarray[Any, Any]:
        return np.ascontiguousarray(df[c].to_numpy(dtype=dtype)[order])

    if man.states:
        states = np.ascontiguousarray(df[list(man.states)].to_numpy(dtype=np.float32)[order])
    else:
        states = np.zeros((n, 0), dtype=np.float32)
    space = man.action_space
    actions = space.to_flat(rep.action_codes[order])
    rewards = np.stack([col(r.column, np.float64) for r in man.reward], axis=1)
    # without a terminal column every episode end is censored (Contract 1): no row is terminal
    terminals = (col(man.terminal, np.float64).astype(bool) if man.terminal
                 else np.zeros(n, dtype=bool))
    categorical = None
    cat_levels: list[tuple[Any, ...]] = []
    if man.categorical_states:
        cat_cols = []
        for c in man.categorical_states:
            labels = categorical_labels(df[c])  # 136.0 and 136 are one level (Contract 1)
            if categorical_levels is not None and c in categorical_levels:
                lv_fixed = list(categorical_levels[c])
                # plain values: a categorical column's own unused categories (a chunk of a
                # panel written with pandas categoricals) are not the panel's levels
                cc = pd.Categorical(labels.to_numpy(), categories=lv_fixed).codes.astype(
                    np.int64)
                if (cc < 0).any():
                    bad = labels[cc < 0].iloc[0]
                    raise DataValidationError(
                        f"column {c!r}: level {bad!r} is not among the panel's levels."
                    )
                cat_cols.append(cc[order])
                cat_levels.append(tuple(lv_fixed))
                continue
            cc, lv = pd.factorize(labels, sort=True)
            cat_cols.append(cc[order])
            cat_levels.append(tuple(lv.tolist()))
        categorical = np.ascontiguousarray(np.stack(cat_cols, axis=1).astype(np.int64))
    groups = {g: df[g].take(first_rows).to_numpy() for g in man.groups}
    named = set(man.named_columns)
    extras = {str(c): df[c].to_numpy()[order] for c in df.columns if c not in named}
    return TrajectoryDataset(
        states=states,
        actions=actions,
        reward_components=rewards,
        terminals=terminals,
        episode_offsets=offsets,
        episode_ids=rep.episode_uniques,
        times=col(man.time, np.int64),
        action_space=space,
        state_names=tuple(man.states),
        reward_names=tuple(r.name for r in man.reward),
        reward_weights=np.array([r.weight for r in man.reward]),
        gamma=man.gamma,
        groups=groups,
        categorical=categorical,
        categorical_names=tuple(man.categorical_states),
        categorical_levels=tuple(cat_levels),
        behavior_prob=col(man.behavior_prob, np.float64) if man.behavior_prob else None,
        need=df[man.need].to_numpy(dtype=np.float64)[first_rows] if man.need else None,
        members=(df[man.member].astype(str).to_numpy(dtype=object)[first_rows]
                 if man.member else None),
        mediators=(
            np.ascontiguousarray(df[list(man.mediators)].to_numpy(np.float64)[order])
            if man.mediators
            else None
        ),
        mediator_names=tuple(man.mediators),
        extras=extras,
        manifest=man,
        source=source,
    )


def to_frame(ds: TrajectoryDataset, action_labels: bool = True) -> pd.DataFrame:
    """Write the dataset back to one table in its manifest's column names.

    Parameters
    ----------
    ds : TrajectoryDataset
        Must carry the :class:`Manifest` it was read with (``ds.manifest``).
    action_labels : bool
        Write action components as labels (True) or integer codes.
    """
    man: Manifest | None = ds.manifest
    if man is None:
        raise InvalidParameterError(
            "This dataset has no manifest (build it with load_dataset or from_frame).")
    data: dict[str, Any] = {}
    data[man.episode] = ds.episode_rows(ds.episode_ids)
    data[man.time] = ds.times
    for j, c in enumerate(man.states):
        data[c] = ds.states[:, j]
    if ds.categorical is not None:
        for j, c in enumerate(man.categorical_states):
            data[c] = np.asarray(ds.categorical_levels[j], dtype=object)[ds.categorical[:, j]]
            data[c] = pd.Series(data[c]).infer_objects().to_numpy()
    if ds.mediators is not None:
        for j, c in enumerate(man.mediators):
            data[c] = ds.mediators[:, j]
    for g in man.groups:
        data[g] = ds.episode_rows(ds.groups[g])
    codes = ds.action_codes
    for j, a in enumerate(man.actions):
        if action_labels and not a.integer_levels:
            data[a.column] = np.asarray(a.levels, dtype=object)[codes[:, j]]
        else:
            data[a.column] = codes[:, j]
    for j, r in enumerate(man.reward):
        data[r.column] = ds.reward_components[:, j]
    if man.terminal:
        data[man.terminal] = ds.terminals.astype(np.int64)
    if man.behavior_prob and ds.behavior_prob is not None:
        data[man.behavior_prob] = ds.behavior_prob
    if man.need and ds.need is not None:
        data[man.need] = ds.episode_rows(ds.need)
    if man.member and ds.members is not None:
        data[man.member] = ds.episode_rows(ds.members)
    for c, v in ds.extras.items():
        data[c] = v
    return pd.DataFrame(data)


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite (pass overwrite=True).")


def write_parquet(
    ds: TrajectoryDataset,
    path: str | os.PathLike[str],
    *,
    manifest_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the dataset to Parquet (atomically), and optionally its manifest TOML.

    Reading the file back with the same manifest gives identical arrays.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    _refuse_existing(p, overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    pq.write_table(pa.Table.from_pandas(to_frame(ds), preserve_index=False), tmp)
    os.replace(tmp, p)
    if manifest_path is not None:
        mp = Path(manifest_path)
        _refuse_existing(mp, overwrite)
        atomic_write_text(mp, ds.manifest.to_toml())
    return p


def write_csv(
    ds: TrajectoryDataset, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the dataset to CSV atomically."""
    p = Path(path)
    _refuse_existing(p, overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    to_frame(ds).to_csv(tmp, index=False)
    os.replace(tmp, p)
    return p


def write_duckdb(
    ds: TrajectoryDataset,
    path: str | os.PathLike[str],
    table: str = "panel",
    *,
    overwrite: bool = False,
) -> Path:
    """Write the dataset as a table of a DuckDB database file (in one transaction)."""
    import duckdb

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    frame = to_frame(ds)
    con = duckdb.connect(str(p))
    try:
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
        ).fetchall()
        if exists[0][0] and not overwrite:
            raise FileExistsError(f"{p}: table {table!r} exists; refusing to overwrite.")
        con.register("_equicare_frame", frame)
        con.execute("BEGIN TRANSACTION")
        con.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM _equicare_frame')
        con.execute("COMMIT")
    finally:
        con.close()
    return p
