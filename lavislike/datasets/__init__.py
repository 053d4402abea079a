"""lavislike.datasets: dataset classes, builders, the collate contract, samplers, bad data."""
from lavislike.datasets import synthetic  # noqa: F401  (registers the synthetic_* builders)
from lavislike.datasets import builders  # noqa: F401  (registers the real corpora)
from lavislike.datasets.bad_data import BadSampleError, BadSampleTracker, SkippedSample
from lavislike.datasets.builder import (
    BaseDatasetBuilder,
    BuildInfo,
    DatasetConfig,
    dataset_block,
    load_builder,
    load_datasets,
)
from lavislike.datasets.collate import collate

__all__ = [
    "BadSampleError",
    "BadSampleTracker",
    "BaseDatasetBuilder",
    "BuildInfo",
    "DatasetConfig",
    "SkippedSample",
    "collate",
    "dataset_block",
    "load_builder",
    "load_datasets",
]
