"""Autograd glue: analog Linear / Conv2d layers on tiles, and `convert_to_analog`.

The forward runs the tile's forward MVM on the conductances current at forward time. The
backward propagates the error through the conductances current at *backward* time (the tile is
read live, never copied) and stashes what the update needs; the update is applied later by
`AnalogSGD` / `tile.apply_update`. That is exactly the asynchronous pipeline's physics: no
weight stashing, forward and backward may see different weight versions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analogpipe.errors import check
from analogpipe.tiles.tile import AnalogTile, TileConfig
from analogpipe.tiles.transfer import make_tile


def _anchor() -> Tensor:
    # An empty leaf that requires grad, so the backward runs (and stashes) even when the
    # layer's input does not require grad (the first layer of a network).
    return torch.empty(0, requires_grad=True)


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor | None, anchor: Tensor, tile: AnalogTile) -> Tensor:
        ctx.tile = tile
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x)
        if tile.config.forward.is_perfect:
            return F.linear(x, tile.weight, bias)  # exact: same kernel as nn.Linear
        y = tile.forward_rows(x.reshape(-1, tile.in_size)).reshape(*x.shape[:-1], tile.out_size)
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, d: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        tile: AnalogTile = ctx.tile
        x2, d2 = x.reshape(-1, tile.in_size), d.reshape(-1, tile.out_size)
        tile.stash_rows(x2, d2)
        dx = None
        if ctx.needs_input_grad[0]:
            if tile.config.backward.is_perfect:
                dx = d.matmul(tile.weight)
            else:
                dx = tile.backward_rows(d2).reshape(x.shape)
        db = d2.sum(0) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return dx, db, None, None


class AnalogLinear(nn.Module):
    """y = out_scale * (W x) + bias with W on an analog tile; bias digital."""

    analog_kind = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: TileConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.tile = make_tile(out_features, in_features, config or TileConfig(), seed)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._anchor = _anchor()

    @classmethod
    def from_digital(cls, m: nn.Linear, config: TileConfig, seed: int = 0) -> AnalogLinear:
        layer = cls(m.in_features, m.out_features, m.bias is not None, config, seed)
        layer.tile.set_weights(m.weight.detach())
        if m.bias is not None:
            layer.bias.data.copy_(m.bias.detach())
        return layer.to(m.weight.device)

    def forward(self, x: Tensor) -> Tensor:
        check(x.shape[-1] == self.in_features, "input features", x.shape[-1],
              f"{self.in_features} (AnalogLinear.in_features)")
        scale = self.tile.out_scale
        if scale is None:
            return _LinearFn.apply(x, self.bias, self._anchor, self.tile)
        y = _LinearFn.apply(x, None, self._anchor, self.tile) * scale
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor | None, anchor: Tensor, layer: AnalogConv2d):
        tile = layer.tile
        ctx.layer = layer
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x)
        ctx.x_rows = None
        if tile.config.forward.is_perfect:
            return F.conv2d(x, layer.weight_view(), bias, layer.stride, layer.padding,
                            layer.dilation)
        n, _, h, w = x.shape
        ho, wo = layer.output_hw(h, w)
        cols = layer.unfold(x)  # [N, C*kh*kw, L]
        rows = cols.transpose(1, 2).reshape(-1, tile.in_size)
        if tile.needs_rows:  # the pulsed update needs every patch: keep them, no second im2col
            ctx.x_rows = rows
        y = tile.forward_rows(rows).reshape(n, ho * wo, tile.out_size).transpose(1, 2)
        y = y.reshape(n, tile.out_size, ho, wo)
        return y if bias is None else y + bias[None, :, None, None]

    @staticmethod
    def backward(ctx, d: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        layer: AnalogConv2d = ctx.layer
        tile = layer.tile
        need_x, need_b = ctx.needs_input_grad[0], ctx.has_bias and ctx.needs_input_grad[1]
        dx = db = None
        d_rows = None
        if tile.needs_rows or not tile.config.backward.is_perfect:
            d_rows = d.flatten(2).transpose(1, 2).reshape(-1, tile.out_size)  # [N*L, out]
        grad = None
        if tile.config.backward.is_perfect:
            # one call, same output mask as autograd's conv backward: bit-identical gradients
            dx, grad, db = torch.ops.aten.convolution_backward(
                d, x, layer.weight_view(), [tile.out_size] if need_b else None, layer.stride,
                layer.padding, layer.dilation, False, [0, 0], 1, [need_x, True, need_b])
            grad = grad.reshape(tile.out_size, -1)
        else:
            if need_x:
                z = tile.backward_rows(d_rows)  # [N*L, C*kh*kw], on the current weights
                cols = z.reshape(x.shape[0], -1, tile.in_size).transpose(1, 2)
                dx = F.fold(cols, x.shape[-2:], layer.kernel_size, layer.dilation,
                            layer.padding, layer.stride)
            if need_b:
                db = d.sum((0, 2, 3))
        if tile.needs_rows:
            x_rows = ctx.x_rows
            if x_rows is None:
                x_rows = layer.unfold(x).transpose(1, 2).reshape(-1, tile.in_size)
            ctx.x_rows = None
            tile.stash_rows(x_rows, d_rows)
        else:
            # sum over patches of d x^T is the conv weight gradient; |d| |x|^T likewise
            if grad is None:
                grad = layer.weight_grad(x, d)
            prod = layer.weight_grad(x.abs(), d.abs()) if tile.needs_abs_product else None
            tile.stash_products(grad, prod)
        return dx, db, None, None


class AnalogConv2d(nn.Module):
    """2-d convolution whose kernel lives on a tile: every output pixel is one MVM (im2col)."""

    analog_kind = "conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = True,
                 config: TileConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        for name in ("kernel_size", "stride", "dilation"):
            check(all(v >= 1 for v in getattr(self, name)), f"conv {name}", getattr(self, name),
                  "values >= 1")
        check(all(v >= 0 for v in self.padding), "conv padding", self.padding, "values >= 0")
        kh, kw = self.kernel_size
        self.tile = make_tile(out_channels, in_channels * kh * kw, config or TileConfig(),
                              seed)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._anchor = _anchor()

    @classmethod
    def from_digital(cls, m: nn.Conv2d, config: TileConfig, seed: int = 0) -> AnalogConv2d:
        check(m.groups == 1, "Conv2d.groups", m.groups, "1 (grouped convs are not supported)")
        check(m.padding_mode == "zeros", "Conv2d.padding_mode", m.padding_mode, "'zeros'")
        check(isinstance(m.padding, tuple), "Conv2d.padding", m.padding, "explicit integers")
        layer = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                    m.dilation, m.bias is not None, config, seed)
        layer.tile.set_weights(m.weight.detach().reshape(m.out_channels, -1))
        if m.bias is not None:
            layer.bias.data.copy_(m.bias.detach())
        return layer.to(m.weight.device)

    def weight_view(self) -> Tensor:
        return self.tile.weight.view(self.out_channels, self.in_channels, *self.kernel_size)

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        out = []
        for size, k, s, p, dl in zip((h, w), self.kernel_size, self.stride, self.padding,
                                     self.dilation):
            out.append((size + 2 * p - dl * (k - 1) - 1) // s + 1)
        return out[0], out[1]

    def unfold(self, x: Tensor) -> Tensor:
        return F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)

    def weight_grad(self, x: Tensor, d: Tensor) -> Tensor:
        """sum over images and output pixels of d (x) patch: [out, in*kh*kw]."""
        g = torch.ops.aten.convolution_backward(
            d, x, self.weight_view(), None, self.stride, self.padding, self.dilation, False,
            [0, 0], 1, [False, True, False])[1]
        return g.reshape(self.out_channels, -1)

    def forward(self, x: Tensor) -> Tensor:
        check(x.dim() == 4 and x.shape[1] == self.in_channels, "conv input shape",
              tuple(x.shape), f"[N, {self.in_channels}, H, W]")
        scale = self.tile.out_scale
        if scale is None:
            return _ConvFn.apply(x, self.bias, self._anchor, self)
        y = _ConvFn.apply(x, None, self._anchor, self) * scale[None, :, None, None]
        return y if self.bias is None else y + self.bias[None, :, None, None]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")


def analog_tiles(model: nn.Module) -> list[AnalogTile]:
    """All tiles of a model, in module order (the arrays inside a compound tile excluded)."""
    tiles = [m for m in model.modules() if isinstance(m, AnalogTile)]
    inner = {id(a) for t in tiles for a in getattr(t, "arrays", ())}
    return [t for t in tiles if id(t) not in inner]


def convert_to_analog(model: nn.Module, config: TileConfig, seed: int = 0,
                      inplace: bool = False) -> nn.Module:
    """Replace every nn.Linear / nn.Conv2d by its analog twin (same initial weights).

    Everything else (BatchNorm, pooling, activations) stays digital. Tile i gets seed + i, so
    the same seed gives the same device-to-device draws and the same run-time noise.
    """
    import copy

    if not inplace:
        model = copy.deepcopy(model)
    counter = [0]

    def visit(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, AnalogLinear.from_digital(child, config, seed + counter[0]))
                counter[0] += 1
            elif isinstance(child, nn.Conv2d):
                setattr(parent, name, AnalogConv2d.from_digital(child, config, seed + counter[0]))
                counter[0] += 1
            else:
                visit(child)

    if isinstance(model, (nn.Linear, nn.Conv2d)):
        raise TypeError("convert_to_analog expects a container module, got a bare layer")
    visit(model)
    return model
