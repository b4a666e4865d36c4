from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from equicare.data import from_frame
from equicare.exceptions import DataValidationError, InvalidParameterError, PolicyError
from equicare.policy import FilePolicy, write_policy_file

from ..conftest import make_frame


@pytest.fixture
def ds(manifest_dict):
    return from_frame(make_frame(25), manifest_dict, emit_warnings=False)


@pytest.fixture
def probs(ds):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=ds.n_steps)
    p[:, 3] = 0
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("form", ["wide", "long"])
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip(tmp_path, ds, probs, form, suffix):
    path = write_policy_file(ds, probs, tmp_path / f"pol{suffix}", form=form)
    fp = FilePolicy(path)
    assert fp.form == form
    np.testing.assert_allclose(fp.action_probs(ds), probs, atol=1e-12)
    # rows of the file in any order
    df = fp._df().sample(frac=1.0, random_state=1)
    np.testing.assert_allclose(FilePolicy(frame=df).action_probs(ds), probs, atol=1e-12)


@pytest.mark.parametrize("batched", [False, True])
def test_csv_episode_ids_are_read_as_written(tmp_path, manifest_dict, monkeypatch, batched):
    """Member ids with leading zeros ('000123') match their CSV policy file, as the panel's
    CSV copy reads them (Contract 1, "Labels are read as written"); pandas' type inference
    read them as 123, and every dataset row was reported as having no probabilities."""
    from equicare import utils
    from equicare.policy import _file

    frame = make_frame(12)
    frame["member_id"] = frame["member_id"].str.replace("m", "00")  # "00007", ...
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    probs = np.random.default_rng(1).dirichlet(np.ones(ds.n_actions), size=ds.n_steps)
    for form in ("wide", "long"):
        path = write_policy_file(ds, probs, tmp_path / f"{form}.csv", form=form)
        assert pd.read_csv(path)["member_id"].dtype.kind == "i"  # what inference reads
        if batched:  # read in batches of rows, not whole
            monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", 50)
            monkeypatch.setattr(_file, "_BATCH_ROWS", 16)
        fp = FilePolicy(path)
        np.testing.assert_allclose(fp.action_probs(ds), probs, atol=1e-12)
        monkeypatch.undo()


@pytest.mark.parametrize(("content", "error", "said"), [
    (b"", PolicyError, "the policy file is empty; expected a header"),
    ("member_id,week,p_0\n1,0,1.0\n".encode("utf-16"), DataValidationError,
     "the file is not UTF-8 text"),
    (b"member_id;week;p_0;p_1\n1;0;0,5;0,5\n", DataValidationError,
     "the header is one column 'member_id;week;p_0;p_1': the file looks separated by "
     "semicolons (';')"),
])
def test_a_csv_policy_file_that_is_empty_not_utf8_or_semicolon_separated(tmp_path, ds, content,
                                                                        error, said):
    """pandas raised EmptyDataError / UnicodeDecodeError (internal errors, exit code 1), and a
    semicolon-separated file was said to miss its key columns."""
    path = tmp_path / "p.csv"
    path.write_bytes(content)
    with pytest.raises(error, match=re.escape(f"{path}: {said}")):
        FilePolicy(path).action_probs(ds)


def test_a_parquet_policy_file_arrow_cannot_open_is_a_policy_error(tmp_path, ds):
    # an ArrowInvalid ("Parquet magic bytes not found") was an internal error (exit code 1)
    path = tmp_path / "p.parquet"
    path.write_text("member_id,week,p_0\n1,0,1.0\n")  # a CSV saved under the wrong name
    with pytest.raises(PolicyError, match=re.escape(f"{path}: cannot read it as Parquet (")):
        FilePolicy(path).action_probs(ds)


def test_missing_rows(tmp_path, ds, probs):
    path = write_policy_file(ds, probs, tmp_path / "p.parquet")
    df = FilePolicy(path)._df().iloc[1:]
    with pytest.raises(PolicyError, match="1 dataset rows have no probabilities"):
        FilePolicy(frame=df).action_probs(ds)


def test_bad_sums(tmp_path, ds, probs):
    path = write_policy_file(ds, probs, tmp_path / "p.parquet")
    df = FilePolicy(path)._df().copy()
    df.loc[df.index[:3], "p_0"] += 0.1
    with pytest.raises(PolicyError, match="probabilities of 3 rows do not sum to 1 within 1e-06"):
        FilePolicy(frame=df).action_probs(ds)


