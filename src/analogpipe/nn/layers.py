"""Autograd glue: analog Linear / Conv2d layers on tiles, and `convert_to_analog`.

The forward runs the tile's forward MVM on the conductances current at forward time. The
backward propagates the error through the conductances current at *backward* time (the tile is
read live, never copied) and stashes what the update needs; the update is applied later by
`AnalogSGD` / `tile.apply_update`. That is exactly the asynchronous pipeline's physics: no
weight stashing, forward and backward may see different weight versions.

Layers built directly are initialised as `nn.Linear` / `nn.Conv*d` initialise (Kaiming-uniform
weights, uniform bias in +-1/sqrt(fan_in)) from a generator seeded by the layer's seed, and the
weights are programmed onto the tile. `.weight` is a read-only copy of the logical weights
(out_scale * W) in the shape of the digital layer's weight; `.bias` is the digital bias.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analogpipe.errors import ConfigError, check
from analogpipe.tiles.io import PatchGeometry, compiled_column_dac
from analogpipe.tiles.tile import AnalogTile, TileConfig
from analogpipe.tiles.transfer import make_tile


class DigitalLayerWarning(UserWarning):
    """convert_to_analog left a layer with weights digital (its computation is not simulated
    on analog tiles)."""


class _LogicalWeight:
    """Read-only `.weight` of an analog layer: a copy of the logical weights, shaped like the
    digital layer's weight. Assigning to it raises (program weights with `set_weights`)."""

    def __get__(self, layer: Any, owner: type | None = None) -> Any:
        if layer is None:
            return self
        return layer.tile.get_weights().reshape(layer.weight_shape)

    def __set__(self, layer: Any, value: Any) -> None:
        raise AttributeError(
            f"{type(layer).__name__}.weight is a read-only view of the weights on the analog "
            "tile; program new weights with layer.set_weights(w) (mapped and clipped to the "
            "device range)")


