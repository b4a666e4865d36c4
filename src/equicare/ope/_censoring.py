r"""Censored stays and the stationary table: the window table as a check.

The stationary tabular Q-model (``tabular_stationary``, ``q_model="auto"``'s usual choice with
categorical states) treats a censored last row (not terminal, no next row: the member left the
panel or the data end) as an absorbing end at every visit of its (state, action) pair. The
logged window has no such hazard: it ends at a step. With outcomes at the end of a stay (a
reward at survival), that hazard takes value from the stays it cuts short, and the bias does
not shrink with more episodes: -6.8% with 17.5% of the episodes cut at a fixed 10 steps
(20 panels of 5,000 episodes, gamma 0.9), -1.0% to -1.5% on the Garnet test bed cut at 10 or
30 steps. The window table (``tabular_window``, :func:`~equicare.ope._fqe._fit_tabular_window`)
estimates the same stationary dynamics with a censored row counted as "not absorbed" and
values the logged window through the observed share of rows at each step that go on
(censoring that depends on the step, as an administrative cut-off does).

:func:`censoring_check` fits the window table beside a stationary one and compares the two
values with the standard error of their difference (per-episode influence: the value's own
terms plus the linearised refit of each table, :mod:`equicare.ope._lstd`). A difference of more
than :data:`CENSORING_N_SE` standard errors and :data:`CENSORING_MIN_PCT` percent that
censoring can explain draws a
:class:`~equicare.exceptions.DataWarning` that names the window table. Censoring can explain
at most about ``share of censored episodes x largest |return|``: each censored episode adds one
false end, worth at most one return. A larger difference has another cause (thin cells, where
the two tables impute differently), and the warning would misname it; so has a difference of
the sign false ends cannot cause (a false end drops the rest of a stay: with rewards that are
never negative it can only lower the stationary value). The numbers are then only in the
result JSON (``q_model["censoring"]``). ``auto``'s own criterion cannot see the
bias (it weighs the TD errors with the stationary table's density ratio, under which that
table's errors average zero).

With ``q_model="auto"`` the check decides: when it would warn, ``auto`` uses the window table
instead of the stationary one it chose (:func:`~equicare.ope._prepare.prepare`; the result says
so in ``q_model["censoring"]["switched_to_window"]`` and ``q_model["replaced"]``). With the
stationary table named by the user the check only warns.

Streamed evaluation (:func:`~equicare.ope.evaluate_stream`) makes the same check with the same
numbers: the window table's statistics are summed in the stationary table's passes, and the
per-episode influences of the two values' difference in its estimates pass
(:class:`~equicare.ope._stream_q._CensoringPlan`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.ope._fqe import FQEConfig, LoggedQFit, fit_fqe_logged

__all__ = ["CensoringCheck", "censoring_check", "censoring_warns", "CENSORING_N_SE",
           "CENSORING_MIN_PCT"]

#: Standard errors of the difference beyond which the stationary table draws the warning.
CENSORING_N_SE = 2.0
#: Smallest relative difference (%) that draws the warning: the scale of the accuracy the test
#: bed asks of a value (1.5% median, 3% at most). Smaller differences are in the JSON only (on
#: Garnet panels whose 120-step cap censors 2% of the stays they are about 1%).
CENSORING_MIN_PCT = 2.0


@dataclass(frozen=True)
class CensoringCheck:
    """The stationary and window tables' values on a panel with censored stays.

    Attributes
    ----------
    censored_pct : float
        Share of the episodes whose last row is not terminal, in %.
    stationary, window : float
        The two tables' FQE values (mean over episodes of ``V(s_0)``).
    difference_se : float or None
        Standard error of ``stationary - window`` (None when a table has no linearised refit).
    explainable : float
        The largest difference censoring can explain: ``censored share x max |return|``.
    warn : bool
        Whether the difference exceeds :data:`CENSORING_N_SE` standard errors and
        :data:`CENSORING_MIN_PCT` percent, is within ``explainable`` and has the sign false
        ends can cause (stationary below window when rewards are never negative).
    switched : bool
        Whether ``q_model="auto"`` replaced the stationary table by the window table (it does
        when ``warn``).
    window_fit : LoggedQFit or None
        The window table's fit (not in the JSON).
    """

    censored_pct: float
    stationary: float
    window: float
    difference_se: float | None
    explainable: float
    warn: bool
    switched: bool = False
    window_fit: LoggedQFit | None = field(default=None, repr=False, compare=False)

    @property
    def difference_pct(self) -> float:
        """``stationary / window - 1`` in % (0 when the window value is 0)."""
        return 100.0 * (self.stationary / self.window - 1.0) if self.window else 0.0

    def to_dict(self) -> dict[str, Any]:
        """For the result JSON's ``q_model["censoring"]``."""
        return {"censored_episodes_pct": self.censored_pct, "stationary": self.stationary,
                "window": self.window, "difference_pct": self.difference_pct,
                "difference_se": self.difference_se,
                "explainable_by_censoring": self.explainable, "warning": self.warn,
                "switched_to_window": self.switched}

    def message(self) -> str:
        """The warning's text."""
        se = (f", {abs(self.stationary - self.window) / self.difference_se:.1f} standard errors"
              if self.difference_se else "")
        return (f"{self.censored_pct:.1f}% of the episodes are censored (their last row is not "
                f"terminal), and the stationary tabular Q-model's value ({self.stationary:.4g}) "
                f"differs from the window table's ({self.window:.4g}) by "
                f"{self.difference_pct:+.1f}%{se}. The stationary table treats a censored last "
                "row as an end at every visit of its state and action, which biases the value "
                "when outcomes come at the end of a stay; the window table counts it as 'not "
                "absorbed' and values the logged window (censoring by step). Prefer "
                "--q-model tabular_window (q_model='tabular_window'); the default "
                "--q-model auto uses it in such a case.")

    def switch_note(self) -> str:
        """What ``auto`` says when it uses the window table instead (progress log, report)."""
        return (f"tabular_stationary replaced by tabular_window: {self.censored_pct:.1f}% of the "
                f"episodes are censored and the stationary table's value differs from the "
                f"window table's by {self.difference_pct:+.1f}%"
                + (f" ({abs(self.stationary - self.window) / self.difference_se:.1f} standard "
                   "errors)" if self.difference_se else "")
                + ", as counting censored last rows as ends does")