def test_bad_keys_and_actions(tmp_path, ds, probs):
    path = write_policy_file(ds, probs, tmp_path / "p.parquet", form="long")
    df = FilePolicy(path)._df()
    with pytest.raises(PolicyError, match="key column"):
        FilePolicy(frame=df.drop(columns=["week"])).action_probs(ds)
    bad = df.copy()
    bad.loc[bad.index[0], "action"] = 17
    with pytest.raises(PolicyError, match=r"action outside \[0, 6\)"):
        FilePolicy(frame=bad).action_probs(ds)
    with pytest.raises(PolicyError, match="expected columns 'action' and 'prob'"):
        FilePolicy(frame=df[["member_id", "week"]]).action_probs(ds)


def test_no_overwrite(tmp_path, ds, probs):
    p = write_policy_file(ds, probs, tmp_path / "p.parquet")
    with pytest.raises(FileExistsError):
        write_policy_file(ds, probs, p)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
@pytest.mark.parametrize("form", ["wide", "long"])
def test_streamed_policy_file_equals_the_whole_file(tmp_path, suffix, form):
    """Chunk-by-chunk writing gives the file written at once (row order aside)."""
    import copy

    from equicare.data import Manifest, iter_chunks, load_dataset
    from equicare.policy import read_policy_file, write_policy_file, write_policy_stream
    from tests.conftest import MANIFEST, make_frame

    frame = make_frame(n_members=60, seed=2)
    panel = tmp_path / "panel.parquet"
    frame.to_parquet(panel, index=False)
    man = Manifest.from_dict(copy.deepcopy(MANIFEST))
    ds = load_dataset(panel, man, emit_warnings=False)

    def probs(d):
        p = np.abs(np.sin(np.outer(d.states[:, 0], np.arange(1, d.n_actions + 1)))) + 0.01
        return p / p.sum(axis=1, keepdims=True)

    whole = write_policy_file(ds, probs(ds), tmp_path / f"whole{suffix}", form=form)
    streamed = write_policy_stream(
        ((c.dataset, probs(c.dataset)) for c in iter_chunks(panel, man, chunk_rows=20)),
        tmp_path / f"streamed{suffix}", form=form)
    a = read_policy_file(whole).sort_values(["member_id", "week"] + (
        ["action"] if form == "long" else [])).reset_index(drop=True)
    b = read_policy_file(streamed).sort_values(list(a.columns[:2]) + (
        ["action"] if form == "long" else [])).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_policy_stream([], streamed)
    with pytest.raises(InvalidParameterError,
                       match=r"The 'chunks' parameter of write_policy_stream must yield at least"):
        write_policy_stream([], tmp_path / f"empty{suffix}")
    assert not (tmp_path / f".empty{suffix}.tmp").exists()


def test_large_parquet_is_read_for_the_asked_episodes_only(tmp_path, ds, probs, monkeypatch):
    """A Parquet file above ROW_BLOCK_ELEMENTS cells is never read whole: each call reads the
    rows of its dataset's episodes (memory follows the chunk), results as from the whole file;
    a pickled policy carries no rows."""
    import pickle

    from equicare import utils
    from equicare.policy import write_policy_stream

    n_e = ds.n_episodes
    blocks = [ds.subset(np.arange(lo, min(lo + 5, n_e))) for lo in range(0, n_e, 5)]
    offs = ds.episode_offsets
    parts = [(b, probs[offs[lo]:offs[min(lo + 5, n_e)]])
             for b, lo in zip(blocks, range(0, n_e, 5), strict=True)]
    path = write_policy_stream(parts, tmp_path / "p.parquet")  # one row group per block
    monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", 50)

    def no_whole_read(*a, **k):
        raise AssertionError("the whole policy file was read")

    monkeypatch.setattr(pd, "read_parquet", no_whole_read)
    read: list[int] = []
    real = FilePolicy._read_episodes

    def spy(self, ep_col, ids):
        df, rows = real(self, ep_col, ids)
        read.append(len(df))
        return df, rows

    monkeypatch.setattr(FilePolicy, "_read_episodes", spy)
    fp = FilePolicy(path)
    for b, p in parts:
        np.testing.assert_array_equal(fp.action_probs(b), p)
        assert read[-1] == b.n_steps  # only this block's rows
    np.testing.assert_array_equal(fp.action_probs(ds), probs)
    back = pickle.loads(pickle.dumps(fp))
    assert back._table == {} and fp._table  # the per-process cache stays behind
    np.testing.assert_array_equal(back.action_probs(blocks[1]), parts[1][1])
    # long form too, with a file whose rows are shuffled
    long = tmp_path / "long.parquet"
    write_policy_file(ds, probs, tmp_path / "l.csv", form="long")
    pd.read_csv(tmp_path / "l.csv").sample(frac=1.0, random_state=0).to_parquet(
        long, index=False, row_group_size=40)
    np.testing.assert_allclose(FilePolicy(long).action_probs(blocks[2]), parts[2][1],
                               atol=1e-15)


