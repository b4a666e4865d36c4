"""The care-management model: cohort, behaviour policy and one-week dynamics (shared by all paths).

Everything here works on arrays of members at once; the gymnasium Env calls the same functions with
one member. States are kept in float32 (the dtype of ``TrajectoryDataset.states``) so that the
behaviour probabilities computed while simulating are bit-identical to those computed later from a
dataset. Equations and coefficient tables: docs/care_simulator.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from equicare.sim._care_config import CARE_ACTION_LEVELS, CARE_GROUP_LEVELS, CareConfig

__all__ = ["CareModel", "Cohort", "Latent", "StepResult", "N_ACTIONS", "NO_CONTACT", "N_UNIFORMS"]

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
B = NDArray[np.bool_]

N_MOD, N_PROV, N_GOAL, N_URG = (len(v) for v in CARE_ACTION_LEVELS.values())
N_PGU = N_PROV * N_GOAL * N_URG  # 60 (provider, goal, urgency) combinations
N_ACTIONS = N_MOD * N_PGU  # 300
NO_CONTACT = 0  # none/rn/chronic/routine
#: uniforms drawn per member-week: action, modality, combination, engaged, milestone, event,
#: sdoh shock, shock size
N_UNIFORMS = 8

RISK, ED, ENG, SDOH, CHRONIC = range(5)
PHONE, TEXT, VIDEO, HOME = 1, 2, 3, 4
RN, SW, CC, CHW, MD = range(5)
G_CHRONIC, G_COORD, G_BH, G_SOCIAL = range(4)
ROUTINE, SEMI, URGENT = range(3)
WHITE, BLACK, HISPANIC, ASIAN, OTHER = range(5)
UNDERSERVED = (BLACK, HISPANIC)

# ----------------------------------------------------------------------------- allowed actions
#: goals each provider type works on
PROVIDER_GOALS: dict[int, tuple[int, ...]] = {
    RN: (G_CHRONIC, G_COORD, G_BH),
    SW: (G_COORD, G_BH, G_SOCIAL),
    CC: (G_CHRONIC, G_COORD, G_SOCIAL),
    CHW: (G_CHRONIC, G_COORD, G_SOCIAL),
    MD: (G_CHRONIC, G_BH),
}
#: provider types and urgencies used with each contact modality
MODALITY_PROVIDERS: dict[int, tuple[int, ...]] = {
    PHONE: (RN, SW, CC, CHW, MD), TEXT: (RN, CC, CHW), VIDEO: (RN, SW, CC, MD), HOME: (RN, SW, CHW)}
MODALITY_URGENCIES: dict[int, tuple[int, ...]] = {
    PHONE: (ROUTINE, SEMI, URGENT), TEXT: (ROUTINE,), VIDEO: (ROUTINE, SEMI, URGENT),
    HOME: (ROUTINE, SEMI)}

# ----------------------------------------------------------------------------- behaviour policy
# Utilities are linear in x = [1, risk, min(ed_90d, 2), engagement, sdoh_need, chronic].
#: log-odds of any contact (intercept and risk slope come from CareConfig)
W_CONTACT = np.array([0.0, 0.0, 0.5, 0.8, 0.8, 0.6])
#: modality logits among contacts (phone, text, video, home visit); home visit gets -disparity
#: for black and hispanic members
W_MODALITY = np.array([
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],     # phone
    [0.3, -1.8, 0.0, 0.5, 0.0, 0.0],    # text
    [-0.8, 0.0, 0.0, 0.0, 0.0, 0.3],    # video
    [-0.6, 1.6, 0.0, 0.0, 1.0, 0.0],    # home visit
])
W_PROVIDER = np.array([
    [0.4, 0.0, 0.0, 0.0, 0.0, 0.6],     # rn
    [-0.4, 0.0, 0.0, 0.0, 1.0, 0.0],    # social worker
    [0.3, 0.0, 0.0, 0.0, 0.0, 0.0],     # care coordinator
    [-0.6, 0.0, 0.0, 0.0, 1.2, 0.0],    # chw
    [-1.2, 1.5, 0.0, 0.0, 0.0, 0.0],    # md
])
W_GOAL = np.array([
    [0.2, 0.0, 0.0, 0.0, 0.0, 1.2],     # chronic
    [0.1, 0.0, 0.6, 0.0, 0.0, 0.0],     # care coordination
    [-0.6, 1.0, 0.0, 0.0, 0.0, 0.0],    # behavioural health
    [-0.8, 0.0, 0.0, 0.0, 1.8, 0.0],    # social needs
])
W_URGENCY = np.array([
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],     # routine
    [-1.6, 2.0, 0.4, 0.0, 0.0, 0.0],    # semi-urgent
    [-3.6, 3.0, 0.8, 0.0, 0.0, 0.0],    # urgent
])

# ----------------------------------------------------------------------------- engagement
ENG_INTERCEPT = -0.6
ENG_MODALITY = np.array([0.0, 0.0, -1.0, -0.3, 0.6])      # none, phone, text, video, home visit
ENG_PROVIDER = np.array([0.0, 0.0, -0.2, 0.1, 0.2])       # rn, sw, cc, chw, md
ENG_STATE = 2.5            # x engagement
ENG_GOAL_FIT = 1.2         # x need of the goal's domain
ENG_APPROPRIATE = 0.5      # x provider-goal appropriateness A[p, g]
ENG_HOME_SDOH = 1.0        # x sdoh_need, home visits
ENG_CHW_SDOH = 0.8         # x sdoh_need, CHW
ENG_URGENT_RISK = 0.8      # x (risk - 0.4), semi-urgent or urgent contact
ENG_SELF_INTERCEPT = -4.2  # no contact: member-initiated engagement
ENG_SELF_STATE = 2.0
#: provider-goal appropriateness (1 = the provider's core goal)
APPROPRIATE = np.array([
    [1.0, 0.5, 0.0, 0.0],   # rn: chronic
    [0.0, 0.0, 1.0, 1.0],   # sw: behavioural health, social needs
    [0.0, 1.0, 0.0, 0.5],   # cc: coordination
    [0.0, 0.5, 0.0, 1.0],   # chw: social needs
    [1.0, 0.0, 0.5, 0.0],   # md: chronic
])

# ----------------------------------------------------------------------------- milestones
MS_INTERCEPT = -2.2
MS_GOAL_FIT = 2.0
MS_APPROPRIATE = 0.8
MS_HOME = 0.4
MS_SELF = -2.5             # log-odds of a milestone after member-initiated engagement
TRUST_SWITCH = 1.0         # x trust_effect x broken trust, when switching provider type

# ----------------------------------------------------------------------------- primary event
EV_RISK, EV_CHRONIC, EV_SDOH, EV_ED, EV_MALE = 2.8, 0.6, 0.6, 0.5, 0.15
EV_ENGAGED = 0.6           # x engaged (mediated path)
EV_URGENT, EV_SEMI = 0.8, 0.4   # x risk, urgent / semi-urgent contact (direct path)

# ----------------------------------------------------------------------------- transitions
ED_DECAY = float(np.exp(-1.0 / 13.0))    # 13-week memory of acute use
ED_MAX = 20.0                            # cap of ed_90d (never reached in practice)
ENG_RATE, ENG_FATIGUE = 0.15, 0.04
CHRONIC_DRIFT, CHRONIC_SD, CHRONIC_EVENT, CHRONIC_EFFECT = 0.002, 0.012, 0.03, 0.08
SDOH_REVERT, SDOH_SD, SDOH_SHOCK_P, SDOH_EFFECT = 0.02, 0.01, 0.01, 0.10
SDOH_SHOCK_LOW, SDOH_SHOCK_HIGH = 0.1, 0.3
RISK_REVERT, RISK_SD, RISK_EVENT, RISK_EFFECT = 0.15, 0.03, 0.12, 0.10
RISK_TARGET = np.array([0.05, 0.5, 0.35, 0.06])  # 1, chronic, sdoh, min(ed, 2)

# ----------------------------------------------------------------------------- cohort
AGE_SHARES = np.array([0.34, 0.28, 0.28, 0.10])
MALE_SHARE = 0.42
#: baseline log-odds of sdoh_need by race: white, black, hispanic, asian, other
SDOH_BASE = np.array([-1.2, -0.9, -0.95, -1.25, -1.15])
SDOH_MEAN = 1.0 / (1.0 + np.exp(-SDOH_BASE))           # reversion level of sdoh_need by race
HIGH_NEED_RISK = 0.40      # high_need = baseline risk >= this


def _sigmoid(x: F64) -> F64:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _allowed_mask() -> NDArray[np.bool_]:
    """Mark the allowed (provider, goal, urgency) combinations per contact modality, (4, 60)."""
    out = np.zeros((N_MOD - 1, N_PROV, N_GOAL, N_URG), dtype=bool)
    for m, provs in MODALITY_PROVIDERS.items():
        for p in provs:
            for g in PROVIDER_GOALS[p]:
                for u in MODALITY_URGENCIES[m]:
                    out[m - 1, p, g, u] = True
    return out.reshape(N_MOD - 1, N_PGU)


@dataclass(frozen=True)
class Cohort:
    """Members drawn at baseline (all arrays of shape ``(n_members,)`` unless stated).

    ``entry`` is the first calendar week, ``last`` the last calendar week observed (inclusive);
    ``disenrolled`` is True when the member leaves at ``last`` (a terminal step), False when the
    observation window ends first (truncation).
    """

    race: I64
    sex: I64
    age: I64
    states0: F32          # (n_members, 5)
    high_need: NDArray[np.int8]
    entry: I64
    last: I64
    disenrolled: B

    @property
    def n(self) -> int:
        """Number of members."""
        return int(self.race.shape[0])


@dataclass(frozen=True)
class Latent:
    """Latent continuity of care per member (arrays of shape ``(n,)``), not in the observed state.

    ``provider``: provider type of the last contact (-1: none yet); ``streak``: consecutive contacts
    with that provider type (capped at ``trust_max``); ``idle``: weeks without contact since then.
    """

    provider: I64
    streak: I64
    idle: I64

    @classmethod
    def empty(cls, n: int) -> Latent:
        """Members with no contact history."""
        return cls(np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64),
                   np.zeros(n, dtype=np.int64))

    def take(self, idx: I64) -> Latent:
        """Rows ``idx``."""
        return Latent(self.provider[idx], self.streak[idx], self.idle[idx])

    def put(self, idx: I64, other: Latent) -> None:
        """Write ``other`` into rows ``idx``."""
        self.provider[idx] = other.provider
        self.streak[idx] = other.streak
        self.idle[idx] = other.idle


@dataclass(frozen=True)
class StepResult:
    """Outcome of one week for n members."""

    states: F32           # (n, 5) next states
    engaged: B            # (n,) mediator
    milestone: B          # (n,)
    event: B              # (n,) ED visit or hospitalisation
    latent: Latent        # next latent continuity state

    def reward_components(self, event_penalty: float) -> F64:
        """``[r_primary, r_engagement, r_intermediate]`` per member, shape ``(n, 3)``."""
        return np.stack([np.where(self.event, -event_penalty, 0.0), self.engaged.astype(np.float64),
                         self.milestone.astype(np.float64)], axis=1)


class CareModel:
    """Vectorised model equations for one configuration (private; see CareManagementSim)."""

    def __init__(self, config: CareConfig) -> None:
        self.config = config
        self.allowed = _allowed_mask()                                   # (4, 60)
        self.allowed_cols = [np.flatnonzero(row) for row in self.allowed]
        j = np.arange(N_PGU)
        self.pgu_provider = j // (N_GOAL * N_URG)
        self.pgu_goal = (j // N_URG) % N_GOAL
        self.pgu_urgency = j % N_URG
        # behaviour-policy support over the flat actions: no contact + allowed contacts
        support = np.zeros(N_ACTIONS, dtype=bool)
        support[NO_CONTACT] = True
        support[N_PGU:] = self.allowed.reshape(-1)
        self.support = support
        self.underserved = np.zeros(len(CARE_GROUP_LEVELS["race_ethnicity"]), dtype=bool)
        self.underserved[list(UNDERSERVED)] = True

    # ------------------------------------------------------------------ behaviour policy
    @staticmethod
    def design(states: F32) -> F64:
        """Behaviour-policy design matrix ``[1, risk, min(ed,2), eng, sdoh, chronic]``, (n, 6)."""
        s = np.asarray(states, dtype=np.float64)
        x = np.empty((s.shape[0], 6))
        x[:, 0] = 1.0
        x[:, 1] = s[:, RISK]
        x[:, 2] = np.minimum(s[:, ED], 2.0)
        x[:, 3] = s[:, ENG]
        x[:, 4] = s[:, SDOH]
        x[:, 5] = s[:, CHRONIC]
        return x

    def _utilities(self, x: F64, w: F64) -> F64:
        """``x @ w.T`` summed feature by feature in a fixed order (bit-reproducible for any n)."""
        out = x[:, 0, None] * w[None, :, 0]
        for k in range(1, x.shape[1]):
            out = out + x[:, k, None] * w[None, :, k]
        return out

    def behavior_parts(self, states: F32, race: I64) -> tuple[F64, F64, F64, F64]:
        """Factors of the behaviour policy.

        Parameters
        ----------
        states : ndarray of shape (n, 5), float32
        race : ndarray of shape (n,), int
            Race/ethnicity codes (index into ``CARE_GROUP_LEVELS["race_ethnicity"]``).

        Returns
        -------
        p_contact : ndarray of shape (n,)
        p_modality : ndarray of shape (n, 4)
            Modality (phone, text, video, home visit) given contact.
        weight : ndarray of shape (n, 60)
            ``exp`` of the (provider, goal, urgency) utilities (shifted by their row maximum).
        norm : ndarray of shape (n, 4)
            Sum of ``weight`` over the combinations allowed with each modality; the probability of
            combination ``j`` given modality ``m`` is ``weight[:, j] / norm[:, m]`` if allowed.
        """
        cfg = self.config
        x = self.design(states)
        p_contact = _sigmoid(self._utilities(x, W_CONTACT[None, :])[:, 0]
                             + cfg.contact_intercept + cfg.confounding * x[:, 1])
        logit_m = self._utilities(x, W_MODALITY)
        logit_m[:, HOME - 1] -= cfg.home_visit_disparity * self.underserved[race]
        logit_m -= logit_m.max(axis=1, keepdims=True)
        em = np.exp(logit_m)
        p_mod = em / em.sum(axis=1, keepdims=True)
        n = x.shape[0]
        u = (self._utilities(x, W_PROVIDER)[:, :, None, None]
             + self._utilities(x, W_GOAL)[:, None, :, None]
             + self._utilities(x, W_URGENCY)[:, None, None, :]).reshape(n, N_PGU)
        weight = np.exp(u - u.max(axis=1, keepdims=True))
        norm = np.stack([weight[:, cols].sum(axis=1) for cols in self.allowed_cols], axis=1)
        return p_contact, p_mod, weight, norm

    def behavior_probs(self, states: F32, race: I64) -> F64:
        """Behaviour probabilities of every flat action, shape ``(n, 300)``."""
        pc, pm, weight, norm = self.behavior_parts(states, race)
        n = pc.shape[0]
        out = np.zeros((n, N_ACTIONS))
        out[:, NO_CONTACT] = 1.0 - pc
        block = out[:, N_PGU:].reshape(n, N_MOD - 1, N_PGU)
        for m, cols in enumerate(self.allowed_cols):
            block[:, m, cols] = (pc * pm[:, m])[:, None] * (weight[:, cols] / norm[:, m, None])
        out[:, N_PGU:] = block.reshape(n, -1)
        return out

    def behavior_prob_of(self, states: F32, race: I64, actions: I64) -> F64:
        """Behaviour probability of given flat actions, shape ``(n,)``.

        Uses the same arithmetic as :meth:`behavior_probs`, so the numbers are identical.
        """
        pc, pm, weight, norm = self.behavior_parts(states, race)
        a = np.asarray(actions, dtype=np.int64)
        m = a // N_PGU
        j = a % N_PGU
        rows = np.arange(a.shape[0])
        mc = np.maximum(m - 1, 0)
        contact = (pc * pm[rows, mc]) * (weight[rows, j] / norm[rows, mc])
        ok = self.allowed[mc, j]
        return np.where(m == 0, np.where(a == NO_CONTACT, 1.0 - pc, 0.0),
                        np.where(ok, contact, 0.0))

    def behavior_mask_prob(self, states: F32, race: I64, mask: B) -> F64:
        """Behaviour probability that the action lies in ``mask`` (shape (300,)), shape ``(n,)``."""
        pc, pm, weight, norm = self.behavior_parts(states, race)
        mk = np.asarray(mask, dtype=np.float64).reshape(N_MOD, N_PGU)
        inside = (weight @ (mk[1:] * self.allowed).T) / norm                 # (n, 4)
        out: F64 = (1.0 - pc) * mk[0, NO_CONTACT] + pc * (pm * inside).sum(axis=1)
        return out

    def behavior_sample(self, states: F32, race: I64, u: F64) -> tuple[I64, F64]:
        """Sample behaviour actions hierarchically (contact, modality, combination).

        Parameters
        ----------
        states : ndarray of shape (n, 5), float32
        race : ndarray of shape (n,)
        u : ndarray of shape (n, >=3)
            Uniforms in (0, 1]: columns 0, 1, 2 are used.

        Returns
        -------
        actions : ndarray of shape (n,), int64
        prob : ndarray of shape (n,)
            Exact behaviour probability of each sampled action.
        """
        pc, pm, weight, norm = self.behavior_parts(states, race)
        n = pc.shape[0]
        rows = np.arange(n)
        contact = u[:, 0] <= pc
        m = _inverse_cdf(pm, u[:, 1])
        j = _inverse_cdf(weight * self.allowed[m], u[:, 2])
        actions = np.where(contact, (m + 1) * N_PGU + j, NO_CONTACT).astype(np.int64)
        prob = np.where(contact, (pc * pm[rows, m]) * (weight[rows, j] / norm[rows, m]), 1.0 - pc)
        return actions, prob

    # ------------------------------------------------------------------ cohort
    def draw_cohort(self, n: int, n_weeks: int, rng: np.random.Generator,
                    churn: bool | None = None, fixed: dict[str, int] | None = None) -> Cohort:
        """Draw ``n`` members: groups, baseline states, need flag, entry and last week.

        ``fixed`` maps group attributes (``race_ethnicity``, ``sex``, ``age_band``) to a code that
        all members get; the other draws are unchanged.
        """
        cfg = self.config
        churn = cfg.churn if churn is None else churn
        fixed = fixed or {}
        race = rng.choice(len(cfg.race_shares), size=n, p=np.asarray(cfg.race_shares))
        sex = (rng.random(n) < MALE_SHARE).astype(np.int64)
        age = rng.choice(AGE_SHARES.size, size=n, p=AGE_SHARES)
        if "race_ethnicity" in fixed:
            race = np.full(n, fixed["race_ethnicity"], dtype=np.int64)
        if "sex" in fixed:
            sex = np.full(n, fixed["sex"], dtype=np.int64)
        if "age_band" in fixed:
            age = np.full(n, fixed["age_band"], dtype=np.int64)
        z = rng.standard_normal((n, 4))
        chronic = _sigmoid(-1.4 + 0.5 * age + 0.9 * z[:, 0])
        sdoh = _sigmoid(SDOH_BASE[race] + 0.8 * z[:, 1])
        risk = np.clip(RISK_TARGET[0] + RISK_TARGET[1] * chronic + RISK_TARGET[2] * sdoh
                       + 0.10 * z[:, 2], 0.0, 1.0)
        eng = _sigmoid(-2.0 + 0.7 * z[:, 3])
        h0 = _sigmoid(cfg.event_intercept + EV_RISK * risk + EV_CHRONIC * chronic
                      + EV_SDOH * sdoh + EV_MALE * sex)
        ed = np.minimum(rng.poisson(13.0 * h0), ED_MAX).astype(np.float64)
        states0 = np.stack([risk, ed, eng, sdoh, chronic], axis=1).astype(np.float32)
        high_need = (states0[:, RISK] >= HIGH_NEED_RISK).astype(np.int8)
        u_entry, u_late, u_leave = rng.random(n), rng.random(n), rng.random(n)
        if churn and n_weeks > 1:
            late = u_entry < cfg.late_entry_fraction
            entry = np.where(late, 1 + np.floor(u_late * (n_weeks - 1)), 0).astype(np.int64)
        else:
            entry = np.zeros(n, dtype=np.int64)
        if churn and cfg.disenroll_rate > 0:
            # weeks enrolled ~ Geometric(rate) >= 1 (inverse CDF of the uniform)
            g = 1 + np.floor(np.log1p(-u_leave) / np.log1p(-cfg.disenroll_rate))
            stay = np.minimum(g, 10 * n_weeks + 1).astype(np.int64)
        else:
            stay = np.full(n, 10 * n_weeks + 1, dtype=np.int64)
        leave_week = entry + stay - 1
        disenrolled = leave_week <= n_weeks - 1
        last = np.minimum(leave_week, n_weeks - 1)
        return Cohort(race=race.astype(np.int64), sex=sex, age=age.astype(np.int64),
                      states0=states0, high_need=high_need, entry=entry, last=last,
                      disenrolled=disenrolled)

    # ------------------------------------------------------------------ one week
    def step(self, states: F32, race: I64, sex: I64, actions: I64, latent: Latent,
             u: F64, z: F64) -> StepResult:
        """Advance n members by one week under the given flat actions.

        Parameters
        ----------
        states : ndarray of shape (n, 5), float32
        race, sex : ndarray of shape (n,), int
        actions : ndarray of shape (n,), int
            Flat action indices; every ``modality = none`` action is "no contact".
        latent : Latent
            Continuity of care (affects engagement and milestones only when
            ``history_dependence``; always tracked).
        u : ndarray of shape (n, N_UNIFORMS)
            Uniforms in (0, 1] (columns 3..7 are used here).
        z : ndarray of shape (n, 3)
            Standard normals for the risk, sdoh and chronic noise.

        Returns
        -------
        StepResult
        """
        cfg = self.config
        es = cfg.effect_scale
        s = np.asarray(states, dtype=np.float64)
        risk, ed, eng, sdoh, chronic = (s[:, k] for k in range(5))
        ed2 = np.minimum(ed, 2.0)
        a = np.asarray(actions, dtype=np.int64)
        m = a // N_PGU
        p = (a // (N_GOAL * N_URG)) % N_PROV
        g = (a // N_URG) % N_GOAL
        urg = a % N_URG
        contact = m > 0
        home = m == HOME
        underserved = self.underserved[race]
        # need in the domain of each goal: chronic, coordination (recent acute use), BH, social
        need = np.stack([chronic, ed2 / 2.0, risk, sdoh], axis=1)
        rows = np.arange(a.shape[0])
        fit = need[rows, g]
        appr = APPROPRIATE[p, g]

        # -------- engagement (the mediator)
        # trust: consecutive contacts with the same provider type, lapsing after idle weeks;
        # switching away from a live relationship costs engagement (fragmented care)
        live = contact & (latent.provider >= 0) & (latent.idle < cfg.trust_lapse)
        same = live & (p == latent.provider)
        trust = np.where(same, latent.streak, 0) / cfg.trust_max
        broken = np.where(live & ~same, latent.streak, 0) / cfg.trust_max
        hist = cfg.trust_effect if cfg.history_dependence else 0.0
        logit_c = (ENG_INTERCEPT + ENG_MODALITY[m] + ENG_PROVIDER[p] + ENG_STATE * eng
                   + ENG_GOAL_FIT * fit + ENG_APPROPRIATE * appr
                   + ENG_HOME_SDOH * sdoh * home + ENG_CHW_SDOH * sdoh * (p == CHW)
                   + cfg.underserved_home_visit_bonus * (home & underserved)
                   + ENG_URGENT_RISK * (risk - 0.4) * (urg > ROUTINE))
        logit_c = logit_c + hist * (trust - TRUST_SWITCH * broken)
        logit_e = np.where(contact, logit_c, ENG_SELF_INTERCEPT + ENG_SELF_STATE * eng)
        engaged = u[:, 3] <= _sigmoid(logit_e)

        # -------- milestone (intermediate reward), only after engagement
        logit_ms = np.where(contact, MS_INTERCEPT + MS_GOAL_FIT * fit + MS_APPROPRIATE * appr
                            + MS_HOME * home + hist * trust, MS_SELF)
        milestone = engaged & (u[:, 4] <= _sigmoid(logit_ms))

        # -------- primary event: ED visit or hospitalisation
        protect = (EV_ENGAGED * engaged
                   + contact * risk * (EV_URGENT * (urg == URGENT) + EV_SEMI * (urg == SEMI)))
        logit_h = (cfg.event_intercept + EV_RISK * risk + EV_CHRONIC * chronic + EV_SDOH * sdoh
                   + EV_ED * ed2 + EV_MALE * sex - es * protect)
        event = u[:, 5] <= _sigmoid(logit_h)
        ev = event.astype(np.float64)
        eg = engaged.astype(np.float64)

        # -------- transitions
        ed_n = ed * ED_DECAY + ev
        eng_n = eng + ENG_RATE * (eg - eng) - ENG_FATIGUE * (contact & ~engaged)
        chronic_n = (chronic + CHRONIC_DRIFT + CHRONIC_SD * z[:, 2] + CHRONIC_EVENT * ev
                     - es * CHRONIC_EFFECT * eg * (g == G_CHRONIC) * contact
                     * (1.0 + 0.5 * ((p == RN) | (p == MD))) * chronic)
        shock = (u[:, 6] <= SDOH_SHOCK_P) * (SDOH_SHOCK_LOW
                                             + (SDOH_SHOCK_HIGH - SDOH_SHOCK_LOW) * u[:, 7])
        sdoh_n = (sdoh + SDOH_REVERT * (SDOH_MEAN[race] - sdoh) + shock + SDOH_SD * z[:, 1]
                  - es * SDOH_EFFECT * eg * (g == G_SOCIAL) * contact
                  * (1.0 + 0.8 * ((p == CHW) | (p == SW)) + 0.6 * home) * sdoh)
        target = (RISK_TARGET[0] + RISK_TARGET[1] * chronic + RISK_TARGET[2] * sdoh
                  + RISK_TARGET[3] * ed2)
        risk_n = (risk + RISK_REVERT * (target - risk) + RISK_SD * z[:, 0] + RISK_EVENT * ev
                  - es * RISK_EFFECT * eg * contact
                  * (1.0 * (g == G_BH) + 0.5 * (g == G_COORD)) * risk)
        nxt = np.stack([np.clip(risk_n, 0.0, 1.0), np.minimum(ed_n, ED_MAX),
                        np.clip(eng_n, 0.0, 1.0), np.clip(sdoh_n, 0.0, 1.0),
                        np.clip(chronic_n, 0.0, 1.0)], axis=1)

        # -------- latent trust (continuity with one provider type)
        latent_n = Latent(
            provider=np.where(contact, p, latent.provider).astype(np.int64),
            streak=np.where(contact, np.where(same, np.minimum(latent.streak + 1, cfg.trust_max),
                                              1), latent.streak).astype(np.int64),
            idle=np.where(contact, 0, np.minimum(latent.idle + 1, 10_000)).astype(np.int64))
        return StepResult(states=nxt.astype(np.float32), engaged=engaged, milestone=milestone,
                          event=event, latent=latent_n)


def draw_noise(rng: np.random.Generator, n: int) -> tuple[F64, F64]:
    """Noise of one week for ``n`` members: uniforms in (0, 1] ``(n, 8)`` and normals ``(n, 3)``."""
    u = 1.0 - rng.random((n, N_UNIFORMS))
    z = rng.standard_normal((n, 3))
    return u, z


def _inverse_cdf(p: F64, u: F64) -> I64:
    """Index ``k`` with ``cdf[k-1] < u * total <= cdf[k]`` per row (``u`` in (0, 1]), shape (n,)."""
    cdf = np.cumsum(p, axis=1)
    k = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=1)
    out: I64 = np.minimum(k, p.shape[1] - 1).astype(np.int64)
    return out
