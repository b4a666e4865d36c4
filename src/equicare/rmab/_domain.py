"""Restless-bandit domains: arm arrays, Contract-4 files and the three reference domains.

A domain is ``N`` finite-state arms, each with a passive (``a = 0``) and an active (``a = 1``)
transition matrix, a reward per state, a start-state distribution and a group label. The arrays
live in :class:`RMABDomain`; :func:`load_domain` builds one from a Contract-4 JSON file or from a
bundled reference domain (``"synthetic"``, ``"maternal"``, ``"diabetes"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.utils import PARAM_MESSAGE, RandomState, check_random_state

__all__ = ["RMABDomain", "load_domain", "BUILTIN_DOMAINS"]

#: Names of the bundled reference domains.
BUILTIN_DOMAINS = ("synthetic", "maternal", "diabetes")

# Message templates (tests match them exactly).
P_SHAPE = "{source}P must have shape (n_arms, 2, n_states, n_states); got shape {shape}."
P_NONFINITE = "{source}P has a non-finite probability at arm {arm}, action {a}, state {s}."
P_NEGATIVE = ("{source}P has a negative probability: arm {arm}, action {a}, state {s}, "
              "next state {t} is {value:.6g}.")
P_ROWSUM = ("{source}Rows of P must sum to 1 (within 1e-6): arm {arm}, action {a}, state {s} "
            "sums to {total:.9g}.")
R_SHAPE = "{source}R must have shape (n_arms, n_states) = {expected}; got shape {shape}."
INIT_BAD = ("{source}init must be a probability distribution over the {n_states} states for every "
            "arm (non-negative, summing to 1); arm {arm} has {row}.")
GROUPS_SHAPE = "{source}groups must have one label per arm ({n_arms}); got shape {shape}."
EMPTY_GROUP = ("Group {name!r} has no arms{detail}; every group must have at least one arm "
               "(use more arms or drop the group).")
ONLY_FOR = ("{option} applies only to the {applies} domain ({what}); domain {name!r} has no "
            "such setting.")
#: What each domain-specific setting is, and the domain kind it belongs to.
DOMAIN_SETTINGS = {"alpha": ("diabetes", "the reward's engagement weight"),
                   "experiment": ("maternal", "which group is 60%")}
UNKNOWN_DOMAIN = ("Unknown domain {name!r}: expected a path to a Contract-4 JSON file or one of "
                  "'synthetic', 'maternal', 'diabetes'.")

_TOL_ROWSUM = 1e-6
#: A Contract-4 value of the wrong type or size (tests match it).
BAD_VALUE = "{where}{key!r} must be {expected}; got {value}."


def _src(source: str | None) -> str:
    return f"{source}: " if source else ""


def validate_arrays(
    P: NDArray[np.float64],
    R: NDArray[np.float64],
    init: NDArray[np.float64],
    groups: NDArray[np.int64],
    source: str | None = None,
) -> None:
    """Check arm arrays and raise :class:`DataValidationError` naming the first bad entry.

    Parameters
    ----------
    P : ndarray of shape (n_arms, 2, n_states, n_states)
        ``P[i, a, s, s']`` = probability of moving from ``s`` to ``s'`` under action ``a``.
    R : ndarray of shape (n_arms, n_states)
        Reward of each state.
    init : ndarray of shape (n_arms, n_states)
        Start-state distribution of each arm.
    groups : ndarray of shape (n_arms,)
        Integer group code of each arm.
    source : str, optional
        File name (or other origin) to prefix every message with.
    """
    s = _src(source)
    if P.ndim != 4 or P.shape[1] != 2 or P.shape[2] != P.shape[3] or P.shape[2] < 1:
        raise DataValidationError(P_SHAPE.format(source=s, shape=P.shape))
    n, _, S, _ = P.shape
    if not np.isfinite(P).all():
        arm, a, st, _ = np.argwhere(~np.isfinite(P))[0]
        raise DataValidationError(P_NONFINITE.format(source=s, arm=arm, a=a, s=st))
    if (P < 0).any():
        arm, a, st, t = np.argwhere(P < 0)[0]
        raise DataValidationError(P_NEGATIVE.format(source=s, arm=arm, a=a, s=st, t=t,
                                                    value=P[arm, a, st, t]))
    sums = P.sum(axis=3)
    bad = np.abs(sums - 1.0) > _TOL_ROWSUM
    if bad.any():
        arm, a, st = np.argwhere(bad)[0]
        raise DataValidationError(P_ROWSUM.format(source=s, arm=arm, a=a, s=st,
                                                  total=sums[arm, a, st]))
    if R.shape != (n, S) or not np.isfinite(R).all():
        raise DataValidationError(R_SHAPE.format(source=s, expected=(n, S), shape=R.shape))
    ok = (init.shape == (n, S)) and bool(np.isfinite(init).all())
    if ok:
        badi = (init < 0).any(axis=1) | (np.abs(init.sum(axis=1) - 1.0) > _TOL_ROWSUM)
        if badi.any():
            arm = int(np.argmax(badi))
            raise DataValidationError(INIT_BAD.format(source=s, n_states=S, arm=arm,
                                                      row=init[arm].tolist()))
    else:
        raise DataValidationError(INIT_BAD.format(source=s, n_states=S, arm="(all)",
                                                  row=f"shape {init.shape}"))
    if groups.shape != (n,):
        raise DataValidationError(GROUPS_SHAPE.format(source=s, n_arms=n, shape=groups.shape))


@dataclass(frozen=True, kw_only=True, eq=False)
class RMABDomain:
    r"""Arrays of ``n_arms`` restless arms with binary actions.

    Parameters
    ----------
    P : ndarray of shape (n_arms, 2, n_states, n_states)
        Transition matrices, ``P[i, a, s, s']``; ``a = 0`` passive, ``a = 1`` active.
    R : ndarray of shape (n_arms, n_states) or (n_states,)
        Reward of being in each state (one row is broadcast to every arm).
    init : ndarray of shape (n_arms, n_states) or (n_states,)
        Start-state distribution.
    groups : ndarray of shape (n_arms,)
        Group label of each arm (any hashable labels; stored as integer codes).
    group_names : tuple of str, optional
        Names of the group codes; derived from ``groups`` when it holds labels.
    name : str
        Domain name (written into Contract-5 results).
    horizon : int
        Default number of decision steps ``H``.
    gamma : float
        Discount factor of the planning objective (1.0: plain sum over the horizon).
    state_names : tuple of str, optional
        Names of the states.
    high_risk : ndarray of shape (n_states,) of bool, optional
        States targeted by the "high-risk" baselines (diabetes: A1c >= 8); the complement is the
        default goal of capacity planning.
    budget_fracs : tuple of float
        Budget fractions of the reference experiments (informational).
    suppressed_groups : tuple of str
        Groups whose outcomes must never be published: arms estimated from fewer than
        :data:`~equicare.utils.MIN_CELL` people, or hidden so that such a group cannot be
        recovered by difference (:func:`equicare.privacy.suppress_counts`). Set by
        :meth:`EstimatedArms.to_domain`; planning still uses every arm, only results leave
        these groups out.

    Notes
    -----
    Rewards are counted for the state *before* each transition: an episode of ``H`` steps earns
    :math:`\sum_{t=0}^{H-1} r(s_t)` per arm, the accounting of the reference implementation.
    """

    P: NDArray[np.float64]
    R: NDArray[np.float64]
    init: NDArray[np.float64]
    groups: NDArray[np.int64]
    group_names: tuple[str, ...] = ()
    name: str = "custom"
    horizon: int = 20
    gamma: float = 1.0
    state_names: tuple[str, ...] | None = None
    high_risk: NDArray[np.bool_] | None = None
    budget_fracs: tuple[float, ...] = ()
    suppressed_groups: tuple[str, ...] = ()
    _redraw: Callable[[int, np.random.Generator], RMABDomain] | None = field(
        default=None, repr=False)

    def __post_init__(self) -> None:
        P = np.ascontiguousarray(np.asarray(self.P, dtype=np.float64))
        if P.ndim == 3:
            P = P[None]
        n = P.shape[0] if P.ndim == 4 else 0
        S = P.shape[-1] if P.ndim >= 1 else 0
        R = np.asarray(self.R, dtype=np.float64)
        if R.ndim == 1:
            R = np.broadcast_to(R, (n, R.shape[0])).copy()
        init = np.asarray(self.init, dtype=np.float64)
        if init.ndim == 1:
            init = np.broadcast_to(init, (n, init.shape[0])).copy()
        labels = np.asarray(self.groups)
        if labels.ndim == 0:
            labels = np.full(n, labels)
        names = tuple(str(g) for g in self.group_names)
        if labels.dtype.kind in "iu" and names:
            codes = labels.astype(np.int64)
            if codes.size and (codes.min() < 0 or codes.max() >= len(names)):
                raise DataValidationError(
                    f"groups must be codes in [0, {len(names)}) when group_names are given.")
        else:
            uniq, first = np.unique(labels, return_index=True)
            order = uniq[np.argsort(first)]  # order of first appearance
            lookup = {v: i for i, v in enumerate(order.tolist())}
            codes = np.array([lookup[v] for v in labels.tolist()], dtype=np.int64)
            names = tuple(str(v) for v in order.tolist())
        validate_arrays(P, R, init, codes)
        sizes = np.bincount(codes, minlength=len(names))
        if (sizes == 0).any():
            g = int(np.argmin(sizes))
            raise DataValidationError(EMPTY_GROUP.format(name=names[g], detail=""))
        if not isinstance(self.horizon, int | np.integer) or self.horizon < 1:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="horizon", owner="RMABDomain",
                                                  expected="an int >= 1", got=self.horizon))
        if not 0.0 < float(self.gamma) <= 1.0:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="gamma", owner="RMABDomain",
                                                  expected="a float in (0, 1]", got=self.gamma))
        hr = None
        if self.high_risk is not None:
            hr = np.asarray(self.high_risk, dtype=bool)
            if hr.shape != (S,):
                raise DataValidationError(f"high_risk must have shape ({S},); got {hr.shape}.")
        for k, v in (("P", P), ("R", R), ("init", init), ("groups", codes),
                     ("group_names", names), ("high_risk", hr), ("horizon", int(self.horizon)),
                     ("gamma", float(self.gamma))):
            object.__setattr__(self, k, v)
        if self.state_names is not None:
            object.__setattr__(self, "state_names", tuple(str(x) for x in self.state_names))
        object.__setattr__(self, "budget_fracs", tuple(float(x) for x in self.budget_fracs))
        hidden = tuple(str(g) for g in self.suppressed_groups)
        unknown = sorted(set(hidden) - set(names))
        if unknown:
            raise InvalidParameterError(
                f"suppressed_groups names unknown groups {unknown}; groups are {list(names)}.")
        object.__setattr__(self, "suppressed_groups", hidden)

    @property
    def n_arms(self) -> int:
        """Number of arms ``N``."""
        return int(self.P.shape[0])

    @property
    def n_states(self) -> int:
        """Number of states ``S``."""
        return int(self.P.shape[2])

    @property
    def n_groups(self) -> int:
        """Number of groups ``G``."""
        return len(self.group_names)

    @property
    def published(self) -> NDArray[np.bool_]:
        """Whether each group's outcomes may be published, shape (n_groups,)."""
        hidden = set(self.suppressed_groups)
        return np.array([g not in hidden for g in self.group_names], dtype=bool)

    @property
    def group_sizes(self) -> NDArray[np.int64]:
        """Number of arms in each group, shape (n_groups,)."""
        return np.bincount(self.groups, minlength=self.n_groups).astype(np.int64)

    def redraw(self, random_state: RandomState = None) -> RMABDomain:
        """Draw a fresh set of arms from the same domain (per-arm noise re-sampled).

        Domains built from arrays (or estimated from data) have no generator and are returned
        unchanged.
        """
        if self._redraw is None:
            return self
        return self._redraw(self.n_arms, check_random_state(random_state))

    def sample_states(self, rng: np.random.Generator, n_draws: int = 1) -> NDArray[np.int64]:
        """Draw start states, shape (n_draws, n_arms)."""
        cdf = np.cumsum(self.init, axis=1)
        u = rng.random((n_draws, self.n_arms, 1))
        return np.minimum((u > cdf[None]).sum(axis=2), self.n_states - 1).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """Contract-4 form with one entry per arm under ``"arms"``."""
        arms = [{"group": self.group_names[int(g)], "P": self.P[i].tolist(),
                 "R": self.R[i].tolist(), "init": self.init[i].tolist()}
                for i, g in enumerate(self.groups)]
        out: dict[str, Any] = {"name": self.name, "n_states": self.n_states,
                               "horizon": self.horizon, "gamma": self.gamma, "arms": arms}
        if self.state_names is not None:
            out["state_names"] = list(self.state_names)
        if self.high_risk is not None:
            out["high_risk"] = self.high_risk.astype(int).tolist()
        return out


# --------------------------------------------------------------------------- group blocks

def _block_assignment(n_arms: int, fractions: Sequence[float]) -> NDArray[np.int64]:
    """Contiguous blocks of ``int(n_arms * frac)`` arms per type; left-overs go to type 0."""
    types = np.zeros(n_arms, dtype=np.int64)
    start = 0
    for k, f in enumerate(fractions):
        m = int(n_arms * float(f))
        types[start:start + m] = k
        start += m
    return types


def _check_groups_nonempty(types: NDArray[np.int64], names: Sequence[str], n_arms: int,
                           fractions: Sequence[float]) -> None:
    sizes = np.bincount(types, minlength=len(names))
    for k, name in enumerate(names):
        if sizes[k] == 0:
            raise DataValidationError(EMPTY_GROUP.format(
                name=name, detail=f" at n_arms={n_arms} (fraction {fractions[k]:g})"))


def _noisy(p: NDArray[np.float64], rel_sd: float, lo: float, hi: float,
           rng: np.random.Generator) -> NDArray[np.float64]:
    """Apply the reference noise rule ``clip(Normal(p, rel_sd * min(p, 1 - p)), lo, hi)``."""
    sd = rel_sd * np.minimum(np.abs(p), np.abs(1 - p))
    return np.clip(rng.normal(p, sd), lo, hi)


# --------------------------------------------------------------------------- Contract 4

def _c4_int(value: Any, where: str, key: str, low: int) -> int:
    """A whole number >= ``low`` from a Contract-4 file, or :data:`BAD_VALUE`."""
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and float(value).is_integer() and value >= low)
    if not ok:
        raise DataValidationError(BAD_VALUE.format(where=where, key=key,
                                                   expected=f"a whole number >= {low}",
                                                   value=json.dumps(value, default=str)))
    return int(value)


def _c4_float(value: Any, where: str, key: str) -> float:
    """A finite number from a Contract-4 file, or :data:`BAD_VALUE`."""
    if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    raise DataValidationError(BAD_VALUE.format(where=where, key=key, expected="a finite number",
                                               value=json.dumps(value, default=str)))


def _c4_array(value: Any, where: str, key: str, shape: tuple[int, ...], expected: str
              ) -> NDArray[np.float64]:
    """A numeric array of ``shape`` from a Contract-4 file, or :data:`BAD_VALUE`."""
    arr: NDArray[np.float64] | None
    try:
        raw = np.asarray(value)
        arr = raw.astype(np.float64) if raw.dtype.kind in "iuf" else None
    except (TypeError, ValueError):  # ragged lists
        arr = None
    if arr is None or arr.shape != shape:
        got = json.dumps(value, default=str)
        raise DataValidationError(BAD_VALUE.format(
            where=where, key=key, expected=expected,
            value=got if len(got) <= 80 else got[:77] + "..."))
    return arr


def _parse_contract4(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    s = _src(source)
    problems: list[str] = []
    for key in ("n_states",):
        if key not in raw:
            problems.append(f"{s}missing key {key!r}.")
    if "types" not in raw and "arms" not in raw:
        problems.append(f"{s}needs a list under 'types' (drawn by fraction) or 'arms'.")
    if problems:
        raise DataValidationError(problems[0], problems)
    S = _c4_int(raw["n_states"], s, "n_states", 1)
    listed = "arms" in raw
    entries = raw["arms"] if listed else raw["types"]
    if not isinstance(entries, list) or not entries:
        raise DataValidationError(f"{s}'{'arms' if listed else 'types'}' must be a non-empty list.")
    Ps, Rs, inits, groups, fracs, noise, names = [], [], [], [], [], [], []
    for j, e in enumerate(entries):
        where = f"{s}{'arms' if listed else 'types'}[{j}]"
        if not isinstance(e, Mapping):
            raise DataValidationError(f"{where}: must be a JSON object with keys P, R, ...; "
                                      f"got {json.dumps(e, default=str)}.")
        for key in ("P", "R"):
            if key not in e:
                raise DataValidationError(f"{where}: missing key {key!r}.")
        Ps.append(_c4_array(e["P"], f"{where}: ", "P", (2, S, S),
                            f"numbers of shape (2, {S}, {S}) (P[a][s][s'])"))
        r = e["R"]
        if isinstance(r, int | float) and not isinstance(r, bool):  # one reward for every state
            r = [float(r)] * S
        Rs.append(_c4_array(r, f"{where}: ", "R", (S,), f"a list of {S} numbers (one reward "
                            "per state) or one number"))
        inits.append(_c4_array(e.get("init", [1.0 / S] * S), f"{where}: ", "init", (S,),
                               f"a list of {S} probabilities"))
        groups.append(str(e.get("group", e.get("name", f"type{j}"))))
        names.append(str(e.get("name", groups[-1])))
        fracs.append(_c4_float(e.get("fraction", 1.0 / len(entries)), f"{where}: ", "fraction"))
        noise.append(_c4_float(e.get("noise_sd", 0.0), f"{where}: ", "noise_sd"))
        if noise[-1] < 0:
            raise DataValidationError(f"{where}: noise_sd must be >= 0; got {noise[-1]}.")
    P_t = np.stack(Ps)
    R_t = np.stack(Rs)
    init_t = np.stack(inits)
    validate_arrays(P_t, R_t, init_t, np.zeros(len(entries), dtype=np.int64), source=source)
    if not listed:
        tot = sum(fracs)
        if any(f < 0 for f in fracs) or abs(tot - 1.0) > 1e-4:
            raise DataValidationError(
                f"{s}type fractions must be >= 0 and sum to 1 (within 1e-4); got {tot:.6g}.")
    hr = raw.get("high_risk")
    if hr is not None:
        hr = _c4_array(hr, s, "high_risk", (S,), f"a list of {S} 0/1 flags (one per state)")
        if not np.isin(hr, (0, 1)).all():
            raise DataValidationError(BAD_VALUE.format(
                where=s, key="high_risk", expected=f"a list of {S} 0/1 flags (one per state)",
                value=json.dumps(hr.tolist())))
        hr = hr.astype(bool)
    names_ = raw.get("state_names")
    if names_ is not None and (not isinstance(names_, list) or len(names_) != S):
        raise DataValidationError(BAD_VALUE.format(
            where=s, key="state_names", expected=f"a list of {S} names (one per state)",
            value=json.dumps(names_, default=str)))
    bf = raw.get("budget_fracs", [])
    if not isinstance(bf, list):
        bf = None
    fr = (None if bf is None
          else tuple(_c4_float(b, s, f"budget_fracs[{i}]") for i, b in enumerate(bf)))
    if fr is None:
        raise DataValidationError(BAD_VALUE.format(where=s, key="budget_fracs",
                                                   expected="a list of numbers",
                                                   value=json.dumps(raw.get("budget_fracs"),
                                                                    default=str)))
    return {"P": P_t, "R": R_t, "init": init_t, "groups": groups, "fractions": fracs,
            "noise": np.asarray(noise), "listed": listed, "S": S,
            "name": str(raw.get("name", Path(source).stem if source else "custom")),
            "horizon": _c4_int(raw.get("horizon", 20), s, "horizon", 1),
            "gamma": _c4_float(raw.get("gamma", 1.0), s, "gamma"),
            "state_names": names_,
            "high_risk": hr,
            "default_n_arms": _c4_int(raw.get("default_n_arms", len(entries) if listed else 100),
                                      s, "default_n_arms", 1),
            "budget_fracs": fr}


def _contract4_drawer(spec: dict[str, Any]) -> Callable[[int, np.random.Generator], RMABDomain]:
    group_order = list(dict.fromkeys(spec["groups"]))

    def draw(n_arms: int, rng: np.random.Generator) -> RMABDomain:
        if spec["listed"]:
            types = np.arange(len(spec["groups"]))
            if n_arms != len(types):
                raise InvalidParameterError(
                    f"{spec['name']}: the file lists {len(types)} arms one by one; "
                    f"n_arms must be {len(types)} (got {n_arms}).")
        else:
            types = _block_assignment(n_arms, spec["fractions"])
            _check_groups_nonempty(types, spec["groups"], n_arms, spec["fractions"])
        P = spec["P"][types].copy()
        sd = spec["noise"][types]
        if (sd > 0).any():
            noisy = sd > 0
            Pn = P[noisy]
            inner = (Pn > 0) & (Pn < 1)
            sdv = sd[noisy][:, None, None, None] * np.minimum(Pn, 1 - Pn)
            pert = np.clip(rng.normal(Pn, sdv), 1e-3, 1 - 1e-3)
            Pn = np.where(inner, pert, Pn)
            P[noisy] = Pn / Pn.sum(axis=3, keepdims=True)
        gcode = {g: i for i, g in enumerate(group_order)}
        groups = np.array([gcode[spec["groups"][t]] for t in types], dtype=np.int64)
        return RMABDomain(P=P, R=spec["R"][types], init=spec["init"][types], groups=groups,
                          group_names=tuple(group_order), name=spec["name"],
                          horizon=spec["horizon"], gamma=spec["gamma"],
                          state_names=spec["state_names"], high_risk=spec["high_risk"],
                          budget_fracs=spec["budget_fracs"], _redraw=draw)

    return draw


# --------------------------------------------------------------------------- maternal health

def _maternal_drawer(raw: Mapping[str, Any], experiment: str
                     ) -> Callable[[int, np.random.Generator], RMABDomain]:
    exps = raw["experiments"]
    if experiment not in exps:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="experiment", owner="load_domain('maternal')",
            expected="one of " + ", ".join(repr(k) for k in exps), got=experiment))
    fracs = exps[experiment]
    names = list(raw["group_means"].keys())
    keys = ["p000", "p010", "p102", "p110", "p202", "p212"]
    means = np.array([[raw["group_means"][g][k] for k in keys] for g in names])
    rel, (lo, hi) = float(raw["noise"]["relative_sd"]), raw["noise"]["clip"]
    rewards = np.asarray(raw["rewards"], dtype=np.float64)

    def draw(n_arms: int, rng: np.random.Generator) -> RMABDomain:
        types = _block_assignment(n_arms, fracs)
        _check_groups_nonempty(types, names, n_arms, fracs)
        p = _noisy(means[types], rel, lo, hi, rng)  # (N, 6)
        N = n_arms
        P = np.zeros((N, 2, 3, 3))
        # listed (s, a, s') entries; the remaining mass goes to state 1 (persuadable)
        for j, (s, a, t) in enumerate([(0, 0, 0), (0, 1, 0), (1, 0, 2), (1, 1, 0), (2, 0, 2),
                                       (2, 1, 2)]):
            P[:, a, s, t] = p[:, j]
            P[:, a, s, 1] = 1.0 - p[:, j]
        return RMABDomain(P=P, R=rewards, init=np.full(3, 1 / 3), groups=types,
                          group_names=tuple(names), name=f"maternal_{experiment}",
                          horizon=int(raw["horizon"]), gamma=float(raw["gamma"]),
                          state_names=tuple(raw["state_names"]),
                          budget_fracs=tuple(raw["budget_fracs"]), _redraw=draw)

    return draw


