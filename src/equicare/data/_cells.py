"""Cells of the tabular models: which categorical state columns define them, and when too thin.

With several categorical state columns, the tables (Q-tables, SPIBB, PVI) take their
combinations as cells. :func:`choose_cells` drops the columns that do not change the dynamics;
:func:`thin_cells_message` warns when the cells that are left are too thin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["thin_cells_message", "thin_cells_text", "THIN_CELL_ROWS", "CellChoice",
           "choose_cells", "CELL_N_SE",
           "CELL_BACKOFF", "CELL_FOLDS", "check_cells", "resolve_cells", "column_positions",
           "policy_reads", "READS_SHUFFLES", "cell_means", "reward_gain", "episode_folds",
           "mean_tv"]


#: Rows per visited combination of categorical states below which (and below a quarter of the
#: rows per level of the finest column) :func:`thin_cells_message` warns.
THIN_CELL_ROWS = 5.0


def thin_cells_message(dataset: Any, what: str, columns: tuple[str, ...] | None = None,
                       hint: str | None = None) -> str | None:
    """A warning when several categorical columns make a tabular model's cells thin, or None.

    ``what`` names the cells in the message (e.g. "The tabular Q-model's cells"). Tabular
    models (the stationary and window Q-tables, SPIBB, PVI) take the combinations of all
    categorical state columns as cells. A column that does not drive outcomes (a care site, say)
    multiplies the cells without adding information, and in cells of two or three rows the
    estimates lean on imputation: on a 700-state Garnet panel (48,850 rows) an extra 30-level
    column moved FQE from -0.2% to -7.6% and DR from -1.3% to -8.5% of the truth, and
    ``train --select auto`` fell back to current practice where it had kept a PVI policy.
    Warns when there are several columns, fewer than :data:`THIN_CELL_ROWS` rows per visited
    combination, and under a quarter of the rows per level of the finest column alone.
    ``columns`` restricts the cells to those columns (a Q-table over a subset); ``hint``
    replaces the message's advice.
    """
    cat = dataset.categorical
    if cat is None or cat.ndim != 2 or dataset.n_steps == 0:
        return None
    names_all = tuple(dataset.categorical_names)
    if columns is not None:
        cols = [names_all.index(c) for c in columns if c in names_all]
        cat = cat[:, cols]
        names_all = tuple(names_all[j] for j in cols)
    if cat.shape[1] < 2:
        return None
    return thin_cells_text(
        what, names_all, n_rows=dataset.n_steps,
        n_comb=int(_codes(cat, list(range(cat.shape[1]))).max()) + 1,
        n_levels=[int(np.unique(cat[:, j]).size) for j in range(cat.shape[1])], hint=hint)


def thin_cells_text(what: str, names: tuple[str, ...], *, n_rows: int, n_comb: int,
                    n_levels: list[int], hint: str | None = None) -> str | None:
    """:func:`thin_cells_message` from counts (a streamed fit sums them over chunks), or None.

    ``names`` are the cells' columns, ``n_rows`` the rows, ``n_comb`` the visited combinations
    of the columns' levels and ``n_levels`` each column's visited levels.
    """
    if len(names) < 2 or n_rows == 0:
        return None
    n = float(n_rows)
    per_comb = n / max(n_comb, 1)
    per_level = [n / max(k, 1) for k in n_levels]
    j_fine = int(np.argmin(per_level))
    if per_comb >= THIN_CELL_ROWS or 4.0 * per_comb >= per_level[j_fine]:
        return None
    joined = " x ".join(str(c) for c in names)
    advice = hint or ("List in the manifest's categorical_states only the columns that define "
                      "the clinical state (an attribute such as a care site can be a group).")
    return (f"{what} are the combinations of the categorical states "
            f"({joined}: {n_comb:,} visited, {per_comb:.1f} rows each, against "
            f"{per_level[j_fine]:.0f} rows per level of {names[j_fine]!r} "
            f"alone): estimates lean on imputation in cells this thin. {advice}")


#: Standard errors by which keeping a column must improve the held-out log-likelihood.
CELL_N_SE = 2.0
#: Pseudo-rows of the coarser cells' distribution in a finer cell's (backoff strengths tried).
CELL_BACKOFF = (1.0, 10.0)
#: Folds over episodes of the held-out log-likelihood.
CELL_FOLDS = 5
#: Bins of a reward with more distinct values (quantiles) in the outcome symbols.
REWARD_BINS = 8


@dataclass(frozen=True)
class CellChoice:
    """Which categorical state columns define the tables' cells (:func:`choose_cells`).

    Attributes
    ----------
    columns : tuple of str
        The kept columns, in the dataset's order.
    dropped : tuple of str
        The columns the tables pool over.
    tests : dict of str to dict
        Per tested column (the last test of each): ``gain``, the held-out log-likelihood per
        episode that keeping it adds (its best backoff), ``se`` its standard error over
        episodes, ``backoff`` the pseudo-rows of that backoff, and ``kept``.
    n_folds : int
    """

    columns: tuple[str, ...]
    dropped: tuple[str, ...]
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_folds: int = CELL_FOLDS

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {"columns": list(self.columns), "dropped": list(self.dropped),
                "criterion": ("a column is kept when, given the other kept columns and the "
                              "action, it improves the held-out log-likelihood of the next "
                              "state, the episode's end and the reward by more than "
                              f"{CELL_N_SE:g} standard errors"),
                "tests": {k: dict(v) for k, v in self.tests.items()},
                "n_folds": self.n_folds}


def _codes(cat: NDArray[np.int64], cols: list[int]) -> NDArray[np.int64]:
    """Compressed code of every row's combination of ``cols``.

    The codes of ``np.unique(cat[:, cols], axis=0, return_inverse=True)`` (combinations in
    lexicographic order), from one integer key per row (mixed radix over the columns' ranges,
    the first column most significant) sorted in one dimension: ``np.unique(axis=0)`` sorts the
    rows as structured records, 16.6 s against 0.39 s on 2.4M rows of three columns (42x), and
    ``choose_cells`` calls it for every test (the data stage of ``equicare run`` on a 2.4M-row
    daily panel spent 23 of its 83 s there). Falls back to it when the key would overflow.
    """
    if not cols:
        return np.zeros(cat.shape[0], dtype=np.int64)
    sub = np.asarray(cat[:, cols], dtype=np.int64)
    if sub.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    lo = sub.min(axis=0)
    span = sub.max(axis=0) - lo + 1
    if float(np.prod(span.astype(np.float64))) >= 2.0**62:
        _, inv = np.unique(sub, axis=0, return_inverse=True)
        return np.asarray(inv, dtype=np.int64).ravel()
    key = np.ravel_multi_index(tuple((sub - lo).T), tuple(int(x) for x in span))
    _, inv = np.unique(key, return_inverse=True)
    return np.asarray(inv, dtype=np.int64).ravel()


def _counts(train: NDArray[np.int64], query: NDArray[np.int64]) -> NDArray[np.float64]:
    """How often each ``query`` key occurs among the ``train`` keys."""
    u, c = np.unique(train, return_counts=True)
    if u.size == 0:
        return np.zeros(query.size)
    pos = np.clip(np.searchsorted(u, query), 0, u.size - 1)
    return np.where(u[pos] == query, c[pos], 0).astype(np.float64)


def _reward_bins(r: NDArray[np.float64]) -> NDArray[np.int64]:
    u = np.unique(r)
    if u.size <= REWARD_BINS:
        return np.asarray(np.searchsorted(u, r), dtype=np.int64)
    edges = np.unique(np.quantile(r, np.linspace(0, 1, REWARD_BINS + 1)[1:-1]))
    return np.asarray(np.searchsorted(edges, r), dtype=np.int64)


def _held_out_gain(dataset: Any, coarse: NDArray[np.int64], fine: NDArray[np.int64],
                   row_fold: NDArray[np.int64], n_folds: int
                   ) -> dict[float, NDArray[np.float64]]:
    """Per episode, held-out log-likelihood of the fine cells minus the coarse ones'.

    The symbol predicted at each row is the next row's coarse cell, or "end of the episode"
    at a terminal row, crossed with the reward's bin; rows at a censored end are skipped (their
    next state is unknown). Coarse model: counts per (coarse cell, action) with one pseudo-row
    of the symbol's frequency under the action; fine model: counts per (fine cell, action)
    with ``k`` pseudo-rows of the coarse model (:data:`CELL_BACKOFF`).
    """
    nxt = dataset.next_index
    has = (nxt >= 0) & ~dataset.terminals
    n_coarse = int(coarse.max()) + 1
    state = np.where(has, coarse[np.maximum(nxt, 0)], np.where(dataset.terminals, n_coarse, -1))
    rb = _reward_bins(dataset.rewards)
    n_rb = int(rb.max()) + 1
    y = np.where(state >= 0, state * n_rb + rb, -1).astype(np.int64)
    ok = y >= 0
    n_y = int(y.max()) + 1 if ok.any() else 1
    a = np.asarray(dataset.actions, dtype=np.int64)
    n_a = int(dataset.n_actions)
    ll_c = np.zeros(dataset.n_steps)
    ll_f = {k: np.zeros(dataset.n_steps) for k in CELL_BACKOFF}
    key_ay, key_c, key_f = a * n_y + y, coarse * n_a + a, fine * n_a + a
    for f in range(n_folds):
        tr, te = ok & (row_fold != f), ok & (row_fold == f)
        if not te.any():
            continue
        base = (_counts(key_ay[tr], key_ay[te]) + 1.0 / n_y) / (_counts(a[tr], a[te]) + 1.0)
        p_c = ((_counts(key_c[tr] * n_y + y[tr], key_c[te] * n_y + y[te]) + base)
               / (_counts(key_c[tr], key_c[te]) + 1.0))
        ll_c[te] = np.log(p_c)
        n_fy = _counts(key_f[tr] * n_y + y[tr], key_f[te] * n_y + y[te])
        n_f = _counts(key_f[tr], key_f[te])
        for k in CELL_BACKOFF:
            ll_f[k][te] = np.log((n_fy + k * p_c) / (n_f + k))
    starts = dataset.episode_offsets[:-1]
    return {k: np.add.reduceat(np.where(ok, ll_f[k] - ll_c, 0.0), starts) for k in CELL_BACKOFF}


def _sums(key: NDArray[np.int64], r: NDArray[np.float64], rows: NDArray[np.bool_]
          ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sum of ``r`` and row count per ``key`` over ``rows`` (every key of the panel sized)."""
    size = int(key.max()) + 1
    return (np.bincount(key[rows], weights=r[rows], minlength=size).astype(np.float64),
            np.bincount(key[rows], minlength=size).astype(np.float64))


