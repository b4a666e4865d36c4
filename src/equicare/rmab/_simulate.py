"""Vectorised simulation of restless-bandit policies and the Contract-5 plan result.

All seeds run at once: the arms of every seed are stacked into one batch of ``seeds * N`` arms,
each step draws every next state with one uniform per arm, and the policies act on arrays
(top-``b`` selections per seed or per (seed, group) unit via one ``lexsort``). Identical arm
models are solved once; Whittle indices are cached per (model, remaining horizon, state) and
shared by every policy and budget of a :func:`plan` call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.rmab._allocate import allocate_budget
from equicare.rmab._curves import unit_curves
from equicare.rmab._domain import RMABDomain
from equicare.rmab._metrics import gini, se
from equicare.rmab._whittle import check_indexability, index_cells, unique_arms
from equicare.utils import (
    MIN_CELL,
    PARAM_MESSAGE,
    RandomState,
    check_random_state,
    config_from_dict,
    config_to_dict,
)

__all__ = ["PlanConfig", "SimulationResult", "PolicySummary", "PlanResult", "simulate", "plan",
           "POLICIES", "resolve_budget"]

Array = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Policy names understood by :func:`simulate` and :func:`plan`.
POLICIES = ("noact", "random", "opt", "mmr", "mnw", "mnw-eg", "hr-random", "hr-rr")
_EQUITABLE = ("mmr", "mnw", "mnw-eg")
_INDEX_POLICIES = ("opt", *_EQUITABLE)
_FULL_TABLE_CELLS = 400_000

ALL_SUPPRESSED = ("Every group of domain {name!r} is suppressed (fewer than {min_cell} members, "
                  "or hidden so that such a group cannot be recovered by difference): no group "
                  "outcome can be published; plan with a coarser group column.")
BUDGET_MESSAGE = ("The 'budget' parameter of {owner} must be an int in [0, {n}] (actions per step, "
                  "at most the number of arms) or a fraction in [0, 1]. Got {got!r} instead.")


@dataclass(frozen=True, kw_only=True)
class PlanConfig:
    """Settings of the planner (index search, value curves, reference-compatibility flags).

    Parameters
    ----------
    curve : {"index", "reference", "exact", "lp"}
        How group value curves are computed (see :func:`group_value_curves`).
    index_tol : float
        Precision of the Whittle indices (bracket width); the reference uses 0.01.
    index_bounds : (float, float)
        Starting bracket of the index search; the reference uses [-1, 1].
    widen_bounds : bool
        Widen the bracket until it holds every index (``False`` clips, as the reference does).
    planning_gamma : float, optional
        Discount used by the index and the curves (default: the domain's; the reference plans
        with 0.9999 while scoring undiscounted sums).
    redraw_arms : bool
        Draw fresh arms (per-arm noise) for every seed; the reference draws them once, so all
        its seeds share the same arms.
    tie_eps : float
        Indices closer than this count as tied (ties are broken at random); the reference uses
        1e-4.
    round_robin : {"correct", "reference"}
        ``"reference"`` reproduces the reference's round-robin, which never records when an arm
        was acted on and so keeps acting on the same (highest-numbered) high-risk arms.
    check_indexability : bool
        Warn when arm models are not indexable.
    """

    curve: Literal["index", "reference", "exact", "lp"] = "index"
    index_tol: float = 1e-6
    index_bounds: tuple[float, float] = (-1.0, 1.0)
    widen_bounds: bool = True
    planning_gamma: float | None = None
    redraw_arms: bool = True
    tie_eps: float = 0.0
    round_robin: Literal["correct", "reference"] = "correct"
    check_indexability: bool = True

    def __post_init__(self) -> None:
        own = "PlanConfig"
        if self.curve not in ("index", "reference", "exact", "lp"):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="curve", owner=own, expected="one of 'index', 'reference', 'exact', 'lp'",
                got=self.curve))
        if not (isinstance(self.index_tol, float | int) and self.index_tol > 0):
            raise InvalidParameterError(PARAM_MESSAGE.format(name="index_tol", owner=own,
                                                  expected="a float > 0", got=self.index_tol))
        lo, hi = self.index_bounds
        if not lo < hi:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="index_bounds", owner=own,
                                                  expected="(low, high) with low < high",
                                                  got=self.index_bounds))
        object.__setattr__(self, "index_bounds", (float(lo), float(hi)))
        if self.planning_gamma is not None and not 0 < self.planning_gamma <= 1:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="planning_gamma", owner=own,
                                                  expected="a float in (0, 1] or None",
                                                  got=self.planning_gamma))
        if self.tie_eps < 0:
            raise InvalidParameterError(PARAM_MESSAGE.format(name="tie_eps", owner=own,
                                                  expected="a float >= 0", got=self.tie_eps))
        if self.round_robin not in ("correct", "reference"):
            raise InvalidParameterError(PARAM_MESSAGE.format(name="round_robin", owner=own,
                                                  expected="one of 'correct', 'reference'",
                                                  got=self.round_robin))

    @classmethod
    def reference(cls) -> PlanConfig:
        """Every reference quirk switched on (for comparing with the published numbers)."""
        return cls(curve="reference", index_tol=0.01, index_bounds=(-1.0, 1.0),
                   widen_bounds=False, planning_gamma=0.9999, redraw_arms=False, tie_eps=1e-4,
                   round_robin="reference")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (round-trips through :meth:`from_dict`)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanConfig:
        """Rebuild from :meth:`to_dict` output."""
        return config_from_dict(cls, d)


def resolve_budget(budget: int | float, n_arms: int, owner: str = "plan") -> int:
    """Turn an int count or a float fraction into actions per step (``int(N * frac)``)."""
    if isinstance(budget, bool):
        raise InvalidParameterError(BUDGET_MESSAGE.format(owner=owner, n=n_arms, got=budget))
    if isinstance(budget, float | np.floating):
        if not 0.0 <= float(budget) <= 1.0:
            raise InvalidParameterError(BUDGET_MESSAGE.format(owner=owner, n=n_arms, got=budget))
        return int(n_arms * float(budget) + 1e-9)
    if isinstance(budget, int | np.integer) and 0 <= int(budget) <= n_arms:
        return int(budget)
    raise InvalidParameterError(BUDGET_MESSAGE.format(owner=owner, n=n_arms, got=budget))


# --------------------------------------------------------------------------- arm batch

class _ArmBatch:
    """The arms of every seed stacked, with distinct models and a lazy index cache."""

    def __init__(self, domain: RMABDomain, n_seeds: int, seed: int, config: PlanConfig) -> None:
        self.domain = domain
        self.n_seeds = n_seeds
        self.N = domain.n_arms
        self.S = domain.n_states
        self.G = domain.n_groups
        self.config = config
        self.gamma = float(domain.gamma if config.planning_gamma is None
                           else config.planning_gamma)
        if config.redraw_arms and domain._redraw is not None:
            doms = [domain.redraw(np.random.default_rng([seed, 0, i])) for i in range(n_seeds)]
        else:
            doms = [domain] * n_seeds
        self.domains = doms
        if all(x is domain for x in doms):
            # the same arms in every seed: their distinct models, found once, are every seed's
            # (tiling P first held n_seeds copies of every arm's matrices: 25 seeds of 8,000
            # panel arms with 60 states passed 9 GB, with the sort of unique_arms over them)
            one, self.Pt, self.Rt = unique_arms(domain.P, domain.R)
            self.type = np.tile(one, n_seeds)
            R = np.tile(domain.R, (n_seeds, 1))
        else:
            R = np.concatenate([x.R for x in doms])
            self.type, self.Pt, self.Rt = unique_arms(np.concatenate([x.P for x in doms]), R)
        self.init = np.concatenate([d.init for d in doms])
        self.R_arm = R
        self.cdf = np.cumsum(self.Pt, axis=3)  # (K, 2, S, S)
        self.seed_of = np.repeat(np.arange(n_seeds), self.N)
        self.group = np.tile(domain.groups, n_seeds)
        self.unit = self.seed_of * self.G + self.group
        self.table: Array | None = None
        self.cache: dict[int, Array] = {}
        self.full = False
        self.index_seconds = 0.0
        self.checked = False

    def ensure_table(self, horizon: int) -> None:
        """Compute the full index table when it is small (identical arms)."""
        K = self.Pt.shape[0]
        if self.table is not None or K * horizon * self.S > _FULL_TABLE_CELLS:
            return
        t0 = time.perf_counter()
        kk = np.repeat(np.arange(K), horizon * self.S)
        hh = np.tile(np.repeat(np.arange(1, horizon + 1), self.S), K)
        ss = np.tile(np.arange(self.S), K * horizon)
        c = self.config
        self.table = index_cells(self.Pt, self.Rt, kk, ss, hh, self.gamma, tol=c.index_tol,
                                 bounds=c.index_bounds, widen=c.widen_bounds).reshape(
                                     K, horizon, self.S)
        self.index_seconds += time.perf_counter() - t0
        if c.check_indexability and c.widen_bounds and not self.checked:
            check_indexability(self.Pt, self.Rt, self.table, horizon=horizon, gamma=self.gamma,
                               tol=c.index_tol)
            self.checked = True

    def indices(self, states: IntArray, h: int) -> Array:
        """Return the current Whittle index of every arm, shape (seeds * N,)."""
        if self.table is not None and h <= self.table.shape[1]:
            return self.table[self.type, h - 1, states]
        K = self.Pt.shape[0]
        tab = self.cache.get(h)
        if tab is None:
            tab = np.full((K, self.S), np.nan)
            self.cache[h] = tab
        W = tab[self.type, states]
        miss = np.isnan(W)
        if miss.any():
            t0 = time.perf_counter()
            cells = np.unique(np.stack([self.type[miss], states[miss]], axis=1), axis=0)
            c = self.config
            vals = index_cells(self.Pt, self.Rt, cells[:, 0], cells[:, 1],
                               np.full(cells.shape[0], h), self.gamma, tol=c.index_tol,
                               bounds=c.index_bounds, widen=c.widen_bounds)
            tab[cells[:, 0], cells[:, 1]] = vals
            W = tab[self.type, states]
            self.index_seconds += time.perf_counter() - t0
        return W

    def step(self, states: IntArray, act: NDArray[np.bool_], u: Array) -> IntArray:
        """Next states given actions and one uniform per arm."""
        cdf = self.cdf[self.type, act.astype(np.int64), states]  # (M, S)
        nxt = (u[:, None] > cdf).sum(axis=1)
        return np.minimum(nxt, self.S - 1).astype(np.int64)


def _top_per_unit(unit: IntArray, keys: list[Array], k: IntArray) -> NDArray[np.bool_]:
    """Select the ``k[u]`` arms with the largest keys in each unit (keys: most significant last)."""
    order = np.lexsort([-x for x in keys] + [unit])
    us = unit[order]
    counts = np.bincount(unit, minlength=k.size)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(unit.size) - starts[us]
    act = np.zeros(unit.size, dtype=bool)
    act[order] = rank < k[us]
    return act


def _tie_key(W: Array, eps: float) -> Array:
    return np.round(W / eps) * eps if eps > 0 else W


# --------------------------------------------------------------------------- results

@dataclass(frozen=True, kw_only=True, eq=False)
class SimulationResult:
    r"""Outcome of one policy over all seeds.

    Attributes
    ----------
    policy : str
    budget : int
        Actions per step.
    horizon : int
    rewards : ndarray of shape (n_seeds, n_arms)
        Total reward of each arm over the horizon, :math:`\sum_{t<H} r(s_t)`.
    final_states : ndarray of shape (n_seeds, n_arms)
        State of each arm after the last transition.
    groups : ndarray of shape (n_arms,)
    group_names : tuple of str
    group_actions : ndarray of shape (n_seeds, n_groups)
        Mean number of actions per step given to each group.
    allocations : ndarray of shape (n_seeds, horizon, n_groups)
        Actions per group at every step.
    arm_actions : ndarray of shape (n_seeds, n_arms)
        Number of steps each arm was acted on.
    seconds : float
        Wall time of the simulation.
    """

    policy: str
    budget: int
    horizon: int
    rewards: Array
    final_states: IntArray
    groups: IntArray
    group_names: tuple[str, ...]
    group_actions: Array
    allocations: IntArray
    arm_actions: IntArray
    seconds: float = 0.0

    def group_means(self) -> Array:
        """Mean total reward per arm in each group, per seed: shape (n_seeds, n_groups)."""
        G = len(self.group_names)
        sizes = np.bincount(self.groups, minlength=G)
        sums = np.stack([np.bincount(self.groups, weights=r, minlength=G) for r in self.rewards])
        return np.asarray(sums / sizes)


@dataclass(frozen=True, kw_only=True, eq=False)
class PolicySummary:
    """Contract-5 metrics of one policy (means over seeds, with standard errors).

    ``group_mean``, ``group_mean_se`` and ``group_budget`` hold the published groups only;
    ``gini``, ``gini_se``, ``gini_reference`` and the worst group are computed over them.
    ``mean_reward`` and the utility loss are over every arm.
    """

    mean_reward: float
    mean_reward_se: float
    group_mean: dict[str, float]
    group_mean_se: dict[str, float]
    group_budget: dict[str, float]
    gini: float
    gini_se: float
    gini_reference: float
    worst_group: float
    worst_group_name: str
    utility_loss_vs_opt: float | None
    utility_loss_vs_opt_se: float | None

    def to_dict(self, *, reference_gini: bool = True) -> dict[str, Any]:
        """Contract-5 entry; ``gini_reference`` is included when asked for.

        A standard error that cannot be computed (one seed: NaN), or a Gini that is undefined
        (a negative group mean: :func:`~equicare.rmab.gini`), is ``None``.
        """
        def sd(x: float | None) -> float | None:
            return None if x is None or not np.isfinite(x) else float(x)

        d: dict[str, Any] = {
            "mean_reward": self.mean_reward, "mean_reward_se": sd(self.mean_reward_se),
            "group_mean": self.group_mean,
            "group_mean_se": {g: sd(v) for g, v in self.group_mean_se.items()},
            "group_budget": self.group_budget, "gini": sd(self.gini),
            "gini_se": sd(self.gini_se),
            "worst_group": self.worst_group, "worst_group_name": self.worst_group_name,
            "utility_loss_vs_opt": self.utility_loss_vs_opt,
            "utility_loss_vs_opt_se": sd(self.utility_loss_vs_opt_se)}
        if reference_gini:
            d["gini_reference"] = sd(self.gini_reference)
        return d


def summarize(sim: SimulationResult, opt: SimulationResult | None = None,
              published: NDArray[np.bool_] | None = None) -> PolicySummary:
    r"""Metrics of one policy; utility loss :math:`(\bar U_{opt} - \bar U) / |\bar U_{opt}|`.

    The loss is the share of ``opt``'s utility lost, positive when the policy does worse than
    ``opt``, whatever the sign of the rewards (:math:`1 - \bar U / \bar U_{opt}` when it is
    positive). Written as :math:`1 - \bar U / \bar U_{opt}` alone, a panel whose rewards are
    weekly health changes minus outreach costs (every mean below 0) read -5.7% for ``mmr``,
    which did worse than ``opt`` (-0.066 against -0.062 per arm): a gain.

    The seeds are paired (every policy sees the same start states and transition draws), so the
    standard error of the loss is the delta-method one of a ratio of paired means: the SE of
    :math:`(U_i - \hat\rho\, U_{opt,i}) / \bar U_{opt}` with :math:`\hat\rho = \bar U /
    \bar U_{opt}`. It is 0 for ``opt`` itself and counts the noise of both policies.

    Parameters
    ----------
    sim, opt : SimulationResult
        The policy's simulation and the utilitarian one (for the utility loss).
    published : ndarray of shape (n_groups,) of bool, optional
        Groups whose outcomes may be published (default: all); the others are left out of the
        group metrics.
    """
    keep = (np.ones(len(sim.group_names), dtype=bool) if published is None
            else np.asarray(published, dtype=bool))
    names = tuple(n for n, k in zip(sim.group_names, keep, strict=True) if k)
    gm = sim.group_means()[:, keep]  # (n_seeds, G published)
    per_seed = sim.rewards.mean(axis=1)
    gm_mean = gm.mean(axis=0)
    overall = float(per_seed.mean())
    ginis = np.array([gini(row) for row in gm])
    loss = loss_se = None
    if opt is not None:
        opt_seed = opt.rewards.mean(axis=1)
        sign = float(np.sign(opt_seed.mean()))
        # + 0.0: opt's own loss is 0.0, never -0.0
        loss = float(sign * (1.0 - per_seed.mean() / opt_seed.mean()) + 0.0) if sign else None
        if loss is not None:
            ratio = per_seed.mean() / opt_seed.mean()
            loss_se = float(se((per_seed - ratio * opt_seed) / opt_seed.mean()))
    worst = int(np.argmin(gm_mean))
    return PolicySummary(
        mean_reward=overall, mean_reward_se=float(se(per_seed)),
        group_mean={n: float(v) for n, v in zip(names, gm_mean, strict=True)},
        group_mean_se={n: float(v) for n, v in zip(names, se(gm), strict=True)},
        group_budget={n: float(v) for n, v in
                      zip(names, sim.group_actions.mean(axis=0)[keep], strict=True)},
        gini=gini(gm_mean), gini_se=float(se(ginis)),
        gini_reference=gini(gm_mean, "reference", overall=overall),
        worst_group=float(gm_mean[worst]), worst_group_name=names[worst],
        utility_loss_vs_opt=loss, utility_loss_vs_opt_se=loss_se)


@dataclass(frozen=True, kw_only=True, eq=False)
class PlanResult:
    """Result of :func:`plan`: one :class:`PolicySummary` per policy (Contract 5).

    Attributes
    ----------
    domain : str
    n_arms, budget, horizon, seeds : int
    group_names : tuple of str
        Every group, suppressed ones included.
    group_sizes : dict of str to int
        Arms per group (suppressed groups included; :meth:`to_dict` hides them).
    policies : dict of str to PolicySummary
        Group metrics of the published groups only.
    simulations : dict of str to SimulationResult
    config : PlanConfig
    seconds : float
    suppressed_groups : tuple of str
        Groups left out of every published number (:attr:`RMABDomain.suppressed_groups`).
    min_cell : int
        Smallest group (in people) that is published.
    """

    domain: str
    n_arms: int
    budget: int
    horizon: int
    seeds: int
    group_names: tuple[str, ...]
    group_sizes: dict[str, int]
    policies: dict[str, PolicySummary]
    simulations: dict[str, SimulationResult] = field(repr=False)
    config: PlanConfig = field(default_factory=PlanConfig)
    seconds: float = 0.0
    suppressed_groups: tuple[str, ...] = ()
    min_cell: int = MIN_CELL

    @property
    def published_groups(self) -> tuple[str, ...]:
        """Groups whose outcomes may be published, in :attr:`group_names` order."""
        return tuple(g for g in self.group_names if g not in self.suppressed_groups)

    def published_sizes(self) -> dict[str, int | None]:
        """Arms per group, ``None`` for a suppressed group."""
        return {g: (None if g in self.suppressed_groups else n)
                for g, n in self.group_sizes.items()}

    def to_dict(self, *, reference_gini: bool = True) -> dict[str, Any]:
        """Return the Contract-5 JSON object (suppressed groups' sizes are ``null``)."""
        return {"domain": self.domain, "n_arms": self.n_arms, "budget": self.budget,
                "horizon": self.horizon, "seeds": self.seeds,
                "group_sizes": self.published_sizes(),
                "suppressed_groups": list(self.suppressed_groups), "min_cell": self.min_cell,
                "policies": {k: v.to_dict(reference_gini=reference_gini)
                             for k, v in self.policies.items()},
                "config": self.config.to_dict()}

    def table(self) -> list[dict[str, Any]]:
        """One row per policy: mean, group means, Gini, worst group, utility loss."""
        rows = []
        for name, s in self.policies.items():
            rows.append({"policy": name, "mean_reward": s.mean_reward,
                         "mean_reward_se": s.mean_reward_se, **s.group_mean, "gini": s.gini,
                         "gini_reference": s.gini_reference, "worst_group": s.worst_group,
                         "utility_loss_vs_opt": s.utility_loss_vs_opt})
        return rows


# --------------------------------------------------------------------------- simulation

def _check_policy(policy: str, domain: RMABDomain) -> None:
    if policy not in POLICIES:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="policy", owner="simulate",
                                              expected="one of " + ", ".join(map(repr, POLICIES)),
                                              got=policy))
    if policy.startswith("hr-") and domain.high_risk is None:
        raise InvalidParameterError(
            f"Policy {policy!r} needs the domain's high-risk states (e.g. A1c >= 8 "
                         f"in 'diabetes'); domain {domain.name!r} defines none.")