# --------------------------------------------------------------------------- digital diabetes

_DIAB_KEYS = ("p_i_mtoe", "p_i_mtod", "p_i_etoe", "p_u_mtod",
              "p_noeng_gl", "p_noeng_ll", "p_eng_gl", "p_eng_ll")
_MEMORY = [(1, 1), (1, 2), (2, 1), (2, 2)]  # (m0, m1); 1 = maintenance/dropout, 2 = engaged


def diabetes_state_names() -> tuple[str, ...]:
    """Names of the 24 diabetes states, ``index = 8 * engagement + 4 * a1c_lt8 + memory``."""
    eng = ("D", "M", "E")
    a1c = (">=8", "<8")
    mem = ("MM", "ME", "EM", "EE")
    return tuple(f"{e} A1c{h} [{m}]" for e in eng for h in a1c for m in mem)


def diabetes_transitions(params: NDArray[np.float64]) -> NDArray[np.float64]:
    """Joint transition matrices of the diabetes arms.

    Parameters
    ----------
    params : ndarray of shape (n_arms, 8)
        ``p_i_mtoe, p_i_mtod, p_i_etoe, p_u_mtod, p_noeng_gl, p_noeng_ll, p_eng_gl, p_eng_ll``.

    Returns
    -------
    ndarray of shape (n_arms, 2, 24, 24)
        ``kron(engagement_row, a1c_row, memory_row)`` with negative entries clipped to 0 and rows
        renormalised (the reference's rule).
    """
    N = params.shape[0]
    mtoe, mtod, etoe, u_mtod, ng_gl, ng_ll, e_gl, e_ll = params.T
    E = np.zeros((N, 2, 3, 3))  # engagement 0 dropout, 1 maintenance, 2 engaged
    E[:, :, 0, 0] = 1.0
    E[:, 0, 1, 0], E[:, 0, 1, 1] = u_mtod, 1 - u_mtod
    E[:, 1, 1, 0], E[:, 1, 1, 1], E[:, 1, 1, 2] = mtod, 1 - mtod - mtoe, mtoe
    E[:, 0, 2, 1] = 1.0
    E[:, 1, 2, 1], E[:, 1, 2, 2] = 1 - etoe, etoe
    Hh = np.zeros((N, 2, 2, 2))  # [engaged two steps ago?, a1c, a1c']; a1c 1 means < 8
    Hh[:, 0, 0, 1], Hh[:, 0, 0, 0] = ng_gl, 1 - ng_gl
    Hh[:, 0, 1, 1], Hh[:, 0, 1, 0] = ng_ll, 1 - ng_ll
    Hh[:, 1, 0, 1], Hh[:, 1, 0, 0] = e_gl, 1 - e_gl
    Hh[:, 1, 1, 1], Hh[:, 1, 1, 0] = e_ll, 1 - e_ll
    eng_two_ago = np.array([m1 == 2 for (_, m1) in _MEMORY])
    Hsel = Hh[:, eng_two_ago.astype(int)]  # (N, 4 memory, 2, 2)
    M1 = np.zeros((3, 4, 4))  # next memory = (max(1, e), m0)
    for e in range(3):
        for m, (m0, _) in enumerate(_MEMORY):
            M1[e, m, _MEMORY.index((max(1, e), m0))] = 1.0
    P = np.einsum("naey,nmhg,emq->naehmygq", E, Hsel, M1).reshape(N, 2, 24, 24)
    P = np.clip(P, 0.0, None)
    return P / P.sum(axis=3, keepdims=True)


