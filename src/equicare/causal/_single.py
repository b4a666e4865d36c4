r"""Single-time-point mediation: natural direct and indirect effects on the risk-difference scale.

For an exposure or group indicator ``X`` (1 = comparison group, 0 = reference), mediators ``M``
(e.g. social needs), covariates ``C`` and an outcome ``Y``, the mean potential outcome with
exposure ``x`` and the mediator distribution of group ``x'`` is

.. math::

    \psi(x, x') = E_C\Bigl[\int \mu(x, m, C)\, dF(m \mid x', C)\Bigr],\qquad
    \mu(x, m, c) = E[Y \mid X=x, M=m, C=c].

NDE = psi(1, 0) - psi(0, 0), NIE = psi(1, 1) - psi(1, 0), TE = NDE + NIE and the proportion
mediated NIE / TE ("how much of the disparity would close if group 1 had group 0's mediator
distribution"). These are marginal (collapsible) contrasts, unlike differences of logistic
coefficients. Each ``psi`` is estimated by the multiply robust estimator of Tchetgen Tchetgen and
Shpitser (2012), which averages over the mediator distribution by regression (g-computation)
and by weighting, with cross-fitting:

.. math::

    \hat\psi(x, x') = \frac1n\sum_i \Bigl[\frac{1[X_i=x]}{\pi_x(C_i)}
    \frac{f(M_i|x', C_i)}{f(M_i|x, C_i)}\{Y_i - \mu(x, M_i, C_i)\}
    + \frac{1[X_i=x']}{\pi_{x'}(C_i)}\{\mu(x, M_i, C_i) - \eta(x, x', C_i)\}
    + \eta(x, x', C_i)\Bigr],

with ``eta(x, x', c) = E[mu(x, M, c) | X = x', C = c]`` and the mediator density ratio from
``P(X | M, C)`` and ``P(X | C)`` by Bayes' rule (no mediator density model needed, so several
mediators of any type work). It is consistent if (outcome model and eta), (outcome model and
exposure models) or (exposure models) are right.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.causal._inference import cluster_inference
from equicare.causal._nuisance import NewtonLogit, ridge_fit
from equicare.causal._result import EffectEstimate
from equicare.exceptions import DataValidationError
from equicare.utils import RandomState, check_param, check_random_state

__all__ = ["SingleTimeMediation", "SingleTimeResult"]

SINGLE_EFFECTS = ("nde", "nie", "te", "pm")
BINARY_EXPOSURE_MESSAGE = ("exposure must be binary (0 = reference group, 1 = comparison group); "
                           "got values {values}.")


class _Ridge:
    """Linear regression with a tiny ridge (default outcome / eta model for continuous data)."""

    def fit(self, X: NDArray[np.float64], y: NDArray[np.float64]) -> _Ridge:
        self.coef_ = ridge_fit(X, y, 1e-8)
        return self

    def predict(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        return X @ self.coef_


def _fit(est: Any, default: Any, X: NDArray[np.float64], y: NDArray[Any]) -> Any:
    if est is None:
        return default.fit(X, y)
    from sklearn.base import clone

    return clone(est).fit(X, y)


def _p1(model: Any, X: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(class 1) from a classifier (0 if class 1 was never seen)."""
    p = np.asarray(model.predict_proba(X), dtype=np.float64)
    classes = list(np.asarray(model.classes_).tolist())
    return p[:, classes.index(1)] if 1 in classes else np.zeros(X.shape[0])


def _mean_pred(model: Any, X: NDArray[np.float64], binary: bool) -> NDArray[np.float64]:
    if binary and hasattr(model, "predict_proba"):
        return _p1(model, X)
    return np.asarray(model.predict(X), dtype=np.float64)


@dataclass(frozen=True)
class SingleTimeResult:
    """Natural direct / indirect effects of a single-time-point mediation analysis.

    Attributes
    ----------
    effects : dict of str to EffectEstimate
        ``nde``, ``nie``, ``te`` and ``pm`` (proportion mediated, NIE / TE).
    potential_outcomes : dict of str to EffectEstimate
        ``y11 = psi(1, 1)``, ``y10 = psi(1, 0)``, ``y00 = psi(0, 0)``.
    gcomp : dict of str to float
        Plug-in (regression-only) g-computation values of ``y11, y10, y00`` for comparison.
    n : int
    n_clusters : int
    """

    effects: dict[str, EffectEstimate]
    potential_outcomes: dict[str, EffectEstimate]
    gcomp: dict[str, float]
    n: int
    n_clusters: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"n": self.n, "n_clusters": self.n_clusters,
                "effects": {k: v.to_dict() for k, v in self.effects.items()},
                "potential_outcomes": {k: v.to_dict() for k, v in self.potential_outcomes.items()},
                "gcomp": dict(self.gcomp)}