@pytest.mark.parametrize("limit", [None, 50])
def test_returned_probabilities_are_the_callers_own(tmp_path, ds, probs, monkeypatch, limit):
    """Whether the file is indexed once and kept (small) or read for the call alone (large,
    returned without a copy when the rows are in the file's order), a caller that writes into
    the result changes nothing a later call returns; shuffled rows are served in dataset order."""
    from equicare import utils

    if limit is not None:
        monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", limit)
    path = write_policy_file(ds, probs, tmp_path / "p.parquet")
    fp = FilePolicy(path)
    first = fp.action_probs(ds)
    first[:] = -1.0
    np.testing.assert_array_equal(fp.action_probs(ds), probs)
    shuffled = tmp_path / "s.parquet"
    pd.read_parquet(path).sample(frac=1.0, random_state=1).to_parquet(shuffled, index=False)
    np.testing.assert_array_equal(FilePolicy(shuffled).action_probs(ds), probs)


def test_long_form_action_labels(tmp_path, ds, probs):
    """``action`` may hold the manifest's labels; anything else is a PolicyError (exit 2)."""
    path = write_policy_file(ds, probs, tmp_path / "p.csv", form="long")
    df = pd.read_csv(path)
    labels = np.asarray(ds.action_space.labels(), dtype=object)
    df["action"] = labels[df["action"].to_numpy()]
    np.testing.assert_allclose(FilePolicy(frame=df).action_probs(ds), probs, atol=1e-12)
    df.loc[df.index[2], "action"] = "fax/urgent"
    with pytest.raises(PolicyError, match=r"column 'action' must hold the flat action index "
                       r"\(an integer in \[0, 6\)\) or an action label of the manifest such as "
                       r"'none/routine'; 1 rows do not \(first: row 2 \(member_id="):
        FilePolicy(frame=df).action_probs(ds)
    wide = pd.read_csv(write_policy_file(ds, probs, tmp_path / "w.csv"))
    wide = wide.rename(columns={f"p_{i}": f"p_{lab}" for i, lab in enumerate(labels)})
    np.testing.assert_allclose(FilePolicy(frame=wide).action_probs(ds), probs, atol=1e-12)


def test_messages_name_the_file_row_key_and_column(tmp_path, ds, probs):
    """Probability errors name the policy file's own row, its key and the column."""
    path = write_policy_file(ds, probs, tmp_path / "p.csv")
    df = pd.read_csv(path).sample(frac=1.0, random_state=3).reset_index(drop=True)
    ep, wk = df.loc[5, "member_id"], df.loc[5, "week"]
    bad = df.copy()
    bad.loc[5, "p_0"] += 0.1
    with pytest.raises(PolicyError, match=rf"probabilities of 1 rows do not sum to 1 within "
                       rf"1e-06 \(first: row 5 \(member_id={ep!r}, week={wk}\) sums to 1\.1"):
        FilePolicy(frame=bad).action_probs(ds)
    bad = df.copy()
    bad.loc[5, "p_2"] = np.nan
    with pytest.raises(PolicyError, match=rf"1 rows have negative or non-finite probabilities "
                       rf"\(first: row 5 \(member_id={ep!r}, week={wk}\) p_2=nan; 0-based"):
        FilePolicy(frame=bad).action_probs(ds)
    long = pd.read_csv(write_policy_file(ds, probs, tmp_path / "l.csv", form="long"))
    long.loc[7, "prob"] = -0.5
    with pytest.raises(PolicyError, match=r"prob=-0\.5 at row 7; 0-based data rows"):
        FilePolicy(frame=long).action_probs(ds)



def test_wide_file_with_too_few_columns(tmp_path, ds, probs):
    path = write_policy_file(ds, probs, tmp_path / "p.csv")
    df = pd.read_csv(path).drop(columns=["p_3", "p_4", "p_5"])
    with pytest.raises(PolicyError, match=r"has p_0\.\.p_2; the dataset has 6 actions "
                       r"\(p_3\.\.p_5 missing\)"):
        FilePolicy(frame=df).action_probs(ds)


