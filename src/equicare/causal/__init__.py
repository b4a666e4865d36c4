"""Causal mediation: dynamic (IDE, IME, DDE, DME; DM, MIS, MR) and single-time-point analyses.

``import equicare.causal`` is light: matplotlib loads only inside :func:`plot_mediation`.
"""

from equicare.causal._data import (
    MediationData,
    PolicyProbs,
    as_mediation_data,
    binarize_actions,
    collapse_probs,
    from_dataset,
)
from equicare.causal._dynamic import ESTIMATORS, DynamicMediation, PointExposureMediation
from equicare.causal._plot import plot_mediation
from equicare.causal._result import (
    EFFECT_KEYS,
    ETA_KEYS,
    EffectEstimate,
    EstimatorResult,
    MediationResult,
    PerStay,
)
from equicare.causal._single import SingleTimeMediation, SingleTimeResult

__all__ = [
    "DynamicMediation",
    "EFFECT_KEYS",
    "ESTIMATORS",
    "ETA_KEYS",
    "EffectEstimate",
    "EstimatorResult",
    "MediationData",
    "MediationResult",
    "PerStay",
    "PointExposureMediation",
    "PolicyProbs",
    "SingleTimeMediation",
    "SingleTimeResult",
    "as_mediation_data",
    "binarize_actions",
    "collapse_probs",
    "from_dataset",
    "plot_mediation",
]
