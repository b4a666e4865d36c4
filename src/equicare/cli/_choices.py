"""The choices of the command-line options, as ``str`` Enums so that ``--help`` lists them."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Sim", "Algo", "OfflineAlgo", "Encoder", "OmgReward", "Form", "BehaviorModel",
           "QModel", "EvalCI", "AuditCI", "Level", "AuditEstimator", "ValueEstimator", "Weight",
           "ExecutorName", "Labels", "ExplainMode", "Domain", "Curve", "Basis",
           "Env", "Scenario", "OnlineAlgo", "Mode", "GroupSignal", "Example", "Select",
           "UsualCare"]


class _Choice(StrEnum):
    """A choice: its value is the spelling on the command line."""


class Sim(_Choice):
    """Simulators of ``synth``."""

    CARE = "care"
    HEPARIN = "heparin"
    GARNET = "garnet"


class Algo(_Choice):
    """Learners of ``train``."""

    BC = "bc"
    AWR = "awr"
    CQL = "cql"
    SPIBB = "spibb"
    PVI = "pvi"
    OMG = "omg"


class Select(_Choice):
    """Candidate selection of ``train``."""

    AUTO = "auto"


class OfflineAlgo(_Choice):
    """Learners of ``frontier`` (the fairness-weighted offline learners)."""

    BC = "bc"
    AWR = "awr"
    CQL = "cql"


class Encoder(_Choice):
    """State encoders."""

    MLP = "mlp"
    LSTM = "lstm"


class OmgReward(_Choice):
    """Reward of OMG-RL."""

    LEARNED = "learned"
    DATASET = "dataset"


class Form(_Choice):
    """Layouts of a policy file."""

    WIDE = "wide"
    LONG = "long"


class BehaviorModel(_Choice):
    """Propensity models."""

    LOGISTIC = "logistic"
    LGBM = "lgbm"


class BehaviorForm(_Choice):
    """Forms of a propensity model over a multi-component action."""

    AUTO = "auto"
    CHAIN = "chain"
    FLAT = "flat"


class QModel(_Choice):
    """Q-models of FQE / DR."""

    AUTO = "auto"
    LINEAR = "linear"
    GBM = "gbm"
    MLP = "mlp"
    TABULAR = "tabular"
    TABULAR_STATIONARY = "tabular_stationary"
    TABULAR_BACKWARD = "tabular_backward"
    TABULAR_WINDOW = "tabular_window"


class EvalCI(_Choice):
    """Bootstrap intervals of ``evaluate``."""

    PERCENTILE = "percentile"
    BCA = "bca"
    STUDENTIZED = "studentized"


class UsualCare(_Choice):
    """How ``evaluate`` and ``audit`` value rows a policy leaves to current practice."""

    DEPLOYED = "deployed"
    STORED = "stored"


class AuditCI(_Choice):
    """Bootstrap intervals of ``audit``."""

    BASIC = "basic"
    PERCENTILE = "percentile"


class Level(_Choice):
    """Unit of the allocation rates."""

    STEP = "step"
    EPISODE = "episode"


class ValueEstimator(_Choice):
    """One OPE estimator (``frontier``)."""

    IS = "is"
    WIS = "wis"
    PDIS = "pdis"
    WPDIS = "wpdis"
    FQE = "fqe"
    DR = "dr"
    WDR = "wdr"


class AuditEstimator(_Choice):
    """One OPE estimator of the audit's group values, or none."""

    IS = "is"
    WIS = "wis"
    PDIS = "pdis"
    WPDIS = "wpdis"
    FQE = "fqe"
    DR = "dr"
    WDR = "wdr"
    NONE = "none"


class Weight(_Choice):
    """The fairness weight a frontier varies."""

    FAIR_LAMBDA = "fair_lambda"
    GROUP_ROBUST = "group_robust"


class ExecutorName(_Choice):
    """Executors."""

    LOCAL = "local"
    SERIAL = "serial"
    RAY = "ray"


class Domain(_Choice):
    """Bundled restless-bandit domains."""

    SYNTHETIC = "synthetic"
    MATERNAL = "maternal"
    DIABETES = "diabetes"


class Curve(_Choice):
    """Group value curves of the planners."""

    INDEX = "index"
    REFERENCE = "reference"
    EXACT = "exact"
    LP = "lp"


class Basis(_Choice):
    """State bases of mediation."""

    AUTO = "auto"
    ONEHOT = "onehot"
    SPLINE = "spline"
    RFF = "rff"
    POLY = "poly"
    CONSTANT = "constant"


class Env(_Choice):
    """Online simulators."""

    HOSPITAL = "hospital"


class Scenario(_Choice):
    """Hospital scenarios."""

    URBAN = "urban"
    RURAL = "rural"
    PAEDIATRIC = "paediatric"
    SURGE = "surge"


class OnlineAlgo(_Choice):
    """Online learners."""

    PPO = "ppo"
    GRPO = "grpo"


class Mode(_Choice):
    """GRPO robust terms."""

    MAX = "max"
    DRO = "dro"


class GroupSignal(_Choice):
    """GRPO group losses."""

    SERVED = "served"
    WELFARE = "welfare"


class Example(_Choice):
    """Run configurations shipped with equicare."""

    CARE = "care"


class Labels(_Choice):
    """What ``explain`` imitates."""

    ARGMAX = "argmax"
    SAMPLE = "sample"


class ExplainMode(_Choice):
    """What the rules of ``explain`` say."""

    EXCEPTIONS = "exceptions"
    IMITATE = "imitate"
