"""Small models for fast runs: a 3-block CNN (digits 1x8x8, CIFAR 3x32x32) and an MLP.

Like the ResNets they are ``nn.Sequential`` of named blocks (the partitioner cuts only between
children), built from plain layers the analog converter can replace. Initialisation uses torch
defaults from the global RNG: call ``torch.manual_seed`` first for identical parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def small_cnn(
    num_classes: int, in_channels: int, image_size: int, width: int = 16
) -> nn.Sequential:
    """Blocks "conv1" (w), "conv2" (2w, /2), "conv3" (4w, /2), "head" (avg pool + Linear).

    ``image_size`` (the smaller of H, W) must be >= 4 so both 2x2 max-pools keep a pixel; the
    global average pool makes the head independent of the exact size.
    """
    for setting, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("width", width),
    ):
        if value < 1:
            raise ValueError(f"{setting} must be >= 1, got {value}")
    if image_size < 4:
        raise ValueError(f"small_cnn needs image_size >= 4 (two 2x2 pools), got {image_size}")

    def conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        return nn.Sequential(*layers)

    model = nn.Sequential()
    model.add_module("conv1", conv_block(in_channels, width, pool=False))
    model.add_module("conv2", conv_block(width, 2 * width, pool=True))
    model.add_module("conv3", conv_block(2 * width, 4 * width, pool=True))
    model.add_module(
        "head",
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes)),
    )
    return model


def mlp(in_features: int, num_classes: int, hidden: Sequence[int] = (128, 64)) -> nn.Sequential:
    """Blocks "flatten", "fc1" (Linear+ReLU), ..., "fcK", "out" (Linear, logits).

    Accepts any input shape (N, ...) with prod(...) == in_features.
    """
    if in_features < 1 or num_classes < 1:
        raise ValueError(
            f"in_features and num_classes must be >= 1, got {in_features}, {num_classes}"
        )
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden sizes must be >= 1, got {tuple(hidden)}")
    model = nn.Sequential()
    model.add_module("flatten", nn.Flatten())
    prev = in_features
    for i, h in enumerate(hidden, start=1):
        model.add_module(f"fc{i}", nn.Sequential(nn.Linear(prev, h), nn.ReLU()))
        prev = h
    model.add_module("out", nn.Linear(prev, num_classes))
    return model
