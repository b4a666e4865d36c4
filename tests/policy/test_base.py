from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from equicare.data import from_frame
from equicare.exceptions import PolicyError
from equicare.policy import (
    CallablePolicy,
    FixedActionPolicy,
    MixturePolicy,
    Policy,
    TabularPolicy,
    UniformPolicy,
    check_probs,
    sample_actions,
)

from ..conftest import make_frame


@pytest.fixture
def ds(manifest_dict):
    return from_frame(make_frame(20), manifest_dict, emit_warnings=False)


def test_simple_policies(ds):
    u = UniformPolicy(6).action_probs(ds)
    np.testing.assert_allclose(u, 1 / 6)
    f = FixedActionPolicy(4, 6).action_probs(ds)
    assert (f[:, 4] == 1).all()
    mask = np.array([1, 1, 0, 0, 0, 0], bool)
    np.testing.assert_allclose(UniformPolicy(6, mask).action_probs(ds)[0], [0.5, 0.5, 0, 0, 0, 0])
    m = MixturePolicy([UniformPolicy(6), FixedActionPolicy(0, 6)], [0.4, 0.6]).action_probs(ds)
    np.testing.assert_allclose(m[:, 0], 0.6 + 0.4 / 6)
    assert isinstance(UniformPolicy(6), Policy)


def test_callable_and_tabular(ds):
    def fn(x):
        p = np.zeros((x.shape[0], 6))
        p[:, 0] = x[:, 0] > 0
        p[:, 1] = 1 - p[:, 0]
        return p

    p = CallablePolicy(fn, 6).action_probs(ds)
    np.testing.assert_array_equal(p[:, 0], ds.states[:, 0] > 0)
    table = np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1.0]])
    t = TabularPolicy(table).action_probs(ds)
    np.testing.assert_array_equal(t[:, 5], ds.categorical[:, 0])
    with pytest.raises(PolicyError, match="do not sum to 1"):
        CallablePolicy(lambda x: np.full((x.shape[0], 6), 0.2), 6).action_probs(ds)


def test_check_probs_messages():
    with pytest.raises(PolicyError, match=r"must have shape \(2, 3\)"):
        check_probs(np.ones((2, 2)), 2, 3)
    with pytest.raises(PolicyError, match="negative or non-finite"):
        check_probs(np.array([[1.5, -0.5]]), 1, 2)


def test_a_path_or_text_in_place_of_probabilities_is_a_policy_error(tmp_path, manifest_dict):
    """evaluate(dataset, "model_dir") was "ValueError: could not convert string to float"."""
    from equicare.policy._base import MSG_PATH_NOT_PROBS

    for path in ("/nope/model", tmp_path):
        with pytest.raises(PolicyError, match=re.escape(MSG_PATH_NOT_PROBS.format(
                source="target policy", path=str(path)))):
            check_probs(path, 2, 3, source="target policy")
    with pytest.raises(PolicyError, match=re.escape(
            "policy: expected a Policy or an array of action probabilities of shape (1, 2); got "
            "list that is not numbers")):
        check_probs([["a", "b"]], 1, 2)
    # the library's entry points: evaluate and audit take a Policy or a matrix, not a path
    from equicare.fairness import audit
    from equicare.ope import evaluate

    ds = from_frame(make_frame(80, seed=1), manifest_dict, emit_warnings=False)
    for call, source in ((lambda: evaluate(ds, "/nope/model"), "target policy probabilities"),
                         (lambda: audit(ds, {"x": "/nope/model"}, group="sex", n_boot=0), "x")):
        with pytest.raises(PolicyError, match=re.escape(MSG_PATH_NOT_PROBS.format(
                source=source, path="/nope/model"))):
            call()


@given(st.integers(0, 1000))
def test_sample_actions_respects_support(seed):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(5), size=200)
    p[:, 2] = 0
    p /= p.sum(1, keepdims=True)
    a = sample_actions(p, rng)
    assert ((a >= 0) & (a < 5)).all() and (a != 2).all()


def test_sample_actions_frequencies():
    rng = np.random.default_rng(0)
    p = np.tile([0.1, 0.6, 0.3], (200_000, 1))
    freq = np.bincount(sample_actions(p, rng), minlength=3) / 200_000
    np.testing.assert_allclose(freq, [0.1, 0.6, 0.3], atol=4e-3)


def test_check_probs_finds_bad_rows_in_any_block(monkeypatch):
    from equicare import utils

    monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", 6)  # blocks of 3 rows of 2 actions
    p = np.full((10, 2), 0.5)
    p[8] = [1.5, -0.5]
    with pytest.raises(PolicyError, match=re.escape("1 rows have negative or non-finite "
                                                    "probabilities (first rows: [8])")):
        check_probs(p, 10, 2)


def test_every_library_policy_satisfies_the_protocol_under_mypy_strict(monkeypatch):
    """Policy.n_actions is read-only: the library's policies (properties, frozen dataclass
    fields) satisfy it under ``mypy --strict`` (a settable member refused all of them)."""
    from pathlib import Path

    import equicare

    api = pytest.importorskip("mypy.api")
    root = Path(__file__).resolve().parents[2]
    # the equicare under test (not an installed copy elsewhere) is the one mypy reads
    monkeypatch.setenv("MYPYPATH", str(Path(equicare.__file__).resolve().parents[1]))
    out, err, status = api.run([
        "--config-file", str(root / "pyproject.toml"), "--cache-dir",
        str(root / ".mypy_cache"), "--strict", str(Path(__file__).with_name("_typing_check.py"))])
    assert status == 0, out + err
