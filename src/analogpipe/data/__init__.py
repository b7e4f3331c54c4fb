"""Datasets by name: bundled digits, CIFAR-10/100 from a local folder, synthetic problems.

``load_dataset`` returns a normalised in-memory ``Dataset``; ``batches`` and ``augment`` take
explicit generators so every epoch replays from the run's seed.
"""

from __future__ import annotations

import os
from pathlib import Path

from .cifar import load_cifar10, load_cifar100
from .digits import load_digits_dataset
from .loader import DataError, Dataset, augment, batches, flatten_dataset, take_subset
from .synthetic import make_synthetic_classification, make_teacher

DATASET_NAMES: tuple[str, ...] = ("digits", "cifar10", "cifar100", "teacher", "synthetic-cls")
DATA_DIR_ENV = "ANALOGPIPE_DATA"


def load_dataset(
    name: str = "digits",
    data_dir: str | Path | None = None,
    *,
    flatten: bool = False,
    subset: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by setting name.

    ``data_dir`` (CIFAR only) defaults to $ANALOGPIPE_DATA, else ./data. ``seed`` fixes the
    digits split, the synthetic problems and the ``subset`` shuffle; ``subset`` keeps that many
    training samples; ``flatten`` turns samples into vectors for the MLP.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset name {name!r} unknown; allowed: {', '.join(DATASET_NAMES)}")
    if name in ("cifar10", "cifar100"):
        folder = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV, "data")
        ds = load_cifar10(folder) if name == "cifar10" else load_cifar100(folder)
    elif name == "digits":
        ds = load_digits_dataset(seed=seed)
    elif name == "teacher":
        ds = make_teacher(seed=seed)
    else:
        ds = make_synthetic_classification(seed=seed)
    if subset is not None:
        ds = take_subset(ds, subset, seed=seed)
    if flatten:
        ds = flatten_dataset(ds)
    return ds


__all__ = [
    "DATASET_NAMES",
    "DataError",
    "Dataset",
    "augment",
    "batches",
    "flatten_dataset",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits_dataset",
    "make_synthetic_classification",
    "make_teacher",
    "take_subset",
]