def explainable_by_censoring(censored_share: float, max_abs_return: float) -> float:
    """The largest value difference censoring can explain, ``censored share x max |return|``.

    Each censored stay adds one false end, worth at most one return.
    """
    return float(censored_share * max_abs_return)


def _censoring_direction(rewards: NDArray[np.float64]) -> int:
    """The sign of ``stationary - window`` that false ends can cause (0: either).

    A false end drops the continuation of the stay: with rewards that are never negative it can
    only lower the stationary table's value (-1), with rewards never positive only raise it
    (+1). A difference of the other sign has another cause (on 700-state panels cut at windows
    independent of the state, thin cells made the stationary table 2-5% higher than the window
    table, and the window table was the further from the truth on 4 of 6 such panels).
    """
    if rewards.size == 0 or (rewards >= 0).all():
        return -1
    return 1 if (rewards <= 0).all() else 0


def censoring_warns(v_st: float, v_win: float, se: float | None, explainable: float,
                    direction: int) -> bool:
    """The check's rule (in memory and streamed): whether the stationary table draws the warning.

    The two values differ by more than :data:`CENSORING_N_SE` standard errors and
    :data:`CENSORING_MIN_PCT` percent, within what censoring can explain, with the sign false
    ends can cause (``direction``, :func:`_censoring_direction`).
    """
    diff = abs(v_st - v_win)
    return bool(se is not None and CENSORING_N_SE * se < diff <= explainable
                and diff > CENSORING_MIN_PCT / 100.0 * abs(v_win)
                and direction * (v_st - v_win) >= 0)


def _episode_influence(fit: LoggedQFit, dataset: TrajectoryDataset) -> NDArray[np.float64] | None:
    """Per-episode influence of the FQE value ``mean_e V(s_0e)``, shape ``(n_episodes,)``."""
    if fit.lstd is None:
        return None
    starts = dataset.episode_offsets[:-1]
    v0 = fit.v[starts]
    first = np.zeros((dataset.n_steps, 1))
    first[starts] = 1.0 / dataset.n_episodes
    refit = fit.lstd.influence(fit.lstd.gradients(first, np.zeros_like(first)),
                               dataset.rewards, dataset.episode_offsets)[:, 0]
    return np.asarray(v0 - v0.mean() + refit)


def censoring_check(dataset: TrajectoryDataset, target_probs: NDArray[np.float64],
                    stationary: LoggedQFit, cfg: FQEConfig) -> CensoringCheck | None:
    """Compare a stationary table's value with the window table's on censored stays.

    Parameters
    ----------
    dataset : TrajectoryDataset
    target_probs : ndarray of shape (n_steps, n_actions)
    stationary : LoggedQFit
        The stationary table fitted on ``dataset`` (the evaluation's Q-model).
    cfg : FQEConfig
        Its configuration (``model="tabular"``, stationary horizon; its cells are kept).

    Returns
    -------
    CensoringCheck or None
        None when no episode is censored, or when censoring cannot explain a difference of
        :data:`CENSORING_MIN_PCT` percent of the stationary value (then the window table is not
        fitted).
    """
    censored = dataset.censored
    if not censored.any():
        return None
    starts = dataset.episode_offsets[:-1]
    v_st = float(stationary.v[starts].mean())
    explainable = explainable_by_censoring(float(censored.mean()),
                                           float(np.abs(dataset.returns()).max()))
    if explainable < CENSORING_MIN_PCT / 100.0 * abs(v_st):
        return None
    window = fit_fqe_logged(dataset, target_probs, replace(cfg, horizon="window"))
    v_win = float(window.v[starts].mean())
    a, b = _episode_influence(stationary, dataset), _episode_influence(window, dataset)
    se = (None if a is None or b is None or dataset.n_episodes < 2
          else float(np.std(a - b, ddof=1) / np.sqrt(dataset.n_episodes)))
    warn = censoring_warns(v_st, v_win, se, explainable, _censoring_direction(dataset.rewards))
    return CensoringCheck(censored_pct=float(100.0 * censored.mean()), stationary=v_st,
                          window=v_win, difference_se=se, explainable=explainable,
                          warn=bool(warn), window_fit=window)
