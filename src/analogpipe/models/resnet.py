"""CIFAR ResNets (SPEC section 7) built as named blocks for the pipeline partitioner.

Layout of ``resnet10`` (blocks [1, 1, 1, 1]) with base width ``w``::

    stem      Conv3x3(in -> w, stride 1) + BN + ReLU      (no max-pool: 32x32 stays 32x32)
    layer1    Stage: layer1.0 = BasicBlock(w  -> w,  stride 1)
    layer2    Stage: layer2.0 = BasicBlock(w  -> 2w, stride 2)
    layer3    Stage: layer3.0 = BasicBlock(2w -> 4w, stride 2)
    layer4    Stage: layer4.0 = BasicBlock(4w -> 8w, stride 2)
    head      AdaptiveAvgPool2d(1) + Flatten + Linear(8w -> num_classes)

``torch.nn`` forbids dots in a child's name, so the blocks "layer1.0", "layer1.1", ... live inside
a ``Stage`` container named "layer1"; ``model.get_submodule("layer1.0")`` finds them, and
``analogpipe.models.block_names`` lists the cuttable blocks in execution order.

Only plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.ReLU`` / pooling / ``nn.Linear`` are used so
that the analog converter can swap the Conv2d/Linear layers in place. Convs followed by BN have
``bias=False`` (the BN shift makes a bias redundant).

Initialisation uses torch defaults, which draw from the global RNG: call ``torch.manual_seed``
before construction for identical parameters.
"""

from __future__ import annotations

import torch
from torch import nn

BASE_WIDTH = 64
STAGE_STRIDES = (1, 2, 2, 2)


class Stage(nn.Sequential):
    """A named group of blocks (e.g. "layer1"); the partitioner may cut *inside* a Stage, between
    its blocks, unlike any other module. Exists only because child names cannot contain dots."""


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with a residual; 1x1 conv+BN shortcut when stride or width changes.

    Shapes: (N, in_ch, H, W) -> (N, out_ch, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def _check_positive(setting: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{setting} must be a positive int, got {value!r}")


def cifar_resnet(
    blocks_per_stage: tuple[int, int, int, int] | list[int],
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = BASE_WIDTH,
) -> nn.Sequential:
    """Generic CIFAR ResNet of BasicBlocks; stage widths (w, 2w, 4w, 8w), strides (1, 2, 2, 2)."""
    if len(blocks_per_stage) != len(STAGE_STRIDES):
        raise ValueError(
            f"blocks_per_stage needs {len(STAGE_STRIDES)} entries, got {list(blocks_per_stage)}"
        )
    for n in blocks_per_stage:
        _check_positive("blocks_per_stage entries", n)
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    _check_positive("width", width)

    model = nn.Sequential()
    model.add_module(
        "stem",
        nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ),
    )
    channels = width
    for i, (n_blocks, stride) in enumerate(zip(blocks_per_stage, STAGE_STRIDES), start=1):
        out_channels = width * 2 ** (i - 1)
        stage = Stage()
        for j in range(n_blocks):
            stage.add_module(str(j), BasicBlock(channels, out_channels, stride if j == 0 else 1))
            channels = out_channels
        model.add_module(f"layer{i}", stage)
    model.add_module(
        "head",
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)),
    )
    return model


def resnet10(num_classes: int = 10, in_channels: int = 3, width: int = BASE_WIDTH) -> nn.Sequential:
    """ResNet10 of the paper: one BasicBlock per stage."""
    return cifar_resnet((1, 1, 1, 1), num_classes, in_channels, width)


def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = BASE_WIDTH) -> nn.Sequential:
    """ResNet18: blocks [2, 2, 2, 2]."""
    return cifar_resnet((2, 2, 2, 2), num_classes, in_channels, width)


def resnet34(num_classes: int = 10, in_channels: int = 3, width: int = BASE_WIDTH) -> nn.Sequential:
    """ResNet34 of the paper: blocks [3, 4, 6, 3]."""
    return cifar_resnet((3, 4, 6, 3), num_classes, in_channels, width)
