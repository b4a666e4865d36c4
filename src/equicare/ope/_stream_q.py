r"""Streamed FQE, DR and WDR: the LSTD fit from sufficient statistics summed over chunks.

The stationary tabular and the linear Q-models are LSTD fixed points (:mod:`equicare.ope._lstd`):
``theta`` solves ``(sum_i x_i x_i^T + Lambda - gamma sum_i x_i xbar'_i^T) theta = sum_i x_i r_i``,
and every sum runs over rows whose next row is in the same episode, so a chunk of whole episodes
contributes its own sums and the chunks' sums add up. Three passes over the chunks (each a
map-reduce, on one process or one task per shard):

0. **design statistics** that the in-memory fit takes from the whole panel: the mean and standard
   deviation of every state feature (linear; combined across chunks with Chan's update, so no
   precision is lost) and the maximum absolute reward (its stability check), or the set of
   visited (state cell, action) pairs (tabular);
1. **sufficient statistics** ``X^T X``, ``X_prev^T X_pi`` and ``X^T r`` (sparse, or dense below
   3,000 parameters), plus the gradients of FQE, DR and WDR with respect to ``theta`` (the
   per-step sums that WDR's self-normalisation needs are kept per step and divided at the end);
   ``theta`` is solved once from the reduced sums;
2. **estimates**: each chunk's per-episode parts of every estimator with the fitted ``Q``
   (:func:`~equicare.ope._core.episode_parts`), their Poisson-bootstrap sums, and the raw
   influence of each episode on the refit, ``sum_{i in e} x_i^T z delta_i`` with
   ``z = M^{-T} j`` and the TD residuals ``delta_i``.

Point estimates equal the in-memory :func:`~equicare.ope.evaluate` with the same Q-model (tests:
1e-9 relative). The bootstrap includes the Q-model's refit in every replicate by the same
linearisation as the in-memory engine (an infinitesimal-jackknife correction per episode, centred,
see :func:`equicare.ope._evaluate._with_q_refit`), not by a refit per replicate: per-replicate
``(M_b, b_b)`` would cost ``n_boot`` times the statistics. Replicate weights are the
counter-based Poisson(1) weights of :mod:`equicare.ope._resample`, so every chunking and sharding
gives the same replicates. When the linear fixed point is unstable (a Q-value beyond ten times the
largest possible return) the fit falls back, as in memory, to iterated ridge regressions, which
need only the same sums; the bootstrap then holds the Q-model fixed, as in memory.

The window table (``q_model="tabular_window"``, :func:`~equicare.ope._fqe._fit_tabular_window`)
is no LSTD fixed point but is fitted from sums too: pass 1 sums, per visited (cell, action)
pair, its rows, rewards, terminal rows and rows with a next row, and the sparse pair-to-next-pair
matrix ``B X_pi``, plus each step's non-terminal and continued rows (:class:`_WindowSums`);
the backward recursion over the steps runs in the driver (:class:`WindowFit`). Its linearised
refit (:class:`~equicare.ope._fqe.WindowLinearisation`) takes the per-step gradients that
pass 1 already sums, a forward adjoint in the driver, and each chunk's completed next values in
the estimates pass (:func:`_window_contributions`). With the stationary table the same window
sums ride on pass 1 when episodes are censored, for the in-memory censoring check
(:class:`_CensoringPlan`), which ``auto`` follows as in memory; the streamed audit
decides it before its own pass over the chunks (:func:`fit_q_checked`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import InvalidParameterError, PolicyError
from equicare.ope._core import EpisodeParts, OPEInputs, episode_parts
from equicare.ope._fqe import (
    CellRanges,
    FQEConfig,
    StateStats,
    _category_design,
    _cells,
    _linear_model,
    _LinearModel,
    _next_rows,
    _tabular_design,
    cell_parts,
    cell_ranges,
    merge_cell_ranges,
    ranged_states,
    visited_pairs,
    window_step_delta,
)
from equicare.ope._lstd import (
    DENSE_PARAMS,
    KronPi,
    LSTDSolution,
    LSTDSums,
    PiDesign,
    SparsePi,
    lstd_sums,
    solve_lstd_sums,
)
from equicare.ope._resample import resampling_ids
from equicare.ope._stream_groups import (
    GroupPlan,
    GroupSums,
    WithGroups,
    group_chunk_squares,
    group_chunk_sums,
    group_coefs,
    membership_matrix,
)
from equicare.ope._stream_sums import (
    JackknifeCoefs,
    JackknifeSums,
    SquareSums,
    StreamSums,
    StudentCoefs,
    _target_probs,
    episode_sums,
    logged_propensities,
    pass_coefs,
    replicate_weights,
)
from equicare.utils import ROW_BLOCK_ELEMENTS, row_blocks

__all__ = ["STREAM_Q_MODELS", "stream_q_config", "evaluate_stream_q", "StreamQOutput",
           "GroupCodes",
           "fit_q_stream", "CellCounts",
           "choose_cells_stream", "choose_q_stream", "resolve_stream_q", "StreamQFit", "QValues",
           "AUTO_MESSAGE",
           "group_refit_directions", "refit_contributions", "fit_q_checked"]

#: Q-models that stream as LSTD fixed points (``auto``'s streamed candidates).
STREAM_Q_MODELS: tuple[str, ...] = ("linear", "tabular_stationary")
#: Every Q-model that streams: the LSTD ones and the window table (:class:`WindowFit`).
STREAM_Q_NAMED: tuple[str, ...] = (*STREAM_Q_MODELS, "tabular_window")
#: Error when ``q_model="auto"`` is asked to stream (tests match it).
AUTO_MESSAGE = (
    "q_model='auto' does not stream (it chooses among Q-models by cross-fitting on the whole "
    "panel): name one of {models} to stream {keys}.")


def choose_cells_stream(source: Any, cfg: FQEConfig, *, sample_rows: int, seed: int,
                        model_seed: int | None = None) -> tuple[FQEConfig, dict[str, Any]]:
    """The streamed table's cells, chosen on a random sample of whole episodes (one pass).

    :func:`equicare.data.choose_cells` on about ``sample_rows`` rows of whole episodes (the
    sample of :func:`equicare.ope._stream_behavior.fit_behavior_stream`, with the same
    seed): the columns that change the dynamics given the others, the choice's folds drawn from
    ``model_seed`` (default ``seed``). Returns the config with those cells (unchanged when none
    is dropped) and the choice with the sample's size.
    """
    from equicare.data import choose_cells
    from equicare.ope._stream_behavior import sample_episodes

    data, rate = sample_episodes(source, sample_rows, seed)
    if data is None:  # a sample without episodes says nothing: keep every column
        return cfg, {"columns": None, "dropped": [], "sample_rate": rate, "sample_rows": 0}
    choice = choose_cells(data, random_state=seed if model_seed is None else model_seed)
    info = {**choice.to_dict(), "sample_rate": rate, "sample_episodes": int(data.n_episodes),
            "sample_rows": int(data.n_steps)}
    if choice.dropped:
        cfg = dataclasses.replace(cfg, cells=choice.columns)
    return cfg, info


def choose_q_stream(source: Any, policy: Any, *, sample_rows: int, seed: int,
                    groups: Sequence[str] = (), cells: tuple[str, ...] | None = None,
                    model_seed: int | None = None) -> tuple[FQEConfig, Any, dict[str, Any]]:
    """``q_model="auto"`` streamed: the in-memory choice on a random sample of whole episodes.

    :func:`~equicare.ope.select_q_model` among the Q-models that stream (the stationary table
    over the chosen cells, and the linear model), with its cross-fitted estimated biases, run on
    about ``sample_rows`` rows of whole episodes (:func:`~equicare.ope._stream_behavior.
    sample_episodes`, one pass; the whole panel when it has no more rows, and then exactly the
    in-memory selection among these candidates). As in memory, numeric states that vary within
    the categorical cells are offered to the cells' choice as tercile bins
    (:func:`~equicare.ope._select.numeric_bin_columns`); their edges are the sample's
    (:func:`~equicare.privacy.quantile_edges`), so they are the in-memory ones when the sample
    is the whole panel, and the selection's ``numeric_bins["why"]`` says when it is not. The
    chosen model is then fitted on every chunk, each chunk coding its rows' bins with the
    chosen name's edges (:func:`~equicare.ope._fqe.cell_parts`).

    Parameters
    ----------
    source : ChunkSource
    policy : Policy or callable
    sample_rows : int
    seed : int
        Of the sample (and of the folds and the cells' choice without ``model_seed``).
    groups : sequence of str
        Subgroup attributes whose levels get the chosen model's estimated bias.
    cells : tuple of str, optional
        The table's cells (no choice of cells), as ``FQEConfig(model="auto", cells=...)``.
    model_seed : int, optional
        Of the folds and the cells' choice: :func:`~equicare.ope._evaluate.nuisance_seed` of
        the evaluation's seed gives the in-memory ones (the in-memory selection when the sample
        is the whole panel).

    Returns
    -------
    cfg : FQEConfig
        The chosen model's (cells named).
    selection : QSelection
    info : dict
        The sample's size and rate (zero when only the linear model applies: a panel without
        categorical states is not sampled, as in memory nothing is cross-fitted then).
    """
    from equicare.ope._select import QSelection, candidate_config, select_q_model
    from equicare.ope._stream_behavior import sample_episodes

    if not source.categorical_names():  # only the linear model applies: no sample to draw
        names = STREAM_Q_MODELS
        return FQEConfig(model="linear"), QSelection(
            chosen="linear", candidates=dict.fromkeys(names), td_error=dict.fromkeys(names),
            skipped={n: "no categorical states" for n in names if n.startswith("tabular")},
            n_folds=0), {"sample_rate": 0.0, "sample_episodes": 0, "sample_rows": 0}
    data, rate = sample_episodes(source, sample_rows, seed)
    if data is None:
        raise InvalidParameterError(
            f"q_model='auto' chooses on a sample of whole episodes, and the sample of about "
            f"{sample_rows} rows has none: raise behavior_sample_rows or name {STREAM_Q_MODELS}.")
    try:
        probs = _target_matrix(data, policy)
    except PolicyError as exc:
        if rate >= 1.0:
            raise
        from equicare.ope._stream_sums import chunk_policy_error

        raise chunk_policy_error(exc, "in a sample of whole episodes") from exc
    sel = select_q_model(data, probs, candidates=STREAM_Q_MODELS,
                         random_state=seed if model_seed is None else model_seed,
                         cells=cells, groups=[g for g in groups if g in data.groups])
    if sel.numeric_bins.get("offered") and rate < 1.0:
        sel = dataclasses.replace(sel, numeric_bins={
            **sel.numeric_bins,
            "why": f"the bins' edges are the terciles of auto's sample ({data.n_steps} rows of "
                   f"whole episodes, {rate:.1%} of the panel's), not the whole panel's (in "
                   "memory)"})
    cfg = candidate_config(sel.chosen)
    if cfg.model == "tabular" and cfg.cells is None:  # every column kept: name them all
        cfg = dataclasses.replace(cfg, cells=tuple(data.categorical_names))
    info = {"sample_rate": rate, "sample_episodes": int(data.n_episodes),
            "sample_rows": int(data.n_steps)}
    return cfg, sel, info


def resolve_stream_q(source: Any, policy: Any, q_model: Any, *, keys: Sequence[str],
                     sample_rows: int, seed: int, groups: Sequence[str] = (),
                     model_seed: int | None = None) -> tuple[FQEConfig, Any, dict[str, Any]]:
    """The streamed Q-model that ``q_model`` names, chosen or completed on a sample if need be.

    ``"auto"`` (or ``FQEConfig(model="auto")``): :func:`choose_q_stream`. A stationary table
    without named cells on a panel with several categorical columns: its cells by
    :func:`choose_cells_stream`. Otherwise :func:`stream_q_config`. ``model_seed``: the
    choices' folds (default ``seed``, which draws the sample).

    Returns
    -------
    cfg : FQEConfig
    selection : QSelection or None
        ``auto``'s selection.
    info : dict
        What the result's ``q_model`` adds: ``chosen`` and ``selection`` (auto), or
        ``cell_choice``.
    """
    if (isinstance(q_model, str) and q_model == "auto") or (
            isinstance(q_model, FQEConfig) and q_model.model == "auto"):
        cfg, sel, sample = choose_q_stream(
            source, policy, sample_rows=sample_rows, seed=seed, groups=groups,
            cells=q_model.cells if isinstance(q_model, FQEConfig) else None,
            model_seed=model_seed)
        return cfg, sel, {"chosen": sel.chosen, "selection": {**sel.to_dict(), **sample}}
    cfg = stream_q_config(q_model, keys)
    if cfg.model == "tabular" and cfg.cells is None and len(source.categorical_names()) > 1:
        cfg, cells = choose_cells_stream(source, cfg, sample_rows=sample_rows, seed=seed,
                                         model_seed=model_seed)
        return cfg, None, {"cell_choice": cells}
    return cfg, None, {}


def stream_q_config(q_model: Any, keys: Sequence[str] = ("fqe", "dr", "wdr")) -> FQEConfig:
    """The :class:`FQEConfig` of a streamable Q-model, or a clear error.

    Parameters
    ----------
    q_model : {"linear", "tabular_stationary", "tabular_window"} or FQEConfig
        An FQEConfig must be the linear model (linear state design, fixed-point solver), the
        stationary tabular model or the window table.
    keys : sequence of str
        The estimators that need it (for the message).
    """
    models = ", ".join(repr(m) for m in STREAM_Q_NAMED)
    if isinstance(q_model, FQEConfig):
        cfg = q_model
    elif q_model == "auto":
        raise InvalidParameterError(AUTO_MESSAGE.format(models=models, keys=", ".join(keys)))
    elif q_model == "linear":
        cfg = FQEConfig(model="linear")
    elif q_model == "tabular_stationary":
        cfg = FQEConfig(model="tabular", horizon="stationary")
    elif q_model == "tabular_window":
        cfg = FQEConfig(model="tabular", horizon="window")
    else:
        raise InvalidParameterError(
            f"q_model={q_model!r} does not stream (its fit needs the whole panel in memory): "
            f"name one of {models} to stream {', '.join(keys)}.")
    ok = (cfg.model == "linear" and cfg.state_design == "linear") or (
        cfg.model == "tabular" and cfg.resolved_horizon in ("stationary", "window"))
    if not ok:
        raise InvalidParameterError(
            f"This Q-model (model={cfg.model!r}, horizon={cfg.resolved_horizon!r}, "
            f"state_design={cfg.state_design!r}) does not stream: use {models} "
            "(state_design='linear').")
    return cfg


# ---------------------------------------------------------------------- shared per-chunk pieces
def _by_blocks(fn: Callable[..., Any], dataset: TrajectoryDataset, **kw: Any) -> Any:
    """``fn`` over blocks of whole episodes of a chunk, summed.

    A block has at most ``ROW_BLOCK_ELEMENTS / n_actions`` rows, so the target policy's
    ``(rows, n_actions)`` probabilities never exceed ``ROW_BLOCK_ELEMENTS`` numbers whatever the
    chunk size (every statistic here is a sum over whole episodes).
    """
    max_rows = max(1, ROW_BLOCK_ELEMENTS // max(1, dataset.n_actions))
    total: Any = None
    for _, _, part in dataset.episode_blocks(max_rows):
        s = fn(part, **kw)
        total = s if total is None else total + s
    return total


def _target_matrix(dataset: TrajectoryDataset, policy: Any) -> NDArray[np.float64]:
    """The target policy's probabilities of every action at every row (checked)."""
    from equicare.policy import check_probs

    return check_probs(_target_probs(dataset, policy), dataset.n_steps, dataset.n_actions,
                       "evaluate_stream")


