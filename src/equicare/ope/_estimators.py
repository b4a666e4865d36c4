"""Estimator objects: small frozen settings, data through ``estimate``.

Each estimator is a thin wrapper around the array core (:mod:`equicare.ope._core`): it prepares
the inputs (target probabilities, propensities, Q-model), computes its per-episode parts and a
vectorised episode-level bootstrap interval.

>>> from equicare.ope import WIS
>>> est = WIS(n_bootstrap=0).estimate_arrays(
...     rewards=[1.0, 0.0], episode_offsets=[0, 1, 2], gamma=1.0, rho=[2.0, 0.5])
>>> round(est.value, 6)  # (2 * 1 + 0.5 * 0) / (2 + 0.5)
0.8
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.ope._bootstrap import CIMethod, Estimate, cluster_codes, estimates_with_ci
from equicare.ope._core import Normalization, OPEInputs, episode_parts
from equicare.ope._fqe import FQEConfig
from equicare.ope._prepare import as_fqe_config, prepare
from equicare.utils import RandomState, check_dataset, check_param

__all__ = ["OffPolicyEstimator", "IS", "WIS", "PDIS", "WPDIS", "FQE", "DR", "WDR", "BanditDR"]


@dataclass(frozen=True, kw_only=True)
class OffPolicyEstimator:
    """Shared settings of every estimator.

    Parameters
    ----------
    truncate : float, optional
        Cap on the cumulative importance weights (None: no truncation).
    n_bootstrap : int, default=1000
        Episode-level bootstrap replicates (0: jackknife normal interval).
    ci_method : {"studentized", "percentile", "bca"}, default="studentized"
        Interval method (see :func:`~equicare.ope.evaluate`).
    alpha : float, default=0.05
        The interval covers ``1 - alpha``.
    behavior_model : {"logistic", "lgbm"}, default="logistic"
        Used to estimate propensities when none are logged or given.
    """

    key: ClassVar[str] = ""
    needs_q: ClassVar[bool] = False
    truncate: float | None = None
    n_bootstrap: int = 1000
    ci_method: CIMethod = "studentized"
    alpha: float = 0.05
    behavior_model: Literal["logistic", "lgbm"] = "logistic"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_param(self.truncate, "truncate", owner, kind=(float, int), low=0.0,
                    low_inclusive=False, allow_none=True)
        check_param(self.n_bootstrap, "n_bootstrap", owner, kind=int, low=0)
        check_param(self.ci_method, "ci_method", owner,
                    choices=("percentile", "bca", "studentized"))
        check_param(self.alpha, "alpha", owner, kind=float, low=0.0, high=1.0,
                    low_inclusive=False, high_inclusive=False)
        check_param(self.behavior_model, "behavior_model", owner, choices=("logistic", "lgbm"))

    # ------------------------------------------------------------------ config round-trip
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly settings (``{"estimator": name, ...}``)."""
        d = asdict(self)
        if isinstance(getattr(self, "q_model", None), FQEConfig):
            d["q_model"] = self.q_model.to_dict()  # type: ignore[attr-defined]
        return {"estimator": type(self).__name__, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OffPolicyEstimator:
        """Inverse of :meth:`to_dict` (on the matching class or on the base class)."""
        d = dict(d)
        name = d.pop("estimator", cls.__name__)
        target = _REGISTRY[name] if cls is OffPolicyEstimator else cls
        if isinstance(d.get("q_model"), dict):
            d["q_model"] = FQEConfig.from_dict(d["q_model"])
        return target(**d)

    # ------------------------------------------------------------------ estimation
    def _normalization(self) -> Normalization:
        norm: Normalization = getattr(self, "normalization", "absorbing")
        return norm

    def estimate_arrays(self, inputs: OPEInputs | None = None, *, random_state: RandomState = None,
                        members: Any = None, **arrays: Any) -> Estimate:
        """Estimate from prepared arrays (:class:`OPEInputs` or its fields as keywords).

        ``members`` (shape ``(n_episodes,)``, optional): each episode's person when people
        re-enrol; the bootstrap then draws people with all their episodes (and the jackknife
        leaves out one person), as :func:`~equicare.ope.evaluate` does.
        """
        inp = inputs if inputs is not None else OPEInputs(**arrays)
        parts = episode_parts(inp, (self.key,), truncate=self.truncate,
                              normalization=self._normalization())
        if members is not None:
            parts = parts.by_cluster(cluster_codes(members))
        return estimates_with_ci(parts, n_boot=self.n_bootstrap, method=self.ci_method,
                                 alpha=self.alpha, random_state=random_state)[self.key]

    def estimate(self, dataset: TrajectoryDataset, policy_or_probs: Any, *,
                 behavior_prob: NDArray[np.float64] | None = None,
                 q: NDArray[np.float64] | None = None,
                 random_state: RandomState = None) -> Estimate:
        """Estimate the value of a target policy from logged data.

        Parameters
        ----------
        dataset : TrajectoryDataset
        policy_or_probs : Policy or array-like of shape (n_steps, n_actions)
            Target policy, or its probabilities at every row.
        behavior_prob : array-like of shape (n_steps,), optional
            Propensities of the logged actions (default: the dataset's, else estimated with a
            cross-fitted :class:`~equicare.policy.BehaviorModel`).
        q : array-like of shape (n_steps, n_actions), optional
            A Q matrix of the target policy (Q-based estimators; default: fitted by FQE).
        random_state : int, Generator or None
            Seed of the bootstrap and of the nuisance fits.

        Returns
        -------
        Estimate
        """
        check_dataset(dataset, f"{type(self).__name__}.estimate")
        prep = prepare(dataset, policy_or_probs, keys=(self.key,), behavior_prob=behavior_prob,
                       behavior_model=self.behavior_model, q=q,
                       q_model=getattr(self, "q_model", "linear"), random_state=random_state)
        inputs = prep.bandit_inputs() if self.key == "bandit_dr" else prep.inputs
        return self.estimate_arrays(inputs, random_state=random_state, members=dataset.members)


@dataclass(frozen=True, kw_only=True)
class IS(OffPolicyEstimator):
    r"""Trajectory-wise importance sampling :math:`\frac1n\sum_e W_e G_e` (unbiased).

    :math:`W_e = \prod_t \pi_e(a_t|s_t)/\pi_b(a_t|s_t)`, :math:`G_e = \sum_t \gamma^t r_t`
    (Precup, Sutton & Singh 2000).
    """

    key: ClassVar[str] = "is"


@dataclass(frozen=True, kw_only=True)
class WIS(OffPolicyEstimator):
    r"""Weighted (self-normalised) IS :math:`\sum_e W_e G_e / \sum_e W_e` (consistent, bounded)."""

    key: ClassVar[str] = "wis"


@dataclass(frozen=True, kw_only=True)
class PDIS(OffPolicyEstimator):
    r"""Per-decision IS :math:`\frac1n\sum_e\sum_t \gamma^t w_{e,t} r_{e,t}` (unbiased)."""

    key: ClassVar[str] = "pdis"


@dataclass(frozen=True, kw_only=True)
class WPDIS(OffPolicyEstimator):
    r"""Weighted per-decision IS :math:`\sum_t \gamma^t \sum_e w_{e,t} r_{e,t} / \sum_e w_{e,t}`.

    Parameters
    ----------
    normalization : {"absorbing", "alive"}, default="absorbing"
        Denominator over all episodes (ended ones keep their last weight) or only over episodes
        still running at ``t``; see :func:`equicare.ope.episode_parts`.
    """

    key: ClassVar[str] = "wpdis"
    normalization: Normalization = "absorbing"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_param(self.normalization, "normalization", type(self).__name__,
                    choices=("absorbing", "alive"))


@dataclass(frozen=True, kw_only=True)
class _QBased(OffPolicyEstimator):
    needs_q: ClassVar[bool] = True
    q_model: Any = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "q_model", as_fqe_config(self.q_model))


