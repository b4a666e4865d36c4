"""Outcome metrics of a restless-bandit plan: group means, Gini, worst group, utility loss."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE

__all__ = ["gini"]

Array = NDArray[np.float64]


def gini(values: Any, variant: Literal["plain", "reference"] = "plain",
         overall: float | None = None) -> float:
    r"""Gini index of group outcomes.

    .. math::

        G = \frac{\sum_j \sum_k |x_j - x_k|}{2 n^2 \bar x}

    Parameters
    ----------
    values : array-like of shape (n_groups,)
        Group means. The index compares each group's share of a non-negative total, so it is
        NaN (``null`` in the JSON, ``n/a`` in tables) when a value is negative: with rewards
        that are costs or changes (a health score's weekly change minus the cost of outreach),
        every group mean below 0 gave a negative Gini (-0.43), and means of both signs could
        give any value.
    variant : {"plain", "reference"}
        ``"reference"`` replaces :math:`\bar x` by the mean of the group means *and* the
        all-arms mean (``overall``), the denominator of the reference implementation.
    overall : float, optional
        All-arms mean, required by the reference variant.

    Returns
    -------
    float
        0 for equal groups; 0 when every value is 0; NaN when a value is negative.

    Examples
    --------
    >>> from equicare.rmab import gini
    >>> gini([1.0, 1.0, 1.0]), round(gini([0.0, 0.0, 3.0]), 4), gini([-1.0, -2.0])
    (0.0, 0.6667, nan)
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0 or not np.isfinite(x).all():
        raise InvalidParameterError(
            f"gini needs a non-empty array of finite values; got {x.tolist()}.")
    if variant == "plain":
        denom = x.mean()
    elif variant == "reference":
        if overall is None:
            raise InvalidParameterError(
                "gini(variant='reference') needs the all-arms mean in 'overall'.")
        denom = np.append(x, overall).mean()
    else:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="variant", owner="gini",
                                              expected="one of 'plain', 'reference'",
                                              got=variant))
    if (x < 0).any():
        return float("nan")
    mad = np.abs(x[:, None] - x[None, :]).sum()
    if denom == 0:
        return 0.0
    return float(mad / (2 * x.size**2 * denom))


def se(x: Array, axis: int = 0) -> Array:
    """Return the standard error of the mean over ``axis`` (NaN with a single replicate).

    One replicate has no spread to estimate: the result is NaN (``null`` in result JSON), not 0.
    """
    n = x.shape[axis]
    if n < 2:
        return np.full(np.delete(x.shape, axis), np.nan)
    return np.asarray(x.std(axis=axis, ddof=1) / np.sqrt(n))
