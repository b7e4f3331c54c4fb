"""Cut a model into M contiguous stages of blocks, balanced on a cost.

The model is an ``nn.Sequential`` whose named children are the blocks (never cut inside a
residual block). ``partition`` is pure Python; the profiling helpers import torch only when
called, so ``analogpipe schedule`` and the cycle model stay torch-free.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from analogpipe.timing.aimc import AimcCosts, LayerSpec, layer_times

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "block_costs",
    "block_names",
    "block_output_elements",
    "layer_specs",
    "partition",
    "split_model",
]

METRICS = ("params", "macs", "aimc")


def _names_text(names: Sequence[str] | None, n: int) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f" ({shown})"


def partition(costs: Sequence[float], num_stages: int,
              names: Sequence[str] | None = None) -> list[list[int]]:
    """Contiguous groups of block indices minimising the most expensive stage (exact DP).

    O(M n^2) over n blocks; no stage is empty. Among optimal cuts the DP keeps the one whose
    earlier stages are as large as allowed (deterministic). ``names`` only improve messages.
    """
    n = len(costs)
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"stages={num_stages!r} is invalid: use an integer from 1 to {n}")
    if num_stages > n:
        raise ValueError(
            f"stages={num_stages} but the model has only {n} blocks{_names_text(names, n)}: "
            f"use at most {n}"
        )
    values = [float(c) for c in costs]
    if any(not (c >= 0) for c in values):  # also rejects NaN
        raise ValueError(f"partition costs must be >= 0, got {values}")
    prefix = [0.0]
    for c in values:
        prefix.append(prefix[-1] + c)

    INF = float("inf")
    # best[m][i]: min over cuts of blocks[0:i] into m stages of the max stage cost
    best = [[INF] * (n + 1) for _ in range(num_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0.0
    for m in range(1, num_stages + 1):
        for i in range(m, n - (num_stages - m) + 1):
            for j in range(m - 1, i):  # last stage = blocks[j:i]
                v = max(best[m - 1][j], prefix[i] - prefix[j])
                if v <= best[m][i]:
                    best[m][i], cut[m][i] = v, j
    groups: list[list[int]] = []
    i = n
    for m in range(num_stages, 0, -1):
        j = cut[m][i]
        groups.append(list(range(j, i)))
        i = j
    return groups[::-1]


# ---------------------------------------------------------------------------- torch helpers


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The cuttable blocks of ``model`` (``analogpipe.models.blocks``: ResNet stages opened)."""
    from analogpipe.models import blocks

    return blocks(model)


def block_names(model: nn.Module) -> list[str]:
    """The blocks a stage is made of (named children; ResNet stages opened into blocks)."""
    return [name for name, _ in _blocks(model)]


def _is_analog_or_mvm(module: Any) -> str | None:
    from torch import nn

    kind = getattr(module, "analog_kind", None)
    if kind in ("linear", "conv2d"):
        return kind
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    return None


