"""Sensitivity analyses of the doubly robust estimate, in one tidy table.

Three perturbations of the nuisance inputs, each re-estimated with a bootstrap interval on the
same replicate draws (so rows are comparable):

``q_shift``
    ``Q -> Q + delta`` for every (state, action) (so ``V -> V + delta``): a systematic Q-model
    bias. DR is unbiased for any Q when the propensities are right, so its value should move
    little; FQE moves by about ``delta``.
``propensity_noise``
    ``logit pi_b -> logit pi_b + sigma Z + sigma^2 / 2`` with ``Z ~ N(0, 1)`` per row, repeated
    ``n_draws`` times per scale ``sigma``: misspecified propensities. The shift ``sigma^2 / 2``
    makes every perturbed ratio ``pi_b / pi_b~`` mean-one (:func:`noisy_ratio`), so the noise
    spreads the weights without inflating them on average: a log-normal factor on ``pi_b``
    (``E[exp(-sigma Z)] = exp(sigma^2 / 2)``) multiplied each episode's weight by about
    ``exp(T sigma^2 / 2)`` over ``T`` steps, which measured episode length, not sensitivity.
``truncation``
    A grid of caps on the cumulative importance weights.

Every row carries a ``flag`` naming why its estimate should not be read as a plausible value:
it lies outside the range of the logged episodes' returns (the value of a policy that stays on
the logged actions is a mean of such returns), or its trajectory weights' effective sample size
is below :data:`MIN_EFFECTIVE_EPISODES` episodes (the estimate rests on a handful of episodes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.ope._bootstrap import CIMethod, bootstrap_counts, cluster_codes, estimates_with_ci
from equicare.ope._core import WEIGHTED, EpisodeParts, Normalization, OPEInputs, episode_parts
from equicare.ope._ess import effective_sample_size
from equicare.ope._evaluate import parse_estimators
from equicare.ope._fqe import FQEConfig
from equicare.ope._prepare import BehaviorSpec, as_fqe_config, prepare
from equicare.utils import check_dataset, check_param, check_random_state

__all__ = ["sensitivity_analysis", "SENSITIVITY_COLUMNS", "MIN_EFFECTIVE_EPISODES", "noisy_ratio"]

#: Columns of the table returned by :func:`sensitivity_analysis`, in order.
SENSITIVITY_COLUMNS: tuple[str, ...] = (
    "analysis", "parameter", "draw", "estimator", "value", "ci_low", "ci_high", "se",
    "ess_pct", "shift_from_baseline", "flag",
)
#: A row whose weights' effective sample size is below this many episodes is flagged.
MIN_EFFECTIVE_EPISODES = 10.0


def noisy_ratio(
    behavior_prob: NDArray[np.float64], sigma: float, z: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``pi_b / pi_b~`` for log-odds noise ``logit pi_b~ = logit pi_b + sigma z + sigma^2 / 2``.

    Equal to ``pi_b + (1 - pi_b) exp(-sigma z - sigma^2 / 2)``: for ``z ~ N(0, 1)`` its mean is
    exactly 1 (so the product of a whole episode's ratios has mean 1 and the noisy estimators
    stay unbiased on average over the draws), it never falls below ``pi_b`` (the noisy
    propensity stays a probability, no clipping needed), and a near-certain logged action
    (``pi_b`` close to 1) keeps a ratio close to 1.

    Parameters
    ----------
    behavior_prob : ndarray of shape (n_steps,)
        Behaviour probabilities of the logged actions, in (0, 1].
    sigma : float
        Noise scale on the log-odds.
    z : ndarray of shape (n_steps,)
        Standard normal draws.
    """
    return behavior_prob + (1.0 - behavior_prob) * np.exp(-sigma * z - 0.5 * sigma * sigma)


