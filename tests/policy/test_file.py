from __future__ import annotations

import numpy as np
import pytest

from equicare.data import from_frame
from equicare.exceptions import PolicyError
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
