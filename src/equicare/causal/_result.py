"""Typed results of mediation analyses and their Contract-6 JSON form."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["EffectEstimate", "EstimatorResult", "MediationResult", "PerStay", "ETA_KEYS",
           "EFFECT_KEYS", "CHAIN_KEYS", "MEDIATION_UNITS", "LOW_ESS_PCT", "LOW_WEIGHT_ESS_NOTE"]

#: Keys of the five long-run average rewards (Contract 6).
ETA_KEYS = ("pi_e", "pi_e_a0", "pi_e_a0star", "G", "a0")
#: Keys of the effects (Contract 6).
EFFECT_KEYS = ("ide", "ime", "dde", "dme", "total")
#: Keys of the three state chains whose stays end (Contract 6 ``end_rate``, ``stay_length``).
CHAIN_KEYS = ("pi_e", "G", "a0")
#: What the effects of a mediation table are differences of (tests match it).
MEDIATION_UNITS = ("Effects are differences of long-run average reward per step (eta, "
                   "docs/mediation.md), not of the discounted returns evaluate reports.")
#: Caption sentence when terminal rows entered as transitions to a new stay (tests match it).
RENEWED_NOTE = ("{n:,} stays end in a terminal row, which leads to a new stay's first state: "
                "each eta is then the outcome per stay divided by the stay's length, so a "
                "policy that shortens or lengthens stays moves it too.")
#: Caption sentence when censored stays' last rows are kept as steps (next to RENEWED_NOTE).
CENSORED_NOTE = ("{n:,} stays are censored (the window closed before they ended): their last "
                 "rows count as steps that did not end, and the next states seen on the other "
                 "steps stand for theirs (inverse-probability-of-censoring weights).")
#: Effective sample size, in % of the transitions, below which a weight is flagged (a
#: SupportWarning when estimated, and :data:`LOW_WEIGHT_ESS_NOTE` in the caption).
LOW_ESS_PCT = 10.0
#: Caption sentence when a ratio's effective sample size is below :data:`LOW_ESS_PCT`.
LOW_WEIGHT_ESS_NOTE = (
    "Effective sample size below 10% of the transitions: {which}. MIS's and MR's effects rest "
    "on a few rows and MR's standard errors and CIs can be far too narrow (docs/mediation.md "
    "'Rare mediator levels'); compare with dm.")
#: Caption sentence of the per-stay effects (tests match it).
PER_STAY_NOTE = ("Effects per stay: each process's eta divided by the rate at which its stays "
                 "end (renewal-reward), i.e. differences of the expected outcome per stay. "
                 "Mean stay length ({name}): {lengths} steps.")


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@dataclass(frozen=True)
class EffectEstimate:
    """One effect: value, standard error and confidence interval (``None`` when not estimable)."""

    value: float | None
    se: float | None = None
    ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"value": v, "se": s, "ci": [lo, hi]}``."""
        return {"value": _num(self.value), "se": _num(self.se),
                "ci": None if self.ci is None else [float(self.ci[0]), float(self.ci[1])]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EffectEstimate:
        """Inverse of :meth:`to_dict`."""
        ci = d.get("ci")
        return cls(d.get("value"), d.get("se"), None if ci is None else (ci[0], ci[1]))


@dataclass(frozen=True)
class PerStay:
    """Effects per stay of a renewed process (terminal outcomes, :mod:`equicare.causal._stay`).

    Attributes
    ----------
    effects : dict of str to EffectEstimate
        :data:`EFFECT_KEYS`: differences of the expected outcome per stay.
    value : dict of str to float or None
        Expected outcome per stay of each process (:data:`ETA_KEYS`): its eta divided by its
        chain's end rate; None where that rate is not positive.
    end_rate : dict of str to float or None
        Stay ends per step of the three state chains (:data:`CHAIN_KEYS`); ``1 / end_rate`` is
        the mean stay length in steps.
    note : str or None
        Why some per-stay values are not estimated (an end rate estimated at or below 0).
    """

    effects: dict[str, EffectEstimate]
    value: dict[str, float | None]
    end_rate: dict[str, float | None]
    note: str | None = None

    def stay_length(self) -> dict[str, float | None]:
        """Mean stay length in steps of each chain, ``1 / end_rate`` (None if not positive)."""
        return {k: (1.0 / v if v is not None and v > 0 else None)
                for k, v in self.end_rate.items()}

    def to_dict(self) -> dict[str, Any]:
        """Contract-6 ``per_stay`` entry of one estimator."""
        out: dict[str, Any] = {k: self.effects[k].to_dict() for k in EFFECT_KEYS}
        out["value"] = {k: _num(self.value.get(k)) for k in ETA_KEYS}
        out["end_rate"] = {k: _num(self.end_rate.get(k)) for k in CHAIN_KEYS}
        out["stay_length"] = {k: _num(v) for k, v in self.stay_length().items()}
        out["note"] = self.note
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PerStay:
        """Inverse of :meth:`to_dict`."""
        return cls({k: EffectEstimate.from_dict(d[k]) for k in EFFECT_KEYS},
                   dict(d.get("value") or {}), dict(d.get("end_rate") or {}), d.get("note"))


@dataclass(frozen=True)
class EstimatorResult:
    """Effects (:data:`EFFECT_KEYS`) and etas (:data:`ETA_KEYS`) of one estimator.

    ``note`` says why the effects have no standard error or CI (DM and MIS), else None.
    ``per_stay``: the effects per stay when terminal rows renew the process (:class:`PerStay`),
    else None.
    """

    effects: dict[str, EffectEstimate]
    eta: dict[str, float | None]
    note: str | None = None
    per_stay: PerStay | None = None

    def to_dict(self) -> dict[str, Any]:
        """Contract-6 entry of one estimator."""
        out: dict[str, Any] = {k: self.effects[k].to_dict() for k in EFFECT_KEYS}
        out["eta"] = {k: _num(self.eta.get(k)) for k in ETA_KEYS}
        out["note"] = self.note
        out["per_stay"] = None if self.per_stay is None else self.per_stay.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EstimatorResult:
        """Inverse of :meth:`to_dict`."""
        ps = d.get("per_stay")
        return cls({k: EffectEstimate.from_dict(d[k]) for k in EFFECT_KEYS},
                   dict(d.get("eta") or {}), d.get("note"),
                   None if ps is None else PerStay.from_dict(ps))


@dataclass(frozen=True)
class MediationResult:
    """Result of a dynamic mediation analysis.

    Attributes
    ----------
    n_episodes, n_steps : int
    control : str
        ``"a0=0"`` for a fixed control action, else the control policy's name.
    target : str
    estimators : dict of str to EstimatorResult
        Keys among ``"dm"``, ``"mis"``, ``"mr"``, ``"baseline"``.
    ess : dict of str to float
        Kish effective sample size of the state density ratios ``pi_e``, ``a0`` and ``G``.
    settings : dict
        The :class:`DynamicMediation` settings used.
    usual_care : {"deployed", "stored"} or None
        How states a policy leaves to current practice were valued (None: neither the target
        nor the control can leave one), as in ``evaluate`` and ``audit``.
    deferred_share : dict of str to float or None
        Share of the transitions whose state each policy that can defer (``"target"``,
        ``"control"``) leaves to current practice; None when none can.
    action : str or None
        The action set a multi-level action was collapsed to (``mediate --action``, the run's
        ``[mediation] action``), e.g. ``"modality=home_visit"``: the fixed control ``a0=0``
        is "never" it. None when the actions were not collapsed.
    n_renewed : int
        Transitions from a terminal row to a new stay's first state (the renewed process,
        :func:`equicare.causal._data.transition_rows`); when positive, each ``eta`` is the
        expected outcome per stay divided by the expected stay length.
    n_censored : int
        Censored last rows kept as steps without a next state (terminal panels only,
        :func:`equicare.causal._data.next_state_weights`).
    """

    n_episodes: int
    n_steps: int
    control: str
    estimators: dict[str, EstimatorResult]
    target: str = "target"
    ess: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    usual_care: str | None = None
    deferred_share: dict[str, float] | None = None
    action: str | None = None
    n_renewed: int = 0
    n_censored: int = 0

    def __getitem__(self, estimator: str) -> EstimatorResult:
        return self.estimators[estimator]

    def to_dict(self) -> dict[str, Any]:
        """Contract 6 (``equicare mediate --out mediation.json``) plus target, ess, usual care.

        ``usual_care`` and ``deferred_share`` are written as in the audit JSON.
        """
        out: dict[str, Any] = {"n_episodes": int(self.n_episodes), "n_steps": int(self.n_steps),
                               "control": self.control, "target": self.target,
                               "action": self.action, "n_renewed": int(self.n_renewed),
                               "n_censored": int(self.n_censored),
                               "usual_care": self.usual_care,
                               "deferred_share": (None if self.deferred_share is None else
                                                  {k: float(v) for k, v
                                                   in self.deferred_share.items()}),
                               "estimators": {k: v.to_dict() for k, v in self.estimators.items()}}
        if self.ess:
            out["ess"] = {k: float(v) for k, v in self.ess.items()}
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MediationResult:
        """Rebuild from :meth:`to_dict` output (settings are not part of the contract)."""
        return cls(n_episodes=int(d["n_episodes"]), n_steps=int(d["n_steps"]),
                   control=str(d["control"]), target=str(d.get("target", "target")),
                   estimators={k: EstimatorResult.from_dict(v)
                               for k, v in d["estimators"].items()},
                   ess=dict(d.get("ess") or {}), usual_care=d.get("usual_care"),
                   deferred_share=d.get("deferred_share"), action=d.get("action"),
                   n_renewed=int(d.get("n_renewed") or 0),
                   n_censored=int(d.get("n_censored") or 0))

    def caption(self) -> str:
        """What the effects are, for a reader of a table of them (terminal, run report).

        :data:`MEDIATION_UNITS`; the fixed control read as "never"/"always" the collapsed
        action set when there is one (``"Control a0=0: never modality=home_visit."``); and each
        distinct estimator note once, with the estimators it concerns (``"dm, mis: no standard
        error or CI: ..."``).
        """
        fixed = {"a0=0": "never", "a0=1": "always"}.get(str(self.control))
        text = MEDIATION_UNITS + (f" Control {self.control}: {fixed} {self.action}."
                                  if fixed and self.action else "")
        if self.n_renewed:
            text += " " + RENEWED_NOTE.format(n=self.n_renewed)
            if self.n_censored:
                text += " " + CENSORED_NOTE.format(n=self.n_censored)
        low = self.low_ess()
        if low:
            text += " " + LOW_WEIGHT_ESS_NOTE.format(which=", ".join(
                ("the mediator ratio" if k == "mediator" else f"the state density ratio of {k!r}")
                + f" {pct:.1f}%" for k, pct in low.items()))
        noted: dict[str, list[str]] = {}
        for name, est in self.estimators.items():
            if est.note:
                noted.setdefault(est.note, []).append(name)
        for note, names in noted.items():
            text += f" {', '.join(names)}: {note}."
        return text

    def low_ess(self) -> dict[str, float]:
        """Weights whose effective sample size is below :data:`LOW_ESS_PCT` % of the transitions.

        Returns ``{key: percent}``, the mediator ratio first, then the state density ratios
        (keys of :attr:`ess`), lowest first within each.
        """
        if not self.n_steps:
            return {}
        pct = {k: 100.0 * float(v) / self.n_steps for k, v in self.ess.items()}
        low = sorted((k for k, p in pct.items() if p < LOW_ESS_PCT),
                     key=lambda k: (k != "mediator", pct[k]))
        return {k: pct[k] for k in low}

    def per_stay_caption(self) -> str | None:
        """What the per-stay effects are (:data:`PER_STAY_NOTE`), or None without them.

        The mean stay lengths are those of the first estimator with per-stay effects and no
        note on them (MR's when it ran), else of the first with per-stay effects.
        """
        with_stays = [k for k in sorted(self.estimators, key=lambda k: k != "mr")
                      if self.estimators[k].per_stay is not None]
        order = sorted(with_stays, key=lambda k: self.estimators[k].per_stay.note is not None)  # type: ignore[union-attr]
        for name in order[:1]:
            ps = self.estimators[name].per_stay
            if ps is not None:
                lengths = ", ".join(f"{k} {'-' if v is None else f'{v:.3g}'}"
                                    for k, v in ps.stay_length().items())
                text = PER_STAY_NOTE.format(name=name, lengths=lengths)
                notes = dict.fromkeys(e.per_stay.note for e in self.estimators.values()
                                      if e.per_stay is not None and e.per_stay.note)
                return " ".join([text, *(f"{n}." for n in notes)])
        return None

    def to_frame(self) -> pd.DataFrame:
        """One row per (estimator, effect): ``estimator, effect, value, se, ci_low, ci_high``."""
        rows = []
        for name, est in self.estimators.items():
            for k in EFFECT_KEYS:
                e = est.effects[k]
                rows.append({"estimator": name, "effect": k, "value": _num(e.value),
                             "se": _num(e.se),
                             "ci_low": None if e.ci is None else e.ci[0],
                             "ci_high": None if e.ci is None else e.ci[1]})
        return pd.DataFrame(rows, columns=["estimator", "effect", "value", "se", "ci_low",
                                           "ci_high"])
