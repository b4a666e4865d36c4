"""Configuration and fixed vocabulary of the care-management simulator."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from equicare.exceptions import ConfigError
from equicare.rewards import CARE_DEFAULT_WEIGHTS
from equicare.utils import check_param

__all__ = [
    "CareConfig",
    "CARE_ACTION_LEVELS",
    "CARE_STATE_NAMES",
    "CARE_GROUP_LEVELS",
    "CARE_REWARD_COLUMNS",
]

#: Action components and their level labels, in flat-index order (mixed radix, last fastest).
CARE_ACTION_LEVELS: dict[str, tuple[str, ...]] = {
    "modality": ("none", "phone", "text", "video", "home_visit"),
    "provider": ("rn", "social_worker", "care_coordinator", "chw", "md"),
    "goal": ("chronic", "care_coordination", "behavioral_health", "social_needs"),
    "urgency": ("routine", "semi_urgent", "urgent"),
}

#: Numeric state columns, in the order of ``dataset.states``.
CARE_STATE_NAMES: tuple[str, ...] = ("risk", "ed_90d", "engagement", "sdoh_need", "chronic")

#: Protected attributes and their labels (race/ethnicity first: the default group attribute).
CARE_GROUP_LEVELS: dict[str, tuple[str, ...]] = {
    "race_ethnicity": ("white", "black", "hispanic", "asian", "other"),
    "sex": ("female", "male"),
    "age_band": ("18-34", "35-49", "50-64", "65+"),
}

#: Reward component name -> column.
CARE_REWARD_COLUMNS: dict[str, str] = {
    "primary": "r_primary", "engagement": "r_engagement", "intermediate": "r_intermediate"}

_OWNER = "CareConfig"


@dataclass(frozen=True, kw_only=True)
class CareConfig:
    """Settings of the care-management simulator (model equations: docs/care_simulator.md).

    Parameters
    ----------
    history_dependence : bool, default False
        When True, the chance that a contact engages the member (and reaches a milestone) also
        depends on a latent *trust* built by consecutive contacts with the same provider type, and
        switching provider type while a relationship is live costs engagement. Trust is a function
        of past actions, not in the observed state, so a policy that looks at a window of past
        actions can do better than a memoryless one.
    churn : bool, default True
        Members enrol late and disenrol early (variable episode lengths). When False everybody is
        followed from week 0 to the last week.
    late_entry_fraction : float in [0, 1), default 0.2
        Share of members who enrol after week 0 (entry week uniform on ``1 .. n_weeks - 1``).
    disenroll_rate : float in [0, 1), default 0.005
        Weekly probability of disenrolment (the episode *terminates*; ~23% leave within a year).
    race_shares : tuple of 5 floats, default (0.42, 0.24, 0.22, 0.06, 0.06)
        Population shares of white, black, hispanic, asian, other members (sum to 1).
    contact_intercept : float, default -2.7
        Behaviour policy: log-odds of any contact at zero risk and need.
    confounding : float, default 3.0
        Behaviour policy: slope of the contact log-odds in ``risk`` (confounding by indication:
        sicker members get more, and more intensive, contact). 0 removes the risk dependence.
    home_visit_disparity : float, default 0.62
        Behaviour policy: how much lower the log-odds of a home visit (among contacts) are for black
        and hispanic members than for white members in the same state. The default gives a gap of
        about 3.5 percentage points of member-weeks at equal need.
    event_intercept : float, default -6.6
        Log-odds of an ED visit / hospitalisation in a week for a member with all states at 0.
    event_penalty : float > 0, default 5.0
        ``r_primary = -event_penalty`` in a week with an ED visit or hospitalisation (0 otherwise).
        With the default weights one event costs as much as ~17 engaged weeks.
    effect_scale : float >= 0, default 1.0
        Multiplies every effect of contact and engagement on the event hazard and on the state
        transitions (0: actions change engagement and milestones only, not health).
    underserved_home_visit_bonus : float, default 0.8
        Extra log-odds of engagement from a home visit for black and hispanic members (the groups
        the behaviour policy under-serves with home visits), so an equitable policy is also better.
    trust_effect : float, default 2.0
        With ``history_dependence``: log-odds of engagement added at full trust with the contacting
        provider type.
    trust_max : int >= 1, default 4
        Consecutive same-provider contacts needed for full trust.
    trust_lapse : int >= 1, default 6
        With ``history_dependence``: after this many weeks without contact the relationship lapses
        (the next contact starts a new streak). A policy needs a window of ``trust_lapse + 1`` rows
        to see the whole relevant history.
    gamma : float in (0, 1], default 0.99
        Discount of values, written to the manifest.
    reward_weights : tuple of 3 floats, default (1.0, 0.3, 0.5)
        Weights of the primary, engagement and intermediate reward components (manifest weights).
    """

    history_dependence: bool = False
    churn: bool = True
    late_entry_fraction: float = 0.2
    disenroll_rate: float = 0.005
    race_shares: tuple[float, ...] = (0.42, 0.24, 0.22, 0.06, 0.06)
    contact_intercept: float = -2.5
    confounding: float = 3.0
    home_visit_disparity: float = 0.75
    event_intercept: float = -6.6
    event_penalty: float = 5.0
    effect_scale: float = 1.0
    underserved_home_visit_bonus: float = 0.8
    trust_effect: float = 2.0
    trust_max: int = 4
    trust_lapse: int = 6
    gamma: float = 0.99
    reward_weights: tuple[float, ...] = tuple(CARE_DEFAULT_WEIGHTS.values())

    def __post_init__(self) -> None:
        check_param(self.history_dependence, "history_dependence", _OWNER, kind=bool)
        check_param(self.churn, "churn", _OWNER, kind=bool)
        check_param(self.late_entry_fraction, "late_entry_fraction", _OWNER, kind=(int, float),
                    low=0.0, high=1.0, high_inclusive=False)
        check_param(self.disenroll_rate, "disenroll_rate", _OWNER, kind=(int, float),
                    low=0.0, high=1.0, high_inclusive=False)
        shares = tuple(self.race_shares)
        n_race = len(CARE_GROUP_LEVELS["race_ethnicity"])
        if (len(shares) != n_race or any(not isinstance(s, int | float) or isinstance(s, bool)
                                          or not s > 0 for s in shares)
                or abs(math.fsum(shares) - 1.0) > 1e-9):
            check_param(self.race_shares, "race_shares", _OWNER, choices=(),
                        expected=f"{n_race} positive numbers summing to 1 (white, black, "
                                 "hispanic, asian, other)")
        object.__setattr__(self, "race_shares", tuple(float(s) for s in shares))
        for name in ("contact_intercept", "confounding", "home_visit_disparity", "event_intercept",
                     "underserved_home_visit_bonus", "trust_effect"):
            v = getattr(self, name)
            check_param(v, name, _OWNER, kind=(int, float), low=-50.0, high=50.0,
                        expected="a finite number in [-50, 50]")
        check_param(self.event_penalty, "event_penalty", _OWNER, kind=(int, float), low=0.0,
                    high=1e6, low_inclusive=False)
        check_param(self.effect_scale, "effect_scale", _OWNER, kind=(int, float), low=0.0,
                    high=50.0)
        check_param(self.trust_max, "trust_max", _OWNER, kind=int, low=1, high=52)
        check_param(self.trust_lapse, "trust_lapse", _OWNER, kind=int, low=1, high=52)
        check_param(self.gamma, "gamma", _OWNER, kind=(int, float), low=0.0, high=1.0,
                    low_inclusive=False)
        w = tuple(self.reward_weights)
        if len(w) != 3 or any(isinstance(x, bool) or not isinstance(x, int | float)
                              or not math.isfinite(x) for x in w):
            check_param(self.reward_weights, "reward_weights", _OWNER, choices=(),
                        expected="3 finite numbers (primary, engagement, intermediate)")
        object.__setattr__(self, "reward_weights", tuple(float(x) for x in w))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (tuples become lists); inverse of :meth:`from_dict`."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CareConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"Unknown CareConfig key(s) {unknown}; known keys: {sorted(known)}.")
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)
