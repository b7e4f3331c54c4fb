"""scikit-learn's bundled 8x8 digits (1797 samples): the dataset that needs no download."""

from __future__ import annotations

import numpy as np
import torch

from .loader import Dataset

TEST_FRACTION = 0.2


def load_digits_dataset(seed: int = 0, test_fraction: float = TEST_FRACTION) -> Dataset:
    """Digits as (1, 8, 8) images with a seeded stratified train/test split.

    Pixels 0..16 are scaled to [0, 1], then normalised with the training split's mean/std
    (computed on train only, so the test set leaks nothing).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    raw = load_digits()
    images = raw.data.astype(np.float32) / 16.0  # (1797, 64)
    labels = raw.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
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