def test_large_csv_is_read_in_batches_for_the_asked_episodes_only(tmp_path, ds, probs,
                                                                  monkeypatch):
    """A CSV file above 8 * ROW_BLOCK_ELEMENTS bytes is never read whole: each call keeps the
    rows of its dataset's episodes, reading the file in batches of _BATCH_ROWS rows; results
    and messages as from the Parquet file (and the whole file)."""
    from equicare import utils
    from equicare.policy import _file

    n_e = ds.n_episodes
    blocks = [ds.subset(np.arange(lo, min(lo + 5, n_e))) for lo in range(0, n_e, 5)]
    offs = ds.episode_offsets
    for form in ("wide", "long"):
        pq_path = write_policy_file(ds, probs, tmp_path / f"{form}.parquet", form=form)
        csv_path = tmp_path / f"{form}.csv"  # rows shuffled: an episode spans batches
        pd.read_parquet(pq_path).sample(frac=1.0, random_state=1).to_csv(
            csv_path, index=False, float_format="%.17g")
        monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", 50)
        monkeypatch.setattr(_file, "_BATCH_ROWS", 16)
        real_read_csv = pd.read_csv

        def batched_only(*a, real_read_csv=real_read_csv, **k):
            assert k.get("nrows") == 0 or k.get("chunksize") == 16, "the whole file was read"
            return real_read_csv(*a, **k)

        monkeypatch.setattr(pd, "read_csv", batched_only)
        batches: list[int] = []
        real_batches = FilePolicy._csv_batches

        def counted(self, usecols=None, labels=(), real_batches=real_batches,
                    batches=batches):
            for df in real_batches(self, usecols, labels):
                batches.append(len(df))
                yield df

        monkeypatch.setattr(FilePolicy, "_csv_batches", counted)
        kept: list[int] = []
        real = FilePolicy._read_episodes

        def spy(self, ep_col, ids, real=real, kept=kept):
            df, rows = real(self, ep_col, ids)
            kept.append(len(df))
            return df, rows

        monkeypatch.setattr(FilePolicy, "_read_episodes", spy)
        fcsv, fpq = FilePolicy(csv_path), FilePolicy(pq_path)
        assert fcsv.n_actions == fpq.n_actions == ds.n_actions
        for lo, b in zip(range(0, n_e, 5), blocks, strict=True):
            got = fcsv.action_probs(b)
            np.testing.assert_array_equal(got, fpq.action_probs(b))
            np.testing.assert_allclose(got, probs[offs[lo]:offs[min(lo + 5, n_e)]],
                                       atol=1e-15)
            assert kept[-2] == b.n_steps * (ds.n_actions if form == "long" else 1) - (
                int((probs[offs[lo]:offs[min(lo + 5, n_e)]] == 0).sum()) if form == "long"
                else 0)  # only this block's rows are kept
        assert batches and max(batches) <= 16
        assert not any(k == "df" or (isinstance(k, tuple) and k[0] == "df")
                       for k in fcsv._table)  # never read whole
        monkeypatch.undo()
    # the same messages as the whole file's, with the file's own row numbers
    monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", 50)
    monkeypatch.setattr(_file, "_BATCH_ROWS", 16)
    bad = pd.read_csv(write_policy_file(ds, probs, tmp_path / "w.csv"))
    bad.loc[40, "p_0"] += 0.1
    bad.to_csv(tmp_path / "bad.csv", index=False, float_format="%.17g")
    ep, wk = bad.loc[40, "member_id"], bad.loc[40, "week"]
    with pytest.raises(PolicyError, match=rf"probabilities of 1 rows do not sum to 1 within "
                       rf"1e-06 \(first: row 40 \(member_id={ep!r}, week={wk}\) sums to 1\.1"):
        FilePolicy(tmp_path / "bad.csv").action_probs(ds)
    short = bad.drop(index=np.flatnonzero(bad["member_id"] == ds.episode_ids[3]))
    short.loc[40, "p_0"] -= 0.1
    short.to_csv(tmp_path / "short.csv", index=False, float_format="%.17g")
    with pytest.raises(PolicyError, match=r"dataset rows have no probabilities"):
        FilePolicy(tmp_path / "short.csv").action_probs(blocks[0])


