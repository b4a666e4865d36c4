"""Run configs, executors (local processes or Ray) and the run store."""

from equicare.pipeline._config import ConfigError, RunConfig, load_run_config, parse_grid
from equicare.pipeline._executor import (
    Executor,
    LocalExecutor,
    RayExecutor,
    SerialExecutor,
    get_executor,
)
from equicare.pipeline._store import Metric, RunStore

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
