"""Episode-aligned chunked reading: chunks rebuild the in-memory panel exactly, in any layout."""

from __future__ import annotations

import copy
import re

import duckdb
import numpy as np
import pandas as pd
import pytest

from equicare.data import Manifest, iter_chunks, load_dataset, scan_panel, validate_stream
from equicare.data._chunks import BATCH_ROWS
from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.pipeline import get_executor

from ..conftest import MANIFEST, make_frame


def _manifest() -> Manifest:
    return Manifest.from_dict(copy.deepcopy(MANIFEST))


def _rows_of(ds) -> pd.DataFrame:
    """The dataset's rows keyed by (episode, time), with labels instead of codes."""
    ep = ds.episode_rows(ds.episode_ids)
    cat = np.asarray(ds.categorical_levels[0], dtype=object)[ds.categorical[:, 0]]
    out = pd.DataFrame({"ep": ep, "t": ds.times, "risk": ds.states[:, 0],
                        "eng": ds.states[:, 1], "region": cat, "a": ds.actions,
                        "r": ds.rewards, "p": ds.behavior_prob,
                        "race": ds.episode_rows(ds.groups["race"])})
    return out.sort_values(["ep", "t"]).reset_index(drop=True)


def _concat(chunks) -> pd.DataFrame:
    return (pd.concat([_rows_of(c.dataset) for c in chunks])
            .sort_values(["ep", "t"]).reset_index(drop=True))


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame(n_members=50, seed=3, min_len=1, max_len=9)


def _write(frame: pd.DataFrame, kind: str, folder) -> object:
    if kind == "parquet_sorted":
        p = folder / "panel.parquet"
        frame.sort_values(["member_id", "week"]).to_parquet(p, index=False, row_group_size=50)
    elif kind == "parquet_shuffled":
        p = folder / "panel.parquet"
        frame.to_parquet(p, index=False, row_group_size=50)
    elif kind == "csv":
        p = folder / "panel.csv"
        frame.to_csv(p, index=False)
    elif kind == "duckdb":
        p = folder / "panel.duckdb"
        con = duckdb.connect(str(p))
        con.register("f", frame)
        con.execute("CREATE TABLE panel AS SELECT * FROM f")
        con.close()
    elif kind == "hive":
        p = folder / "panel"
        sorted_ = frame.sort_values(["member_id", "week"])
        for part, sub in sorted_.groupby(sorted_["sex"]):
            d = p / f"sex_part={part}"
            d.mkdir(parents=True)
            sub.to_parquet(d / "part-0.parquet", index=False, row_group_size=40)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return p


