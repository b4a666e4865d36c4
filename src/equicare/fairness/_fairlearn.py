"""Fairlearn interop: per-group allocation rates as a ``fairlearn.metrics.MetricFrame``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    from equicare.fairness._allocation import AllocationFrame

__all__ = ["to_metric_frame", "allocation_rate"]

FAIRLEARN_MISSING = ("Fairlearn is not installed; pip install 'equicare[fairlearn]' (or fairlearn) "
                     "to get a MetricFrame.")


def allocation_rate(y_true: NDArray[np.float64], y_pred: NDArray[np.float64]) -> float:
    """Fairlearn metric: allocated units / exposure units, ``sum(y_pred) / sum(y_true)``.

    With ``y_true`` = rows per episode and ``y_pred`` = allocated rows per episode, a
    ``MetricFrame`` over episodes reproduces the step-level rates of :class:`AllocationFrame`.
    """
    den = float(np.sum(y_true))
    return float(np.sum(y_pred)) / den if den > 0 else float("nan")


def to_metric_frame(frame: AllocationFrame, *, n_boot: int | None = None,
                    ci_quantiles: list[float] | None = None,
                    random_state: int | None = None) -> Any:
    """Build a Fairlearn ``MetricFrame`` with the per-group allocation rate of ``frame``.

    The frame is built over the audited episodes (suppressed groups already removed) with
    ``y_true`` = episode denominators, ``y_pred`` = episode numerators and the metric
    :func:`allocation_rate`, so ``overall``, ``by_group``, ``difference()`` and ``ratio()`` agree
    with the :class:`AllocationFrame`. Fairlearn's own bootstrap (``n_boot``, ``ci_quantiles``)
    resamples rows (episodes) and is independent of equicare's replicates.

    Parameters
    ----------
    frame : AllocationFrame
    n_boot, ci_quantiles, random_state
        Passed to ``MetricFrame``.

    Returns
    -------
    fairlearn.metrics.MetricFrame

    Raises
    ------
    ImportError
        If Fairlearn is not installed.
    """
    try:
        from fairlearn.metrics import MetricFrame
    except ImportError as exc:
        raise ImportError(FAIRLEARN_MISSING) from exc
    if frame.episode_num is None or frame.episode_den is None or frame.episode_labels is None:
        raise InvalidParameterError("This AllocationFrame keeps no episode totals; build it with "
                         "allocation_rates or audit.")
    kwargs: dict[str, Any] = {}
    if n_boot is not None:
        kwargs.update(n_boot=n_boot, ci_quantiles=ci_quantiles or [0.025, 0.975],
                      random_state=random_state)
    return MetricFrame(metrics={"allocation_rate": allocation_rate}, y_true=frame.episode_den,
                       y_pred=frame.episode_num,
                       sensitive_features={frame.group: frame.episode_labels}, **kwargs)
