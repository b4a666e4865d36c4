from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from equicare.data import from_frame, load_dataset, to_frame, write_csv, write_duckdb, write_parquet
from equicare.data._io import read_table
from equicare.exceptions import DataValidationError

from ..conftest import make_frame


def assert_same(a, b):
    np.testing.assert_array_equal(a.states, b.states)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.reward_components, b.reward_components)
    np.testing.assert_array_equal(a.episode_offsets, b.episode_offsets)
    np.testing.assert_array_equal(a.episode_ids, b.episode_ids)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.terminals, b.terminals)
    np.testing.assert_array_equal(a.behavior_prob, b.behavior_prob)
    np.testing.assert_array_equal(a.need, b.need)
    np.testing.assert_array_equal(a.categorical, b.categorical)
    for k in a.groups:
        np.testing.assert_array_equal(a.groups[k], b.groups[k])
    for k in a.extras:
        np.testing.assert_array_equal(a.extras[k], b.extras[k])


def test_sorted_on_load(frame, manifest_dict):
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    ids = ds.episode_rows(ds.episode_ids)
    assert (np.diff(ds.step)[~ds.is_last[:-1]] == 1).all()
    order = np.lexsort((ds.times, ids))
    np.testing.assert_array_equal(order, np.arange(ds.n_steps))
    assert ds.n_episodes == frame.member_id.nunique()
    assert "note" in ds.extras  # unnamed columns carried along


@pytest.mark.parametrize("fmt", ["parquet", "csv", "duckdb"])
def test_round_trip(tmp_path, frame, manifest_dict, fmt):
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    if fmt == "parquet":
        p = write_parquet(ds, tmp_path / "p.parquet", manifest_path=tmp_path / "m.toml")
        ds2 = load_dataset(p, tmp_path / "m.toml", emit_warnings=False)
    elif fmt == "csv":
        p = write_csv(ds, tmp_path / "p.csv")
        ds2 = load_dataset(p, manifest_dict, emit_warnings=False)
    else:
        p = write_duckdb(ds, tmp_path / "p.duckdb", table="panel")
        ds2 = load_dataset(p, manifest_dict, emit_warnings=False)
    assert_same(ds, ds2)
    # the written table equals the original table up to row order
    back = to_frame(ds2).sort_values(["member_id", "week"]).reset_index(drop=True)
    orig = frame.sort_values(["member_id", "week"]).reset_index(drop=True)[back.columns]
    pd.testing.assert_frame_equal(back, orig, check_dtype=False)


def test_never_overwrites(tmp_path, frame, manifest_dict):
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    p = write_parquet(ds, tmp_path / "p.parquet")
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_parquet(ds, p)
    assert p.read_bytes() == before
    write_duckdb(ds, tmp_path / "d.duckdb")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_duckdb(ds, tmp_path / "d.duckdb")


def test_polars_input(frame, manifest_dict):
    pl = pytest.importorskip("polars")
    ds = from_frame(pl.from_pandas(frame), manifest_dict, emit_warnings=False)
    assert_same(ds, from_frame(frame, manifest_dict, emit_warnings=False))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 15), seed=st.integers(0, 10_000), max_len=st.integers(1, 7))
def test_loader_on_random_tables(n, seed, max_len):
    from ..conftest import MANIFEST as manifest_dict

    frame = make_frame(n_members=n, seed=seed, min_len=1, max_len=max_len)
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    assert ds.n_steps == len(frame)
    assert ds.n_episodes == frame.member_id.nunique()
    assert ds.episode_lengths.sum() == ds.n_steps
    # no terminal column: no row is terminal, every episode end is censored (Contract 1)
    assert not ds.terminals.any() and ds.censored.all()
    # every row survives with its values: compare sorted reward sums per episode
    by = frame.groupby("member_id")["r_engagement"].sum().sort_index().to_numpy()
    np.testing.assert_allclose(ds.episode_sum(ds.reward_components[:, 1], discount=False), by)