def _init_like_torch(layer: Any, shape: tuple[int, ...]) -> None:
    """nn.Linear / nn.Conv*d's reset_parameters, drawn from the tile's init generator, then
    programmed onto the tile."""
    gen = layer.tile.init_generator()
    w = torch.empty(shape)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
    layer.set_weights(w)
    if layer.bias is not None:
        fan_in = w[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        with torch.no_grad():
            layer.bias.uniform_(-bound, bound, generator=gen)


def _anchor() -> Tensor:
    # An empty leaf that requires grad, so the backward runs (and stashes) even when the
    # layer's input does not require grad (the first layer of a network).
    return torch.empty(0, requires_grad=True)


def _check_dtype(layer: nn.Module, x: Tensor) -> None:
    """ConfigError naming the layer and both dtypes when the input's dtype is not the tile's."""
    tile_dtype = layer.tile.weight.dtype
    if x.dtype != tile_dtype:
        raise ConfigError(f"{type(layer).__name__}({layer.extra_repr()}): input dtype {x.dtype} "
                          f"but its tile holds {tile_dtype}; cast the input (x.to({tile_dtype}))"
                          f" or the model (model.to({x.dtype}))")


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
            else:  # the periphery is a constant for higher-order gradients (create_graph)
                dx = tile.backward_rows(d2.detach()).reshape(x.shape)
        db = d2.sum(0) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return dx, db, None, None


class AnalogLinear(nn.Module):
    """y = out_scale * (W x) + bias with W [out_features, in_features] on an analog tile; bias
    digital. x: [..., in_features] -> [..., out_features].

    init: initialise like nn.Linear from the seed and program the tile (False: zero weights,
    for callers that program weights right away).
    """

    analog_kind = "linear"
    weight = _LogicalWeight()

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: TileConfig | None = None, seed: int = 0, *, init: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.tile = make_tile(out_features, in_features, config or TileConfig(), seed)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._anchor = _anchor()
        if init:
            _init_like_torch(self, self.weight_shape)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def set_weights(self, w: Tensor) -> None:
        """Program logical weights of `weight_shape` onto the tile (mapped, clipped)."""
        self.tile.set_weights(torch.as_tensor(w).reshape(self.tile.out_size, -1))

    @classmethod
    def from_digital(cls, m: nn.Linear, config: TileConfig, seed: int = 0) -> AnalogLinear:
        layer = cls(m.in_features, m.out_features, m.bias is not None, config, seed, init=False)
        layer = layer.to(dtype=m.weight.dtype)  # the tile follows the layer's dtype (float64...)
        layer.tile.set_weights(m.weight.detach())
        if m.bias is not None:
            layer.bias.data.copy_(m.bias.detach())
        return layer.to(m.weight.device)

    def forward(self, x: Tensor) -> Tensor:
        _check_dtype(self, x)
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
        if tile.config.forward.is_perfect:
            return F.conv2d(x, layer.weight_view(), bias, layer.stride, layer.padding,
                            layer.dilation)
        n, _, h, w = x.shape
        ho, wo = layer.output_hw(h, w)
        # every patch through the periphery: the im2col copy and the DAC scaling in one pass,
        # the patch maxima from a max-pool of the channel maxima (9x less to read)
        y = tile.forward_patches(x, layer.geometry, None).view(n, tile.out_size, ho, wo)
        return y if bias is None else y + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, d: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        layer: AnalogConv2d = ctx.layer
        tile = layer.tile
        need_x, need_b = ctx.needs_input_grad[0], ctx.has_bias and ctx.needs_input_grad[1]
        dx = db = None
        # the periphery and the stash are constants for higher-order gradients (a backward
        # with create_graph runs this with grad mode on): they take detached tensors
        dd, xd = d.detach(), x.detach()
        d_abs = dd.abs() if not tile.needs_rows and tile.needs_abs_product else None
        grad = None
        if tile.config.backward.is_perfect:
            # one call, same output mask as autograd's conv backward: bit-identical gradients
            dx, grad, db = torch.ops.aten.convolution_backward(
                d, x, layer.weight_view(), [tile.out_size] if need_b else None, layer.stride,
                layer.padding, layer.dilation, False, [0, 0], 1, [need_x, True, need_b])
            grad = grad.reshape(tile.out_size, -1)
        else:
            if need_x:
                # errors as columns [N, out, L]; W^T d per output pixel through the periphery,
                # on the current weights, summed onto the input grid. On the torch route the
                # |d| of the abs product also gives the DAC's abs-max (the compiled column
                # DAC takes its own in the same pass)
                cols, io = dd.flatten(2), tile.config.backward
                if d_abs is not None and io.noise_management == "abs_max" and \
                        not compiled_column_dac(cols, io):
                    alpha = d_abs.flatten(2).amax(1, keepdim=True)
                else:
                    alpha = None
                dx = tile.backward_patches(cols, layer.geometry, x.shape[-2:], alpha)
            if need_b:
                db = d.sum((0, 2, 3))
        if tile.needs_rows:
            # patches as rows [N*L, C*kh*kw] (one copy from x); d as a view [N, L, out]
            tile.stash_rows(layer.patch_rows(xd), dd.flatten(2).transpose(1, 2))
        else:
            # sum over patches of d x^T is the conv weight gradient; |d| |x|^T likewise
            if grad is None:
                grad = layer.weight_grad(xd, dd)
            prod = layer.weight_grad(xd.abs(), d_abs) if d_abs is not None else None
            tile.stash_products(grad, prod)
        return dx, db, None, None


class AnalogConv2d(nn.Module):
    """2-d convolution whose kernel lives on a tile: every output pixel is one MVM (im2col).

    x: [N, in_channels, H, W] -> [N, out_channels, H_out, W_out]; the tile holds
    W [out_channels, in_channels * kh * kw]. groups = 1 and zero padding only.
    init: as for AnalogLinear (nn.Conv2d's initialisation from the seed).
    """

    analog_kind = "conv2d"
    weight = _LogicalWeight()

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = True,
                 config: TileConfig | None = None, seed: int = 0, *, init: bool = True) -> None:
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
        if init:
            _init_like_torch(self, self.weight_shape)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def set_weights(self, w: Tensor) -> None:
        """Program logical weights of `weight_shape` onto the tile (mapped, clipped)."""
        self.tile.set_weights(torch.as_tensor(w).reshape(self.tile.out_size, -1))

    @classmethod
    def _check_digital(cls, m: nn.Module) -> None:
        kind = type(m).__name__
        check(m.groups == 1, f"{kind}.groups", m.groups, "1 (grouped convs are not supported)")
        check(m.padding_mode == "zeros", f"{kind}.padding_mode", m.padding_mode, "'zeros'")
        check(isinstance(m.padding, tuple), f"{kind}.padding", m.padding,
              "explicit integers ('same'/'valid' strings are not supported)")

    @classmethod
    def from_digital(cls, m: nn.Conv2d, config: TileConfig, seed: int = 0) -> AnalogConv2d:
        cls._check_digital(m)
        layer = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                    m.dilation, m.bias is not None, config, seed, init=False)
        layer = layer.to(dtype=m.weight.dtype)  # the tile follows the layer's dtype (float64...)
        layer.tile.set_weights(m.weight.detach().reshape(m.out_channels, -1))
        if m.bias is not None:
            layer.bias.data.copy_(m.bias.detach())
        return layer.to(m.weight.device)

    def weight_view(self) -> Tensor:
        return self.tile.weight.view(self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def geometry(self) -> PatchGeometry:
        """The patch geometry (kernel_size, stride, padding, dilation)."""
        return PatchGeometry(self.kernel_size, self.stride, self.padding, self.dilation)

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        return self.geometry.output_hw(h, w)

    def patch_absmax(self, x: Tensor) -> Tensor:
        """max |x| over every patch [N, 1, 1, 1, H_out, W_out] (`PatchGeometry.patch_absmax`)."""
        return self.geometry.patch_absmax(x)

    def unfold(self, x: Tensor) -> Tensor:
        """`F.unfold(x)` [N, C*kh*kw, L] (the same values, as one strided copy: several times
        faster than im2col on the CPU)."""
        p = self.geometry.patches(x)
        return p.reshape(p.shape[0], -1, p.shape[4] * p.shape[5])

    def patch_rows(self, x: Tensor) -> Tensor:
        """The patches as rows [N*L, C*kh*kw] (what the pulsed update stashes), one copy."""
        p = self.geometry.patches(x)
        return p.permute(0, 4, 5, 1, 2, 3).reshape(-1, p.shape[1] * p.shape[2] * p.shape[3])

    def fold(self, cols: Tensor, hw: tuple[int, int] | torch.Size) -> Tensor:
        """`F.fold(cols, hw)` [N, C, H, W] (`PatchGeometry.fold`)."""
        return self.geometry.fold(cols, hw)

    def weight_grad(self, x: Tensor, d: Tensor) -> Tensor:
        """sum over images and output pixels of d (x) patch: [out, in*kh*kw]."""
        g = torch.ops.aten.convolution_backward(
            d, x, self.weight_view(), None, self.stride, self.padding, self.dilation, False,
            [0, 0], 1, [False, True, False])[1]
        return g.reshape(self.out_channels, -1)

    def forward(self, x: Tensor) -> Tensor:
        _check_dtype(self, x)
        check(x.dim() == 4 and x.shape[1] == self.in_channels, "conv input shape",
              tuple(x.shape), f"[N, {self.in_channels}, H, W]")
        ho, wo = self.output_hw(x.shape[2], x.shape[3])
        if ho < 1 or wo < 1:
            raise ConfigError(
                f"{type(self).__name__}({self.extra_repr()}): input size "
                f"{tuple(x.shape[2:])} (padded by {self.padding}) is smaller than the dilated "
                f"kernel; the output would be {ho}x{wo}. Use a larger input or a smaller "
                "kernel / dilation")
        scale = self.tile.out_scale
        if scale is None:
            return _ConvFn.apply(x, self.bias, self._anchor, self)
        y = _ConvFn.apply(x, None, self._anchor, self) * scale.view(1, -1, 1, 1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")


class AnalogConv1d(AnalogConv2d):
    """1-d convolution on a tile (aihwkit's AnalogConv1d): run as a 2-d convolution of height 1.

    x: [N, in_channels, L] -> [N, out_channels, L_out]; the tile holds
    W [out_channels, in_channels * kernel_size]. groups = 1 and zero padding only.
    """

    analog_kind = "conv2d"  # for the cost model: a 2-d conv with a 1 x k kernel
    weight = _LogicalWeight()

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int],
                 stride: int | tuple[int] = 1, padding: int | tuple[int] = 0,
                 dilation: int | tuple[int] = 1, bias: bool = True,
                 config: TileConfig | None = None, seed: int = 0, *, init: bool = True) -> None:
        single = nn.modules.utils._single
        (k,), (st,), (p,), (dl,) = (single(kernel_size), single(stride), single(padding),
                                    single(dilation))
        super().__init__(in_channels, out_channels, (1, k), (1, st), (0, p), (1, dl), bias,
                         config, seed, init=init)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, self.kernel_size[1])

    def forward(self, x: Tensor) -> Tensor:
        check(x.dim() == 3 and x.shape[1] == self.in_channels, "conv1d input shape",
              tuple(x.shape), f"[N, {self.in_channels}, L]")
        return super().forward(x.unsqueeze(2)).squeeze(2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size[1:]}, "
                f"stride={self.stride[1:]}, padding={self.padding[1:]}, "
                f"dilation={self.dilation[1:]}")


