"""Average-reward LSTD with action-blocked designs: sparse / blockwise = dense, and small."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

import equicare.utils as utils
from equicare.causal import DynamicMediation, _dynamic
from equicare.causal._basis import action_tensor, combine
from equicare.causal._lstd import (
    MixedDesign,
    action_design,
    gram_entries,
    level_action_design,
    lstd_average,
    lstd_blocks,
    tikhonov_solve,
)
from equicare.sim.mediation import random_mediation_mdp


def _problem(n: int, n_actions: int, q: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.integers(n_actions, size=n)
    f, fn = rng.normal(size=(n, q)), rng.normal(size=(n, q))
    w = rng.dirichlet(np.ones(n_actions), size=n)  # a stochastic policy at the next state
    y = rng.normal(size=(n, 3))
    return a, f, fn, w, y


def test_action_design_and_mixed_design_are_the_dense_designs():
    a, f, fn, w, _ = _problem(50, 4, 3)
    x = action_design(a, f, 4)
    np.testing.assert_array_equal(x.toarray(), action_tensor(a, f, 4))
    xi = MixedDesign(w, fn)
    dense = (w[:, :, None] * fn[:, None, :]).reshape(50, -1)
    np.testing.assert_array_equal(xi.toarray(), dense)
    beta = np.random.default_rng(1).normal(size=12)
    np.testing.assert_allclose(xi @ beta, dense @ beta, rtol=1e-12)
    np.testing.assert_allclose(x @ beta, action_tensor(a, f, 4) @ beta, rtol=1e-12)
    np.testing.assert_allclose(xi.colsum(), dense.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("block", [None, 40])
def test_blockwise_lstd_equals_the_dense_solution(monkeypatch, block):
    if block is not None:  # several row blocks per action
        monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", block)
    a, f, fn, w, y = _problem(600, 5, 3)
    x, xi = action_design(a, f, 5), MixedDesign(w, fn)
    fits = lstd_blocks(x, xi, y, 1e-4)
    assert len(fits) == 3
    for j, fit in enumerate(fits):
        ref = lstd_average(x.toarray(), xi.toarray(), y[:, j], 1e-4)
        assert abs(fit.eta - ref.eta) < 1e-8
        np.testing.assert_allclose(fit.beta, ref.beta, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(fit.influence, ref.influence, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="not an action_design"):
        lstd_blocks(sp.csr_matrix(x.toarray() + 1.0), xi, y)


def test_gram_of_a_one_hot_design_holds_only_its_non_zero_entries():
    """A one-hot basis over 400 state levels: the design stores q = 401 entries a row, nearly
    all zeros; its Gram is computed over the non-zeros (n q^2 work before: 137 of 186 s of a
    mediation on a 700-level panel), and the LSTD solution is the dense one."""
    rng = np.random.default_rng(3)
    n, n_actions, levels = 3000, 2, 400
    s, sn = rng.integers(levels, size=n), rng.integers(levels, size=n)
    f = np.column_stack([np.ones(n), np.eye(levels)[s]])
    fn = np.column_stack([np.ones(n), np.eye(levels)[sn]])
    a = rng.integers(n_actions, size=n)
    x, xi = action_design(a, f, n_actions), MixedDesign(rng.dirichlet([1.0, 1.0], n), fn)
    assert x.nnz == n * (levels + 1)                    # zeros stored: lstd_blocks' contract
    gram = gram_entries(x)
    dense = action_tensor(a, f, n_actions)
    assert gram.nnz == np.count_nonzero(dense.T @ dense) < 4 * n
    assert x.nnz == n * (levels + 1)                    # the caller's design is left whole
    np.testing.assert_allclose(gram.toarray(), dense.T @ dense, rtol=0, atol=1e-12)
    y = rng.normal(size=(n, 1))
    fit, = lstd_blocks(x, xi, y, 1e-4)
    ref = lstd_average(dense, xi.toarray(), y[:, 0], 1e-4)
    assert abs(fit.eta - ref.eta) < 1e-8
    np.testing.assert_allclose(fit.beta, ref.beta, rtol=1e-7, atol=1e-8)


def test_blockwise_lstd_memory_is_linear_in_rows():
    """300 actions x 8 features, 20,000 rows: one dense design would be 384 MB; the fit needs
    the (A q)^2 normal matrix and temporaries of the size of the policy weights (n x A)."""
    n, n_actions, q = 20_000, 300, 8
    a, f, fn, w, y = _problem(n, n_actions, q)
    x, xi = action_design(a, f, n_actions), MixedDesign(w, fn)
    p = n_actions * q
    tracemalloc.start()
    try:
        lstd_blocks(x, xi, y[:, 0], 1e-4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense = n * p * 8
    normal = (p + 1) ** 2 * 8
    print(f"\npeak {peak / 1e6:.1f} MB; one dense design {dense / 1e6:.0f} MB, "
          f"normal matrix {normal / 1e6:.1f} MB")
    weights = n * n_actions * 8
    assert peak < normal + 2 * weights and peak < dense / 2


def test_mediation_never_forms_the_dense_designs_and_matches_them(monkeypatch):
    """The estimate with the blockwise LSTD equals the one with the dense designs (to 1e-8),
    and the designs handed to LSTD are sparse / factored (linear in rows, not n x A q)."""
    mdp = random_mediation_mdp(4, 5, 2, random_state=0)
    data = mdp.sample(150, 20, random_state=0)
    target = mdp.policy_fn(np.full((4, 5), 0.2))
    control = mdp.policy_fn(np.eye(5)[np.zeros(4, dtype=int)] * 0.6 + 0.08)
    est = DynamicMediation(n_bootstrap=0, estimators=("dm", "mr"))
    seen: list[dict] = []
    q_features = _dynamic._Run.q_features

    def spy(self, idx, q):
        seen.append(q_features(self, idx, q))
        return seen[-1]

    monkeypatch.setattr(_dynamic._Run, "q_features", spy)
    blocks = est.estimate(data, target, control, random_state=0).to_frame()
    # e_A (x) phi stores phi's q entries a row; e_A (x) h(phi, onehot(M)) (two mediator levels)
    # stores them too, not the 2 q of h (level_action_design)
    for key, k in (("x", 1), ("x4", 2)):
        assert sp.issparse(seen[0][key]) and seen[0][key].nnz * 5 * k == seen[0][key].shape[0] * \
            seen[0][key].shape[1]
    for key in ("xi_e", "xi_0", "xi4"):
        assert isinstance(seen[0][key], MixedDesign)

    def dense(x, xi, y, ridge):
        return [lstd_average(x.toarray(), xi.toarray(), col, ridge) for col in
                np.asarray(y).reshape(len(y), -1).T]

    monkeypatch.setattr(_dynamic, "lstd_blocks", dense)
    ref = est.estimate(data, target, control, random_state=0).to_frame()
    np.testing.assert_allclose(blocks["value"], ref["value"], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(blocks["se"], ref["se"], rtol=1e-8, atol=1e-8)


def test_sparse_features_give_the_dense_solution():
    """Sparse features (one-hot states) keep both designs sparse: same eta, beta, influence."""
    a, f, fn, w, y = _problem(600, 3, 8, seed=3)
    mask = np.random.default_rng(4).random(f.shape) < 0.25
    f, fn = f * mask, fn * mask
    dense = lstd_blocks(action_design(a, f, 3), MixedDesign(w, fn), y)
    x = action_design(a, sp.csr_matrix(f), 3)
    assert sp.issparse(x) and x.nnz == np.count_nonzero(f)
    sparse = lstd_blocks(x, MixedDesign(w, sp.csr_matrix(fn)), y)
    for d, s in zip(dense, sparse, strict=True):
        assert abs(d.eta - s.eta) < 1e-10
        np.testing.assert_allclose(s.beta, d.beta, atol=1e-8)
        np.testing.assert_allclose(s.influence, d.influence, atol=1e-8)


def test_a_folds_designs_are_freed_before_the_next_ones_are_built(monkeypatch):
    """The LSTD designs of one set of rows (training or evaluation, of any fold) are freed
    before the next are built: each is several times those rows of the basis, and the old
    loop kept the training fold's alive across the evaluation rows and the next fold (3.5 GB
    of the 3.9 GB peak of a mediation on a 358,000-row daily panel)."""
    import weakref

    mdp = random_mediation_mdp(4, 5, 2, random_state=0)
    data = mdp.sample(150, 20, random_state=0)
    target = mdp.policy_fn(np.full((4, 5), 0.2))
    control = mdp.policy_fn(np.eye(5)[np.zeros(4, dtype=int)] * 0.6 + 0.08)
    alive: list[weakref.ref] = []
    calls = []
    q_features = _dynamic._Run.q_features

    def spy(self, idx, q):
        calls.append(sum(r() is not None for r in alive))
        f = q_features(self, idx, q)
        alive.extend(weakref.ref(v) for v in f.values() if sp.issparse(v))
        return f

    monkeypatch.setattr(_dynamic._Run, "q_features", spy)
    DynamicMediation(n_bootstrap=0, estimators=("dm", "mr"), n_folds=3).estimate(
        data, target, control, random_state=0)
    assert len(calls) >= 3 and calls == [0] * len(calls)


@pytest.mark.parametrize("block", [None, 40])
def test_level_design_is_the_joint_design_with_its_zeros_left_out(monkeypatch, block):
    """A discrete mediator's joint design ``e_a (x) f (x) onehot(m)`` stores f's entries only
    (the q K of the joint features were stored, K - 1 of every K zeros); LSTD on it is the
    dense solution."""
    if block is not None:  # several row blocks per action
        monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", block)
    a, f, fn, w, y = _problem(600, 3, 4, seed=5)
    levels = np.random.default_rng(6).integers(3, size=600)
    x = level_action_design(a, f, levels, 3, 3)
    joint = combine(f, np.eye(3)[levels], True, 1)
    assert x.nnz == f.size and np.shares_memory(x.data, f)
    np.testing.assert_array_equal(x.toarray(), action_design(a, joint, 3).toarray())
    xi = MixedDesign(w, combine(fn, np.random.default_rng(7).dirichlet(np.ones(3), 600), True, 1))
    fits = lstd_blocks(x, xi, y)
    for j, fit in enumerate(fits):
        ref = lstd_average(x.toarray(), xi.toarray(), y[:, j])
        assert abs(fit.eta - ref.eta) < 1e-8
        np.testing.assert_allclose(fit.beta, ref.beta, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(fit.influence, ref.influence, rtol=1e-8, atol=1e-8)


def test_designs_and_their_gram_need_no_copy_of_all_stored_entries():
    """action_design builds its column indices in the dtype scipy keeps (int32), and the Gram
    of a mostly-zero design copies its non-zeros only. Before: an int64 index array of n q
    entries (the size of f) as a temporary, and a copy of every stored entry (12 bytes each)
    before the zeros were dropped."""
    rng = np.random.default_rng(8)
    n, q = 40_000, 30
    f = rng.normal(size=(n, q)) * (rng.random((n, q)) < 0.1)   # 10% non-zeros
    a = rng.integers(2, size=n)
    tracemalloc.start()
    try:
        x = action_design(a, f, 2)
        _, peak_design = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        gram = gram_entries(x)
        peak_gram = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    dense = f.T @ f
    np.testing.assert_allclose(gram.toarray()[:q, :q] + gram.toarray()[q:, q:], dense,
                               rtol=1e-12, atol=1e-9)
    assert x.indices.dtype == np.int32
    assert peak_design < 0.6 * f.nbytes, peak_design / f.nbytes        # 0.52; old: 1.55
    stored = x.data.nbytes + x.indices.nbytes
    assert peak_gram < 0.5 * stored, peak_gram / stored                # 0.30; old: 1.04


def test_tikhonov_solve_is_the_exact_solution_when_well_posed_and_passes_no_pole():
    """Regularised on the equations, ``eta`` is the exact solve's for a well-conditioned
    system, and moves smoothly with the penalty where ``A + lam D`` turns singular: a system
    with a negative eigenvalue -1e-4, whose ridge solution has a pole at lam = 1e-4."""
    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 6)) + 6 * np.eye(6)
    b = rng.normal(size=(6, 2))
    theta, u = tikhonov_solve(A, b, 1e-12)
    np.testing.assert_allclose(theta, np.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(u, np.linalg.solve(A.T, np.eye(6)[0]), rtol=1e-8, atol=1e-10)
    # batched, as the bootstrap refit calls it
    tb, ub = tikhonov_solve(np.stack([A, 2 * A]), np.stack([b, b]), np.array([1e-12, 1e-12]))
    np.testing.assert_allclose(tb[1], np.linalg.solve(2 * A, b), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ub[0], u, rtol=1e-8, atol=1e-10)
    # a well-conditioned system with a negative eigenvalue, -0.01: A + lam D is singular at
    # some lam > 0 (found as a generalised eigenvalue), where the ridge's eta has a pole
    from scipy.linalg import eigvals

    Q = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    A = Q @ np.diag([1.0, 2.0, 1.5, -0.01, 3.0, 1.2]) @ Q.T
    b = rng.normal(size=(6, 1))
    D = np.diag([0.0, *[1.0] * 5])
    lam = eigvals(A, -D)
    pole = float(min(v.real for v in lam if np.isfinite(v) and abs(v.imag) < 1e-12 and v.real > 0))
    exact = np.linalg.solve(A, b)[0, 0]
    ridge_eta = np.linalg.solve(A + pole * (1 + 1e-7) * D, b)[0, 0]
    assert abs(ridge_eta - exact) > 1e3 * abs(exact)
    for lam_t in (1e-12, 1e-8, 1e-6):
        eta_t = tikhonov_solve(A, b, lam_t)[0][0, 0]
        assert abs(eta_t - exact) < 0.05 * abs(exact), (lam_t, eta_t, exact)
