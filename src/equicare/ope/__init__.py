"""Off-policy evaluation on one array core.

IS, WIS, PDIS, WPDIS, FQE, DR, WDR and the single-step DR, with effective sample sizes,
episode-level bootstrap intervals, support diagnostics, sensitivity analyses and subgroup
evaluation.
"""

from equicare.ope._bootstrap import (
    Estimate,
    bca_interval,
    bootstrap_ci,
    bootstrap_counts,
    bootstrap_replicates,
    cluster_counts,
    estimates_with_ci,
    percentile_interval,
    serial_map,
)
from equicare.ope._core import (
    ESTIMATOR_KEYS,
    EpisodeParts,
    OPEInputs,
    combine,
    episode_parts,
    jackknife_estimates,
    point_estimates,
)
from equicare.ope._ess import EffectiveSampleSize, effective_sample_size, kish_ess
from equicare.ope._estimators import (
    DR,
    FQE,
    IS,
    PDIS,
    WDR,
    WIS,
    WPDIS,
    BanditDR,
    OffPolicyEstimator,
)
from equicare.ope._evaluate import (
    EvaluationResult,
    GroupResult,
    evaluate,
    evaluate_subgroups,
    parse_estimators,
    refit_bootstrap,
)
from equicare.ope._fqe import FQEConfig, LoggedQFit, QFit, fit_fqe
from equicare.ope._ope_arrays import ope_arrays
from equicare.ope._prepare import Prepared, prepare, target_probabilities
from equicare.ope._resample import episode_keys, poisson_weights
from equicare.ope._select import QSelection, select_q_model
from equicare.ope._sensitivity import SENSITIVITY_COLUMNS, sensitivity_analysis
from equicare.ope._stream import (
    StreamEvaluation,
    StreamGroup,
    StreamSums,
    chunk_sums,
    evaluate_stream,
)
from equicare.ope._support import SupportReport, support_diagnostics

__all__ = [
    "StreamEvaluation",
    "StreamGroup",
    "StreamSums",
    "chunk_sums",
    "episode_keys",
    "evaluate_stream",
    "poisson_weights",
    "BanditDR",
    "DR",
    "ESTIMATOR_KEYS",
    "EffectiveSampleSize",
    "EpisodeParts",
    "Estimate",
    "EvaluationResult",
    "FQE",
    "FQEConfig",
    "GroupResult",
    "IS",
    "LoggedQFit",
    "OPEInputs",
    "OffPolicyEstimator",
    "PDIS",
    "Prepared",
    "QFit",
    "QSelection",
    "SENSITIVITY_COLUMNS",
    "SupportReport",
    "WDR",
    "WIS",
    "WPDIS",
    "bca_interval",
    "bootstrap_ci",
    "bootstrap_counts",
    "cluster_counts",
    "bootstrap_replicates",
    "combine",
    "effective_sample_size",
    "episode_parts",
    "estimates_with_ci",
    "evaluate",
    "evaluate_subgroups",
    "fit_fqe",
    "jackknife_estimates",
    "kish_ess",
    "ope_arrays",
    "parse_estimators",
    "percentile_interval",
    "point_estimates",
    "prepare",
    "refit_bootstrap",
    "select_q_model",
    "sensitivity_analysis",
    "serial_map",
    "support_diagnostics",
    "target_probabilities",
]
