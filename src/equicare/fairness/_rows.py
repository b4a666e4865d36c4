"""Per-row allocation of action sets (logged behaviour or a policy) and per-episode totals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import DataValidationError, InvalidParameterError, PolicyError
from equicare.policy import CallablePolicy, FilePolicy, Policy, check_probs
from equicare.policy._base import PROB_TOL
from equicare.spaces import FactoredActionSpace

__all__ = [
    "action_set",
    "default_action",
    "level_matrix",
    "row_allocation",
    "row_pass",
    "episode_totals",
    "need_rows",
    "Level",
]

Level = Literal["step", "episode"]

#: Largest probability block (rows x actions) materialised at once when calling a policy.
MAX_BLOCK = 20_000_000

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": np.greater_equal, "<=": np.less_equal, "==": np.equal, "!=": np.not_equal,
    ">": np.greater, "<": np.less,
}


def default_action(space: FactoredActionSpace) -> str:
    """Default audited action set: every level of the first component except its first one.

    The first level of the first component is read as "no intervention" (``modality=none``), so the
    default set is "any outreach", e.g. ``"modality=phone|text|video|home_visit"``.
    """
    comp = space.components[0]
    levels = comp.levels[1:] if comp.n_levels > 1 else comp.levels
    return f"{comp.name}=" + "|".join(levels)


def action_label(spec: str, max_len: int = 40) -> str:
    """A short readable label of an action set for titles, axes and table headers.

    ``spec`` itself when it has at most ``max_len`` characters; else the component, the first
    two and the last level and the number of levels, e.g. ``"action in {1, 2, ..., 99} (99
    levels)"`` for the default set of a 100-level action (the full set stays in the JSON).
    """
    if len(spec) <= max_len or "=" not in spec:
        return spec
    comp, _, rest = spec.partition("=")
    levels = [lv for lv in rest.split("|") if lv]
    if len(levels) <= 3:
        return spec
    return f"{comp} in {{{levels[0]}, {levels[1]}, ..., {levels[-1]}}} ({len(levels)} levels)"


def action_set(space: FactoredActionSpace, action: str | NDArray[np.bool_] | None
               ) -> tuple[str, NDArray[np.bool_]]:
    """Resolve an action set given as ``"component=level|level"``, a mask, or ``None`` (default).

    Returns
    -------
    spec : str
        Readable description (``"custom"`` for a mask).
    mask : ndarray of shape (n_actions,), bool
    """
    if action is None:
        action = default_action(space)
    if isinstance(action, str):
        try:
            return action, space.parse_action_set(action)
        except (KeyError, ValueError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise DataValidationError(f"Bad action set {action!r}: {msg}") from None
    mask = np.asarray(action)
    if mask.dtype != bool or mask.shape != (space.n_actions,):
        raise DataValidationError(f"An action mask must be a boolean array of shape "
                                  f"({space.n_actions},), got {mask.dtype} {mask.shape}.")
    return "custom", mask


def level_matrix(space: FactoredActionSpace) -> tuple[list[str], NDArray[np.float64]]:
    """Membership of each flat action in each component level.

    Returns
    -------
    names : list of str
        ``"component=level"`` for every level of every component, in order.
    matrix : ndarray of shape (n_actions, total_levels)
    """
    codes = space.all_codes()
    names: list[str] = []
    blocks = []
    for j, comp in enumerate(space.components):
        names += [f"{comp.name}={lv}" for lv in comp.levels]
        blocks.append(np.eye(comp.n_levels)[codes[:, j]])
    return names, np.concatenate(blocks, axis=1)


def _checked(probs: Any, n: int, n_act: int, source: str) -> NDArray[np.float64]:
    """``check_probs`` in two passes over the matrix (row sums and the minimum).

    A NaN or infinite entry makes its row sum non-finite, so the fast test catches every problem
    ``check_probs`` does; only then is ``check_probs`` run, for its message.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.shape == (n, n_act) and p.size:
        s = p.sum(axis=1)
        if bool(np.all(np.abs(s - 1.0) <= PROB_TOL)) and float(p.min()) >= 0.0:
            return p
    return check_probs(p, n, n_act, source)


def row_allocation(dataset: TrajectoryDataset, policy: Policy | NDArray[np.float64] | None,
                   columns: NDArray[np.float64], *, max_block: int | None = None,
                   source: str = "policy") -> NDArray[np.float64]:
    """Probability that each row's action falls in each set: ``probs @ columns``.

    Parameters
    ----------
    dataset : TrajectoryDataset
    policy : Policy, ndarray of shape (n_steps, n_actions), or None
        ``None`` means the logged behaviour (the logged action, probability 0 or 1).
    columns : ndarray of shape (n_actions, k)
        Action-set memberships (0/1) as columns.
    max_block : int, optional
        A policy is called on blocks of whole episodes holding at most this many
        ``rows x actions`` probabilities, so a large panel never holds the full matrix
        (default: the module's ``MAX_BLOCK``, read at call time so tests can lower it).
    source : str
        Name used in error messages.

    Returns
    -------
    ndarray of shape (n_steps, k)
    """
    return row_pass(dataset, policy, columns, max_block=max_block, source=source)[0]