@dataclass(frozen=True)
class _Moments:
    """Count, mean and sum of squared deviations of columns (Chan et al. 1979 to combine)."""

    n: float
    mean: NDArray[np.float64]
    m2: NDArray[np.float64]

    def __add__(self, o: _Moments) -> _Moments:
        n = self.n + o.n
        if n == 0:
            return self
        d = o.mean - self.mean
        return _Moments(n=n, mean=self.mean + d * (o.n / n),
                        m2=self.m2 + o.m2 + d * d * (self.n * o.n / n))


@dataclass(frozen=True)
class CellCounts:
    """The stationary table's cells over the whole panel: whether they are thin.

    Attributes
    ----------
    names : tuple of str
        The cells' categorical columns.
    n_rows, n_comb : int
        The panel's rows and its visited combinations of the columns' levels.
    n_levels : tuple of int
        Each column's visited levels.
    """

    names: tuple[str, ...]
    n_rows: int
    n_comb: int
    n_levels: tuple[int, ...]
    #: per numeric state column, whether it takes two values in some cell
    #: (:func:`~equicare.ope._fqe.table_ignored_numeric`); None without numeric states
    varying: tuple[bool, ...] | None = None

    def message(self, hint: str) -> str | None:
        """The in-memory thin-cells warning (:func:`equicare.data._cells.thin_cells_message`)."""
        from equicare.data._cells import thin_cells_text
        from equicare.ope._prepare import THIN_Q_CELLS

        return thin_cells_text(THIN_Q_CELLS, self.names, n_rows=self.n_rows, n_comb=self.n_comb,
                               n_levels=list(self.n_levels), hint=hint)


