"""AnalogSGD: analog updates for tiles, plain SGD for the digital parameters."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from analogpipe.errors import check
from analogpipe.tiles.tile import AnalogTile


class AnalogSGD:
    """One optimizer for a model (or a pipeline stage) with analog tiles.

    `step(count=None)` first applies SGD to the digital parameters (biases, BatchNorm, learned
    output scales), exactly as torch.optim.SGD computes it, then applies the oldest `count`
    stashed entries of every tile (all if None). Digital parameters are updated through
    `.data`, so graphs of micro-batches still in flight (asynchronous pipeline) read the new
    values at their backward instead of failing autograd's version check: the same "live"
    semantics as the tiles. Gradients of digital parameters accumulate in `.grad` over the
    micro-batches an update covers.
    """

    def __init__(self, model: nn.Module | Iterable[nn.Module], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, dampening: float = 0.0) -> None:
        check(lr > 0 and math.isfinite(lr), "lr", lr, "a finite value > 0")
        check(0 <= momentum < 1, "momentum", momentum, "a value in [0, 1)")
        check(weight_decay >= 0, "weight_decay", weight_decay, "a value >= 0")
        modules = [model] if isinstance(model, nn.Module) else list(model)
        self.tiles: list[AnalogTile] = []
        self.params: list[Tensor] = []
        seen: set[int] = set()
        for m in modules:
            for sub in m.modules():
                if isinstance(sub, AnalogTile) and id(sub) not in seen:
                    self.tiles.append(sub)
                    seen.add(id(sub))
                    seen.update(id(a) for a in getattr(sub, "arrays", ()))  # compound's own
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    self.params.append(p)
                    seen.add(id(p))
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay = weight_decay
        self._buf: dict[int, Tensor] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, count: int | None = None) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            g = p.grad
            if self.weight_decay:
                g = g.add(p.data, alpha=self.weight_decay)
            if self.momentum:
                buf = self._buf.get(id(p))
                if buf is None:
                    buf = self._buf[id(p)] = g.clone()
                else:
                    buf.mul_(self.momentum).add_(g, alpha=1 - self.dampening)
                g = buf
            p.data.add_(g, alpha=-self.lr)
            p.grad = None
        for tile in self.tiles:
            tile.apply_update(self.lr, count)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "momentum_buffers": [self._buf.get(id(p)) for p in self.params]}

    def load_state_dict(self, state: dict) -> None:
        self.lr = state["lr"]
        self._buf = {id(p): b for p, b in zip(self.params, state["momentum_buffers"])
                     if b is not None}