def row_pass(dataset: TrajectoryDataset, policy: Policy | NDArray[np.float64] | None,
             columns: NDArray[np.float64], *,
             q_fn: Callable[[TrajectoryDataset], NDArray[np.float64]] | None = None,
             block_fn: Callable[[slice, NDArray[np.float64]], None] | None = None,
             max_block: int | None = None, source: str = "policy"
             ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None,
                        NDArray[np.float64] | None]:
    """One pass over a policy's probabilities: allocations, logged-action probability, Q terms.

    Parameters
    ----------
    dataset, policy, columns, max_block, source
        As in :func:`row_allocation`.
    q_fn : callable, optional
        ``q_fn(dataset) -> Q`` of shape ``(n_steps, n_actions)`` (a fitted Q-model of the
        policy), evaluated on the same blocks.
    block_fn : callable, optional
        ``block_fn(rows, probs)`` with each block's rows (a slice of ``dataset``) and the
        policy's checked probabilities there, shape ``(n_rows, n_actions)``: for other sums
        over the same pass (the support check's unsupported mass).

    Returns
    -------
    alloc : ndarray of shape (n_steps, k)
    p_logged : ndarray of shape (n_steps,)
        Probability of the logged action under the policy (1 for the behaviour itself).
    q_sa : ndarray of shape (n_steps,) or None
        ``Q(s_t, a_t)`` at the logged action.
    v_s : ndarray of shape (n_steps,) or None
        ``sum_a pi(a|s_t) Q(s_t, a)``.
    """
    cols = np.asarray(columns, dtype=np.float64)
    n, n_act = dataset.n_steps, dataset.n_actions
    if policy is None:
        return cols[dataset.actions], np.ones(n), None, None
    check = getattr(policy, "check_compatible", None)
    if callable(check):  # model policies say which action space / columns they expected
        check(dataset)
    # a long-form policy file only knows its largest listed action; it checks its actions
    # against the dataset itself
    if not isinstance(policy, np.ndarray | FilePolicy):
        n_a = int(getattr(policy, "n_actions", n_act))
        if n_a != n_act:
            raise PolicyError(f"{source}: the policy has {n_a} actions, the dataset {n_act}.")
    alloc = np.empty((n, cols.shape[1]), dtype=np.float64)
    p_logged = np.empty(n, dtype=np.float64)
    q_sa = np.empty(n, dtype=np.float64) if q_fn is not None else None
    v_s = np.empty(n, dtype=np.float64) if q_fn is not None else None

    # these policies already run check_probs on what they return
    prechecked = isinstance(policy, CallablePolicy | FilePolicy)

    def fill(part: TrajectoryDataset, lo: int, hi: int, probs: NDArray[np.float64]) -> None:
        p = (np.asarray(probs, dtype=np.float64) if prechecked
             else _checked(probs, part.n_steps, n_act, source))
        alloc[lo:hi] = p @ cols
        rows = np.arange(part.n_steps)
        p_logged[lo:hi] = p[rows, part.actions]
        if block_fn is not None:
            block_fn(slice(lo, hi), p)
        if q_fn is not None:
            q = np.asarray(q_fn(part), dtype=np.float64)
            if q.shape != (part.n_steps, n_act):
                raise InvalidParameterError(f"q_fn must return shape ({part.n_steps}, {n_act}), "
                                 f"got {q.shape}.")
            q_sa[lo:hi] = q[rows, part.actions]  # type: ignore[index]
            v_s[lo:hi] = np.einsum("ij,ij->i", p, q)  # type: ignore[index]

    if not (isinstance(policy, np.ndarray) or hasattr(policy, "action_probs")):
        # a list of rows, or a path where a policy belongs: check_probs says which
        policy = check_probs(policy, n, n_act, source)
    if isinstance(policy, np.ndarray):
        fill(dataset, 0, n, policy)
        return alloc, p_logged, q_sa, v_s
    if max_block is None:
        max_block = MAX_BLOCK
    rows_per_block = max(1, max_block // max(1, n_act))
    if n <= rows_per_block:
        fill(dataset, 0, n, policy.action_probs(dataset))
        return alloc, p_logged, q_sa, v_s
    offs = dataset.episode_offsets
    e = 0
    while e < dataset.n_episodes:  # blocks of whole episodes (policies may read history)
        stop = int(np.searchsorted(offs, offs[e] + rows_per_block, side="right")) - 1
        stop = min(max(stop, e + 1), dataset.n_episodes)
        part = dataset.subset(np.arange(e, stop))
        fill(part, int(offs[e]), int(offs[stop]), policy.action_probs(part))
        e = stop
    return alloc, p_logged, q_sa, v_s


def episode_totals(dataset: TrajectoryDataset, x: NDArray[np.float64], level: Level
                   ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Numerators and denominators per episode for rates at the chosen level.

    ``"step"``: numerator = sum over the episode's rows, denominator = its number of rows
    (rates are shares of member-weeks). ``"episode"``: numerator = mean over the rows,
    denominator = 1 (each episode weighs the same).

    Parameters
    ----------
    x : ndarray of shape (n_steps,) or (n_steps, k)

    Returns
    -------
    num : ndarray of shape (n_episodes,) or (n_episodes, k)
    den : ndarray of shape (n_episodes,)
    """
    s = dataset.episode_sum(x, discount=False)
    lengths = dataset.episode_lengths.astype(np.float64)
    if level == "step":
        return s, lengths
    if level == "episode":
        return s / (lengths if s.ndim == 1 else lengths[:, None]), np.ones_like(lengths)
    raise InvalidParameterError(
        f"The 'level' parameter must be one of 'step', 'episode'. Got {level!r} "
                     "instead.")


#: A need rule that selects no row (tests match it).
NEED_RULE_NO_ROW_MESSAGE = (
    "Need rule {rule!r} holds on no row of the panel{ranges}; proportional parity compares "
    "each group's share of the allocation with its share of the need, so the rule must select "
    "some rows.")


def _parse_rule(dataset: TrajectoryDataset, rule: str, require_any: bool = True
                ) -> NDArray[np.float64]:
    names = list(dataset.state_names)
    used: list[str] = []
    out = np.ones(dataset.n_steps, dtype=bool)
    for part in rule.replace("&", " and ").split(" and "):
        term = part.strip()
        if not term:
            continue
        for op in (">=", "<=", "==", "!=", ">", "<"):
            if op in term:
                col, _, val = term.partition(op)
                col = col.strip()
                if col not in names:
                    raise DataValidationError(
                        f"Need rule {rule!r}: unknown state column {col!r}; numeric states are "
                        f"{names}.")
                try:
                    v = float(val)
                except ValueError:
                    raise DataValidationError(
                        f"Need rule {rule!r}: {val.strip()!r} is not a number.") from None
                out &= _OPS[op](dataset.states[:, names.index(col)], v)
                used.append(col)
                break
        else:
            raise DataValidationError(
                f"Need rule {rule!r}: each term must look like 'column OP number' with OP one of "
                ">=, <=, >, <, ==, != (terms joined by 'and' or '&').")
    if require_any and dataset.n_steps and not out.any():
        cols = dataset.states[:, [names.index(c) for c in dict.fromkeys(used)]]
        ranges = " (" + ", ".join(f"{c!r} from {lo:.4g} to {hi:.4g}" for c, lo, hi in zip(
            dict.fromkeys(used), cols.min(axis=0), cols.max(axis=0), strict=True)) + ")"
        raise DataValidationError(NEED_RULE_NO_ROW_MESSAGE.format(rule=rule, ranges=ranges))
    return out.astype(np.float64)


def need_rows(dataset: TrajectoryDataset,
              need: str | NDArray[Any] | Callable[[TrajectoryDataset], NDArray[Any]] | None,
              *, require_any: bool = True) -> NDArray[np.float64] | None:
    """Clinical need per row (0/1 or a weight), or ``None`` when unknown.

    Parameters
    ----------
    need : None, str, ndarray or callable
        ``None``: the manifest's need column (``dataset.need``, one flag per episode) if any.
        A string: a state rule such as ``"risk >= 0.7"`` or ``"risk > 0.5 and sdoh_need >= 1"``.
        An array of shape ``(n_steps,)`` or ``(n_episodes,)``, or a callable returning one.
    require_any : bool, default=True
        Refuse a rule that holds on no row (:data:`NEED_RULE_NO_ROW_MESSAGE`); ``False`` for
        one chunk of a streamed panel (the total is checked after the pass).

    Returns
    -------
    ndarray of shape (n_steps,) or None
    """
    if need is None:
        return None if dataset.need is None else dataset.episode_rows(dataset.need).astype(float)
    if isinstance(need, str):
        return _parse_rule(dataset, need, require_any)
    arr = np.asarray(need(dataset) if callable(need) else need, dtype=np.float64)
    if arr.shape == (dataset.n_steps,):
        out = arr
    elif arr.shape == (dataset.n_episodes,):
        out = dataset.episode_rows(arr)
    else:
        raise DataValidationError(f"need must have shape ({dataset.n_steps},) (rows) or "
                                  f"({dataset.n_episodes},) (episodes), got {arr.shape}.")
    if not np.isfinite(out).all() or (out < 0).any():
        raise DataValidationError("need must be finite and non-negative.")
    return out
