"""gymnasium Env of the care-management simulator: one member per episode, same dynamics code."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError
from equicare.sim._care_config import (
    CARE_GROUP_LEVELS,
    CARE_REWARD_COLUMNS,
    CARE_STATE_NAMES,
    CareConfig,
)
from equicare.sim._care_model import ED_MAX, N_ACTIONS, CareModel, Latent, draw_noise
from equicare.utils import PARAM_MESSAGE

__all__ = ["CareManagementEnv", "CARE_ENV_ID"]

#: gymnasium id: ``gymnasium.make(CARE_ENV_ID, config=..., n_weeks=52, include_groups=False)``.
CARE_ENV_ID = "equicare/CareManagement-v0"

_STATE_HIGH = np.array([1.0, ED_MAX, 1.0, 1.0, 1.0], dtype=np.float32)


class CareManagementEnv(gym.Env[NDArray[np.float32], np.int64]):
    """One Medicaid member followed week by week (the dynamics of :class:`CareManagementSim`).

    * Observation: ``Box`` of the 5 state features ``[risk, ed_90d, engagement, sdoh_need,
      chronic]`` (float32, in [0, 1] except ``ed_90d`` in [0, 20]), followed, when
      ``include_groups``, by one-hot race/ethnicity (5), sex (2) and age band (4): shape ``(5,)``
      or ``(16,)``.
    * Action: ``Discrete(300)``, the flat index of the factored action (modality x provider x goal
      x urgency, mixed radix, urgency fastest; 0 = no contact). Every ``modality = none`` action
      means no contact.
    * Reward: the shaped reward ``w . [r_primary, r_engagement, r_intermediate]``; the components
      are in ``info["reward_components"]``.
    * ``terminated`` when the member disenrols (weekly probability ``disenroll_rate`` if
      ``churn``); ``truncated`` after ``n_weeks`` weeks.

    Parameters
    ----------
    config : CareConfig, optional
    n_weeks : int, default 52
        Horizon (truncation).
    include_groups : bool, default False
        Append group one-hots to the observation.
    render_mode : {"ansi"} or None

    Notes
    -----
    ``reset(options={"race_ethnicity": "black", "sex": "female", "age_band": "50-64"})`` fixes the
    member's groups (any subset of the keys); otherwise they are drawn from the population.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, config: CareConfig | None = None, n_weeks: int = 52,
                 include_groups: bool = False, render_mode: str | None = None) -> None:
        self.config = config if config is not None else CareConfig()
        if not isinstance(self.config, CareConfig):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="config", owner="CareManagementEnv", expected="a CareConfig", got=config))
        if isinstance(n_weeks, bool) or not isinstance(n_weeks, int) or n_weeks < 1:
            raise InvalidParameterError(
                f"The 'n_weeks' parameter of CareManagementEnv must be a positive "
                             f"int. Got {n_weeks!r} instead.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise InvalidParameterError(
                f"The 'render_mode' parameter of CareManagementEnv must be one of "
                             f"{self.metadata['render_modes']} or None. Got {render_mode!r} "
                             "instead.")
        self.n_weeks = n_weeks
        self.include_groups = bool(include_groups)
        self.render_mode = render_mode
        self._model = CareModel(self.config)
        self._weights = np.asarray(self.config.reward_weights)
        n_onehot = sum(len(v) for v in CARE_GROUP_LEVELS.values()) if self.include_groups else 0
        high = np.concatenate([_STATE_HIGH, np.ones(n_onehot, dtype=np.float32)])
        self.observation_space = spaces.Box(low=np.zeros_like(high), high=high, dtype=np.float32)
        self.action_space = spaces.Discrete(N_ACTIONS)
        self._state = np.zeros((1, len(CARE_STATE_NAMES)), dtype=np.float32)
        self._codes = {k: np.zeros(1, dtype=np.int64) for k in CARE_GROUP_LEVELS}
        self._latent = Latent.empty(1)
        self._week = 0
        self._high_need = 0
        self._last: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the observation entries."""
        names = list(CARE_STATE_NAMES)
        if self.include_groups:
            names += [f"{k}={lv}" for k, levels in CARE_GROUP_LEVELS.items() for lv in levels]
        return tuple(names)

    def _obs(self) -> NDArray[np.float32]:
        obs = self._state[0]
        if self.include_groups:
            parts = [obs]
            for k, levels in CARE_GROUP_LEVELS.items():
                oh = np.zeros(len(levels), dtype=np.float32)
                oh[int(self._codes[k][0])] = 1.0
                parts.append(oh)
            obs = np.concatenate(parts)
        return np.asarray(obs, dtype=np.float32).copy()

    def _groups(self) -> dict[str, str]:
        return {k: CARE_GROUP_LEVELS[k][int(self._codes[k][0])] for k in CARE_GROUP_LEVELS}

    def behavior_action_probs(self) -> NDArray[np.float64]:
        """Current-practice probabilities of every action at the current state, shape ``(300,)``."""
        probs: NDArray[np.float64] = self._model.behavior_probs(
            self._state, self._codes["race_ethnicity"])[0]
        return probs

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Draw a new member (groups and baseline state); see the class notes for ``options``."""
        super().reset(seed=seed)
        fixed: dict[str, int] = {}
        for key, label in (options or {}).items():
            if key not in CARE_GROUP_LEVELS:
                raise InvalidParameterError(f"Unknown reset option {key!r}; known options: "
                                 f"{list(CARE_GROUP_LEVELS)}.")
            levels = CARE_GROUP_LEVELS[key]
            if label not in levels:
                raise InvalidParameterError(
                    f"Unknown {key} label {label!r}; expected one of {list(levels)}.")
            fixed[key] = levels.index(label)
        cohort = self._model.draw_cohort(1, self.n_weeks, self.np_random, churn=False,
                                         fixed=fixed)
        self._state = cohort.states0.copy()
        self._codes = {"race_ethnicity": cohort.race, "sex": cohort.sex, "age_band": cohort.age}
        self._high_need = int(cohort.high_need[0])
        self._latent = Latent.empty(1)
        self._week = 0
        info = {"week": 0, "high_need": self._high_need, **self._groups()}
        self._last = {}
        return self._obs(), info

    def step(self, action: Any) -> tuple[NDArray[np.float32], SupportsFloat, bool, bool,
                                          dict[str, Any]]:
        """Apply one week's action (a flat index in ``[0, 300)``)."""
        try:
            a = int(action)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"The action must be an integer in [0, {N_ACTIONS}). "
                             f"Got {action!r} instead.") from None
        if not 0 <= a < N_ACTIONS or (np.ndim(action) == 0 and float(np.asarray(action)) != a):
            raise InvalidParameterError(f"The action must be an integer in [0, {N_ACTIONS}). "
                             f"Got {action!r} instead.")
        u, z = draw_noise(self.np_random, 1)
        res = self._model.step(self._state, self._codes["race_ethnicity"], self._codes["sex"],
                               np.array([a], dtype=np.int64), self._latent, u, z)
        comps = res.reward_components(self.config.event_penalty)[0]
        reward = float(comps @ self._weights)
        self._state = res.states
        self._latent = res.latent
        self._week += 1
        cfg = self.config
        terminated = bool(cfg.churn and cfg.disenroll_rate > 0
                          and self.np_random.random() < cfg.disenroll_rate)
        truncated = (not terminated) and self._week >= self.n_weeks
        info = {
            "week": self._week,
            "engaged": bool(res.engaged[0]),
            "milestone": bool(res.milestone[0]),
            "event": bool(res.event[0]),
            "reward_components": {k: float(v) for k, v in
                                  zip(CARE_REWARD_COLUMNS, comps, strict=True)},
            "high_need": self._high_need,
            **self._groups(),
        }
        self._last = {"action": a, **info}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> str | None:
        """Text summary of the current week (``render_mode="ansi"``)."""
        if self.render_mode != "ansi":
            return None
        s = ", ".join(f"{k}={float(v):.3f}" for k, v in zip(CARE_STATE_NAMES, self._state[0],
                                                          strict=True))
        last = ""
        if self._last:
            from equicare.sim._care_panel import care_manifest

            label = care_manifest(self.config).action_space.label(self._last["action"])
            last = f" | last action {label}, engaged={self._last['engaged']}"
        return f"week {self._week}: {s}{last}"


if CARE_ENV_ID not in gym.registry:
    gym.register(id=CARE_ENV_ID, entry_point="equicare.sim._care_env:CareManagementEnv")
