"""Behaviour-policy (propensity) model: cross-fitted classifiers of the logged action.

``BehaviorModel`` estimates ``pi_b(a | s)`` for data whose propensities were not logged (and, in
:func:`equicare.ope.evaluate`, always, for support diagnostics). It is a scikit-learn estimator
(``clone`` and ``get_params`` work) and an equicare :class:`~equicare.policy.Policy`.

* Inputs: the dataset's numeric and one-hot categorical states, (``groups=True``) its group
  attributes one-hot, plus (``history=True``) the previous step's action components (one-hot,
  zeros at the first step) and the scaled step. The groups are there because current practice
  can treat groups differently in the same states (what the audit measures): a states-only
  model then misstates every propensity of such a group, and its importance weights with them
  (a prenatal panel built outside equicare, where practice gave a 2.5% group more transport
  vouchers: that group's trajectory weights averaged 9.7 instead of 1, and a policy truly worth
  0.004 more for it was valued at 1.96 against practice's 0.46, a return no episode can reach).
  Levels of at least 11 episodes in fitting get a column; smaller and unseen ones get zeros.
* Flat model: one multiclass classifier over the flat action index.
* Factored model: a chain ``P(a) = prod_k P(a_k | s, a_<k)`` of one classifier per action
  component (earlier components one-hot encoded as inputs), so that a 240-combination space with
  sparse cells is estimable from a handful of small classifiers.
* Sparse inputs: with ``estimator="logistic"`` and a design that is mostly one-hot (density
  below 0.1, e.g. a categorical state with hundreds of levels), the inputs are a
  ``scipy.sparse`` matrix scaled without centring. Centring only moves the unpenalised
  intercepts, so the penalised optimum is the same model; each solver iteration then costs
  the non-zeros, not rows x columns (5 folds on 65k rows with 700 levels: 44 s to 7 s, one thread).
* Repeated rows: a logistic likelihood (with its L2 penalty) depends on the data only through
  the counts of its distinct (inputs, target) rows, so a sparse design is fitted on its distinct
  rows weighted by their counts (the scaler too) when they are at most ``DEDUPE_SHARE`` of the
  rows: the same objective, the same probabilities (4e-7 at the default tolerance). Without
  history (``history=False``) an ICU-shaped saturated panel's 93,768 rows are 21,602 distinct
  (state, action) rows and its 300-action fit takes 13.7 s CPU instead of 55 s; with history
  the previous action and the step make nearly every row distinct (75,333), and nothing changes.
* Cross-fitting: episodes are split into ``n_folds`` folds; the probabilities of a fold's rows
  come from models fitted on the other folds (out-of-fold), which keeps the importance weights
  from being fitted to the very actions they weight. On new data the fold models are averaged.
* A saturated categorical state (``"auto"``): when a logistic model's design is mostly one-hot
  categorical levels (the sparse case above), one flat model fitted in-sample. There the state's
  levels are cells: a fold model that never saw a level's action in that level gives it a
  probability near 0 (out-of-fold 1e-8 for an action of true probability 0.53 in a state of 16
  rows), and a chain is additive in (state, earlier components), so it cannot represent a
  per-level joint choice. In-sample probabilities of such a model are the cells' smoothed
  action frequencies (Hanna, Niekum & Stone, ICML 2019). Measured against the true
  propensities (mean |log(estimated/true)| of the logged action, rows below the floor):
  ICU-shaped Garnet panel (300 levels, 5 x 5 actions) 0.50 and 285 (chain, 5 folds) against
  0.24 and 0 (flat, in-sample); Garnet s700_a25_g1, 2,000 episodes, 0.55 and 2,317 against
  0.30 and 0; the care simulator (numeric states) keeps the chain and 5 folds.
* A probability floor: :meth:`propensities` returns ``max(p, floor)`` and the number of floored
  rows; ``calibration_`` summarises out-of-fold calibration.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from typing import Any, TypeAlias

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning

from equicare.data import TrajectoryDataset
from equicare.exceptions import InvalidParameterError
from equicare.utils import MIN_CELL, PARAM_MESSAGE, check_is_fitted, check_random_state

__all__ = ["BehaviorModel", "dataset_fingerprint"]

_OWNER = "BehaviorModel"
_CALIB_EDGES = np.array([0.0, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0 + 1e-12])
_CHUNK = 20_000
#: Cells (rows x actions) of one block of full distributions: a block's few (rows, actions)
#: temporaries stay near 16 MB each however many joint actions there are.
_BLOCK_CELLS = 2_000_000
#: Prefixes of earlier components with probability below this in every row are not expanded.
_PRUNE = 1e-12
#: Rows (at most) whose full distributions enter the reliability table.
_CALIB_ROWS = 20_000
#: A logistic model's inputs are sparse below this share of non-zero entries.
SPARSE_DENSITY = 0.1
#: A logistic model is fitted on the distinct (inputs, target) rows, weighted by their counts,
#: when they are fewer than this share of the rows.
DEDUPE_SHARE = 0.5

Design: TypeAlias = "NDArray[np.float64] | sp.csr_matrix"


def _hcat(x: Design, extra: NDArray[np.float64]) -> Design:
    """Columns of ``x`` followed by those of ``extra`` (sparse when ``x`` is)."""
    if sp.issparse(x):
        return sp.hstack([x, sp.csr_matrix(extra)], format="csr")
    return np.concatenate([x, extra], axis=1)


def _softmax_levels(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Softmax over axis 1 of ``logits`` (rows, levels, prefixes), in place, fewer than 8 levels.

    With the few levels of a component on the middle axis, NumPy runs every operation along
    the prefixes (long rows) instead of one short loop per row and prefix. The maximum is exact
    in any order, and the normaliser is summed level by level, left to right, as NumPy's pairwise
    sum adds fewer than 8 terms: the probabilities have the bits of the reductions over a last
    axis of levels.
    """
    size = logits.shape[1]
    top = logits[:, 0].copy()
    for j in range(1, size):
        np.maximum(top, logits[:, j], out=top)
    logits -= top[:, None]
    np.exp(logits, out=logits)
    total = logits[:, 0].copy()
    for j in range(1, size):
        total += logits[:, j]
    logits /= total[:, None]
    return logits