def test_whole_number_labels_read_as_integers_in_memory_and_streamed(tmp_path, frame,
                                                                     manifest_dict):
    """A categorical column written 136.0 (a CSV export of a float column) has the labels of
    one written 136: same levels, same codes, in memory and in chunks (Contract 1)."""
    from equicare.data import iter_chunks

    f = frame.copy()
    f["region"] = np.where(f["region"] == "north", 136, 7)
    g = f.copy()
    g["region"] = g["region"].astype(float)
    f.to_csv(tmp_path / "int.csv", index=False)
    g.to_csv(tmp_path / "float.csv", index=False)
    assert "136.0" in (tmp_path / "float.csv").read_text()
    a = load_dataset(tmp_path / "int.csv", manifest_dict, emit_warnings=False)
    b = load_dataset(tmp_path / "float.csv", manifest_dict, emit_warnings=False)
    assert a.categorical_levels == b.categorical_levels == ((7, 136),)
    assert [str(v) for v in b.categorical_levels[0]] == ["7", "136"]
    assert_same(a, b)
    chunks = list(iter_chunks(tmp_path / "float.csv", manifest_dict, chunk_rows=20))
    assert len(chunks) > 2
    assert all(c.dataset.categorical_levels == ((7, 136),) for c in chunks)
    assert to_frame(b)["region"].dtype == np.int64  # written back as integers


@pytest.mark.parametrize("block", [7, 1 << 22])
def test_a_csv_that_is_not_utf8_is_refused_naming_line_and_column(tmp_path, frame,
                                                                  manifest_dict, monkeypatch,
                                                                  block):
    """Latin-1 text crashed every command with a UnicodeDecodeError (exit 1)."""
    import equicare.data._io as io_mod
    from equicare.data import iter_chunks
    from equicare.exceptions import DataValidationError

    f = frame.sort_values(["member_id", "week"]).reset_index(drop=True)
    f["note"] = "caf\u00e9"  # é: one byte in Latin-1, two in UTF-8
    good, bad = tmp_path / "utf8.csv", tmp_path / "latin1.csv"
    f.to_csv(good, index=False)
    f.to_csv(bad, index=False, encoding="latin-1")
    monkeypatch.setattr(io_mod, "UTF8_BLOCK", block)  # 7: é split across blocks is valid
    ds = load_dataset(good, manifest_dict, emit_warnings=False)
    assert ds.extras["note"][0] == "caf\u00e9"
    msg = (rf"{bad}: the file is not UTF-8 text: byte 0xe9 at line 2, column 'note' cannot be "
           r"decoded as UTF-8 \(byte offset \d+\)\. equicare reads CSV files as UTF-8; re-encode")
    with pytest.raises(DataValidationError, match=msg):
        load_dataset(bad, manifest_dict)
    with pytest.raises(DataValidationError, match=msg):  # streamed: the same refusal
        next(iter_chunks(bad, manifest_dict, chunk_rows=20))


def test_csv_reads_labels_as_written(tmp_path):
    """Zero-padded labels survive a CSV round trip ('007' was read as 7, group '01' as 1), so a
    model trained in memory reads the CSV copy, and the Parquet and CSV copies agree
    (Contract 1); a numeric column of the same panel stays numeric."""
    from equicare.data import Manifest
    from equicare.learn import SPIBB
    from equicare.policy import load_policy

    rng = np.random.default_rng(0)
    rows = []
    for e in range(300):
        site, g = ["007", "010", "042"][e % 3], ["01", "02"][e % 2]
        for t in range(int(rng.integers(1, 5))):
            rows.append(dict(pid=f"{e:05d}", t=t, site=site, grp=g, x=float(t),
                             a=["01", "02", "10"][int(rng.integers(0, 3))],
                             r=float(rng.normal())))
    man = {"dataset": {"episode": "pid", "time": "t", "states": ["x"],
                       "categorical_states": ["site"], "groups": ["grp"]},
           "actions": {"a": {"levels": ["01", "02", "10"]}}, "reward": {"column": "r"}}
    ds = from_frame(pd.DataFrame(rows), man, emit_warnings=False)
    assert ds.categorical_levels == (("007", "010", "042"),)
    write_csv(ds, tmp_path / "p.csv")
    write_parquet(ds, tmp_path / "p.parquet")
    (tmp_path / "m.toml").write_text(Manifest.from_dict(man).to_toml())
    for path in ("p.csv", "p.parquet"):
        back = load_dataset(tmp_path / path, tmp_path / "m.toml", emit_warnings=False)
        assert back.categorical_levels == (("007", "010", "042"),)
        assert back.groups["grp"].tolist() == ds.groups["grp"].tolist()
        assert back.episode_ids.tolist() == ds.episode_ids.tolist()
        np.testing.assert_array_equal(back.actions, ds.actions)
        assert back.states.dtype == np.float32
    sp = SPIBB(n_wedge=3).fit(ds)
    sp.save(tmp_path / "spibb")
    back = load_dataset(tmp_path / "p.csv", tmp_path / "m.toml", emit_warnings=False)
    np.testing.assert_array_equal(load_policy(tmp_path / "spibb").action_probs(back),
                                  sp.action_probs(ds))


