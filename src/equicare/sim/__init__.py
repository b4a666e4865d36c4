"""Simulators with known dynamics: the ground truth of every test and benchmark.

Names load lazily: ``import equicare.sim`` imports no simulator (gymnasium and torch stay out)
until one is used.
"""

from __future__ import annotations

from equicare._lazy import lazy_exports

_LAZY: dict[str, str] = {
    # care management (Medicaid-like weekly panel)
    "CareConfig": "equicare.sim.care",
    "CareManagementSim": "equicare.sim.care",
    "CarePanel": "equicare.sim.care",
    "CareValue": "equicare.sim.care",
    "CareBehaviorPolicy": "equicare.sim.care",
    "CareReferencePolicy": "equicare.sim.care",
    "CareManagementEnv": "equicare.sim.care",
    "CARE_ACTION_LEVELS": "equicare.sim.care",
    "CARE_STATE_NAMES": "equicare.sim.care",
    "CARE_GROUP_LEVELS": "equicare.sim.care",
    "CARE_REWARD_COLUMNS": "equicare.sim.care",
    "write_care_parts": "equicare.sim._care_parts",
    # dynamic mediation (exact truth)
    "DiscreteMediationMDP": "equicare.sim.mediation",
    "toy1": "equicare.sim.mediation",
    "toy2": "equicare.sim.mediation",
    "toy_target": "equicare.sim.mediation",
    "random_mediation_mdp": "equicare.sim.mediation",
    "effects_from_etas": "equicare.sim.mediation",
    # clinical-shaped random MDPs (Garnet) with exact values
    "EfficiencyBound": "equicare.sim.garnet",
    "GarnetConfig": "equicare.sim.garnet",
    "GarnetMDP": "equicare.sim.garnet",
    "GarnetPanel": "equicare.sim.garnet",
    "GARNET_PRESETS": "equicare.sim.garnet",
    "garnet_preset": "equicare.sim.garnet",
    "garnet_panel": "equicare.sim.garnet",
    "garnet_target_policies": "equicare.sim.garnet",
    "garnet_state_index": "equicare.sim.garnet",
    "garnet_policy_table": "equicare.sim.garnet",
    "synth_garnet": "equicare.sim._garnet_cli",
    # hospital patient flow (online RL)
    "HospitalConfig": "equicare.sim.hospital",
    "HospitalEnv": "equicare.sim.hospital",
    "HospitalVectorEnv": "equicare.sim.hospital",
    "hospital_scenario": "equicare.sim.hospital",
    "SCENARIOS": "equicare.sim.hospital",
    # heparin dosing
    "HeparinEnv": "equicare.sim.heparin",
    "HeparinConfig": "equicare.sim.heparin",
    "NomogramPolicy": "equicare.sim.heparin",
    "generate_heparin_data": "equicare.sim.heparin",
    "evaluate_heparin_policy": "equicare.sim.heparin",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("equicare.sim", _LAZY, globals())
