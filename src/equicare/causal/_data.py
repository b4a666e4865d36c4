"""Transitions for mediation analysis: plain arrays, the dataset adapter and policy resolution."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data.validate import _lead, _led_by
from equicare.exceptions import DataValidationError, PolicyError

__all__ = ["MediationData", "PolicyProbs", "as_mediation_data", "binarize_actions",
           "collapse_probs", "from_dataset", "next_state_weights", "require_mediators",
           "resolve_policy", "transition_rows"]

#: Error templates (tests match them exactly).
NO_MEDIATOR_MESSAGE = ("The dataset has no mediator columns; add `mediators = [...]` to the "
                       "[dataset] table of the manifest (Contract 1).")
#: The same, for a dataset read with a manifest file (names the file).
NO_MEDIATOR_FILE_MESSAGE = ("{manifest}: the dataset has no mediator columns; add `mediators = "
                            "[...]` (the columns measured after the action, before the reward) "
                            "to the [dataset] table of this manifest (Contract 1).")
CONSTANT_MEDIATOR_MESSAGE = ("{source}mediator column {name!r} is constant (every transition row "
                             "is {value!r}); a mediator must vary to carry an effect.")
FEW_EPISODES_MESSAGE = "Mediation analysis needs at least 2 episodes; got {n}."
FEW_TRANSITION_EPISODES_MESSAGE = (
    "{source}mediation analysis needs at least 2 episodes with a transition (2 or more rows); "
    "got {n} of {total} episodes (an episode's last row has no next state unless it is "
    "terminal).")
#: A binary action that every transition takes the same way (an action set nobody logged).
ONE_ACTION_MESSAGE = (
    "{source}every transition logs action {a} ({n:,} rows followed by a row of the same "
    "episode) and none logs action {b}: mediation estimates what each of the two actions does "
    "to the mediator and the reward from the logged transitions, so both must be logged (an "
    "action set collapsed by --action or binarize_actions: one that some rows take and others "
    "do not).")
#: Every non-zero reward sits on a censored last row (an outcome at the end of a stay).
END_REWARD_MESSAGE = (
    "{source}every non-zero reward of the panel ({k:,} rows) is on an episode's last row that "
    "is not terminal. Dynamic mediation reads transitions (S, A, M, R, S'); a censored last "
    "row (the observation window closed, the process went on) has no next state, so it leaves "
    "those rows out and every effect would be 0 with a standard error of 0. If the stays truly "
    "end there (death, discharge: an outcome at the end of a stay), mark those rows in the "
    "manifest's `terminal` column: a terminal row is a transition to a new stay's first state. "
    "Otherwise it needs rewards on rows followed by another row of the same episode.")
#: Most of the reward sits on censored last rows: warned, the analysis runs.
END_REWARD_WARNING = (
    "{source}{pct:.0f}% of the panel's total |reward| is on episodes' last rows that are not "
    "terminal ({share:.0f}% of the rows), which have no next state: dynamic mediation leaves "
    "them out, so its effects miss that part of the outcome (mark true ends in the manifest's "
    "`terminal` column).")
#: Dense copies of the ``(transitions, features)`` state matrix a mediation holds at its peak:
#: the states and next states (float64), built row by row from the codes, plus the boolean
#: temporaries of the basis. The basis, models and designs keep one-hot columns sparse
#: (:mod:`equicare.causal._basis`); the dense LSTD system is checked separately
#: (:class:`~equicare.causal._dynamic.TooManyFeaturesError`). Measured: 842 MB traced for 47,880
#: transitions x 701 features (a 700-level Garnet state, 2 x 268 MB of states); before the
#: sparse basis, 5.2 GB (about 20 copies).
DENSE_COPIES = 3
#: The dense features would not fit in memory (checked before they are built).
DENSE_MEMORY_MESSAGE = (
    "{source}dynamic mediation works on dense state features: {n:,} transitions x {d:,} "
    "features (the numeric states plus one column per level of {cats}) need about "
    "{need_gb:.1f} GB of memory and {avail_gb:.1f} GB is available. Use coarser codes (fewer "
    "levels) or leave the widest categorical columns out of the manifest's states for this "
    "analysis.")
#: Share of the total |reward| on last rows above which :data:`END_REWARD_WARNING` is emitted.
END_REWARD_WARN_SHARE = 0.5
SHAPE_MESSAGE = "{name} must have {expected}; got shape {shape}."
NONFINITE_MESSAGE = "{name} has {count} non-finite values (first row: {row})."


@dataclass(frozen=True, eq=False)
class PolicyProbs:
    """Action probabilities of a policy at each transition's state and next state.

    Use this for policies known only row by row (e.g. a Contract-2 policy file).

    Parameters
    ----------
    probs : ndarray of shape (n, n_actions)
        ``pi(a | S_i)``.
    next_probs : ndarray of shape (n, n_actions)
        ``pi(a | S'_i)``.
    name : str
    deferred, next_deferred : ndarray of shape (n,), bool, optional
        Transitions whose state (next state) the policy leaves to current practice, as
        exception rules do (:mod:`equicare.policy._deployed`); ``probs`` / ``next_probs`` hold
        the stored estimate of practice there. With ``usual_care="deployed"``
        (:class:`~equicare.causal.DynamicMediation`'s default) the policy acts as practice
        does there. None (the default): the policy decides at every state.
    """

    probs: NDArray[np.float64]
    next_probs: NDArray[np.float64]
    name: str = "policy"
    deferred: NDArray[np.bool_] | None = None
    next_deferred: NDArray[np.bool_] | None = None


@dataclass(frozen=True, eq=False)
class MediationData:
    """Transitions ``(S, A, M, R, S')`` with the episode of each row.

    Parameters
    ----------
    states : ndarray of shape (n, d)
    actions : ndarray of shape (n,), int64
        Codes ``0 .. n_actions - 1``.
    mediators : ndarray of shape (n, m)
    rewards : ndarray of shape (n,)
    next_states : ndarray of shape (n, d)
    episode_index : ndarray of shape (n,), int64
        Episode of each row, ``0 .. n_episodes - 1``.
    n_actions : int
    behavior_prob : ndarray of shape (n,), optional
        Known probability of the logged action under the behaviour policy.
    mediator_names : tuple of str
    source : TrajectoryDataset, optional
        Dataset the rows come from (to evaluate ``equicare.policy`` objects).
    rows, next_rows : ndarray of shape (n,), optional
        Row of each transition's state and next state in ``source`` (a censored last row's
        ``next_rows`` entry is the row itself, never read: its weight in ``next_weight`` is 0).
    next_weight : ndarray of shape (n,), optional
        Weight of each row's next-state terms (:func:`next_state_weights`): 0 on a censored
        last row kept for its known step (no next state), the inverse probability of not
        being censored on the rows that go on, 1 on terminal rows. None: every row has its
        next state (weight 1).
    """

    states: NDArray[np.float64]
    actions: NDArray[np.int64]
    mediators: NDArray[np.float64]
    rewards: NDArray[np.float64]
    next_states: NDArray[np.float64]
    episode_index: NDArray[np.int64]
    n_actions: int
    behavior_prob: NDArray[np.float64] | None = None
    mediator_names: tuple[str, ...] = ()
    source: Any = None
    rows: NDArray[np.int64] | None = None
    next_rows: NDArray[np.int64] | None = None
    next_weight: NDArray[np.float64] | None = None

    @property
    def n_steps(self) -> int:
        """Number of transitions."""
        return int(self.actions.shape[0])

    @property
    def n_renewed(self) -> int:
        """Transitions from a terminal row to a new stay's first state (:func:`transition_rows`).

        0 without a source dataset (transitions given as arrays).
        """
        ends = self.stay_ends
        return 0 if ends is None else int(ends.sum())

    @property
    def stay_ends(self) -> NDArray[np.float64] | None:
        """1.0 on the transitions that end a stay (a terminal row), else 0.0; shape ``(n,)``.

        The reward of the renewed process's end rate (:mod:`equicare.causal._stay`). A
        censored last row (kept when the panel has terminal rows, :func:`transition_rows`) is
        a step that did not end its stay: 0. None without a source dataset.
        """
        if self.source is None or self.rows is None:
            return None
        terminal = getattr(self.source, "terminals", None)
        if terminal is None:
            return np.zeros(self.rows.size)
        return np.asarray(terminal, dtype=bool)[self.rows].astype(np.float64)

    @property
    def n_censored(self) -> int:
        """Censored last rows kept as steps without a next state (``next_weight == 0``)."""
        return 0 if self.next_weight is None else int((self.next_weight == 0).sum())

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return int(self.episode_index.max()) + 1

    @property
    def episode_lengths(self) -> NDArray[np.int64]:
        """Transitions per episode, shape ``(n_episodes,)``."""
        return np.bincount(self.episode_index, minlength=self.n_episodes).astype(np.int64)

    @classmethod
    def from_arrays(cls, states: Any, actions: Any, mediators: Any, rewards: Any,
                    next_states: Any, episode_index: Any, *, n_actions: int | None = None,
                    behavior_prob: Any = None, mediator_names: tuple[str, ...] = (),
                    panel: str | None = None) -> MediationData:
        """Check and convert plain arrays (lists, NumPy, pandas or polars columns).

        ``panel`` (the file the rows were read from, if any) is named first in the errors.

        Raises
        ------
        DataValidationError
            Shapes disagree, non-finite values, negative or non-integer actions, a constant
            mediator column, or fewer than 2 episodes.
        """
        def arr(x: Any, dtype: Any) -> NDArray[Any]:
            if hasattr(x, "to_numpy"):
                x = x.to_numpy()
            return np.asarray(x, dtype=dtype)

        s = arr(states, np.float64)
        sn = arr(next_states, np.float64)
        if s.ndim == 1:
            s, sn = s[:, None], sn.reshape(-1, 1)
        m = arr(mediators, np.float64)
        if m.ndim == 1:
            m = m[:, None]
        r = arr(rewards, np.float64).reshape(-1)
        a_raw = arr(actions, np.float64).reshape(-1)
        ep_raw = np.asarray(episode_index.to_numpy() if hasattr(episode_index, "to_numpy")
                            else episode_index).reshape(-1)
        n = a_raw.shape[0]
        for name, x, expected in (("states", s, f"shape ({n}, d)"),
                                  ("next_states", sn, f"shape {s.shape}"),
                                  ("mediators", m, f"shape ({n}, m)"),
                                  ("rewards", r, f"shape ({n},)"),
                                  ("episode_index", ep_raw, f"shape ({n},)")):
            ok = x.shape[0] == n and (name != "next_states" or x.shape == s.shape) and x.ndim <= 2
            if not ok:
                raise DataValidationError(SHAPE_MESSAGE.format(name=name, expected=expected,
                                                               shape=x.shape))
        if n == 0:
            raise DataValidationError(FEW_EPISODES_MESSAGE.format(n=0))
        for name, x in (("states", s), ("next_states", sn), ("mediators", m), ("rewards", r),
                        ("actions", a_raw)):
            bad = ~np.isfinite(x.reshape(n, -1)).all(axis=1)
            if bad.any():
                raise DataValidationError(NONFINITE_MESSAGE.format(
                    name=name, count=int(bad.sum()), row=int(np.flatnonzero(bad)[0])))
        if (a_raw < 0).any() or (a_raw != np.round(a_raw)).any():
            row = int(np.flatnonzero((a_raw < 0) | (a_raw != np.round(a_raw)))[0])
            raise DataValidationError(f"actions must be integer codes >= 0; row {row} is "
                                      f"{a_raw[row]!r}.")
        a = a_raw.astype(np.int64)
        n_act = int(a.max()) + 1 if n_actions is None else int(n_actions)
        if a.max() >= n_act:
            raise DataValidationError(f"actions must be < n_actions={n_act}; got {int(a.max())}.")
        names = tuple(mediator_names) or tuple(f"m{j}" for j in range(m.shape[1]))
        for j in range(m.shape[1]):
            if n and np.all(m[:, j] == m[0, j]):
                raise DataValidationError(_led_by(panel, CONSTANT_MEDIATOR_MESSAGE.format(
                    source=_lead(panel), name=names[j], value=float(m[0, j]))))
        _, ep = np.unique(ep_raw, return_inverse=True)
        ep = ep.astype(np.int64).reshape(-1)
        if n == 0 or ep.max() + 1 < 2:
            raise DataValidationError(FEW_EPISODES_MESSAGE.format(n=0 if n == 0 else 1))
        bp = None
        if behavior_prob is not None:
            bp = arr(behavior_prob, np.float64).reshape(-1)
            if bp.shape != (n,) or not np.all((bp > 0) & (bp <= 1)):
                raise DataValidationError(f"behavior_prob must have shape ({n},) with values in "
                                          "(0, 1].")
        return cls(states=s, actions=a, mediators=m, rewards=r, next_states=sn,
                   episode_index=ep, n_actions=n_act, behavior_prob=bp, mediator_names=names)


def from_dataset(ds: Any, check: Callable[[Any, NDArray[np.int64], NDArray[np.int64]], None]
                 | None = None) -> MediationData:
    """Transitions of a :class:`equicare.data.TrajectoryDataset` (thin adapter).

    Every row that has a next row in its episode (``ds.next_index >= 0``) is a transition
    ``(S_t, A_t, M_t, R_t, S_{t+1})``, and so is a terminal row, whose next state is the next
    stay's first state (:func:`transition_rows`); a censored last row has no next state and is
    dropped. States are ``ds.features()`` (numeric plus one-hot categorical) when available.

    Parameters
    ----------
    ds : TrajectoryDataset
        Reads ``states`` / ``features()``, ``actions``, ``rewards``, ``mediators``,
        ``mediator_names``, ``episode_index``, ``next_index``, ``n_actions`` and, when present,
        ``terminals``, ``episode_offsets`` and ``behavior_prob``.
    check : callable, optional
        ``check(ds, rows, next_rows)``, called before the transitions' states are built (e.g.
        :meth:`~equicare.causal.DynamicMediation.check_transitions`), with the rows of their
        states and next states.

    Returns
    -------
    MediationData

    Raises
    ------
    DataValidationError
        No mediator columns, a constant mediator column, fewer than 2 episodes with a transition.
    """
    require_mediators(ds)
    rows, next_rows = transition_rows(ds)
    ep_index = np.asarray(ds.episode_index)
    with_transition = int(np.unique(ep_index[rows]).size)
    if with_transition < 2:
        raise DataValidationError(_led_by(_panel(ds), FEW_TRANSITION_EPISODES_MESSAGE.format(
            source=_lead(_panel(ds)), n=with_transition, total=int(np.unique(ep_index).size))))
    _check_end_rewards(ds, rows)
    _check_both_actions(ds, rows)
    _check_dense_memory(ds, rows.size)
    if check is not None:
        check(ds, rows, next_rows)
    bp = getattr(ds, "behavior_prob", None)
    md = MediationData.from_arrays(
        feature_rows(ds, rows), np.asarray(ds.actions)[rows], np.asarray(ds.mediators)[rows],
        np.asarray(ds.rewards)[rows], feature_rows(ds, next_rows), ep_index[rows],
        n_actions=int(getattr(ds, "n_actions", int(np.max(ds.actions)) + 1)),
        behavior_prob=None if bp is None else np.asarray(bp)[rows],
        mediator_names=tuple(getattr(ds, "mediator_names", ()) or ()), panel=_panel(ds))
    return MediationData(**{**md.__dict__, "source": ds, "rows": rows, "next_rows": next_rows,
                            "next_weight": next_state_weights(ds, rows)})


def transition_rows(ds: Any) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The rows that are transitions (or censored steps) and the rows of their next states.

    A row followed by a row of its episode (``ds.next_index >= 0``) goes to that row. A
    terminal row (``ds.terminals``: the stay truly ends, e.g. death or discharge) goes to the
    first row of the next episode in the panel (the last episode's to the first's): the
    process restarts at a new stay's first state, a draw from the first states' law independent
    of the ending stay. The long-run average reward of this renewed process is the expected
    reward of a stay divided by its expected length (renewal-reward), and its Q-functions and
    state density ratios are those of an ordinary average-reward MDP, so the estimators apply
    unchanged.

    A censored last row (not terminal: the window closed, the stay went on) has no next state.
    Without terminal rows it is left out: which rows are last depends on the window only, so
    the rest are an unbiased sample of transitions. With terminal rows it is kept, its next
    row being itself (never read: :func:`next_state_weights` gives it weight 0): it is a
    step that did not end its stay, with its reward, action and mediator. Leaving it out keeps
    the ends of the stays closed at the window's edge and drops their non-ends, so the end
    rates came out too high (by 5 % on a panel with 15 % of its stays censored) and the
    outcomes on terminal rows too heavy (docs/mediation.md "Censored stays").

    Returns
    -------
    rows, next_rows : ndarray of int64
    """
    nxt = np.asarray(ds.next_index, dtype=np.int64)
    terminal = np.asarray(getattr(ds, "terminals", np.zeros(nxt.size, dtype=bool)), dtype=bool)
    keep = (nxt >= 0) | terminal if not terminal.any() else np.ones(nxt.size, dtype=bool)
    rows = np.flatnonzero(keep).astype(np.int64)
    next_rows = nxt[rows].copy()
    ends = (next_rows < 0) & terminal[rows]
    if ends.any():
        offsets = np.asarray(ds.episode_offsets, dtype=np.int64)
        ep = np.asarray(ds.episode_index, dtype=np.int64)[rows[ends]]
        next_rows[ends] = offsets[:-1][(ep + 1) % (offsets.size - 1)]
    censored = next_rows < 0
    next_rows[censored] = rows[censored]
    return rows, next_rows


#: Fewest uncensored non-ending rows a step of the censoring hazard rests on: later steps are
#: pooled into one (:func:`next_state_weights`).
CENSORING_POOL_MIN = 20


def next_state_weights(ds: Any, rows: NDArray[np.int64]) -> NDArray[np.float64] | None:
    r"""Inverse-probability-of-censoring weights of the next-state terms of ``rows``.

    A step of a stay at position ``t`` (its row within the episode) that does not end the stay
    has its next state observed unless the window closes right after it, which happens with
    the censoring hazard ``h(t)``, estimated as the share of censored last rows among the
    non-terminal rows at ``t`` (steps with fewer than :data:`CENSORING_POOL_MIN` uncensored
    non-ending rows at or after them are pooled with the later ones). The weights are

    .. math::

        c_i = \begin{cases} 1 & \text{terminal row (its next state is a new stay's)}\\
        0 & \text{censored last row (no next state)}\\
        1 / (1 - \hat h(t_i)) & \text{otherwise,} \end{cases}

    so that among the rows that do not end their stay, the next states seen stand for those
    of the censored rows too: every estimating equation's next-state term is unbiased when the
    window's close does not depend on the stay's course (administrative censoring: enrolment
    and disenrolment at calendar weeks). The other terms of a censored row (its reward, action,
    mediator, and that its stay did not end) are observed.

    Parameters
    ----------
    ds : TrajectoryDataset
    rows : ndarray of shape (n,)
        The rows of :func:`transition_rows`.

    Returns
    -------
    ndarray of shape (n,) or None
        None when no censored row is among ``rows`` (every weight would be 1).
    """
    all_next = np.asarray(ds.next_index, dtype=np.int64)
    nxt = all_next[rows]
    terminal = np.asarray(getattr(ds, "terminals", np.zeros(all_next.size, dtype=bool)),
                          dtype=bool)[rows]
    censored = (nxt < 0) & ~terminal
    if not censored.any():
        return None
    goes_on = (nxt >= 0) & ~terminal
    offsets = np.asarray(ds.episode_offsets, dtype=np.int64)
    step = rows - offsets[np.asarray(ds.episode_index, dtype=np.int64)[rows]]
    seen = np.bincount(step[goes_on], minlength=int(step.max()) + 1)
    after = np.cumsum(seen[::-1])[::-1]              # uncensored non-ending rows at >= t
    cap = int(np.flatnonzero(after >= CENSORING_POOL_MIN)[-1]) if (
        after >= CENSORING_POOL_MIN).any() else 0
    step = np.minimum(step, cap)
    at_risk = np.bincount(step[~terminal], minlength=cap + 1).astype(np.float64)
    kept = np.bincount(step[goes_on], minlength=cap + 1).astype(np.float64)
    inv = np.divide(at_risk, kept, out=np.zeros_like(at_risk), where=kept > 0)
    return np.where(terminal, 1.0, np.where(censored, 0.0, inv[step]))


def feature_rows(ds: Any, rows: NDArray[np.int64]) -> NDArray[np.float64]:
    """Rows of ``ds.features()`` (numeric states plus one-hot categorical), float64.

    Built from the numeric states and the categorical codes of those rows only: the whole
    one-hot matrix (cached on the dataset) and a float64 copy of it are never formed.
    """
    cat = getattr(ds, "categorical", None)
    levels = list(getattr(ds, "categorical_levels", None) or [])
    if not hasattr(ds, "features") or cat is None or not levels or cat.shape[1] == 0:
        feats = ds.features() if hasattr(ds, "features") else ds.states
        return np.asarray(np.asarray(feats)[rows], dtype=np.float64)
    num = np.asarray(ds.states)
    out = np.zeros((rows.size, num.shape[1] + sum(len(lv) for lv in levels)))
    out[:, :num.shape[1]] = num[rows]
    off, ar = num.shape[1], np.arange(rows.size)
    for j, lv in enumerate(levels):
        out[ar, off + np.asarray(cat)[rows, j]] = 1.0
        off += len(lv)
    return out


def _check_end_rewards(ds: Any, rows: NDArray[np.int64]) -> None:
    """Refuse rewards that all sit on episodes' last rows; warn when most of them do.

    A panel whose outcome is a reward on the last row of each stay (survival at discharge: the
    Garnet and ICU-shaped panels) gave every effect as 0.000 with a standard error of 0.000.
    """
    import warnings

    from equicare.exceptions import DataWarning

    r = np.abs(np.asarray(ds.rewards, dtype=np.float64))
    total = float(r.sum())
    if total <= 0 or not np.isfinite(total):
        return
    last = np.ones(r.size, dtype=bool)
    last[rows] = False
    at_end = float(r[last].sum())
    source = _source(ds)
    if at_end >= total:
        raise DataValidationError(END_REWARD_MESSAGE.format(
            source=source, k=int(np.count_nonzero(r[last]))))
    if at_end > END_REWARD_WARN_SHARE * total:
        warnings.warn(END_REWARD_WARNING.format(source=source, pct=100 * at_end / total,
                                                share=100 * last.mean()),
                      DataWarning, stacklevel=3)


def _check_both_actions(ds: Any, rows: NDArray[np.int64]) -> None:
    """Refuse a binary action that every transition takes the same way.

    A panel whose logged actions were all 0 (``--action`` naming an action set no row takes)
    printed every effect of a policy taking it, with intervals and no warning: estimates of an
    action the data never shows.
    """
    if int(getattr(ds, "n_actions", 0)) != 2:
        return
    logged = np.unique(np.asarray(ds.actions)[rows])
    if logged.size == 1:
        a = int(logged[0])
        raise DataValidationError(ONE_ACTION_MESSAGE.format(source=_source(ds), a=a, b=1 - a,
                                                             n=int(rows.size)))


def _panel(ds: Any) -> str | None:
    """The file a dataset was read from, else its manifest file, else None."""
    src = getattr(ds, "source", None)
    if src is None:
        src = getattr(getattr(ds, "manifest", None), "source", None)
    return None if src is None or str(src) == "<manifest>" else str(src)


def _source(ds: Any) -> str:
    return _lead(_panel(ds))


def _check_dense_memory(ds: Any, n: int) -> None:
    """Refuse, before building them, dense state features that would not fit in memory.

    A 5,000-level categorical state (54,418 rows) reached 19 GB of memory in 110 s before the
    basis-size check refused it. With the sparse basis what remains dense is the states and
    next states (:data:`DENSE_COPIES`).
    """
    from equicare import utils

    levels = list(getattr(ds, "categorical_levels", None) or [])
    if not levels or not hasattr(ds, "features"):
        return
    d = int(np.asarray(ds.states).shape[1]) + sum(len(lv) for lv in levels)
    need = DENSE_COPIES * n * d * 8
    avail = utils.available_memory()
    if avail is not None and need > avail:
        widest = sorted(zip(ds.categorical_names, (len(lv) for lv in levels), strict=True),
                        key=lambda c: -c[1])
        cats = ", ".join(f"{c!r} ({k:,} levels)" for c, k in widest)
        raise DataValidationError(DENSE_MEMORY_MESSAGE.format(
            source=_source(ds), n=n, d=d, cats=cats, need_gb=need / 2**30,
            avail_gb=avail / 2**30))


def require_mediators(ds: Any) -> None:
    """Refuse a dataset without mediator columns, naming its manifest file when it has one.

    Raises
    ------
    DataValidationError
    """
    if getattr(ds, "mediators", None) is not None:
        return
    source = str(getattr(getattr(ds, "manifest", None), "source", "<manifest>"))
    raise DataValidationError(NO_MEDIATOR_MESSAGE if source == "<manifest>"
                              else NO_MEDIATOR_FILE_MESSAGE.format(manifest=source))


def as_mediation_data(data: Any, check: Callable[[Any, NDArray[np.int64], NDArray[np.int64]],
                                                 None] | None = None) -> MediationData:
    """Accept :class:`MediationData`, a TrajectoryDataset, a simulator sample or a mapping.

    A mapping or object needs ``states, actions, mediators, rewards, next_states`` and
    ``episode_index`` (optionally ``behavior_prob``, ``n_actions``). ``check``: see
    :func:`from_dataset` (a TrajectoryDataset only).
    """
    if isinstance(data, MediationData):
        return data
    if hasattr(data, "next_index") and hasattr(data, "episode_offsets"):
        return from_dataset(data, check)
    get = (data.get if isinstance(data, Mapping)
           else (lambda k, default=None: getattr(data, k, default)))
    keys = ("states", "actions", "mediators", "rewards", "next_states", "episode_index")
    missing = [k for k in keys if get(k) is None]
    if missing:
        raise DataValidationError(f"Mediation data needs {', '.join(keys)}; missing: "
                                  f"{', '.join(missing)}.")
    return MediationData.from_arrays(*(get(k) for k in keys), n_actions=get("n_actions"),
                                     behavior_prob=get("behavior_prob"))


def _check_probs(p: NDArray[np.float64], n: int, n_actions: int, what: str) -> NDArray[np.float64]:
    if p.shape != (n, n_actions):
        raise PolicyError(f"{what}: action probabilities must have shape ({n}, {n_actions}); got "
                          f"{p.shape}.")
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (np.abs(p.sum(axis=1) - 1) > 1e-6)
    if bad.any():
        raise PolicyError(f"{what}: {int(bad.sum())} rows are not probabilities summing to 1 "
                          f"(first row: {int(np.flatnonzero(bad)[0])}).")
    return p


def resolve_policy(spec: Any, data: MediationData, what: str) -> PolicyProbs:
    """Probabilities of a policy at each state and next state, and the states it defers.

    Parameters
    ----------
    spec : int, PolicyProbs, equicare Policy or callable
        A fixed action; precomputed probabilities; an object with ``action_probs(dataset)``
        (needs data built by :func:`from_dataset`); or ``f(states (n, d)) -> (n, n_actions)``.
        A policy object that leaves whole rows to current practice (``deferred_rows(dataset)``,
        e.g. exception rules or a policy file with a ``follows_practice`` column) gives its
        stored probabilities and those rows as ``deferred`` / ``next_deferred``.
    data : MediationData
    what : str
        Name used in error messages (``"target"``, ``"control"``).

    Returns
    -------
    PolicyProbs
        ``probs`` and ``next_probs`` of shape (n, n_actions); ``deferred`` and
        ``next_deferred`` of shape (n,) or None (the policy decides at every state).
    """
    n, A = data.n_steps, data.n_actions
    if isinstance(spec, int | np.integer) and not isinstance(spec, bool):
        if not 0 <= int(spec) < A:
            raise PolicyError(f"{what}: fixed action {int(spec)} is outside [0, {A}).")
        p = np.zeros((n, A))
        p[:, int(spec)] = 1.0
        return PolicyProbs(p, p.copy(), name=what)
    if isinstance(spec, PolicyProbs):
        flags = [None if f is None else _check_flags(f, n, what, k)
                 for k, f in (("deferred", spec.deferred), ("next_deferred", spec.next_deferred))]
        return PolicyProbs(_check_probs(np.asarray(spec.probs, np.float64), n, A, what),
                           _check_probs(np.asarray(spec.next_probs, np.float64), n, A, what),
                           spec.name, flags[0], flags[1])
    if hasattr(spec, "action_probs"):
        from equicare.policy._deployed import DeployedPolicy, deferred_rows_of

        if data.source is None or data.rows is None or data.next_rows is None:
            raise PolicyError(f"{what}: a policy object with action_probs(dataset) needs data "
                              "built from a TrajectoryDataset (from_dataset); pass a callable on "
                              "states or PolicyProbs for plain arrays.")
        inner = spec.policy if isinstance(spec, DeployedPolicy) else spec  # the stored probs
        full = np.asarray(inner.action_probs(data.source), dtype=np.float64)
        full = _check_probs(full, int(full.shape[0]), A, what)
        rows = deferred_rows_of(spec, data.source)
        return PolicyProbs(full[data.rows], full[data.next_rows], what,
                           None if rows is None else rows[data.rows],
                           None if rows is None else rows[data.next_rows])
    if callable(spec):
        return PolicyProbs(_check_probs(np.asarray(spec(data.states), np.float64), n, A, what),
                           _check_probs(np.asarray(spec(data.next_states), np.float64), n, A,
                                        what), what)
    raise PolicyError(f"{what}: expected a fixed action (int), PolicyProbs, a policy with "
                      f"action_probs or a callable on states; got {type(spec).__name__}.")


#: ``PolicyProbs.deferred`` / ``next_deferred`` of the wrong kind (tests match it).
FLAGS_MESSAGE = ("{what}: {name} must be a boolean array of shape ({n},); got {dtype} of shape "
                 "{shape}.")


def _check_flags(flags: Any, n: int, what: str, name: str) -> NDArray[np.bool_]:
    f = np.asarray(flags)
    if f.shape != (n,) or f.dtype != np.bool_:
        raise PolicyError(FLAGS_MESSAGE.format(what=what, name=name, n=n, dtype=f.dtype,
                                               shape=f.shape))
    return f


def binarize_actions(ds: Any, action: str) -> tuple[Any, NDArray[np.bool_]]:
    """The dataset with its action collapsed to 1 = in the action set ``action``.

    Mediation on a panel with many flat actions (300 combinations in a care-management panel)
    needs hundreds of transitions per action; comparing one action set (e.g. any home visit)
    against never using it needs only a binary action. The command line's
    ``equicare mediate --action`` does the same.

    Parameters
    ----------
    ds : TrajectoryDataset
    action : str
        The action set, ``"component=level"`` (e.g. ``"modality=home_visit"``), as
        :meth:`~equicare.spaces.FactoredActionSpace.parse_action_set` reads it.

    Returns
    -------
    binary : TrajectoryDataset
        The same rows with a two-level action (1 = in the set) and no logged propensities.
    mask : ndarray of shape (n_actions,), bool
        Which of the original flat actions are in the set (for :func:`collapse_probs`).

    Examples
    --------
    >>> from equicare.causal import (DynamicMediation, PolicyProbs, binarize_actions,
    ...                              collapse_probs, from_dataset)
    >>> from equicare.sim.care import CareManagementSim
    >>> sim = CareManagementSim()
    >>> ds = sim.generate(n_members=300, n_weeks=12, random_state=0).dataset()
    >>> binary, mask = binarize_actions(ds, "modality=home_visit")
    >>> ds.n_actions, binary.n_actions
    (300, 2)
    >>> md = from_dataset(binary)
    >>> probs = collapse_probs(sim.reference_policy().action_probs(ds), mask)  # (n_steps, 2)
    >>> target = PolicyProbs(probs[md.rows], probs[md.next_rows], name="reference")
    >>> result = DynamicMediation(n_bootstrap=20).estimate(md, target, control=0,
    ...                                                    random_state=0)
    """
    from dataclasses import replace

    from equicare.spaces import FactoredActionSpace

    mask = ds.action_space.parse_action_set(action)
    binary = replace(ds, actions=mask[ds.actions].astype(np.int64),
                     action_space=FactoredActionSpace.single(2), behavior_prob=None, _cache={})
    return binary, mask


def collapse_probs(probs: NDArray[Any], mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """A policy's probabilities over the flat actions, collapsed to an action set.

    Parameters
    ----------
    probs : ndarray of shape (n_steps, n_actions)
        Probabilities over the original flat actions (``policy.action_probs(dataset)``).
    mask : ndarray of shape (n_actions,), bool
        The action set, from :func:`binarize_actions`.

    Returns
    -------
    ndarray of shape (n_steps, 2)
        ``[P(not in set), P(in set)]`` per row: the policy on the binary dataset.
    """
    p1 = np.asarray(probs, dtype=np.float64)[:, mask].sum(axis=1)
    return np.stack([1.0 - p1, p1], axis=1)
