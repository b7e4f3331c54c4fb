"""Tiki-Taka (v1) compound tile: a fast array A, a slow array C and periodic transfers.

Names and semantics follow aihwkit 1.2's ``TransferCompound`` with two unit-cell devices
(A = ``unit_cell_devices[0]``, C = ``unit_cell_devices[1]``; Gokmen & Haensch 2020, analysed in
Wu et al., NeurIPS 2024, arXiv 2406.12774):

- both MVM directions read ``W = gamma * A + C`` (gamma = 0: the weight is C, A is hidden);
- the gradient update of every micro-batch goes only into A, with rate
  ``eta_A = fast_lr * lr`` (``scale_fast_lr``) or ``fast_lr``;
- after every ``transfer_every``-th update of the tile, ``n_reads_per_transfer`` consecutive
  columns of A (rows with ``transfer_columns=False``) are read with one-hot inputs through the
  ``transfer_forward`` periphery, v = read(A e_i), and written into C as a rank-one update
  ``C[:, i] <- C[:, i] (+) eta_T * v`` through C's own device response and ``transfer_update``
  (expected or pulsed), ``eta_T = transfer_lr * lr`` (``scale_transfer_lr``) or
  ``transfer_lr``; a running pointer cycles through the columns (or a random start each event
  with ``random_selection``); each read column is reset to A's reference point with
  probability ``with_reset_prob``.

A's symmetric point: the exactness of Tiki-Taka needs A's symmetric point at zero. Like
aihwkit's ``SoftBoundsReferenceDevice`` the fast array's visible weight is ``g - r`` with the
conductance g (what the device physics acts on) and a per-element reference r:
``fast_reference="symmetric_point"`` (zero-shift, default) puts r at each element's own
symmetric point (where q_+ = q_-), so the visible symmetric point is 0;
``fast_reference="none"`` leaves r = 0 (a biased A for asymmetric devices). ``reference_mean``
adds a constant to r (moves A's visible symmetric point to -reference_mean).

Differences from aihwkit (see docs/physics.md, "Tiki-Taka and PipeMare"): the transfer counter
counts the tile's updates (one per ``apply_update``: a micro-batch in AP, a mini-batch in SP),
which is aihwkit's ``units_in_mbatch=True`` with one update call per (micro-)batch; so
``transfer_every`` is an integer number of updates; no per-vector counting, no chains of more
than two arrays, the reset lands on the visible 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from analogpipe.devices import DeviceConfig, DeviceState
from analogpipe.errors import check
from analogpipe.tiles.io import IOConfig, analog_mvm
from analogpipe.tiles.pulses import UpdateConfig
from analogpipe.tiles.tile import AnalogTile, MappingConfig, TileConfig

__all__ = ["FAST_REFERENCES", "TransferCompoundConfig", "TransferTile", "make_tile",
           "symmetric_point", "tile_config_from_dict"]

FAST_REFERENCES = ("symmetric_point", "none")
# seed offset of the fast array: the slow array C uses the tile's own seed, so C draws the same
# device-to-device spread as a plain tile of the same seed (Analog SGD vs Tiki-Taka on one chip)
FAST_SEED_OFFSET = 1_000_000


@dataclass(frozen=True, kw_only=True)
class TransferCompoundConfig(TileConfig):
    """A Tiki-Taka tile (aihwkit's UnitCellRPUConfig with a TransferCompound device).

    Inherited fields: ``device`` is the slow array C (it holds the weight, and the mapping's
    omega is checked against its range), ``forward``/``backward`` the periphery of the MVMs on
    W, ``update`` the gradient update of A, ``mapping`` the digital output scaling of W.

    fast_device:          A's device (aihwkit ``unit_cell_devices[0]``).
    fast_reference:       "symmetric_point" (zero-shift: A's visible symmetric point is 0) or
                          "none" (A's visible weight is its conductance).
    reference_mean:       constant added to A's reference (A's visible symmetric point moves
                          to -reference_mean; 0 for exact Tiki-Taka).
    gamma:                W = gamma * A + C (>= 0; 0 = A hidden).
    transfer_every:       transfer after every n-th update of the tile (integer, 0 = never).
    n_reads_per_transfer: columns (rows) read and written per transfer event (capped at the
                          array's column (row) count).
    transfer_columns:     read columns of A with forward reads (True) or rows with transposed
                          reads (False).
    with_reset_prob:      probability that a read column (row) of A is reset to visible 0.
    random_selection:     random start column per event instead of the running pointer.
    fast_lr, scale_fast_lr:         eta_A = fast_lr * lr if scale_fast_lr else fast_lr
                                    (fast_lr <= 0: eta_A = lr).
    transfer_lr, scale_transfer_lr: eta_T = transfer_lr * lr if scale_transfer_lr else
                                    transfer_lr.
    transfer_forward:     periphery of the transfer reads (one-hot inputs, weight units).
    transfer_update:      update settings of the writes into C (expected or pulsed).
    """

    fast_device: DeviceConfig = field(default_factory=DeviceConfig)
    fast_reference: str = "symmetric_point"
    reference_mean: float = 0.0
    gamma: float = 0.0
    transfer_every: int = 1
    n_reads_per_transfer: int = 1
    transfer_columns: bool = True
    with_reset_prob: float = 0.0
    random_selection: bool = False
    fast_lr: float = 1.0
    scale_fast_lr: bool = True
    transfer_lr: float = 1.0
    scale_transfer_lr: bool = True
    transfer_forward: IOConfig = field(default_factory=IOConfig)
    transfer_update: UpdateConfig = field(default_factory=UpdateConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.fast_reference in FAST_REFERENCES, "tiki-taka fast_reference",
              self.fast_reference, f"one of {FAST_REFERENCES}")
        check(math.isfinite(self.reference_mean), "tiki-taka reference_mean",
              self.reference_mean, "a finite value")
        check(self.gamma >= 0 and math.isfinite(self.gamma), "tiki-taka gamma", self.gamma,
              "a finite value >= 0")
        check(isinstance(self.transfer_every, int) and not isinstance(self.transfer_every, bool)
              and self.transfer_every >= 0, "tiki-taka transfer_every", self.transfer_every,
              "an integer >= 0 (updates between transfers; 0 = never)")
        check(isinstance(self.n_reads_per_transfer, int) and self.n_reads_per_transfer >= 1,
              "tiki-taka n_reads_per_transfer", self.n_reads_per_transfer, "an integer >= 1")
        check(0 <= self.with_reset_prob <= 1, "tiki-taka with_reset_prob",
              self.with_reset_prob, "a probability in [0, 1]")
        for name in ("fast_lr", "transfer_lr"):
            v = getattr(self, name)
            check(math.isfinite(v) and (v >= 0 or name == "fast_lr"), f"tiki-taka {name}", v,
                  "a finite value >= 0" if name == "transfer_lr" else "a finite value")

    @property
    def unit_cell_devices(self) -> tuple[DeviceConfig, DeviceConfig]:
        """(A, C) in aihwkit's order."""
        return self.fast_device, self.device

    @property
    def is_digital_equivalent(self) -> bool:
        return False

    def fast_rate(self, lr: float) -> float:
        """eta_A for the optimizer's rate lr (aihwkit 1.2 ``getPulseCountLearningRate``)."""
        if self.fast_lr <= 0:
            return lr
        return self.fast_lr * lr if self.scale_fast_lr else self.fast_lr

    def transfer_rate(self, lr: float) -> float:
        """eta_T for the optimizer's rate lr."""
        return self.transfer_lr * lr if self.scale_transfer_lr else self.transfer_lr

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["algorithm"] = "tiki-taka"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransferCompoundConfig:
        d = {k: v for k, v in d.items() if k != "algorithm"}
        for k, typ in (("device", DeviceConfig), ("fast_device", DeviceConfig),
                       ("forward", IOConfig), ("backward", IOConfig),
                       ("transfer_forward", IOConfig), ("update", UpdateConfig),
                       ("transfer_update", UpdateConfig), ("mapping", MappingConfig)):
            if isinstance(d.get(k), dict):
                d[k] = typ(**d[k])
        return cls(**d)


def tile_config_from_dict(d: dict[str, Any]) -> TileConfig:
    """The inverse of ``to_dict`` for plain and Tiki-Taka tiles."""
    if d.get("algorithm") == "tiki-taka":
        return TransferCompoundConfig.from_dict(d)
    return TileConfig.from_dict(d)


def symmetric_point(state: DeviceState, cfg: DeviceConfig) -> Tensor | float:
    """Conductance where one up pulse and one down pulse have equal size (q_+ = q_-).

    Soft bounds: g = (d_up - d_down) / (d_up / b_max - d_down / b_min) (aihwkit's
    ``SoftBoundsReferenceDevice``); pow step: (b_max + rho b_min) / (1 + rho) with
    rho = (d_down / d_up) ** (1 / pow_gamma); ideal and constant step: 0 (a constant-step device
    has no symmetric point unless d_up = d_down, then every point is one). Per element when the
    device has device-to-device spread.
    """
    du, dd = state.delta_up, state.delta_down
    if cfg.name == "softbounds":
        return (du - dd) / (du / state.b_max - dd / state.b_min)
    if cfg.name == "powstep":
        rho = (dd / du) ** (1.0 / cfg.pow_gamma)
        return (state.b_max + rho * state.b_min) / (1 + rho)
    return 0.0


def _array_config(device: DeviceConfig, forward: IOConfig, backward: IOConfig,
                  update: UpdateConfig) -> TileConfig:
    return TileConfig(device=device, forward=forward, backward=backward, update=update,
                      mapping=MappingConfig())


class TransferTile(AnalogTile):
    """A Tiki-Taka tile: the AnalogTile interface on W = gamma * A + C.

    Composition: ``fast`` (A) and ``slow`` (C) are AnalogTiles without mapping; A's forward
    (backward with ``transfer_columns=False``) periphery is ``transfer_forward`` and its update
    settings are the compound's ``update``; C's update settings are ``transfer_update``. The
    compound keeps the mapping (``out_scale``), the stash and its own forward/backward noise
    streams (seeded like a plain tile of the same seed). ``weight`` [out, in] is the reduced
    W, recomputed after every change; state_dict holds A, C, A's reference, the transfer
    counter and pointer, and every generator state.
    """

    def __init__(self, out_size: int, in_size: int, config: TransferCompoundConfig,
                 seed: int = 0) -> None:
        nn.Module.__init__(self)
        check(out_size >= 1 and in_size >= 1, "tile size", (out_size, in_size), "sizes >= 1")
        check(isinstance(config, TransferCompoundConfig), "tile config", type(config).__name__,
              "a TransferCompoundConfig")
        self.out_size, self.in_size, self.config, self.seed = out_size, in_size, config, seed
        perfect = IOConfig.perfect()
        read = config.transfer_forward
        self.fast = AnalogTile(out_size, in_size, _array_config(
            config.fast_device, read if config.transfer_columns else perfect,
            perfect if config.transfer_columns else read, config.update),
            seed=seed + FAST_SEED_OFFSET)
        self.slow = AnalogTile(out_size, in_size, _array_config(
            config.device, perfect, perfect, config.transfer_update), seed=seed)
        ref: Tensor | float = 0.0
        if config.fast_reference == "symmetric_point":
            ref = symmetric_point(self.fast.device_state, config.fast_device)
        ref = torch.zeros(out_size, in_size) + ref + config.reference_mean
        self.register_buffer("fast_reference", ref)
        self.register_buffer("weight", torch.zeros(out_size, in_size))
        self.register_buffer("transfer_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("transfer_pointer", torch.zeros((), dtype=torch.int64))
        self._state_fields, self._state_scalars = [], {}
        self._init_periphery(out_size)
        with torch.no_grad():
            self._reset_fast(slice(None))
            self._reduce()

    # --- the two arrays -----------------------------------------------------------------
    @property
    def arrays(self) -> tuple[AnalogTile, AnalogTile]:
        """(A, C): optimizers and tile listings skip them (the compound drives them)."""
        return self.fast, self.slow

    @property
    def device_state(self) -> DeviceState:
        return self.slow.device_state

    def fast_weight(self) -> Tensor:
        """A's visible weight g - r [out, in] (a new tensor)."""
        return self.fast.weight - self.fast_reference

    @torch.no_grad()
    def _reset_fast(self, index: Any, columns: bool = True) -> None:
        """Set A's visible weight to 0 (conductance to the reference) at the given columns/rows."""
        ref, w = self.fast_reference, self.fast.weight
        if columns:
            w[:, index] = ref[:, index]
        else:
            w[index, :] = ref[index, :]

    @torch.no_grad()
    def _reduce(self) -> None:
        g = self.config.gamma
        if g == 0:
            self.weight.copy_(self.slow.weight)
        else:
            torch.add(self.slow.weight, self.fast_weight(), alpha=g, out=self.weight)

    @torch.no_grad()
    def set_weights(self, w: Tensor) -> None:
        """Program logical weights [out, in] into C (mapped by omega, clipped to C's bounds);
        A is set to visible 0, as aihwkit's set_weights does for a TransferCompound."""
        check(tuple(w.shape) == (self.out_size, self.in_size), "weights shape", tuple(w.shape),
              f"{(self.out_size, self.in_size)}")
        self.slow.set_weights(self._map_rows(w))
        self._reset_fast(slice(None))
        self._reduce()

    def saturation(self) -> Tensor:
        """Saturation of C, the array that holds the weight."""
        return self.slow.saturation()

    # --- update -------------------------------------------------------------------------
    @property
    def updated_device(self) -> DeviceConfig:
        return self.config.fast_device

    @property
    def transfer_reads_per_update(self) -> float:
        """Columns (rows) read and pulsed into C per update of the tile, on average."""
        c = self.config
        if c.transfer_every == 0:
            return 0.0
        size = self.in_size if c.transfer_columns else self.out_size
        return min(c.n_reads_per_transfer, size) / c.transfer_every

    @torch.no_grad()
    def apply_update(self, lr: float, count: int | None = None) -> None:
        """Apply the oldest `count` micro-batches of the stash (all if None) to A (rate eta_A),
        then count one update and transfer if it is due (rate eta_T); W is re-reduced."""
        check(lr >= 0 and math.isfinite(lr), "lr", lr, "a finite value >= 0")
        sizes = self._pop_groups(count)
        n = sum(sizes)
        if n == 0:
            return
        cfg = self.config
        for _ in range(n):
            self.fast._stash.append(self._stash.popleft())
        self.fast._groups.extend(sizes)  # same per-micro-batch summation order as a plain tile
        self.fast.apply_update(cfg.fast_rate(lr), len(sizes))
        self.transfer_count += 1
        if cfg.transfer_every > 0 and int(self.transfer_count) % cfg.transfer_every == 0:
            self.transfer(cfg.transfer_rate(lr))
        self._reduce()

    @torch.no_grad()
    def transfer(self, rate: float) -> list[int]:
        """One transfer event at rate eta_T: read the next columns (rows) of A through the
        transfer periphery and pulse them into C. Returns the indices transferred."""
        cfg = self.config
        cols = cfg.transfer_columns
        size = self.in_size if cols else self.out_size
        reads = min(cfg.n_reads_per_transfer, size)
        if cfg.random_selection:
            start = int(torch.randint(size, (1,), generator=self.generator("update")))
        else:
            start = int(self.transfer_pointer)
        idx = [(start + r) % size for r in range(reads)]
        dev = self.weight.device
        onehot = torch.zeros(reads, size, device=dev)
        onehot[torch.arange(reads, device=dev), torch.tensor(idx, device=dev)] = 1.0
        a = self.fast_weight()
        if cols:  # v_r = A[:, i_r] through a forward read; C[:, i] += eta_T v
            v = analog_mvm(onehot, a, cfg.transfer_forward, self.fast.generator("forward"))
            self.slow.stash_rows(onehot, -v)
        else:  # v_r = A[i_r, :] through a transposed read; C[i, :] += eta_T v
            v = analog_mvm(onehot, a, cfg.transfer_forward, self.fast.generator("backward"),
                           transposed=True)
            self.slow.stash_rows(v, -onehot)
        self.slow.apply_update(rate)
        if cfg.with_reset_prob > 0:
            if cfg.with_reset_prob >= 1:
                reset = idx
            else:
                u = torch.rand(reads, generator=self.generator("update"))
                reset = [i for i, ui in zip(idx, u.tolist()) if ui < cfg.with_reset_prob]
            if reset:
                self._reset_fast(reset, columns=cols)
        if not cfg.random_selection:
            self.transfer_pointer.fill_((start + reads) % size)
        return idx

    def extra_repr(self) -> str:
        c = self.config
        return (f"{self.out_size}x{self.in_size}, tiki-taka gamma={c.gamma}, "
                f"transfer_every={c.transfer_every}, n_reads={c.n_reads_per_transfer}, "
                f"A={c.fast_device.name}, C={c.device.name}, update={c.update.mode}")


def make_tile(out_size: int, in_size: int, config: TileConfig, seed: int = 0) -> AnalogTile:
    """The tile a config describes: TransferTile for a TransferCompoundConfig, else AnalogTile."""
    if isinstance(config, TransferCompoundConfig):
        return TransferTile(out_size, in_size, config, seed)
    return AnalogTile(out_size, in_size, config, seed)
