"""scikit-learn's bundled 8x8 digits (1797 samples): the dataset that needs no download."""

from __future__ import annotations

import numpy as np
import torch

from .loader import Dataset

FOLDS = 5  # test fraction 1/5


def load_digits_dataset(seed: int = 0, folds: int = FOLDS) -> Dataset:
    """Digits as (1, 8, 8) images, split by stratified k-fold cross-validation.

    The 1797 images are partitioned into `folds` stratified folds (shuffled with
    random_state = seed // folds); seed s tests on fold s % folds and trains on the rest. So
    seeds 0..folds-1 evaluate on every image exactly once (k-fold), and further seeds repeat
    that with another partition. Pixels 0..16 are scaled to [0, 1], then normalised with the
    training split's mean/std (computed on train only, so the test set leaks nothing).
    Raises ValueError for folds < 2 or a negative seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 for the digits split, got {seed}")
    raw = load_digits()
    images = raw.data.astype(np.float32) / 16.0  # (1797, 64)
    labels = raw.target.astype(np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed // folds)
    train_idx, test_idx = list(splitter.split(images, labels))[seed % folds]
    train_x, test_x = images[train_idx], images[test_idx]
    train_y, test_y = labels[train_idx], labels[test_idx]
    mean = float(train_x.mean())
    std = float(train_x.std())

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - mean) / std).float().reshape(-1, 1, 8, 8)

    return Dataset(
        name="digits",
        train_x=to_tensor(train_x),
        train_y=torch.from_numpy(train_y),
        test_x=to_tensor(test_x),
        test_y=torch.from_numpy(test_y),
        num_classes=10,
        in_shape=(1, 8, 8),
        mean=(mean,),
        std=(std,),
    )
