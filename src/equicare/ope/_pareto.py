r"""Pareto tail index of importance weights (the PSIS diagnostic ``k``).

The largest ``M = min(S / 5, 3 sqrt(S))`` of ``S`` weights, minus the next one, are fitted with
a generalized Pareto distribution by the empirical-Bayes estimator of Zhang & Stephens (2009,
*Technometrics* 51, 316-325), with the weak prior toward ``k = 0.5`` of Vehtari, Simpson,
Gelman, Yao & Gabry (2024, "Pareto smoothed importance sampling", *JMLR* 25(72)). Its shape
``k`` is the tail index: the weights have ``1 / k`` finite moments. For ``k > 0.5`` their
variance is infinite, so the central limit theorem, the standard error and the bootstrap of a
mean of weighted returns do not hold (the bootstrap of a mean is inconsistent without a finite
variance, Athreya 1987); for ``k > 0.7`` the estimate itself needs impractically many episodes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["PARETO_KEEP", "PARETO_K_INTERVAL", "PARETO_K_VALUE", "PARETO_MIN_TAIL", "pareto_k",
           "tail_size"]

#: Tail index above which the weights' variance is infinite: intervals are not to be trusted.
PARETO_K_INTERVAL = 0.5
#: Tail index above which the weighted estimate itself is unreliable (Vehtari et al. 2024).
PARETO_K_VALUE = 0.7
#: Fewest tail weights the fit uses (fewer: ``k`` is not estimated).
PARETO_MIN_TAIL = 20
#: Largest weights a streamed evaluation keeps: the whole tail the fit reads (plus the threshold
#: weight) up to ``tail_size(n) = 10,000``, i.e. about 11.1 million episodes; beyond that the
#: fit reads the largest 10,000 (:func:`pareto_k`'s ``n``).
PARETO_KEEP = 10_001


def tail_size(n: int) -> int:
    """Number of largest weights of ``n`` the fit uses: ``min(n / 5, 3 sqrt(n))``."""
    return int(min(0.2 * n, 3.0 * np.sqrt(n)))


def pareto_k(weights: NDArray[np.float64], n: int | None = None) -> float:
    """Generalized-Pareto tail index ``k`` of the largest of ``weights``.

    Parameters
    ----------
    weights : ndarray of shape (n,)
        Non-negative importance weights (one per episode). Only the largest
        :func:`tail_size` ``+ 1`` are read, so the heaviest weights of parts of a panel,
        merged, give the same number.

    Returns
    -------
    float
        The tail index; NaN when fewer than :data:`PARETO_MIN_TAIL` weights, or distinct
        weights, are in the tail (the fit is of a continuous law: on a 4-step, 2-action panel
        the tail's few repeated weights gave 1.05), or it is flat (every weight equal, as
        on-policy) or not finite.
    n : int, optional
        How many weights ``weights`` are the largest of (a streamed panel keeps only its
        :data:`PARETO_KEEP` largest); default ``weights.size``.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.random.default_rng(0).pareto(1 / 0.8, 20_000)  # tail index 0.8
    >>> round(pareto_k(w), 1)
    0.8
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    m = min(tail_size(w.size if n is None else n), w.size - 1)
    if m < PARETO_MIN_TAIL or not np.all(np.isfinite(w)):
        return float("nan")
    top = np.sort(np.partition(w, w.size - m - 1)[w.size - m - 1:])
    x = top[1:] - top[0]
    if x[-1] <= 0 or x[-1] <= 1e-12 * max(abs(top[0]), 1e-300):
        return float("nan")
    if np.count_nonzero(np.diff(x)) + 1 < PARETO_MIN_TAIL:
        return float("nan")  # a few repeated values (short stays, a few actions): not a tail
    x = x / x[-1]  # k is scale-free: fit on [0, 1] so that no weight's size overflows
    n = x.size
    n_grid = 30 + int(np.sqrt(n))
    quartile = x[int(n / 4 + 0.5) - 1]
    if quartile <= 0:
        quartile = x[x > 0][0]
    b = 1.0 / x[-1] + (1.0 - np.sqrt(n_grid / (np.arange(1, n_grid + 1) - 0.5))) / (
        3.0 * quartile)
    k_grid = np.log1p(-b[:, None] * x[None, :]).mean(axis=1)
    log_lik = n * (np.log(-b / k_grid) - k_grid - 1.0)
    post = 1.0 / np.exp(log_lik[None, :] - log_lik[:, None]).sum(axis=1)
    b_hat = float((post * b).sum())
    k = float(np.log1p(-b_hat * x).mean())
    return (n * k + 10 * 0.5) / (n + 10)  # weak prior toward 0.5 (Vehtari et al. 2024, app. C)
