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
