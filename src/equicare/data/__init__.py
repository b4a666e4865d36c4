"""Datasets: the manifest contract, loading, validation, TrajectoryDataset and splits."""

from equicare.data._dataset import Episode, TrajectoryDataset
from equicare.data._io import (
    from_frame,
    load_dataset,
    read_table,
    to_frame,
    validate_path,
    write_csv,
    write_duckdb,
    write_parquet,
)
from equicare.data._manifest import ActionColumn, Manifest, RewardComponent, read_manifest
from equicare.data.validate import ValidationReport, validate_frame

__all__ = [
    "ActionColumn",
    "Episode",
    "Manifest",
    "RewardComponent",
    "TrajectoryDataset",
    "ValidationReport",
    "from_frame",
    "load_dataset",
    "read_manifest",
    "read_table",
    "to_frame",
    "validate_frame",
    "validate_path",
    "write_csv",
    "write_duckdb",
    "write_parquet",
]
