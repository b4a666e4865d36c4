"""Readable policies: distil any policy into rules, with their fidelity, value, fairness, support.

:class:`Distiller` fits a shallow scikit-learn decision tree that imitates a policy (weighted by
how much each choice matters), or learns where to deviate from current practice (exception
rules, every other state keeping the clinicians' own distribution); the result is a
:class:`~equicare.policy.TreePolicy` (itself a policy, saved as a model folder).
:func:`explain_policy` adds the evidence of a policy card: fidelity on held-out episodes,
off-policy value with intervals, a fairness audit, support and the size/fidelity/value frontier
over depths.
"""

from equicare._lazy import lazy_exports

__all__: list[str] = []

_LAZY = {
    "DistillConfig": "equicare.explain._distill",
    "Distiller": "equicare.explain._distill",
    "choice_weights": "equicare.explain._distill",
    "distill": "equicare.explain._distill",
    "feature_records": "equicare.explain._distill",
    "deviation_targets": "equicare.explain._distill",
    "fit_usual_care": "equicare.explain._usual",
    "ExplainConfig": "equicare.explain._evidence",
    "PolicyCard": "equicare.explain._evidence",
    "explain_policy": "equicare.explain._evidence",
    "fidelity": "equicare.explain._evidence",
    "support_share": "equicare.explain._evidence",
    "load_source_policy": "equicare.explain._source",
    "action_text": "equicare.explain._rules",
    "rules_text": "equicare.explain._rules",
    "tree_rules": "equicare.explain._rules",
}
__all__ += sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("equicare.explain", _LAZY, globals())
