"""Mediated Markov decision processes with exact ground truth for dynamic mediation analysis.

Each step of a mediated MDP has a state ``S_t``, an action ``A_t``, a mediator ``M_t`` drawn after
the action, a reward ``R_t`` and a next state ``S_{t+1}``::

    A ~ pi_b(. | S),  M ~ p_m(. | S, A),  R ~ r(S, A, M),  S' ~ p(. | S, A, M).

For finite state, action and mediator sets, :meth:`DiscreteMediationMDP.exact_etas` computes the
long-run average reward of the five processes of Ge, Wang, Shi, Wu and Song (ICML 2023, "A
Reinforcement Learning Framework for Dynamic Mediation Analysis") exactly, from the stationary
distributions of the state chains (no Monte Carlo):

* ``pi_e``: the target policy throughout;
* ``pi_e_a0``: states and mediators evolve under ``pi_e``, rewards take the control action;
* ``pi_e_a0star``: states evolve under ``pi_e``, rewards take action and mediator under control;
* ``G``: states move with the control action but a mediator drawn as if ``pi_e`` had acted,
  rewards take action and mediator under control;
* ``a0``: the control policy throughout.

:func:`toy1` and :func:`toy2` are the paper's two toy models; :meth:`DiscreteMediationMDP.sample`
draws trajectories (``n_episodes`` x ``horizon``) under the behaviour (or any) policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE, RandomState, check_random_state

__all__ = [
    "DiscreteMediationMDP",
    "MediationSample",
    "ETA_KEYS",
    "EFFECT_KEYS",
    "toy1",
    "toy2",
    "toy_target",
    "random_mediation_mdp",
    "effects_from_etas",
]

#: Names of the five long-run average rewards (Contract 6 ``eta`` keys).
ETA_KEYS = ("pi_e", "pi_e_a0", "pi_e_a0star", "G", "a0")
#: Names of the effects (Contract 6).
EFFECT_KEYS = ("ide", "ime", "dde", "dme", "total")

PolicySpec = int | ArrayLike | Callable[[NDArray[np.float64]], ArrayLike]


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


def _stationary(P: NDArray[np.float64]) -> NDArray[np.float64]:
    """Stationary distribution of a row-stochastic matrix ``P`` (unique chain assumed).

    Solves ``d (P - I) = 0, sum(d) = 1`` by least squares, which is exact for an irreducible chain.
    """
    n = P.shape[0]
    lhs = np.vstack([(P - np.eye(n)).T, np.ones((1, n))])
    rhs = np.zeros(n + 1)
    rhs[-1] = 1.0
    d, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
    d = np.clip(d, 0.0, None)
    return d / d.sum()


def _categorical(probs: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.int64]:
    """One draw per row of ``probs`` (shape ``(n, k)``) by inverse CDF, vectorised."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


@dataclass(frozen=True, eq=False)
class MediationSample:
    """Trajectories drawn from a mediated MDP, one row per transition.

    Rows of an episode are contiguous and in time order. The attribute names are the ones the
    estimators of :mod:`equicare.causal` read.

    Parameters
    ----------
    states : ndarray of shape (n, d)
    actions : ndarray of shape (n,), int64
    mediators : ndarray of shape (n, m)
    rewards : ndarray of shape (n,)
    next_states : ndarray of shape (n, d)
    episode_index : ndarray of shape (n,), int64
    time : ndarray of shape (n,), int64
    behavior_prob : ndarray of shape (n,)
        Probability of the logged action under the policy that generated the data.
    state_index, next_state_index : ndarray of shape (n,), int64
        Index of the (next) state in the model's state list.
    """

    states: NDArray[np.float64]
    actions: NDArray[np.int64]
    mediators: NDArray[np.float64]
    rewards: NDArray[np.float64]
    next_states: NDArray[np.float64]
    episode_index: NDArray[np.int64]
    time: NDArray[np.int64]
    behavior_prob: NDArray[np.float64]
    state_index: NDArray[np.int64]
    next_state_index: NDArray[np.int64]

    @property
    def n_steps(self) -> int:
        """Number of transitions."""
        return int(self.actions.shape[0])

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return int(self.episode_index.max()) + 1 if self.n_steps else 0

    def to_frame(self) -> pd.DataFrame:
        """Panel as in Contract 1: ``episode, time, s0.., action, m0.., reward, propensity``.

        The last state of each episode is not a row of the panel (it has no action), so a table
        built from this frame yields ``horizon - 1`` transitions per episode.
        """
        cols: dict[str, Any] = {"episode": self.episode_index, "time": self.time}
        for j in range(self.states.shape[1]):
            cols[f"s{j}"] = self.states[:, j]
        cols["action"] = self.actions
        for j in range(self.mediators.shape[1]):
            cols[f"m{j}"] = self.mediators[:, j]
        cols["reward"] = self.rewards
        cols["propensity"] = self.behavior_prob
        return pd.DataFrame(cols)