def _diabetes_drawer(raw: Mapping[str, Any], alpha: float
                     ) -> Callable[[int, np.random.Generator], RMABDomain]:
    if not 0.0 <= float(alpha) <= 1.0:
        raise InvalidParameterError(
            PARAM_MESSAGE.format(name="alpha", owner="load_domain('diabetes')",
                                              expected="a float in [0, 1]", got=alpha))
    groups = raw["groups"]
    names = [g["name"] for g in groups]
    fracs = [g["frac"] for g in groups]
    means = np.array([[g[k] for k in _DIAB_KEYS] for g in groups])
    rel, (lo, hi) = float(raw["noise"]["relative_sd"]), raw["noise"]["clip"]
    eng_levels = np.array([0, 1, 2]).repeat(8)
    a1c_levels = np.tile(np.array([0, 1]).repeat(4), 3)
    r_eng = np.array([[g["r_dropout"], g["r_maintenance"], g["r_eng"]] for g in groups])
    r_h = np.array([[g["r_a1cgt8"], g["r_a1clt8"]] for g in groups])
    R_groups = alpha * r_eng[:, eng_levels] + (1 - alpha) * r_h[:, a1c_levels]  # (G, 24)
    init = np.zeros(24)
    init[8 * 2 + 4 * 0 + 0] = 1.0  # engaged, A1c >= 8, memory (M, M)

    def draw(n_arms: int, rng: np.random.Generator) -> RMABDomain:
        types = _block_assignment(n_arms, fracs)
        _check_groups_nonempty(types, names, n_arms, fracs)
        params = _noisy(means[types], rel, lo, hi, rng)
        return RMABDomain(P=diabetes_transitions(params), R=R_groups[types], init=init,
                          groups=types, group_names=tuple(names),
                          name=f"diabetes_alpha{float(alpha):g}", horizon=int(raw["horizon"]),
                          gamma=float(raw["gamma"]), state_names=diabetes_state_names(),
                          high_risk=a1c_levels == 0, budget_fracs=tuple(raw["budget_fracs"]),
                          _redraw=draw)

    return draw


