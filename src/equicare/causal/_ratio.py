"""State density ratios ``w(s) = d_pi(s) / d_b(s)`` by a min-max (linear-sieve / kernel) fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

__all__ = ["RatioFit", "fit_ratio", "effective_sample_size"]


@dataclass(frozen=True)
class RatioFit:
    """Linear ratio model ``w(s) = psi(s) @ theta`` (before clipping and normalisation)."""

    theta: NDArray[np.float64]

    def predict(self, psi: Any, clip: float) -> NDArray[np.float64]:
        """Clipped to ``[0, clip]`` and normalised to mean 1 over the given rows, shape (n,)."""
        w = np.clip(np.asarray(psi @ self.theta), 0.0, clip)
        m = w.mean()
        return w / m if m > 0 else np.ones_like(w)


def fit_ratio(psi: Any, f: Any, f_next: Any, omega: NDArray[np.float64],
              ridge: float = 1e-8, *, overwrite: bool = False) -> RatioFit:
    r"""Min-max estimate of the stationary state density ratio.

    The ratio of the stationary distribution of a process to the data's state distribution
    satisfies, for every test function ``f``,

    .. math::

        E_{d_b}\bigl[w(S)\,\{\omega(S, A, M) f(S') - f(S)\}\bigr] = 0, \qquad E_{d_b}[w(S)] = 1,

    where ``omega`` reweights the observed transition to the process (``pi(A|S)/pi_b(A|S)``, times
    ``p_e(M|S)/p_m(M|S,A)`` for the G process). With ``w = psi @ theta`` and a linear class of
    test functions (a linear sieve ``f = psi``, or random Fourier features for a Gaussian-kernel
    discriminator), the min-max problem ``min_w max_{||f|| <= 1} (E[...])^2`` is the quadratic
    ``min theta' G'G theta + ridge |theta|^2`` subject to ``mean(psi) @ theta = 1``, solved in
    closed form (Liu et al. 2018; Uehara, Huang and Jiang 2020).

    Parameters
    ----------
    psi : ndarray or scipy.sparse matrix of shape (n, p)
        Ratio basis at the states.
    f, f_next : ndarray or scipy.sparse matrix of shape (n, q)
        Test functions at the states and next states.
    omega : ndarray of shape (n,)
        Transition weights.
    ridge : float
        Relative ridge.
    overwrite : bool
        A dense ``f_next`` may be overwritten (by ``omega f_next - f``): no array of its size
        is allocated.

    Returns
    -------
    RatioFit
    """
    n = psi.shape[0]
    if sp.issparse(f_next):
        D = sp.csr_matrix(f_next.multiply(omega[:, None])) - f
    else:                         # omega f_next - f, the same operations in place
        D = f_next if overwrite else np.array(f_next, dtype=np.float64)
        D *= omega[:, None]
        D -= f
    G = D.T @ psi / n                                          # (q, p)
    G = np.asarray(G.toarray() if sp.issparse(G) else G, dtype=np.float64)
    H = G.T @ G
    p = H.shape[0]
    H += ridge * max(float(np.trace(H)) / p, 1e-12) * np.eye(p)
    psibar = np.asarray(psi.mean(axis=0), dtype=np.float64).ravel()
    h = np.linalg.solve(H, psibar)
    return RatioFit(theta=h / float(psibar @ h))


def effective_sample_size(w: NDArray[np.float64]) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2``."""
    s2 = float((w ** 2).sum())
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0
