r"""Estimating restless-arm models from a panel: Dirichlet-smoothed transition counts per group.

Each row of the panel is one decision step of one episode (member): a discrete state code, a
binary action ("treated" this week or not) and a group (or cluster) label. Transitions
``(s, a) -> s'`` are counted per group and smoothed with a symmetric Dirichlet prior:

.. math::

    \hat P_g(s' \mid s, a) = \frac{n_g(s, a, s') + \alpha}{n_g(s, a) + S\alpha},
    \qquad
    \mathrm{sd} = \sqrt{\frac{\hat P (1 - \hat P)}{n_g(s, a) + S\alpha + 1}},

the posterior mean and standard deviation under a ``Dirichlet(alpha)`` prior. Cells with fewer
than ``min_count`` observed transitions are reported with a :class:`DataWarning`: their rows
lean on the prior. :meth:`EstimatedArms.to_domain` turns the estimates into arms to plan with
(optionally drawing every arm's matrices from the posterior, so that plans reflect the
uncertainty).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import (
    DataValidationError,
    DataWarning,
    InvalidParameterError,
    SmallCellWarning,
)
from equicare.privacy import few_members, small_cells_message, suppress_counts
from equicare.rmab._domain import RMABDomain
from equicare.utils import MIN_CELL, PARAM_MESSAGE, RandomState, check_random_state

__all__ = ["EstimatedArms", "estimate_arms"]

Array = NDArray[np.float64]

#: Most levels a state column may have: the transition counts and matrices hold
#: ``n_groups * 2 * S * S`` numbers each and every planned arm ``2 * S * S``.
MAX_STATES = 100
TOO_MANY_STATES = ("Column {column!r} (state) has {n_levels} distinct values; the state must be a "
                   "discrete column with at most {max_states} levels (state codes 0..{top} would "
                   "need {gib:.3g} GiB of transition counts alone): pass a categorical state "
                   "column (a manifest's categorical_states, or --state).")
SMALL_CELLS = ("{n_small} of {n_cells} (group, action, state) cells have fewer than {min_count} "
               "observed transitions ({first}); their transition rows lean on the Dirichlet "
               "prior.")
MISSING_VALUES = ("Column {column!r} ({role}) has {n} missing value(s) (first: row {row}, 0-based "
                  "data row); every row needs {what}.")
_NEEDS = {"episode": "an episode (member) id",
          "state": "a state: drop those rows or give the missing value a level of its own "
                   "(e.g. 'unknown')",
          "group": "a group: drop those rows or label them explicitly (e.g. 'unknown')",
          "time": "a step to order the episode's rows by",
          "reward": "a reward (R(s) is the mean over the rows in state s)",
          "member": "a person id (the member whose episodes these are)"}
#: ``{first}`` of :data:`SMALL_CELLS`: the first sparse cell of a published group (its count is
#: not named), or a note that every sparse cell is in a suppressed group.
SMALL_CELLS_FIRST = "first: group {group!r}, action {action}, state {state!r}"
SMALL_CELLS_HIDDEN = "all in suppressed groups"
#: Name of the type that pools the suppressed groups in :meth:`EstimatedArms.to_dict`.
SUPPRESSED_TYPE = "(suppressed groups)"
#: A reward that is not a finite number (tests match it).
#: A reward or time column with a value that is not a number (text such as "high").
NOT_A_NUMBER = ("Column {column!r} ({role}) must hold numbers; {n} row(s) do not (first: row "
                "{row}, 0-based data row: {value!r}).")
#: A reward or time column of text numbers: read as numbers, as the panel loader reads them.
NUMBERS_AS_TEXT = ("Column {column!r} ({role}) is stored as text; its values are read as numbers "
                   "(store it as numbers to avoid this warning).")
NONFINITE_REWARD = ("Column {column!r} (reward) has NaN or infinite values in {n} row(s) "
                    "(first: row {row}; 0-based data rows); expected finite numbers.")


@dataclass(frozen=True, kw_only=True, eq=False)
class EstimatedArms:
    """Per-group arm models estimated from a panel.

    Attributes
    ----------
    counts : ndarray of shape (n_groups, 2, n_states, n_states)
        Observed transitions ``n_g(s, a, s')``.
    P : ndarray of shape (n_groups, 2, n_states, n_states)
        Posterior mean transition matrices.
    P_sd : ndarray of shape (n_groups, 2, n_states, n_states)
        Posterior standard deviations.
    init : ndarray of shape (n_groups, n_states)
        Smoothed distribution of each group's first observed states.
    R : ndarray of shape (n_states,)
        State rewards.
    n_episodes : ndarray of shape (n_groups,)
        Episodes (members) per group.
    group_names, state_names : tuple of str
    prior : float
        Dirichlet concentration per next state.
    suppressed : tuple of str
        Groups with fewer than :data:`~equicare.utils.MIN_CELL` episodes, and those hidden so
        that one cannot be recovered by difference (:func:`equicare.privacy.suppress_counts`):
        their outcomes are never published.
    """

    counts: Array
    P: Array
    P_sd: Array
    init: Array
    R: Array
    n_episodes: NDArray[np.int64]
    group_names: tuple[str, ...]
    state_names: tuple[str, ...]
    prior: float
    suppressed: tuple[str, ...] = ()

    @property
    def n_states(self) -> int:
        """Number of states."""
        return int(self.P.shape[2])

    def sample_P(self, random_state: RandomState = None, size: int = 1) -> Array:
        """Posterior draws of the matrices, shape (size, n_groups, 2, S, S)."""
        rng = check_random_state(random_state)
        alpha = self.counts + self.prior
        g = rng.gamma(np.broadcast_to(alpha, (size, *alpha.shape)))
        out: Array = g / g.sum(axis=-1, keepdims=True)
        return out

    def to_domain(
        self,
        *,
        n_arms: int | dict[str, int] | None = None,
        horizon: int = 20,
        gamma: float = 1.0,
        sample: bool = False,
        random_state: RandomState = None,
        name: str = "estimated",
    ) -> RMABDomain:
        """Arms to plan with.

        Parameters
        ----------
        n_arms : int, dict or None
            Total arms (split by the groups' shares of episodes, left-overs to the first group;
            a group whose share rounds to no arm gets one, from the largest group), arms per
            group, or ``None`` for one arm per observed episode.
        horizon, gamma : int, float
            Planning horizon and discount.
        sample : bool
            Draw each arm's matrices from the posterior (fresh draws per seed in :func:`plan`)
            instead of using the posterior mean for every arm of a group.
        random_state : int, Generator or None
        name : str
        """
        G = len(self.group_names)
        if n_arms is None:
            sizes = self.n_episodes.astype(np.int64)
        elif isinstance(n_arms, dict):
            unknown = set(n_arms) - set(self.group_names)
            if unknown:
                raise InvalidParameterError(
                    f"n_arms names unknown groups {sorted(unknown)}; groups are "
                                 f"{list(self.group_names)}.")
            sizes = np.array([int(n_arms.get(g, 0)) for g in self.group_names])
        else:
            sizes = _split_arms(int(n_arms), self.n_episodes, self.group_names)
        groups = np.repeat(np.arange(G), sizes)
        names = self.group_names

        def draw(n: int, rng: np.random.Generator) -> RMABDomain:
            if sample:
                draws = self.sample_P(rng, size=groups.size)  # (N, G, 2, S, S)
                P = draws[np.arange(groups.size), groups]
            else:
                P = self.P[groups]
            return RMABDomain(P=P, R=self.R, init=self.init[groups], groups=groups,
                              group_names=names, name=name, horizon=horizon, gamma=gamma,
                              state_names=self.state_names,
                              suppressed_groups=self.suppressed,
                              _redraw=draw if sample else None)

        return draw(groups.size, check_random_state(random_state))

    def hidden_groups(self) -> tuple[str, ...]:
        """Groups whose numbers are never published, in :attr:`group_names` order.

        :attr:`suppressed` together with what :func:`equicare.privacy.suppress_counts` hides in
        :attr:`n_episodes` (the same set for arms from :func:`estimate_arms`; it also covers
        arms built by hand).
        """
        shown = suppress_counts({g: int(k) for g, k in zip(self.group_names, self.n_episodes,
                                                           strict=True)})
        hide = set(self.suppressed) | {g for g, k in shown.items() if k is None}
        return tuple(g for g in self.group_names if g in hide)

    def _type(self, name: str, counts: Array, P: Array, P_sd: Array, init: Array, n: int,
              total: int) -> dict[str, Any]:
        return {"name": name, "group": name, "fraction": n / total, "P": P.tolist(),
                "P_sd": P_sd.tolist(), "counts": counts.astype(int).tolist(),
                "R": self.R.tolist(), "init": init.tolist(), "n_episodes": int(n)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (Contract-4 ``types`` plus uncertainty); small groups hidden.

        One type per published group. The groups of :meth:`hidden_groups` (fewer than
        :data:`~equicare.utils.MIN_CELL` episodes, and those hidden so that one cannot be
        recovered by difference) get no entry of their own: they are pooled into one type
        named :data:`SUPPRESSED_TYPE` (counts summed, the model re-estimated from them), which
        complementary suppression makes hold at least ``MIN_CELL`` episodes, so the fractions
        still sum to 1 and the file stays a Contract-4 domain. A pool under ``MIN_CELL``
        (every group small) is left out. ``suppressed_groups`` names the hidden groups and
        ``min_cell`` the threshold.
        """
        hidden = self.hidden_groups()
        total = int(self.n_episodes.sum())
        S, a = self.n_states, self.prior
        # the smoothed initial distributions give back the first-state counts exactly
        init_counts = self.init * (self.n_episodes[:, None] + S * a) - a
        types = [self._type(g, self.counts[i], self.P[i], self.P_sd[i], self.init[i],
                            int(self.n_episodes[i]), total)
                 for i, g in enumerate(self.group_names) if g not in hidden]
        pool = np.array([g in hidden for g in self.group_names], dtype=bool)
        n_pool = int(self.n_episodes[pool].sum())
        if n_pool >= MIN_CELL:  # the model of the pooled counts, as estimate_arms builds one
            counts = self.counts[pool].sum(axis=0)
            tot = counts.sum(axis=-1, keepdims=True)
            P = (counts + a) / (tot + S * a)
            P_sd = np.sqrt(P * (1 - P) / (tot + S * a + 1))
            init = (np.rint(init_counts[pool].sum(axis=0)) + a) / (n_pool + S * a)
            types.append(self._type(SUPPRESSED_TYPE, counts, P, P_sd, init, n_pool, total))
        return {"name": "estimated", "n_states": self.n_states, "prior": self.prior,
                "state_names": list(self.state_names), "types": types,
                "suppressed_groups": list(hidden), "min_cell": MIN_CELL}


def _column(data: Any, name: Any, role: str) -> NDArray[Any]:
    if data is None:
        return np.asarray(name)
    if not isinstance(name, str):
        return np.asarray(name)
    if name not in data.columns:
        raise DataValidationError(f"Column {name!r} ({role}) is not in the data; columns are "
                                  f"{list(map(str, data.columns))}.")
    return np.asarray(data[name].to_numpy())


NEXT_NOT_A_STATE = ("Column {column!r} (next_state): row {row} (0-based data row) has {value!r}; "
                    "expected {expected}.")


def _missing(values: NDArray[Any]) -> NDArray[np.bool_]:
    from equicare.data._labels import missing_labels

    return missing_labels(values)


def _name(name: Any, role: str) -> str:
    return name if isinstance(name, str) else role


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _numbers(values: NDArray[Any], name: Any, role: str) -> NDArray[np.float64]:
    """A reward or time column as float64: numbers, booleans, dates (time: ns), or text numbers.

    Text numbers are read as the panel loader reads them
    (:func:`equicare.data.validate.text_numbers`, with a :class:`DataWarning`); other text was
    an internal ``ValueError`` ("could not convert string to float"). Missing values are
    refused before (:func:`_refuse_missing`).

    Raises
    ------
    DataValidationError
        A value is not a number (:data:`NOT_A_NUMBER`).
    """
    import pandas as pd

    from equicare.data.validate import text_numbers

    col = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(col.dtype) and role == "time":
        return np.asarray(col.to_numpy(dtype="datetime64[ns]").astype(np.int64), np.float64)
    if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        return np.asarray(col.to_numpy(dtype=np.float64))
    num, bad = text_numbers(col)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataValidationError(NOT_A_NUMBER.format(
            column=_name(name, role), role=role, n=int(bad.sum()), row=row,
            value=str(col.iloc[row])))
    warnings.warn(NUMBERS_AS_TEXT.format(column=_name(name, role), role=role), DataWarning,
                  stacklevel=3)
    return np.asarray(num.to_numpy(dtype=np.float64))


def _refuse_missing(values: NDArray[Any], name: Any, role: str) -> None:
    """Raise :class:`DataValidationError` naming the column and first row of a missing value.

    A missing episode id, state, group, time or reward used to become a level ``"nan"`` of its
    own (one pooled episode, state or group) or an error about a group ``'nan'`` with no arms.
    """
    miss = _missing(values)
    if miss.any():
        raise DataValidationError(MISSING_VALUES.format(
            column=name if isinstance(name, str) else role, role=role, n=int(miss.sum()),
            row=int(np.argmax(miss)), what=_NEEDS[role]))


def _check_episode_rows(order: NDArray[np.int64], same_next: NDArray[np.bool_],
                        ep: NDArray[Any], groups: NDArray[Any], tkey: NDArray[np.float64] | None,
                        group_name: str, time_name: str) -> None:
    """Refuse two rows of one episode at the same time and a group that changes in an episode.

    ``order`` sorts the rows by episode then time; ``same_next[k]``: row ``order[k + 1]`` is in
    the same episode. Rows are named 0-based, as in the other messages.
    """
    a, b = order[:-1], order[1:]
    inner = same_next[:-1]
    if tkey is not None:
        dup = inner & (tkey[a] == tkey[b])
        if dup.any():
            k = int(np.argmax(dup))
            raise DataValidationError(
                f"Episode {_py(ep[a[k]])!r} has two rows at {time_name} = {tkey[a[k]]:g}: "
                f"rows {int(min(a[k], b[k]))} and {int(max(a[k], b[k]))} (0-based data rows). "
                "One row per member and step is expected; remove or merge the duplicates.")
    change = inner & (groups[a].astype(str) != groups[b].astype(str))
    if change.any():
        k = int(np.argmax(change))
        raise DataValidationError(
            f"Episode {_py(ep[a[k]])!r} changes {group_name} from {_py(groups[a[k]])!r} to "
            f"{_py(groups[b[k]])!r} at row {int(b[k])} (0-based data row). A member's group "
            "decides the arm type whose transitions the member's rows estimate, so it must be "
            "constant within an episode; start a new episode at the change if it is real.")


def _time_gaps(order: NDArray[np.int64], same_next: NDArray[np.bool_],
               tkey: NDArray[np.float64], time_name: str) -> NDArray[np.bool_]:
    """Consecutive rows of an episode more than one step apart (warned), in sorted positions.

    The step is the most common difference of ``time`` between consecutive rows of an episode
    (1 for weeks numbered 0, 1, 2; 7 for days 0, 7, 14). A longer difference (a missing week)
    is a multi-step transition, which a one-step transition matrix must not count.
    """
    diff = np.r_[tkey[order][1:] - tkey[order][:-1], 0.0]
    inner = same_next & (diff > 0)
    if not inner.any():
        return np.zeros_like(same_next)
    vals, cnt = np.unique(diff[inner], return_counts=True)
    step = float(vals[np.argmax(cnt)])
    gap = inner & (diff > step * (1 + 1e-9))
    if gap.any():
        warnings.warn(
            f"{int(gap.sum())} of {int(same_next.sum())} consecutive rows of an episode are more "
            f"than one step ({time_name} + {step:g}) apart: a missing {time_name} is a "
            "multi-step transition, so those pairs are not counted as transitions.",
            DataWarning, stacklevel=3)
    return np.asarray(gap)


def estimate_arms(
    data: Any = None,
    *,
    episode: Any,
    state: Any,
    action: Any,
    group: Any,
    next_state: Any = None,
    time: Any = None,
    reward: Any = None,
    state_rewards: Any = None,
    n_states: int | None = None,
    prior: float = 1.0,
    min_count: int = MIN_CELL,
    max_states: int = MAX_STATES,
    member: Any = None,
) -> EstimatedArms:
    """Estimate per-group transition matrices of a binary-action program from a panel.

    Parameters
    ----------
    data : pandas.DataFrame, optional
        The panel; the other arguments are then column names. Without ``data`` they are arrays
        of shape (n_rows,).
    episode : str or array-like
        Episode (member) id of each row.
    state : str or array-like
        Discrete state: integer codes ``0..S-1`` or labels (sorted to codes).
    action : str or array-like
        1 when the member was treated at that step, else 0.
    group : str or array-like
        Group (or cluster) label of each row.
    next_state : str or array-like, optional
        State at the next step; by default the state of the episode's next row (rows sorted by
        ``time`` within an episode; the last row of each episode then has no transition). A
        missing value (the member left) means no observed transition; a value that is not a
        state is refused naming its row.
    time : str or array-like, optional
        Step index used for the sorting (default: row order).
    reward : str or array-like, optional
        Reward of each row; ``R(s)`` is its mean over rows in state ``s``.
    state_rewards : array-like of shape (n_states,), optional
        Rewards of the states (instead of ``reward``).
    n_states : int, optional
        Number of states when codes are integers (default ``max code + 1``).
    prior : float
        Dirichlet concentration per next state (> 0).
    min_count : int
        Cells ``(group, action, state)`` with fewer transitions are warned about.
    max_states : int
        Most states allowed (default :data:`MAX_STATES`); a continuous column is refused before
        any count is allocated.
    member : str or array-like, optional
        Person id of each row, when people re-enrol (several episodes each): a group held by
        fewer than ``MIN_CELL`` people is suppressed even when its episodes are more (the
        manifest's ``member``). Without it every episode counts as one person.

    Returns
    -------
    EstimatedArms

    Raises
    ------
    DataValidationError
        When the state has more than ``max_states`` levels (codes), actions are not 0/1, a
        column is missing, a row has no episode, state, group or time, a reward is not finite,
        or two rows of an episode share a time step.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from equicare.rmab import estimate_arms
    >>> rng = np.random.default_rng(0)
    >>> df = pd.DataFrame({"id": np.repeat(np.arange(40), 3), "week": np.tile([0, 1, 2], 40),
    ...                    "s": rng.integers(0, 2, 120), "treated": rng.integers(0, 2, 120),
    ...                    "g": np.repeat(["a", "b"], 60)})
    >>> est = estimate_arms(df, episode="id", time="week", state="s", action="treated",
    ...                     group="g", state_rewards=[0.0, 1.0], min_count=0)
    >>> est.P.shape, est.n_episodes.tolist(), int(est.counts.sum())
    ((2, 2, 2, 2), [20, 20], 80)
    """
    if not (isinstance(prior, float | int) and prior > 0):
        raise InvalidParameterError(PARAM_MESSAGE.format(name="prior", owner="estimate_arms",
                                              expected="a float > 0", got=prior))
    ep = _column(data, episode, "episode")
    st_raw = _column(data, state, "state")
    ac_raw = _column(data, action, "action")
    gr_raw = _column(data, group, "group")
    n = ep.shape[0]
    for arr, role in ((st_raw, "state"), (ac_raw, "action"), (gr_raw, "group")):
        if arr.shape != (n,):
            raise DataValidationError(f"The {role} values must have one entry per row ({n}); "
                                      f"got shape {arr.shape}.")
    if n == 0:
        raise DataValidationError("The panel has no rows.")
    for arr, name, role in ((ep, episode, "episode"), (st_raw, state, "state"),
                            (gr_raw, group, "group")):
        _refuse_missing(arr, name, role)
    # actions must be 0/1
    try:
        ac = ac_raw.astype(np.float64)
    except (TypeError, ValueError):
        ac = np.full(n, np.nan)
    bad = ~np.isin(ac, (0.0, 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        name = action if isinstance(action, str) else "action"
        value = ac_raw[i].item() if isinstance(ac_raw[i], np.generic) else ac_raw[i]
        raise DataValidationError(f"Column {name!r} must hold 0/1 (treated or not); row {i} "
                                  f"(0-based data row) has {value!r}.")
    ac_i = ac.astype(np.int64)
    # state codes
    if st_raw.dtype.kind in "iu" or (st_raw.dtype.kind == "f" and np.all(st_raw == np.round(
            st_raw))):
        codes = st_raw.astype(np.int64)
        if (codes < 0).any():
            i = int(np.argmax(codes < 0))
            raise DataValidationError(f"State codes must be >= 0; row {i} has {codes[i]}.")
        S = int(codes.max()) + 1 if n_states is None else int(n_states)
        if codes.max() >= S:
            raise DataValidationError(f"State code {int(codes.max())} is >= n_states={S}.")
        state_names = tuple(str(s) for s in range(S))
        nxt_codes = None
        if next_state is not None:
            nraw = _column(data, next_state, "next_state")
            gone = _missing(nraw)
            try:
                nxt_f = np.where(gone, 0, nraw).astype(np.float64)
            except (TypeError, ValueError):
                nxt_f = np.full(n, np.nan)
            wrong = ~gone & ~((nxt_f >= 0) & (nxt_f < S) & (nxt_f == np.round(nxt_f)))
            if wrong.any():
                i = int(np.argmax(wrong))
                raise DataValidationError(NEXT_NOT_A_STATE.format(
                    column=_name(next_state, "next_state"), row=i, value=_py(nraw[i]),
                    expected=f"a state code 0..{S - 1} (or missing: no transition)"))
            nxt_codes = np.where(gone, -1, nxt_f).astype(np.int64)
    else:
        labels, codes = np.unique(st_raw.astype(str), return_inverse=True)
        codes = codes.ravel().astype(np.int64)
        S = labels.size
        state_names = tuple(labels.tolist())
        nxt_codes = None
        if next_state is not None:
            nraw = _column(data, next_state, "next_state")
            gone = _missing(nraw)
            ntxt = nraw.astype(str)
            wrong = ~gone & ~np.isin(ntxt, labels)
            if wrong.any():
                i = int(np.argmax(wrong))
                raise DataValidationError(NEXT_NOT_A_STATE.format(
                    column=_name(next_state, "next_state"), row=i, value=_py(nraw[i]),
                    expected="one of the states of the state column (or missing: no "
                             "transition)"))
            pos = np.clip(np.searchsorted(labels, ntxt), 0, S - 1)  # labels are sorted
            nxt_codes = np.where(gone, -1, pos).astype(np.int64)
    gnames, gcodes = np.unique(gr_raw.astype(str), return_inverse=True)
    gcodes = gcodes.ravel().astype(np.int64)
    G = gnames.size
    if S > max_states:
        n_levels = int(np.unique(codes).size)
        raise DataValidationError(TOO_MANY_STATES.format(
            column=state if isinstance(state, str) else "state", n_levels=n_levels,
            max_states=int(max_states), top=S - 1, gib=G * 2 * S * S * 8 / 2**30))
    # order rows within episodes
    ep_codes = np.unique(ep.astype(str), return_inverse=True)[1].ravel()
    tkey: NDArray[np.float64]
    if time is None:
        tkey = np.arange(n, dtype=np.float64)
    else:
        t_raw = _column(data, time, "time")
        _refuse_missing(t_raw, time, "time")
        tkey = _numbers(t_raw, time, "time")
    order = np.lexsort((tkey, ep_codes))
    same_next = np.r_[ep_codes[order][1:] == ep_codes[order][:-1], False]
    _check_episode_rows(order, same_next, ep, gr_raw, tkey if time is not None else None,
                        _name(group, "group"), _name(time, "time"))
    if time is not None and nxt_codes is None:  # a gap in time is no one-step transition
        same_next &= ~_time_gaps(order, same_next, tkey, _name(time, "time"))
    if nxt_codes is None:
        src = order[same_next]
        dst_state = codes[order][1:][same_next[:-1]]
    else:  # a missing next state (the member left) is no observed transition
        src = np.flatnonzero(nxt_codes >= 0)
        dst_state = nxt_codes[src]
    flat = ((gcodes[src] * 2 + ac_i[src]) * S + codes[src]) * S + dst_state
    counts = np.bincount(flat, minlength=G * 2 * S * S).reshape(G, 2, S, S).astype(np.float64)
    tot = counts.sum(axis=3, keepdims=True)
    P = (counts + prior) / (tot + S * prior)
    P_sd = np.sqrt(P * (1 - P) / (tot + S * prior + 1))
    first = order[np.r_[True, ep_codes[order][1:] != ep_codes[order][:-1]]]
    init_counts = np.zeros((G, S))
    np.add.at(init_counts, (gcodes[first], codes[first]), 1.0)
    init = (init_counts + prior) / (init_counts.sum(axis=1, keepdims=True) + S * prior)
    n_episodes = np.bincount(gcodes[first], minlength=G).astype(np.int64)
    few: set[str] = set()
    if member is not None:
        mem = _column(data, member, "member")
        if mem.shape != (n,):
            raise DataValidationError(f"The member values must have one entry per row ({n}); "
                                      f"got shape {mem.shape}.")
        _refuse_missing(mem, member, "member")
        few = few_members(gnames[gcodes[first]], mem[first])
    shown = suppress_counts({str(g): int(k) for g, k in zip(gnames, n_episodes, strict=True)},
                            withheld=few)
    hidden = tuple(g for g, k in shown.items() if k is None)
    if hidden:
        warnings.warn(small_cells_message(list(hidden)), SmallCellWarning, stacklevel=2)
    cell_n = tot[..., 0]
    small = cell_n < min_count
    if small.any():
        pub = ~np.isin(gnames.astype(str), np.array(hidden, dtype=str))
        visible = np.argwhere(small & pub[:, None, None])
        if visible.size:
            g, a, s = visible[0]
            where = SMALL_CELLS_FIRST.format(group=str(gnames[g]), action=int(a),
                                             state=state_names[s])
        else:
            where = SMALL_CELLS_HIDDEN
        warnings.warn(SMALL_CELLS.format(n_small=int(small.sum()), n_cells=small.size,
                                         min_count=min_count, first=where),
                      DataWarning, stacklevel=2)
    if state_rewards is not None:
        R = np.asarray(state_rewards, dtype=np.float64)
        if R.shape != (S,):
            raise DataValidationError(f"state_rewards must have one value per state ({S}); got "
                                      f"shape {R.shape}.")
    elif reward is not None:
        rw_raw = _column(data, reward, "reward")
        _refuse_missing(rw_raw, reward, "reward")
        rw = _numbers(rw_raw, reward, "reward")
        bad_rw = ~np.isfinite(rw)
        if bad_rw.any():
            raise DataValidationError(NONFINITE_REWARD.format(
                column=reward if isinstance(reward, str) else "reward", n=int(bad_rw.sum()),
                row=int(np.argmax(bad_rw))))
        num = np.bincount(codes, weights=rw, minlength=S)
        den = np.bincount(codes, minlength=S)
        if (den == 0).any():
            s = int(np.argmin(den))
            raise DataValidationError(f"State {state_names[s]!r} never occurs, so its reward "
                                      "cannot be estimated; pass state_rewards.")
        R = num / den
    else:
        raise InvalidParameterError(
            "estimate_arms needs the rewards of the states: pass reward= (a column "
                         "or array) or state_rewards= (one value per state).")
    return EstimatedArms(counts=counts, P=P, P_sd=P_sd, init=init, R=R, n_episodes=n_episodes,
                         group_names=tuple(str(g) for g in gnames), state_names=state_names,
                         prior=float(prior), suppressed=hidden)


def _split_arms(n_arms: int, n_episodes: NDArray[Any], names: tuple[str, ...]
                ) -> NDArray[np.int64]:
    """``n_arms`` split by the groups' shares of episodes, every group with at least one arm.

    The floor of each share, left-overs to the first group; a group whose share rounds to 0
    (a small group among many arms, often one whose numbers are suppressed) gets one arm,
    taken from the group with the most. Planning needs an arm of every group; results of a
    suppressed group stay hidden.
    """
    if n_arms < len(names):
        raise InvalidParameterError(
            f"n_arms={n_arms} is fewer than the panel's {len(names)} groups; every group needs "
            f"an arm: use at least {len(names)} arms.")
    share = np.asarray(n_episodes, dtype=np.float64) / float(np.sum(n_episodes))
    sizes = np.floor(n_arms * share).astype(np.int64)
    sizes[0] += n_arms - int(sizes.sum())
    for g in np.flatnonzero(sizes == 0):  # at most len(names) - 1 moves
        sizes[int(np.argmax(sizes))] -= 1
        sizes[g] = 1
    return sizes