def _run(batch: _ArmBatch, policy: str, B: int, H: int, seed: int) -> SimulationResult:
    t0 = time.perf_counter()
    n_seeds, N, G = batch.n_seeds, batch.N, batch.G
    M = n_seeds * N
    env = np.random.default_rng([seed, 1])
    pol = np.random.default_rng([seed, 2, POLICIES.index(policy)])
    cdf0 = np.cumsum(batch.init, axis=1)
    states = np.minimum((env.random((M, 1)) > cdf0).sum(axis=1), batch.S - 1).astype(np.int64)
    totals = np.zeros(M)
    n_acted = np.zeros(M, dtype=np.int64)
    alloc = np.zeros((n_seeds, H, G), dtype=np.int64)
    last_acted = np.full(M, -1, dtype=np.int64)
    budget_seed = np.full(n_seeds, B, dtype=np.int64)
    hr = batch.domain.high_risk
    arm_pos = np.tile(np.arange(N), n_seeds).astype(np.float64)
    if policy in _INDEX_POLICIES:
        batch.ensure_table(H)
    cfg = batch.config
    for t in range(H):
        h = H - t
        totals += batch.R_arm[np.arange(M), states]
        if policy == "noact" or B == 0:
            act = np.zeros(M, dtype=bool)
        elif policy == "random":
            act = _top_per_unit(batch.seed_of, [pol.random(M)], budget_seed)
        elif policy in ("hr-random", "hr-rr"):
            assert hr is not None
            risk = hr[states].astype(np.float64)
            if policy == "hr-random":
                keys = [pol.random(M), risk]
            elif cfg.round_robin == "reference":
                keys = [arm_pos, risk]
            else:
                keys = [pol.random(M), -last_acted.astype(np.float64), risk]
            act = _top_per_unit(batch.seed_of, keys, budget_seed)
        else:
            W = batch.indices(states, h)
            key = _tie_key(W, cfg.tie_eps)
            if policy == "opt":
                act = _top_per_unit(batch.seed_of, [pol.random(M), key], budget_seed)
            else:
                vals, sizes = unit_curves(batch.Pt, batch.Rt, batch.type, batch.unit, states, W,
                                          h, batch.gamma, n_seeds * G, cfg.curve,
                                          table=batch.table)
                b_unit = np.zeros(n_seeds * G, dtype=np.int64)
                for i in range(n_seeds):
                    rows = slice(i * G, (i + 1) * G)
                    curves = [vals[i * G + g, : sizes[i * G + g] + 1] for g in range(G)]
                    b_unit[rows] = allocate_budget(curves, B, policy)  # type: ignore[arg-type]
                act = _top_per_unit(batch.unit, [pol.random(M), key], b_unit)
        last_acted = np.where(act, t, last_acted)
        n_acted += act
        alloc[:, t, :] = np.bincount(batch.unit, weights=act, minlength=n_seeds * G
                                     ).reshape(n_seeds, G).astype(np.int64)
        states = batch.step(states, act, env.random(M))
    return SimulationResult(
        policy=policy, budget=B, horizon=H, rewards=totals.reshape(n_seeds, N),
        final_states=states.reshape(n_seeds, N), groups=batch.domain.groups,
        group_names=batch.domain.group_names, group_actions=alloc.mean(axis=1),
        allocations=alloc, arm_actions=n_acted.reshape(n_seeds, N),
        seconds=time.perf_counter() - t0)


