"""AIMC cost model: stage times from crossbar MVMs and pulsed updates, not parameter counts.

On a crossbar one matrix-vector multiply (MVM) takes the same time whatever the array size,
so a linear layer costs 1 MVM per sample and a conv layer one MVM per output pixel per
sample. The backward runs the transposed MVMs on the same array (except the network's input
layer: nothing needs the error of the input data), then the analog update applies one rank-one
outer product per MVM as a pulse train of ``bl`` slots: its time grows with BL, not with the
array size. With update BL management the train length adapts to each sample, so ``bl`` is a
mean (``analogpipe.experiments.clock.mean_pulse_train_length`` measures it on a model).
Transfers between accelerators cost per activation element.

Tiling: a layer larger than one crossbar (default 512 x 512, like aihwkit's
``max_input_size``/``max_output_size``) is split into ceil(in/512) * ceil(out/512) tiles that
run in parallel, so its time is unchanged (only ``num_tiles`` reports the area); summing the
partial outputs of row tiles is digital and folded into ``t_digital``.

No torch here; ``analogpipe.pipeline.partition.layer_specs`` extracts ``LayerSpec``s from a
torch model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from analogpipe.timing.cycles import Costs

__all__ = ["AimcCosts", "LayerSpec", "layer_times", "num_tiles", "stage_costs"]


@dataclass(frozen=True)
class LayerSpec:
    """What the cost model needs to know about one analog layer.

    ``in_size`` = crossbar rows driven (in_features, or in_channels/groups * kh * kw);
    ``mvms_per_sample`` = 1 for a linear layer, H_out * W_out for a conv;
    ``out_elements_per_sample`` = activation elements it outputs per sample (C * H * W);
    ``transfer_reads`` = Tiki-Taka transfer reads per micro-batch update (0 for analog SGD):
    each is one MVM on A plus one ``bl``-slot pulse train into C.
    """

    name: str
    block: str
    kind: Literal["linear", "conv2d"]
    in_size: int
    out_size: int
    mvms_per_sample: int
    out_elements_per_sample: int
    transfer_reads: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "conv2d"):
            raise ValueError(
                f"LayerSpec {self.name!r}: kind={self.kind!r}; use 'linear' or 'conv2d'"
            )
        for f in ("in_size", "out_size", "mvms_per_sample", "out_elements_per_sample"):
            if getattr(self, f) < 1:
                raise ValueError(f"LayerSpec {self.name!r}: {f}={getattr(self, f)} must be >= 1")
        if not (self.transfer_reads >= 0 and math.isfinite(self.transfer_reads)):
            raise ValueError(f"LayerSpec {self.name!r}: transfer_reads={self.transfer_reads} "
                             "must be finite and >= 0")


@dataclass
class AimcCosts:
    """Time constants of the accelerator, in cycles of one crossbar MVM.

    ``t_pulse`` defaults to 1/31 so that an update with the default BL = 31 takes as long as
    one MVM (``bl * t_pulse == t_mvm``): a layer's backward (transposed MVM + update) then
    costs twice its forward, the usual t_b = 2 t_f of pipeline literature, and raising BL
    visibly lengthens the backward. ``t_transfer`` is per activation element moved between
    stages (default 1e-3: a link moves 1000 elements in one MVM time, so transfers matter for
    big conv activations but do not dominate), ``t_digital`` per output element for digital
    work (BatchNorm, bias, output scales; default 0). ``bl`` is the mean pulse-train length
    per update (a float >= 1: with BL management it is a measured mean, not always 31).
    """

    t_mvm: float = 1.0
    t_pulse: float = 1.0 / 31.0
    bl: float = 31
    t_transfer: float = 0.001
    t_digital: float = 0.0
    max_input_size: int = 512
    max_output_size: int = 512

    def __post_init__(self) -> None:
        for f in ("t_mvm", "t_pulse", "t_transfer", "t_digital"):
            v = getattr(self, f)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"AimcCosts.{f}={v!r}: must be finite and >= 0")
        if not (math.isfinite(self.bl) and self.bl >= 1):
            raise ValueError(f"AimcCosts.bl={self.bl!r}: must be a finite number >= 1")
        for f in ("max_input_size", "max_output_size"):
            if getattr(self, f) < 1:
                raise ValueError(f"AimcCosts.{f}={getattr(self, f)!r}: must be an integer >= 1")


def num_tiles(layer: LayerSpec, aimc: AimcCosts | None = None) -> int:
    """Crossbars a layer occupies; they run in parallel, so this sets area, not time."""
    aimc = aimc or AimcCosts()
    return math.ceil(layer.in_size / aimc.max_input_size) * math.ceil(
        layer.out_size / aimc.max_output_size
    )


def layer_times(layer: LayerSpec, micro_batch_size: int,
                aimc: AimcCosts | None = None, *, input_layer: bool = False
                ) -> tuple[float, float]:
    """(forward, backward-with-update) time of one layer for one micro-batch.

    ``input_layer``: the network's first layer, whose backward needs no transposed MVM (the
    error of the input data is never used): only its update is charged.
    """
    aimc = aimc or AimcCosts()
    mvms = layer.mvms_per_sample * micro_batch_size
    digital = layer.out_elements_per_sample * micro_batch_size * aimc.t_digital
    t_f = mvms * aimc.t_mvm + digital
    transposed = 0.0 if input_layer else mvms * aimc.t_mvm
    t_b = transposed + mvms * aimc.bl * aimc.t_pulse + digital
    t_b += layer.transfer_reads * (aimc.t_mvm + aimc.bl * aimc.t_pulse)  # Tiki-Taka transfers
    return t_f, t_b


def _stage_of_blocks(layers: Sequence[LayerSpec],
                     stages: Mapping[str, int] | Sequence[Sequence[str | int]],
                     block_order: Sequence[str] | None) -> tuple[dict[str, int], list[str], int]:
    order = list(block_order) if block_order is not None else list(
        dict.fromkeys(layer.block for layer in layers))
    if isinstance(stages, Mapping):
        mapping = {str(b): int(s) for b, s in stages.items()}
    else:
        mapping = {}
        for s, group in enumerate(stages):
            if not len(group):
                raise ValueError(f"stage_costs: stage {s} has no blocks; every stage needs one")
            for b in group:
                if isinstance(b, int) and not isinstance(b, bool):
                    if not 0 <= b < len(order):
                        raise ValueError(
                            f"stage_costs: block index {b} out of range 0..{len(order) - 1}"
                        )
                    b = order[b]
                mapping[str(b)] = s
    unknown = sorted(set(mapping) - set(order))
    if unknown:
        raise ValueError(f"stage_costs: blocks {unknown} are not in the model's blocks {order}")
    missing = [b for b in order if b not in mapping]
    if missing:
        raise ValueError(f"stage_costs: blocks {missing} are not assigned to any stage")
    seq = [mapping[b] for b in order]
    M = max(seq) + 1 if seq else 0
    if M < 1 or any(b < a for a, b in zip(seq, seq[1:])) or set(seq) != set(range(M)):
        raise ValueError(
            f"stage_costs: stage per block {dict(zip(order, seq))} must be contiguous: "
            "0, ..., 0, 1, ..., M-1 in block order, no stage empty"
        )
    return mapping, order, M


def stage_costs(
    layers: Sequence[LayerSpec],
    stages: Mapping[str, int] | Sequence[Sequence[str | int]],
    micro_batch_size: int,
    aimc: AimcCosts | None = None,
    *,
    block_order: Sequence[str] | None = None,
    block_out_elements: Mapping[str, int] | None = None,
    first_is_input: bool = True,
) -> Costs:
    """Per-stage ``Costs`` of a partitioned model on the AIMC model.

    ``stages``: a block -> stage mapping, or one group per stage of block names or block
    indices (the output of ``partition``; indices refer to ``block_order``, by default the
    order in which blocks first appear in ``layers``). Forward = sum of the stage's layers'
    MVM time; backward = the transposed MVMs (none for ``layers[0]`` when ``first_is_input``:
    the network's input layer) plus one ``bl``-slot pulse train per MVM;
    transfer after stage s = the activation elements leaving it (its last layer's output, or
    ``block_out_elements`` of its last block when given) * micro-batch size * t_transfer.
    """
    if isinstance(micro_batch_size, bool) or micro_batch_size < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size!r}: must be an integer >= 1")
    aimc = aimc or AimcCosts()
    mapping, order, M = _stage_of_blocks(layers, stages, block_order)
    t_f, t_b = [0.0] * M, [0.0] * M
    last_out: list[int | None] = [None] * M
    for i, layer in enumerate(layers):
        s = mapping[layer.block]
        f, b = layer_times(layer, micro_batch_size, aimc, input_layer=first_is_input and i == 0)
        t_f[s] += f
        t_b[s] += b
        last_out[s] = layer.out_elements_per_sample
    if block_out_elements is not None:
        for s in range(M):
            last_block = [b for b in order if mapping[b] == s][-1]
            if last_block in block_out_elements:
                last_out[s] = int(block_out_elements[last_block])
    t_comm = []
    carried: int | None = None
    for s in range(M - 1):
        carried = last_out[s] if last_out[s] is not None else carried
        if carried is None:
            raise ValueError(
                f"stage_costs: stage {s} and all before it have no analog layer, so the size of "
                "its output is unknown: pass block_out_elements"
            )
        t_comm.append(carried * micro_batch_size * aimc.t_transfer)
    return Costs(t_f=t_f, t_b=t_b, t_u=0.0, t_comm=t_comm if M > 1 else 0.0)
