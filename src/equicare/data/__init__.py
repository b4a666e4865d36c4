"""Datasets: the manifest contract, loading, validation, TrajectoryDataset and splits."""

from equicare.data._cells import CellChoice, choose_cells
from equicare.data._chunks import (
    Chunk,
    PanelScan,
    ShardSpec,
    cluster_panel,
    iter_chunks,
    iter_shard_chunks,
    plan_shards,
    scan_panel,
    validate_stream,
)
from equicare.data._dataset import Episode, TrajectoryDataset
from equicare.data._io import (
    from_frame,
    load_dataset,
    parquet_files,
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
    "CellChoice",
    "choose_cells",
    "Chunk",
    "ShardSpec",
    "cluster_panel",
    "iter_shard_chunks",
    "plan_shards",
    "PanelScan",
    "iter_chunks",
    "scan_panel",
    "validate_stream",
    "parquet_files",
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