@dataclass(frozen=True)
class _Pre:
    """Pass 0: what the design needs from the whole panel.

    ``cell_shape`` (tabular): the cells' columns, their levels' counts and the number of
    actions, which decode the ``visited`` keys; ``n_rows`` the rows summed.
    """

    moments: _Moments | None
    visited: NDArray[np.int64] | None
    r_absmax: float
    n_rows: int = 0
    cell_shape: tuple[tuple[str, ...], tuple[int, ...], int] | None = None
    #: episodes, censored episodes (last row not terminal), the largest absolute discounted
    #: return and the rewards' range: the censoring check's pre-check (tabular)
    n_episodes: int = 0
    n_censored: int = 0
    ret_absmax: float = 0.0
    r_min: float = np.inf
    r_max: float = -np.inf
    #: each visited cell's range of the numeric states (tabular, with numeric states)
    ranges: CellRanges | None = None

    def __add__(self, o: _Pre) -> _Pre:
        return _Pre(moments=None if self.moments is None or o.moments is None
                    else self.moments + o.moments,
                    visited=None if self.visited is None or o.visited is None
                    else np.union1d(self.visited, o.visited),
                    r_absmax=max(self.r_absmax, o.r_absmax), n_rows=self.n_rows + o.n_rows,
                    cell_shape=self.cell_shape or o.cell_shape,
                    n_episodes=self.n_episodes + o.n_episodes,
                    n_censored=self.n_censored + o.n_censored,
                    ret_absmax=max(self.ret_absmax, o.ret_absmax),
                    r_min=min(self.r_min, o.r_min), r_max=max(self.r_max, o.r_max),
                    ranges=self.ranges if o.ranges is None else o.ranges
                    if self.ranges is None else merge_cell_ranges(self.ranges, o.ranges))

    def cell_counts(self) -> CellCounts | None:
        """The visited cells and each column's visited levels (tabular), else None."""
        if self.visited is None or self.cell_shape is None:
            return None
        names, sizes, n_actions = self.cell_shape
        cells = np.unique(self.visited // n_actions)
        levels = np.unravel_index(cells, sizes) if sizes else ()
        varying = (None if self.ranges is None else
                   tuple(bool(v) for v in
                         np.asarray((self.ranges[2] > self.ranges[1]).any(axis=0)).ravel()))
        return CellCounts(names=names, n_rows=self.n_rows, n_comb=int(cells.size),
                          n_levels=tuple(int(np.unique(lv).size) for lv in levels),
                          varying=varying)


def _pre_chunk(dataset: TrajectoryDataset, *, cfg: FQEConfig) -> _Pre:
    r_absmax = float(np.abs(dataset.rewards).max()) if dataset.n_steps else 0.0
    if cfg.model == "tabular":
        names, sizes, codes = cell_parts(dataset, cfg.cells)  # (numeric states' bins too)
        cell = np.asarray(np.ravel_multi_index(codes.T, sizes), dtype=np.int64)
        shape = (names, sizes, dataset.n_actions)
        ret = dataset.returns()
        return _Pre(moments=None, visited=visited_pairs(cell, dataset.actions, dataset.n_actions),
                    r_absmax=r_absmax, n_rows=dataset.n_steps, cell_shape=shape,
                    n_episodes=dataset.n_episodes, n_censored=int(dataset.censored.sum()),
                    ret_absmax=float(np.abs(ret).max()) if ret.size else 0.0,
                    r_min=float(dataset.rewards.min()) if dataset.n_steps else np.inf,
                    r_max=float(dataset.rewards.max()) if dataset.n_steps else -np.inf,
                    ranges=(cell_ranges(ranged_states(dataset, cfg.cells), cell)
                            if dataset.state_names else None))
    cats = _category_design(dataset)
    x = np.asarray(dataset.features(one_hot=cats is None), dtype=np.float64)
    mean = x.mean(axis=0)
    m2 = ((x - mean) ** 2).sum(axis=0)
    return _Pre(moments=_Moments(n=float(x.shape[0]), mean=mean, m2=m2), visited=None,
                r_absmax=r_absmax)


@dataclass(frozen=True, eq=False)
class _Design:
    """The whole panel's design settings, shipped to every chunk task."""

    cfg: FQEConfig
    stats: StateStats | None
    visited: NDArray[np.int64] | None
    horizon: int
    truncate: float | None
    keys: tuple[str, ...]
    #: pass 1 sums the window table's statistics (:class:`_WindowSums`): the window table's
    #: own fit, or the stationary table's censoring check
    window_sums: bool = False

    @property
    def window(self) -> bool:
        """Whether the Q-model is the window table."""
        return self.cfg.model == "tabular" and self.cfg.resolved_horizon == "window"

    def pair_index(self, dataset: TrajectoryDataset) -> NDArray[np.int64]:
        """Each row's visited (cell, action) pair: its column in the table's design."""
        assert self.visited is not None
        cell, _ = _cells(dataset, self.cfg.cells)
        key = cell.astype(np.int64) * dataset.n_actions + dataset.actions
        return np.asarray(np.searchsorted(self.visited, key), dtype=np.int64)

    def build(self, dataset: TrajectoryDataset, pe: NDArray[np.float64]
              ) -> tuple[sp.csr_matrix, PiDesign, _LinearModel | None]:
        """``X`` (logged actions), ``X_pi`` and the linear model (None for tabular)."""
        if self.cfg.model == "tabular":
            cell, _ = _cells(dataset, self.cfg.cells)
            x, x_pi, _, _, _, _ = _tabular_design(cell, dataset.actions, pe,
                                                  visited=self.visited)
            return x, SparsePi(x_pi), None
        lm = _linear_model(dataset, self.cfg, self.stats)
        x, kpi = lm.design(dataset.actions, pe)
        return x, kpi, lm


def _grouped_t(design: sp.csr_matrix | PiDesign, c: NDArray[np.float64], t: NDArray[np.int64],
               width: int, *, sparse: bool = False) -> Any:
    """``sum_{i, j: t_ij = s} c_ij x_i`` for every output ``s``: shape ``(n_params, width)``.

    ``c`` and ``t`` have shape ``(n,)`` (each row adds to one output, e.g. its step) or
    ``(n, m)`` (each row adds to ``m`` outputs at once, e.g. its step within each of ``m``
    partitions of the episodes): the design's rows are formed once whatever ``m``. With
    ``sparse``, a sparse design's sums stay a CSR matrix (:data:`Steps`); otherwise, and always
    for the Kronecker design (few parameters), a dense array.
    """
    n = c.shape[0]
    c2 = np.asarray(c, dtype=np.float64).reshape(n, -1)
    t2 = np.asarray(t, dtype=np.int64).reshape(n, -1)
    m = c2.shape[1]
    by_step = sp.csr_matrix((c2.ravel(), (np.repeat(np.arange(n), m), t2.ravel())),
                            shape=(n, width))
    mat: Any = design.x_pi if isinstance(design, SparsePi) else design
    if sp.issparse(mat):
        out_sp = sp.csr_matrix(sp.csr_matrix(mat.T) @ by_step)
        return out_sp if sparse else np.asarray(out_sp.toarray())
    assert isinstance(design, KronPi)
    top = np.zeros((width, design.n_kron))
    for sl in row_blocks(n, design.n_kron):  # [phi (x) u] one block of rows at a time
        k = sl.stop - sl.start
        g = sp.csr_matrix((c2[sl].ravel(), (t2[sl].ravel(), np.repeat(np.arange(k), m))),
                          shape=(width, k))
        top += g @ design._block(sl)
    out = top.T
    if design.cats is not None:
        out = np.concatenate([out, np.asarray((design.cats.T @ by_step).toarray())], axis=0)
    return np.ascontiguousarray(out)


def _pi_rows(x_pi: PiDesign, sl: slice) -> NDArray[np.float64]:
    """Rows ``sl`` of ``X_pi`` as a dense array."""
    if isinstance(x_pi, SparsePi):
        return np.asarray(x_pi.x_pi[sl].toarray())
    assert isinstance(x_pi, KronPi)
    kron = x_pi._block(sl)
    if x_pi.cats is None:
        return kron
    return np.concatenate([kron, x_pi.cats[sl].toarray()], axis=1)


#: Share of non-zero entries of ``X`` from which a chunk's sums use dense BLAS products. Their
#: cost grows with the parameters squared per row, the sparse products' about with the non-zeros
#: per row squared. Best of 3 on a quiet host (2 threads / 1 thread), about 43k rows: the
#: stationary Garnet table (710 parameters, density 0.0014) 0.68 / 1.15 s dense against
#: 0.003 s sparse; the Garnet linear model (164, density 0.061) 0.080 / 0.101 s against
#: 0.043 s; the care linear model (144, density 0.28) 0.056 / 0.076 s against 0.22 s. The ratio
#: crosses 1 near a density of 0.1.
DENSE_SUMS_DENSITY = 0.1


def _chunk_sums(x: sp.csr_matrix, x_pi: PiDesign, rewards: NDArray[np.float64],
                has_next: NDArray[np.bool_], gamma: float) -> LSTDSums:
    """:func:`~equicare.ope._lstd.lstd_sums` of a chunk.

    Dense BLAS products in row blocks when the system is small enough to be solved densely and
    the design is dense enough (:data:`DENSE_SUMS_DENSITY`); sparse products otherwise.
    """
    n, n_par = x.shape
    if n_par > DENSE_PARAMS or x.nnz < DENSE_SUMS_DENSITY * n * n_par:
        return lstd_sums(x, x_pi, rewards, has_next, gamma)
    xtx = np.zeros((n_par, n_par))
    cross = np.zeros((n_par, n_par)) if gamma > 0 else None
    b = np.zeros(n_par)
    for sl in row_blocks(n, n_par):
        lo, hi = sl.start, sl.stop
        ext = max(lo - 1, 0)
        xd = x[ext:hi].toarray()
        cur = xd[lo - ext:]
        xtx += cur.T @ cur
        b += cur.T @ rewards[lo:hi]
        if cross is not None:  # row j holds x_{j-1} when row j-1 has a next row
            src = np.arange(lo, hi) - 1
            ok = (src >= 0) & has_next[np.maximum(src, 0)]
            prev = np.zeros_like(cur)
            prev[ok] = xd[src[ok] - ext]
            cross += prev.T @ _pi_rows(x_pi, sl)
    return LSTDSums(xtx=xtx, cross=cross, b=b)


def _bounded(lm: _LinearModel, theta: NDArray[np.float64], limit: float) -> bool:
    """The in-memory stability check ``max |Q(s, a)| <= limit``, via a cheap upper bound first.

    ``|Q(s, a)| <= sum_j |b_j(s)| max_a |psi_aj| + |offset(s)|`` with ``b = phi W``: when that
    bound holds the exact check would pass too, so it is run only when the bound fails.
    """
    qfun = lm.q_function(theta)
    assert qfun.phi is not None and qfun.weights is not None
    bound = np.abs(qfun.phi @ qfun.weights) @ np.abs(lm.psi).max(axis=0)
    if qfun.offset is not None:
        bound = bound + np.abs(qfun.offset)
    if bool(np.isfinite(bound).all()) and (bound.size == 0 or float(bound.max()) <= limit):
        return True
    return qfun.bounded(limit)


#: Per-step sums of a gradient's pieces, ``(n_params, C * H)`` with column ``c * H + t`` for
#: group ``c`` and step ``t`` (``C = 1`` without groups): a CSR matrix for the tables, whose
#: rows each touch one (pair, step) entry or a cell's few pairs (dense, they would take
#: ``n_pairs x H x C`` floats: 1 GB on a 5,000-state panel), a dense array for the linear model.
Steps: TypeAlias = "NDArray[np.float64] | sp.csr_matrix"


@dataclass(frozen=True, eq=False)
class _Pass1:
    """Pass 1: LSTD sums plus the pieces of the estimators' gradients in ``theta``."""

    sums: LSTDSums | None  # None for the window table
    n_episodes: int
    first: NDArray[np.float64] | None  # (n_params,): sum of X_pi over step-0 rows
    a: Steps | None  # (n_params, H): sum disc w_prev X_pi per step (sparse for tables)
    b: Steps | None  # (n_params, H): sum disc w X per step
    s: NDArray[np.float64] | None  # (H,): sum of w per step (WDR residual denominators)
    s_prev: NDArray[np.float64] | None  # (H,): sum of w_prev per step (WDR control)
    shape: tuple[int, int]  # (p, m) of the linear model, (0, 0) for tabular
    gamma: float
    #: the same pieces within each subgroup level (:class:`GroupCodes`), when asked for
    groups: _GroupPieces | None = None
    #: the window table's statistics (:attr:`_Design.window_sums`)
    window: _WindowSums | None = None

    def __add__(self, o: _Pass1) -> _Pass1:
        def add(u: Any, v: Any) -> Any:
            return None if u is None else u + v

        return _Pass1(sums=add(self.sums, o.sums), n_episodes=self.n_episodes + o.n_episodes,
                      first=add(self.first, o.first), a=add(self.a, o.a), b=add(self.b, o.b),
                      s=add(self.s, o.s), s_prev=add(self.s_prev, o.s_prev), shape=self.shape,
                      gamma=self.gamma, groups=add(self.groups, o.groups),
                      window=add(self.window, o.window))

    def step_gradients(self, keys: Sequence[str], horizon: int) -> NDArray[np.float64]:
        """The window table's per-step gradients ``j_t`` of FQE, DR, WDR, ``(H, n_params, k)``.

        The pieces of :func:`_gradients` before their sum over steps (each step has its own
        ``theta_t``): :meth:`~equicare.ope._fqe.WindowLinearisation.gradients` of the
        in-memory row weights.
        """
        n = float(self.n_episodes)
        n_par = (self.first if self.first is not None else self.a).shape[0]  # type: ignore
        out = np.zeros((horizon, n_par, len(keys)))
        for j, k in enumerate(keys):
            if k == "fqe":
                assert self.first is not None
                out[0, :, j] = self.first / n
            elif k == "dr":
                assert self.a is not None and self.b is not None
                out[:, :, j] = _steps_dense((self.a - self.b) / n, 1)[:, :, 0]
            else:
                assert self.a is not None and self.b is not None
                assert self.s is not None and self.s_prev is not None
                out[:, :, j] = _steps_dense(_wdr_steps(self.a, self.b, self.s, self.s_prev),
                                            1)[:, :, 0]
        return out


@dataclass(frozen=True, eq=False)
class _WindowSums:
    """The window table's additive statistics over the visited (cell, action) pairs.

    Per pair: rows, reward sums, terminal rows, rows with a next row, and the sparse
    pair-to-next-pair matrix ``B X_pi`` (a pair's summed target expectations over the next rows
    of its rows); per step: non-terminal rows and rows with a next row (the window's
    continuation shares). Every sum runs over rows whose next row is in the same episode.
    """

    n_all: NDArray[np.float64]
    r_sum: NDArray[np.float64]
    n_term: NDArray[np.float64]
    n_next: NDArray[np.float64]
    bx: sp.csr_matrix
    nonterm: NDArray[np.float64]
    followed: NDArray[np.float64]

    def __add__(self, o: _WindowSums) -> _WindowSums:
        return _WindowSums(n_all=self.n_all + o.n_all, r_sum=self.r_sum + o.r_sum,
                           n_term=self.n_term + o.n_term, n_next=self.n_next + o.n_next,
                           bx=sp.csr_matrix(self.bx + o.bx), nonterm=self.nonterm + o.nonterm,
                           followed=self.followed + o.followed)


def _window_chunk(dataset: TrajectoryDataset, design: _Design, x_pi: sp.csr_matrix
                  ) -> _WindowSums:
    """A chunk's :class:`_WindowSums` (:func:`~equicare.ope._fqe._fit_tabular_window`'s sums)."""
    assert design.visited is not None
    n_pairs, h = int(design.visited.size), design.horizon
    idx = design.pair_index(dataset)
    nxt, has_next = _next_rows(dataset)
    cont = np.flatnonzero(has_next)
    b = sp.csr_matrix((np.ones(cont.size), (idx[cont], nxt[cont])),
                      shape=(n_pairs, dataset.n_steps))
    step = dataset.step
    return _WindowSums(
        n_all=np.bincount(idx, minlength=n_pairs).astype(np.float64),
        r_sum=np.bincount(idx, weights=dataset.rewards, minlength=n_pairs).astype(np.float64),
        n_term=np.bincount(idx, weights=dataset.terminals.astype(np.float64),
                           minlength=n_pairs).astype(np.float64),
        n_next=np.bincount(idx[cont], minlength=n_pairs).astype(np.float64),
        bx=sp.csr_matrix(b @ x_pi),
        nonterm=np.bincount(step, weights=(~dataset.terminals).astype(np.float64),
                            minlength=h).astype(np.float64),
        followed=np.bincount(step, weights=has_next.astype(np.float64),
                             minlength=h).astype(np.float64))


@dataclass(frozen=True, eq=False)
class GroupCodes:
    """Groups whose estimates' refit directions a pass collects (partitions of the episodes).

    Attributes
    ----------
    codes : callable
        ``codes(chunk)``, shape ``(n_episodes, P)``: each episode's group (column in
        ``[0, n_groups)``) in each of ``P`` partitions, -1 for none.
    n_groups : int
    keys : tuple of str
        Estimators among ``fqe, dr, wdr``.
    """

    codes: Callable[[TrajectoryDataset], NDArray[np.int64]]
    n_groups: int
    keys: tuple[str, ...]


def _weights_inputs(dataset: TrajectoryDataset, pe: NDArray[np.float64], horizon: int,
                    policy: Any, q_sa: NDArray[np.float64] | None = None,
                    v: NDArray[np.float64] | None = None) -> OPEInputs:
    b = logged_propensities(dataset, policy)
    rho = pe[np.arange(dataset.n_steps), dataset.actions] / b
    return OPEInputs(rewards=dataset.rewards, episode_offsets=dataset.episode_offsets,
                     gamma=dataset.gamma, rho=rho, q_sa=q_sa, v_s=v, horizon=horizon)


def _wdr_steps(a: Steps, b: Steps, s: NDArray[np.float64], s_prev: NDArray[np.float64]
               ) -> Steps:
    """WDR's per-step gradient pieces over its per-step self-normalising sums.

    ``a``, ``b``: :data:`Steps` ``(n_params, C * H)``; ``s``, ``s_prev``: shape ``(H,)`` or
    ``(H, C)``. Returns ``a / s_prev_t - b / s_t`` column by column, of ``a``'s kind.
    """
    h = s.shape[0]
    sp_t = np.where(s_prev > 0, s_prev, 1.0).reshape(h, -1).T.ravel()  # column c * H + t
    s_t = np.where(s > 0, s, 1.0).reshape(h, -1).T.ravel()
    if sp.issparse(a):
        return sp.csr_matrix(a @ sp.diags(1.0 / sp_t) - b @ sp.diags(1.0 / s_t))
    return np.asarray(a / sp_t[None] - b / s_t[None])


def _sum_steps(m: Steps, n_groups: int) -> NDArray[np.float64]:
    """Sum :data:`Steps` over the steps of each group: shape ``(n_params, C)``."""
    width = m.shape[1]
    if sp.issparse(m):
        ind = sp.csr_matrix((np.ones(width), (np.arange(width),
                                              np.arange(width) // (width // n_groups))),
                            shape=(width, n_groups))
        return np.asarray((m @ ind).toarray())
    out: NDArray[np.float64] = np.asarray(m).reshape(m.shape[0], n_groups, -1).sum(axis=2)
    return out


def _steps_dense(m: Steps, n_groups: int) -> NDArray[np.float64]:
    """:data:`Steps` as a dense ``(H, n_params, C)`` array (the window table's adjoint input)."""
    d = np.asarray(m.toarray() if sp.issparse(m) else m)  # type: ignore[union-attr]
    return np.ascontiguousarray(d.reshape(d.shape[0], n_groups, -1).transpose(2, 0, 1))


def _refit_contributions(dataset: TrajectoryDataset, x: sp.csr_matrix, x_pi: PiDesign,
                         theta: NDArray[np.float64], z: NDArray[np.float64]
                         ) -> NDArray[np.float64]:
    """Each episode's ``sum_{i in e} x_i^T z delta_i``, the TD residuals of ``theta``."""
    _, has_next = _next_rows(dataset)
    v = x_pi.matvec(theta)
    v_next = np.zeros_like(v)
    v_next[:-1] = np.where(has_next[:-1], v[1:], 0.0)
    delta = dataset.rewards + dataset.gamma * v_next - np.asarray(x @ theta)
    contrib = np.asarray(x @ z) * delta[:, None]
    return np.asarray(np.add.reduceat(contrib, dataset.episode_offsets[:-1], axis=0))


def _pass1_chunk(dataset: TrajectoryDataset, *, policy: Any, design: _Design,
                 groups: GroupCodes | None = None) -> _Pass1:
    pe = _target_matrix(dataset, policy)
    x, x_pi, lm = design.build(dataset, pe)
    _, has_next = _next_rows(dataset)
    sums = (None if design.window
            else _chunk_sums(x, x_pi, dataset.rewards, has_next, float(dataset.gamma)))
    ws = None
    if design.window_sums:
        assert isinstance(x_pi, SparsePi)
        ws = _window_chunk(dataset, design, x_pi.x_pi)
    shape = (0, 0) if lm is None else (int(lm.phi.shape[1]), int(lm.psi.shape[1]))
    inputs = _weights_inputs(dataset, pe, design.horizon, policy)
    keys = design.keys
    first = a = bb = s = s_prev = None
    if "fqe" in keys or design.window_sums:  # the censoring check values the first rows
        t0 = (inputs.step == 0).astype(np.float64)[:, None]
        first = x_pi.rmatvec(t0)[:, 0]
    if "dr" in keys or "wdr" in keys:
        t = inputs.step
        w, disc, w_row, w_prev = inputs.row_weights(design.truncate)
        h = design.horizon
        a = _grouped_t(x_pi, disc * w_prev, t, h, sparse=True)
        bb = _grouped_t(x, disc * w_row, t, h, sparse=True)
        s = w.sum(axis=0)
        s_prev = np.empty(h)
        s_prev[0] = float(inputs.n_episodes)
        s_prev[1:] = w[:, :-1].sum(axis=0)
    gp = (None if groups is None else
          _group_pieces(dataset, x, x_pi, inputs, design, groups.keys, groups.codes(dataset),
                        groups.n_groups))
    return _Pass1(sums=sums, n_episodes=dataset.n_episodes, first=first, a=a, b=bb, s=s,
                  s_prev=s_prev, shape=shape, gamma=float(dataset.gamma), groups=gp, window=ws)


@dataclass(frozen=True, eq=False)
class WindowFit:
    r"""The window table fitted from :class:`_WindowSums`, ready to apply chunk by chunk.

    :func:`~equicare.ope._fqe._fit_tabular_window` from the summed statistics: ``Q_t =
    R + gamma c_t (1 - h) P_pi Q_{t+1}`` by backward recursion over the steps in the driver
    (one sparse mat-vec over the visited pairs per step). ``thetas[t]`` is ``Q_t`` per pair; a
    row at step ``t`` gets ``Q_t``. With ``mean_next`` (``gamma > 0`` and ``H x pairs`` at most
    :data:`~equicare.ope._fqe.WINDOW_LINEARISED_CELLS`, as in memory) the refit enters the
    bootstrap through :meth:`adjoint` and :func:`_window_contributions`
    (:class:`~equicare.ope._fqe.WindowLinearisation`'s influence, per chunk).
    """

    thetas: NDArray[np.float64]  # (H + 1, n_pairs); row H is 0
    m: sp.csr_matrix  # (n_pairs, n_pairs): diag(stay / n_next) B X_pi
    mean_next: NDArray[np.float64] | None  # (H, n_pairs): a pair's mean V_{t+1} over next rows
    inv_w: NDArray[np.float64]  # (n_pairs,): 1 / rows
    ratio: NDArray[np.float64]  # (n_pairs,): non-terminal rows / rows with a next row
    cont: NDArray[np.float64]  # (H,): continuation share of each step
    gamma: float
    n_cells: int

    @property
    def linearised(self) -> bool:
        """Whether the refit enters the bootstrap (else the Q-model is held fixed)."""
        return self.mean_next is not None

    @classmethod
    def from_sums(cls, ws: _WindowSums, gamma: float, horizon: int, n_cells: int) -> WindowFit:
        """Solve as in memory (the same arithmetic on the summed statistics)."""
        from equicare.ope._fqe import WINDOW_LINEARISED_CELLS

        n_all = ws.n_all
        n_pairs = n_all.size
        r_hat = np.divide(ws.r_sum, n_all, out=np.zeros(n_pairs), where=n_all > 0)
        stay = np.divide(n_all - ws.n_term, n_all, out=np.zeros(n_pairs), where=n_all > 0)
        scale = np.divide(stay, ws.n_next, out=np.zeros(n_pairs), where=ws.n_next > 0)
        m = sp.csr_matrix(sp.diags(scale) @ ws.bx)
        cont = np.divide(ws.followed, ws.nonterm, out=np.zeros(horizon), where=ws.nonterm > 0)
        thetas = np.zeros((horizon + 1, n_pairs))
        theta = np.zeros(n_pairs)
        for t in range(horizon - 1, -1, -1):
            theta = r_hat + (gamma * cont[t]) * (m @ theta) if gamma > 0 else r_hat
            thetas[t] = theta
        mean_next = None
        if gamma > 0 and horizon * n_pairs <= WINDOW_LINEARISED_CELLS:
            nxt = np.asarray(ws.bx @ thetas[1:].T).T  # (H, n_pairs)
            mean_next = np.divide(nxt, ws.n_next[None], out=np.zeros_like(nxt),
                                  where=ws.n_next[None] > 0)
        inv_w = np.divide(1.0, n_all, out=np.zeros(n_pairs), where=n_all > 0)
        ratio = np.divide(n_all - ws.n_term, ws.n_next, out=np.zeros(n_pairs),
                          where=ws.n_next > 0)
        return cls(thetas=thetas, m=m, mean_next=mean_next, inv_w=inv_w, ratio=ratio, cont=cont,
                   gamma=float(gamma), n_cells=int(n_cells))

    def info(self) -> dict[str, Any]:
        """The in-memory fit's info."""
        return {"solver": "window", "n_cells": self.n_cells, "n_pairs": int(self.thetas.shape[1]),
                "horizon": int(self.thetas.shape[0] - 1)}

    def value(self, first: NDArray[np.float64], n_episodes: int) -> float:
        """The FQE value ``mean_e V_0(s_0e)`` from the summed step-0 rows of ``X_pi``."""
        return float(self.thetas[0] @ first / max(n_episodes, 1))

    def adjoint(self, grads: NDArray[np.float64]) -> NDArray[np.float64]:
        """The forward adjoint ``lambda_t = j_t + gamma c_{t-1} M^T lambda_{t-1}``.

        ``grads`` and the result: shape ``(H, n_pairs, k)``.
        """
        lam = np.zeros_like(grads)
        mt = sp.csr_matrix(self.m.T)
        for t in range(grads.shape[0]):
            lam[t] = grads[t] + (self.gamma * self.cont[t - 1] * np.asarray(mt @ lam[t - 1])
                                 if t > 0 else 0.0)
        return lam


def _step_values(design: sp.csr_matrix, thetas: NDArray[np.float64], step: NDArray[np.int64]
                 ) -> NDArray[np.float64]:
    """``design_i . thetas[step_i]`` of every row (a row at step ``t`` gets ``Q_t``)."""
    n = design.shape[0]
    rows = np.repeat(np.arange(n), np.diff(design.indptr))
    vals = design.data * thetas[step[rows], design.indices]
    return np.bincount(rows, weights=vals, minlength=n).astype(np.float64)


def _window_contributions(dataset: TrajectoryDataset, x_pi: sp.csr_matrix,
                          idx: NDArray[np.int64], wf: WindowFit, lam: NDArray[np.float64]
                          ) -> NDArray[np.float64]:
    """Each episode's first-order effect on functionals with adjoint directions ``lam``.

    :meth:`~equicare.ope._fqe.WindowLinearisation.influence` over a chunk before its scaling
    and centring: ``sum_{i in e} sum_t lambda_t(p_i) (y_{t,i} - Q_t(p_i)) / W_{p_i}`` with the
    completed next values ``y``. Shape ``(n_episodes, k)``.
    """
    assert wf.mean_next is not None
    nxt, has_next = _next_rows(dataset)
    censored = ~dataset.terminals & ~has_next
    inv_w, ratio = wf.inv_w[idx], wf.ratio[idx]
    infl = np.zeros((dataset.n_steps, lam.shape[2]))
    for t in range(lam.shape[0]):  # every row re-weights every step's Q_t
        if not lam[t].any():
            continue
        delta = window_step_delta(dataset.rewards, wf.gamma * wf.cont[t],
                                  x_pi @ wf.thetas[t + 1], nxt, has_next, censored,
                                  wf.mean_next[t][idx], ratio, wf.thetas[t][idx], inv_w)
        infl += delta[:, None] * lam[t][idx]
    return np.asarray(np.add.reduceat(infl, dataset.episode_offsets[:-1], axis=0))


@dataclass(frozen=True, eq=False)
class _Fit:
    """The fitted ``theta`` and the refit directions ``z`` (None: Q held fixed)."""

    theta: NDArray[np.float64]
    z: NDArray[np.float64] | None
    infl_keys: tuple[str, ...]
    check_limit: float | None  # linear fixed point: |Q| bound of the stability check
    #: subgroup levels' refit directions, ``(n_params, K * C)`` (estimator-major, as ``z``)
    z_groups: NDArray[np.float64] | None = None
    #: the window table (then ``theta`` is its ``(H + 1, n_pairs)`` per-step values and ``z``,
    #: ``z_groups`` are adjoint directions ``(H, n_pairs, k)``)
    window: WindowFit | None = None


def _gradients(p1: _Pass1, keys: Sequence[str]) -> NDArray[np.float64]:
    """``dF/dtheta`` of FQE, DR, WDR (those in ``keys``), shape ``(n_params, k)``."""
    n = float(p1.n_episodes)
    cols = []
    for k in keys:
        if k == "fqe":
            assert p1.first is not None
            cols.append(p1.first / n)
        elif k == "dr":
            assert p1.a is not None and p1.b is not None
            cols.append(_sum_steps(p1.a - p1.b, 1)[:, 0] / n)
        else:
            assert p1.a is not None and p1.b is not None
            assert p1.s is not None and p1.s_prev is not None
            cols.append(_sum_steps(_wdr_steps(p1.a, p1.b, p1.s, p1.s_prev), 1)[:, 0])
    return np.column_stack(cols)


def _iterate(sums: LSTDSums, gamma: float, ridge: NDArray[np.float64], n_iter: int
             ) -> NDArray[np.float64]:
    """FQE iterated as ridge regressions, from the sums: ``theta <- A^{-1}(b + gamma C theta)``."""
    from scipy.sparse.linalg import splu

    xtx = sums.xtx if sp.issparse(sums.xtx) else sp.csr_matrix(np.asarray(sums.xtx))
    lu = splu(sp.csc_matrix(xtx + sp.diags(ridge)))
    cross = sums.cross
    theta = np.zeros(sums.b.size)
    for _ in range(n_iter):
        v_next = np.zeros_like(theta) if cross is None else np.asarray(cross @ theta).ravel()
        theta = lu.solve(sums.b + gamma * v_next)
    return np.asarray(theta, dtype=np.float64)


def _solve(p1: _Pass1, design: _Design, gamma: float
           ) -> tuple[LSTDSolution | None, NDArray[np.float64], dict[str, Any]]:
    """Solve as the in-memory fit does; ``(solution or None, theta, info)``."""
    sums, cfg = p1.sums, design.cfg
    assert sums is not None  # an LSTD fit (the window table has its own, WindowFit)
    n_par = sums.b.size
    diag = sums.diag_xtx
    if cfg.model == "tabular":
        sol = solve_lstd_sums(sums, gamma, np.zeros(n_par))
        if sol is None:  # a closed loop without exit in the data: a vanishing ridge
            sol = solve_lstd_sums(sums, gamma, 1e-8 * np.maximum(diag, 1.0))
        if sol is None:
            raise InvalidParameterError(
                "The stationary tabular FQE system is singular; use the backward table in "
                "memory (--q-model tabular_backward without --chunk-rows on the command line, "
                "horizon='backward' in Python).")
        return sol, sol.theta, {"solver": "sparse_fixed_point", "n_pairs": int(n_par)}
    p, m = p1.shape
    penalty = np.full(n_par, float(cfg.alpha))
    shared = np.arange(p) * m
    penalty[shared] = 1e-8 * max(1.0, float(diag[: p * m].sum()) / (p * m))
    info: dict[str, Any] = {"solver": "fixed_point", "n_params": int(n_par)}
    sol = None
    if gamma > 0 and cfg.solver == "fixed_point":
        sol = solve_lstd_sums(sums, gamma, penalty)
    elif gamma == 0:
        sol = solve_lstd_sums(sums, 0.0, penalty)
        info["solver"] = "ridge"
    if sol is not None:
        return sol, sol.theta, info
    n_iter = cfg.n_iterations or min(design.horizon, 100)
    info.update(solver="iterate", n_iterations=n_iter)
    return None, _iterate(sums, gamma, penalty, n_iter), info


@dataclass(frozen=True, eq=False)
class _Pass2:
    sums: StreamSums
    bounded: bool
    groups: GroupSums | None = None
    #: the censoring check's summed influences (:class:`_CensoringPlan`)
    censoring: _Moments | None = None

    def __add__(self, o: _Pass2) -> _Pass2:
        return _Pass2(sums=self.sums + o.sums, bounded=self.bounded and o.bounded,
                      groups=None if self.groups is None or o.groups is None
                      else self.groups + o.groups,
                      censoring=None if self.censoring is None or o.censoring is None
                      else self.censoring + o.censoring)


def _pass2_matrix(dataset: TrajectoryDataset, *, policy: Any, design: _Design, fit: _Fit
                  ) -> tuple[OPEInputs, EpisodeParts, NDArray[np.float64], bool,
                             NDArray[np.float64] | None]:
    """A chunk's inputs, parts, the matrix ``[parts, return, raw influences]`` and stability.

    Last, each episode's refit effect on each subgroup level's estimators,
    ``(n_episodes, C, K)`` (None without ``fit.z_groups``).
    """
    pe = _target_matrix(dataset, policy)
    x, x_pi, lm = design.build(dataset, pe)
    theta = fit.theta
    bounded = True
    if lm is not None:
        qfun = lm.q_function(theta)
        if fit.check_limit is not None:
            bounded = _bounded(lm, theta, fit.check_limit)
        from equicare.ope._fqe import _logged_values

        q_sa, v = _logged_values(qfun, pe, dataset.actions)
    elif fit.window is not None:
        assert isinstance(x_pi, SparsePi)
        q_sa = _step_values(x, theta, dataset.step)
        v = _step_values(x_pi.x_pi, theta, dataset.step)
    else:
        q_sa, v = np.asarray(x @ theta), x_pi.matvec(theta)
    inputs = _weights_inputs(dataset, pe, design.horizon, policy, q_sa=q_sa, v=v)
    parts = episode_parts(inputs, design.keys, truncate=design.truncate)
    cols = [parts.matrix, inputs.returns()[:, None]]
    eff = None
    if fit.z is not None:
        k = fit.z.shape[-1]
        zs = fit.z if fit.z_groups is None else np.concatenate([fit.z, fit.z_groups], axis=-1)
        if fit.window is not None:
            assert isinstance(x_pi, SparsePi)
            raw = _window_contributions(dataset, x_pi.x_pi, design.pair_index(dataset),
                                        fit.window, zs)
        else:
            raw = _refit_contributions(dataset, x, x_pi, theta, zs)
        cols.append(raw[:, :k])
        if fit.z_groups is not None:  # (n_episodes, K, C) -> (n_episodes, C, K)
            eff = raw[:, k:].reshape(raw.shape[0], k, -1).transpose(0, 2, 1)
    return inputs, parts, np.concatenate(cols, axis=1), bounded, eff


def _pass2_chunk(dataset: TrajectoryDataset, *, policy: Any, design: _Design, fit: _Fit,
                 n_boot: int, seed: int, groups: GroupPlan | None = None,
                 censoring: dict[str, Any] | None = None) -> _Pass2:
    inputs, parts, mat, bounded, eff = _pass2_matrix(dataset, policy=policy, design=design,
                                                     fit=fit)
    w = replicate_weights(resampling_ids(dataset), n_boot, seed)  # people, when known
    tw = inputs.trajectory_weights()  # the ESS of the weights and of the truncated ones
    tt = None if design.truncate is None else inputs.trajectory_weights(design.truncate)
    layout = (parts.keys, parts.slices, parts.horizon)
    sums = episode_sums(mat, w, tw, n_steps=dataset.n_steps, gamma=dataset.gamma,
                        layout=layout, infl_keys=fit.infl_keys, trunc_weights=tt,
                        n_censored=int(dataset.censored.sum()), rewards=dataset.rewards)
    g = (None if groups is None else
         group_chunk_sums(dataset, mat, tw, w, groups, layout=layout, infl_keys=fit.infl_keys,
                          eff=eff, trunc_weights=tt, inputs=inputs, truncate=design.truncate))
    c = (None if censoring is None
         else _censoring_chunk(dataset, policy=policy, design=design, **censoring))
    return _Pass2(sums=sums, bounded=bounded, groups=g, censoring=c)


def _pass3_chunk(dataset: TrajectoryDataset, *, policy: Any, design: _Design, fit: _Fit,
                 coefs: StudentCoefs | JackknifeCoefs, groups: GroupPlan | None = None,
                 level_coefs: list[StudentCoefs | JackknifeCoefs | None] | None = None
                 ) -> WithGroups:
    """Pass 3 (studentized or jackknife intervals): the chunk's summed squared influences.

    The chunk's parts are rebuilt as in pass 2 (same ``theta``, same refit directions) and
    :meth:`~equicare.ope._stream_sums.StudentCoefs.squares` adds the linearised refit and sums
    ``w_be IF_be^2`` over the chunk's episodes; with ``groups``, each level's over its own.
    Without replicates (``n_boot == 0``) :meth:`~equicare.ope._stream_sums.JackknifeCoefs.
    squares` sums the deviations of the leave-one-episode-out estimates instead.
    """
    _, _, mat, _, eff = _pass2_matrix(dataset, policy=policy, design=design, fit=fit)
    g = (None if groups is None or level_coefs is None
         else group_chunk_squares(dataset, mat, groups, level_coefs, eff))
    return WithGroups(coefs.squares(mat, resampling_ids(dataset)), g)


@dataclass(frozen=True, eq=False)
class QValues:
    """A fitted streamed Q-model to apply to chunks: the design settings and ``theta``.

    ``window``: the window table's fit (then ``theta`` is its per-step values), which
    :func:`refit_contributions` needs for the table's linearised refit.
    """

    design: _Design
    theta: NDArray[np.float64]
    window: WindowFit | None = None

    def values(self, dataset: TrajectoryDataset, policy: Any
               ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``Q(s_t, a_t)`` and ``V(s_t)`` of a chunk's rows, each of shape ``(n_steps,)``.

        Computed in blocks of whole episodes (see :func:`_by_blocks`).
        """
        from equicare.ope._fqe import _logged_values

        q_sa, v = np.empty(dataset.n_steps), np.empty(dataset.n_steps)
        max_rows = max(1, ROW_BLOCK_ELEMENTS // max(1, dataset.n_actions))
        for lo, hi, part in dataset.episode_blocks(max_rows):
            pe = _target_matrix(part, policy)
            x, x_pi, lm = self.design.build(part, pe)
            if self.design.window:
                assert isinstance(x_pi, SparsePi)
                q_sa[lo:hi] = _step_values(x, self.theta, part.step)
                v[lo:hi] = _step_values(x_pi.x_pi, self.theta, part.step)
            elif lm is None:
                q_sa[lo:hi], v[lo:hi] = np.asarray(x @ self.theta), x_pi.matvec(self.theta)
            else:
                q_sa[lo:hi], v[lo:hi] = _logged_values(lm.q_function(self.theta), pe,
                                                       part.actions)
        return q_sa, v

    def bounded(self, dataset: TrajectoryDataset, policy: Any, limit: float) -> bool:
        """Whether every ``|Q(s_t, a)|`` of the chunk is finite and at most ``limit``."""
        pe = _target_matrix(dataset, policy)
        _, _, lm = self.design.build(dataset, pe)
        return True if lm is None else _bounded(lm, self.theta, limit)


@dataclass(frozen=True, eq=False)
class StreamQFit:
    """A Q-model fitted from streamed sufficient statistics, ready to apply chunk by chunk.

    Attributes
    ----------
    design : _Design
        The whole panel's design settings.
    theta : ndarray of shape (n_params,)
    solution : LSTDSolution or None
        The factorised fixed point (None after the iterated fall-back).
    pass1 : _Pass1
        The summed statistics.
    info : dict
        Solver and sizes.
    cells : CellCounts or None
        The stationary table's visited cells (tabular).
    """

    design: _Design
    theta: NDArray[np.float64]
    solution: LSTDSolution | None
    pass1: _Pass1
    info: dict[str, Any]
    r_absmax: float
    cells: CellCounts | None = None
    #: the window table (then ``theta`` is its ``(H + 1, n_pairs)`` per-step values)
    window: WindowFit | None = None
    #: beside a stationary table, the window table fitted from the same passes (its
    #: censoring check, :class:`_CensoringPlan`)
    alt_window: WindowFit | None = None
    pre: _Pre | None = None

    def as_window(self) -> StreamQFit:
        """The window table fitted beside the stationary one, as the Q-model."""
        assert self.alt_window is not None
        wf = self.alt_window
        design = dataclasses.replace(
            self.design, cfg=dataclasses.replace(self.design.cfg, horizon="window"))
        return StreamQFit(design=design, theta=wf.thetas, solution=None, pass1=self.pass1,
                          info=wf.info(), r_absmax=self.r_absmax, cells=self.cells, window=wf,
                          pre=self.pre)

    def applier(self) -> QValues:
        """What a worker needs to evaluate the fitted Q on a chunk (picklable, small)."""
        return QValues(design=self.design, theta=self.theta, window=self.window)

    @property
    def check_limit(self) -> float | None:
        """``|Q|`` bound of the in-memory stability check (linear fixed point only)."""
        if (self.design.cfg.model == "linear" and self.solution is not None
                and self.pass1.gamma > 0):
            return 10 * (self.r_absmax + 1e-12) * self.design.horizon
        return None

    def iterated(self) -> StreamQFit:
        """The fall-back of an unstable linear fixed point: iterated ridge regressions."""
        cfg, p1 = self.design.cfg, self.pass1
        assert p1.sums is not None
        n_iter = cfg.n_iterations or min(self.design.horizon, 100)
        p, m = p1.shape
        penalty = np.full(self.theta.size, float(cfg.alpha))
        penalty[np.arange(p) * m] = 1e-8 * max(1.0, float(p1.sums.diag_xtx[: p * m].sum())
                                               / (p * m))
        theta = _iterate(p1.sums, p1.gamma, penalty, n_iter)
        return StreamQFit(design=self.design, theta=theta, solution=None, pass1=p1,
                          info={**self.info, "solver": "iterate", "n_iterations": n_iter},
                          r_absmax=self.r_absmax, cells=self.cells)


def _bounded_chunk(dataset: TrajectoryDataset, *, policy: Any, q: QValues,
                   limit: float) -> _Bounded:
    return _Bounded(q.bounded(dataset, policy, limit))


@dataclass(frozen=True)
class _Bounded:
    ok: bool

    def __add__(self, o: _Bounded) -> _Bounded:
        return _Bounded(self.ok and o.ok)


def fit_q_stream(source: Any, policy: Any, *, cfg: FQEConfig, keys: tuple[str, ...],
                 truncate: float | None = None, check: bool = True,
                 groups: GroupCodes | None = None, censoring: bool = False) -> StreamQFit:
    """Fit a streamable Q-model of ``policy`` over the chunks of ``source`` (passes 0 and 1).

    Parameters
    ----------
    source : ChunkSource
    policy : Policy or callable
    cfg : FQEConfig
        From :func:`stream_q_config`.
    keys : tuple of str
        Estimators whose gradients pass 1 collects (``fqe, dr, wdr`` among them).
    truncate : float, optional
    check : bool
        Run the in-memory stability check of the linear fixed point as one more pass (and fall
        back to iterated regressions when it fails); :func:`evaluate_stream_q` checks in its
        estimate pass instead.
    groups : GroupCodes, optional
        Groups whose gradient pieces pass 1 also sums (:func:`group_refit_directions`).
    censoring : bool
        With the stationary table on a panel with censored episodes, pass 1 also sums the
        window table's statistics and the fit carries the window table (``alt_window``) for
        the censoring check (:class:`_CensoringPlan`).

    Returns
    -------
    StreamQFit
    """
    horizon = int(source.horizon)
    pre, _ = source.map_reduce(functools.partial(_by_blocks, _pre_chunk, cfg=cfg))
    stats = None
    if pre.moments is not None:
        mo = pre.moments
        stats = StateStats(mean=mo.mean, sd=np.sqrt(mo.m2 / max(mo.n, 1.0)), max_len=horizon)
    tabular = cfg.model == "tabular"
    window = tabular and cfg.resolved_horizon == "window"
    design = _Design(cfg=cfg, stats=stats, visited=pre.visited, horizon=horizon,
                     truncate=truncate, keys=keys,
                     window_sums=window or (tabular and censoring and pre.n_censored > 0))
    p1, _ = source.map_reduce(functools.partial(_by_blocks, _pass1_chunk, policy=policy,
                                                design=design, groups=groups))
    wf = None
    if p1.window is not None:
        assert pre.visited is not None and pre.cell_shape is not None
        n_cells = int(np.unique(pre.visited // pre.cell_shape[2]).size)
        wf = WindowFit.from_sums(p1.window, p1.gamma, horizon, n_cells)
    if window:
        assert wf is not None
        return StreamQFit(design=design, theta=wf.thetas, solution=None, pass1=p1,
                          info=wf.info(), r_absmax=pre.r_absmax, cells=pre.cell_counts(),
                          window=wf, pre=pre)
    sol, theta, info = _solve(p1, design, p1.gamma)
    fit = StreamQFit(design=design, theta=theta, solution=sol, pass1=p1, info=info,
                     r_absmax=pre.r_absmax, cells=pre.cell_counts(), alt_window=wf, pre=pre)
    limit = fit.check_limit
    if check and limit is not None:
        ok, _ = source.map_reduce(functools.partial(_by_blocks, _bounded_chunk, policy=policy,
                                                    q=fit.applier(), limit=limit))
        if not ok.ok:
            fit = fit.iterated()
    return fit


@dataclass(frozen=True)
class StreamQOutput:
    """What :func:`evaluate_stream_q` sums over the chunks.

    Attributes
    ----------
    sums : StreamSums
        Summed parts, replicates and influence columns (``equicare.ope._stream.finish`` turns
        them into estimates).
    n_chunks : int
    q_model : dict
        Name, solver and how the refit enters the bootstrap.
    squares : SquareSums, JackknifeSums or None
        The summed squared influences (studentized intervals), or the jackknife's sums
        (``n_boot == 0``).
    groups : GroupSums or None
        Each subgroup level's sums, with the other episodes' share of its refit.
    group_squares : GroupSquares or None
        Each level's summed squared influences.
    cells : CellCounts or None
        The stationary table's visited cells (tabular: whether they are thin).
    censoring : CensoringCheck or None
        The stationary table's censoring check (:class:`_CensoringPlan`), with
        ``switched`` when the window table replaced it.
    cfg : FQEConfig or None
        The Q-model fitted (the window table's when it replaced the stationary one).
    """

    sums: StreamSums
    n_chunks: int
    q_model: dict[str, Any]
    squares: SquareSums | JackknifeSums | None = None
    groups: GroupSums | None = None
    group_squares: Any = None
    cells: CellCounts | None = None
    censoring: Any = None
    cfg: FQEConfig | None = None


def _directions(source: Any, policy: Any, qfit: StreamQFit, q_keys: tuple[str, ...],
                codes: GroupCodes | None) -> _Fit:
    """The fit to apply in the estimates pass, with its refit directions (overall, levels)."""
    sol, wf = qfit.solution, qfit.window
    if wf is not None:  # the window table: adjoint directions over the steps
        z = (wf.adjoint(qfit.pass1.step_gradients(q_keys, qfit.design.horizon))
             if wf.linearised else None)
    else:
        z = None if sol is None else sol.solve_t(_gradients(qfit.pass1, q_keys))
    zg = None
    if z is not None and codes is not None:  # the levels' pieces came with pass 1
        dirs = group_refit_directions(source, qfit, policy, codes)
        zg = None if dirs is None else np.concatenate([dirs[k] for k in q_keys], axis=-1)
    return _Fit(theta=qfit.theta, z=z, infl_keys=q_keys if z is not None else (),
                check_limit=qfit.check_limit, z_groups=zg, window=wf)


def evaluate_stream_q(source: Any, policy: Any, *, keys: tuple[str, ...], cfg: FQEConfig,
                      n_boot: int, seed: int, truncate: float | None,
                      progress: Callable[[int], None] | None = None,
                      studentized: bool = False, groups: GroupPlan | None = None,
                      censoring: str = "off") -> StreamQOutput:
    """Streamed evaluation with FQE, DR and WDR (three map-reduce passes over ``source``).

    With ``studentized`` a fourth pass (:func:`_pass3_chunk`) sums the squared influences that
    the replicates' standard errors need; with ``n_boot == 0`` (no replicates) it sums the
    deviations of the leave-one-episode-out estimates (the jackknife standard errors). With
    ``groups`` pass 1 also sums each level's gradient pieces for its refit directions
    (:func:`group_refit_directions`), and the estimates and squares passes add every level's
    statistics (:mod:`equicare.ope._stream_groups`).

    Parameters
    ----------
    source : ChunkSource
    policy : Policy or callable
    keys : tuple of str
        Estimators (importance-sampling ones computed alongside).
    cfg : FQEConfig
        From :func:`stream_q_config`.
    n_boot, seed, truncate
        As in :func:`~equicare.ope.evaluate_stream`.
    progress : callable, optional
        Called with the number of chunks done in the estimates pass.
    studentized : bool
        Run the standard-error pass of the studentized intervals (with ``n_boot == 0`` the
        jackknife pass runs in its place whatever this says).
    groups : GroupPlan, optional
        Subgroup levels to estimate within.
    censoring : {"off", "check", "switch"}
        With the stationary table: ``"check"`` makes the in-memory censoring check
        (:class:`_CensoringPlan`: the window table fitted from the same passes, the
        per-episode influences of the two values' difference summed in the estimates pass,
        when censoring could move the value by 2%); ``"switch"`` (``auto``'s choice) also
        replaces the stationary table by the window table when the check warns, as in memory,
        and makes the estimates pass again with it.

    Returns
    -------
    StreamQOutput
    """
    q_keys = tuple(k for k in ("fqe", "dr", "wdr") if k in keys)
    codes = (GroupCodes(codes=groups.codes, n_groups=groups.n_columns, keys=q_keys)
             if groups is not None and groups.n_columns else None)
    qfit = fit_q_stream(source, policy, cfg=cfg, keys=keys, truncate=truncate, check=False,
                        groups=codes, censoring=censoring != "off")
    plan = None if qfit.alt_window is None else _CensoringPlan.of(qfit)
    fit = _directions(source, policy, qfit, q_keys, codes)
    p2, n = source.map_reduce(functools.partial(
        _by_blocks, _pass2_chunk, policy=policy, design=qfit.design, fit=fit, n_boot=n_boot,
        seed=seed, groups=groups, censoring=None if plan is None else plan.terms), progress)
    check, extra = None, 0
    if plan is not None:  # the check's influences rode on the estimates pass
        qfit, check = plan.decide(qfit, p2.censoring, switch=censoring == "switch")
        if check.switched:  # auto: the window table, the pass again
            fit = _directions(source, policy, qfit, q_keys, codes)
            p2, n = source.map_reduce(functools.partial(
                _by_blocks, _pass2_chunk, policy=policy, design=qfit.design, fit=fit,
                n_boot=n_boot, seed=seed, groups=groups), progress)
            extra = 1
    info = qfit.info
    if not p2.bounded:  # unstable fixed point: iterate from the same sums, Q held fixed
        qfit = qfit.iterated()
        info = qfit.info
        fit = _Fit(theta=qfit.theta, z=None, infl_keys=(), check_limit=None)
        p2, n = source.map_reduce(functools.partial(_by_blocks, _pass2_chunk, policy=policy,
                                                    design=qfit.design, fit=fit,
                                                    n_boot=n_boot, seed=seed, groups=groups),
                                  progress)
    squares: SquareSums | JackknifeSums | None = None
    g_squares = None
    second = studentized or n_boot == 0  # n_boot == 0: the jackknife pass
    if second:
        level_coefs = None if p2.groups is None else group_coefs(p2.groups, seed)
        both, _ = source.map_reduce(functools.partial(
            _by_blocks, _pass3_chunk, policy=policy, design=qfit.design, fit=fit,
            coefs=pass_coefs(p2.sums, seed), groups=groups, level_coefs=level_coefs))
        squares, g_squares = both.main, both.groups
    from equicare.ope._prepare import q_model_name

    q_info = {"chosen": q_model_name(qfit.design.cfg), **info,
              "bootstrap": ("Q-model refit linearised in every replicate" if fit.z is not None
                            else "Q-model fitted once on all episodes"),
              "passes": (4 if second else 3) + extra}
    return StreamQOutput(sums=p2.sums, n_chunks=n, q_model=q_info, squares=squares,
                         groups=p2.groups, group_squares=g_squares, cells=qfit.cells,
                         censoring=check, cfg=qfit.design.cfg)


# ---------------------------------------------------------------------- groups' refit directions
@dataclass(frozen=True, eq=False)
class _GroupPieces:
    """Per-group sums of the pieces of an estimator's gradient in ``theta`` (``C`` groups)."""

    n: NDArray[np.float64]  # (C,) episodes per group
    first: NDArray[np.float64] | None  # (n_params, C): X_pi over the groups' step-0 rows
    d: NDArray[np.float64] | None  # (n_params, C): DR's sum disc (w_prev X_pi - w X)
    a: Steps | None  # (n_params, C * H): WDR's sum disc w_prev X_pi per group and step
    b: Steps | None  # (n_params, C * H): WDR's sum disc w X per group and step
    s: NDArray[np.float64] | None  # (H, C): sum of w per step
    s_prev: NDArray[np.float64] | None  # (H, C): sum of w_prev per step

    def __add__(self, o: _GroupPieces) -> _GroupPieces:
        def add(u: Any, v: Any) -> Any:
            return None if u is None else u + v

        return _GroupPieces(n=self.n + o.n, first=add(self.first, o.first), d=add(self.d, o.d),
                            a=add(self.a, o.a), b=add(self.b, o.b), s=add(self.s, o.s),
                            s_prev=add(self.s_prev, o.s_prev))

    def gradients(self, key: str) -> NDArray[np.float64]:
        """``dF_c/dtheta`` of each group's estimate, shape ``(n_params, C)``."""
        n = np.maximum(self.n, 1.0)
        if key == "fqe":
            assert self.first is not None
            return self.first / n
        if key == "dr":
            assert self.d is not None
            return self.d / n
        assert self.a is not None and self.b is not None
        assert self.s is not None and self.s_prev is not None
        return _sum_steps(_wdr_steps(self.a, self.b, self.s, self.s_prev), len(self.n))

    def step_gradients(self, key: str, horizon: int) -> NDArray[np.float64]:
        """The window table's per-step ``dF_c/dtheta_t`` of each group, ``(H, n_params, C)``."""
        n = np.maximum(self.n, 1.0)
        if key == "fqe":
            assert self.first is not None
            out = np.zeros((horizon, *self.first.shape))
            out[0] = self.first / n
            return out
        assert self.a is not None and self.b is not None
        if key == "dr":
            return _steps_dense(self.a - self.b, len(self.n)) / n[None, None, :]
        assert self.s is not None and self.s_prev is not None
        return _steps_dense(_wdr_steps(self.a, self.b, self.s, self.s_prev), len(self.n))


def _group_pieces_chunk(dataset: TrajectoryDataset, *, policy: Any, design: _Design,
                        groups: GroupCodes) -> _GroupPieces:
    pe = _target_matrix(dataset, policy)
    x, x_pi, _ = design.build(dataset, pe)
    return _group_pieces(dataset, x, x_pi, _weights_inputs(dataset, pe, design.horizon, policy),
                         design,
                         groups.keys, groups.codes(dataset), groups.n_groups)


def _group_pieces(dataset: TrajectoryDataset, x: sp.csr_matrix, x_pi: PiDesign,
                  inputs: OPEInputs, design: _Design, keys: tuple[str, ...],
                  codes: NDArray[np.int64], n_groups: int) -> _GroupPieces:
    """A chunk's gradient pieces of every group's FQE, DR and WDR (those in ``keys``).

    All partitions' groups come out of one grouped product per piece.
    """
    ep_codes = np.asarray(codes, dtype=np.int64).reshape(dataset.n_episodes, -1)
    valid = ep_codes >= 0  # (n_episodes, P): each partition's group of the episode, or none
    member = membership_matrix(ep_codes, n_groups).astype(np.float64)
    n_c = member.sum(axis=0)
    row_codes = np.maximum(ep_codes, 0)[dataset.episode_index]  # (n_steps, P)
    row_valid = valid[dataset.episode_index].astype(np.float64)
    t = inputs.step
    first = d = a = b = s = s_prev = None
    if "fqe" in keys:  # every group's step-0 rows of X_pi, all partitions in one product
        first = _grouped_t(x_pi, (t == 0)[:, None] * row_valid, row_codes, n_groups)
    if "dr" in keys or "wdr" in keys:
        w, disc, w_row, w_prev = inputs.row_weights(design.truncate)
    if "dr" in keys:
        d = (_grouped_t(x_pi, (disc * w_prev)[:, None] * row_valid, row_codes, n_groups)
             - _grouped_t(x, (disc * w_row)[:, None] * row_valid, row_codes, n_groups))
    if "wdr" in keys or ("dr" in keys and design.window_sums):
        # per (group, step): output index group * H + step (the window table's DR too)
        h = design.horizon
        idx = row_codes * h + t[:, None]

        a = _grouped_t(x_pi, (disc * w_prev)[:, None] * row_valid, idx, n_groups * h,
                       sparse=True)
        b = _grouped_t(x, (disc * w_row)[:, None] * row_valid, idx, n_groups * h, sparse=True)
        s = w.T @ member  # (H, C)
        s_prev = np.empty((h, n_groups))
        s_prev[0] = n_c
        s_prev[1:] = w[:, :-1].T @ member
    return _GroupPieces(n=n_c, first=first, d=d, a=a, b=b, s=s, s_prev=s_prev)


def group_refit_directions(source: Any, fit: StreamQFit, policy: Any, groups: GroupCodes
                           ) -> dict[str, NDArray[np.float64]] | None:
    """The refit directions ``z_c = M^{-T} dF_c/dtheta`` of each group's estimates.

    For the window table, the adjoint directions ``lambda_{t,c}`` over the steps
    (:meth:`WindowFit.adjoint` of each group's per-step gradients), shape
    ``(H, n_params, n_groups)``.

    The groups come in partitions of the episodes (the levels of one attribute, say; see
    :class:`GroupCodes`), so the design's rows are formed once per chunk, not once per group.
    The estimate of group ``c`` averages over its episodes (WDR normalised within it). The
    pieces come from the fit's pass 1 when it collected them (:func:`fit_q_stream` with
    ``groups``), else from one more pass. None when the fit has no factorised fixed point (the
    iterated fall-back: the Q-model is held fixed).

    Returns
    -------
    dict of str to ndarray of shape (n_params, n_groups), or None
        One entry per estimator of ``groups.keys`` (among ``fqe, dr, wdr``).
    """
    if fit.solution is None and (fit.window is None or not fit.window.linearised):
        return None
    pieces = fit.pass1.groups
    if pieces is None:
        pieces, _ = source.map_reduce(functools.partial(
            _by_blocks, _group_pieces_chunk, policy=policy, design=fit.design, groups=groups))
    keys = groups.keys
    if fit.window is not None:  # the window table: each level's adjoint directions
        h = fit.design.horizon
        return {k: fit.window.adjoint(pieces.step_gradients(k, h)) for k in keys}
    assert fit.solution is not None
    grads = np.concatenate([pieces.gradients(k) for k in keys], axis=1)
    z = np.asarray(fit.solution.solve_t(grads))  # one multi-right-hand-side solve
    n_c = grads.shape[1] // len(keys)
    return {k: z[:, j * n_c:(j + 1) * n_c] for j, k in enumerate(keys)}


def refit_contributions(dataset: TrajectoryDataset, policy: Any, q: QValues,
                        z: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each episode's ``sum_{i in e} x_i^T z_c delta_i`` for every direction, ``(n_episodes, C)``.

    The raw first-order effect of the episode on estimates with refit directions ``z``
    (:func:`group_refit_directions`), with the TD residuals of the fitted ``theta``; for the
    window table (``q.window``), :func:`_window_contributions` with its adjoint directions
    ``z`` of shape ``(H, n_params, C)``.
    """
    out = np.empty((dataset.n_episodes, z.shape[-1]))
    max_rows = max(1, ROW_BLOCK_ELEMENTS // max(1, dataset.n_actions))
    done = 0
    for _, _, part in dataset.episode_blocks(max_rows):  # whole episodes, bounded memory
        x, x_pi, _ = q.design.build(part, _target_matrix(part, policy))
        if q.window is not None:
            assert isinstance(x_pi, SparsePi)
            eff = _window_contributions(part, x_pi.x_pi, q.design.pair_index(part), q.window, z)
        else:
            eff = _refit_contributions(part, x, x_pi, q.theta, z)
        out[done:done + part.n_episodes] = eff
        done += part.n_episodes
    return out


# ---------------------------------------------------------------------- the censoring check
def _censoring_chunk(dataset: TrajectoryDataset, *, policy: Any, design: _Design,
                     theta: NDArray[np.float64], z: NDArray[np.float64], window: WindowFit,
                     lam: NDArray[np.float64], n_episodes: int) -> _Moments:
    """A chunk's per-episode ``u_e`` of the two values' difference, as summed moments.

    ``u_e = V_st(s_0e) - V_win(s_0e) + n (raw_st_e - raw_win_e)``: each value's own term plus
    its linearised refit (:func:`equicare.ope._censoring._episode_influence`, before centring).
    """
    pe = _target_matrix(dataset, policy)
    x, x_pi, _ = design.build(dataset, pe)
    assert isinstance(x_pi, SparsePi)
    starts = dataset.episode_offsets[:-1]
    first = x_pi.x_pi[starts]
    u = np.asarray(first @ theta) - np.asarray(first @ window.thetas[0])
    raw_st = _refit_contributions(dataset, x, x_pi, theta, z)[:, 0]
    raw_win = _window_contributions(dataset, x_pi.x_pi, design.pair_index(dataset), window,
                                    lam)[:, 0]
    u = u + n_episodes * (raw_st - raw_win)
    mean = np.array([u.mean()]) if u.size else np.zeros(1)
    return _Moments(n=float(u.size), mean=mean, m2=np.array([((u - mean[0]) ** 2).sum()]))


@dataclass(frozen=True, eq=False)
class _CensoringPlan:
    """:func:`equicare.ope._censoring.censoring_check` of a streamed stationary table.

    The window table (``fit.alt_window``) comes from the stationary fit's passes, the two
    values from the summed step-0 rows, the pre-check from pass 0's censored episodes and
    largest return. When the pre-check passes, the estimates pass also sums the per-episode
    influences of the values' difference (``terms`` for :func:`_censoring_chunk`; Chan's
    combination of each chunk's mean and squared deviations), so :meth:`check` gives the
    in-memory standard error and decision. ``terms`` is None when no standard error is
    defined (a window table held fixed, fewer than 2 episodes).
    """

    share: float
    v_st: float
    v_win: float
    explainable: float
    direction: int
    n_episodes: int
    terms: dict[str, Any] | None

    @classmethod
    def of(cls, fit: StreamQFit) -> _CensoringPlan | None:
        """The plan, or None when censoring cannot move the value by 2% (as in memory)."""
        from equicare.ope._censoring import CENSORING_MIN_PCT, explainable_by_censoring

        pre, p1, wf = fit.pre, fit.pass1, fit.alt_window
        assert pre is not None and wf is not None and p1.first is not None
        if pre.n_censored == 0:
            return None
        n = p1.n_episodes
        v_st = float(fit.theta @ p1.first / n)
        share = pre.n_censored / pre.n_episodes
        explainable = explainable_by_censoring(share, pre.ret_absmax)
        if explainable < CENSORING_MIN_PCT / 100.0 * abs(v_st):
            return None
        terms = None
        if fit.solution is not None and wf.linearised and n >= 2:
            g = (p1.first / n)[:, None]
            grads = np.zeros((fit.design.horizon, g.shape[0], 1))
            grads[0] = g
            terms = {"theta": fit.theta, "z": np.asarray(fit.solution.solve_t(g)),
                     "window": wf, "lam": wf.adjoint(grads), "n_episodes": n}
        direction = -1 if pre.r_min >= 0 or pre.n_rows == 0 else 1 if pre.r_max <= 0 else 0
        return cls(share=share, v_st=v_st, v_win=wf.value(p1.first, n),
                   explainable=explainable, direction=direction, n_episodes=n, terms=terms)

    def check(self, moments: _Moments | None) -> Any:
        """The :class:`~equicare.ope._censoring.CensoringCheck` from the summed influences."""
        from equicare.ope._censoring import CensoringCheck, censoring_warns

        n = self.n_episodes
        se = (None if self.terms is None or moments is None
              else float(np.sqrt(moments.m2[0] / (n - 1)) / np.sqrt(n)))
        return CensoringCheck(
            censored_pct=float(100.0 * self.share), stationary=self.v_st, window=self.v_win,
            difference_se=se, explainable=self.explainable,
            warn=censoring_warns(self.v_st, self.v_win, se, self.explainable, self.direction))

    def decide(self, fit: StreamQFit, moments: _Moments | None, switch: bool
               ) -> tuple[StreamQFit, Any]:
        """The check, and the Q-model it leaves (``fit`` is the stationary table's).

        With ``switch`` (``q_model="auto"``'s choice) a check that warns makes the window table
        fitted beside it the Q-model (``switched``), as in memory
        (:func:`~equicare.ope._prepare._censoring_switch`); else the stationary table stays.
        """
        check = self.check(moments)
        if not (switch and check.warn):
            return fit, check
        return fit.as_window(), dataclasses.replace(check, switched=True)


def fit_q_checked(source: Any, policy: Any, *, cfg: FQEConfig, keys: tuple[str, ...],
                  truncate: float | None = None, groups: GroupCodes | None = None,
                  switch: bool = False) -> tuple[StreamQFit, Any]:
    """:func:`fit_q_stream` with a stationary table's censoring check decided before estimates.

    For a caller whose estimates pass needs the Q-model the check leaves (the streamed audit):
    the in-memory :func:`~equicare.ope._censoring.censoring_check` of :class:`_CensoringPlan`
    (the window table fitted from the same passes) and, when censoring could move the value
    by 2%, one more pass that sums the influences of the two values' difference. With
    ``switch`` (``q_model="auto"``) a check that warns makes the window table the Q-model
    (:meth:`_CensoringPlan.decide`). :func:`evaluate_stream_q` rides those influences on its
    estimates pass instead.

    Returns
    -------
    fit : StreamQFit
    check : CensoringCheck or None
        None for other Q-models, without censored episodes, or when censoring cannot move
        the value by 2%.
    """
    fit = fit_q_stream(source, policy, cfg=cfg, keys=keys, truncate=truncate, groups=groups,
                       censoring=True)
    plan = None if fit.alt_window is None else _CensoringPlan.of(fit)
    if plan is None:
        return fit, None
    moments = None
    if plan.terms is not None:
        moments, _ = source.map_reduce(functools.partial(
            _by_blocks, _censoring_chunk, policy=policy, design=fit.design, **plan.terms))
    return plan.decide(fit, moments, switch)
