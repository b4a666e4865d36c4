"""Fairness audits: allocation and outcome metrics by group, disparity tests, trade-off frontiers.

Allocation metrics (rate of an action set per group, demographic-parity gap and ratio,
proportional parity to clinical need) for the logged behaviour and any policy; outcome metrics
(per-group policy values, best-worst gap, Gini, worst-group value); episode-level bootstrap
intervals shared with the OPE engine; a vectorised permutation test; small-cell suppression;
Fairlearn interop; and the fairness-weight frontier of a learner.
"""

from equicare._lazy import lazy_exports
from equicare.fairness._allocation import AllocationFrame, allocation_rates, level_rates
from equicare.fairness._audit import AuditResult, FairnessAudit, PolicyAudit, audit
from equicare.fairness._bootstrap import bootstrap_ci, bootstrap_weights, percentile_ci
from equicare.fairness._diagnostics import WeightDiagnostics, weight_diagnostics
from equicare.fairness._fairlearn import allocation_rate, to_metric_frame
from equicare.fairness._gini import gini
from equicare.fairness._groups import GroupIndex, group_index
from equicare.fairness._outcome import OutcomeFrame
from equicare.fairness._permutation import permutation_test
from equicare.fairness._rows import need_rows
from equicare.fairness._stream import audit_stream

__all__ = [
    "AllocationFrame",
    "AuditResult",
    "FairnessAudit",
    "GroupIndex",
    "OutcomeFrame",
    "PolicyAudit",
    "WeightDiagnostics",
    "allocation_rate",
    "allocation_rates",
    "audit",
    "audit_stream",
    "bootstrap_ci",
    "bootstrap_weights",
    "gini",
    "group_index",
    "level_rates",
    "need_rows",
    "percentile_ci",
    "permutation_test",
    "to_metric_frame",
    "weight_diagnostics",
]

# --- heavy or higher-level parts, loaded on first use (matplotlib; learners and executors)
_LAZY = {
    "plot_allocation": "equicare.fairness._plots",
    "plot_parity_gaps": "equicare.fairness._plots",
    "frontier": "equicare.pipeline._frontier",
    "FrontierResult": "equicare.pipeline._frontier",
    "pareto_mask": "equicare.pipeline._frontier",
}
__all__ += sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("equicare.fairness", _LAZY, globals())