def _onehot_csr(rows: NDArray[np.int64], cols: NDArray[np.int64], shape: tuple[int, int]
                ) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=shape)


def row_keys(x: Design) -> NDArray[np.float64]:
    """An exact key of each row of ``x``: equal keys if and only if equal rows.

    Dense: the rows themselves. Sparse: each row's column indices and values, sorted by column
    and padded with ``-1`` to the longest row (``(n, 2 * max_nnz)``), so that :func:`np.unique`
    over axis 0 compares rows without densifying the matrix.
    """
    if not sp.issparse(x):
        return np.asarray(x, dtype=np.float64)
    x = sp.csr_matrix(x, copy=True)  # canonical form (explicit zeros and duplicates removed)
    x.sum_duplicates()
    x.eliminate_zeros()
    x.sort_indices()
    nnz = np.diff(x.indptr)
    width = int(nnz.max()) if nnz.size else 0
    pos = np.arange(x.nnz) - np.repeat(x.indptr[:-1], nnz)
    rows = np.repeat(np.arange(x.shape[0]), nnz)
    out = np.full((x.shape[0], 2 * width), -1.0)
    out[rows, pos] = x.indices
    out[rows, width + pos] = x.data
    return out


def dedupe_rows(keys: NDArray[np.float64], max_share: float | None = None
                ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]] | None:
    """``(first row, inverse, count)`` of the distinct rows of ``keys``, or None.

    None when the distinct rows are more than ``max_share`` (default :data:`DEDUPE_SHARE`) of
    the rows: not worth it.
    """
    max_share = DEDUPE_SHARE if max_share is None else max_share
    n = keys.shape[0]
    if n == 0:
        return None
    _, first, inv, counts = np.unique(keys, axis=0, return_index=True, return_inverse=True,
                                      return_counts=True)
    if first.size > max_share * n:
        return None
    return first.astype(np.int64), inv.reshape(-1).astype(np.int64), counts.astype(np.float64)


def dataset_fingerprint(dataset: TrajectoryDataset) -> str:
    """Hash a dataset's actions, states and episode layout (identifies the fitting data)."""
    h = hashlib.blake2b(digest_size=16)
    for a in (dataset.episode_offsets, dataset.actions, dataset.states):
        h.update(np.ascontiguousarray(a).tobytes())
    if dataset.categorical is not None:
        h.update(np.ascontiguousarray(dataset.categorical).tobytes())
    return h.hexdigest()


class _Constant(ClassifierMixin, BaseEstimator):
    """Predicts the class frequencies seen in training (used when a fold has a single class)."""

    def fit(self, X: Any, y: Any) -> _Constant:
        self.classes_, counts = np.unique(y, return_counts=True)
        self.p_ = counts / counts.sum()
        return self

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        return np.broadcast_to(self.p_, (X.shape[0], self.p_.size)).copy()


def _make_classifier(spec: Any, C: float, max_iter: int, random_state: int,
                     sparse: bool = False) -> Any:
    if spec == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # sparse inputs are scaled, not centred: the intercepts absorb the centring
        return make_pipeline(StandardScaler(with_mean=not sparse),
                             LogisticRegression(C=C, max_iter=max_iter))
    if spec == "lgbm":
        try:
            from lightgbm import LGBMClassifier
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("estimator='lgbm' needs LightGBM: pip install 'equicare[lgbm]'."
                              ) from exc
        return LGBMClassifier(n_estimators=60, learning_rate=0.1, num_leaves=15,
                              min_child_samples=50, reg_lambda=5.0, verbose=-1, n_jobs=1,
                              random_state=random_state)
    if hasattr(spec, "fit") and hasattr(spec, "predict_proba"):
        return clone(spec)
    raise InvalidParameterError(PARAM_MESSAGE.format(
        name="estimator", owner=_OWNER,
        expected="'logistic', 'lgbm' or a scikit-learn classifier with predict_proba", got=spec))