@pytest.mark.usefixtures("low_ess_warned")  # 40 make_frame episodes: WIS on an ESS of 4.8
def test_streamed_evaluation_with_a_large_csv_policy_equals_parquet(tmp_path, manifest_dict,
                                                                     monkeypatch):
    """evaluate_stream with a CSV policy file read per chunk: the Parquet file's numbers."""
    import json

    from equicare.data import Manifest
    from equicare.ope import evaluate_stream
    from equicare.policy import _file

    frame = make_frame(40, seed=4)
    panel = tmp_path / "panel.parquet"
    frame.to_parquet(panel, index=False)
    man = Manifest.from_dict(manifest_dict)
    big = from_frame(frame, manifest_dict, emit_warnings=False)
    p = np.random.default_rng(1).dirichlet(np.ones(big.n_actions), size=big.n_steps)
    pq_path = write_policy_file(big, p, tmp_path / "pol.parquet")
    csv_path = write_policy_file(big, p, tmp_path / "pol.csv")
    # the CSV file is "large" (the Parquet one is read whole: the reference numbers)
    monkeypatch.setattr(_file, "_CSV_CELL_BYTES", 0)
    monkeypatch.setattr(_file, "_BATCH_ROWS", 16)
    reads: list[int] = []
    real = FilePolicy._read_csv_episodes

    def spy(self, ep_col, ids):
        out = real(self, ep_col, ids)
        reads.append(len(out[0]))
        return out

    monkeypatch.setattr(FilePolicy, "_read_csv_episodes", spy)
    kw = {"manifest": man, "estimators": ["wis", "pdis", "dr"], "q_model": "linear",
          "n_boot": 30, "chunk_rows": 30, "random_state": 2}
    a = evaluate_stream(panel, FilePolicy(pq_path), **kw)
    b = evaluate_stream(panel, FilePolicy(csv_path), **kw)
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)
    assert len(reads) > 2 and max(reads) < big.n_steps  # chunk by chunk, never the whole file


def test_long_form_keys_are_factorized_as_the_multiindex_is():
    """The packed (episode, time) keys give pd.factorize's codes and keys (first appearance),
    also with negative times and with times too wide to pack (the MultiIndex fallback)."""
    import pandas as pd

    from equicare.policy._file import _factorize_keys

    rng = np.random.default_rng(0)
    for t_scale in (1, 10**17):
        ep = rng.integers(0, 50, 2000).astype(np.int64)
        t = (rng.integers(-5, 40, 2000) * t_scale).astype(np.int64)
        codes, key_ep, key_t = _factorize_keys(ep, t)
        ref_codes, ref_keys = pd.factorize(pd.MultiIndex.from_arrays([ep, t]))
        np.testing.assert_array_equal(codes, ref_codes)
        np.testing.assert_array_equal(key_ep, ref_keys.get_level_values(0))
        np.testing.assert_array_equal(key_t, ref_keys.get_level_values(1))
    empty = _factorize_keys(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert all(a.size == 0 for a in empty)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_mixed_episode_ids_of_a_csv_panel_round_trip_through_a_policy_file(tmp_path, suffix):
    """Zero-padded member ids in a CSV (labels read as written): '0000254' stays text and
    '1234567' is the integer, so the ids are a mix of str and int. predict's Parquet file
    could not hold them (ArrowInvalid, an internal error, exit 1, on an 8,000-member diabetes
    panel). They are written as the text they were read from, and match the panel's ids."""
    from equicare.data import load_dataset

    from ..conftest import MANIFEST

    frame = make_frame(20, seed=4)
    ids = {m: (f"{i:07d}" if i % 3 else f"{1_000_000 + i}")  # some with a leading zero
           for i, m in enumerate(sorted(frame["member_id"].unique()))}
    frame["member_id"] = frame["member_id"].map(ids)
    panel = tmp_path / "panel.csv"
    frame.to_csv(panel, index=False)
    ds = load_dataset(panel, MANIFEST, emit_warnings=False)
    kinds = {type(x) for x in ds.episode_ids}
    assert kinds == {str, int}, kinds  # the mix this is about
    probs = np.full((ds.n_steps, ds.n_actions), 1.0 / ds.n_actions)
    probs[:, 0] += 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    out = write_policy_file(ds, probs, tmp_path / f"p{suffix}")
    np.testing.assert_allclose(FilePolicy(out).action_probs(ds), probs)
    # the Parquet copy of the panel (ids all text) is served by the same file
    frame.astype({"member_id": str}).to_parquet(tmp_path / "panel.parquet", index=False)
    ds2 = load_dataset(tmp_path / "panel.parquet", MANIFEST, emit_warnings=False)
    got = FilePolicy(out).action_probs(ds2)
    np.testing.assert_allclose(got, np.broadcast_to(probs[0], probs.shape))  # rows alike
