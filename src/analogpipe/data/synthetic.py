"""Teacher-student problems with a known answer, for checking the theory of SPEC section 6.

Regression: ``y = W* x + eps`` with ``x ~ N(0, I)`` and ``eps ~ N(0, noise_std^2)``, so the
best achievable mean-squared error per output is ``noise_std^2`` and ``W*`` is the optimum.
Classification: labels ``argmax(W* x)``, each replaced with probability ``label_noise`` by a
uniformly drawn *different* class, so the Bayes error is about ``label_noise``.
"""

from __future__ import annotations

import math

import torch

from .loader import Dataset


def _teacher_weight(out_features: int, in_features: int, gen: torch.Generator) -> torch.Tensor:
    # Scaled so each teacher output has unit variance for x ~ N(0, I).
    return torch.randn(out_features, in_features, generator=gen) / math.sqrt(in_features)


def make_teacher(
    n_train: int = 2048,
    n_test: int = 512,
    in_features: int = 32,
    out_features: int = 8,
    noise_std: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Linear teacher regression; ``info`` holds ``teacher_weight`` (W*) and ``noise_std``."""
    if min(n_train, n_test, in_features, out_features) < 1:
        raise ValueError("n_train, n_test, in_features and out_features must all be >= 1")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    gen = torch.Generator().manual_seed(seed)
    w_star = _teacher_weight(out_features, in_features, gen)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, in_features, generator=gen)
        y = x @ w_star.T + noise_std * torch.randn(n, out_features, generator=gen)
        return x, y

    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    return Dataset(
        name="teacher",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=out_features,
        in_shape=(in_features,),
        task="regression",
        info={"teacher_weight": w_star, "noise_std": float(noise_std)},
    )


def make_synthetic_classification(
    n_train: int = 2048,
    n_test: int = 512,
    in_features: int = 32,
    num_classes: int = 4,
    label_noise: float = 0.05,
    seed: int = 0,
) -> Dataset:
    """Linear teacher classification with label noise.

    ``info`` holds ``teacher_weight``, ``label_noise`` and the clean labels of both splits
    (``clean_train_y``, ``clean_test_y``), so a test can measure the flip rate exactly.
    """
    if min(n_train, n_test, in_features) < 1 or num_classes < 2:
        raise ValueError("n_train, n_test, in_features must be >= 1 and num_classes >= 2")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    gen = torch.Generator().manual_seed(seed)
    w_star = _teacher_weight(num_classes, in_features, gen)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.randn(n, in_features, generator=gen)
        clean = (x @ w_star.T).argmax(dim=1)
        flip = torch.rand(n, generator=gen) < label_noise
        # A shift in [1, C-1] modulo C lands uniformly on one of the other classes.
        shift = torch.randint(1, num_classes, (n,), generator=gen)
        noisy = torch.where(flip, (clean + shift) % num_classes, clean)
        return x, noisy, clean

    train_x, train_y, clean_train = split(n_train)
    test_x, test_y, clean_test = split(n_test)
    return Dataset(
        name="synthetic-cls",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        in_shape=(in_features,),
        info={
            "teacher_weight": w_star,
            "label_noise": float(label_noise),
            "clean_train_y": clean_train,
            "clean_test_y": clean_test,
        },
    )