def analog_tiles(model: nn.Module) -> list[AnalogTile]:
    """All tiles of a model, in module order (the arrays inside a compound tile excluded)."""
    tiles = [m for m in model.modules() if isinstance(m, AnalogTile)]
    inner = {id(a) for t in tiles for a in getattr(t, "arrays", ())}
    return [t for t in tiles if id(t) not in inner]


ANALOG_LAYERS: tuple[type[nn.Module], ...] = (AnalogLinear, AnalogConv1d, AnalogConv2d)
# digital layers that aihwkit also keeps digital (normalisation is digital periphery): reported,
# not warned about
_DIGITAL_PERIPHERY = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                      nn.LocalResponseNorm, nn.RMSNorm)


def _analog_class(m: nn.Module) -> type | None:
    if isinstance(m, nn.Linear):
        return AnalogLinear
    if isinstance(m, nn.Conv2d):
        return AnalogConv2d
    if isinstance(m, nn.Conv1d):
        return AnalogConv1d
    return None


_MHA_REFUSAL = (
    "cannot run on analog tiles: its forward computes the q/k/v and output projections "
    "digitally from the weight tensors (torch.nn.functional.multi_head_attention_forward), so "
    "converted projections would silently stay digital (this refuses nn.TransformerEncoderLayer "
    "and nn.Transformer too). Build the attention from nn.Linear layers, which convert, or keep "
    "the model digital")