@pytest.mark.parametrize(("sep", "name", "decimal"), [(";", "semicolons", ","),
                                                      ("\t", "tabs", ".")])
@pytest.mark.parametrize("streamed", [False, True])
def test_a_csv_with_another_separator_says_so(tmp_path, sep, name, decimal, streamed):
    """A semicolon- (spreadsheet locale) or tab-separated "CSV" read as one column made every
    manifest column 'missing', with no word about the separator."""
    from equicare.data import Manifest, scan_panel
    from equicare.data._io import MSG_CSV_SEPARATOR

    from ..conftest import MANIFEST

    p = tmp_path / "panel.csv"
    make_frame(12).to_csv(p, index=False, sep=sep, decimal=decimal)
    header = p.read_text().splitlines()[0]
    msg = MSG_CSV_SEPARATOR.format(path=p, header=header[:57] + "...", name=name,
                                   sep=sep, decimal=decimal)
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        if streamed:
            scan_panel(p, Manifest.from_dict(MANIFEST))
        else:
            read_table(p)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_duckdb_file_that_is_not_a_database_is_a_user_error(tmp_path, streamed):
    """DuckDB's IOException ("not a valid DuckDB database file") was an internal error."""
    from equicare.data import Manifest, scan_panel

    from ..conftest import MANIFEST

    p = tmp_path / "panel.duckdb"
    p.write_text("member_id,week\n1,0\n")  # a CSV saved under the wrong name
    with pytest.raises(DataValidationError, match=re.escape(
            f"{p}: cannot open it as a DuckDB database (")):
        if streamed:
            scan_panel(p, Manifest.from_dict(MANIFEST))
        else:
            read_table(p)


