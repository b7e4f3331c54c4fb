"""The crossbar tile: conductances + device state + periphery + a stash of pending updates.

A tile holds W [out, in] in conductance units. The logical weight of the layer is
`out_scale[:, None] * W` where `out_scale` is a digital per-output-column factor (fixed mapping
or learnable, aihwkit's `weight_scaling_omega` + `learn_out_scaling`).

The seam with the pipeline: the backward pass *stashes* what the update needs (the gradient
products, or the raw (x, d) rows for pulsed updates) and `apply_update(lr, count)` applies the
oldest `count` stash entries later. The schedule decides when; the MVMs always read the current
conductances, so a forward and a backward can see different weight versions.

Micro-batches: a layer used several times in one forward (weight sharing) stashes one entry per
use. The executors call `end_microbatch()` after each backward, so the stash is grouped per
micro-batch and `apply_update(lr, count)` applies `count` *micro-batches* (all their entries).
Entries stashed since the last `end_microbatch()` count as one micro-batch.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from analogpipe.devices import (
    DeviceConfig,
    DeviceState,
    clip_to_bounds,
    expected_update_,
    is_symmetric_soft_bounds,
    sample_device_state,
)
from analogpipe.errors import ConfigError, NonFiniteUpdateError, check
from analogpipe.tiles import jit
from analogpipe.tiles.io import (
    IOConfig,
    PatchGeometry,
    _rows_ok,
    analog_mvm,
    analog_mvm_fold,
    analog_mvm_patches,
)
from analogpipe.tiles.pulses import UpdateConfig, pulsed_update_
from analogpipe.tiles.updatekernel import softbounds_outer_update_, softbounds_update_

# fields that do not change the simulated physics (memory/speed budgets): ignored when a saved
# tile state is compared with the model's config
_NON_PHYSICS_FIELDS = frozenset({"update.chunk_elements"})
_accepting = threading.local()


@contextlib.contextmanager
def accept_config_changes() -> Iterator[None]:
    """Within this block, loading a tile state saved with a different TileConfig is allowed.

    The model keeps its own config; the saved conductances (and the device-to-device draws,
    where both configs have them) are loaded. A warning names the fields that differ. Outside
    the block such a load raises ConfigError.
    """
    prev = getattr(_accepting, "on", False)
    _accepting.on = True
    try:
        yield
    finally:
        _accepting.on = prev


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'field: saved X, this model Y' for every physics field where two TileConfig dicts
    differ (memory budgets such as update.chunk_elements are ignored)."""
    a, b = _flatten(saved), _flatten(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if key in _NON_PHYSICS_FIELDS:
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb and not (isinstance(va, float) and isinstance(vb, float)
                             and math.isnan(va) and math.isnan(vb)):
            out.append(f"{key}: saved {va!r}, this model {vb!r}")
    return out


@dataclass(frozen=True, kw_only=True)
class MappingConfig:
    """Digital periphery mapping layer weights onto conductances.

    weight_scaling_omega: if set, each output row is programmed so that its largest |w| equals
        omega (in conductance units), and the row's scale goes to `out_scale`; None programs the
        weights as they are (clipped to the device range).
    learn_out_scaling: `out_scale` is a trainable digital parameter (plain SGD).
    """

    weight_scaling_omega: float | None = None
    learn_out_scaling: bool = False

    def __post_init__(self) -> None:
        if self.weight_scaling_omega is not None:
            om = self.weight_scaling_omega
            check(math.isfinite(om) and om > 0, "mapping.weight_scaling_omega", om,
                  "a value > 0 (and below the device's w_max), or None")


@dataclass(frozen=True, kw_only=True)
class TileConfig:
    """Everything that defines an analog tile (aihwkit's RPUConfig). Plain data, no classes."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    forward: IOConfig = field(default_factory=IOConfig)
    backward: IOConfig = field(default_factory=IOConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)

    def __post_init__(self) -> None:
        om = self.mapping.weight_scaling_omega
        if om is not None and self.device.name != "ideal":
            check(om <= self.device.w_max and om <= -self.device.w_min,
                  "mapping.weight_scaling_omega", om,
                  f"a value within the device range [{self.device.w_min}, {self.device.w_max}]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TileConfig:
        return cls(
            device=DeviceConfig(**d["device"]),
            forward=IOConfig(**d["forward"]),
            backward=IOConfig(**d["backward"]),
            update=UpdateConfig(**d["update"]),
            mapping=MappingConfig(**d["mapping"]),
        )

    @property
    def is_digital_equivalent(self) -> bool:
        """Ideal device, perfect IO, no mapping: the tile is exact digital SGD."""
        return (self.device.name == "ideal" and self.forward.is_perfect
                and self.backward.is_perfect and self.mapping.weight_scaling_omega is None
                and not self.mapping.learn_out_scaling and self.update.mode == "expected")


class AnalogTile(nn.Module):
    """A crossbar array of `out_size x in_size` devices with its periphery."""

    def __init__(self, out_size: int, in_size: int, config: TileConfig, seed: int = 0) -> None:
        super().__init__()
        check(out_size >= 1 and in_size >= 1, "tile size", (out_size, in_size), "sizes >= 1")
        self.out_size, self.in_size, self.config, self.seed = out_size, in_size, config, seed
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.zeros(out_size, in_size))
        state = sample_device_state(config.device, (out_size, in_size), gen)
        self._state_fields: list[str] = []
        self._state_scalars: dict[str, float] = {}
        for name, value in vars(state).items():
            if isinstance(value, Tensor):
                self.register_buffer(f"dev_{name}", value)
                self._state_fields.append(name)
            else:
                self._state_scalars[name] = value
        self._init_periphery(out_size)

    def _init_periphery(self, out_size: int) -> None:
        """The digital mapping (`out_scale`), the generators and the stash (shared with
        compound tiles)."""
        m = self.config.mapping
        if m.learn_out_scaling:
            self.out_scale: Tensor | None = nn.Parameter(torch.ones(out_size))
        elif m.weight_scaling_omega is not None:
            self.register_buffer("out_scale", torch.ones(out_size))
        else:
            self.out_scale = None
        # run-time randomness: one seeded generator per purpose (forward noise, backward noise,
        # pulse trains), so that schedules which reorder forwards and backwards of different
        # micro-batches (GPipe vs no pipeline) still draw the same numbers for each of them
        self._generators: dict[str, torch.Generator] = {}
        self._stash: deque[tuple[Tensor | _RankOne, Tensor | None]] = deque()
        self._groups: deque[int] = deque()  # entries per closed micro-batch, oldest first
        self._open = 0  # entries stashed since the last end_microbatch()
        self.layer_name: str | None = None  # set by convert_to_analog / AnalogSGD (messages)

    # --- state -------------------------------------------------------------------------
    @property
    def device_state(self) -> DeviceState:
        values = dict(self._state_scalars)
        values.update({n: getattr(self, f"dev_{n}") for n in self._state_fields})
        return DeviceState(**values)

    def generator(self, purpose: str) -> torch.Generator:
        """The tile's generator for 'forward', 'backward', 'update' or 'eval' (forward MVMs in
        eval mode, so that evaluating never shifts the training streams)."""
        dev = self.weight.device
        gen = self._generators.get(purpose)
        if gen is None or gen.device != dev:
            gen = torch.Generator(device=dev).manual_seed(self._stream_seed(purpose, 0))
            self._generators[purpose] = gen
        return gen

    def _stream_seed(self, purpose: str, salt: int) -> int:
        offset = {"forward": 1, "backward": 2, "update": 3, "eval": 4, "init": 5}[purpose]
        return (self.seed * 8 + offset + 1_000_003 + salt * 7_919) % (2**63)

    def init_generator(self) -> torch.Generator:
        """A fresh CPU generator for the layer's initial weights (its own stream: independent of
        the device-to-device draws and of the run-time noise)."""
        return torch.Generator().manual_seed(self._stream_seed("init", 0))

    def describe(self) -> str:
        """How messages name this tile: its layer's name when known."""
        size = f"{self.out_size}x{self.in_size}"
        return f"analog layer {self.layer_name!r} ({size})" if self.layer_name else \
            f"analog tile {size}"

    def reseed(self, purpose: str, salt: int) -> None:
        """Restart one stream from (seed, purpose, salt), e.g. the eval noise of each epoch."""
        self.generator(purpose).manual_seed(self._stream_seed(purpose, salt))

    @torch.no_grad()
    def set_weights(self, w: Tensor) -> None:
        """Program logical weights [out, in]: map rows by omega (if set) and clip to bounds."""
        check(tuple(w.shape) == (self.out_size, self.in_size), "weights shape", tuple(w.shape),
              f"{(self.out_size, self.in_size)}")
        self.weight.copy_(self._map_rows(w))
        clip_to_bounds(self.weight, self.device_state, self.config.device)

    @torch.no_grad()
    def _map_rows(self, w: Tensor) -> Tensor:
        """aihwkit's weight_scaling_omega mapping of logical weights [out, in]: each row's
        scale max|w_row| / omega goes to `out_scale` (1 for an all-zero row) and the row is
        divided by it; without omega, w as it is. Returns conductance-unit weights (a copy)."""
        w = w.detach().to(self.weight)
        om = self.config.mapping.weight_scaling_omega
        if om is None:
            return w.clone()
        row_max = w.abs().amax(dim=1)
        scale = torch.where(row_max > 0, row_max / om, torch.ones_like(row_max))
        self.out_scale.data.copy_(scale)
        return w / scale[:, None]

    @torch.no_grad()
    def get_weights(self) -> Tensor:
        """Logical weights out_scale * W (a copy)."""
        if self.out_scale is None:
            return self.weight.clone()
        return self.out_scale.detach()[:, None] * self.weight

    def saturation(self) -> Tensor:
        """|w| / bound per element (the SPEC's saturation); zeros for an ideal device."""
        if self.config.device.name == "ideal":
            return torch.zeros_like(self.weight)
        st = self.device_state
        return torch.where(self.weight >= 0, self.weight / st.b_max, self.weight / st.b_min)

    def get_extra_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "config": self.config.to_dict(),
                "generators": {k: (str(g.device), g.get_state())
                               for k, g in self._generators.items()}}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:  # type: ignore[override]
        # compare the configs before any of this tile's buffers are overwritten
        extra = state_dict.get(prefix + "_extra_state")
        if isinstance(extra, dict) and "config" in extra:
            self.check_saved_config(extra["config"])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def check_saved_config(self, saved: dict[str, Any], warn: bool = True) -> None:
        """Raise ConfigError naming the fields where a saved tile config differs from this
        tile's (inside `accept_config_changes()`: warn instead, or stay silent if not warn)."""
        diff = config_differences(saved, self.config.to_dict())
        if not diff:
            return
        fields = "; ".join(diff)
        if getattr(_accepting, "on", False):
            if not warn:
                return
            warnings.warn(f"{self.describe()}: loaded a state saved with a different tile "
                          f"config ({fields}); keeping this model's config", stacklevel=3)
            return
        raise ConfigError(
            f"{self.describe()}: the state was saved with a different tile config: {fields}. "
            "Build the model with the saved config (TileConfig.from_dict), or load inside "
            "`with analogpipe.tiles.accept_config_changes():` to keep this model's config and "
            "take only the saved conductances")

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = state["seed"]
        self._generators = {}
        for purpose, (device, gstate) in state.get("generators", {}).items():
            gen = self.generator(purpose)
            if str(gen.device) == device:  # a CPU state cannot seed a CUDA generator
                gen.set_state(gstate)

    # --- MVMs (rows are batch rows or conv patches) ------------------------------------
    def forward_rows(self, x: Tensor) -> Tensor:
        """y = W x through the forward periphery. x: [S, in] -> [S, out]."""
        purpose = "forward" if self.training else "eval"
        return analog_mvm(x, self.weight, self.config.forward, self.generator(purpose))

    def backward_rows(self, d: Tensor) -> Tensor:
        """z = W^T d through the backward periphery, on the *current* W. d: [S, out] -> [S, in]."""
        return analog_mvm(d, self.weight, self.config.backward, self.generator("backward"),
                          transposed=True)

    def forward_patches(self, x: Tensor, geometry: PatchGeometry,
                        alpha: Tensor | None) -> Tensor:
        """`forward_rows` of every conv patch of x [N, C, H, W] (geometry: the conv's; alpha:
        the patches' abs-max [N, 1, 1, 1, Ho, Wo], or None) -> [N, out, Ho*Wo]; see
        `analog_mvm_patches`."""
        purpose = "forward" if self.training else "eval"
        return analog_mvm_patches(x, geometry, alpha, self.weight, self.config.forward,
                                  self.generator(purpose))

    def backward_patches(self, d: Tensor, geometry: PatchGeometry,
                         hw: tuple[int, int] | torch.Size, alpha: Tensor | None = None
                         ) -> Tensor:
        """The conv input gradient: `backward_rows` of every output pixel's error, d as
        columns [N, out, L], summed back onto the input grid of size hw -> [N, C, H, W]; see
        `analog_mvm_fold` (alpha: the errors' abs-max per pixel [N, 1, L], or None)."""
        return analog_mvm_fold(d, geometry, hw, self.weight, self.config.backward,
                               self.generator("backward"), alpha)

    # --- stash and update ---------------------------------------------------------------
    @property
    def needs_rows(self) -> bool:
        """Pulsed updates need every sample's (x, d); expected ones only gradient products."""
        return self.config.update.mode == "pulsed"

    @property
    def updated_device(self) -> DeviceConfig:
        """The device the gradient update pulses (a compound tile's fast array A)."""
        return self.config.device

    @property
    def needs_abs_product(self) -> bool:
        u = self.config.update
        return (u.mode == "expected" and u.granularity == "sample"
                and self.updated_device.name != "ideal")

    def update_compensation(self) -> Tensor | None:
        """1 / out_scale^2 per output row [out], or None without output scaling.

        The error d reaching the tile's output already carries the factor s (chain rule through
        y = s * W x). Updating W with d directly would move the logical weight s * W by
        -lr * s^2 * d_logical x^T. aihwkit's mapping divides the update's error by the mapping
        scale so that the logical weight follows plain SGD; analogpipe does the same for the whole
        output scale (fixed omega mapping and learned scaling): W moves by -lr * d / s^2 x^T,
        so s * W moves by -lr * d_logical x^T. A zero scale is treated as 1 (no compensation).
        """
        s = self.out_scale
        if s is None:
            return None
        s2 = s.detach().square()
        return torch.where(s2 > 0, s2.reciprocal(), 1.0)

    def _refuse_non_finite(self, what: str) -> None:
        raise NonFiniteUpdateError(
            f"{self.describe()}: {what} contains NaN or inf; no conductance was changed "
            "(the update would write non-finite weights). Check the data and the layers "
            "before it, or lower the learning rate")

    def stash_rows(self, x: Tensor, d: Tensor) -> None:
        """Stash one use's rows x [S, in], d [..., out] (any leading dims, any strides: a conv
        passes its error as a transposed view [N, L, out], stored here as rows [S, out]).

        d is the gradient at the tile's output (it includes out_scale); the stash holds it
        compensated by `update_compensation()`, so the logical weight follows SGD.
        Raises NonFiniteUpdateError (naming the layer) if x or d holds NaN or inf.
        """
        x, d = x.detach(), d.detach()
        small = _small_stash(x, d, self.out_scale)
        if small is not None:  # compensated rows and both abs-maxima in one compiled pass
            d, x_max, d_max = small
            x_ok, d_ok = math.isfinite(x_max), math.isfinite(d_max)
        else:
            comp = self.update_compensation()
            if comp is not None or not d.is_contiguous():
                # rows written in one pass: the compensation, the transpose and the copy
                rows = torch.empty(d.shape, dtype=d.dtype, device=d.device)
                d = rows.copy_(d) if comp is None else torch.mul(d, comp, out=rows)
            d = d.reshape(-1, d.shape[-1])
        if self.needs_rows:
            if not (x_ok if small is not None else _all_finite(x)):
                self._refuse_non_finite("the layer input x stashed for the pulsed update")
            if not (d_ok if small is not None else _all_finite(d)):
                self._refuse_non_finite("the error d (gradient at the layer output) stashed for "
                                        "the pulsed update")
            entry: tuple[Tensor, Tensor | None] = (x, d)
        else:
            xa = da = None
            if small is None:
                xa, da = x.abs(), d.abs()
                x_max = float(xa.amax()) if x.numel() else 0.0
                d_max = float(da.amax()) if d.numel() else 0.0
            # |grad| <= S max|x| max|d|: when that bound is finite (NaN and inf propagate
            # into it) the product is finite, without a pass over the [out, in] product
            bound = x_max * d_max * x.shape[0] if x.numel() and d.numel() else 0.0
            if x.shape[0] == 1 and bound < torch.finfo(x.dtype).max:
                # one sample: keep its rows; the update forms d x^T (or never writes it)
                rank_one = _RankOne(d if small is not None else d.clone(), x.clone())
                self._stash.append((rank_one, None))
                self._open += 1
                return
            grad = d.t().mm(x)
            if not bound < torch.finfo(grad.dtype).max and not _all_finite(grad):
                which = "x (layer input)" if not bool(torch.isfinite(x).all()) else \
                    "d (gradient at the layer output)"
                self._refuse_non_finite(f"the update product d x^T (from non-finite {which})")
            # one row: sum_s |d_s| |x_s|^T is |d x^T| itself (the update takes |grad|)
            abs_product = None
            if self.needs_abs_product and x.shape[0] > 1:
                abs_product = (d.abs() if da is None else da).t().mm(
                    x.abs() if xa is None else xa)
            entry = (grad, abs_product)
        self._stash.append(entry)
        self._open += 1

    def stash_products(self, grad: Tensor, abs_product: Tensor | None) -> None:
        """Stash precomputed sum_s d_s x_s^T (and sum_s |d_s| |x_s|^T) for expected updates.

        Both are [out, in] products of the error at the tile's output; they are compensated for
        the output scale like `stash_rows` (row i times 1 / s_i^2).
        """
        grad = grad.detach()
        abs_product = None if abs_product is None else abs_product.detach()
        small = _small_products(grad, abs_product, self.out_scale)
        if small is not None:  # compensated in one compiled pass, finiteness with it
            grad, abs_product, finite = small
        else:
            comp = self.update_compensation()
            if comp is not None:
                grad = grad * comp[:, None]
                if abs_product is not None:
                    abs_product = abs_product * comp[:, None]
            finite = _all_finite(grad)
        if not finite:
            self._refuse_non_finite("the update product sum d x^T (from a non-finite layer "
                                    "input x or error d)")
        self._stash.append((grad, abs_product))
        self._open += 1

    def end_microbatch(self) -> None:
        """Close the current micro-batch: every entry stashed since the last call (one per use
        of the layer in that micro-batch, possibly none) forms one micro-batch of the stash."""
        self._groups.append(self._open)
        self._open = 0

    @property
    def pending(self) -> int:
        """Micro-batches whose updates are stashed and not yet applied."""
        return len(self._groups) + (1 if self._open else 0)

    def clear_stash(self) -> None:
        """Drop every pending update (AnalogSGD.zero_grad does this)."""
        self._stash.clear()
        self._groups.clear()
        self._open = 0

    def _pop_groups(self, count: int | None) -> list[int]:
        """Take the oldest `count` micro-batches (all, the open one included, if None) off the
        stash bookkeeping; returns the number of stash entries of each."""
        if count is None:
            sizes = list(self._groups) + ([self._open] if self._open else [])
            self._groups.clear()
            self._open = 0
            return sizes
        if count > len(self._groups) and self._open:
            self.end_microbatch()  # entries since the last boundary: the current one
        check(0 <= count <= len(self._groups), "update count", count,
              f"at most the {len(self._groups)} pending micro-batches")
        return [self._groups.popleft() for _ in range(count)]

    @torch.no_grad()
    def apply_update(self, lr: float, count: int | None = None) -> None:
        """Apply the oldest `count` micro-batches of the stash (all if None) as one update with
        rate lr: every use of the layer within each of those micro-batches."""
        check(lr >= 0 and math.isfinite(lr), "lr", lr, "a finite value >= 0")
        sizes = self._pop_groups(count)
        n = sum(sizes)
        if n == 0:
            return
        entries = [self._stash.popleft() for _ in range(n)]
        cfg = self.config
        if cfg.update.mode == "pulsed":
            x = torch.cat([e[0] for e in entries]) if n > 1 else entries[0][0]
            d = torch.cat([e[1] for e in entries]) if n > 1 else entries[0][1]
            gen = self.generator("update")
            pulsed_update_(self.weight, x, d, lr, self.device_state, cfg.device, cfg.update,
                           gen)
            return
        state = self.device_state
        soft = is_symmetric_soft_bounds(state, cfg.device)
        if n == 1 and isinstance(entries[0][0], _RankOne) and soft and \
                softbounds_outer_update_(self.weight, entries[0][0].d, entries[0][0].x, lr,
                                         state.b_max, state.b_min):
            return
        entries = [(e[0].product() if isinstance(e[0], _RankOne) else e[0], e[1])
                   for e in entries]
        grad = _grouped_sum([e[0] for e in entries], sizes)
        if cfg.device.name == "ideal":
            self.weight.add_(grad, alpha=-lr)  # bit for bit torch.optim.SGD
            return
        prod = None  # None: |dW| = lr |grad|
        if self.needs_abs_product and (n > 1 or entries[0][1] is not None):
            # entries of one row stash None: their product is |grad|
            prod = _grouped_sum([e[0].abs() if e[1] is None else e[1] for e in entries], sizes)
        if soft and prod is None and softbounds_update_(self.weight, grad, lr, state.b_max,
                                                        state.b_min):
            return
        expected_update_(self.weight, grad, prod, lr, state, cfg.device)

    def extra_repr(self) -> str:
        c = self.config
        return (f"{self.out_size}x{self.in_size}, device={c.device.name}, "
                f"update={c.update.mode}/{c.update.granularity}")


