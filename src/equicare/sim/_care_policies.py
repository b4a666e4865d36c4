"""Policies of the care-management simulator: the exact behaviour policy and reference policies."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import InvalidParameterError, PolicyError
from equicare.sim._care_config import CARE_GROUP_LEVELS, CARE_STATE_NAMES, CareConfig
from equicare.sim._care_model import (
    CC,
    CHW,
    G_BH,
    G_CHRONIC,
    G_COORD,
    G_SOCIAL,
    HOME,
    MODALITY_PROVIDERS,
    N_ACTIONS,
    N_GOAL,
    N_PGU,
    N_PROV,
    N_URG,
    NO_CONTACT,
    PHONE,
    PROVIDER_GOALS,
    RN,
    ROUTINE,
    SEMI,
    SW,
    URGENT,
    CareModel,
)

__all__ = ["CareBehaviorPolicy", "CareReferencePolicy", "dataset_states", "dataset_race_codes"]

F64 = NDArray[np.float64]


def dataset_states(dataset: TrajectoryDataset, owner: str) -> NDArray[np.float32]:
    """Return the five care state columns of a dataset in simulator order, (n_steps, 5)."""
    names = tuple(dataset.state_names)
    k = len(CARE_STATE_NAMES)
    if names[:k] == CARE_STATE_NAMES or (not names and dataset.states.shape[1] == k):
        return dataset.states[:, :k]
    missing = [c for c in CARE_STATE_NAMES if c not in names]
    if missing:
        raise PolicyError(f"{owner} needs the state columns {list(CARE_STATE_NAMES)}; the dataset "
                          f"has {list(names)} (missing {missing}).")
    return dataset.states[:, [names.index(c) for c in CARE_STATE_NAMES]]


def dataset_race_codes(dataset: TrajectoryDataset, owner: str) -> NDArray[np.int64]:
    """Race/ethnicity code of every row of a dataset, shape ``(n_steps,)``."""
    if "race_ethnicity" not in dataset.groups:
        raise PolicyError(f"{owner} needs the group attribute 'race_ethnicity'; the dataset has "
                          f"{list(dataset.groups)}.")
    levels = CARE_GROUP_LEVELS["race_ethnicity"]
    labels = np.asarray(dataset.groups["race_ethnicity"]).astype(str)
    codes = pd.Categorical(labels, categories=list(levels)).codes.astype(np.int64)
    if (codes < 0).any():
        bad = sorted(set(labels[codes < 0].tolist()))[:5]
        raise PolicyError(f"{owner}: unknown race_ethnicity label(s) {bad}; expected one of "
                          f"{list(levels)}.")
    out: NDArray[np.int64] = codes[dataset.episode_index]
    return out


@dataclass(frozen=True)
class CareBehaviorPolicy:
    r"""The exact behaviour ("current practice") policy of the care-management simulator.

    A function of the observed state and race/ethnicity only, so its probabilities can be computed
    for any rows:

    .. math::

        \pi_b(a \mid s, g) = \begin{cases} 1 - p_c(s) & a = \text{no contact} \\
        p_c(s)\, p_m(m \mid s, g)\, p_j(j \mid m, s) & a = (m, j) \text{ allowed} \\
        0 & \text{otherwise} \end{cases}

    (equations in docs/care_simulator.md).

    Parameters
    ----------
    config : CareConfig
    equitable : bool
        Drop the home-visit disparity (the same policy with ``home_visit_disparity = 0``).
    """

    config: CareConfig = field(default_factory=CareConfig)
    equitable: bool = False
    n_actions: int = N_ACTIONS
    window: int = 1
    _model: CareModel = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cfg = replace(self.config, home_visit_disparity=0.0) if self.equitable else self.config
        object.__setattr__(self, "_model", CareModel(cfg))

    @property
    def support(self) -> NDArray[np.bool_]:
        """Flat actions with non-zero probability (no contact + ~100 allowed), shape ``(300,)``."""
        return self._model.support.copy()

    def action_probs(self, dataset: TrajectoryDataset) -> F64:
        """Probabilities of every flat action at every row, shape ``(n_steps, 300)``."""
        s = dataset_states(dataset, type(self).__name__)
        return self._model.behavior_probs(s, dataset_race_codes(dataset, type(self).__name__))

    def action_prob(self, dataset: TrajectoryDataset,
                    actions: NDArray[np.int64] | None = None) -> F64:
        """Probability of the logged (or given) actions, shape ``(n_steps,)``; cheap at any size."""
        s = dataset_states(dataset, type(self).__name__)
        a = dataset.actions if actions is None else np.asarray(actions, dtype=np.int64)
        return self._model.behavior_prob_of(s, dataset_race_codes(dataset, type(self).__name__), a)

    def __call__(self, states: NDArray[np.float32], groups: dict[str, Any]) -> F64:
        """Callable form ``fn(states (n, 5), groups) -> probs (n, 300)``."""
        labels = np.asarray(groups["race_ethnicity"]).astype(str)
        codes = pd.Categorical(labels, categories=list(CARE_GROUP_LEVELS["race_ethnicity"])).codes
        return self._model.behavior_probs(np.asarray(states, dtype=np.float32),
                                          codes.astype(np.int64))


def _compatible() -> NDArray[np.bool_]:
    """``ok[modality, provider, goal]``: the combination is used by current practice."""
    ok = np.zeros((5, N_PROV, N_GOAL), dtype=bool)
    for mm, provs in MODALITY_PROVIDERS.items():
        for pp in provs:
            ok[mm, pp, list(PROVIDER_GOALS[pp])] = True
    return ok


_OK = _compatible()


@dataclass(frozen=True)
class CareReferencePolicy:
    """A hand-written targeted policy (deterministic), better than current practice.

    Rules, first match wins (thresholds on the observed state):

    1. ``risk >= 0.6``: urgent phone call by an RN about care coordination.
    2. ``sdoh_need >= 0.45``: home visit by a CHW about social needs (semi-urgent if
       ``sdoh_need >= 0.7``).
    3. ``chronic >= 0.45``: phone call by an RN about chronic disease.
    4. ``ed_90d >= 0.5``: phone call by a care coordinator about care coordination.
    5. ``risk >= 0.33``: phone call by a social worker about behavioural health.
    6. otherwise no contact.

    It contacts about as many member-weeks as current practice (~28%) but targets them better.
    With ``window > 1`` the policy also looks at the member's last ``window - 1`` weeks: when the
    most recent contact in the window was by a provider type that can serve the chosen goal with
    the chosen modality, that provider type is kept (continuity of care). This only helps when the
    simulator's ``history_dependence`` is on (use ``window = trust_lapse + 1 = 7`` or more).

    Parameters
    ----------
    window : int
        Rows of history the policy reads (1 = memoryless).
    """

    window: int = 1
    n_actions: int = N_ACTIONS

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 1:
            raise InvalidParameterError(
                f"The 'window' parameter of CareReferencePolicy must be a positive "
                             f"int. Got {self.window!r} instead.")

    def choose(self, states: NDArray[np.float32],
               last_provider: NDArray[np.int64] | None = None) -> NDArray[np.int64]:
        """Flat action of each row, shape ``(n,)``.

        Parameters
        ----------
        states : ndarray of shape (n, 5)
        last_provider : ndarray of shape (n,), optional
            Provider code of the most recent contact (-1: none); enables continuity.
        """
        s = np.asarray(states, dtype=np.float64)
        risk, ed, _eng, sdoh, chronic = (s[:, k] for k in range(5))
        n = s.shape[0]
        m = np.zeros(n, dtype=np.int64)
        p = np.zeros(n, dtype=np.int64)
        g = np.full(n, G_CHRONIC, dtype=np.int64)
        u = np.full(n, ROUTINE, dtype=np.int64)
        pending = np.ones(n, dtype=bool)

        def rule(cond: NDArray[np.bool_], mm: int, pp: int, gg: int,
                 uu: int | NDArray[np.int64]) -> None:
            hit = pending & cond
            m[hit], p[hit], g[hit] = mm, pp, gg
            u[hit] = uu if isinstance(uu, int) else uu[hit]
            pending[hit] = False

        rule(risk >= 0.6, PHONE, RN, G_COORD, URGENT)
        rule(sdoh >= 0.45, HOME, CHW, G_SOCIAL, np.where(sdoh >= 0.7, SEMI, ROUTINE))
        rule(chronic >= 0.45, PHONE, RN, G_CHRONIC, ROUTINE)
        rule(ed >= 0.5, PHONE, CC, G_COORD, ROUTINE)
        rule(risk >= 0.33, PHONE, SW, G_BH, ROUTINE)
        if last_provider is not None:
            lp = np.asarray(last_provider, dtype=np.int64)
            keep = (m > 0) & (lp >= 0) & _OK[m, np.maximum(lp, 0), g]
            p = np.where(keep, lp, p)
        return np.where(m > 0, m * N_PGU + p * N_GOAL * N_URG + g * N_URG + u, NO_CONTACT)

    def action_probs(self, dataset: TrajectoryDataset) -> F64:
        """One-hot probabilities, shape ``(n_steps, 300)``."""
        s = dataset_states(dataset, type(self).__name__)
        last = None
        if self.window > 1:
            last = _last_provider_before(dataset, self.window)
        a = self.choose(s, last)
        out = np.zeros((dataset.n_steps, N_ACTIONS))
        out[np.arange(dataset.n_steps), a] = 1.0
        return out


def _last_provider_before(dataset: TrajectoryDataset, window: int) -> NDArray[np.int64]:
    """Find the provider of the most recent contact in the previous ``window - 1`` rows.

    Returns the provider code per row (-1 if none in the same episode), shape ``(n_steps,)``.
    """
    n = dataset.n_steps
    a = dataset.actions
    is_contact = a >= N_PGU
    prov = (a // (N_GOAL * N_URG)) % N_PROV
    step = dataset.step
    out = np.full(n, -1, dtype=np.int64)
    for lag in range(window - 1, 0, -1):  # far to near: nearer contacts overwrite
        rows = np.flatnonzero(step >= lag)
        src = rows - lag
        hit = is_contact[src]
        out[rows[hit]] = prov[src[hit]]
    return out

