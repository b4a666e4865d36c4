r"""Safe policy improvement with baseline bootstrapping (Pi_b-SPIBB) on discrete state cells.

Laroche, Trichelair and Tachet des Combes (2019), *Safe Policy Improvement with Baseline
Bootstrapping*, ICML. The learner builds the maximum-likelihood MDP of the panel's cells, and
optimises it inside the set of policies that copy the behaviour policy on every (cell, action)
pair logged fewer than ``N_wedge`` times (the *bootstrapped* pairs, set ``B``):

.. math::

    \pi(a \mid x) = \hat\pi_b(a \mid x) \quad (x, a) \in B, \qquad
    \pi(\cdot \mid x) \text{ puts } \sum_{a \notin B} \hat\pi_b(a \mid x)
    \text{ on } \arg\max_{a \notin B(x)} \hat Q(x, a).

So it deviates from the clinicians only where the counts support it, and with high probability
its true value is not much below the behaviour's (Theorem 2 of the paper).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.base import BaseEstimator

from equicare.data._cells import check_cells, resolve_cells, thin_cells_message
from equicare.exceptions import (
    DataValidationError,
    DataWarning,
    InvalidParameterError,
    PolicyError,
)
from equicare.learn._params import ConfigParams, check_fit_options
from equicare.policy._cells import CellPolicy, cell_codes
from equicare.privacy import quantile_edges, round_significant
from equicare.utils import (
    MIN_CELL,
    PARAM_MESSAGE,
    check_dataset,
    check_is_fitted,
    check_param,
    config_to_dict,
)

__all__ = ["SPIBB", "SPIBBConfig", "CellModel", "MSG_NOT_DISCRETE", "BEHAVIOR_MODES",
           "behavior_table", "bootstrapped_share", "choose_numeric",
           "NUMERIC_MODES"]

BEHAVIOR_MODES = ("auto", "counts", "logged", "known")
NUMERIC_MODES = ("auto", "ignore", "bin")

MSG_NOT_DISCRETE = ("{learner} works on discrete state cells: the dataset has no categorical "
                    "state columns and none of its numeric ones is binned (numeric='auto', the "
                    "default, bins those whose quantile bins predict the logged actions, and "
                    "none did; numeric='ignore' bins none). Declare the discrete columns as "
                    "dataset.categorical_states in the manifest, or cut each numeric state "
                    "column into quantile bins with numeric='bin' (--param numeric=bin; "
                    "numeric_bins sets how many, default 10).")


MSG_NO_CRITIC = ("{source}: the model folder holds no action values (it was saved before "
                 "tabular learners kept them); refit and save it again to read "
                 "scores(dataset, 'critic').")


@dataclass(frozen=True, kw_only=True)
class SPIBBConfig:
    """Settings of :class:`SPIBB`.

    Parameters
    ----------
    n_wedge : float, default 20
        ``N_wedge``: (cell, action) pairs with fewer model transitions are bootstrapped (the
        policy copies the behaviour there). ``inf`` reproduces the behaviour policy; 0 is the
        unconstrained MLE-optimal policy (unsafe).
    variant : {"pi_b", "soft"}
        ``pi_b``: Pi_b-SPIBB (Laroche et al., 2019) with ``n_wedge``. ``soft``: Approx-Soft-SPIBB
        (Nadjahi, Laroche and Tachet des Combes, 2019): the policy may move mass away from the
        behaviour subject to ``sum_a e(x, a) |pi(a|x) - pi_b(a|x)| <= epsilon`` with the error
        bound ``e(x, a) = 1 / sqrt(N(x, a))`` (infinite for pairs without model transitions);
        ``n_wedge`` is not used.
    epsilon : float, default 0.5
        Budget of the soft constraint (0: the behaviour policy).
    behavior : {"auto", "counts", "logged", "known"}
        Estimate of the behaviour policy per cell: action frequencies (``counts``); the mean
        logged propensity of each logged action renormalised over the logged actions
        (``logged``); or the logged propensities taken as the known baseline (``known``, the
        setting SPIBB was designed for): each logged (cell, action) pair keeps its mean logged
        propensity, and the cell's remaining mass ``1 - sum`` is spread evenly over the actions
        never logged in the cell (renormalised when the logged propensities already sum to 1 or
        more). Where the policy copies the baseline, its importance ratio on logged rows is then
        1, not ``1 / sum``, which is what keeps off-policy evaluation of a sparse panel stable.
        ``auto``: ``known`` when the dataset has ``behavior_prob``, else ``counts``.
    numeric : {"auto", "ignore", "bin"}
        Numeric state columns: cut into ``numeric_bins`` quantile bins that join the cell key
        (``bin``: every column; :func:`~equicare.privacy.quantile_edges`), or ignored (``ignore``:
        the cells are the categorical columns' combinations; a panel without one is refused).
        ``auto`` (the default) bins the columns whose bins predict the logged actions beyond the
        cells (:func:`choose_numeric`, held-out and cross-fitted) and ignores the others, e.g. a
        severity score derived from the categorical state: when practice reads a numeric state
        (a dose adjusted to the INR), cells blind to it make the behaviour estimate, which the
        policy copies or moves away from, an average over that state (a dosing panel:
        Monte-Carlo value -62.0 with ``ignore`` against practice's -7.25; -8.8 with ``auto``).
        The choice is ``numeric_choice_``; with no categorical column and nothing binned the
        panel is refused.
    cells : "auto", "all" or tuple of str, default "auto"
        The categorical state columns whose combinations are the cells. ``"auto"``: with
        several columns, those that change the dynamics given the others
        (:func:`equicare.data.choose_cells`; a care site that does not drive outcomes
        is pooled over); ``"all"``: every column.
    numeric_bins : int, default 10
        Quantile bins per binned numeric column (fewer where point masses merge quantiles).
    horizon : int or None
        Bellman backups (steps of the finite-horizon value iteration). None: the longest
        episode in the data (the logged window, as Contract 1 values it).
    tol : float
        Stop the value iteration early when the values move less than this.
    """

    n_wedge: float = 20.0
    variant: Literal["pi_b", "soft"] = "pi_b"
    epsilon: float = 0.5
    behavior: Literal["auto", "counts", "logged", "known"] = "auto"
    numeric: Literal["auto", "ignore", "bin"] = "auto"
    numeric_bins: int = 10
    cells: str | tuple[str, ...] = "auto"
    horizon: int | None = None
    tol: float = 1e-10

    def __post_init__(self) -> None:
        o = "SPIBBConfig"
        check_param(self.n_wedge, "n_wedge", o, kind=(int, float), low=0,
                    expected="a number >= 0 (inf: the behaviour policy)")
        check_param(self.variant, "variant", o, choices=("pi_b", "soft"))
        check_param(self.epsilon, "epsilon", o, kind=(int, float), low=0)
        check_param(self.behavior, "behavior", o, choices=BEHAVIOR_MODES)
        check_param(self.numeric, "numeric", o, choices=NUMERIC_MODES)
        check_param(self.numeric_bins, "numeric_bins", o, kind=int, low=2,
                    expected="an int >= 2")
        object.__setattr__(self, "cells", check_cells(self.cells, o))
        check_param(self.horizon, "horizon", o, kind=int, low=1, allow_none=True,
                    expected="an int >= 1 or None")
        check_param(self.tol, "tol", o, kind=(int, float), low=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (``inf`` as the string ``"inf"``)."""
        d = config_to_dict(self)
        if not np.isfinite(d["n_wedge"]):
            d["n_wedge"] = "inf"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SPIBBConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidParameterError(
                f"Unknown SPIBBConfig keys {unknown}; known: {sorted(known)}.")
        d = dict(d)
        if d.get("n_wedge") == "inf":
            d["n_wedge"] = float("inf")
        return cls(**d)


#: ``numeric="auto"``: standard errors (over episodes) by which binning a numeric column must
#: improve the held-out log-likelihood of the logged actions.
NUMERIC_N_SE = 2.0
#: ``numeric="auto"``: the least held-out gain, in nats per row, for which a numeric column is
#: binned (a column that only refines practice a little would multiply the cells for nothing).
NUMERIC_MIN_GAIN = 0.01
#: ``numeric="auto"``: folds over episodes, and the pseudo-rows of the coarser cells' action
#: frequencies in a finer cell's (strengths tried; the best is kept, as ``choose_cells`` does:
#: with 72 actions one pseudo-row makes a fine cell's unlogged rare actions far too unlikely).
NUMERIC_FOLDS = 5
NUMERIC_BACKOFF = (1.0, 10.0, 100.0, 1000.0)


def _action_gain(a: NDArray[np.int64], coarse: NDArray[np.int64], fine: NDArray[np.int64],
                 row_fold: NDArray[np.int64], n_folds: int, n_actions: int
                 ) -> dict[float, NDArray[np.float64]]:
    """Per row, the held-out log-likelihood of the logged action, fine cells minus coarse.

    Coarse model: action counts per coarse cell with one pseudo-row of the training fold's
    action frequencies (add-1/2); fine model: counts per fine cell with ``k`` pseudo-rows of
    the coarse model, for each ``k`` in :data:`NUMERIC_BACKOFF`. Cross-fitted over
    ``row_fold``.
    """
    from equicare.data._cells import _counts

    out = {k: np.zeros(a.size) for k in NUMERIC_BACKOFF}
    key_c, key_f = coarse * n_actions + a, fine * n_actions + a
    for f in range(n_folds):
        tr, te = row_fold != f, row_fold == f
        if not te.any() or not tr.any():
            continue
        marg = (_counts(a[tr], a[te]) + 0.5) / (tr.sum() + 0.5 * n_actions)
        p_c = (_counts(key_c[tr], key_c[te]) + marg) / (_counts(coarse[tr], coarse[te]) + 1.0)
        n_fa, n_f = _counts(key_f[tr], key_f[te]), _counts(fine[tr], fine[te])
        for k in NUMERIC_BACKOFF:
            out[k][te] = np.log((n_fa + k * p_c) / (n_f + k)) - np.log(p_c)
    return out


def choose_numeric(dataset: Any, cells: NDArray[np.int64], n_bins: int
                   ) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The numeric state columns whose quantile bins predict the logged actions beyond the cells.

    Forward selection by the held-out log-likelihood of the logged action (cross-fitted over
    :data:`NUMERIC_FOLDS` folds of episodes, seeded): each round tries every numeric column not yet
    chosen, cut into ``n_bins`` bins (:func:`~equicare.privacy.quantile_edges`) and crossed with the
    cells and the columns chosen so far, and adds the one with the largest margin (gain per episode
    minus :data:`NUMERIC_N_SE` standard errors) when that margin is positive and the gain is at
    least :data:`NUMERIC_MIN_GAIN` nats per row. The baseline the tabular learners copy or move away
    from is their estimate of practice per cell: when practice reads a numeric state (a dose
    adjusted to a lab value), cells that ignore it make that estimate the average over the lab
    values, and a policy built on it is not current practice (a dosing panel: Monte-Carlo value
    -62.0 against practice's -7.25). A column constant within the cells (a severity score
    derived from the state) adds nothing and stays out.

    Parameters
    ----------
    dataset : TrajectoryDataset
    cells : ndarray of shape (n_steps,), int64
        Each row's cell of the categorical columns (all zeros without one).
    n_bins : int

    Returns
    -------
    columns : tuple of str
        The chosen columns, in the dataset's order.
    choice : dict
        JSON-friendly: ``columns``, ``criterion``, ``tests`` (per column: ``gain_per_row``,
        ``gain`` and ``se`` per episode in the round it was last tried, ``chosen``) and
        ``n_folds``.
    """
    names = tuple(dataset.state_names)
    tests: dict[str, dict[str, Any]] = {}
    chosen: list[int] = []
    criterion = ("a numeric column is binned when, given the cells and the columns binned "
                 "before it, its bins improve the held-out log-likelihood of the logged action "
                 f"by more than {NUMERIC_N_SE:g} standard errors and by at least "
                 f"{NUMERIC_MIN_GAIN:g} nats per row")
    k = int(min(NUMERIC_FOLDS, dataset.n_episodes))
    if k >= 2 and names:
        from equicare.data._cells import _codes

        rng = np.random.default_rng(0)
        fold = np.arange(dataset.n_episodes) % k
        rng.shuffle(fold)
        row_fold = fold[dataset.episode_index]
        a = np.asarray(dataset.actions, dtype=np.int64)
        bins = np.column_stack([cells] + [
            np.searchsorted(quantile_edges(dataset.states[:, j], n_bins),
                            np.asarray(dataset.states[:, j], dtype=np.float64), side="right")
            for j in range(len(names))]).astype(np.int64)
        starts = dataset.episode_offsets[:-1]
        n_rows, n_ep = float(dataset.n_steps), float(dataset.n_episodes)
        while len(chosen) < len(names):
            coarse = _codes(bins, [0] + [1 + c for c in chosen])
            best, best_margin = -1, 0.0
            for j in (j for j in range(len(names)) if j not in chosen):
                gains = _action_gain(a, coarse, _codes(bins, [0] + [1 + c for c in chosen]
                                                       + [1 + j]), row_fold, k,
                                     int(dataset.n_actions))
                stats = {}
                for b, g in gains.items():
                    per_ep = np.add.reduceat(g, starts)
                    stats[b] = (float(per_ep.mean()), float(per_ep.std(ddof=1) / np.sqrt(n_ep)))
                b = max(stats, key=lambda b: stats[b][0] - NUMERIC_N_SE * stats[b][1])
                gain, se = stats[b]
                margin = gain - NUMERIC_N_SE * se
                tests[names[j]] = {"gain_per_row": gain * n_ep / n_rows, "gain": gain,
                                   "se": se, "backoff": b, "chosen": False}
                if (margin > best_margin and tests[names[j]]["gain_per_row"]
                        >= NUMERIC_MIN_GAIN):
                    best, best_margin = j, margin
            if best < 0:
                break
            chosen.append(best)
            tests[names[best]]["chosen"] = True
    columns = tuple(names[j] for j in sorted(chosen))
    return columns, {"columns": list(columns), "criterion": criterion, "tests": tests,
                     "n_folds": k}


def bootstrapped_share(bootstrapped: NDArray[np.bool_]) -> float:
    """Share of the kept cells' pairs that copy the behaviour (1 when every cell is pooled)."""
    return float(bootstrapped.mean()) if bootstrapped.size else 1.0


def resolve_behavior(mode: str, behavior_prob: Any) -> str:
    """``auto`` resolved: ``known`` with logged propensities, else ``counts``."""
    if mode == "auto":
        return "known" if behavior_prob is not None else "counts"
    return mode


def behavior_table(n_all: NDArray[np.float64], flat: NDArray[np.int64],
                   behavior_prob: NDArray[np.float64] | None, mode: str,
                   owner: str = "SPIBB") -> NDArray[np.float64]:
    """Behaviour policy per cell from the logged rows (see ``SPIBBConfig.behavior``).

    Parameters
    ----------
    n_all : ndarray of shape (n_cells, n_actions)
        Logged rows per (cell, action) pair.
    flat : ndarray of shape (n_steps,), int64
        ``cell * n_actions + action`` of each row.
    behavior_prob : ndarray of shape (n_steps,) or None
        Logged propensity of each row's action.
    mode : {"auto", "counts", "logged", "known"}
    owner : str
        Learner named in the error message.

    Returns
    -------
    ndarray of shape (n_cells, n_actions)
        Rows sum to 1; positive exactly on the logged pairs, except with ``known``, where the
        remaining mass sits on the cell's unlogged actions.
    """
    C, A = n_all.shape
    mode = resolve_behavior(mode, behavior_prob)
    if mode == "counts":
        pb = n_all.copy()
    else:
        if behavior_prob is None:
            raise DataValidationError(f"{owner}: behavior={mode!r} needs logged propensities "
                                      "(manifest dataset.behavior_prob).")
        psum = np.bincount(flat, weights=behavior_prob, minlength=C * A).reshape(C, A)
        pb = np.where(n_all > 0, psum / np.maximum(n_all, 1), 0.0)
        if mode == "known":
            unlogged = n_all == 0
            rest = 1.0 - pb.sum(axis=1)
            n_un = unlogged.sum(axis=1)
            spread = np.where((rest > 0) & (n_un > 0), rest / np.maximum(n_un, 1), 0.0)
            pb = np.where(unlogged, spread[:, None], pb)
    return np.asarray(pb / pb.sum(axis=1, keepdims=True), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class CellModel:
    """The maximum-likelihood MDP of a panel's cells (shared by the tabular learners).

    Attributes
    ----------
    cell : ndarray of shape (n_steps,), int64
        Cell of each row.
    keys : ndarray of shape (n_cells, n_columns), int64
    n_cells, n_actions : int
    gamma : float
    n_all : ndarray of shape (n_cells, n_actions)
        Logged rows per pair (censored last rows included).
    pb : ndarray of shape (n_cells, n_actions)
        Behaviour estimate per cell (:func:`behavior_table`).
    R : ndarray of shape (n_cells, n_actions)
        Mean reward of the model transitions.
    P : scipy.sparse.csr_matrix of shape (n_cells * n_actions, n_cells)
        Transition frequencies to transient cells; a row sums to one minus the pair's share of
        terminal rows (absorbing, zero future value).
    counts : ndarray of shape (n_cells, n_actions)
        Model transitions ``N(x, a)`` (a censored last row adds none).
    has_model : ndarray of shape (n_cells, n_actions), bool
    horizon : int
        Bellman backups of the finite-horizon value iteration.
    first : ndarray of shape (n_episodes,), int64
        Cell of each episode's first row.
    known : bool
        ``pb`` is the known baseline (``behavior="known"``): its mass on unlogged pairs is
        current practice's remainder.
    pooled : ndarray of shape (n_cells,), bool
        Cells logged in fewer than :data:`~equicare.utils.MIN_CELL` episodes: the policy keeps
        the behaviour estimate there while learning and the fitted policy gives their rows the
        fallback row (they get no table row of their own, so a model folder keeps no row of a
        few patients' actions or propensities).
    """

    cell: NDArray[np.int64]
    keys: NDArray[np.int64]
    n_cells: int
    n_actions: int
    gamma: float
    n_all: NDArray[np.float64]
    pb: NDArray[np.float64]
    R: NDArray[np.float64]
    P: sp.csr_matrix
    counts: NDArray[np.float64]
    has_model: NDArray[np.bool_]
    horizon: int
    first: NDArray[np.int64]
    known: bool = False
    pooled: NDArray[np.bool_] | None = None

    @property
    def small(self) -> NDArray[np.bool_]:
        """``pooled`` (all False when not given), shape ``(n_cells,)``."""
        if self.pooled is None:
            return np.zeros(self.n_cells, dtype=bool)
        return self.pooled


class SPIBB(ConfigParams, BaseEstimator):  # type: ignore[misc]
    """Pi_b-SPIBB on the discrete state cells of a panel (Laroche et al., 2019).

    A scikit-learn estimator: ``clone`` works, and ``get_params`` / ``set_params`` see
    ``config`` and each of its fields (``set_params(n_wedge=10)``).

    Parameters
    ----------
    config : SPIBBConfig, optional
    **overrides
        Config fields to change (``SPIBB(n_wedge=10)``).

    Attributes
    ----------
    policy_ : CellPolicy
        The fitted policy (``action_probs(dataset)`` for any panel with the same columns). It
        has a row for each cell logged in at least :data:`~equicare.utils.MIN_CELL` (11)
        episodes, its probabilities rounded to 4 significant digits; rows of the smaller cells
        (``pooled_cells_``) read the fallback row with the unseen cells: left to the clinicians
        (``deferred``), whose probability they get on a panel with logged propensities (the
        marginal action frequencies stand in otherwise). While learning, the policy keeps the
        behaviour estimate in those cells. So a model folder holds no small cell's actions,
        logged propensities or values.
    behavior_ : ndarray of shape (n_cells, n_actions)
        Estimated behaviour policy per cell. The per-cell attributes cover the ``n_cells_``
        cells of the policy's table (the pooled cells are left out).
    counts_ : ndarray of shape (n_cells, n_actions), int64
        Model transitions per (cell, action) (a censored last row adds none).
    bootstrapped_ : ndarray of shape (n_cells, n_actions), bool
        Pairs where the policy copies the behaviour (``counts_ < n_wedge``).
    q_ : ndarray of shape (n_cells, n_actions)
        Action values of the MLE model under the returned policy's backups.
    critic_ : ndarray of shape (n_cells + 1, n_actions)
        ``q_`` where the learner has a value for the pair, NaN elsewhere (pairs without model
        transitions) and on the last row (cells not seen in training): what
        ``scores(dataset, "critic")`` reads. Kept in the model folder, rounded to 4
        significant digits.
    value_ : float
        Value of the policy in the MLE model, averaged over the data's initial rows.
    behavior_value_ : float
        Value of the estimated behaviour policy in the MLE model, likewise.
    n_cells_ : int
        Cells with a table row (at least ``MIN_CELL`` episodes).
    pooled_cells_ : int
        Cells logged in fewer than ``MIN_CELL`` episodes, whose rows read the fallback row.
    cell_columns_ : tuple of str
        The categorical columns whose combinations are the cells (``cells``).
    cell_choice_ : dict or None
        With ``cells="auto"`` and several columns, how they were chosen
        (:meth:`equicare.data.CellChoice.to_dict`).
    numeric_choice_ : dict or None
        With ``numeric="auto"`` and numeric state columns, which were binned and the held-out
        gains (:func:`choose_numeric`); kept in the model folder.
    ignored_numeric_ : tuple of str
        Numeric state columns the cells do not read.

    Notes
    -----
    Censoring: a transition ends an episode as absorbing (zero future value) only on a row with
    ``terminal = 1``. The last row of a censored episode (``terminal = 0``) contributes no
    transition to the model: its future is unknown, not zero. Pairs with logged rows but no model
    transition are bootstrapped and valued as their cell's average.
    """

    algo: ClassVar[str] = "spibb"
    config_class: ClassVar[type[Any]] = SPIBBConfig

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        from dataclasses import replace

        name, cls = type(self).__name__, self.config_class
        if config is None:
            config = cls(**overrides)
        elif overrides:
            config = replace(config, **overrides)
        if not isinstance(config, cls):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="config", owner=name, expected=f"a {cls.__name__}",
                got=type(config).__name__))
        self.config = config

    # ------------------------------------------------------------------ fit
    def _cells(self, dataset: Any) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        cfg = self.config
        columns, choice = resolve_cells(dataset, cfg.cells, type(self).__name__)
        self.cell_choice_ = None if choice is None else choice.to_dict()
        numeric: tuple[str, ...] = ()
        self.numeric_choice_ = None
        if cfg.numeric == "bin" and dataset.n_features > 0:
            numeric = tuple(dataset.state_names)
        elif cfg.numeric == "auto" and dataset.n_features > 0:
            from equicare.data._cells import _codes

            base, _ = cell_codes(dataset, columns, (), ())
            numeric, self.numeric_choice_ = choose_numeric(
                dataset, _codes(base, list(range(base.shape[1]))), cfg.numeric_bins)
        names = list(dataset.state_names)
        edges = tuple(quantile_edges(dataset.states[:, names.index(c)], cfg.numeric_bins)
                      for c in numeric)
        if not columns and not numeric:
            raise DataValidationError(MSG_NOT_DISCRETE.format(learner=type(self).__name__))
        msg = thin_cells_message(dataset, f"{type(self).__name__}'s cells", columns,
                                 None if cfg.cells != "auto" else
                                 "cells='auto' kept these columns (each changes the "
                                 "dynamics given the others); name fewer with cells=(...) if "
                                 "some do not define the clinical state.")
        if msg is not None:
            warnings.warn(msg, DataWarning, stacklevel=3)
        codes, levels = cell_codes(dataset, columns, numeric, edges)
        keys, cell = np.unique(codes, axis=0, return_inverse=True)
        self.cell_columns_ = columns
        self.ignored_numeric_ = tuple(c for c in dataset.state_names if c not in numeric)
        self._layout = (columns, levels, numeric, edges)
        return np.asarray(cell, dtype=np.int64).ravel(), keys.astype(np.int64)

    def fit(self, dataset: Any, *, valid: Any | None = None, progress: bool = False,
            checkpoint_dir: str | os.PathLike[str] | None = None, resume: bool = False,
            **kwargs: Any) -> Self:
        """Fit on a :class:`~equicare.data.TrajectoryDataset`; returns ``self``.

        The learners' common signature: ``progress`` is accepted and ignored (SPIBB takes
        seconds); ``valid``, ``checkpoint_dir`` and ``resume`` only at their defaults (it fits
        on all of ``dataset`` in one pass).

        Raises
        ------
        InvalidParameterError
            Any other keyword argument (a setting belongs to the constructor), or ``valid``,
            ``checkpoint_dir`` or ``resume`` given.
        """
        check_fit_options(type(self).__name__, self.config, valid=valid,
                          checkpoint_dir=checkpoint_dir, resume=resume, extra=kwargs)
        cfg = self.config
        m = self._model(dataset)
        C, A, gamma = m.n_cells, m.n_actions, m.gamma
        R, P, pb, counts, has_model = m.R, m.P, m.pb, m.counts, m.has_model
        # pairs the policy may re-weight; a cell of fewer than MIN_CELL episodes keeps the
        # behaviour (its rows get the fallback row, which defers to the clinicians)
        free = (counts >= cfg.n_wedge) & has_model & ~m.small[:, None]
        boot = ~free
        # ---- finite-horizon value iteration under the SPIBB constraint
        horizon = m.horizon
        pb_boot = np.where(boot, pb, 0.0)
        free_mass = np.where(free, pb, 0.0).sum(axis=1)
        no_model_cell: NDArray[np.bool_] = np.asarray(~has_model.any(axis=1), dtype=bool)
        err = np.where(has_model, 1.0 / np.sqrt(np.maximum(counts, 1.0)), np.inf)
        V = np.zeros(C)
        Q = R.copy()
        for _sweep in range(horizon):
            Q = R + gamma * (P @ V).reshape(C, A)
            if cfg.variant == "soft":
                pi = self._soft_greedy(Q, pb, err, float(cfg.epsilon))
                pi[m.small] = pb[m.small]
                V_new = self._mean_value(pi, Q, has_model, no_model_cell)
            else:
                V_new = self._backup(Q, pb_boot, free_mass, free, has_model, no_model_cell)
            converged = bool(np.max(np.abs(V_new - V)) < cfg.tol)
            V = V_new
            if converged:
                break
        if cfg.variant == "soft":
            pi = self._soft_greedy(Q, pb, err, float(cfg.epsilon))
            pi[m.small] = pb[m.small]
            boot = pi == pb
        else:
            pi = self._greedy(Q, pb_boot, free_mass, free)
        self.q_ = Q
        self.bootstrapped_ = boot
        self.value_ = float(np.mean((pi * Q).sum(axis=1)[m.first]))
        self._finish(dataset, m, pi)
        return self

    def _valued(self, m: CellModel) -> NDArray[np.bool_]:
        """Pairs whose ``q_`` is an estimate (SPIBB: those with model transitions)."""
        return m.has_model

    def _model(self, dataset: Any) -> CellModel:
        """The cells, the behaviour estimate and the maximum-likelihood MDP of a panel."""
        cfg = self.config
        check_dataset(dataset, f"{type(self).__name__}.fit")
        cell, keys = self._cells(dataset)
        C, A = int(keys.shape[0]), int(dataset.n_actions)
        a = dataset.actions
        # ---- behaviour estimate per cell (all rows, censored last rows included)
        flat = cell * A + a
        n_all = np.bincount(flat, minlength=C * A).reshape(C, A).astype(np.float64)
        pb = behavior_table(n_all, flat, dataset.behavior_prob, cfg.behavior,
                            type(self).__name__)
        # ---- MLE model: terminal rows absorb, censored last rows are dropped
        nxt = dataset.next_index
        term = dataset.terminals.astype(bool)
        keep = term | (nxt >= 0)
        cont = keep & ~term
        n_model = np.bincount(flat[keep], minlength=C * A).astype(np.float64)
        r_sum = np.bincount(flat[keep], weights=dataset.rewards[keep], minlength=C * A)
        R = np.where(n_model > 0, r_sum / np.maximum(n_model, 1), 0.0).reshape(C, A)
        rows_c = np.flatnonzero(cont)
        P = sp.csr_matrix((np.ones(rows_c.size) / n_model[flat[rows_c]],
                           (flat[rows_c], cell[nxt[rows_c]])), shape=(C * A, C))
        P.sum_duplicates()
        counts = n_model.reshape(C, A)
        # episodes per cell: cells under MIN_CELL are pooled into the fallback row
        pairs = np.unique(cell.astype(np.int64) * dataset.n_episodes + dataset.episode_index)
        n_ep = np.bincount(pairs // dataset.n_episodes, minlength=C)
        return CellModel(cell=cell, keys=keys, n_cells=C, n_actions=A, gamma=float(dataset.gamma),
                         n_all=n_all, pb=pb, R=R, P=P, counts=counts, has_model=counts > 0,
                         horizon=cfg.horizon or int(dataset.episode_lengths.max()),
                         first=cell[dataset.is_first],
                         known=resolve_behavior(cfg.behavior, dataset.behavior_prob) == "known",
                         pooled=n_ep < MIN_CELL)

    def _finish(self, dataset: Any, m: CellModel, pi: NDArray[np.float64]) -> None:
        """Set the fitted attributes shared by the tabular learners (after ``q_``, ``value_``).

        The policy and ``critic_`` keep a row only for the cells of at least
        :data:`~equicare.utils.MIN_CELL` episodes (rows of the others read the fallback row, as
        unseen cells do), and their numbers rounded to 4 significant digits, so a model folder
        holds no patient's logged propensity, reward or action history.
        """
        keep = ~m.small
        self.behavior_ = m.pb[keep]
        self.pooled_cells_ = int(m.small.sum())
        self.critic_ = np.vstack([round_significant(
            np.where(self._valued(m), self.q_, np.nan)[keep], 4),
            np.full((1, m.n_actions), np.nan)])
        self.q_ = self.q_[keep]
        self.bootstrapped_ = self.bootstrapped_[keep]
        self.counts_ = m.counts[keep].astype(np.int64)
        self.n_cells_ = int(keep.sum())
        self.behavior_value_ = float(np.mean(self._model_value(
            m.pb, m.R, m.P, m.gamma, m.horizon, m.has_model)[m.first]))
        marginal = m.n_all.sum(axis=0) / m.n_all.sum()
        columns, levels, numeric, edges = self._layout
        # rows of unseen and pooled cells are left to the clinicians (the marginal row is
        # only the stand-in used without logged propensities); with the known baseline, the
        # clinicians' unlogged remainder in a kept cell stays theirs as well
        n_keep = int(keep.sum())
        d = np.zeros((n_keep, m.n_actions), dtype=bool)
        kept = np.ones(n_keep)
        if m.known:
            d_all = (m.n_all == 0) & (pi > 0)
            theirs = (m.pb * d_all).sum(axis=1)
            share = np.where(theirs > 0, (pi * d_all).sum(axis=1)
                             / np.where(theirs > 0, theirs, 1.0), 1.0)
            d, kept = d_all[keep], np.clip(round_significant(share[keep], 4), 0.0, 1.0)
        deferred = np.vstack([d, np.ones((1, m.n_actions), dtype=bool)])
        rate = np.append(kept, 1.0)
        table = round_significant(np.vstack([pi[keep], marginal]), 4)
        self.policy_ = CellPolicy(table=table / table.sum(axis=1, keepdims=True),
                                  keys=m.keys[keep], columns=columns,
                                  levels=levels, numeric=numeric, edges=edges,
                                  action_space=dataset.action_space,
                                  source=f"<{type(self).__name__}>", deferred=deferred,
                                  deferred_rate=rate)
        self.action_space_ = dataset.action_space
        self.state_names_ = tuple(dataset.state_names)
        from equicare.policy._learned import manifest_fingerprint

        self.manifest_fingerprint_ = manifest_fingerprint(getattr(dataset, "manifest", None))

    @staticmethod
    def _backup(Q: NDArray[np.float64], pb_boot: NDArray[np.float64],
                free_mass: NDArray[np.float64], free: NDArray[np.bool_],
                has_model: NDArray[np.bool_], no_model_cell: NDArray[np.bool_]
                ) -> NDArray[np.float64]:
        """``V(x) = max over Pi_b-constrained policies of sum_a pi(a|x) Q(x, a)``.

        Pairs without model transitions are valued as their cell's average (weights
        renormalised over the modelled pairs); a cell with none at all gets the mean value.
        """
        best_free = np.where(free, Q, -np.inf).max(axis=1)
        w = np.where(has_model, pb_boot, 0.0)
        tot = w.sum(axis=1) + free_mass
        num = (w * Q).sum(axis=1) + free_mass * np.where(free_mass > 0, best_free, 0.0)
        V = np.where(tot > 0, num / np.where(tot > 0, tot, 1.0), 0.0)
        if no_model_cell.any():
            V[no_model_cell] = V[~no_model_cell].mean() if (~no_model_cell).any() else 0.0
        return V

    @staticmethod
    def _mean_value(pi: NDArray[np.float64], Q: NDArray[np.float64],
                    has_model: NDArray[np.bool_], no_model_cell: NDArray[np.bool_]
                    ) -> NDArray[np.float64]:
        """``V(x) = sum_a pi(a|x) Q(x, a)`` over modelled pairs (weights renormalised)."""
        w = np.where(has_model, pi, 0.0)
        tot = w.sum(axis=1)
        V = np.where(tot > 0, (w * Q).sum(axis=1) / np.where(tot > 0, tot, 1.0), 0.0)
        if no_model_cell.any():
            V[no_model_cell] = V[~no_model_cell].mean() if (~no_model_cell).any() else 0.0
        return V

    @staticmethod
    def _soft_greedy(Q: NDArray[np.float64], pb: NDArray[np.float64], err: NDArray[np.float64],
                     epsilon: float) -> NDArray[np.float64]:
        """Approx-Soft-SPIBB projection (Nadjahi et al., 2019, Algorithm 2), all cells at once.

        Mass moves from the worst actions to the best modelled action ``a*`` while the budget
        ``sum_a e(x, a) |pi - pi_b| <= epsilon`` lasts; moving ``m`` from ``a`` costs
        ``m (e(x, a) + e(x, a*))``.
        """
        C, A = Q.shape
        finite = np.isfinite(err)
        q = np.where(finite, Q, -np.inf)
        star = q.argmax(axis=1)
        rows = np.arange(C)
        has = finite.any(axis=1)
        pi = pb.copy()
        budget = np.where(has, epsilon, 0.0)
        e_star = np.where(has, err[rows, star], np.inf)
        order = np.argsort(np.where(finite, Q, np.inf), axis=1, kind="stable")
        moved = np.zeros(C)
        for k in range(A):
            a = order[:, k]
            cost = err[rows, a] + e_star
            ok = (a != star) & np.isfinite(cost) & (budget > 0) & (q[rows, a] < q[rows, star])
            m = np.where(ok, np.minimum(pi[rows, a], budget / np.where(ok, cost, 1.0)), 0.0)
            pi[rows, a] -= m
            moved += m
            budget -= m * np.where(ok, cost, 0.0)
        pi[rows[has], star[has]] += moved[has]
        return pi

    @staticmethod
    def _greedy(Q: NDArray[np.float64], pb_boot: NDArray[np.float64],
                free_mass: NDArray[np.float64], free: NDArray[np.bool_]
                ) -> NDArray[np.float64]:
        """Pi_b-SPIBB greedy projection: behaviour on ``B``, the rest on the best free action."""
        C, _ = Q.shape
        pi = pb_boot.copy()
        rows = np.flatnonzero(free_mass > 0)
        best = np.where(free, Q, -np.inf).argmax(axis=1)
        pi[rows, best[rows]] += free_mass[rows]
        return np.asarray(pi / pi.sum(axis=1, keepdims=True), dtype=np.float64)

    @staticmethod
    def _model_value(pi: NDArray[np.float64], R: NDArray[np.float64], P: sp.csr_matrix,
                     gamma: float, horizon: int, has_model: NDArray[np.bool_]
                     ) -> NDArray[np.float64]:
        """Value per cell of a fixed policy in the MLE model (missing pairs: cell average)."""
        w = np.where(has_model, pi, 0.0)
        tot = w.sum(axis=1)
        w = np.where(tot[:, None] > 0, w / np.where(tot > 0, tot, 1.0)[:, None], 0.0)
        C, A = R.shape
        V = np.zeros(C)
        for _ in range(horizon):
            V = (w * (R + gamma * (P @ V).reshape(C, A))).sum(axis=1)
        return V

    # ------------------------------------------------------------------ policy API
    def action_probs(self, dataset: Any) -> NDArray[np.float64]:
        """Policy probabilities at each row, shape ``(n_steps, n_actions)``."""
        check_is_fitted(self, "policy_")
        return self.policy_.action_probs(dataset)

    def predict(self, dataset: Any) -> NDArray[np.int64]:
        """Most likely flat action at each row, shape ``(n_steps,)``."""
        check_is_fitted(self, "policy_")
        return self.policy_.predict(dataset)

    def scores(self, dataset: Any, network: str = "policy") -> NDArray[np.float64]:
        """Per-row action scores of the row's cell, shape ``(n_steps, n_actions)``.

        The tabular counterpart of the neural learners' ``scores`` (there is no support: the
        columns are every flat action).

        Parameters
        ----------
        dataset : TrajectoryDataset
            A panel with the training data's action space and cell columns.
        network : {"policy", "critic"}
            ``"policy"``: ``log pi(a | x)`` of the cell's table row (``-inf`` where the policy
            puts no mass), so ``softmax`` of a row is the table row and its argmax is
            :meth:`predict` (first on ties); rows of unseen cells read the fallback row.
            :meth:`action_probs` differs only on entries deferred to current practice on a
            panel with logged propensities. ``"critic"``: the action values ``q_`` of the cell
            (SPIBB: the MLE model's values under the constrained backups; PVI: the pessimistic
            ``Q_lower``); NaN for pairs the learner has no value for and for unseen cells.

        Raises
        ------
        NotFittedError
            Before ``fit`` / ``load``.
        InvalidParameterError
            ``network`` is not ``"policy"`` or ``"critic"``.
        PolicyError
            Another action space or missing cell columns; ``"critic"`` from a model folder
            saved without action values.
        """
        check_is_fitted(self, "policy_")
        check_param(network, "network", f"{type(self).__name__}.scores",
                    choices=("policy", "critic"))
        idx = self.policy_.cell_index(dataset)
        if network == "policy":
            with np.errstate(divide="ignore"):
                return np.asarray(np.log(self.policy_.table[idx]), dtype=np.float64)
        critic = getattr(self, "critic_", None)
        if critic is None:
            raise PolicyError(MSG_NO_CRITIC.format(source=self.policy_.source))
        return np.asarray(critic[idx], dtype=np.float64)

    @property
    def n_actions(self) -> int:
        """Size of the flat action space (after fit)."""
        check_is_fitted(self, "policy_")
        return self.policy_.n_actions

    @property
    def window(self) -> int:
        """Rows of history the policy reads (1)."""
        return 1

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False,
             extra: dict[str, Any] | None = None) -> Path:
        """Write the model folder: ``config.json`` + ``model.safetensors`` (the cell table).

        Parameters
        ----------
        path : str or Path
        overwrite : bool
        extra : dict, optional
            More JSON entries for ``config.json`` (e.g. a selection report).
        """
        from equicare.policy._learned import write_model_folder

        check_is_fitted(self, "policy_")
        cfg = {"learner": self.algo, "learner_config": self.config.to_dict(),
               "policy": self.policy_.describe(),
               "action_space": self.action_space_.to_dict(),
               "manifest_fingerprint": getattr(self, "manifest_fingerprint_", None),
               "feature_names": list(self.cell_columns_),
               "cell_choice": getattr(self, "cell_choice_", None),
               "numeric_choice": getattr(self, "numeric_choice_", None),
               "state_names": list(self.state_names_),
               "ignored_numeric": list(self.ignored_numeric_),
               "n_cells": int(self.n_cells_),
               "pooled_cells": int(getattr(self, "pooled_cells_", 0)),
               "bootstrapped_share": bootstrapped_share(self.bootstrapped_),
               "deferred_share": self.policy_.deferred_share(),
               "model_value": self.value_, "model_behavior_value": self.behavior_value_,
               **(extra or {})}
        import torch

        tensors = {**self.policy_.tensors(),
                   "critic.q": torch.from_numpy(np.ascontiguousarray(self.critic_))}
        return write_model_folder(path, cfg, tensors, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Rebuild a fitted SPIBB (its policy) from a model folder written by :meth:`save`."""
        from equicare.policy._learned import read_model_folder
        from equicare.spaces import FactoredActionSpace

        cfg, tensors = read_model_folder(path)
        if cfg.get("learner") != cls.algo:
            raise PolicyError(f"{path}: the model was trained with {cfg.get('learner')!r}, not "
                              f"{cls.algo!r}.")
        try:
            self = cls(cls.config_class.from_dict(cfg["learner_config"]))
            self.policy_ = CellPolicy.from_config(cfg, tensors, str(path))
            self.action_space_ = FactoredActionSpace.from_dict(cfg["action_space"])
            self.cell_columns_ = tuple(cfg["feature_names"])
            self.cell_choice_ = cfg.get("cell_choice")
            self.numeric_choice_ = cfg.get("numeric_choice")
            self.state_names_ = tuple(cfg["state_names"])
            self.ignored_numeric_ = tuple(cfg.get("ignored_numeric", ()))
            self.n_cells_ = int(cfg["n_cells"])
            self.pooled_cells_ = int(cfg.get("pooled_cells", 0))
            self.value_ = float(cfg["model_value"])
            self.behavior_value_ = float(cfg["model_behavior_value"])
            if "critic.q" in tensors:  # folders written before scores() have no values
                critic = tensors["critic.q"].numpy().astype(np.float64)
                if critic.shape != self.policy_.table.shape:
                    raise ValueError(f"critic.q of shape {tuple(critic.shape)}, expected "
                                     f"{self.policy_.table.shape}")
                self.critic_ = critic
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"{path}: malformed model folder ({exc}).") from exc
        return self