@dataclass(frozen=True, kw_only=True)
class FQE(_QBased):
    r"""Direct method via fitted-Q evaluation :math:`\frac1n\sum_e \hat V(s_{e,0})`.

    Parameters
    ----------
    q_model : str or FQEConfig, default="linear"
        ``"tabular"``, ``"linear"``, ``"gbm"``, ``"mlp"``, a candidate name
        (``"tabular_stationary"``, ``"tabular_backward"``, ``"tabular_window"``) or a full
        :class:`FQEConfig`.
    """

    key: ClassVar[str] = "fqe"


@dataclass(frozen=True, kw_only=True)
class DR(_QBased):
    r"""Per-decision doubly robust estimator (Jiang & Li 2016).

    .. math::

        \frac1n \sum_e \sum_t \gamma^t \big[w_{e,t}(r_{e,t} - \hat Q(s_{e,t}, a_{e,t}))
        + w_{e,t-1} \hat V(s_{e,t})\big]

    Unbiased when the propensities are right, whatever the Q-model.
    """

    key: ClassVar[str] = "dr"


@dataclass(frozen=True, kw_only=True)
class WDR(_QBased):
    r"""Weighted doubly robust estimator (Thomas & Brunskill 2016).

    DR with self-normalised per-step weights :math:`w_{e,t} / \sum_{e'} w_{e',t}`.

    Parameters
    ----------
    normalization : {"absorbing", "alive"}, default="absorbing"
    """

    key: ClassVar[str] = "wdr"
    normalization: Normalization = "absorbing"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_param(self.normalization, "normalization", type(self).__name__,
                    choices=("absorbing", "alive"))


@dataclass(frozen=True, kw_only=True)
class BanditDR(_QBased):
    r"""Single-step doubly robust estimator of the care-management literature.

    .. math::

        \hat V = \frac1N \sum_i \big[\rho_i (Y_i - \hat Q(X_i, A_i))
                 + \sum_a \pi(a|X_i) \hat Q(X_i, a)\big]

    over all ``N`` rows (decisions), with the per-step ratio ``rho_i`` (truncated at
    ``truncate``) and a one-step reward model ``Q(x, a) = E[r | x, a]`` (FQE with gamma 0).
    It estimates the mean per-decision reward under the target policy with each decision's
    context kept as logged (not the episode value); with one-step episodes it equals :class:`DR`.
    The interval is an episode-level (cluster) bootstrap.
    """

    key: ClassVar[str] = "bandit_dr"


_REGISTRY: dict[str, type[OffPolicyEstimator]] = {
    c.__name__: c for c in (IS, WIS, PDIS, WPDIS, FQE, DR, WDR, BanditDR)}