KINDS = ["parquet_sorted", "parquet_shuffled", "csv", "duckdb", "hive"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_rows", [1, 37, 10_000])
def test_chunks_rebuild_the_panel(frame, tmp_path, kind, chunk_rows):
    path = _write(frame, kind, tmp_path)
    man = _manifest()
    whole = load_dataset(path, man, emit_warnings=False)
    chunks = list(iter_chunks(path, man, chunk_rows=chunk_rows))
    assert sum(c.dataset.n_episodes for c in chunks) == whole.n_episodes
    ids = np.concatenate([c.dataset.episode_ids for c in chunks])
    assert len(set(ids.tolist())) == ids.size  # no episode split across chunks
    if chunk_rows == 1:  # every chunk is exactly one episode
        assert all(c.dataset.n_episodes == 1 for c in chunks)
    pd.testing.assert_frame_equal(_concat(chunks), _rows_of(whole))
    # categories are coded with the whole panel's levels in every chunk
    assert all(c.dataset.categorical_levels == whole.categorical_levels for c in chunks)


def test_scan_finds_lengths_and_clustering(frame, tmp_path):
    man = _manifest()
    sorted_path = _write(frame, "parquet_sorted", tmp_path)
    scan = scan_panel(sorted_path, man)
    assert scan.clustered and scan.n_rows == len(frame)
    expect = frame.groupby("member_id").size()
    got = dict(zip(scan.episode_ids.tolist(), scan.lengths.tolist(), strict=True))
    assert got == expect.to_dict()
    assert scan.categorical_levels == {"region": ("north", "south")}
    race = frame.groupby("member_id")["race"].first()
    assert dict(zip(scan.episode_ids.tolist(), scan.episode_groups["race"].tolist(),
                    strict=True)) == race.to_dict()
    # one object per level and record batch, not one string per episode (memory of big panels)
    n_batches = -(-scan.n_rows // BATCH_ROWS)
    assert len({id(v) for v in scan.episode_groups["race"]}) <= race.nunique() * n_batches
    (tmp_path / "s").mkdir()
    shuffled = scan_panel(_write(frame, "parquet_shuffled", tmp_path / "s"), man)
    assert not shuffled.clustered
    got = dict(zip(shuffled.episode_ids.tolist(), shuffled.lengths.tolist(), strict=True))
    assert got == expect.to_dict()
    assert dict(zip(shuffled.episode_ids.tolist(), shuffled.episode_groups["race"].tolist(),
                    strict=True)) == race.to_dict()


@pytest.mark.parametrize("kind", ["parquet_sorted", "parquet_shuffled"])
def test_streamed_validation_names_the_panels_rows(frame, tmp_path, kind):
    bad = frame.copy()
    if kind == "parquet_sorted":
        bad = bad.sort_values(["member_id", "week"]).reset_index(drop=True)
    bad.loc[[5, 201], "r_primary"] = np.nan
    bad.loc[150, "modality"] = "drone"
    p = tmp_path / "panel.parquet"
    bad.to_parquet(p, index=False, row_group_size=50)
    man = _manifest()
    with pytest.raises(DataValidationError) as whole:
        load_dataset(p, man)
    rep, scan = validate_stream(p, man, chunk_rows=25)
    assert scan is not None and not rep.ok
    text = "\n".join(rep.errors)
    # the same rows as the in-memory validation names, not rows within a chunk
    for row in ("5", "201"):
        assert f"{row}" in text
    assert "150" in text and "drone" in text
    assert set(whole.value.problems[0].split()) & set(text.split())
    with pytest.raises(DataValidationError, match="panel.parquet: column '(r_primary|modality)'"):
        list(iter_chunks(p, man, chunk_rows=25))  # stops at the first chunk with a problem


def test_clear_errors(tmp_path):
    man = _manifest()
    with pytest.raises(DataValidationError, match="not found"):
        scan_panel(tmp_path / "nope.parquet", man)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match="no .parquet files"):
        scan_panel(tmp_path / "empty", man)
    f = make_frame(10).drop(columns=["risk"])
    p = tmp_path / "p.parquet"
    f.to_parquet(p, index=False)
    with pytest.raises(DataValidationError, match="column 'risk'"):
        scan_panel(p, man) and list(iter_chunks(p, man))
    with pytest.raises(InvalidParameterError,
                       match=r"The 'chunk_rows' parameter of iter_chunks must be an int >= 1"):
        list(iter_chunks(p, man, chunk_rows=0))


@pytest.mark.parametrize("kind", ["csv", "parquet_sorted", "duckdb"])
@pytest.mark.parametrize(("column", "read"), [
    ("race", lambda p, man: scan_panel(p, man)),
    ("risk", lambda p, man: list(iter_chunks(p, man, chunk_rows=40))),
])
def test_a_missing_column_is_named_in_every_format(frame, tmp_path, kind, column, read):
    """A streamed CSV missing a manifest column was an ArrowKeyError (an internal error, exit
    code 1): Arrow refuses include_columns naming an absent column before any check ran."""
    p = _write(frame.rename(columns={column: column + "_"}), kind, tmp_path)
    with pytest.raises(DataValidationError, match=re.escape(
            f"{p}: column {column!r} (named in <manifest>) is missing; did you mean "
            f"{column + '_'!r}?")):
        read(p, _manifest())


def _parts(frame: pd.DataFrame, folder, drop: dict[int, str]) -> object:
    """The sorted panel as 3 Parquet files of whole members; file k without column drop[k]."""
    p = folder / "panel"
    p.mkdir()
    sorted_ = frame.sort_values(["member_id", "week"])
    members = sorted_["member_id"].unique()
    for k, ids in enumerate(np.array_split(members, 3)):
        sub = sorted_[sorted_["member_id"].isin(ids)]
        sub.drop(columns=[drop[k]] if k in drop else []).to_parquet(
            p / f"part-{k}.parquet", index=False)
    return p


@pytest.mark.parametrize("k", [0, 1])
@pytest.mark.parametrize("read", [
    lambda p, man: load_dataset(p, man, emit_warnings=False),
    lambda p, man: list(iter_chunks(p, man, chunk_rows=40)),
])
def test_a_folder_file_without_a_manifest_column_is_named(frame, tmp_path, k, read):
    """Arrow reads a folder with its first file's columns: propensities missing from one file of
    a digital-health panel's 8 were "must lie in (0, 1]; 14915 rows ... (row 44679: nan)" (a later
    file) or "column 'propensity' ... is missing" (the first file, though 7 files held it)."""
    p = _parts(frame, tmp_path, {k: "propensity"})
    with pytest.raises(DataValidationError, match=re.escape(
            f"{p}: column 'propensity' (named in <manifest>) is missing from 1 of the folder's 3 "
            f"Parquet files (first: part-{k}.parquet); every file of a folder panel must hold")):
        read(p, _manifest())


def test_a_folder_column_takes_a_type_that_holds_every_file_s_values(frame, tmp_path):
    """Arrow typed a folder by its first file: engagement stored as int32 there and as int64
    with a value past 2^31 in a later file was "cannot read the Parquet files (Integer value
    3000000000 not in range ...)" naming no file. A float32 and a category column in the first
    file and float64 and text in the others still read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    big = frame.assign(engagement=np.arange(len(frame), dtype=np.int64) + 3_000_000_000)
    p = _parts(big, tmp_path, {})
    first = pq.read_table(p / "part-0.parquet")
    first = first.set_column(first.schema.get_field_index("engagement"), "engagement",
                             pa.array(np.arange(first.num_rows), type=pa.int32()))
    first = first.set_column(first.schema.get_field_index("risk"), "risk",
                             first["risk"].cast(pa.float32()))
    first = first.set_column(first.schema.get_field_index("region"), "region",
                             first["region"].dictionary_encode())
    pq.write_table(first, p / "part-0.parquet")
    man = _manifest()
    want = pd.concat([pq.read_table(p / f"part-{k}.parquet").to_pandas() for k in range(3)])
    want["region"] = want["region"].astype(str)
    want = want.sort_values(["member_id", "week"]).reset_index(drop=True)
    for got in (_rows_of(load_dataset(p, man, emit_warnings=False)),
                _concat(iter_chunks(p, man, chunk_rows=40))):
        eng = got["eng"].to_numpy()  # states are held in the dataset's float dtype
        assert np.array_equal(eng, want["engagement"].to_numpy().astype(eng.dtype))
        assert eng.max() > 2**31
        assert list(got["region"]) == list(want["region"])


def test_a_hive_partition_key_counts_as_every_file_s_column(frame, tmp_path):
    p = tmp_path / "panel"
    for sex, sub in frame.sort_values(["member_id", "week"]).groupby("sex"):
        (p / f"sex={sex}").mkdir(parents=True)
        sub.drop(columns=["sex"]).to_parquet(p / f"sex={sex}" / "part-0.parquet", index=False)
    ds = load_dataset(p, _manifest(), emit_warnings=False)
    assert ds.n_steps == len(frame)
    assert sum(c.dataset.n_steps for c in iter_chunks(p, _manifest(), chunk_rows=40)) == len(frame)


def test_directory_loads_in_memory(frame, tmp_path):
    path = _write(frame, "hive", tmp_path)
    ds = load_dataset(path, _manifest(), emit_warnings=False)
    assert ds.n_steps == len(frame)
    assert "sex_part" in ds.extras


@pytest.mark.parametrize("kind", ["parquet_sorted", "hive"])
@pytest.mark.parametrize("n_shards", [1, 3, 50])
def test_shards_cover_the_panel_once(frame, tmp_path, kind, n_shards):
    from equicare.data import iter_shard_chunks, plan_shards

    path = _write(frame, kind, tmp_path)
    man = _manifest()
    whole = load_dataset(path, man, emit_warnings=False)
    specs = plan_shards(path, man, n_shards)
    assert 1 <= len(specs) <= n_shards
    assert specs[0].start == 0 and specs[-1].stop == len(frame)
    assert all(a.stop == b.start for a, b in zip(specs[:-1], specs[1:], strict=True))
    chunks = [c for s in specs for c in iter_shard_chunks(s, chunk_rows=30)]
    ids = np.concatenate([c.dataset.episode_ids for c in chunks])
    assert len(set(ids.tolist())) == ids.size == whole.n_episodes
    pd.testing.assert_frame_equal(_concat(chunks), _rows_of(whole))


def test_cluster_panel_makes_any_layout_shardable(frame, tmp_path):
    from equicare.data import cluster_panel, plan_shards

    src = _write(frame, "csv", tmp_path)
    man = _manifest()
    out = cluster_panel(src, man, tmp_path / "clustered.parquet")
    assert scan_panel(out, man).clustered
    assert len(plan_shards(out, man, 4)) == 4
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        cluster_panel(src, man, out)
    with pytest.raises(DataValidationError, match="not stored together"):
        (tmp_path / "s").mkdir()
        plan_shards(_write(frame, "parquet_shuffled", tmp_path / "s"), man, 2)


def test_sharded_validation_equals_streamed(frame, tmp_path):
    from equicare.pipeline import get_executor

    bad = frame.sort_values(["member_id", "week"]).reset_index(drop=True)
    bad.loc[[3, 120], "r_primary"] = np.nan
    p = tmp_path / "panel.parquet"
    bad.to_parquet(p, index=False, row_group_size=30)
    man = _manifest()
    serial, _ = validate_stream(p, man, chunk_rows=40)
    sharded, _ = validate_stream(p, man, chunk_rows=40, executor=get_executor("local", jobs=1),
                                 n_shards=3)
    assert not sharded.ok
    text = "\n".join(sharded.errors)
    assert "3" in text and "120" in text and "r_primary" in text
    # the panel's own rows, counted over the chunks, whatever the split: the in-memory message
    assert serial.errors == sharded.errors == load_errors(p, man)
    assert "2 rows (first: 3, 120;" in text


def load_errors(p, man) -> list[str]:
    with pytest.raises(DataValidationError) as err:
        load_dataset(p, man)
    return err.value.problems


@pytest.mark.parametrize("kind", ["parquet_sorted", "hive"])
def test_sampled_ranges_are_whole_episodes_read_exactly(frame, tmp_path, kind):
    from equicare.data._chunks import iter_range_chunks, random_access, sample_ranges

    path = _write(frame, kind, tmp_path)
    man = _manifest()
    scan = scan_panel(path, man)
    whole = load_dataset(path, man, emit_warnings=False)
    starts = set(np.r_[0, np.cumsum(scan.lengths)].tolist())
    assert random_access(path, scan)
    ranges = sample_ranges(path, scan, 120, seed=5, unit_rows=40)
    assert ranges == sample_ranges(path, scan, 120, seed=5, unit_rows=40)  # seeded
    assert ranges != sample_ranges(path, scan, 120, seed=6, unit_rows=40)
    rows = sum(b - a for a, b in ranges)
    assert 120 <= rows < len(frame)
    assert all(a in starts and b in starts and a < b for a, b in ranges)  # episode-aligned
    spans = sorted(ranges)
    assert all(x[1] <= y[0] for x, y in zip(spans[:-1], spans[1:], strict=True))  # disjoint
    # only the drawn episodes, each whole and exactly as stored
    chunks = list(iter_range_chunks(path, man, ranges, chunk_rows=25,
                                    categorical_levels=scan.categorical_levels))
    got = _concat(chunks)
    assert len(got) == rows
    want = _rows_of(whole)
    want = want[want["ep"].isin(set(got["ep"]))].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    # a budget that covers the panel draws every unit: the panel once
    every = sample_ranges(path, scan, 10 * len(frame), seed=5, unit_rows=40)
    assert sorted(every)[0][0] == 0 and sum(b - a for a, b in every) == len(frame)


def test_sampled_units_are_drawn_uniformly(frame, tmp_path):
    from equicare.data._chunks import sample_ranges

    path = _write(frame, "parquet_sorted", tmp_path)
    scan = scan_panel(path, _manifest())
    units = sorted(sample_ranges(path, scan, 10**9, seed=0, unit_rows=50))
    hits = np.zeros(len(units))
    n = 400
    for seed in range(n):
        for r in sample_ranges(path, scan, 60, seed=seed, unit_rows=50):
            hits[units.index(r)] += 1
    p = hits / n  # each unit's inclusion rate: equal for every unit in expectation
    assert np.all(np.abs(p - p.mean()) < 4 * np.sqrt(p.mean() * (1 - p.mean()) / n)), p


def test_row_ranges_need_clustered_parquet(frame, tmp_path):
    from equicare.data._chunks import random_access, sample_ranges

    man = _manifest()
    for kind in ("csv", "parquet_shuffled"):
        (tmp_path / kind).mkdir()
        path = _write(frame, kind, tmp_path / kind)
        scan = scan_panel(path, man)
        assert not random_access(path, scan)
        with pytest.raises(DataValidationError, match="clustered Parquet"):
            sample_ranges(path, scan, 50, seed=0)


def test_a_categorical_column_with_unused_categories_reads_its_values(frame, tmp_path):
    """A panel written with a pandas categorical whose categories include levels no row takes
    (the Garnet synth panel's states): the chunks' codes are the panel's, with no warning."""
    import warnings

    f = frame.copy()
    f["region"] = pd.Categorical(f["region"], categories=[*sorted(f["region"].unique()), "zz"])
    path = tmp_path / "cat.parquet"
    f.sort_values(["member_id", "week"]).to_parquet(path, index=False, row_group_size=40)
    whole = load_dataset(path, _manifest(), emit_warnings=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chunks = list(iter_chunks(path, _manifest(), chunk_rows=50))
    assert len(chunks) > 2
    pd.testing.assert_frame_equal(_concat(chunks), _rows_of(whole))


@pytest.mark.parametrize("column, cell", [("race", ""), ("race", "NA"), ("member_id", ""),
                                          ("member_id", "None")])
def test_streamed_csv_reads_missing_cells_as_pandas_does(frame, tmp_path, column, cell):
    """An empty (or 'NA', 'None') group or episode-id cell is missing in the streamed CSV reader
    too: streamed validation refuses it as in memory (it passed as the text "")."""
    bad = frame.astype({column: object})
    bad.loc[[4, 17], column] = "@@"
    p = tmp_path / "panel.csv"
    bad.to_csv(p, index=False)
    p.write_text(p.read_text().replace("@@", cell))
    man = _manifest()
    with pytest.raises(DataValidationError, match=f"column '{column}'.* is empty"):
        load_dataset(p, man)
    rep, _ = validate_stream(p, man, chunk_rows=25)
    assert not rep.ok and any(f"column '{column}'" in e and "is empty" in e for e in rep.errors)


@pytest.mark.parametrize("chunk_rows", [7, 40, 10**6])
def test_streamed_validation_warns_on_the_whole_panel_like_in_memory(frame, tmp_path,
                                                                     chunk_rows):
    """The panel-level warnings (unobserved actions, sparse rewards, small group levels) come
    from counts summed over chunks: the in-memory ones, whatever the chunking (each chunk used
    to warn on its own counts, e.g. small levels that are not small in the panel)."""
    from equicare.data import validate_path

    f = frame.copy()
    f["r_primary"] = 0.0
    f.loc[f.index[:1], "r_primary"] = 1.0  # sparse in the panel
    f.loc[f["modality"] == "home_visit", "modality"] = "phone"  # never observed
    p = tmp_path / "panel.parquet"
    f.sort_values(["member_id", "week"]).to_parquet(p, index=False, row_group_size=50)
    man = _manifest()
    whole = validate_path(p, man)[0]
    assert any("never observed" in w for w in whole.warnings)
    assert any("non-zero in only" in w for w in whole.warnings)
    rep, _ = validate_stream(p, man, chunk_rows=chunk_rows)
    assert rep.ok and rep.warnings == whole.warnings
    # a level small in the panel is warned on once (named, its count not printed)
    f.loc[f["member_id"].isin(f["member_id"].unique()[:4]), "race"] = "tiny"
    f.sort_values(["member_id", "week"]).to_parquet(p, index=False, row_group_size=50)
    whole = validate_path(p, man)[0]
    rep, _ = validate_stream(p, man, chunk_rows=chunk_rows)
    assert rep.warnings == whole.warnings
    assert sum("fewer than" in w and "tiny" in w for w in rep.warnings) == 1
    assert not any("(4)" in w for w in rep.warnings)


def test_streamed_validation_reports_a_problem_every_chunk_finds_once(frame, tmp_path):
    """A problem found in many chunks is one message, its rows counted over the panel: the
    in-memory message (it was repeated once per chunk with the chunk's rows)."""
    from equicare.data import validate_path

    f = frame.copy().astype({"risk": str})
    f.loc[f.index[::3], "risk"] = "high"
    p = tmp_path / "panel.parquet"
    f.sort_values(["member_id", "week"]).to_parquet(p, index=False, row_group_size=50)
    whole = validate_path(p, _manifest())[0]
    for executor in (None, get_executor("local", jobs=1)):
        rep, _ = validate_stream(p, _manifest(), chunk_rows=20, executor=executor)
        assert [e for e in rep.errors if "'risk'" in e] == whole.errors, rep.errors


def test_a_stream_stopping_at_a_bad_chunk_says_its_count_is_a_lower_bound(frame, tmp_path):
    """Rows 3 and 120 are bad; chunks of 40 rows stop at the first: 'at least 1 row', not
    '1 row' (the panel has 2). One chunk holding the panel gives the panel's count."""
    bad = frame.sort_values(["member_id", "week"]).reset_index(drop=True)
    bad.loc[[3, 120], "r_primary"] = np.nan
    p = tmp_path / "panel.parquet"
    bad.to_parquet(p, index=False, row_group_size=30)
    man = _manifest()
    with pytest.raises(DataValidationError) as err:
        list(iter_chunks(p, man, chunk_rows=40))
    msg = str(err.value)
    assert "values in at least 1 row (first chunk with any: 3; 0-based data rows; equicare " \
           "validate counts them all)" in msg, msg
    with pytest.raises(DataValidationError) as err:
        list(iter_chunks(p, man, chunk_rows=10**6))
    assert str(err.value) == load_errors(p, man)[0]
    assert "2 rows (first: 3, 120; 0-based data rows)" in str(err.value)


def _zero_padded(frame: pd.DataFrame) -> pd.DataFrame:
    """Labels that type inference would read as numbers: '007', '01', episode ids '0042'."""
    f = frame.copy()
    f["region"] = f["region"].map({"north": "007", "south": "010"})
    f["race"] = "0" + pd.factorize(f["race"], sort=True)[0].astype(str)
    f["member_id"] = f["member_id"].map(lambda i: f"{int(str(i).lstrip('m')):04d}")
    return f


@pytest.mark.parametrize("sort", [True, False])
def test_streamed_csv_keeps_zero_padded_labels_like_in_memory(frame, tmp_path, sort):
    """Labels are read as written in chunks too: '007' stays '007' (it was 7), in a clustered
    CSV and in one the reader has to sort first."""
    f = _zero_padded(frame)
    if sort:
        f = f.sort_values(["member_id", "week"])
    p = tmp_path / "panel.csv"
    f.to_csv(p, index=False)
    man = _manifest()
    whole = load_dataset(p, man, emit_warnings=False)
    assert whole.categorical_levels == (("007", "010"),)
    assert set(whole.groups["race"].tolist()) == set(f["race"])
    assert set(whole.episode_ids.tolist()) == set(f["member_id"])
    scan = scan_panel(p, man)
    assert scan.clustered == sort
    assert scan.categorical_levels == {"region": ("007", "010")}
    assert set(scan.episode_ids.tolist()) == set(f["member_id"])
    chunks = list(iter_chunks(p, man, chunk_rows=37, scan=scan))
    assert len(chunks) > 2
    pd.testing.assert_frame_equal(_concat(chunks), _rows_of(whole))
    assert all(c.dataset.categorical_levels == whole.categorical_levels for c in chunks)
    rep, _ = validate_stream(p, man, chunk_rows=37)
    assert rep.ok, rep.errors


@pytest.mark.parametrize("n", [9, 50, 30_000])
def test_streamed_propensity_range_is_tail_range(n):
    """The summary's propensity range from each chunk's k smallest and largest values."""
    from equicare.data._stream_summary import SummaryParts, _tail_range, tail_keep
    from equicare.privacy import tail_range

    v = np.random.default_rng(n).beta(0.5, 2.0, size=n)
    k = tail_keep(n)
    total = None
    for part in np.array_split(v, 7):
        low = np.sort(part)[:k]
        high = np.sort(part)[-k:] if part.size else part
        one = SummaryParts(fixed={}, n_episodes=0, terminal=0, bp_low=low, bp_high=high,
                           n_bp=part.size, k=k)
        total = one if total is None else total + one
    assert _tail_range(total) == tail_range(v)


def test_unclustered_panel_error_gives_a_working_python_call(frame, tmp_path, monkeypatch):
    """No CLI command clusters a panel: the error says so and its one-line call works."""
    from equicare.data import plan_shards
    from equicare.data._chunks import CLUSTER_HINT

    src = _write(frame, "csv", tmp_path)
    man = _manifest()
    (tmp_path / "manifest.toml").write_text(man.to_toml())
    with pytest.raises(DataValidationError) as err:
        plan_shards(src, man, 2)
    hint = CLUSTER_HINT.format(path=src)
    assert hint in str(err.value) and "No equicare command does that" in hint
    code = hint.split('python -c "')[1].split('"')[0]
    monkeypatch.chdir(tmp_path)
    exec(code, {})
    assert len(plan_shards(tmp_path / "clustered.parquet", man, 2)) == 2


@pytest.mark.parametrize("chunk_rows", [7, 40])
def test_streamed_dates_as_time_are_one_problem_as_in_memory(frame, tmp_path, chunk_rows):
    """A daily export with dates as the time, validated with --chunk-rows 50000: the date
    error came once per chunk (each showed its own first row and date), 12 problems for the
    in-memory 5. Chunks' messages now merge past their example row: the in-memory list."""
    from equicare.data import validate_path

    f = frame.sort_values(["member_id", "week"]).copy()
    f["week"] = (pd.Timestamp("2024-01-01") + pd.to_timedelta(f["week"], unit="D")).dt.strftime(
        "%Y-%m-%d")
    p = tmp_path / "panel.csv"
    f.to_csv(p, index=False)
    man = _manifest()
    whole = validate_path(p, man)[0]
    rep, _ = validate_stream(p, man, chunk_rows=chunk_rows)
    assert len(whole.errors) == 1 and "(row 0: 2024-01-0" in whole.errors[0]
    assert rep.errors == whole.errors


@pytest.mark.parametrize("shuffle", [False, True])
def test_scan_of_a_csv_panel_whose_ids_mix_text_and_numbers(frame, tmp_path, shuffle):
    """Zero-padded member ids in a CSV are read as written: '0000254' text, '1234567' the
    integer. scan_panel sorted them with np.unique: TypeError ('<' between int and str), an
    internal error of every streamed command (validate, evaluate, predict --chunk-rows) on an
    8,000-member diabetes panel. Ids now keep their order of first appearance."""
    ids = {m: (f"{i:07d}" if i % 3 else f"{1_000_000 + i}")
           for i, m in enumerate(sorted(frame["member_id"].unique()))}
    mixed = frame.assign(member_id=frame["member_id"].map(ids))
    if not shuffle:
        mixed = mixed.sort_values(["member_id", "week"], key=lambda s: s.astype(str))
    p = tmp_path / "panel.csv"
    mixed.to_csv(p, index=False)
    scan = scan_panel(p, _manifest())
    assert scan.clustered is (not shuffle) and scan.n_rows == len(frame)
    assert {type(x) for x in scan.episode_ids} == {str, int}
    expect = mixed.groupby("member_id").size()
    got = {str(k): v for k, v in zip(scan.episode_ids.tolist(), scan.lengths.tolist(),
                                     strict=True)}
    assert got == expect.to_dict()
    first_seen = list(dict.fromkeys(mixed["member_id"]))
    assert [str(x) for x in scan.episode_ids] == first_seen
    report, _ = validate_stream(p, _manifest(), chunk_rows=40)
    assert report.ok, report.errors


@pytest.mark.parametrize("jobs", [None, 1])
def test_the_streamed_summary_withholds_groups_of_few_members_as_in_memory(tmp_path, jobs):
    """validate --chunk-rows with the manifest's member warned that race d (15 episodes of 5
    people) was suppressed, then printed it (d 15): the streamed summary counted episodes only.
    It now takes the chunks' member sets (summed across chunks and shards, a person's episodes
    may sit in several) and publishes what the in-memory summary publishes."""
    import warnings

    from equicare.data._stream_summary import stream_summary

    from ..conftest import make_reenrolled_frame

    frame, man_dict = make_reenrolled_frame()
    p = tmp_path / "panel.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(p, index=False, row_group_size=50)
    man = Manifest.from_dict(man_dict)
    ex = None if jobs is None else get_executor("local", jobs=jobs)
    rep, scan = validate_stream(p, man, chunk_rows=40, executor=ex)
    assert rep.ok and rep.counts is not None and scan is not None
    got = stream_summary(rep.counts.summary, rep.counts, scan)["groups"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = load_dataset(p, man).summary()["groups"]
    assert got == ref and got["race"]["d"] is None
    assert any("fewer than 11 members" in w for w in rep.warnings)
