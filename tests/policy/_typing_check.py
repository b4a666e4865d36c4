"""Checked by ``mypy --strict`` in test_base.py: every policy class of the library is a Policy.

Not a test module (no ``test_`` prefix): it is only type-checked, never run.
"""

from __future__ import annotations

from equicare.dosing import OMG
from equicare.learn import AWR, BC, CQL, PVI, SPIBB
from equicare.policy import (
    BehaviorModel,
    CallablePolicy,
    CellPolicy,
    FilePolicy,
    FixedActionPolicy,
    LearnedPolicy,
    MixturePolicy,
    Policy,
    StatePolicy,
    TabularPolicy,
    TreePolicy,
    UniformPolicy,
)
from equicare.sim.care import CareManagementSim
from equicare.sim.heparin import NomogramPolicy


def take(policy: Policy) -> int:
    return policy.n_actions


def every_policy(
    a: UniformPolicy, b: FixedActionPolicy, c: MixturePolicy, d: TabularPolicy,
    e: CallablePolicy, f: FilePolicy, g: TreePolicy, h: CellPolicy, i: LearnedPolicy,
    j: StatePolicy, k: BehaviorModel, bc: BC, awr: AWR, cql: CQL, spibb: SPIBB, pvi: PVI,
    omg: OMG, nomogram: NomogramPolicy,
) -> list[int]:
    return [take(a), take(b), take(c), take(d), take(e), take(f), take(g), take(h), take(i),
            take(j), take(k), take(bc), take(awr), take(cql), take(spibb), take(pvi), take(omg),
            take(nomogram), take(CareManagementSim().behavior_policy()),
            take(CareManagementSim().behavior_policy(equitable=True))]