SMALL_STASH_MAX = 1 << 17  # rows up to this many values (x and d) stash in one compiled pass


def _small_stash(x: Tensor, d: Tensor, scale: Tensor | None
                 ) -> tuple[Tensor, float, float] | None:
    """`stash_rows`' compensated rows of float32 CPU rows x [S, in], d [S, out] (contiguous)
    and max |x|, max |rows| (`_periphery_jit.stash_rows_`: the same values as its torch
    ops), or None where that does not apply."""
    if not (x.dim() == 2 and d.dim() == 2 and x.shape[0] == d.shape[0] and x.shape[0] > 0
            and x.dtype == d.dtype == torch.float32 and x.device.type == d.device.type == "cpu"
            and x.is_contiguous() and d.is_contiguous()
            and x.numel() + d.numel() <= SMALL_STASH_MAX
            and (scale is None or (scale.dtype == torch.float32 and scale.is_contiguous()))):
        return None
    kernels = jit.load("_periphery_jit")
    if kernels is None:
        return None
    rows = torch.empty_like(d)
    s = _EMPTY if scale is None else scale.detach().numpy()
    x_max, d_max = kernels.stash_rows_(x.numpy(), d.numpy(), s, rows.numpy())
    return rows, float(x_max), float(d_max)


_EMPTY = np.empty(0, np.float32)
SMALL_PRODUCTS = True  # products up to SMALL_PRODUCTS_MAX values: compensated in one pass
SMALL_PRODUCTS_MAX = 1 << 18