def sensitivity_analysis(
    dataset: TrajectoryDataset,
    policy: Any,
    *,
    estimators: str | Sequence[str] = ("dr",),
    q_shifts: Sequence[float] | None = None,
    noise_scales: Sequence[float] = (0.1, 0.25, 0.5),
    n_draws: int = 10,
    truncations: Sequence[float] = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0),
    bootstrap: int = 200,
    ci_method: CIMethod = "studentized",
    alpha: float = 0.05,
    truncate: float | None = None,
    normalization: Normalization = "absorbing",
    q_model: str | FQEConfig = "linear",
    behavior_model: BehaviorSpec = "logistic",
    behavior_prob: NDArray[np.float64] | None = None,
    q: NDArray[np.float64] | None = None,
    random_state: int = 0,
) -> pd.DataFrame:
    """Re-estimate under Q-model bias, propensity noise and weight truncation.

    Parameters
    ----------
    dataset : TrajectoryDataset
    policy : Policy or array-like of shape (n_steps, n_actions)
    estimators : str or sequence of str, default=("dr",)
        Estimators reported for every perturbation (DR by default; e.g. ``("dr", "wdr")``).
    q_shifts : sequence of float, optional
        Absolute shifts ``delta`` of Q; default ``(-0.2, -0.1, 0.1, 0.2) * mean |Q(s_t, a_t)|``.
    noise_scales : sequence of float
        Log-normal noise scales ``sigma`` of the propensities.
    n_draws : int
        Noise draws per scale.
    truncations : sequence of float
        Truncation thresholds.
    bootstrap : int
        Replicates per row (the same replicate draws for every row): of episodes, or of people
        with all their episodes when ``dataset.members`` names them (as :func:`evaluate`).
    ci_method, alpha, truncate, normalization
        As in :func:`evaluate` (``truncate`` applies to the baseline, shift and noise rows).
    q_model, behavior_model, behavior_prob, q
        Nuisance settings, fitted once.
    random_state : int

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SENSITIVITY_COLUMNS`: ``analysis`` (``baseline``, ``q_shift``,
        ``propensity_noise``, ``truncation``), ``parameter`` (delta, sigma or threshold; NaN for
        the baseline), ``draw`` (noise draw, else 0), ``estimator``, ``value``, ``ci_low``,
        ``ci_high``, ``se``, ``ess_pct`` (trajectory ESS % of the weights used),
        ``shift_from_baseline`` (value minus the baseline value of that estimator) and ``flag``
        (empty, or why the estimate is degenerate: outside the range of the logged episode
        returns, and/or, for an importance-weighted estimator, a trajectory ESS below
        :data:`MIN_EFFECTIVE_EPISODES` episodes).
    """
    check_dataset(dataset, "sensitivity_analysis")
    keys = parse_estimators(estimators)
    check_param(n_draws, "n_draws", "sensitivity_analysis", kind=int, low=1)
    check_param(bootstrap, "bootstrap", "sensitivity_analysis", kind=int, low=0)
    for s in noise_scales:
        check_param(s, "noise_scales", "sensitivity_analysis", kind=(float, int), low=0.0)
    for c in truncations:
        check_param(c, "truncations", "sensitivity_analysis", kind=(float, int), low=0.0,
                    low_inclusive=False)
    rng = check_random_state(random_state)
    prep = prepare(dataset, policy, keys=keys, behavior_prob=behavior_prob,
                   behavior_model=behavior_model, q=q, q_model=as_fqe_config(q_model),
                   random_state=int(rng.integers(2**31 - 1)))
    base = prep.inputs
    # people who re-enrol (manifest member): replicates draw people with all their episodes
    codes = None if dataset.members is None else cluster_codes(dataset.members)
    n_units = base.n_episodes if codes is None else int(codes.max()) + 1
    counts = bootstrap_counts(n_units, bootstrap, rng) if bootstrap > 0 else None

    def by_person(parts: EpisodeParts) -> EpisodeParts:
        return parts if codes is None else parts.by_cluster(codes)
    rows: list[dict[str, Any]] = []
    returns = base.returns()
    low, high = float(returns.min()), float(returns.max())

    def run(inputs: OPEInputs, analysis: str, param: float, draw: int,
            trunc: float | None) -> None:
        out = {}
        main = tuple(k for k in keys if k != "bandit_dr")
        if main:
            parts = by_person(episode_parts(inputs, main, truncate=trunc,
                                            normalization=normalization))
            out.update(estimates_with_ci(parts, n_boot=bootstrap, method=ci_method, alpha=alpha,
                                         counts=counts))
        if "bandit_dr" in keys:
            binp = prep.bandit_inputs().with_rho(inputs.rho)
            if analysis == "q_shift":
                assert binp.q_sa is not None and binp.v_s is not None
                binp = binp.with_q(binp.q_sa + param, binp.v_s + param)
            bparts = by_person(episode_parts(binp, ("bandit_dr",), truncate=trunc))
            out.update(estimates_with_ci(bparts, n_boot=bootstrap, method=ci_method,
                                         alpha=alpha, counts=counts))
        ess = effective_sample_size(inputs, trunc)
        ess_pct = ess.trajectory_pct if trunc is None else ess.trajectory_truncated_pct
        assert ess_pct is not None
        for k in keys:
            e = out[k]
            weighted = k in WEIGHTED
            rows.append({"analysis": analysis, "parameter": param, "draw": draw,
                         "estimator": k, "value": e.value, "ci_low": e.ci[0], "ci_high": e.ci[1],
                         "se": e.se, "ess_pct": ess_pct,
                         "flag": _flag(e.value, ess_pct if weighted else None, base.n_episodes,
                                       low, high)})

    run(base, "baseline", float("nan"), 0, truncate)
    if base.q_sa is not None and base.v_s is not None:
        deltas = (list(q_shifts) if q_shifts is not None else
                  [f * float(np.mean(np.abs(base.q_sa))) for f in (-0.2, -0.1, 0.1, 0.2)])
        for d in deltas:
            run(base.with_q(base.q_sa + d, base.v_s + d), "q_shift", float(d), 0, truncate)
    pb = prep.behavior_prob
    for sigma in noise_scales:
        z = rng.standard_normal((n_draws, base.n_steps))
        for j in range(n_draws):  # a handful of draws, each fully vectorised
            run(base.with_rho(base.rho * noisy_ratio(pb, float(sigma), z[j])),
                "propensity_noise", float(sigma), j, truncate)
    for c in truncations:
        run(base, "truncation", float(c), 0, float(c))
    df = pd.DataFrame(rows)
    baseline = df[df["analysis"] == "baseline"].set_index("estimator")["value"]
    df["shift_from_baseline"] = df["value"] - df["estimator"].map(baseline)
    return df.loc[:, list(SENSITIVITY_COLUMNS)].reset_index(drop=True)


def _flag(value: float, ess_pct: float | None, n: int, low: float, high: float) -> str:
    """Why a row's estimate is degenerate ("" when it is not).

    ``ess_pct`` is None for an estimator that uses no trajectory weights (fqe, bandit_dr).
    """
    out = []
    if not np.isfinite(value) or value < low or value > high:
        # no numbers: the lowest and the highest return are single members' values, and this
        # text goes to sensitivity.csv and the run report
        out.append("outside the range of the logged episode returns")
    if ess_pct is not None and ess_pct * n / 100.0 < MIN_EFFECTIVE_EPISODES:
        out.append(f"ESS {ess_pct * n / 100.0:.1f} episodes < {MIN_EFFECTIVE_EPISODES:g}")
    return "; ".join(out)