def calibration_bins(sum_p: NDArray[np.float64], sum_y: NDArray[np.float64],
                     cnt: NDArray[np.float64], min_cell: int = MIN_CELL) -> list[dict[str, Any]]:
    """The reliability table's published bins (``BehaviorModel.calibration_["bins"]``).

    A bin's observed rate is the share of its (row, action) pairs whose action was logged: a
    rate of what some rows do, so it is published as the audit publishes such rates
    (:func:`equicare.privacy.share_suppressed`). When the bin's logged pairs, or its pairs not
    logged, number 1 to ``min_cell - 1`` (1 to 10 decisions: with the count, the rate gave back
    that a single row's logged action had, say, a predicted probability in [0.1, 0.2)), the
    bin shows only its edges and ``"suppressed": true``, and so does the next smallest bin that
    would give it back from the totals (every sampled row logs one action). Empty bins are left
    out.

    Parameters
    ----------
    sum_p, sum_y, cnt : ndarray of shape (n_bins,)
        Per bin of :data:`_CALIB_EDGES`: summed predicted probabilities, logged pairs, pairs.
    min_cell : int

    Returns
    -------
    list of dict
    """
    from equicare.privacy import share_suppressed

    used = np.flatnonzero(cnt > 0)
    labels = [str(i) for i in used]
    hidden, _ = share_suppressed(labels, sum_y[used], cnt[used] - sum_y[used], min_cell)
    out: list[dict[str, Any]] = []
    for i in used:
        edges = {"low": float(_CALIB_EDGES[i]), "high": float(min(_CALIB_EDGES[i + 1], 1.0))}
        out.append({**edges, "suppressed": True} if str(i) in hidden else
                   {**edges, "mean_predicted": float(sum_p[i] / cnt[i]),
                    "observed_rate": float(sum_y[i] / cnt[i]), "count": int(cnt[i])})
    return out


