"""Datasets by name: ``load_dataset(name, ...)`` returns an in-memory, normalised train/validation split.

Valid names: ``digits`` (scikit-learn's 1,797 real 8x8 handwritten digits, no download), ``imagefolder``
(one folder per class), ``mnist`` (user-supplied IDX files) and ``synthetic`` (procedural coloured shapes).
"""

from training.data.base import Dataset, Normalization
from training.data.batches import iterate_batches
from training.data.registry import DATASET_NAMES, load_dataset

__all__ = ["DATASET_NAMES", "Dataset", "Normalization", "iterate_batches", "load_dataset"]