def _check_common(domain: RMABDomain, horizon: int | None, seeds: int) -> int:
    if not isinstance(domain, RMABDomain):
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="domain", owner="plan", expected="an RMABDomain (see load_domain)",
            got=type(domain).__name__))
    H = domain.horizon if horizon is None else horizon
    if isinstance(H, bool) or not isinstance(H, int | np.integer) or H < 1:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="horizon", owner="plan",
                                              expected="an int >= 1", got=horizon))
    if isinstance(seeds, bool) or not isinstance(seeds, int | np.integer) or seeds < 1:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="seeds", owner="plan",
                                              expected="an int >= 1", got=seeds))
    return int(H)


def _seed_of(random_state: RandomState) -> int:
    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        if random_state < 0:
            check_random_state(random_state)  # raises the house-style error
        return int(random_state)
    return int(check_random_state(random_state).integers(0, 2**31 - 1))


def simulate(
    domain: RMABDomain,
    policy: str,
    budget: int | float,
    *,
    horizon: int | None = None,
    seeds: int = 25,
    random_state: RandomState = 0,
    config: PlanConfig | None = None,
) -> SimulationResult:
    """Simulate one policy on ``seeds`` independent runs of the domain, all at once.

    Parameters
    ----------
    domain : RMABDomain
    policy : {"noact", "random", "opt", "mmr", "mnw", "mnw-eg", "hr-random", "hr-rr"}
        ``opt`` is the utilitarian Whittle-index policy; ``mmr``/``mnw``/``mnw-eg`` split the
        budget across groups (see :func:`allocate_budget`) and act on the top arms by Whittle
        index within each group; ``hr-random`` and ``hr-rr`` act on high-risk arms first
        (random / least recently acted on).
    budget : int or float
        Actions per step, or a fraction of the arms (``int(N * frac)``).
    horizon : int, optional
        Steps ``H`` (default ``domain.horizon``).
    seeds : int
        Independent runs (fresh arms per run when the domain has per-arm noise and
        ``config.redraw_arms``).
    random_state : int, Generator or None
        Base seed; every policy sees the same start states and transition draws (common random
        numbers).
    config : PlanConfig, optional

    Returns
    -------
    SimulationResult
    """
    cfg = config or PlanConfig()
    H = _check_common(domain, horizon, seeds)
    _check_policy(policy, domain)
    B = resolve_budget(budget, domain.n_arms, "simulate")
    seed = _seed_of(random_state)
    return _run(_ArmBatch(domain, int(seeds), seed, cfg), policy, B, H, seed)


