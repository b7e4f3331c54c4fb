"""Models as ``nn.Sequential`` of named blocks, so a pipeline stage is a list of block names.

A *block* is the unit a partitioner may place on a stage; it never cuts inside one. Blocks are
the model's children, except that a ``Stage`` container (the ResNet "layer1".."layer4") is
opened up: its blocks are named "layer1.0", "layer1.1", ... (``model.get_submodule(name)``
returns them). Running the blocks of ``blocks(model)`` in order equals ``model(x)``.

Construction draws from torch's global RNG (default init): seed with ``torch.manual_seed``
before calling a builder for reproducible parameters.
"""

from __future__ import annotations

import math

from torch import nn

from .resnet import BasicBlock, Stage, cifar_resnet, resnet10, resnet18, resnet34
from .small import mlp, small_cnn

MODEL_NAMES: tuple[str, ...] = ("mlp", "cnn", "resnet10", "resnet18", "resnet34")

_RESNETS = {"resnet10": resnet10, "resnet18": resnet18, "resnet34": resnet34}


def blocks(model: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """(name, module) of every cuttable block in execution order; ``Stage`` children are opened."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, Stage):
            out.extend((f"{name}.{sub}", block) for sub, block in child.named_children())
        else:
            out.append((name, child))
    return out


def block_names(model: nn.Sequential) -> list[str]:
    """Names of the cuttable blocks in execution order (e.g. "stem", "layer1.0", ..., "head")."""
    return [name for name, _ in blocks(model)]


INITS = ("default", "he")


def initialize(model: nn.Module, scheme: str, seed: int) -> nn.Module:
    """Re-initialise the Linear / Conv2d weights of a digital model (before conversion).

    "default" keeps torch's init. "he" draws N(0, 2 / fan_in) (N(0, 1 / fan_in) for the last,
    logits, layer) with zero biases from a generator seeded by `seed`: torch's default
    (uniform, gain 1/sqrt(3)) shrinks the signal of a deep ReLU MLP so fast that a
    7-hidden-layer MLP does not learn at all.
    """
    import torch

    if scheme not in INITS:
        raise ValueError(f"init={scheme!r} is unknown: use one of {', '.join(INITS)}")
    if scheme == "default":
        return model
    gen = torch.Generator().manual_seed(seed * 1009 + 17)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for i, m in enumerate(layers):
        fan_in = math.prod(m.weight.shape[1:])
        gain = 1.0 if i == len(layers) - 1 else math.sqrt(2.0)
        w = torch.randn(*m.weight.shape, generator=gen) * (gain / math.sqrt(fan_in))
        with torch.no_grad():
            m.weight.copy_(w.to(m.weight))
            if m.bias is not None:
                m.bias.zero_()
    return model


def build_model(
    name: str, num_classes: int, in_shape: tuple[int, ...], width: int | None = None,
    depth: int | None = None,
) -> nn.Sequential:
    """Build a model by setting name; ``in_shape`` is the per-sample shape, e.g. (3, 32, 32).

    ``width``: base width of "cnn" (default 16) and the ResNets (default 64); for "mlp" the
    hidden sizes become (width, width // 2) instead of the default (128, 64), or ``depth``
    hidden layers of ``width`` units (default 64) when ``depth`` is given (deep pipelines).
    """
    in_shape = tuple(int(s) for s in in_shape)
    if name not in MODEL_NAMES:
        raise ValueError(f"model name {name!r} unknown; allowed: {', '.join(MODEL_NAMES)}")
    if not in_shape or any(s < 1 for s in in_shape):
        raise ValueError(f"in_shape must be a non-empty tuple of positive sizes, got {in_shape}")
    if width is not None and width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if depth is not None and (name != "mlp" or depth < 1):
        raise ValueError(f"depth={depth}: only the mlp takes a depth (number of hidden layers "
                         ">= 1, each of `width` units)")
    if name == "mlp":
        if depth is not None:
            hidden = (64 if width is None else width,) * depth
        else:
            hidden = (128, 64) if width is None else (width, max(1, width // 2))
        return mlp(math.prod(in_shape), num_classes, hidden)
    if len(in_shape) != 3:
        raise ValueError(
            f"model {name!r} needs in_shape (channels, height, width), got {in_shape}"
        )
    channels, height, wide = in_shape
    if name == "cnn":
        return small_cnn(num_classes, channels, min(height, wide), 16 if width is None else width)
    return _RESNETS[name](num_classes, channels, 64 if width is None else width)


__all__ = [
    "INITS",
    "MODEL_NAMES",
    "BasicBlock",
    "Stage",
    "block_names",
    "blocks",
    "build_model",
    "initialize",
    "cifar_resnet",
    "mlp",
    "resnet10",
    "resnet18",
    "resnet34",
    "small_cnn",
]