#: Columns of each numeric role of the test manifest: time, state, reward, propensity, need.
NUMERIC_ROLES = ["week", "risk", "r_primary", "propensity", "high_need"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_numbers_stored_as_text_are_read_as_numbers_in_every_format(tmp_path, frame,
                                                                    manifest_dict, fmt):
    """The manifest wins: a column it declares numeric that a Parquet file stores as text is
    read as numbers (with a warning naming the file and column), as the same values in a CSV
    file are, in memory and in chunks; a value that is not a number is refused in both formats
    with the file, column, first row and value."""
    from equicare.data import iter_chunks
    from equicare.exceptions import DataWarning

    ref = from_frame(frame, manifest_dict, emit_warnings=False)
    text = frame.copy()
    for c in NUMERIC_ROLES:
        text[c] = text[c].astype(str)
    path = tmp_path / f"panel.{fmt}"
    text.to_parquet(path, index=False) if fmt == "parquet" else text.to_csv(path, index=False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = load_dataset(path, manifest_dict)
    said = [str(w.message) for w in rec if issubclass(w.category, DataWarning)
            and "stored as text" in str(w.message)]
    if fmt == "parquet":  # a CSV file is text: its numbers are numbers, nothing to say
        dtype = pd.read_parquet(path)["risk"].dtype  # str (pandas 3) or object
        assert said == [f"{path}: column {c!r} ({what}) is stored as text ({dtype}); the "
                        "manifest declares it numeric, so its values are read as numbers, as "
                        "from a CSV file. Store it as numbers to avoid this warning, e.g. "
                        f"df[{c!r}] = pd.to_numeric(df[{c!r}])."
                        for c, what in zip(NUMERIC_ROLES, ["time", "state",
                                                           "reward component 'primary'",
                                                           "behaviour propensity", "need flag"],
                                           strict=True)], said
    else:
        assert said == []
    assert_same(ds, ref)
    assert ds.times.dtype == np.int64 and ds.states.dtype == np.float32
    chunks = list(iter_chunks(path, manifest_dict, chunk_rows=20))
    assert len(chunks) > 2
    np.testing.assert_array_equal(
        np.sort(np.concatenate([c.dataset.behavior_prob for c in chunks])),
        np.sort(ref.behavior_prob))
    assert sum(c.dataset.times.sum() for c in chunks) == ref.times.sum()
    # a value that is not a number: the same error in both formats, in memory and in chunks
    text.loc[3, "risk"] = "1,5"
    path.unlink()
    text.to_parquet(path, index=False) if fmt == "parquet" else text.to_csv(path, index=False)
    msg = (f"{path}: column 'risk' (state) must hold numbers (the manifest declares it "
           "numeric); 1 row (first: 3; 0-based data rows) are not numbers (row 3: '1,5', "
           "{dtype} values).")
    with pytest.raises(DataValidationError) as info:
        load_dataset(path, manifest_dict, emit_warnings=False)
    assert re.fullmatch(re.escape(msg).replace(r"\{dtype\}", r"\w+"), str(info.value)), \
        str(info.value)
    with pytest.raises(DataValidationError, match=re.escape(msg.split(" (", 1)[0])):
        list(iter_chunks(path, manifest_dict, chunk_rows=20))


def test_a_missing_value_marker_in_text_numbers_is_missing_in_every_format(tmp_path, frame,
                                                                           manifest_dict):
    """'n/a' among text numbers: a CSV reader reads it as missing, so Parquet does too (it was
    'not a number' there, 'NaN' in the CSV): one error, the same for both files."""
    text = frame.copy()
    text["risk"] = text["risk"].astype(str)
    text.loc[3, "risk"] = "n/a"
    said = {}
    for fmt in ("parquet", "csv"):
        path = tmp_path / f"panel.{fmt}"
        text.to_parquet(path, index=False) if fmt == "parquet" else text.to_csv(path,
                                                                                index=False)
        with pytest.raises(DataValidationError) as info:
            load_dataset(path, manifest_dict, emit_warnings=False)
        said[fmt] = str(info.value).replace(str(path), "<file>")
    assert said["parquet"] == said["csv"], said
    assert said["csv"].startswith("<file>: column 'risk' (state) has NaN or infinite values in "
                                  "1 row (first: 3; 0-based data rows); expected finite numbers.")


def test_from_frame_reads_text_numbers_without_changing_the_callers_frame(frame, manifest_dict):
    text = frame.assign(risk=frame["risk"].astype(str))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = from_frame(text, manifest_dict, source="p")
    assert any("p: column 'risk' (state) is stored as text" in str(w.message) for w in rec)
    assert pd.api.types.is_string_dtype(text["risk"]) and isinstance(text["risk"].iloc[0], str)
    np.testing.assert_array_equal(ds.states[:, 0], from_frame(
        frame, manifest_dict, emit_warnings=False).states[:, 0])


@pytest.mark.parametrize("name", ["panel.csv", "panel.parquet", "panel.duckdb"])
def test_an_empty_file_is_refused_as_such_in_memory_and_streamed(tmp_path, manifest_dict, name):
    """A 0-byte panel file: one message saying so (it was the reader's own words, different
    in memory and streamed: 'No columns to parse from file', 'Empty CSV file', 'Parquet file
    size is 0 bytes', DuckDB's)."""
    from equicare.data import iter_chunks
    from equicare.data._io import MSG_EMPTY_FILE

    path = tmp_path / name
    path.touch()
    msg = MSG_EMPTY_FILE.format(path=path)
    with pytest.raises(DataValidationError, match=f"^{re.escape(msg)}$"):
        load_dataset(path, manifest_dict)
    with pytest.raises(DataValidationError, match=f"^{re.escape(msg)}$"):
        list(iter_chunks(path, manifest_dict, chunk_rows=20))


@pytest.mark.parametrize("writer", [write_parquet, write_csv])
def test_the_member_column_round_trips(tmp_path, writer):
    """The person of each episode (the manifest's member) is written back with the panel and
    read again identically, ids that look like numbers included (read as text from CSV)."""
    from ..conftest import make_reenrolled_frame

    frame, man = make_reenrolled_frame()
    frame["person"] = frame["person"].str.replace("m", "00").str.replace("p", "01")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = from_frame(frame, man)
        path = tmp_path / ("panel.parquet" if writer is write_parquet else "panel.csv")
        writer(ds, path)
        back = load_dataset(path, man)
    assert list(back.members) == list(ds.members) and back.members[0].startswith("0")
    assert back.few_member_levels() == ds.few_member_levels() == {"race": {"d"}}