def _small_products(grad: Tensor, prod: Tensor | None, scale: Tensor | None
                    ) -> tuple[Tensor, Tensor | None, bool] | None:
    """`stash_products`' compensated products of float32 CPU products grad, prod [out, in]
    (contiguous) by the output scales, and whether grad's are all finite
    (`_periphery_jit.scale_products_`: the same values as its torch ops), or None where that
    does not apply (no output scales among them: nothing to compensate)."""
    if not (SMALL_PRODUCTS and scale is not None and grad.dim() == 2 and _rows_ok(grad)
            and 0 < grad.numel() <= SMALL_PRODUCTS_MAX
            and scale.dtype == torch.float32 and scale.is_contiguous()
            and scale.shape == (grad.shape[0],)
            and (prod is None or (prod.shape == grad.shape and _rows_ok(prod)))):
        return None
    kernels = jit.load("_periphery_jit")
    if kernels is None:
        return None
    out_g = torch.empty_like(grad)
    out_p = None if prod is None else torch.empty_like(prod)
    finite = kernels.scale_products_(grad.numpy(), _EMPTY_2D if prod is None else prod.numpy(),
                                     scale.detach().numpy(), out_g.numpy(),
                                     _EMPTY_2D if out_p is None else out_p.numpy())
    return out_g, out_p, bool(finite)


_EMPTY_2D = np.empty((0, 0), np.float32)


@dataclass(frozen=True)
class _RankOne:
    """One sample's stashed rows for an expected update: d [1, out] (compensated), x [1, in];
    their product d^T x is the sample's gradient [out, in]."""

    d: Tensor
    x: Tensor

    def product(self) -> Tensor:
        """d^T x [out, in], as the stash of several rows forms it."""
        return self.d.t().mm(self.x)


def _all_finite(t: Tensor) -> bool:
    """Whether every element is finite: NaN and inf reach the sum, so a finite sum (one
    pass, no temporaries) settles it; a non-finite sum (maybe an overflow) is checked
    element by element."""
    return t.numel() == 0 or math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def _grouped_sum(terms: list[Tensor], sizes: list[int]) -> Tensor:
    """Sum within each micro-batch (the uses of a shared layer, as autograd sums them into one
    gradient), then across micro-batches in order (as .grad accumulates)."""
    total: Tensor | None = None
    i = 0
    for size in sizes:
        if size == 0:
            continue
        part = terms[i]
        for t in terms[i + 1:i + size]:
            part = part + t
        i += size
        total = part if total is None else total + part
    assert total is not None
    return total