@dataclass(frozen=True, kw_only=True)
class SingleTimeMediation:
    """Natural direct and indirect effects of a binary exposure or group, multiply robust.

    Parameters
    ----------
    outcome_model : scikit-learn regressor / classifier or None
        ``E[Y | X, M, C]`` on ``[X, M, C, X*M]``; default: logistic (binary Y) or linear
        regression on ``[1, X, M, C, X*M, X*C]``.
    exposure_model : scikit-learn classifier or None
        ``P(X = 1 | C)``; default logistic.
    mediator_exposure_model : scikit-learn classifier or None
        ``P(X = 1 | M, C)`` (gives the mediator density ratio); default logistic.
    eta_model : scikit-learn regressor or None
        ``E[mu(x, M, C) | X = x', C]``; default linear in ``C``.
    n_folds : int
        Cross-fitting folds (by cluster).
    n_bootstrap : int
        Cluster-bootstrap replicates (weight matrix over clusters; 0: normal intervals).
    ci_level : float
    propensity_floor : float
        Floor of ``P(X = x | .)`` in the weights.

    Examples
    --------
    >>> import numpy as np
    >>> from equicare.causal import SingleTimeMediation
    >>> rng = np.random.default_rng(0)
    >>> x = rng.integers(0, 2, 4000); m = rng.random(4000) < 0.3 + 0.3 * x
    >>> y = (rng.random(4000) < 0.2 + 0.1 * x + 0.3 * m).astype(float)
    >>> res = SingleTimeMediation(n_bootstrap=0).estimate(x, m, y, random_state=0)
    >>> abs(res.effects["nie"].value - 0.09) < 0.03  # true NIE = 0.3 * 0.3 = 0.09
    True
    """

    outcome_model: Any = None
    exposure_model: Any = None
    mediator_exposure_model: Any = None
    eta_model: Any = None
    n_folds: int = 2
    n_bootstrap: int = 500
    ci_level: float = 0.95
    propensity_floor: float = 0.01

    def __post_init__(self) -> None:
        o = type(self).__name__
        check_param(self.n_folds, "n_folds", o, kind=int, low=1)
        check_param(self.n_bootstrap, "n_bootstrap", o, kind=int, low=0)
        check_param(self.ci_level, "ci_level", o, kind=float, low=0, high=1,
                    low_inclusive=False, high_inclusive=False)
        check_param(self.propensity_floor, "propensity_floor", o, kind=(int, float), low=0,
                    high=0.5, low_inclusive=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (custom models are stored by class name only)."""
        d = asdict(self)
        for k in ("outcome_model", "exposure_model", "mediator_exposure_model", "eta_model"):
            v = getattr(self, k)
            d[k] = None if v is None else f"{type(v).__module__}.{type(v).__qualname__}"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SingleTimeMediation:
        """Inverse of :meth:`to_dict` for the default models."""
        kw = {k: v for k, v in d.items() if not k.endswith("_model")}
        return cls(**kw)

    def estimate(self, exposure: Any, mediators: Any, outcome: Any, covariates: Any = None, *,
                 clusters: Any = None, random_state: RandomState = None) -> SingleTimeResult:
        """Estimate NDE, NIE, TE and the proportion mediated.

        Parameters
        ----------
        exposure : array of shape (n,)
            0 / 1 (reference / comparison group or untreated / treated).
        mediators : array of shape (n,) or (n, m)
        outcome : array of shape (n,)
        covariates : array of shape (n, c), optional
            Confounders (e.g. age, sex; never the mediators).
        clusters : array of shape (n,), optional
            Cluster of each unit (e.g. member id for repeated rows); default: each unit.
        random_state : int, Generator or None

        Returns
        -------
        SingleTimeResult
        """
        def arr(v: Any) -> NDArray[np.float64]:
            v = v.to_numpy() if hasattr(v, "to_numpy") else v
            return np.asarray(v, dtype=np.float64)

        x = arr(exposure).reshape(-1)
        n = x.size
        m = arr(mediators).reshape(n, -1)
        y = arr(outcome).reshape(-1)
        c = np.zeros((n, 0)) if covariates is None else arr(covariates).reshape(n, -1)
        vals = np.unique(x)
        if not np.isin(vals, [0.0, 1.0]).all() or vals.size != 2:
            raise DataValidationError(BINARY_EXPOSURE_MESSAGE.format(values=vals[:5].tolist()))
        for name, v in (("mediators", m), ("outcome", y), ("covariates", c)):
            if v.shape[0] != n or not np.isfinite(v).all():
                raise DataValidationError(f"{name} must have {n} finite rows.")
        cl = (np.arange(n) if clusters is None
              else np.unique(np.asarray(clusters), return_inverse=True)[1].reshape(-1))
        n_cl = int(cl.max()) + 1
        rng = check_random_state(random_state)
        binary_y = bool(np.isin(np.unique(y), [0.0, 1.0]).all())
        K = min(self.n_folds, n_cl)
        fold = (rng.permutation(n_cl) % K)[cl]
        one = np.ones((n, 1))
        pairs = ((1, 1), (1, 0), (0, 0))
        psi = np.zeros((n, 3))
        g = np.zeros((n, 3))
        for k in range(K):
            te = np.flatnonzero(fold == k)
            tr = te if K == 1 else np.flatnonzero(fold != k)

            def design_y(xv: NDArray[np.float64], rows: NDArray[np.int64]) -> NDArray[np.float64]:
                base = [xv[:, None], m[rows], c[rows], xv[:, None] * m[rows]]
                if self.outcome_model is None:
                    base = [one[rows], *base, xv[:, None] * c[rows]]
                return np.hstack(base)

            out = _fit(self.outcome_model, NewtonLogit() if binary_y else _Ridge(),
                       design_y(x[tr], tr), y[tr])
            Xc = np.hstack([one, c]) if self.exposure_model is None else c
            if Xc.shape[1] == 0:
                Xc = one
            pc = _fit(self.exposure_model, NewtonLogit(), Xc[tr], x[tr])
            Xmc = (np.hstack([one, m, c]) if self.mediator_exposure_model is None
                   else np.hstack([m, c]))
            pmc = _fit(self.mediator_exposure_model, NewtonLogit(), Xmc[tr], x[tr])
            floor = self.propensity_floor
            p1c = np.clip(_p1(pc, Xc[te]), floor, 1 - floor)
            p1mc = np.clip(_p1(pmc, Xmc[te]), floor, 1 - floor)
            pxc = {1: p1c, 0: 1 - p1c}
            pxmc = {1: p1mc, 0: 1 - p1mc}
            mu = {xv: _mean_pred(out, design_y(np.full(te.size, float(xv)), te), binary_y)
                  for xv in (0, 1)}
            mu_tr = {xv: _mean_pred(out, design_y(np.full(tr.size, float(xv)), tr), binary_y)
                     for xv in (0, 1)}
            Xe = np.hstack([one, c])
            for j, (xa, xm) in enumerate(pairs):
                sel = tr[x[tr] == xm]
                eta_fit = _fit(self.eta_model, _Ridge(), Xe[sel],
                               mu_tr[xa][np.searchsorted(tr, sel)])
                eta = np.asarray(eta_fit.predict(Xe[te]), dtype=np.float64)
                ratio = (pxmc[xm] / pxmc[xa]) * (pxc[xa] / pxc[xm])
                ind_a = (x[te] == xa) / pxc[xa]
                ind_m = (x[te] == xm) / pxc[xm]
                psi[te, j] = (ind_a * ratio * (y[te] - mu[xa]) + ind_m * (mu[xa] - eta) + eta)
                g[te, j] = eta
        point = psi.mean(0)
        contrast = np.array([[0, 1, 1], [1, -1, 0], [-1, 0, -1]], dtype=np.float64)  # nde,nie,te
        inf = cluster_inference(point, psi - point, cl, n_cl,
                                np.hstack([contrast, np.eye(3)]), n_bootstrap=self.n_bootstrap,
                                ci_level=self.ci_level, rng=rng)
        effects = {k: EffectEstimate(float(inf.value[j]), float(inf.se[j]),
                                     (float(inf.ci_low[j]), float(inf.ci_high[j])))
                   for j, k in enumerate(("nde", "nie", "te"))}
        effects["pm"] = self._proportion(point, psi - point, cl, n_cl, rng)
        po = {k: EffectEstimate(float(inf.value[3 + j]), float(inf.se[3 + j]),
                                (float(inf.ci_low[3 + j]), float(inf.ci_high[3 + j])))
              for j, k in enumerate(("y11", "y10", "y00"))}
        return SingleTimeResult(effects=effects, potential_outcomes=po,
                                gcomp={k: float(g[:, j].mean())
                                       for j, k in enumerate(("y11", "y10", "y00"))},
                                n=n, n_clusters=n_cl)

    def _proportion(self, point: NDArray[np.float64], infl: NDArray[np.float64],
                    cl: NDArray[np.int64], n_cl: int, rng: np.random.Generator) -> EffectEstimate:
        """Proportion mediated NIE / TE: delta-method SE, bootstrap percentile interval."""
        nie, te = point[0] - point[1], point[0] - point[2]
        if abs(te) < 1e-12:
            return EffectEstimate(None)
        pm = float(nie / te)
        # d pm / d psi
        grad = np.array([(te - nie) / te ** 2, -1 / te, nie / te ** 2])
        lin = cluster_inference(np.array([pm]), (infl @ grad)[:, None], cl, n_cl, np.eye(1),
                                n_bootstrap=0, ci_level=self.ci_level, rng=rng)
        if self.n_bootstrap <= 0:
            return EffectEstimate(pm, float(lin.se[0]), (float(lin.ci_low[0]),
                                                         float(lin.ci_high[0])))
        Phi = np.zeros((n_cl, 3))
        np.add.at(Phi, cl, infl)
        T = np.bincount(cl, minlength=n_cl).astype(np.float64)
        W = rng.multinomial(n_cl, np.full(n_cl, 1.0 / n_cl), size=self.n_bootstrap).astype(float)
        reps = point[None, :] + (W @ Phi) / (W @ T)[:, None]
        r = (reps[:, 0] - reps[:, 1]) / (reps[:, 0] - reps[:, 2])
        a = 1 - self.ci_level
        lo, hi = np.quantile(r, [a / 2, 1 - a / 2])
        return EffectEstimate(pm, float(lin.se[0]), (float(lo), float(hi)))