def reward_gain(dataset: Any, coarse: NDArray[np.int64], fine: NDArray[np.int64],
                row_fold: NDArray[np.int64], n_folds: int,
                values: NDArray[np.float64] | None = None,
                rows: NDArray[np.bool_] | None = None) -> dict[float, NDArray[np.float64]]:
    """Per episode, held-out squared error of the mean reward: coarse cells' minus fine ones'.

    The Bellman equations read a cell's mean reward, not its distribution. Where rewards are
    rare (a relapse in 8% of rows, an overdose in 0.3%), the log-likelihood of
    :func:`_held_out_gain` spends its signal on the next state's many symbols: on a 127k-row
    substance-use panel the bins of days since last use (at 60), which move the mean reward
    per row from -0.084 to -0.142, lost 0.006 per episode there (given the housing) and gained
    0.012 here (7.8 standard errors). Coarse model: the mean reward per (coarse cell, action)
    with one pseudo-row of the action's mean; fine model: per (fine cell, action) with ``k``
    pseudo-rows of the coarse mean (:data:`CELL_BACKOFF`). Every row is scored, censored or
    not (its reward is observed).

    ``values`` replaces the reward by another per-row outcome (a TD target
    ``r + gamma V(s')``, :func:`equicare.ope._select.target_read_bins`), and ``rows`` limits
    the fit and the score to some rows (those whose next state is known); both are sums per
    key, so the cost stays a few ``bincount`` passes.

    Parameters
    ----------
    dataset : TrajectoryDataset
    coarse, fine : ndarray of shape (n_steps,)
        Each row's cell code, the fine cells nested in the coarse ones.
    row_fold : ndarray of shape (n_steps,)
        Each row's fold (its episode's).
    n_folds : int
    values : ndarray of shape (n_steps,), optional
        The outcome per row (default: the rewards).
    rows : ndarray of shape (n_steps,) of bool, optional
        The rows fitted and scored (default: all).

    Returns
    -------
    dict of float to ndarray of shape (n_episodes,)
        Per backoff strength, each episode's sum over its rows.
    """
    r = np.asarray(dataset.rewards if values is None else values, dtype=np.float64)
    a = np.asarray(dataset.actions, dtype=np.int64)
    use = np.ones(dataset.n_steps, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    n_a = int(dataset.n_actions)
    key_c, key_f = coarse * n_a + a, fine * n_a + a
    out = {k: np.zeros(dataset.n_steps) for k in CELL_BACKOFF}
    for f in range(n_folds):
        tr, te = use & (row_fold != f), use & (row_fold == f)
        if not te.any():
            continue

        s_a, n_a_ = _sums(a, r, tr)
        s_c, n_c = _sums(key_c, r, tr)
        s_f, n_f = _sums(key_f, r, tr)
        m_a = s_a / np.maximum(n_a_, 1.0)
        m_c = (s_c[key_c[te]] + m_a[a[te]]) / (n_c[key_c[te]] + 1.0)
        for k in CELL_BACKOFF:
            m_f = (s_f[key_f[te]] + k * m_c) / (n_f[key_f[te]] + k)
            out[k][te] = (r[te] - m_c) ** 2 - (r[te] - m_f) ** 2
    starts = dataset.episode_offsets[:-1]
    return {k: np.add.reduceat(v, starts) for k, v in out.items()}


def episode_folds(dataset: Any, n_folds: int, random_state: Any = 0) -> NDArray[np.int64]:
    """Every row's fold: episodes dealt into ``n_folds`` folds at random (seeded)."""
    from equicare.utils import check_random_state

    k = int(max(2, min(n_folds, dataset.n_episodes)))
    fold = np.arange(dataset.n_episodes) % k
    check_random_state(random_state).shuffle(fold)
    return np.asarray(fold[dataset.episode_index], dtype=np.int64)


def choose_cells(dataset: Any, *, n_folds: int = CELL_FOLDS, n_se: float = CELL_N_SE,
                 random_state: Any = None) -> CellChoice:
    """Choose the categorical state columns whose combinations are a table's cells.

    Backward elimination by held-out log-likelihood. A table pooled over a column is exact
    when, given the other columns and the action, the column does not change the next
    state of the others, the episode's end or the reward (a model-irrelevance abstraction,
    Li, Walsh & Littman 2006): its Bellman equations are those of the finer table. Each round
    tests every kept column: the held-out log-likelihood (cross-fitted over episodes) of those
    outcomes under the cells with the column, backed off to the cells without it
    (:func:`_held_out_gain`), minus that without it. The column with the smallest margin,
    gain minus ``n_se`` standard errors (over episodes), is dropped when that margin is not
    above zero; the elimination stops when every kept column's margin is, or one column is
    left. Cost: a few sorts of the rows per test (0.27 s on 68k rows, 2.5 s on 644k rows with
    two columns).

    The target policy is not consulted: a table already pools over what is not in its cells
    (the numeric states), and its next-state values weigh each row's own target
    probabilities. On the Garnet test bed with a 30-level site column that a target policy
    reads but the dynamics do not, pooling over the site made FQE more accurate, not less
    (docs/ope.md, "Several categorical columns"). ``q_model="auto"`` then checks the numeric
    states the target reads within the chosen cells
    (:func:`equicare.ope._select.target_read_bins`).

    Parameters
    ----------
    dataset : TrajectoryDataset
    n_folds : int, default=CELL_FOLDS
    n_se : float, default=CELL_N_SE
    random_state : int, Generator or None
        Seed of the folds.

    Returns
    -------
    CellChoice
    """
    from equicare.utils import check_random_state

    names = tuple(dataset.categorical_names)
    cat = dataset.categorical
    if cat is None or cat.ndim != 2 or cat.shape[1] < 2 or dataset.n_episodes < 2:
        return CellChoice(columns=names, dropped=(), tests={}, n_folds=0)
    nxt = dataset.next_index
    if not np.any(((nxt >= 0) & ~dataset.terminals) | dataset.terminals):
        # every episode is one censored row: nothing says what any column does
        return CellChoice(columns=names, dropped=(), tests={}, n_folds=0)
    rng = check_random_state(random_state)
    k = int(max(2, min(n_folds, dataset.n_episodes)))
    fold = np.arange(dataset.n_episodes) % k
    rng.shuffle(fold)
    row_fold = fold[dataset.episode_index]
    kept = list(range(cat.shape[1]))
    tests: dict[str, dict[str, Any]] = {}
    n = float(dataset.n_episodes)
    while len(kept) > 1:
        fine = _codes(cat, kept)
        margin: dict[int, float] = {}
        for j in kept:
            gains = _held_out_gain(dataset, _codes(cat, [c for c in kept if c != j]), fine,
                                   row_fold, k)
            stats = {b: (float(g.mean()), float(g.std(ddof=1) / np.sqrt(n)))
                     for b, g in gains.items()}
            best = max(stats, key=lambda b: stats[b][0] - n_se * stats[b][1])
            gain, se = stats[best]
            margin[j] = gain - n_se * se
            tests[names[j]] = {"gain": gain, "se": se, "backoff": best,
                               "kept": bool(margin[j] > 0)}
        weakest = min(kept, key=lambda j: margin[j])
        if margin[weakest] > 0:
            break
        tests[names[weakest]]["kept"] = False
        kept.remove(weakest)
    return CellChoice(columns=tuple(names[j] for j in kept),
                      dropped=tuple(n_ for j, n_ in enumerate(names) if j not in kept),
                      tests=tests, n_folds=k)


def check_cells(value: Any, owner: str, modes: tuple[str, ...] = ("auto", "all")
                ) -> str | tuple[str, ...]:
    """A ``cells`` setting: one of ``modes`` or distinct column names (as a tuple)."""
    from equicare.exceptions import InvalidParameterError
    from equicare.utils import PARAM_MESSAGE

    if isinstance(value, str) and value in modes:
        return value
    cols = (value,) if isinstance(value, str) else tuple(value) if isinstance(
        value, (list, tuple)) else None
    if not cols or not all(isinstance(c, str) and c for c in cols) or len(set(cols)) != len(cols):
        expected = " or ".join([*(repr(m) for m in modes), "distinct categorical state column "
                                "names"])
        raise InvalidParameterError(PARAM_MESSAGE.format(name="cells", owner=owner,
                                                         expected=expected, got=value))
    return cols


def column_positions(dataset: Any, columns: tuple[str, ...], what: str) -> tuple[int, ...]:
    """Positions of ``columns`` among the dataset's categorical states, or a clear error."""
    from equicare.exceptions import InvalidParameterError

    names = tuple(dataset.categorical_names) if dataset.categorical is not None else ()
    missing = [c for c in columns if c not in names]
    if missing:
        raise InvalidParameterError(
            f"{what} {list(columns)} name {missing}, which {'is' if len(missing) == 1 else 'are'}"
            f" not a categorical state column; the dataset's categorical states are "
            f"{list(names)}.")
    return tuple(names.index(c) for c in columns)


def resolve_cells(dataset: Any, cells: str | tuple[str, ...], owner: str
                  ) -> tuple[tuple[str, ...], CellChoice | None]:
    """The categorical columns a table's cells combine, and the choice when ``"auto"``.

    ``"all"``: every categorical state column; ``"auto"``: :func:`choose_cells` (seeded, so
    the same data give the same cells); names: those columns (checked against the dataset).
    """
    names = tuple(dataset.categorical_names) if dataset.categorical is not None else ()
    if cells == "all" or len(names) < 2 and cells == "auto":
        return names, None
    if cells == "auto":
        choice = choose_cells(dataset, random_state=0)
        return choice.columns, choice
    column_positions(dataset, tuple(cells), f"{owner}'s cells")
    return tuple(cells), None


#: Shuffles of a column's labels that calibrate :func:`policy_reads`.
READS_SHUFFLES = 4


def cell_means(values: NDArray[np.float64], codes: NDArray[np.int64],
               rows: NDArray[np.bool_] | None = None
               ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean of ``values`` (shape ``(n, m)``) per code over every row or the ``rows`` given.

    Returns the means, shape ``(n_codes, m)`` (0 for a code without rows), and the rows per
    code, shape ``(n_codes,)``; one sparse product.
    """
    import scipy.sparse as sp

    n = values.shape[0]
    k = int(codes.max()) + 1 if n else 0
    w = np.ones(n) if rows is None else np.asarray(rows, dtype=np.float64)
    ind = sp.csr_matrix((w, (codes, np.arange(n))), shape=(k, n))
    cnt = np.asarray(ind.sum(axis=1)).ravel()
    return (np.asarray(np.asarray(ind @ values) / np.maximum(cnt, 1.0)[:, None],
                       dtype=np.float64), cnt)


def mean_tv(probs: NDArray[np.float64], coarse: NDArray[np.int64],
             fine: NDArray[np.int64]) -> float:
    """Row-weighted mean total variation of fine-cell from coarse-cell mean probabilities."""
    m_fine, m_coarse = cell_means(probs, fine)[0], cell_means(probs, coarse)[0]
    return float(0.5 * np.abs(m_fine[fine] - m_coarse[coarse]).sum(axis=1).mean())


def policy_reads(dataset: Any, probs: NDArray[np.float64], column: str,
                 given: tuple[str, ...], random_state: Any = 0) -> bool:
    """Whether a target policy depends on ``column`` beyond the ``given`` columns.

    The statistic is the row-weighted mean total variation between the policy's mean
    probabilities in each (given cell, column level) and in each given cell. Thin cells and
    numeric states make it positive by themselves, so it is compared with its values when the
    column's labels are shuffled over rows (:data:`READS_SHUFFLES` times): the policy reads
    the column when the excess over the shuffles' mean is above 4 of their standard deviations
    and above 0.002. On Garnet panels with a 30-level site and a policy whose logits vary with
    a row-level numeric score, the excess was within +-0.0021 without a site effect and
    0.004-0.025 with one logit of site effect on one action. A table pooled over a column that
    the policy reads biases the estimates *within* the column's levels (docs/ope.md,
    "Several categorical columns").

    Parameters
    ----------
    dataset : TrajectoryDataset
    probs : ndarray of shape (n_steps, n_actions)
    column : str
    given : tuple of str
    random_state : int, Generator or None
        Seed of the shuffles.

    Returns
    -------
    bool
    """
    from equicare.utils import check_random_state

    cat = np.asarray(dataset.categorical, dtype=np.int64)
    j = column_positions(dataset, (column,), "policy_reads")[0]
    g = list(column_positions(dataset, given, "policy_reads"))
    coarse = _codes(cat, g)
    p = np.asarray(probs, dtype=np.float64)
    actual = mean_tv(p, coarse, _codes(cat, [*g, j]))
    rng = check_random_state(random_state)
    null = []
    for _ in range(READS_SHUFFLES):  # a handful of permutations, each one vectorised pass
        shuffled = cat.copy()
        shuffled[:, j] = rng.permutation(cat[:, j])
        null.append(mean_tv(p, coarse, _codes(shuffled, [*g, j])))
    excess = actual - float(np.mean(null))
    return bool(excess > max(4.0 * float(np.std(null, ddof=1)), 0.002))