@dataclass(frozen=True, eq=False)
class DiscreteMediationMDP:
    """A mediated MDP with finite state, action and mediator sets.

    Parameters
    ----------
    init : array of shape (n_states,)
        Distribution of the first state.
    behavior : array of shape (n_states, n_actions)
        Behaviour policy ``pi_b(a | s)``.
    mediator : array of shape (n_states, n_actions, n_mediators)
        Mediator distribution ``p_m(m | s, a)``.
    reward_mean : array of shape (n_states, n_actions, n_mediators)
        ``E[R | s, a, m]``.
    transition : array of shape (n_states, n_actions, n_mediators, n_states)
        ``p(s' | s, a, m)``.
    state_values : array of shape (n_states, d), optional
        Feature vector of each state (default: the state index as one column).
    mediator_values : array of shape (n_mediators, k), optional
        Value of each mediator level (default: the level index as one column).
    reward_dist : {"normal", "bernoulli"}
        ``"bernoulli"``: ``R = reward_scale * Bernoulli(reward_mean / reward_scale)``;
        ``"normal"``: ``R = reward_mean + reward_scale * N(0, 1)``.
    reward_scale : float
    name : str
    """

    init: NDArray[np.float64]
    behavior: NDArray[np.float64]
    mediator: NDArray[np.float64]
    reward_mean: NDArray[np.float64]
    transition: NDArray[np.float64]
    state_values: NDArray[np.float64] | None = None
    mediator_values: NDArray[np.float64] | None = None
    reward_dist: Literal["normal", "bernoulli"] = "normal"
    reward_scale: float = 1.0
    name: str = "discrete"
    _lookup: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        arrs = {k: np.asarray(getattr(self, k), dtype=np.float64)
                for k in ("init", "behavior", "mediator", "reward_mean", "transition")}
        S, A = arrs["behavior"].shape if arrs["behavior"].ndim == 2 else (0, 0)
        K = arrs["mediator"].shape[-1] if arrs["mediator"].ndim == 3 else 0
        shapes = {"init": (S,), "behavior": (S, A), "mediator": (S, A, K),
                  "reward_mean": (S, A, K), "transition": (S, A, K, S)}
        for k, shp in shapes.items():
            if arrs[k].shape != shp or S == 0 or A == 0 or K == 0:
                raise InvalidParameterError(PARAM_MESSAGE.format(
                    name=k, owner=owner, expected=f"an array of shape {shp}",
                    got=arrs[k].shape))
        for k in ("init", "behavior", "mediator", "transition"):
            a = arrs[k]
            if (a < 0).any() or np.abs(a.sum(axis=-1) - 1.0).max() > 1e-8:
                raise InvalidParameterError(PARAM_MESSAGE.format(
                    name=k, owner=owner, expected="non-negative probabilities summing to 1 "
                    "over the last axis", got="an array that does not"))
        sv = (np.arange(S, dtype=np.float64)[:, None] if self.state_values is None
              else np.asarray(self.state_values, dtype=np.float64).reshape(S, -1))
        mv = (np.arange(K, dtype=np.float64)[:, None] if self.mediator_values is None
              else np.asarray(self.mediator_values, dtype=np.float64).reshape(K, -1))
        if np.unique(sv, axis=0).shape[0] != S:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="state_values", owner=owner,
                                                  expected="distinct rows", got="duplicates"))
        if self.reward_dist not in ("normal", "bernoulli"):
            raise InvalidParameterError(PARAM_MESSAGE.format(name="reward_dist", owner=owner,
                                                  expected="'normal' or 'bernoulli'",
                                                  got=self.reward_dist))
        if not self.reward_scale > 0:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="reward_scale", owner=owner,
                                                  expected="a positive float",
                                                  got=self.reward_scale))
        if self.reward_dist == "bernoulli" and (
                (arrs["reward_mean"] < 0).any()
                or (arrs["reward_mean"] > self.reward_scale + 1e-12).any()):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="reward_mean", owner=owner,
                expected="values in [0, reward_scale] for bernoulli rewards", got="values outside"))
        for k, v in arrs.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "state_values", sv)
        object.__setattr__(self, "mediator_values", mv)

    # ------------------------------------------------------------------ sizes
    @property
    def n_states(self) -> int:
        """Number of states."""
        return int(self.behavior.shape[0])

    @property
    def n_actions(self) -> int:
        """Number of actions."""
        return int(self.behavior.shape[1])

    @property
    def n_mediators(self) -> int:
        """Number of mediator levels."""
        return int(self.mediator.shape[2])

    # ------------------------------------------------------------------ policies
    def state_index(self, states: ArrayLike) -> NDArray[np.int64]:
        """Index of each state feature row in :attr:`state_values`.

        Parameters
        ----------
        states : array of shape (n, d)

        Returns
        -------
        ndarray of shape (n,), int64

        Raises
        ------
        ValueError
            If a row is not one of the model's states.
        """
        assert self.state_values is not None
        x = np.asarray(states, dtype=np.float64).reshape(-1, self.state_values.shape[1])
        hit = np.all(np.abs(x[:, None, :] - self.state_values[None, :, :]) < 1e-9, axis=2)
        if not hit.any(axis=1).all():
            bad = int(np.flatnonzero(~hit.any(axis=1))[0])
            raise InvalidParameterError(
                f"Row {bad} ({x[bad].tolist()}) is not a state of {self.name}.")
        return np.argmax(hit, axis=1).astype(np.int64)

    def policy_table(self, policy: PolicySpec) -> NDArray[np.float64]:
        """Turn a policy into a table ``(n_states, n_actions)``.

        Parameters
        ----------
        policy : int, array of shape (n_states, n_actions) or callable
            A fixed action, a table, or ``f(state_values) -> probabilities``.
        """
        S, A = self.n_states, self.n_actions
        if isinstance(policy, int | np.integer) and not isinstance(policy, bool):
            if not 0 <= int(policy) < A:
                raise InvalidParameterError(PARAM_MESSAGE.format(
                    name="policy", owner="DiscreteMediationMDP", expected=f"an action in [0, {A})",
                    got=policy))
            table = np.zeros((S, A))
            table[:, int(policy)] = 1.0
            return table
        if callable(policy):
            table = np.asarray(policy(self.state_values), dtype=np.float64)  # type: ignore[arg-type]
        else:
            table = np.asarray(policy, dtype=np.float64)
        if table.shape != (S, A) or (table < 0).any() or np.abs(table.sum(1) - 1).max() > 1e-8:
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="policy", owner="DiscreteMediationMDP",
                expected=f"probabilities of shape ({S}, {A}) summing to 1 per state",
                got=f"shape {table.shape}"))
        return table

    def policy_fn(self, policy: PolicySpec) -> Callable[[ArrayLike], NDArray[np.float64]]:
        """Return ``f(states (n, d)) -> probabilities (n, n_actions)`` for the estimators."""
        table = self.policy_table(policy)

        def fn(states: ArrayLike) -> NDArray[np.float64]:
            return table[self.state_index(states)]

        return fn

    # ------------------------------------------------------------------ exact truth
    def _processes(self, target: PolicySpec, control: PolicySpec
                   ) -> dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]:
        """Transition matrix ``(S, S)`` and per-state expected reward ``(S,)`` of each process."""
        pie, pi0 = self.policy_table(target), self.policy_table(control)
        pm, r, p = self.mediator, self.reward_mean, self.transition
        pe_m = np.einsum("sa,sam->sm", pie, pm)               # mediator law under pi_e
        P_e = np.einsum("sa,sam,samt->st", pie, pm, p)
        P_G = np.einsum("sm,sb,sbmt->st", pe_m, pi0, p)        # action a0, mediator as if pi_e
        P_0 = np.einsum("sb,sbm,sbmt->st", pi0, pm, p)
        r_e = np.einsum("sa,sam,sam->s", pie, pm, r)
        r_e0 = np.einsum("sm,sb,sbm->s", pe_m, pi0, r)         # reward at a0, mediator under pi_e
        r_00 = np.einsum("sb,sbm,sbm->s", pi0, pm, r)          # reward at a0, mediator under a0
        return {"pi_e": (P_e, r_e), "pi_e_a0": (P_e, r_e0), "pi_e_a0star": (P_e, r_00),
                "G": (P_G, r_00), "a0": (P_0, r_00)}

    def stationary_distributions(self, target: PolicySpec, control: PolicySpec = 0
                                 ) -> dict[str, NDArray[np.float64]]:
        """Stationary distributions of the ``pi_e``, ``G`` and ``a0`` state chains, each (S,)."""
        proc = self._processes(target, control)
        return {k: _stationary(proc[k][0]) for k in ("pi_e", "G", "a0")}

    def exact_etas(self, target: PolicySpec, control: PolicySpec = 0) -> dict[str, float]:
        """Long-run average reward of the five processes, exactly.

        Parameters
        ----------
        target : int, array of shape (n_states, n_actions) or callable
        control : int, array or callable
            Default: the fixed action 0.

        Returns
        -------
        dict
            Keys :data:`ETA_KEYS`: ``eta_k = sum_s d_k(s) rbar_k(s)`` with ``d_k`` the stationary
            distribution of process ``k``'s state chain.
        """
        out = {}
        for k, (P, rbar) in self._processes(target, control).items():
            out[k] = float(_stationary(P) @ rbar)
        return out

    def exact_effects(self, target: PolicySpec, control: PolicySpec = 0) -> dict[str, float]:
        """IDE, IME, DDE, DME and total effect, exactly (keys :data:`EFFECT_KEYS`)."""
        return effects_from_etas(self.exact_etas(target, control))

    # ------------------------------------------------------------------ sampling
    def sample(self, n_episodes: int, horizon: int, random_state: RandomState = None,
               policy: PolicySpec | None = None) -> MediationSample:
        """Draw ``n_episodes`` trajectories of ``horizon`` transitions each.

        Vectorised over episodes (a loop over the ``horizon`` time steps only).

        Parameters
        ----------
        n_episodes, horizon : int
        random_state : int, Generator or None
        policy : policy spec, optional
            Policy that acts in the data (default: the behaviour policy).

        Returns
        -------
        MediationSample
            ``n_episodes * horizon`` rows.
        """
        for nm, v in (("n_episodes", n_episodes), ("horizon", horizon)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
                raise InvalidParameterError(
                    PARAM_MESSAGE.format(name=nm, owner="DiscreteMediationMDP.sample",
                                                      expected="a positive int", got=v))
        rng = check_random_state(random_state)
        pb = self.behavior if policy is None else self.policy_table(policy)
        N, T = int(n_episodes), int(horizon)
        s_idx = np.empty((T + 1, N), dtype=np.int64)
        a_idx = np.empty((T, N), dtype=np.int64)
        m_idx = np.empty((T, N), dtype=np.int64)
        rew = np.empty((T, N))
        prob = np.empty((T, N))
        s_idx[0] = _categorical(np.broadcast_to(self.init, (N, self.n_states)), rng)
        for t in range(T):
            s = s_idx[t]
            a = _categorical(pb[s], rng)
            m = _categorical(self.mediator[s, a], rng)
            mean = self.reward_mean[s, a, m]
            if self.reward_dist == "bernoulli":
                rew[t] = self.reward_scale * (rng.random(N) < mean / self.reward_scale)
            else:
                rew[t] = mean + self.reward_scale * rng.standard_normal(N)
            s_idx[t + 1] = _categorical(self.transition[s, a, m], rng)
            a_idx[t], m_idx[t], prob[t] = a, m, pb[s, a]
        assert self.state_values is not None and self.mediator_values is not None

        def flat(x: NDArray[Any]) -> NDArray[Any]:
            return np.ascontiguousarray(x.T).reshape(-1)   # episode-major rows

        si, sn = flat(s_idx[:-1]), flat(s_idx[1:])
        return MediationSample(
            states=self.state_values[si], actions=flat(a_idx),
            mediators=self.mediator_values[flat(m_idx)], rewards=flat(rew),
            next_states=self.state_values[sn],
            episode_index=np.repeat(np.arange(N, dtype=np.int64), T),
            time=np.tile(np.arange(T, dtype=np.int64), N), behavior_prob=flat(prob),
            state_index=si, next_state_index=sn)


def effects_from_etas(eta: dict[str, float]) -> dict[str, float]:
    """IDE, IME, DDE, DME and total effect from the five etas (keys :data:`ETA_KEYS`)."""
    return {"ide": eta["pi_e"] - eta["pi_e_a0"], "ime": eta["pi_e_a0"] - eta["pi_e_a0star"],
            "dde": eta["pi_e_a0star"] - eta["G"], "dme": eta["G"] - eta["a0"],
            "total": eta["pi_e"] - eta["a0"]}


# ---------------------------------------------------------------------- the paper's toy models
def _toy(iid_states: bool) -> DiscreteMediationMDP:
    s = np.array([0.0, 1.0])
    a = np.array([0.0, 1.0])
    m = np.array([0.0, 1.0])
    pa1 = _sigmoid(1.0 - 2.0 * s)
    behavior = np.stack([1 - pa1, pa1], axis=1)
    pm1 = _sigmoid(1.0 - 1.5 * s[:, None] + 2.5 * a[None, :])
    mediator = np.stack([1 - pm1, pm1], axis=2)
    reward_mean = 10.0 * _sigmoid(1.0 + 2.0 * s[:, None, None] - a[None, :, None]
                                  - 2.5 * m[None, None, :])
    if iid_states:
        ps1 = np.full((2, 2, 2), 0.2)
    else:
        ps1 = _sigmoid(0.5 + 3.0 * s[:, None, None] - 2.5 * a[None, :, None]
                       - 0.5 * m[None, None, :])
    transition = np.stack([1 - ps1, ps1], axis=3)
    return DiscreteMediationMDP(
        init=np.array([0.5, 0.5]), behavior=behavior, mediator=mediator,
        reward_mean=reward_mean, transition=transition, reward_dist="bernoulli",
        reward_scale=10.0, name="toy2" if iid_states else "toy1")


def toy1() -> DiscreteMediationMDP:
    """Toy example I of Ge et al. (2023): binary state, action and mediator.

    ``S_0 ~ Bern(0.5)``; ``P(A=1|S) = sigma(1 - 2S)``; ``M ~ Bern(sigma(1 - 1.5S + 2.5A))``;
    ``R = 10 Bern(sigma(1 + 2S - A - 2.5M))``; ``S' ~ Bern(sigma(0.5 + 3S - 2.5A - 0.5M))``.
    With :func:`toy_target` and control ``a0 = 0``: IDE -1.27668596, IME -1.22246477,
    DDE -2.98224644, DME -0.08468489.

    Examples
    --------
    >>> from equicare.sim.mediation import toy1, toy_target
    >>> {k: round(v, 6) for k, v in toy1().exact_effects(toy_target(), 0).items()}
    {'ide': -1.276686, 'ime': -1.222465, 'dde': -2.982246, 'dme': -0.084685, 'total': -5.566082}
    """
    return _toy(iid_states=False)


def toy2() -> DiscreteMediationMDP:
    """Toy example II of Ge et al. (2023): as :func:`toy1` but ``S' ~ Bern(0.2)`` i.i.d.

    States do not depend on the past, so there is no state shift: DDE = DME = 0, and a
    point-exposure analysis is right. Truth: IDE -1.13541377, IME -1.16694206.
    """
    return _toy(iid_states=True)


def toy_target() -> NDArray[np.float64]:
    """Target policy of the toy models, ``P(A=1|S) = sigma(1.5 + S)``, as a table ``(2, 2)``."""
    p1 = _sigmoid(1.5 + np.array([0.0, 1.0]))
    return np.stack([1 - p1, p1], axis=1)


def random_mediation_mdp(n_states: int = 4, n_actions: int = 2, n_mediators: int = 3,
                         random_state: RandomState = None, concentration: float = 1.0
                         ) -> DiscreteMediationMDP:
    """Draw a random discrete mediated MDP (Dirichlet rows, normal rewards), for tests.

    Parameters
    ----------
    n_states, n_actions, n_mediators : int
    random_state : int, Generator or None
    concentration : float
        Dirichlet concentration of every probability row (small: near-deterministic).
    """
    rng = check_random_state(random_state)
    S, A, K = n_states, n_actions, n_mediators

    def dirichlet(*shape: int) -> NDArray[np.float64]:
        return rng.dirichlet(np.full(shape[-1], concentration), size=shape[:-1])

    return DiscreteMediationMDP(
        init=dirichlet(S), behavior=0.1 / A + 0.9 * dirichlet(S, A),
        mediator=0.05 / K + 0.95 * dirichlet(S, A, K),
        reward_mean=rng.normal(size=(S, A, K)), transition=dirichlet(S, A, K, S),
        reward_dist="normal", reward_scale=1.0, name="random")