# --------------------------------------------------------------------------- loader

def _read_builtin(name: str) -> dict[str, Any]:
    text = resources.files("equicare.rmab").joinpath("domains", f"{name}.json").read_text()
    out: dict[str, Any] = json.loads(text)
    return out


def load_domain(
    path_or_name: str | os.PathLike[str] | Mapping[str, Any],
    *,
    n_arms: int | None = None,
    random_state: RandomState = None,
    experiment: str | None = None,
    alpha: float | None = None,
) -> RMABDomain:
    """Build a domain from a Contract-4 file, a parsed dict, or a bundled reference domain.

    Parameters
    ----------
    path_or_name : str, Path or mapping
        ``"synthetic"``, ``"maternal"``, ``"diabetes"``, a path to a Contract-4 JSON file, or
        the parsed JSON itself.
    n_arms : int, optional
        Number of arms to draw (default: the domain's reference size, e.g. 100 for synthetic).
        Types are split into contiguous blocks of ``int(n_arms * fraction)`` arms; arms left
        over by the flooring join the first type (the reference's rule).
    random_state : int, Generator or None
        Seed for the per-arm noise (maternal, diabetes and Contract-4 types with
        ``noise_sd > 0``).
    experiment : {"A", "B", "C"}, optional
        Maternal health: which group holds 60% of the arms (default ``"A"``).
    alpha : float in [0, 1], optional
        Diabetes: reward weight of engagement, ``r = alpha * r_eng + (1 - alpha) * r_a1c``
        (default 0.5; the reference experiments use 0, 0.5 and 1).

    Returns
    -------
    RMABDomain
        With a generator attached, so :meth:`RMABDomain.redraw` draws fresh arms.

    Examples
    --------
    >>> from equicare.rmab import load_domain
    >>> d = load_domain("synthetic", n_arms=100)
    >>> d.n_arms, d.n_states, d.group_names
    (100, 2, ('A', 'B', 'C', 'D', 'E'))
    """
    rng = check_random_state(random_state)
    raw: Mapping[str, Any]
    source = ""
    if isinstance(path_or_name, Mapping):
        raw, source = path_or_name, "<dict>"
    else:
        text = str(path_or_name)
        if text in BUILTIN_DOMAINS:
            raw = _read_builtin(text)
        else:
            p = Path(text)
            if not p.exists():
                if p.suffix.lower() != ".json":
                    raise InvalidParameterError(UNKNOWN_DOMAIN.format(name=text))
                raise FileNotFoundError(f"Domain file {text} does not exist.")
            source = str(p)
            try:
                raw = json.loads(p.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataValidationError(f"{p}: not valid JSON ({exc}).") from None
            if not isinstance(raw, Mapping):
                raise DataValidationError(f"{p}: the top level must be a JSON object.")
    kind = raw.get("kind", "contract4")
    for option, value in (("alpha", alpha), ("experiment", experiment)):
        applies, what = DOMAIN_SETTINGS[option]
        if value is not None and kind != applies:
            raise InvalidParameterError(ONLY_FOR.format(
                option=f"'{option}'", applies=applies, what=what,
                name=str(raw.get("name", source or "custom"))))
    if kind == "maternal":
        draw = _maternal_drawer(raw, experiment or str(raw.get("default_experiment", "A")))
    elif kind == "diabetes":
        draw = _diabetes_drawer(raw, float(raw.get("default_alpha", 0.5)
                                           if alpha is None else alpha))
    else:
        spec = _parse_contract4(raw, source)
        draw = _contract4_drawer(spec)
        if n_arms is None:
            n_arms = spec["default_n_arms"]
    if n_arms is None:
        n_arms = int(raw.get("default_n_arms", 100))
    if not isinstance(n_arms, int | np.integer) or isinstance(n_arms, bool) or n_arms < 1:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="n_arms", owner="load_domain",
                                              expected="an int >= 1", got=n_arms))
    return draw(int(n_arms), rng)
