r"""Refitting cluster bootstrap of DM, MIS and the point-exposure baseline, all replicates at once.

A bootstrap replicate draws episodes with replacement: episode ``j`` enters ``W_bj`` times
(multinomial counts, the same law as MR's cluster bootstrap). Every nuisance model, Q-function
and density ratio is fitted again on the replicate, in the same cross-fitting folds (an episode
keeps its fold). Fitting on ``W_bj`` copies of each episode is fitting with row weights
``w_bi = W_{b, episode(i)}``, and the default models are weighted least squares, weighted
Newton iterations and weighted moment equations on the state basis: their normal equations for
all replicates of a chunk are built by products with the weight matrix and solved by one
batched :func:`numpy.linalg.solve`. So a replicate is, to 1e-8, the estimate on the resampled
panel with the full panel's feature maps (``tests/causal/test_refit.py`` checks it against
``DynamicMediation`` on the duplicated episodes), and no Python loop runs per replicate:
replicates are processed in chunks whose per-row arrays stay below a memory budget.

Every per-row input of the estimators except the reward is a function of the row's bases,
policy probabilities, action, mediator level and logged propensity, and the reward enters
every sum linearly: rows with equal inputs are merged into groups (:class:`_Groups`), whose
weights and reward sums for all replicates are one product ``W @ C`` with the
episode-by-group count matrix. With discrete states a fold's thousands of rows are a few
hundred groups; with continuous states every row is its own group. Sums that do not depend on
the replicate's models (the Gram matrices of the LSTD designs) are summed per episode once and
weighted by a matrix product; those that do (the LSTD reward targets, the G process's next
design, the ratios' transition weights) are batched products. Measured (one thread, 6,000
transitions, all estimators, 500 replicates): 0.3 s on toy 1 and 0.8 s on a 4-state,
3-level-mediator model (rerunning the estimator per replicate: about 85 s); 28 s on three
continuous state features (spline basis) with a binary mediator.

Only the default models on a discrete mediator are batched, and the refit runs when its
estimated work is below :data:`MAX_REFIT_WORK` (about a minute); :func:`refit_support` says why
it does not run, and the estimators then publish point estimates only.

The bootstrap's percentile interval of each effect and the standard deviation of its replicates
(its standard error) are made by :meth:`equicare.causal._dynamic._Run.refit_inference`.
Measured coverage: docs/mediation.md 'Inference'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.causal._basis import dense_rows
from equicare.causal._lstd import tikhonov_solve
from equicare.causal._nuisance import newton_objective, newton_rises, softmax0

if TYPE_CHECKING:
    from equicare.causal._dynamic import _Run

__all__ = ["bootstrap_counts", "refit_support", "refit_etas"]

#: Floats of a chunk's largest per-row, per-replicate array (32 MB): replicates per chunk.
_CHUNK_FLOATS = 1 << 22
#: Newton iterations of the weighted logistic fits (they stop when every step is below 1e-8).
_MAX_ITER = 50


def bootstrap_counts(rng: np.random.Generator, n_episodes: int, n_bootstrap: int
                     ) -> NDArray[np.float64]:
    """Episode counts of ``n_bootstrap`` cluster-bootstrap replicates, shape (B, N)."""
    return rng.multinomial(n_episodes, np.full(n_episodes, 1.0 / n_episodes),
                           size=n_bootstrap).astype(np.float64)


#: Estimated floating-point work of the batched refit above which it does not run, about a
#: minute on one thread (:func:`refit_work`; 5.2e10 took 28 s: 6,000 distinct transitions,
#: 19 spline features, a binary mediator, 500 replicates).
MAX_REFIT_WORK = 1e11
#: The refit does not run (:data:`MAX_REFIT_WORK`); tests match it.
TOO_MUCH_WORK = ("the panel is too large for it ({work:.1g} operations for {groups} distinct "
                 "transitions, {p} basis features and {b} replicates; fewer replicates or a "
                 "coarser basis)")


def refit_work(run: _Run) -> tuple[float, int, int]:
    """Estimated work of the refit: operations, distinct transitions and basis features.

    Per replicate and distinct transition (each is in a fold's training and evaluation rows):
    about 10 Newton steps of the mediator and behaviour logits (``p^2`` per class pair) and the
    G process's LSTD cross products (``A p^2 K``).
    """
    md, cfg = run.md, run.cfg
    p = max(int(run.basis(k)[0].shape[1]) for k in (cfg.basis, cfg.q_basis, cfg.ratio_basis))
    cols = [md.states, md.next_states, md.actions[:, None], md.mediators]
    if md.behavior_prob is not None:
        cols.append(md.behavior_prob[:, None])
    groups = int(np.unique(np.hstack([np.asarray(c, dtype=np.float64) for c in cols]),
                           axis=0).shape[0])
    A, K = md.n_actions, max(run.enc.n_levels, 1)
    per = 10 * p * p * ((K - 1) ** 2 + (A - 1) ** 2) + A * p * p * K
    return float(cfg.n_bootstrap) * 2 * groups * per, groups, p


def refit_support(run: _Run) -> str | None:
    """Why the refitting bootstrap does not run on this configuration, or None when it does."""
    cfg = run.cfg
    if any(m is not None for m in (cfg.reward_model, cfg.mediator_model, cfg.behavior_model)):
        return "a scikit-learn nuisance model is not batched"
    if not run.enc.discrete:
        return "a continuous mediator is not batched"
    if run.defers:
        return "a policy valued as deployed (states left to practice) is not batched"
    work, groups, p = refit_work(run)
    if work > MAX_REFIT_WORK:
        return TOO_MUCH_WORK.format(work=work, groups=groups, p=p, b=cfg.n_bootstrap)
    return None


# ------------------------------------------------------------------ weighted sums
def _wgram(w: NDArray[np.float64], X: NDArray[np.float64], Y: NDArray[np.float64]
           ) -> NDArray[np.float64]:
    """``X^T diag(w_b) Y`` for every row of ``w`` (B, n): shape (B, px, py), batched BLAS."""
    out: NDArray[np.float64] = np.matmul((w[:, :, None] * X[None]).transpose(0, 2, 1), Y)
    return out


# ------------------------------------------------------------------ batched nuisance models
def _ridge(w: NDArray[np.float64], wy: NDArray[np.float64], h: NDArray[np.float64],
           a: NDArray[np.int64], n_actions: int, ridge: float) -> NDArray[np.float64]:
    """Weighted :func:`~equicare.causal._nuisance.block_ridge_fit`: (B, n_actions, q).

    ``w`` (B, n) row weights, ``wy`` (B, n) weighted targets ``w_bi y_i``.
    """
    B, q = w.shape[0], h.shape[1]
    G = np.zeros((B, n_actions, q, q))
    rhs = np.zeros((B, n_actions, q))
    for k in range(n_actions):
        rows = np.flatnonzero(a == k)
        if rows.size:
            G[:, k] = _wgram(w[:, rows], h[rows], h[rows])
            rhs[:, k] = wy[:, rows] @ h[rows]
    lam = ridge * np.maximum((w @ (h * h).sum(axis=1)) / max(n_actions * q, 1), 1e-12)
    G += lam[:, None, None, None] * np.eye(q)
    return np.asarray(np.linalg.solve(G, rhs[..., None])[..., 0], dtype=np.float64)


def _logit(w: NDArray[np.float64], X: NDArray[np.float64], a: NDArray[np.int64],
           n_blocks: int, y: NDArray[np.int64], K: int, ridge: float, prior: float
           ) -> NDArray[np.float64]:
    """Weighted :class:`~equicare.causal._nuisance.BlockNewtonLogit` for every replicate.

    Row ``i`` of replicate ``b`` counts ``w_bi`` times (the likelihood, the gradient, the
    Hessian, and with ``prior`` the leverage pseudo-counts, which are those of the design with
    the row copied ``w_bi`` times). Newton's method for every replicate at once, each step
    one batched solve, until the largest step of every replicate is below 1e-8; it starts at
    the fit with the replicates' mean weights (from 0 for one replicate), the same optimum
    (the objective is concave) in fewer steps. The divergence guard of the single fits
    (:func:`~equicare.causal._nuisance.newton_rises`) holds per replicate and block: a step
    that would raise that replicate's objective in that block is not taken and the block
    stays at its best iterate (unguarded, the replicates of a 6-level mediator with rare
    levels on a near-collinear basis reached coefficients of 9e6).

    Returns
    -------
    ndarray of shape (B, n_blocks, p, K - 1)
    """
    B, p = w.shape[0], X.shape[1]
    coef = np.zeros((B, n_blocks, p, K - 1))
    if B > 1:    # start every replicate at the fit with their mean weights: fewer steps
        coef += _logit(w.mean(axis=0, keepdims=True), X, a, n_blocks, y, K, ridge, prior)
    Y = np.eye(K)[y]
    n_b = w.sum(axis=1)
    lam = ridge * n_b * np.maximum((w @ (X * X).sum(axis=1)) / (n_b * n_blocks * p), 1e-12)
    blocks = []
    for k in range(n_blocks):
        rows = np.flatnonzero(a == k)
        if not rows.size:
            continue
        Xk, wk = X[rows], w[:, rows]
        Yk, tot = wk[:, :, None] * Y[rows][None], wk
        if prior > 0:        # leverages in the weighted design (pinv: rank-deficient blocks)
            Ginv = np.linalg.pinv(_wgram(wk, Xk, Xk), hermitian=True)
            h = np.einsum("ni,bij,nj->bn", Xk, Ginv, Xk)
            Yk = Yk + prior * (wk * h)[:, :, None]
            tot = wk * (1.0 + K * prior * h)
        blocks.append((k, Xk, Yk[:, :, 1:], tot))
    eye = np.eye(p * (K - 1))
    # each block's X @ coef (reused) and objective per replicate; a rise stops (b, block)
    eta = {k: np.matmul(Xk[None], coef[:, k]) for k, Xk, _, _ in blocks}
    loss = {k: newton_objective(eta[k], Yk, coef[:, k], lam, tot) for k, _, Yk, tot in blocks}
    stopped = np.zeros((B, n_blocks), dtype=bool)
    for _ in range(_MAX_ITER):
        step = np.zeros_like(coef)
        for k, Xk, Yk, tot in blocks:
            P = softmax0(eta[k])[:, :, 1:]                                     # (B, n, K-1)
            g = (np.matmul(Xk.T[None], tot[:, :, None] * P - Yk)
                 + lam[:, None, None] * coef[:, k])                            # (B, p, K-1)
            H = np.empty((B, p, K - 1, p, K - 1))
            for j in range(K - 1):
                for m in range(j, K - 1):
                    hw = tot * P[:, :, j] * (float(j == m) - P[:, :, m])
                    blk = _wgram(hw, Xk, Xk)
                    H[:, :, j, :, m] = blk
                    H[:, :, m, :, j] = blk
            Hm = H.reshape(B, p * (K - 1), p * (K - 1)) + lam[:, None, None] * eye
            st = np.linalg.solve(Hm, g.reshape(B, -1, 1)).reshape(B, p, K - 1)
            trial = coef[:, k] - st
            eta_trial = np.matmul(Xk[None], trial)
            new = newton_objective(eta_trial, Yk, trial, lam, tot)
            stopped[:, k] |= newton_rises(new, loss[k])
            go = ~stopped[:, k]
            step[go, k] = st[go]
            eta[k][go], loss[k][go] = eta_trial[go], new[go]
        coef -= step
        if np.abs(step).max() < 1e-8:
            break
    return coef


def _block_dot(X: NDArray[np.float64], coef: NDArray[np.float64]) -> NDArray[np.float64]:
    """``X @ coef[b, a]`` of every replicate and block: (n, p) x (B, A, p, k) -> (B, n, A, k)."""
    B, A, p, k = coef.shape
    out = X @ coef.transpose(2, 0, 1, 3).reshape(p, -1)                      # (n, B A k)
    return np.ascontiguousarray(out.reshape(-1, B, A, k).transpose(1, 0, 2, 3))


def _block_probs(X: NDArray[np.float64], coef: NDArray[np.float64]) -> NDArray[np.float64]:
    """Probabilities of every block (action) and class: (n, p) x (B, A, p, K-1) -> (B, n, A, K)."""
    return softmax0(_block_dot(X, coef))


class _Models:
    """One chunk's refitted reward, mediator and behaviour models on a fold's training rows.

    ``w`` (B, G) and ``wR`` (B, G): the weights and weighted reward sums of the row groups
    whose representative rows are ``tr`` (:class:`_Groups`).
    """

    def __init__(self, run: _Run, d: _Data, w: NDArray[np.float64], wR: NDArray[np.float64],
                 tr: NDArray[np.int64]) -> None:
        from equicare.causal._nuisance import MEDIATOR_PRIOR, BlockNewtonLogit, NewtonLogit

        md, K = run.md, run.enc.n_levels
        nA = md.n_actions
        A, codes = md.actions[tr], d.codes[tr]
        ph = d.phi[tr]
        self.p, self.K, self.nA = ph.shape[1], K, nA
        h = (ph[:, :, None] * np.eye(K)[codes][:, None, :]).reshape(tr.size, -1)
        self.reward = _ridge(w, wR, h, A, nA, run.cfg.ridge).reshape(
            w.shape[0], nA, self.p, K)                                       # r(s, a, k) coefs
        self.mediator = _logit(w, ph, A, nA, codes, K, BlockNewtonLogit(nA).ridge,
                               MEDIATOR_PRIOR)
        self.behavior: NDArray[np.float64] | None = None
        if md.behavior_prob is None:
            self.behavior = _logit(w, ph, np.zeros(tr.size, dtype=np.int64), 1, A, nA,
                                   NewtonLogit().ridge, 0.0)


# ------------------------------------------------------------------ the replicates
class _Groups:
    """Rows of a fold with the same inputs, merged: weights and reward sums per group.

    Every per-row quantity of the estimators except the reward is a function of the row's
    bases, policy probabilities, action, mediator level and logged propensity (the key), and
    the reward enters every sum linearly. So a sum over rows with weights ``w_bi`` is a sum
    over groups of equal keys with weights ``sum_{i in g} w_bi`` (and reward sums
    ``sum_{i in g} w_bi R_i``), ``W @ C`` for the episode-by-group count matrix ``C``: with
    discrete states a fold's thousands of rows are a few hundred groups. With continuous
    states every row is its own group.
    """

    def __init__(self, keys: NDArray[np.float64], idx: NDArray[np.int64],
                 ep: NDArray[np.int64], n_ep: int, rewards: NDArray[np.float64],
                 ends: NDArray[np.float64] | None = None) -> None:
        _, first, inv = np.unique(keys[idx], axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        self.rep = idx[first]                      # a row of each group (its inputs)
        g = first.size
        self.count = sp.csr_matrix((np.ones(idx.size), (ep[idx], inv)), shape=(n_ep, g))
        self.reward = sp.csr_matrix((rewards[idx], (ep[idx], inv)), shape=(n_ep, g))
        # the stay-end indicator enters the sums linearly too (the end rates' "reward")
        self.ends = None if ends is None else sp.csr_matrix((ends[idx], (ep[idx], inv)),
                                                             shape=(n_ep, g))
        self.count_csc = self.count.tocsc()
        self._sums: dict[str, NDArray[np.float64]] = {}

    def weights(self, W: NDArray[np.float64]) -> tuple[NDArray[np.float64],
                                                       NDArray[np.float64]]:
        """Group weights and weighted reward sums of every replicate, each (B, G)."""
        return (np.asarray((self.count.T @ W.T).T), np.asarray((self.reward.T @ W.T).T))

    def end_sums(self, W: NDArray[np.float64]) -> NDArray[np.float64] | None:
        """Weighted sums of the stay-end indicator of every replicate, (B, G), or None."""
        return None if self.ends is None else np.asarray((self.ends.T @ W.T).T)

    def sums(self, key: str, X: NDArray[np.float64], Y: NDArray[np.float64]
             ) -> NDArray[np.float64]:
        """Per-episode ``sum X_g Y_g^T`` over the groups' rows, (N, px * py), cached by ``key``.

        Terms that do not depend on the replicate's models (the chunks share them); groups
        are taken in blocks so that no temporary exceeds :data:`_CHUNK_FLOATS` floats.
        """
        if key not in self._sums:
            g, px, py = X.shape[0], X.shape[1], Y.shape[1]
            out = np.zeros((self.count.shape[0], px * py))
            step = max(1, _CHUNK_FLOATS // max(px * py, 1))
            for lo in range(0, g, step):
                sl = slice(lo, min(g, lo + step))
                xy = (X[sl, :, None] * Y[sl, None, :]).reshape(-1, px * py)
                out += self.count_csc[:, sl] @ xy
            self._sums[key] = out
        return self._sums[key]


class _Chunk:
    """DM, MIS and baseline etas of one chunk of replicates, fold by fold."""

    def __init__(self, run: _Run, W: NDArray[np.float64], data: _Data) -> None:
        self.run, self.W, self.d = run, W, data
        self.ests = set(run.cfg.estimators)
        B, k = W.shape[0], run.n_eta          # k: the five etas, then three end rates
        self.dm = np.zeros((run.n_folds, B, k))
        self.mis_num, self.mis_den = np.zeros((B, k)), np.zeros((B, k))
        self.base = np.zeros((B, 2))

    def rows(self, m: _Models, idx: NDArray[np.int64]) -> dict[str, Any]:
        """:meth:`_Run.rows` for every replicate: arrays with a leading replicate axis."""
        run, md, cfg, d = self.run, self.run.md, self.run.cfg, self.d
        ph, phn = d.phi[idx], d.phin[idx]
        n, ar, A = idx.size, np.arange(idx.size), md.actions[idx]
        pe, p0 = run.pe[idx], run.p0[idx]
        probs = _block_probs(ph, m.mediator)                                # (B, n, A, K)
        R = _block_dot(ph, m.reward)                                        # r(S, a, k)
        r_a = (probs * R).sum(-1)
        r00 = (p0[None] * r_a).sum(-1)
        rmix = (R * p0[None, :, :, None]).sum(2)                            # (B, n, K)
        inner = (probs * rmix[:, :, None, :]).sum(-1)
        q: dict[str, Any] = {"de": (pe[None] * (r_a - inner)).sum(-1),
                             "me": (pe[None] * inner).sum(-1) - r00, "r00": r00}
        codes = d.codes[idx]
        rM = R[:, ar, :, codes].transpose(1, 0, 2)                          # (B, n, A)
        q["r0M"] = (p0[None] * rM).sum(-1)
        dens = probs[:, ar, :, codes].transpose(1, 0, 2)                    # (B, n, A)
        pA_M = dens[:, ar, A]
        pe_M = (pe[None] * dens).sum(-1)
        q["ratio_m"] = pe_M / np.maximum(pA_M, cfg.prob_floor)
        if m.behavior is None:
            assert md.behavior_prob is not None
            pb_A = np.broadcast_to(md.behavior_prob[idx], (self.W.shape[0], n))
        else:
            pb_A = _block_probs(ph, m.behavior)[:, :, 0, :][:, ar, A]
        pb_A = np.maximum(pb_A, cfg.prob_floor)
        q["rho_e"] = pe[ar, A][None] / pb_A
        q["rho_0"] = p0[ar, A][None] / pb_A
        if "dm" in self.ests:                  # the G process's mediator law at S'
            pn = _block_probs(phn, m.mediator)                              # (B, n, A, K)
            q["Emed_n"] = (run.pe_n[idx][None, :, :, None] * pn).sum(2)
        return q

    def lstd(self, g: _Groups, w: NDArray[np.float64], wR: NDArray[np.float64],
             q: dict[str, Any], wD: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """Weighted average-reward LSTD (:func:`~equicare.causal._lstd.lstd_blocks`), (B, k).

        ``k`` is 5, or 8 with the weighted stay-end sums ``wD`` (B, G): the end rates of the
        pi_e, G and a0 chains, as :meth:`~equicare.causal._dynamic._Run.fit_q`.
        """
        run, md, cfg, d = self.run, self.run.md, self.run.cfg, self.d
        W, tr = self.W, g.rep
        n, nA = tr.size, md.n_actions
        ph, phn = d.qphi[tr], d.qphin[tr]
        x = (np.eye(nA)[md.actions[tr]][:, :, None] * ph[:, None, :]).reshape(n, -1)
        one = np.ones((n, 1))
        z = np.hstack([one, x])
        n_b = w.sum(axis=1)

        def solve(M: NDArray[np.float64], xx: NDArray[np.float64], Y: NDArray[np.float64]
                  ) -> NDArray[np.float64]:
            """Etas of ``M theta = [mean y, x' y]`` (weighted), as ``tikhonov_solve``."""
            p1 = M.shape[1]
            scale = np.maximum((w @ (xx * xx).sum(axis=1)) / (n_b * (p1 - 1)), 1e-12)
            M = M / n_b[:, None, None]
            rhs = np.matmul(np.hstack([one, xx]).T[None], Y) / n_b[:, None, None]
            theta, _ = tikhonov_solve(M, rhs, cfg.ridge * scale * scale)
            return theta[:, 0, :]

        D = [] if wD is None else [wD]
        out = np.empty((w.shape[0], 5 + 3 * len(D)))
        c = run.next_weight(tr)[:, None]            # censored rows: no next-state design
        for key, cols, probs_n, Y in (
                ("pi_e", [0, 1, 2, 5][:3 + len(D)], run.pe_n[tr] * c,
                 np.stack([wR, w * q["r0M"], w * q["r00"], *D], axis=-1)),
                ("a0", [4, 7][:1 + len(D)], run.p0_n[tr] * c, np.stack([wR, *D], axis=-1))):
            xi = (probs_n[:, :, None] * phn[:, None, :]).reshape(n, -1)
            M = (W @ g.sums(key, z, np.hstack([one, x - xi]))).reshape(
                -1, z.shape[1], z.shape[1])
            out[:, cols] = solve(M, x, Y)
        # G: x4 = e_A (x) phi (x) e_M; its next design p0_n (x) phi' (x) E_{p_e(.|S')} e_M
        K = run.enc.n_levels
        x4 = (x[:, :, None] * np.eye(K)[d.codes[tr]][:, None, :]).reshape(n, -1)
        z4 = np.hstack([one, x4])
        M = (W @ g.sums("G", z4, z4)).reshape(-1, z4.shape[1], z4.shape[1])
        M[:, :, 1:] -= self.g_cross(tr, w, q["Emed_n"], ph, phn)
        out[:, [3, 6][:1 + len(D)]] = solve(M, x4, np.stack([w * q["r00"], *D], axis=-1))
        return out

    def g_cross(self, tr: NDArray[np.int64], w: NDArray[np.float64], emed: NDArray[np.float64],
                ph: NDArray[np.float64], phn: NDArray[np.float64]) -> NDArray[np.float64]:
        """``sum_i w_bi z4_i xi4_bi^T``, the G design times its next design: (B, p1, A p K).

        ``z4_i = [1, e_A (x) phi_i (x) e_M]`` and ``xi4_bi = Y_i (x) E_b,i`` with
        ``Y_i = p0_n,i (x) phi'_i`` fixed and ``E_b,i`` the replicate's mediator law at
        ``S'_i``. A row of ``z4`` is non-zero in one (action, level) block, so each block's
        rows give one matrix product for all replicates at once (``(p A p) x rows x (B K)``).
        """
        md, K = self.run.md, self.run.enc.n_levels
        B, n, p, nA = w.shape[0], tr.size, ph.shape[1], md.n_actions
        T = (w[:, :, None] * emed).transpose(1, 0, 2).reshape(n, B * K)     # (n, B K)
        p0_n = self.run.p0_n[tr] * self.run.next_weight(tr)[:, None]       # censored: 0
        Y = (p0_n[:, :, None] * phn[:, None, :]).reshape(n, -1)            # (n, A p)
        ap = Y.shape[1]
        out = np.zeros((B, 1 + nA * p * K, ap * K))
        out[:, 0] = (Y.T @ T).reshape(ap, B, K).transpose(1, 0, 2).reshape(B, -1)
        A, codes = md.actions[tr], self.d.codes[tr]
        for a in range(nA):
            for k in range(K):
                rows = np.flatnonzero((A == a) & (codes == k))
                if not rows.size:
                    continue
                P = (ph[rows][:, :, None] * Y[rows][:, None, :]).reshape(rows.size, -1)
                blk = (P.T @ T[rows]).reshape(p, ap, B, K).transpose(2, 0, 1, 3)
                out[:, 1 + a * p * K + k + K * np.arange(p)] = blk.reshape(B, p, ap * K)
        return out

    def ratios(self, g: _Groups, w_tr: NDArray[np.float64], te: NDArray[np.int64],
               w_te: NDArray[np.float64], q: dict[str, Any]) -> NDArray[np.float64]:
        """Weighted :func:`~equicare.causal._ratio.fit_ratio` of pi_e, a0, G: (B, n_te, 3)."""
        cfg, d, tr = self.run.cfg, self.d, g.rep
        psi, f, fn = d.psi[tr], d.f[tr], d.fn[tr]
        n_b = w_tr.sum(axis=1)
        fpsi = (fn[:, :, None] * psi[:, None, :]).reshape(tr.size, -1)
        base = (self.W @ g.sums("ratio", f, psi)).reshape(-1, f.shape[1], psi.shape[1])
        psibar = (w_tr @ psi) / n_b[:, None]
        psi_te = d.psi[te]
        c = self.run.next_weight(tr)[None]          # the next-state test functions' weights
        out = []
        for om in (q["rho_e"] * c, q["rho_0"] * c, q["rho_0"] * q["ratio_m"] * c):
            G = (((w_tr * om) @ fpsi).reshape(base.shape) - base) / n_b[:, None, None]
            H = np.matmul(G.transpose(0, 2, 1), G)
            p = H.shape[1]
            tr_h = np.trace(H, axis1=1, axis2=2)
            H += (cfg.ratio_ridge * np.maximum(tr_h / p, 1e-12))[:, None, None] * np.eye(p)
            h = np.linalg.solve(H, psibar[..., None])[..., 0]
            theta = h / np.einsum("bp,bp->b", psibar, h)[:, None]
            r = np.clip(theta @ psi_te.T, 0.0, cfg.ratio_clip)                 # (B, n_te)
            mean = (w_te * r).sum(axis=1) / np.maximum(w_te.sum(axis=1), 1e-300)
            out.append(np.where(mean[:, None] > 0, r / np.where(mean > 0, mean, 1.0)[:, None],
                                1.0))
        return np.stack(out, axis=-1)

    def fold(self, k: int) -> None:
        """Fit the chunk's replicates on fold ``k``'s training rows, evaluate at its rows."""
        run = self.run
        g_te, g_tr = self.d.folds[k]
        w_te, wR_te = g_te.weights(self.W)
        w_tr, wR_tr = g_tr.weights(self.W)
        wD_te, wD_tr = g_te.end_sums(self.W), g_tr.end_sums(self.W)
        models = _Models(run, self.d, w_tr, wR_tr, g_tr.rep)
        te = g_te.rep
        q_te = self.rows(models, te)
        self.base += np.stack([(w_te * q_te["de"]).sum(1), (w_te * q_te["me"]).sum(1)], -1)
        if not self.ests & {"dm", "mis"}:
            return
        q_tr = q_te if run.n_folds == 1 else self.rows(models, g_tr.rep)
        if "dm" in self.ests:
            self.dm[k] = self.lstd(g_tr, w_tr, wR_tr, q_tr, wD_tr)
        if "mis" in self.ests:
            r = self.ratios(g_tr, w_tr, te, w_te, q_tr)
            cols = np.stack([r[..., 0] * q_te["rho_e"],
                             r[..., 0] * q_te["rho_0"] * q_te["ratio_m"],
                             r[..., 0] * q_te["rho_0"],
                             r[..., 2] * q_te["rho_0"],
                             r[..., 1] * q_te["rho_0"]], axis=-1)             # (B, G_te, 5)
            self.mis_num[:, :5] += (wR_te[:, :, None] * cols).sum(1)
            self.mis_den[:, :5] += (w_te[:, :, None] * cols).sum(1)
            if wD_te is not None:         # the chains' end rates (_Run.execute's MIS)
                cols = np.stack([r[..., 0] * q_te["rho_e"],
                                 r[..., 2] * q_te["rho_0"] * q_te["ratio_m"],
                                 r[..., 1] * q_te["rho_0"]], axis=-1)
                self.mis_num[:, 5:] += (wD_te[:, :, None] * cols).sum(1)
                self.mis_den[:, 5:] += (w_te[:, :, None] * cols).sum(1)


class _Data:
    """Dense bases, mediator levels and the row groups of every fold (shared by the chunks)."""

    def __init__(self, run: _Run) -> None:
        md, cfg = run.md, run.cfg
        self.phi, self.phin = (dense_rows(x) for x in run.basis(cfg.basis))
        self.qphi, self.qphin = (dense_rows(x) for x in run.basis(cfg.q_basis))
        self.psi, self.psin = (dense_rows(x) for x in run.basis(cfg.ratio_basis))
        if cfg.ratio_method == "kernel":
            self.f, self.fn = (dense_rows(x) for x in run.basis("rff"))
        else:
            self.f, self.fn = self.psi, self.psin
        self.codes = run.enc.codes(md.mediators)
        parts = [self.phi, self.phin, self.qphi, self.qphin, self.psi, self.psin, self.f,
                 self.fn, run.pe, run.p0, run.pe_n, run.p0_n, md.actions[:, None],
                 self.codes[:, None]]
        if md.behavior_prob is not None:
            parts.append(md.behavior_prob[:, None])
        if md.next_weight is not None:              # a row's next-state weight is an input
            parts.append(md.next_weight[:, None])
        keys = np.hstack([np.asarray(x, dtype=np.float64) for x in parts])
        ep, N = md.episode_index, md.n_episodes
        ends = run.ends
        self.folds = []
        for k in range(run.n_folds):
            te = np.flatnonzero(run.row_fold == k)
            tr = te if run.n_folds == 1 else np.flatnonzero(run.row_fold != k)
            self.folds.append((_Groups(keys, te, ep, N, md.rewards, ends),
                               _Groups(keys, tr, ep, N, md.rewards, ends)))


def refit_etas(run: _Run, W: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    """DM's and MIS's etas (B, 5) and the baseline's DE / ME (B, 2) of every replicate.

    With terminal rows (``run.ends``) DM's and MIS's have 8 columns: the five etas, then the
    end rates of the pi_e, G and a0 chains (:mod:`equicare.causal._stay`).

    ``W`` (B, N) holds each replicate's episode counts (:func:`bootstrap_counts`); the
    configuration must be supported (:func:`refit_support`). Replicates run in chunks whose
    largest per-row array (``row groups x actions x mediator levels``) is
    :data:`_CHUNK_FLOATS`.
    """
    md = run.md
    data = _Data(run)
    groups = max(g.rep.size for pair in data.folds for g in pair)
    width = md.n_actions * max(run.enc.n_levels, 1) * max(data.phi.shape[1], 1)
    per = max(1, _CHUNK_FLOATS // max(groups * width, 1))
    out: dict[str, list[NDArray[np.float64]]] = {"dm": [], "mis": [], "baseline": []}
    for lo in range(0, W.shape[0], per):
        ch = _Chunk(run, W[lo:lo + per], data)
        for k in range(run.n_folds):
            ch.fold(k)
        tot = ch.W @ np.bincount(md.episode_index, minlength=md.n_episodes)
        out["dm"].append(ch.dm.mean(axis=0))
        if "mis" in ch.ests:
            out["mis"].append(ch.mis_num / ch.mis_den)
        out["baseline"].append(ch.base / tot[:, None])
    return {k: np.concatenate(v, axis=0) for k, v in out.items() if v}