def _refuse(path: str, m: nn.Module, why: str) -> ConfigError:
    where = f"layer {path!r}" if path else "the model"
    return ConfigError(f"convert_to_analog: {where} ({type(m).__name__}) {why}")


def convert_to_analog(model: nn.Module, config: TileConfig, seed: int = 0,
                      inplace: bool = False, *,
                      report: list[tuple[str, str]] | None = None) -> nn.Module:
    """Replace every nn.Linear / nn.Conv1d / nn.Conv2d by its analog twin (same weights).

    model: a container or a bare nn.Linear / nn.Conv1d / nn.Conv2d (then the analog layer is
        returned). Tile i (module order) gets seed + i, so the same seed gives the same
        device-to-device draws and run-time noise. A layer object that appears several times in
        the model becomes one analog layer (weight sharing is kept).
    report: if a list is given, (qualified name, class name) of every module with weights that
        stays digital is appended to it (BatchNorm and other normalisation included).
    Returns the converted model (a deep copy unless inplace).

    Layers left digital that hold weights other than normalisation (nn.Embedding, nn.Conv3d,
    recurrent layers, custom parameters, ...) raise a DigitalLayerWarning naming them.
    Refused with ConfigError naming the layer: nn.MultiheadAttention (its forward computes the
    projections digitally from the weight tensors, so converted projections would not run on
    tiles: nn.TransformerEncoderLayer and the like are refused for the same reason), lazy
    layers without weights yet (LazyLinear, LazyConv*: run one forward first), grouped or
    non-zero-padded convolutions, and weights tied to another module (a converted copy would
    untie them).
    """
    if not inplace:
        model = copy.deepcopy(model)
    owners: dict[int, set[str]] = {}  # parameter -> every qualified name it has
    paths: dict[int, list[str]] = {}  # module -> every path it has (a module reused twice)
    for mname, mod in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(mod), []).append(mname)
        for pname, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), set()).add(f"{mname}.{pname}" if mname else pname)
    converted: dict[int, nn.Module] = {}
    digital: list[tuple[str, str]] = []
    counter = [0]

    def convert(path: str, m: nn.Module) -> nn.Module:
        if id(m) in converted:
            return converted[id(m)]
        cls = _analog_class(m)
        assert cls is not None
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            raise _refuse(path, m, "has no weights yet: run one forward pass on the digital "
                          "model (or give in_features / in_channels) before converting")
        for pname in ("weight", "bias"):
            p = getattr(m, pname, None)
            if p is None:
                continue
            own = {f"{q}.{pname}" if q else pname for q in paths.get(id(m), [path])}
            others = sorted(owners.get(id(p), set()) - own)
            if others:
                raise _refuse(path, m, f"shares its {pname} with {others} (tied weights); a "
                              "converted copy would untie them")
        try:
            layer = cls.from_digital(m, config, seed + counter[0])
        except ConfigError as e:
            raise _refuse(path, m, f"cannot be converted: {e}") from e
        layer.tile.layer_name = path or type(m).__name__
        counter[0] += 1
        converted[id(m)] = layer
        return layer

    def visit(prefix: str, parent: nn.Module) -> None:
        for name, child in list(parent._modules.items()):  # every slot, repeats included
            if child is None:
                continue
            path = f"{prefix}{name}"
            if isinstance(child, nn.MultiheadAttention):
                raise _refuse(path, child, _MHA_REFUSAL)
            if _analog_class(child) is not None:
                setattr(parent, name, convert(path, child))
                continue
            if isinstance(child, ANALOG_LAYERS):
                continue
            own = [n for n, _ in child.named_parameters(recurse=False)]
            if own:
                digital.append((path, type(child).__name__))
            visit(f"{path}.", child)

    if _analog_class(model) is not None:
        return convert("", model)
    if isinstance(model, nn.MultiheadAttention):
        raise _refuse("", model, _MHA_REFUSAL)
    if list(model.named_parameters(recurse=False)):
        digital.append(("", type(model).__name__))
    visit("", model)
    model.register_load_state_dict_pre_hook(_check_tile_configs_first)
    if report is not None:
        report.extend(digital)
    loud = [(n, t) for n, t in digital
            if not any(isinstance(model.get_submodule(n) if n else model, c)
                       for c in _DIGITAL_PERIPHERY)]
    if loud:
        listed = ", ".join(f"{n or '<root>'} ({t})" for n, t in loud)
        warnings.warn(f"convert_to_analog left these layers with weights digital (their "
                      f"computation runs in floating point, not on analog tiles): {listed}",
                      DigitalLayerWarning, stacklevel=2)
    return model