class BehaviorModel(BaseEstimator):
    """Estimated behaviour policy ``pi_b(a|s)`` with cross-fitting, a floor and calibration.

    Parameters
    ----------
    estimator : {"logistic", "lgbm"} or scikit-learn classifier, default="logistic"
        Multinomial logistic regression on standardised inputs, LightGBM, or any classifier with
        ``predict_proba`` (cloned for every fit).
    factored : bool or "auto", default="auto"
        Chain of per-component classifiers ``P(a) = prod_k P(a_k | s, a_<k)``; ``"auto"`` uses it
        when the action space has more than one component, unless the state is saturated
        categorical (see ``saturated_``).
    n_folds : int or "auto", default="auto"
        Cross-fitting folds over episodes, or over people with all their episodes when the
        dataset has :attr:`~equicare.data.TrajectoryDataset.members` (``1``: no cross-fitting,
        in-sample probabilities);
        ``"auto"``: 1 when the state is saturated categorical, else 5.
    floor : float, default=1e-3
        Lower bound applied by :meth:`propensities` to the probability of the logged action.
    history : bool, default=True
        Add the previous action's components (one-hot) and the scaled step to the inputs.
    groups : bool, default=True
        Add the episode's group attributes (one-hot per level of at least 11 episodes in
        fitting; smaller and unseen levels share zeros) to the inputs:
        practice that treats groups differently in the same states is then modelled. The
        groups only enter the estimate of current practice, never a learned policy.
    C : float, default=1.0
        Inverse regularisation strength of the logistic model.
    max_iter : int, default=300
        Iterations of the logistic solver.
    random_state : int, default=0
        Seed of the fold assignment (and of randomised classifiers).
    calibration : bool, default=True
        Compute the reliability table of ``calibration_`` (full distributions of up to 20,000
        rows); ``False`` keeps only the logged-action summaries (faster).

    Attributes
    ----------
    n_actions_ : int
    factored_ : bool
    saturated_ : bool
        A logistic model whose design is mostly one-hot categorical levels (density below
        ``SPARSE_DENSITY``): ``"auto"`` then fits one flat model in-sample.
    n_folds_ : int
        Folds used (at most the number of episodes).
    group_levels_ : dict of str to tuple of str
        Levels (as strings) of each group attribute among the inputs: those of at least
        ``MIN_CELL`` (11) episodes (empty with ``groups=False`` or without groups).
    models_ : list
        One entry per fold; each a list of fitted classifiers (one per component if factored).
    fold_of_episode_ : ndarray of shape (n_episodes,)
    oof_logged_prob_ : ndarray of shape (n_steps,)
        Out-of-fold probability of the logged action on the fitting data (unfloored).
    n_floored_ : int
        Rows of the fitting data whose out-of-fold probability was below ``floor``.
    calibration_ : dict
        Out-of-fold log-loss, mean logged probability, expected calibration error and a
        reliability table over every (row, action) pair (bins of 1 to 10 decisions suppressed:
        :func:`calibration_bins`).
    n_fit_rows_ : list of int
        Rows each classifier was fitted on, fold by fold: with a sparse design, the distinct
        (inputs, target) rows weighted by their counts when they are at most ``DEDUPE_SHARE``
        of the rows (the same penalised likelihood: a saturated state's 94,000 rows are a few
        thousand distinct ones).
    converged_ : bool
        False when a solver stopped before converging (those ConvergenceWarnings are collected,
        not raised; every other warning of the fit is passed on).

    Examples
    --------
    >>> bm = BehaviorModel(n_folds=2).fit(dataset)  # doctest: +SKIP
    >>> p = bm.propensities(dataset)  # doctest: +SKIP
    """

    def __init__(self, estimator: Any = "logistic", *, factored: bool | str = "auto",
                 n_folds: int | str = "auto", floor: float = 1e-3, history: bool = True,
                 groups: bool = True, C: float = 1.0, max_iter: int = 300,
                 random_state: int = 0, calibration: bool = True) -> None:
        self.estimator = estimator
        self.factored = factored
        self.n_folds = n_folds
        self.floor = floor
        self.history = history
        self.groups = groups
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state
        self.calibration = calibration

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        if self.factored not in (True, False, "auto"):
            raise InvalidParameterError(PARAM_MESSAGE.format(name="factored", owner=_OWNER,
                                                  expected="True, False or 'auto'",
                                                  got=self.factored))
        if self.n_folds != "auto" and (not isinstance(self.n_folds, int | np.integer)
                                       or isinstance(self.n_folds, bool) or self.n_folds < 1):
            raise InvalidParameterError(PARAM_MESSAGE.format(name="n_folds", owner=_OWNER,
                                                  expected="an int >= 1 or 'auto'",
                                                  got=self.n_folds))
        if not isinstance(self.floor, float | int) or not 0 <= float(self.floor) < 1:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="floor", owner=_OWNER,
                                                  expected="a float in [0, 1)", got=self.floor))
        if not isinstance(self.groups, bool | np.bool_):
            raise InvalidParameterError(PARAM_MESSAGE.format(name="groups", owner=_OWNER,
                                                  expected="a bool", got=self.groups))
        if not isinstance(self.C, float | int) or float(self.C) <= 0:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="C", owner=_OWNER,
                                                  expected="a float > 0", got=self.C))

    # ------------------------------------------------------------------ inputs
    def _use_sparse(self, dataset: TrajectoryDataset) -> bool:
        """Whether a logistic model's inputs are mostly zeros (see ``SPARSE_DENSITY``)."""
        if not (isinstance(self.estimator, str) and self.estimator == "logistic"):
            return False
        n_num = dataset.states.shape[1]
        cat_cols = sum(len(lv) for lv in dataset.categorical_levels) \
            if dataset.categorical is not None else 0
        n_cat = len(dataset.categorical_levels) if dataset.categorical is not None else 0
        sizes = dataset.action_space.sizes if self.history else ()
        # the group columns do not enter the decision: a few group levels beside a state of
        # 40 levels would tip it to a cross-fitted chain (floored rows of thin levels)
        n_cols = n_num + cat_cols + int(sum(sizes)) + (1 if self.history else 0)
        nnz = n_num + n_cat + len(sizes) + (1 if self.history else 0)
        return bool(n_cols > 0 and nnz / n_cols < SPARSE_DENSITY)

    def _sparse_design(self, dataset: TrajectoryDataset) -> sp.csr_matrix:
        """:meth:`_design` as a CSR matrix (the same columns in the same order)."""
        n = dataset.n_steps
        every = np.arange(n)
        blocks: list[sp.csr_matrix] = [sp.csr_matrix(np.asarray(dataset.states,
                                                                dtype=np.float64))]
        if dataset.categorical is not None:
            for j, levels in enumerate(dataset.categorical_levels):
                blocks.append(_onehot_csr(every, dataset.categorical[:, j].astype(np.int64),
                                          (n, len(levels))))
        if self.group_levels_:
            rows, cols, width = self._group_columns(dataset)
            blocks.append(_onehot_csr(rows, cols, (n, width)))
        if self.history:
            codes = dataset.action_codes
            rows = np.flatnonzero(~dataset.is_first)
            for j, size in enumerate(dataset.action_space.sizes):
                blocks.append(_onehot_csr(rows, codes[rows - 1, j], (n, int(size))))
            step = dataset.step.astype(np.float64)[:, None] / self.step_scale_
            blocks.append(sp.csr_matrix(step))
        return sp.hstack(blocks, format="csr")

    def _design(self, dataset: TrajectoryDataset) -> Design:
        if getattr(self, "sparse_", False):
            return self._sparse_design(dataset)
        x = np.asarray(dataset.features(), dtype=np.float64)
        if self.group_levels_:
            x = np.concatenate([x, self._group_onehot(dataset)], axis=1)
        if not self.history:
            return x
        codes = dataset.action_codes
        sizes = dataset.action_space.sizes
        prev = np.zeros((dataset.n_steps, int(sum(sizes))))
        has_prev = ~dataset.is_first
        rows = np.flatnonzero(has_prev)
        start = 0
        for j, size in enumerate(sizes):
            prev[rows, start + codes[rows - 1, j]] = 1.0
            start += size
        step = dataset.step.astype(np.float64)[:, None] / self.step_scale_
        return np.concatenate([x, prev, step], axis=1)

    @staticmethod
    def _fit_group_levels(dataset: TrajectoryDataset) -> dict[str, tuple[str, ...]]:
        """Each attribute's levels held by at least ``MIN_CELL`` episodes (as strings).

        A level of fewer episodes shares the zero code of the rest: its own column would be
        fitted to a handful of stays (their actions near-separable, probabilities near 0) and
        would describe those few people. An attribute without such levels is left out.
        """
        out: dict[str, tuple[str, ...]] = {}
        for attr, labels in dataset.groups.items():
            levels, counts = np.unique(np.asarray(labels).astype(str), return_counts=True)
            kept = tuple(str(lv) for lv in levels[counts >= MIN_CELL])
            if kept:
                out[attr] = kept
        return out

    def _group_columns(self, dataset: TrajectoryDataset
                       ) -> tuple[NDArray[np.int64], NDArray[np.int64], int]:
        """Where the one-hot group levels are 1: ``(rows, columns, width)``.

        Levels are matched by their string form against ``group_levels_``; a label not seen in
        fitting (or an attribute the dataset lacks) has no 1. ``width`` is the number of level
        columns of every attribute.
        """
        rows_out, cols_out, offset = [], [], 0
        for attr, levels in self.group_levels_.items():
            labels = dataset.groups.get(attr)
            if labels is not None:
                uniq, inv = np.unique(np.asarray(labels).astype(str), return_inverse=True)
                code = np.array([levels.index(u) if u in levels else -1 for u in uniq],
                                dtype=np.int64)[inv.ravel()][dataset.episode_index]
                rows = np.flatnonzero(code >= 0)
                rows_out.append(rows)
                cols_out.append(offset + code[rows])
            offset += len(levels)
        empty = np.zeros(0, dtype=np.int64)
        return (np.concatenate(rows_out) if rows_out else empty,
                np.concatenate(cols_out) if cols_out else empty, offset)

    def _group_onehot(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """One-hot group levels of each row, shape ``(n_steps, sum of levels)``."""
        rows, cols, width = self._group_columns(dataset)
        block = np.zeros((dataset.n_steps, width))
        block[rows, cols] = 1.0
        return block

    @staticmethod
    def _prefix_onehot(codes: NDArray[np.int64], sizes: tuple[int, ...], k: int
                       ) -> NDArray[np.float64]:
        """One-hot encoding of the first ``k`` components, shape ``(n, sum(sizes[:k]))``."""
        n = codes.shape[0]
        out = np.zeros((n, int(sum(sizes[:k]))))
        start = 0
        for j in range(k):
            out[np.arange(n), start + codes[:, j]] = 1.0
            start += sizes[j]
        return out

    # ------------------------------------------------------------------ fitting
    def _fit_one(self, X: Design, codes: NDArray[np.int64], flat: NDArray[np.int64],
                 sizes: tuple[int, ...]) -> list[Any]:
        seed = int(self.random_state)
        if not self.factored_:
            targets = [(X, flat)]
        else:
            targets = [(_hcat(X, self._prefix_onehot(codes, sizes, k)), codes[:, k])
                       for k in range(len(sizes))]
        # a logistic likelihood depends on the data only through the counts of its distinct
        # (inputs, target) rows: fit those, weighted by their counts (the same objective)
        # (sparse designs only: mostly one-hot, they repeat; numeric states rarely do)
        x_keys = row_keys(X) if self.sparse_ else None
        models = []
        for k, (Xk, yk) in enumerate(targets):
            if np.unique(yk).size < 2:
                models.append(_Constant().fit(Xk, yk))
                continue
            clf = _make_classifier(self.estimator, float(self.C), int(self.max_iter), seed,
                                   sparse=bool(self.sparse_))
            fit_params: dict[str, Any] = {}
            if x_keys is not None:
                prefix = codes[:, :k] if self.factored_ else codes[:, :0]
                distinct = dedupe_rows(np.concatenate([x_keys, prefix, yk[:, None]], axis=1))
                if distinct is not None:
                    first, _, counts = distinct
                    Xk, yk = Xk[first], yk[first]
                    fit_params = {"standardscaler__sample_weight": counts,
                                  "logisticregression__sample_weight": counts}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                clf.fit(Xk, yk, **fit_params)
            self.n_fit_rows_.append(int(Xk.shape[0]))
            for w in caught:  # only the expected ConvergenceWarning is absorbed (converged_)
                if issubclass(w.category, ConvergenceWarning):
                    self.converged_ = False
                else:  # anything else reaches the caller's filters as if never caught
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                           source=w.source)
            models.append(clf)
        return models

    def fit(self, dataset: TrajectoryDataset, y: Any = None) -> BehaviorModel:
        """Fit the fold models on a dataset's logged actions.

        Parameters
        ----------
        dataset : TrajectoryDataset
        y : ignored
            Present for scikit-learn compatibility.

        Returns
        -------
        self
        """
        self._check_params()
        space = dataset.action_space
        self.n_actions_ = int(space.n_actions)
        self.sizes_ = tuple(int(s) for s in space.sizes)
        self.step_scale_ = float(max(int(dataset.episode_lengths.max()) - 1, 1))
        self.converged_ = True
        self.n_fit_rows_: list[int] = []
        self.group_levels_ = self._fit_group_levels(dataset) if self.groups else {}
        self.sparse_: bool = self._use_sparse(dataset)
        self.saturated_ = bool(self.sparse_ and dataset.categorical is not None)
        self.factored_: bool = bool(len(self.sizes_) > 1 and not self.saturated_
                              if self.factored == "auto" else self.factored)
        X = self._design(dataset)
        self.n_features_in_ = int(X.shape[1])
        codes, flat = dataset.action_codes, dataset.actions
        n_ep = dataset.n_episodes
        k = int(min((1 if self.saturated_ else 5) if self.n_folds == "auto" else self.n_folds,
                    n_ep))
        rng = check_random_state(int(self.random_state))
        # folds by episode id, so that an episode drawn twice (bootstrap) stays in one fold;
        # by person when the manifest names member, so that no out-of-fold propensity comes
        # from a model fitted on the same person's other stays
        unit_ids = dataset.episode_ids if dataset.members is None else dataset.members
        uniq, inv = np.unique(np.asarray(unit_ids).astype(str), return_inverse=True)
        k = int(min(k, uniq.size))
        self.n_folds_ = max(k, 1)
        fold = np.arange(uniq.size) % max(k, 1)
        rng.shuffle(fold)
        self.fold_of_episode_ = fold[inv].astype(np.int64)
        row_fold = self.fold_of_episode_[dataset.episode_index]
        if k <= 1:
            self.models_ = [self._fit_one(X, codes, flat, self.sizes_)]
        else:
            self.models_ = [self._fit_one(X[row_fold != f], codes[row_fold != f],
                                          flat[row_fold != f], self.sizes_) for f in range(k)]
        self.fingerprint_ = dataset_fingerprint(dataset)
        self._cat_counts(dataset)
        self._oof_summary(dataset, X, row_fold)
        return self

    def _cat_counts(self, dataset: TrajectoryDataset) -> None:
        """Count each action per level of each categorical state column (support diagnostics).

        One ``(levels, n_actions)`` table per column, so memory is linear in the levels
        whatever the number of columns (see :meth:`observed_in_state`).
        """
        self.cat_sizes_: tuple[int, ...] = tuple(len(lv) for lv in dataset.categorical_levels)
        self.cat_action_counts_: list[NDArray[np.int64]] | None = None
        if dataset.categorical is None or not self.cat_sizes_:
            return
        self.cat_action_counts_ = [
            np.bincount(dataset.categorical[:, j] * self.n_actions_ + dataset.actions,
                        minlength=size * self.n_actions_).reshape(size, self.n_actions_)
            for j, size in enumerate(self.cat_sizes_)]

    def observed_in_state(self, dataset: TrajectoryDataset,
                          rows: NDArray[np.int64] | None = None) -> NDArray[np.bool_] | None:
        """Whether each action was logged at the row's level of every categorical state column.

        With one categorical column this is "logged in the row's categorical state". With
        several, an action counts as never logged when some column's level never saw it: their
        combinations are usually too thin to tell (two rows per cell is common), and an action
        logged at the row's level of every column is one the data can speak to.

        Parameters
        ----------
        dataset : TrajectoryDataset
        rows : ndarray of shape (n_rows,), optional
            Only these rows of ``dataset`` (default: all).

        Returns
        -------
        ndarray of shape (n_steps, n_actions) (or (n_rows, n_actions)), or None
            None when the data has no categorical states.
        """
        check_is_fitted(self, "models_")
        if self.cat_action_counts_ is None or dataset.categorical is None:
            return None
        sizes = tuple(len(lv) for lv in dataset.categorical_levels)
        if sizes != self.cat_sizes_ or (dataset.categorical >= np.asarray(sizes)).any():
            return None
        cat = dataset.categorical if rows is None else dataset.categorical[rows]
        out = np.ones((cat.shape[0], self.n_actions_), dtype=bool)
        for j, counts in enumerate(self.cat_action_counts_):
            out &= counts[cat[:, j]] > 0
        return out

    # ------------------------------------------------------------------ prediction
    def _proba_component(self, model: Any, X: Design, n_levels: int
                         ) -> NDArray[np.float64]:
        p = model.predict_proba(X)
        out = np.zeros((X.shape[0], n_levels))
        out[:, np.asarray(model.classes_, dtype=np.int64)] = p
        return out

    @staticmethod
    def _linear_parts(model: Any, n_x: int, n_levels: int
                      ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
                                 NDArray[np.float64]] | None:
        """``(W_x, W_prefix, b, mean/scale)`` of a scaler + multinomial logistic pipeline."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        if not (isinstance(model, Pipeline) and len(model.steps) == 2
                and isinstance(model.steps[0][1], StandardScaler)
                and isinstance(model.steps[1][1], LogisticRegression)):
            return None
        scaler, lr = model.steps[0][1], model.steps[1][1]
        coef, icpt = np.asarray(lr.coef_), np.asarray(lr.intercept_)
        if coef.shape[0] == 1:  # binary: P(class 1) = sigmoid(z) = softmax([0, z])
            coef = np.vstack([np.zeros_like(coef), coef])
            icpt = np.r_[0.0, icpt]
        mean = np.asarray(scaler.mean_) if scaler.with_mean else np.zeros(coef.shape[1])
        scale = np.asarray(scaler.scale_) if scaler.scale_ is not None else np.ones(coef.shape[1])
        w = coef / scale  # logits = x @ w.T + (icpt - mean @ w.T)
        b = icpt - mean @ w.T
        full_w = np.zeros((n_levels, coef.shape[1]))
        full_b = np.full(n_levels, -np.inf)
        cls = np.asarray(lr.classes_, dtype=np.int64)
        full_w[cls], full_b[cls] = w, b
        return full_w[:, :n_x], full_w[:, n_x:], full_b, mean

    def _full_probs(self, models: list[Any], X: Design) -> NDArray[np.float64]:
        """Distribution over all flat actions, shape ``(n, n_actions)``."""
        n = X.shape[0]
        if not self.factored_:
            return self._proba_component(models[0], X, self.n_actions_)
        fast = [self._linear_parts(m, X.shape[1], size) for m, size in zip(models, self.sizes_,
                                                                              strict=True)]
        if all(f is not None for f in fast):
            return self._full_probs_linear(fast, X)  # type: ignore[arg-type]
        probs = np.ones((n, 1))
        prefixes = np.zeros((1, 0), dtype=np.int64)
        for k, size in enumerate(self.sizes_):
            cond = np.full((n, prefixes.shape[0], size), 1.0 / size)
            live = np.flatnonzero(probs.max(axis=0) > _PRUNE)
            for j in live:  # one prediction per reachable combination of earlier components
                pre_codes = np.broadcast_to(prefixes[j], (n, k))
                Xk = _hcat(X, self._prefix_onehot(pre_codes, self.sizes_, k))
                cond[:, j] = self._proba_component(models[k], Xk, size)
            probs = (probs[:, :, None] * cond).reshape(n, -1)
            prefixes = np.array([[*pre, a] for pre in prefixes for a in range(size)],
                                dtype=np.int64)
        return probs

    def _full_probs_linear(self, parts: list[tuple[NDArray[np.float64], ...]],
                           X: Design) -> NDArray[np.float64]:
        """Run the chain for logistic models without a call per prefix (logits are additive)."""
        n = X.shape[0]
        probs = np.ones((n, 1))
        prefixes = np.zeros((1, 0), dtype=np.int64)
        for k, (w_x, w_p, b, _) in enumerate(parts):
            pre = self._prefix_onehot(prefixes, self.sizes_, k)  # (n_prefixes, sum sizes[:k])
            size = self.sizes_[k]
            x_part, pre_part = X @ w_x.T, pre @ w_p.T + b  # (n, size), (n_prefixes, size)
            if size < 8:  # levels on the middle axis (same bits), back in action order
                cond = _softmax_levels(x_part[:, :, None] + pre_part.T[None, :, :])
                cond *= probs[:, None, :]
                probs = cond.transpose(0, 2, 1).reshape(n, -1)
            else:
                logits = x_part[:, None, :] + pre_part[None, :, :]
                logits -= logits.max(axis=2, keepdims=True)
                cond = np.exp(logits)
                cond /= cond.sum(axis=2, keepdims=True)
                probs = (probs[:, :, None] * cond).reshape(n, -1)
            prefixes = np.concatenate([np.repeat(prefixes, size, axis=0),
                                       np.tile(np.arange(size), prefixes.shape[0])[:, None]],
                                      axis=1)
        return probs

    def _logged_probs(self, models: list[Any], X: Design, codes: NDArray[np.int64],
                      flat: NDArray[np.int64]) -> NDArray[np.float64]:
        """Probability of the logged action, shape ``(n,)``."""
        rows = np.arange(X.shape[0])
        if not self.factored_:
            return self._proba_component(models[0], X, self.n_actions_)[rows, flat]
        p = np.ones(X.shape[0])
        for k, size in enumerate(self.sizes_):
            Xk = _hcat(X, self._prefix_onehot(codes, self.sizes_, k))
            p *= self._proba_component(models[k], Xk, size)[rows, codes[:, k]]
        return p

    def _is_fit_data(self, dataset: TrajectoryDataset) -> bool:
        return (len(self.models_) > 1 and dataset.n_episodes == self.fold_of_episode_.size
                and dataset_fingerprint(dataset) == self.fingerprint_)

    def _fold_blocks(self, dataset: TrajectoryDataset, fn: Any
                     ) -> Iterator[tuple[NDArray[np.int64], NDArray[np.float64]]]:
        """``(rows, fn(models, rows))`` out-of-fold on the fitting data, else fold-averaged.

        Blocks of at most ``_CHUNK`` rows (fewer with many actions: ``_BLOCK_CELLS``) that
        together cover every row once.
        """
        n = dataset.n_steps
        size = max(1_000, min(_CHUNK, _BLOCK_CELLS // max(1, dataset.n_actions)))
        if self._is_fit_data(dataset):
            row_fold = self.fold_of_episode_[dataset.episode_index]
            for f, models in enumerate(self.models_):
                rows = np.flatnonzero(row_fold == f)
                for s in range(0, rows.size, size):
                    r = rows[s:s + size]
                    yield r, fn(models, r)
            return
        for s in range(0, n, size):
            r = np.arange(s, min(s + size, n))
            yield r, sum(fn(models, r) for models in self.models_) / len(self.models_)

    def _by_fold(self, dataset: TrajectoryDataset, fn: Any, width: int | None
                 ) -> NDArray[np.float64]:
        """Apply ``fn(models, rows)`` out-of-fold on the fitting data, else averaged over folds."""
        n = dataset.n_steps
        out = np.zeros((n, width) if width else n)
        for r, value in self._fold_blocks(dataset, fn):
            out[r] = value
        return out

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Estimated ``pi_b(a|s)`` of every action at every row, shape ``(n_steps, n_actions)``.

        On the fitting data these are out-of-fold probabilities; on other data the average of the
        fold models. Rows sum to 1 (no floor).
        """
        check_is_fitted(self, "models_")
        X = self._design(dataset)
        return self._by_fold(dataset, lambda m, r: self._full_probs(m, X[r]), self.n_actions_)

    def action_prob_blocks(self, dataset: TrajectoryDataset
                           ) -> Iterator[tuple[NDArray[np.int64], NDArray[np.float64]]]:
        """:meth:`action_probs` block by block, for passes that need no full matrix.

        Yields
        ------
        rows : ndarray of shape (n_rows,)
            Rows of ``dataset`` in the block (every row appears in exactly one block).
        probs : ndarray of shape (n_rows, n_actions)
            The same numbers as ``action_probs(dataset)[rows]``.
        """
        check_is_fitted(self, "models_")
        X = self._design(dataset)
        yield from self._fold_blocks(dataset, lambda m, r: self._full_probs(m, X[r]))

    def logged_prob(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Estimated probability of each row's logged action (unfloored), shape ``(n_steps,)``."""
        check_is_fitted(self, "models_")
        if self._is_fit_data(dataset):
            return self.oof_logged_prob_.copy()
        X = self._design(dataset)
        codes, flat = dataset.action_codes, dataset.actions
        return self._by_fold(dataset,
                             lambda m, r: self._logged_probs(m, X[r], codes[r], flat[r]), None)

    def propensities(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """Floored probability of the logged action, ``max(p, floor)``, shape ``(n_steps,)``."""
        return np.maximum(self.logged_prob(dataset), float(self.floor))

    def n_floored(self, dataset: TrajectoryDataset) -> int:
        """Rows whose estimated logged-action probability is below ``floor``."""
        return int(np.sum(self.logged_prob(dataset) < float(self.floor)))

    @property
    def n_actions(self) -> int:
        """Number of flat actions (Policy protocol)."""
        check_is_fitted(self, "models_")
        return self.n_actions_

    # ------------------------------------------------------------------ calibration
    def _oof_summary(self, dataset: TrajectoryDataset, X: Design,
                     row_fold: NDArray[np.int64]) -> None:
        """Out-of-fold logged-action probabilities (all rows) and a reliability table.

        The reliability table covers every action of at most ``_CALIB_ROWS`` random rows.
        """
        n = dataset.n_steps
        logged = np.zeros(n)
        nb = _CALIB_EDGES.size - 1
        sum_p, sum_y, cnt = np.zeros(nb), np.zeros(nb), np.zeros(nb)
        folds = np.zeros(n, dtype=np.int64) if len(self.models_) == 1 else row_fold
        codes, flat = dataset.action_codes, dataset.actions
        rng = check_random_state(int(self.random_state) + 1)
        calib = np.zeros(n, dtype=bool)
        if self.calibration:
            calib[rng.permutation(n)[:_CALIB_ROWS]] = True
        for f in range(len(self.models_)):
            rows = np.flatnonzero(folds == f)
            for s in range(0, rows.size, _CHUNK):
                r = rows[s:s + _CHUNK]
                logged[r] = self._logged_probs(self.models_[f], X[r], codes[r], flat[r])
                rc = r[calib[r]]
                if rc.size == 0:
                    continue
                p = self._full_probs(self.models_[f], X[rc])
                y = np.zeros_like(p)
                y[np.arange(rc.size), flat[rc]] = 1.0
                b = np.clip(np.searchsorted(_CALIB_EDGES, p.ravel(), side="right") - 1, 0, nb - 1)
                sum_p += np.bincount(b, weights=p.ravel(), minlength=nb)
                sum_y += np.bincount(b, weights=y.ravel(), minlength=nb)
                cnt += np.bincount(b, minlength=nb)
        self.oof_logged_prob_ = logged
        self.n_floored_ = int(np.sum(logged < float(self.floor)))
        keep = cnt > 0
        ece = float(np.sum(np.abs(sum_p[keep] - sum_y[keep])) / max(cnt.sum(), 1.0))
        self.calibration_ = {
            "log_loss": float(-np.mean(np.log(np.maximum(logged, 1e-15)))),
            "mean_logged_prob": float(logged.mean()),
            "ece": ece,
            "out_of_fold": len(self.models_) > 1,
            "bins": calibration_bins(sum_p, sum_y, cnt),
        }
        if dataset.behavior_prob is not None:
            lp = np.log(np.maximum(logged, 1e-15)) - np.log(np.maximum(dataset.behavior_prob,
                                                                       1e-15))
            self.calibration_["mean_abs_log_ratio_vs_logged"] = float(np.mean(np.abs(lp)))

    def summary(self) -> dict[str, Any]:
        """Plain-data summary: settings, floored rows, calibration (the result JSON's).

        ``n_floored`` is None when the floored rows, or the others, number 1 to 10 (a small
        cell of decisions: :func:`equicare.privacy.small_count`); ``n_floored_`` keeps it.
        """
        from equicare.privacy import small_count

        check_is_fitted(self, "models_")
        est = self.estimator if isinstance(self.estimator, str) else type(self.estimator).__name__
        return {"estimator": est, "factored": self.factored_, "n_folds": len(self.models_),
                "floor": float(self.floor),
                "n_floored": small_count(self.n_floored_, self.oof_logged_prob_.size),
                "converged": self.converged_, "calibration": self.calibration_}
