"""Run configs, executors (local processes or Ray) and the run store."""

from equicare._lazy import lazy_exports
from equicare.pipeline._config import ConfigError, RunConfig, load_run_config, parse_grid
from equicare.pipeline._executor import (
    Executor,
    LocalExecutor,
    RayExecutor,
    SerialExecutor,
    get_executor,
)
from equicare.pipeline._store import Metric, RunStore

_LAZY = {
    "SelectConfig": "equicare.pipeline._select",
    "SelectionResult": "equicare.pipeline._select",
    "select_policy": "equicare.pipeline._select",
    "choose_by_bounds": "equicare.pipeline._select",
    "train_select": "equicare.pipeline._select",
    "PracticeFallback": "equicare.pipeline._select",
    # online experiments (hospital simulator, PPO / GRPO): loads torch when used
    "OnlineExperimentConfig": "equicare.pipeline._online",
    "run_seed": "equicare.pipeline._online",
    "run_experiment": "equicare.pipeline._online",
    "lambda_sweep": "equicare.pipeline._online",
    "compare_runs": "equicare.pipeline._online",
    "summarize_runs": "equicare.pipeline._online",
    "evaluate_hospital_policy": "equicare.pipeline._online",
}

__all__ = [
    "ConfigError",
    "Executor",
    "LocalExecutor",
    "Metric",
    "RayExecutor",
    "RunConfig",
    "RunStore",
    "SerialExecutor",
    "get_executor",
    "load_run_config",
    "parse_grid",
]
__all__ += sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("equicare.pipeline", _LAZY, globals())