def _check_tile_configs_first(module: nn.Module, state_dict: Mapping[str, Any], prefix: str,
                              *args: Any) -> None:
    """load_state_dict pre-hook on a converted model: compare every tile's saved config with its
    own before any module loads, so a refused load leaves the whole model unchanged (not only
    the tile whose config differs)."""
    for name, sub in module.named_modules():
        if isinstance(sub, AnalogTile):
            extra = state_dict.get(f"{prefix}{name}._extra_state" if name else
                                   f"{prefix}_extra_state")
            if isinstance(extra, dict) and "config" in extra:
                sub.check_saved_config(extra["config"], warn=False)


def load_digital_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor],
                            strict: bool = True) -> None:
    """Load a *digital* model's state_dict into its analog conversion.

    Every `<layer>.weight` of a converted layer is programmed onto its tile (mapped by the
    tile's weight_scaling_omega and clipped to the device range, exactly as convert_to_analog
    does); biases and all digital modules (BatchNorm, ...) load as usual. Tile internals
    (conductances, device draws, output scales, generator states) are not expected in
    `state_dict`. strict: every key must be used and every digital parameter/buffer of the
    analog model must be present (as nn.Module.load_state_dict); raises KeyError naming them.
    """
    rest = dict(state_dict)
    tile_keys: set[str] = set()
    programmed: list[tuple[nn.Module, Tensor]] = []
    missing: list[str] = []
    expected = set(model.state_dict())
    for name, m in model.named_modules():
        if not isinstance(m, ANALOG_LAYERS):
            continue
        prefix = f"{name}." if name else ""
        tile_keys.update(prefix + "tile." + k for k in m.tile.state_dict())
        w = rest.pop(prefix + "weight", None)
        if w is None:
            missing.append(prefix + "weight")
            continue
        if tuple(w.shape) != m.weight_shape:
            raise ValueError(f"load_digital_state_dict: {prefix}weight has shape "
                             f"{tuple(w.shape)} but the analog layer expects {m.weight_shape}")
        programmed.append((m, w))
    expected -= tile_keys
    missing += sorted(expected - set(rest))
    unexpected = sorted(set(rest) - expected)
    if strict and (missing or unexpected):  # checked before anything is loaded
        raise KeyError(f"load_digital_state_dict: missing keys {missing}, unexpected keys "
                       f"{unexpected}")
    model.load_state_dict({k: v for k, v in rest.items() if k in expected}, strict=False)
    for m, w in programmed:
        m.set_weights(w)  # type: ignore[operator]