def _spec(name: str, block: str, kind: str, module: Any, output: Any, batch: int) -> LayerSpec:
    if kind == "linear":
        in_size, out_size = int(module.in_features), int(module.out_features)
    else:
        ks = module.kernel_size
        kh, kw = (ks, ks) if isinstance(ks, int) else ks
        groups = int(getattr(module, "groups", 1) or 1)
        in_size = int(module.in_channels) // groups * int(kh) * int(kw)
        out_size = int(module.out_channels)
    per_sample = output.numel() // batch
    return LayerSpec(
        name=name,
        block=block,
        kind=kind,  # type: ignore[arg-type]
        in_size=in_size,
        out_size=out_size,
        mvms_per_sample=max(per_sample // out_size, 1),
        out_elements_per_sample=per_sample,
        transfer_reads=float(getattr(getattr(module, "tile", None), "transfer_reads_per_update",
                                     0.0)),
    )


def _dry_run(model: nn.Module, example_input: Any, handles: list[Any]) -> None:
    """Run `model` once in eval mode without grad (hooks collect), then remove the hooks and
    restore the training mode."""
    import torch

    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def layer_specs(model: nn.Module, example_input: Any) -> list[LayerSpec]:
    """Run ``model`` once on ``example_input`` (batch first) and describe every MVM layer.

    Hooks catch ``nn.Linear``/``nn.Conv2d`` and any module with ``analog_kind`` in
    ("linear", "conv2d") that exposes torch's size attributes; analog layers' inner modules
    are not visited twice. The model's training mode is restored afterwards.
    """

    batch = int(example_input.shape[0])
    specs: list[LayerSpec] = []
    handles = []
    for block, child in _blocks(model):
        claimed: list[str] = []
        for sub, module in child.named_modules():
            kind = _is_analog_or_mvm(module)
            if kind is None or any(c == "" or sub.startswith(c + ".") for c in claimed):
                continue
            claimed.append(sub)
            name = f"{block}.{sub}" if sub else block

            def hook(mod, inputs, output, name=name, block=block, kind=kind):
                specs.append(_spec(name, block, kind, mod, output, batch))

            handles.append(module.register_forward_hook(hook))
    _dry_run(model, example_input, handles)
    return specs


def block_output_elements(model: nn.Module, example_input: Any) -> dict[str, int]:
    """Activation elements per sample leaving each block (for ``stage_costs`` transfers)."""

    batch = int(example_input.shape[0])
    out: dict[str, int] = {}
    handles = []
    for name, child in _blocks(model):
        def hook(mod, inputs, output, name=name):
            out[name] = int(output.numel()) // batch

        handles.append(child.register_forward_hook(hook))
    _dry_run(model, example_input, handles)
    return out


def block_costs(model: nn.Module, example_input: Any, metric: str = "params",
                aimc: AimcCosts | None = None) -> list[float]:
    """One cost per block (named child) of ``model`` for ``partition``.

    ``params``: parameter count (plus in*out for analog layers that keep no ``weight``
    parameter); ``macs``: multiply-accumulates per sample; ``aimc``: forward + backward time
    per sample on the AIMC cost model, the first layer without its transposed MVM (what
    stages should balance on: a crossbar MVM costs the same whatever the array size).
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown: use one of {', '.join(METRICS)}")
    names = block_names(model)
    if metric == "params":
        from torch import nn

        costs = []
        for _, child in _blocks(model):
            total = sum(p.numel() for p in child.parameters())
            for module in child.modules():
                kind = _is_analog_or_mvm(module)
                weight = getattr(module, "weight", None)
                if kind and not isinstance(weight, nn.Parameter):
                    if kind == "linear":
                        total += int(module.in_features) * int(module.out_features)
                    else:
                        ks = module.kernel_size
                        kh, kw = (ks, ks) if isinstance(ks, int) else ks
                        groups = int(getattr(module, "groups", 1) or 1)
                        total += (int(module.in_channels) // groups * int(kh) * int(kw)
                                  * int(module.out_channels))
            costs.append(float(total))
        return costs
    specs = layer_specs(model, example_input)
    per_block = dict.fromkeys(names, 0.0)
    for i, spec in enumerate(specs):
        if metric == "macs":
            per_block[spec.block] += spec.mvms_per_sample * spec.in_size * spec.out_size
        else:
            t_f, t_b = layer_times(spec, 1, aimc, input_layer=i == 0)
            per_block[spec.block] += t_f + t_b
    return [per_block[n] for n in names]


def split_model(model: nn.Module, groups: Sequence[Sequence[int | str]]) -> list[nn.Sequential]:
    """One ``nn.Sequential`` per stage, sharing the blocks (modules) of ``model``.

    ``groups`` lists block indices or names per stage; together they must cover every block
    once, in order (what ``partition`` returns).
    """
    from torch import nn

    children = _blocks(model)
    names = [n for n, _ in children]
    flat: list[int] = []
    for g in groups:
        if not len(g):
            raise ValueError("split_model: a stage has no blocks; every stage needs at least one")
        for b in g:
            if isinstance(b, str):
                if b not in names:
                    raise ValueError(f"split_model: block {b!r} is not one of {names}")
                flat.append(names.index(b))
            else:
                flat.append(int(b))
    if flat != list(range(len(children))):
        raise ValueError(
            f"split_model: groups {[list(g) for g in groups]} must cover blocks "
            f"0..{len(children) - 1}"
            f"{_names_text(names, len(names))} each once, in order"
        )
    out = []
    i = 0
    for g in groups:
        # block names such as "layer1.0" are not valid child names: keep dots as underscores
        out.append(nn.Sequential(OrderedDict(
            (name.replace(".", "_"), mod) for name, mod in children[i:i + len(g)])))
        i += len(g)
    return out