def plan(
    domain: RMABDomain,
    *,
    budget: int | float,
    policies: tuple[str, ...] | list[str] = ("opt", "mmr", "mnw", "mnw-eg", "random", "noact"),
    horizon: int | None = None,
    seeds: int = 25,
    random_state: RandomState = 0,
    config: PlanConfig | None = None,
) -> PlanResult:
    """Compare policies on a domain and summarise them (Contract 5).

    Parameters
    ----------
    domain : RMABDomain
    budget : int or float
        Actions per step, or a fraction of the arms.
    policies : sequence of str
        Any of :data:`POLICIES`; ``opt`` is always simulated (utility loss is relative to it).
    horizon, seeds, random_state, config
        As in :func:`simulate`.

    Returns
    -------
    PlanResult
        ``to_dict()`` writes the Contract-5 JSON. Groups in ``domain.suppressed_groups``
        (estimated from too few people) are planned for but left out of every group metric.

    Raises
    ------
    DataValidationError
        When every group of the domain is suppressed.

    Examples
    --------
    >>> from equicare.rmab import load_domain, plan
    >>> res = plan(load_domain("synthetic"), budget=0.2, seeds=5, policies=["opt", "mmr"])
    >>> sorted(res.policies), res.budget
    (['mmr', 'opt'], 20)
    """
    cfg = config or PlanConfig()
    H = _check_common(domain, horizon, seeds)
    pols = list(dict.fromkeys(policies))
    if not pols:
        raise InvalidParameterError("policies must name at least one policy.")
    for p in pols:
        _check_policy(p, domain)
    B = resolve_budget(budget, domain.n_arms, "plan")
    published = domain.published
    if not published.any():
        raise DataValidationError(ALL_SUPPRESSED.format(name=domain.name, min_cell=MIN_CELL))
    seed = _seed_of(random_state)
    t0 = time.perf_counter()
    batch = _ArmBatch(domain, int(seeds), seed, cfg)
    sims = {p: _run(batch, p, B, H, seed) for p in dict.fromkeys(["opt", *pols])}
    opt = sims["opt"]
    summaries = {p: summarize(sims[p], opt, published) for p in pols}
    sizes = {n: int(v) for n, v in zip(domain.group_names, domain.group_sizes, strict=True)}
    return PlanResult(domain=domain.name, n_arms=domain.n_arms, budget=B, horizon=H,
                      seeds=int(seeds), group_names=domain.group_names, group_sizes=sizes,
                      policies=summaries, simulations={p: sims[p] for p in pols}, config=cfg,
                      seconds=time.perf_counter() - t0,
                      suppressed_groups=domain.suppressed_groups)
