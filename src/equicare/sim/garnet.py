"""Clinical-shaped random MDPs (Garnet style) with exact values: the OPE and safe-learning test bed.

A Garnet MDP has ``S`` transient states, ``A`` actions and up to ``b`` successor states per
(state, action), plus two absorbing outcome states, *good* (survival, reward 1 on entry) and *bad*
(reward 0). Every (state, action) has a per-step hazard of absorption, so stays last from one step
to past the horizon. Clinicians act by ``softmax(Q*/tau_s)`` with a temperature that varies by
state, so many states are near-deterministic and many (state, action) pairs are never logged.
The exact value of *any* policy (an ``(S, A)`` table of probabilities) follows from sparse linear
algebra: the equations are in ``docs/garnet.md``.

Examples
--------
>>> from equicare.sim.garnet import GarnetConfig, GarnetMDP
>>> mdp = GarnetMDP(GarnetConfig(n_states=50, n_actions=5), random_state=0)
>>> pi = mdp.behavior_policy
>>> pi.shape
(50, 5)
>>> panel = mdp.simulate(200, random_state=1)
>>> 0.0 <= mdp.value(pi) <= 1.0
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.linalg import spsolve

from equicare.exceptions import InvalidParameterError, PolicyError
from equicare.utils import RandomState, check_param, check_random_state, config_to_dict

__all__ = [
    "GARNET_PRESETS",
    "EfficiencyBound",
    "GarnetConfig",
    "GarnetMDP",
    "GarnetPanel",
    "garnet_panel",
    "garnet_policy_table",
    "garnet_preset",
    "garnet_state_index",
    "garnet_target_policies",
    "state_labels",
]

_OWNER = "GarnetConfig"


@dataclass(frozen=True, kw_only=True)
class GarnetConfig:
    """Settings of a clinical-shaped Garnet MDP (model equations: ``docs/garnet.md``).

    Parameters
    ----------
    n_states : int, default 700
        Transient states ``S`` (>= 2).
    n_actions : int, default 25
        Actions ``A`` (>= 2).
    n_successors : int, default 5
        Successor draws ``b`` per (state, action); draws that coincide merge, so a pair has at
        most ``b`` transient successors.
    gamma : float, default 1.0
        Discount in (0, 1]. With 1 the value is the probability of reaching the good outcome
        within the horizon.
    max_horizon : int, default 120
        Steps logged at most per episode (rows ``t = 0 .. max_horizon - 1``). An episode still
        running at the last step is censored: its last row has ``terminal = 0``.
    hazard_min, hazard_max : float, default 0.008, 0.5
        Range of the per-step absorption hazard along the state index (log-linear), so low-index
        states have long stays and high-index states short ones.
    hazard_action_sd : float, default 0.3
        Standard deviation of the action's effect on the log hazard.
    locality : float, default 0.05
        Half-width of the successor window as a share of ``S``: successors lie near the current
        state, so a patient's stay keeps its character (long or short, good or bad).
    drift_sd : float, default 0.5
        Standard deviation of the action's shift of the successor window, in window half-widths.
    quality_sd : float, default 0.5
        Noise of the state's baseline log-odds of the good outcome.
    action_effect_sd : float, default 0.8
        Standard deviation of the action's effect on the log-odds of the good outcome.
    tau_min, tau_max : float, default 0.05, 3.0
        Range of the clinicians' per-state softmax temperature (log-uniform), in units of the
        state's spread of ``Q*`` over actions.
    behavior_bias_sd : float, default 0.5
        Habit: clinicians rank actions by ``Q* + bias``, ``bias ~ N(0, (sd * spread)^2)``.
    behavior_floor : float, default 1e-3
        Behaviour probabilities below this are set to 0 (never given in that state).
    policy_floor : float, default 1e-4
        Target-policy probabilities below this are set to 0 (sparse policy files).
    n_groups : int, default 3
        Groups = blocks of the initial state's index (``g0`` low index, long stays).
    severity_noise : float, default 0.3
        Per-state noise of the severity score ``logit P_b(bad | s) + noise``.
    init_concentration : float, default 2.0
        Dirichlet concentration of the initial-state distribution.
    """

    n_states: int = 700
    n_actions: int = 25
    n_successors: int = 5
    gamma: float = 1.0
    max_horizon: int = 120
    hazard_min: float = 0.008
    hazard_max: float = 0.5
    hazard_action_sd: float = 0.3
    locality: float = 0.05
    drift_sd: float = 0.5
    quality_sd: float = 0.5
    action_effect_sd: float = 0.8
    tau_min: float = 0.05
    tau_max: float = 3.0
    behavior_bias_sd: float = 0.5
    behavior_floor: float = 1e-3
    policy_floor: float = 1e-4
    n_groups: int = 3
    severity_noise: float = 0.3
    init_concentration: float = 2.0

    def __post_init__(self) -> None:
        o = _OWNER
        check_param(self.n_states, "n_states", o, kind=int, low=2, expected="an int >= 2")
        check_param(self.n_actions, "n_actions", o, kind=int, low=2, expected="an int >= 2")
        check_param(self.n_successors, "n_successors", o, kind=int, low=1,
                    expected="an int >= 1")
        check_param(self.gamma, "gamma", o, kind=(int, float), low=0, high=1,
                    low_inclusive=False)
        check_param(self.max_horizon, "max_horizon", o, kind=int, low=1, expected="an int >= 1")
        check_param(self.hazard_min, "hazard_min", o, kind=(int, float), low=0, high=1,
                    low_inclusive=False)
        check_param(self.hazard_max, "hazard_max", o, kind=(int, float), low=self.hazard_min,
                    high=1)
        for name in ("hazard_action_sd", "drift_sd", "quality_sd", "action_effect_sd",
                     "behavior_bias_sd", "severity_noise"):
            check_param(getattr(self, name), name, o, kind=(int, float), low=0)
        check_param(self.locality, "locality", o, kind=(int, float), low=0, high=1,
                    low_inclusive=False)
        check_param(self.tau_min, "tau_min", o, kind=(int, float), low=0, low_inclusive=False)
        check_param(self.tau_max, "tau_max", o, kind=(int, float), low=self.tau_min)
        check_param(self.behavior_floor, "behavior_floor", o, kind=(int, float), low=0,
                    high=1, high_inclusive=False)
        check_param(self.policy_floor, "policy_floor", o, kind=(int, float), low=0, high=1,
                    high_inclusive=False)
        check_param(self.n_groups, "n_groups", o, kind=int, low=1, high=self.n_states,
                    expected=f"an int in [1, n_states={self.n_states}]")
        check_param(self.init_concentration, "init_concentration", o, kind=(int, float), low=0,
                    low_inclusive=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GarnetConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidParameterError(
                f"Unknown GarnetConfig keys {unknown}; known: {sorted(known)}.")
        return cls(**d)


#: Named configurations spanning S in {50, 700, 5000}, A in {5, 25, 100}, gamma in {1, 0.99}.
GARNET_PRESETS: dict[str, GarnetConfig] = {
    "s50_a5_g1": GarnetConfig(n_states=50, n_actions=5, n_successors=3, gamma=1.0),
    "s50_a5_g099": GarnetConfig(n_states=50, n_actions=5, n_successors=3, gamma=0.99),
    "s50_a25_g1": GarnetConfig(n_states=50, n_actions=25, n_successors=3, gamma=1.0),
    "s700_a5_g099": GarnetConfig(n_states=700, n_actions=5, gamma=0.99),
    "s700_a25_g1": GarnetConfig(n_states=700, n_actions=25, gamma=1.0),
    "s700_a25_g099": GarnetConfig(n_states=700, n_actions=25, gamma=0.99),
    "s700_a100_g1": GarnetConfig(n_states=700, n_actions=100, gamma=1.0),
    "s5000_a5_g1": GarnetConfig(n_states=5000, n_actions=5, gamma=1.0),
    "s5000_a25_g099": GarnetConfig(n_states=5000, n_actions=25, gamma=0.99),
    "s5000_a100_g1": GarnetConfig(n_states=5000, n_actions=100, gamma=1.0),
}


def garnet_preset(name: str) -> GarnetConfig:
    """The named configuration of :data:`GARNET_PRESETS` (``"s700_a25_g1"`` ...)."""
    if name not in GARNET_PRESETS:
        raise InvalidParameterError(
            f"Unknown Garnet preset {name!r}; known: {sorted(GARNET_PRESETS)}.")
    return GARNET_PRESETS[name]


@dataclass(frozen=True, eq=False)
class GarnetPanel:
    """Episodes simulated from a :class:`GarnetMDP`, rows episode-major and time-minor.

    Attributes
    ----------
    episode, t, state, action : ndarray of shape (n_rows,), int64
        Episode number, step, transient state index and action of each row.
    reward : ndarray of shape (n_rows,), float64
        1 when the step enters the good outcome, else 0.
    terminal : ndarray of shape (n_rows,), bool
        True when the step enters an outcome (absorbing); a last row with False is censored.
    propensity : ndarray of shape (n_rows,), float64
        Behaviour probability of the logged action (``pi_b(state, action)``).
    severity : ndarray of shape (n_rows,), float64
        Severity score of the row's state.
    group : ndarray of shape (n_episodes,), int64
        Group code of each episode (block of its initial state).
    returns : ndarray of shape (n_episodes,), float64
        ``sum_t gamma^t r_t`` of each episode over its logged rows.
    """

    episode: NDArray[np.int64]
    t: NDArray[np.int64]
    state: NDArray[np.int64]
    action: NDArray[np.int64]
    reward: NDArray[np.float64]
    terminal: NDArray[np.bool_]
    propensity: NDArray[np.float64]
    severity: NDArray[np.float64]
    group: NDArray[np.int64]
    returns: NDArray[np.float64]

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return int(self.returns.shape[0])

    @property
    def lengths(self) -> NDArray[np.int64]:
        """Rows per episode, shape ``(n_episodes,)``."""
        return np.bincount(self.episode, minlength=self.n_episodes).astype(np.int64)

    @property
    def censored(self) -> NDArray[np.bool_]:
        """True for episodes whose last row is not terminal, shape ``(n_episodes,)``."""
        last = np.r_[self.episode[1:] != self.episode[:-1], True]
        return ~self.terminal[last]


class GarnetMDP:
    """A random sparse MDP with absorbing outcomes, clinician-like behaviour and exact values.

    Parameters
    ----------
    config : GarnetConfig, optional
    random_state : int, Generator or None
        Seeds the MDP's structure (transitions, outcomes, behaviour, severity).

    Attributes
    ----------
    P : scipy.sparse.csr_matrix of shape (S * A, S + 2)
        Row ``s * A + a``: next-state distribution; column ``S`` is the good outcome, ``S + 1``
        the bad one.
    reward : ndarray of shape (S, A)
        Expected one-step reward ``P(good | s, a)``.
    mu : ndarray of shape (S,)
        Initial-state distribution.
    state_group : ndarray of shape (S,), int64
        Group of an episode that starts in each state.
    q_star : ndarray of shape (S, A)
        Optimal action values of the infinite-horizon (untruncated) process.
    behavior_policy : ndarray of shape (S, A)
        The clinicians' probabilities.
    severity : ndarray of shape (S,)
        Severity score of each state.
    """

    def __init__(self, config: GarnetConfig | None = None,
                 random_state: RandomState = None) -> None:
        self.config = config or GarnetConfig()
        rng = check_random_state(random_state)
        self._build(rng)

    # ------------------------------------------------------------------ construction
    def _build(self, rng: np.random.Generator) -> None:
        cfg = self.config
        S, A, b = cfg.n_states, cfg.n_actions, cfg.n_successors
        x = np.arange(S) / (S - 1)
        log_h = (math.log(cfg.hazard_min)
                 + (math.log(cfg.hazard_max) - math.log(cfg.hazard_min)) * np.sqrt(x))
        hazard = np.exp(log_h[:, None] + cfg.hazard_action_sd * rng.standard_normal((S, A)))
        hazard = np.clip(hazard, 1e-3, 0.95)
        quality = 0.3 + 1.2 * np.sin(3.0 * np.pi * x) + cfg.quality_sd * rng.standard_normal(S)
        logit_good = quality[:, None] + cfg.action_effect_sd * rng.standard_normal((S, A))
        p_good = 1.0 / (1.0 + np.exp(-logit_good))
        # successors: b draws in a window around a per-action shifted centre (reflected at ends)
        w = max(1, math.ceil(cfg.locality * S))
        centre = (np.arange(S)[:, None]
                  + np.rint(cfg.drift_sd * w * rng.standard_normal((S, A)))).astype(np.int64)
        succ = centre[:, :, None] + rng.integers(-w, w + 1, size=(S, A, b))
        succ = np.abs(succ)
        succ = (S - 1) - np.abs((S - 1) - succ)
        succ = np.clip(succ, 0, S - 1)
        wts = rng.gamma(1.0, size=(S, A, b))
        wts /= wts.sum(axis=2, keepdims=True)
        wts *= (1.0 - hazard)[:, :, None]
        rows = np.repeat(np.arange(S * A), b)
        P = sp.coo_matrix((wts.ravel(), (rows, succ.ravel())), shape=(S * A, S + 2)).tocsr()
        absorb = sp.csr_matrix(
            (np.r_[(hazard * p_good).ravel(), (hazard * (1.0 - p_good)).ravel()],
             (np.r_[np.arange(S * A), np.arange(S * A)],
              np.r_[np.full(S * A, S), np.full(S * A, S + 1)])), shape=(S * A, S + 2))
        P = (P + absorb).tocsr()
        P.sum_duplicates()
        P.sort_indices()
        self.P = P
        self._Pt = P[:, :S].tocsr()
        self.reward = (hazard * p_good).reshape(S, A)
        self._reward_bad = (hazard * (1.0 - p_good)).reshape(S, A)
        self.hazard = hazard
        mu = rng.dirichlet(np.full(S, cfg.init_concentration))
        self.mu = mu
        self.state_group = (np.arange(S) * cfg.n_groups) // S
        # optimal values (policy iteration with sparse solves)
        self.q_star, self.v_star = self._policy_iteration()
        # clinicians: softmax((Q* + habit) / (tau_s * spread_s)), small probabilities removed
        spread = self.q_star.std(axis=1) + 1e-12
        pref = self.q_star + cfg.behavior_bias_sd * spread[:, None] * rng.standard_normal((S, A))
        tau = np.exp(rng.uniform(math.log(cfg.tau_min), math.log(cfg.tau_max), size=S))
        z = (pref - pref.max(axis=1, keepdims=True)) / (tau * spread)[:, None]
        pb = np.exp(z)
        pb /= pb.sum(axis=1, keepdims=True)
        self.behavior_policy = _floor(pb, cfg.behavior_floor)
        self.tau = tau
        # severity: log-odds of the bad outcome under current practice, plus per-state noise
        Pb = self._p_pi(self.behavior_policy)
        rbad = (self.behavior_policy * self._reward_bad).sum(axis=1)
        p_bad = spsolve((sp.identity(S, format="csc") - Pb).tocsc(), rbad)
        p_bad = np.clip(p_bad, 1e-4, 1 - 1e-4)
        self.p_bad_behavior = p_bad
        self.severity = np.log(p_bad / (1 - p_bad)) + cfg.severity_noise * rng.standard_normal(S)

    def _p_pi(self, pi: NDArray[np.float64]) -> sp.csr_matrix:
        """Transient transition matrix under ``pi``, shape ``(S, S)``."""
        S, A = pi.shape
        pi_sp = sp.csr_matrix(pi.reshape(1, -1))
        nz = pi_sp.indices
        Pi = sp.csr_matrix((pi_sp.data, (nz // A, nz)), shape=(S, S * A))
        return (Pi @ self._Pt).tocsr()

    def _policy_iteration(self, max_iter: int = 200) -> tuple[NDArray[np.float64],
                                                              NDArray[np.float64]]:
        S, A = self.config.n_states, self.config.n_actions
        g = self.config.gamma
        act = self.reward.argmax(axis=1)
        eye = sp.identity(S, format="csc")
        for _ in range(max_iter):
            rows = np.arange(S) * A + act
            v = spsolve((eye - g * self._Pt[rows]).tocsc(), self.reward[np.arange(S), act])
            q = self.reward + g * (self._Pt @ v).reshape(S, A)
            best = q.max(axis=1)
            # keep the current action unless another is better by more than round-off
            keep = q[np.arange(S), act] >= best - 1e-12
            new = np.where(keep, act, q.argmax(axis=1))
            if np.array_equal(new, act):
                return q, v
            act = new
        raise RuntimeError("Policy iteration did not converge.")  # pragma: no cover

    # ------------------------------------------------------------------ values
    @property
    def n_states(self) -> int:
        """Transient states ``S``."""
        return self.config.n_states

    @property
    def n_actions(self) -> int:
        """Actions ``A``."""
        return self.config.n_actions

    def check_policy(self, pi: Any, name: str = "policy") -> NDArray[np.float64]:
        """Validate a policy table: shape ``(S, A)``, entries >= 0, rows summing to 1."""
        p = np.asarray(pi, dtype=np.float64)
        S, A = self.n_states, self.n_actions
        if p.shape != (S, A):
            raise PolicyError(f"{name} must have shape ({S}, {A}), got {p.shape}.")
        if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
            raise PolicyError(f"{name} must hold probabilities >= 0 summing to 1 in every row.")
        return p

    def state_values(self, pi: Any, horizon: int | None = -1) -> NDArray[np.float64]:
        """Exact value of each state at ``t = 0``, shape ``(S,)``.

        Parameters
        ----------
        pi : array-like of shape (S, A)
        horizon : int, None or -1
            -1 (default): the configured ``max_horizon``, the value of the logged window
            ``V_H = sum_{t < H} gamma^t r_t`` by backward recursion
            ``V_k = r_pi + gamma P_pi V_{k+1}``, ``V_H = 0`` (H sparse mat-vecs). ``None``: the
            untruncated process, ``(I - gamma P_pi) V = r_pi`` by a sparse solve (finite also for
            gamma = 1, since every pair has a positive hazard).
        """
        p = self.check_policy(pi)
        r_pi = (p * self.reward).sum(axis=1)
        P_pi = self._p_pi(p)
        g = self.config.gamma
        if horizon is None:
            eye = sp.identity(self.n_states, format="csc")
            return np.asarray(spsolve((eye - g * P_pi).tocsc(), r_pi), dtype=np.float64)
        H = self.config.max_horizon if horizon == -1 else int(horizon)
        v = np.zeros(self.n_states)
        for _ in range(H):
            v = r_pi + g * (P_pi @ v)
        return v

    def value(self, pi: Any, horizon: int | None = -1) -> float:
        """Exact value ``mu^T V`` over the initial-state distribution (see :meth:`state_values`)."""
        return float(self.mu @ self.state_values(pi, horizon))

    def group_values(self, pi: Any, horizon: int | None = -1) -> dict[str, float]:
        """Exact value per group ``g0, g1, ...``: ``mu_g^T V``, ``mu`` restricted to the group."""
        v = self.state_values(pi, horizon)
        out = {}
        for g in range(self.config.n_groups):
            m = self.mu * (self.state_group == g)
            out[f"g{g}"] = float(m @ v / m.sum())
        return out

    def occupancy(self, pi: Any, horizon: int | None = -1) -> NDArray[np.float64]:
        """Discounted expected visits ``sum_{t<H} gamma^t P(s_t = s)`` under ``pi``, shape (S,)."""
        p = self.check_policy(pi)
        P_pi = self._p_pi(p)
        g = self.config.gamma
        H = self.config.max_horizon if horizon == -1 else horizon
        if H is None:
            eye = sp.identity(self.n_states, format="csc")
            return np.asarray(spsolve((eye - g * P_pi).T.tocsc(), self.mu))
        d = self.mu.copy()
        out = np.zeros(self.n_states)
        for _ in range(int(H)):
            out += d
            d = g * (P_pi.T @ d)
        return out

    def value_gradient(self, pi: Any) -> NDArray[np.float64]:
        """Derivative of the logged-window value with respect to every transition probability.

        ``G[(s, a), s'] = sum_{t < H} gamma^t d_t(s, a) h_t(s')`` for each stored entry of
        :attr:`P`, with ``d_t(s, a) = P_pi(s_t = s) pi(a | s)`` and ``h_t(s') = gamma V_{t+1}(s')``
        for a transient ``s'``, 1 for *good* and 0 for *bad* (the reward of the entry): moving
        probability ``delta`` from one successor of ``(s, a)`` to another changes the value by
        ``sum_{s'} delta(s') G[(s, a), s']`` to first order.

        Parameters
        ----------
        pi : array-like of shape (S, A)

        Returns
        -------
        ndarray of shape (P.nnz,)
            Aligned with ``P.data`` (CSR order).
        """
        p = self.check_policy(pi)
        g = self.config.gamma
        P_pi = self._p_pi(p)
        rows = self._entry_rows
        grad = np.zeros(self.P.nnz)
        y = self.mu.copy()  # gamma^t P_pi(s_t = s)
        for h in self._entry_values(p):
            grad += (y[:, None] * p).ravel()[rows] * h
            y = g * (P_pi.T @ y)
        return grad

    def _entry_values(self, p: NDArray[np.float64]) -> Iterator[NDArray[np.float64]]:
        """``h_t`` at every stored entry of :attr:`P` for ``t = 0 .. H-1``, each ``(P.nnz,)``.

        ``h_t(s') = gamma V_{t+1}(s')`` for a transient ``s'`` (``V_H = 0``, backward recursion
        over the logged window; only the ``(H, S)`` values are stored), 1 for *good* (its
        reward) and 0 for *bad*.
        """
        S, H, g = self.n_states, self.config.max_horizon, self.config.gamma
        P_pi = self._p_pi(p)
        r_pi = (p * self.reward).sum(axis=1)
        v_next = np.zeros((H, S))  # v_next[t] = V_{t+1}
        for t in range(H - 2, -1, -1):
            v_next[t] = r_pi + g * (P_pi @ v_next[t + 1])
        cols = self.P.indices
        transient = cols < S
        col_t = np.minimum(cols, S - 1)
        good = (cols == S).astype(np.float64)
        for t in range(H):
            yield np.where(transient, g * v_next[t][col_t], good)

    @cached_property
    def _entry_rows(self) -> NDArray[np.int64]:
        """The (state, action) row of every stored entry of :attr:`P`, shape ``(P.nnz,)``."""
        return np.repeat(np.arange(self.P.shape[0]), np.diff(self.P.indptr))

    def _pair_variance(self, vals: NDArray[np.float64]) -> NDArray[np.float64]:
        """``Var_{s' ~ P(. | s, a)} vals(s')`` per pair, shape ``(S A,)``.

        ``vals`` is aligned with ``P.data`` (one value per stored successor).
        """
        rows, n = self._entry_rows, self.P.shape[0]
        mean = np.bincount(rows, weights=self.P.data * vals, minlength=n)
        second = np.bincount(rows, weights=self.P.data * vals**2, minlength=n)
        return np.asarray(np.maximum(second - mean**2, 0.0), dtype=np.float64)

    def efficiency_bound(self, pi: Any, behavior: Any = None,
                         model: Literal["homogeneous", "markov", "sequential"] = "homogeneous"
                         ) -> EfficiencyBound:
        """Efficiency bound of the logged-window value of ``pi``: the least asymptotic variance.

        No regular estimator of :meth:`value` from ``n`` episodes logged under ``behavior`` has
        an asymptotic variance below ``variance / n``, in the model the estimator assumes. With
        ``h_t(s') = 1[s' = good] + gamma V_{t+1}(s')`` (0 for *bad*) and
        ``sigma_t^2(s, a) = Var_{s' ~ P(. | s, a)} h_t(s')``, the three models are
        (``Var_mu V_0(s_0)`` is added to each):

        * ``"homogeneous"``: a Markov decision process with the same dynamics at every step
          (what the stationary and window tables assume; the Garnet truth). The variance of the
          maximum-likelihood plug-in, ``sum_{s,a} Var_{s'} G_{sa}(s') / N_b(s, a)`` with ``G``
          the :meth:`value_gradient` and ``N_b(s, a) = sum_{t<H} P_b(s_t = s) b(a | s)`` the
          expected logged visits per episode (Billingsley 1961; Yin & Wang 2020).
        * ``"markov"``: Markov dynamics that may change with the step (the per-step table,
          marginalised importance sampling): ``sum_t gamma^{2t} sum_{s,a} d^pi_t(s, a)^2 /
          d^b_t(s, a) sigma_t^2(s, a)`` (Kallus & Uehara 2020; Yin & Wang 2020).
        * ``"sequential"``: no Markov assumption, only sequential ignorability (what
          per-decision DR and WDR use): ``sum_t gamma^{2t} E_b[rho_{0:t}^2 sigma_t^2(s_t,
          a_t)]``, the variance of DR with the exact Q-function (Jiang & Li 2016, Theorem 2),
          computed by a forward recursion of the squared cumulative weights.

        Parameters
        ----------
        pi : array-like of shape (S, A)
        behavior : array-like of shape (S, A), optional
            Default: :attr:`behavior_policy`.
        model : {"homogeneous", "markov", "sequential"}, default="homogeneous"

        Returns
        -------
        EfficiencyBound
        """
        check_param(model, "model", "GarnetMDP.efficiency_bound",
                    choices=("homogeneous", "markov", "sequential"))
        p = self.check_policy(pi)
        b = self.behavior_policy if behavior is None else self.check_policy(behavior, "behavior")
        S, A, H, g = self.n_states, self.n_actions, self.config.max_horizon, self.config.gamma
        v0 = self.state_values(p)
        init = float(self.mu @ v0**2 - (self.mu @ v0) ** 2)
        bflat = b.ravel()
        P_b = self._p_pi(b)
        if model == "homogeneous":
            var_row = self._pair_variance(self.value_gradient(p))
            x = self.mu.copy()
            visits = np.zeros(S)
            for _ in range(H):  # undiscounted expected visits: the data count rows
                visits += x
                x = P_b.T @ x
            n_bar = (visits[:, None] * b).ravel()
            needed = var_row > 0
            missing = needed & (n_bar <= 0)
            ok = needed & ~missing
            trans = float(np.sum(var_row[ok] / n_bar[ok]))
            return EfficiencyBound(value=float(self.mu @ v0), initial=init, transitions=trans,
                                   n_unidentified=int(missing.sum()), model=model)
        # per-step terms: sigma_t^2(s, a) from h_t, weights from a forward recursion
        P_pi = self._p_pi(p)
        pflat = p.ravel()
        ratio2 = np.divide(pflat**2, bflat, out=np.zeros_like(pflat), where=bflat > 0)
        unsupported = (pflat > 0) & (bflat <= 0)
        P_tr = self._Pt  # (S A, S): transient part
        x_pi, x_b, m = self.mu.copy(), self.mu.copy(), self.mu.copy()
        trans = 0.0
        missing = np.zeros(S * A, dtype=bool)
        for t, h in enumerate(self._entry_values(p)):
            sig2 = self._pair_variance(h)
            if model == "markov":
                d_pi = (x_pi[:, None] * p).ravel()
                d_b = (x_b[:, None] * b).ravel()
                need = (d_pi > 0) & (sig2 > 0)
                miss = need & (d_b <= 0)
                ok = need & ~miss
                trans += g ** (2 * t) * float(np.sum(d_pi[ok] ** 2 / d_b[ok] * sig2[ok]))
                x_pi = P_pi.T @ x_pi
                x_b = P_b.T @ x_b
            else:
                u = m.repeat(A) * ratio2
                miss = (m.repeat(A) > 0) & unsupported & (sig2 > 0)
                trans += g ** (2 * t) * float(u @ sig2)
                m = P_tr.T @ u
            missing |= miss
        return EfficiencyBound(value=float(self.mu @ v0), initial=init, transitions=trans,
                               n_unidentified=int(missing.sum()), model=model)

    # ------------------------------------------------------------------ simulation
    def simulate(self, n_episodes: int, policy: Any = None,
                 random_state: RandomState = None, severity_row_noise: float = 0.0
                 ) -> GarnetPanel:
        """Simulate episodes under a policy, all episodes stepped together.

        Parameters
        ----------
        n_episodes : int
        policy : array-like of shape (S, A), optional
            Default: the behaviour policy. ``propensity`` always holds the behaviour
            probability of the logged action.
        random_state : int, Generator or None
        severity_row_noise : float
            Standard deviation of extra measurement noise of the severity score per row.

        Returns
        -------
        GarnetPanel
        """
        check_param(n_episodes, "n_episodes", "GarnetMDP.simulate", kind=int, low=1,
                    expected="an int >= 1")
        rng = check_random_state(random_state)
        pi = self.behavior_policy if policy is None else self.check_policy(policy)
        S, A, H, g = self.n_states, self.n_actions, self.config.max_horizon, self.config.gamma
        cum_pi = np.cumsum(pi, axis=1)
        P = self.P
        counts = np.diff(P.indptr)
        row_of = np.repeat(np.arange(P.shape[0]), counts)
        cs = np.cumsum(P.data)
        before = np.r_[0.0, cs][P.indptr[:-1]]
        # within-row CDF shifted by the row number: one sorted array for every row
        glob = row_of + (cs - np.repeat(before, counts))
        s = rng.choice(S, size=n_episodes, p=self.mu)
        group = self.state_group[s].astype(np.int64)
        ep = np.arange(n_episodes)
        parts: list[tuple[NDArray[Any], ...]] = []
        for t in range(H):
            if ep.size == 0:
                break
            u = rng.random(ep.size)
            a = (u[:, None] > cum_pi[s]).sum(axis=1)
            a = np.minimum(a, A - 1)
            k = s * A + a
            pos = np.searchsorted(glob, k + rng.random(ep.size), side="right")
            pos = np.clip(pos, P.indptr[k], P.indptr[k + 1] - 1)
            nxt = P.indices[pos]
            parts.append((ep, np.full(ep.size, t), s, a, nxt))
            alive = nxt < S
            ep, s = ep[alive], nxt[alive]
        e_all, t_all, s_all, a_all, n_all = (np.concatenate(c) for c in zip(*parts, strict=True))
        order = np.lexsort((t_all, e_all))
        e_all, t_all, s_all, a_all, n_all = (c[order] for c in (e_all, t_all, s_all, a_all,
                                                                 n_all))
        reward = (n_all == S).astype(np.float64)
        returns = np.bincount(e_all, weights=reward * g ** t_all.astype(np.float64),
                              minlength=n_episodes)
        sev = self.severity[s_all]
        if severity_row_noise > 0:
            sev = sev + severity_row_noise * rng.standard_normal(sev.size)
        return GarnetPanel(episode=e_all.astype(np.int64), t=t_all.astype(np.int64),
                           state=s_all.astype(np.int64), action=a_all.astype(np.int64),
                           reward=reward, terminal=n_all >= S,
                           propensity=self.behavior_policy[s_all, a_all], severity=sev,
                           group=group, returns=np.asarray(returns, dtype=np.float64))


@dataclass(frozen=True)
class EfficiencyBound:
    """The efficiency bound of one policy's value (:meth:`GarnetMDP.efficiency_bound`).

    Attributes
    ----------
    value : float
        The exact logged-window value.
    initial : float
        Per-episode variance from the initial state, ``Var_mu(V_0(s_0))``.
    transitions : float
        Per-episode variance from estimating the transitions (finite: pairs the behaviour never
        logs are counted in ``n_unidentified`` instead).
    n_unidentified : int
        (state, action) pairs whose dynamics the value depends on but the behaviour never
        takes: the value is not identified from the data there, so no finite bound exists.
    model : str
        The model the bound assumes (``"homogeneous"``, ``"markov"`` or ``"sequential"``).
    """

    value: float
    initial: float
    transitions: float
    n_unidentified: int = 0
    model: str = "homogeneous"

    @property
    def variance(self) -> float:
        """Per-episode asymptotic variance (``inf`` if the value is not identified)."""
        return math.inf if self.n_unidentified else self.initial + self.transitions

    def sd(self, n_episodes: int) -> float:
        """Smallest standard deviation of a regular estimator from ``n_episodes`` episodes."""
        return math.sqrt(self.variance / n_episodes)

    def relative_sd(self, n_episodes: int) -> float:
        """:meth:`sd` as a share of the value."""
        return self.sd(n_episodes) / abs(self.value)


def _floor(p: NDArray[np.float64], floor: float) -> NDArray[np.float64]:
    """Zero probabilities below ``floor`` (never below a row's largest) and renormalise."""
    out = np.where(p >= np.minimum(floor, p.max(axis=1, keepdims=True)), p, 0.0)
    return np.asarray(out / out.sum(axis=1, keepdims=True), dtype=np.float64)


def _softmax_on(scores: NDArray[np.float64], mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    z = np.where(mask, scores, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    e = np.where(mask, np.exp(z), 0.0)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def garnet_target_policies(mdp: GarnetMDP) -> dict[str, NDArray[np.float64]]:
    """The target-policy families of the test bed, each an ``(S, A)`` table.

    ``behavior``; ``optimal`` (deterministic argmax of ``Q*``, may leave the clinicians'
    support); ``optimal_supported`` (argmax of ``Q*`` among the actions clinicians use);
    ``soft_optimal`` (softmax of ``Q*`` over those actions, temperature 0.1 x the state's spread);
    ``mixture_30`` / ``mixture_70`` (30% / 70% ``optimal_supported``, the rest behaviour);
    ``tilted`` (behaviour tilted by its own advantage, ``pi_b exp(A^b / (0.5 spread))``);
    ``unsupported`` (70% behaviour, 30% spread over actions clinicians never use in the state).
    Probabilities below ``config.policy_floor`` are removed.
    """
    S, A = mdp.n_states, mdp.n_actions
    pb = mdp.behavior_policy
    sup = pb > 0
    q = mdp.q_star
    spread = q.std(axis=1, keepdims=True) + 1e-12
    eye = np.eye(A)
    opt = eye[q.argmax(axis=1)]
    opt_sup = eye[np.where(sup, q, -np.inf).argmax(axis=1)]
    soft = _softmax_on(q / (0.1 * spread), sup)
    # behaviour's own Q (untruncated) for the advantage tilt
    v_b = mdp.state_values(pb, horizon=None)
    q_b = mdp.reward + mdp.config.gamma * (mdp._Pt @ v_b).reshape(S, A)
    adv = q_b - v_b[:, None]
    spread_b = np.sqrt((pb * adv**2).sum(axis=1, keepdims=True)) + 1e-12
    tilted = _softmax_on(np.log(np.where(sup, pb, 1.0)) + adv / (0.5 * spread_b), sup)
    never = ~sup
    has_never = never.any(axis=1, keepdims=True)
    uns = np.where(has_never, 0.7 * pb + 0.3 * never / np.maximum(never.sum(1, keepdims=True), 1),
                   pb)
    fams = {"behavior": pb, "optimal": opt, "optimal_supported": opt_sup, "soft_optimal": soft,
            "mixture_30": 0.7 * pb + 0.3 * opt_sup, "mixture_70": 0.3 * pb + 0.7 * opt_sup,
            "tilted": tilted, "unsupported": uns}
    floor = mdp.config.policy_floor
    return {k: (v if k == "behavior" else _floor(v, floor)) for k, v in fams.items()}


def garnet_panel(config: GarnetConfig | None, n_episodes: int, seed: int
                 ) -> tuple[GarnetMDP, GarnetPanel]:
    """The MDP and the behaviour panel that ``equicare synth --sim garnet --seed SEED`` writes.

    The MDP's structure is seeded by ``seed``, the episodes by ``SeedSequence([seed, 1])``.
    """
    mdp = GarnetMDP(config, random_state=seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    return mdp, mdp.simulate(n_episodes, random_state=rng)


def state_labels(n_states: int) -> list[str]:
    """Labels of the ``state`` column: ``s000`` ... (zero-padded, so sorted = index order)."""
    width = len(str(n_states - 1))
    return [f"s{i:0{width}d}" for i in range(n_states)]


def garnet_state_index(dataset: Any, column: str = "state") -> NDArray[np.int64]:
    """MDP state index of each row of a loaded Garnet panel, shape ``(n_steps,)``."""
    j = list(dataset.categorical_names).index(column)
    levels = np.asarray([int(str(lv)[1:]) for lv in dataset.categorical_levels[j]])
    return np.asarray(levels[dataset.categorical[:, j]], dtype=np.int64)


def garnet_policy_table(mdp: GarnetMDP, dataset: Any, policy: Any,
                        column: str = "state", usual_care: str = "stored"
                        ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """The ``(S, A)`` table of a policy that reads panel rows, for exact evaluation.

    The policy is queried at one row of every state present in ``dataset`` (a one-row episode
    per state, so history-free policies only); states absent from ``dataset`` get the
    clinicians' probabilities (no learner has seen them). A policy that leaves part of its mass
    to current practice (``deferred_mask``, e.g. a cell policy fitted with the known baseline)
    gets the clinicians' true probabilities over those actions, scaled to that mass: the
    clinicians choose there. With ``usual_care="deployed"``, the states where a policy leaves
    the whole row to current practice (``deferred_rows``: usual-care rules, the selection's
    fallback) get the clinicians' true probabilities too; with ``"stored"`` (the default) they
    get the estimate of practice stored with the policy, as ``action_probs`` gives it.

    Returns
    -------
    table : ndarray of shape (S, A)
    seen : ndarray of shape (S,), bool
        States present in ``dataset``.
    """
    from dataclasses import replace as dc_replace

    s = garnet_state_index(dataset, column)
    _, first = np.unique(s, return_index=True)
    rows = np.sort(first)
    probe = dc_replace(
        dataset, states=dataset.states[rows], actions=dataset.actions[rows],
        reward_components=dataset.reward_components[rows],
        terminals=np.ones(rows.size, dtype=bool),
        episode_offsets=np.arange(rows.size + 1, dtype=np.int64),
        episode_ids=np.arange(rows.size), times=np.zeros(rows.size, dtype=np.int64),
        groups={k: v[dataset.episode_index[rows]] for k, v in dataset.groups.items()},
        categorical=None if dataset.categorical is None else dataset.categorical[rows],
        behavior_prob=None if dataset.behavior_prob is None else dataset.behavior_prob[rows],
        need=None, mediators=None, extras={}, _cache={})
    probs = np.asarray(policy.action_probs(probe), dtype=np.float64)
    deferred = policy.deferred_mask(probe) if hasattr(policy, "deferred_mask") else None
    if deferred is not None:  # mass left to current practice: the clinicians' own choice
        b = mdp.behavior_policy[s[rows]] * deferred
        z = b.sum(axis=1, keepdims=True)
        rest = (probs * deferred).sum(axis=1, keepdims=True)
        probs = np.where(deferred, rest * b / np.where(z > 0, z, 1.0), probs)
        probs = probs / probs.sum(axis=1, keepdims=True)
    from equicare.utils import check_param

    check_param(usual_care, "usual_care", "garnet_policy_table", choices=("stored", "deployed"))
    if usual_care == "deployed" and hasattr(policy, "deferred_rows"):
        whole = policy.deferred_rows(probe)
        if whole is not None:  # the clinicians decide the whole row
            probs[whole] = mdp.behavior_policy[s[rows][whole]]
    table = mdp.behavior_policy.copy()
    table[s[rows]] = probs
    seen = np.zeros(mdp.n_states, dtype=bool)
    seen[s[rows]] = True
    return table, seen
