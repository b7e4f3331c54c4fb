"""AnalogSGD: analog updates for tiles, torch's SGD for the digital parameters."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.sgd import sgd as _sgd

from analogpipe.errors import check
from analogpipe.tiles.tile import AnalogTile


def _given_modules(params: Any) -> bool:
    if isinstance(params, nn.Module):
        return True
    if isinstance(params, (list, tuple)):
        return any(isinstance(i, nn.Module) or (isinstance(i, dict) and (
            isinstance(i.get("params"), nn.Module) or "tiles" in i or (
                isinstance(i.get("params"), (list, tuple))
                and any(isinstance(x, nn.Module) for x in i["params"]))))
            for i in params)
    return False


def _expand(params: Any) -> list[dict[str, Any]]:
    """Normalise what the constructor accepts into param groups with a "tiles" entry."""
    if isinstance(params, nn.Module):
        params = [params]
    elif isinstance(params, Tensor):
        params = [params]
    items = list(params)
    if items and all(isinstance(i, nn.Module) for i in items):
        items = [{"params": items}]
    elif items and not isinstance(items[0], dict):
        items = [{"params": items}]
    groups = []
    for g in items:
        check(isinstance(g, dict), "AnalogSGD params", type(g).__name__,
              "a module, modules, tensors or param-group dicts (not a mix)")
        g = dict(g)
        raw = g["params"]
        raw = [raw] if isinstance(raw, (nn.Module, Tensor)) else list(raw)
        tensors: list[Tensor] = []
        tiles: list[AnalogTile] = list(g.get("tiles", []))
        for item in raw:
            if isinstance(item, nn.Module):
                # the arrays inside a compound tile (Tiki-Taka) are updated by their owner
                inner = {id(a) for sub in item.modules() if isinstance(sub, AnalogTile)
                         for a in getattr(sub, "arrays", ())}
                for name, sub in item.named_modules():
                    if isinstance(sub, AnalogTile) and id(sub) not in inner:
                        if sub.layer_name is None:
                            layer = "" if name == "tile" else name.removesuffix(".tile")
                            sub.layer_name = layer or type(item).__name__
                        tiles.append(sub)
                tensors.extend(p for p in item.parameters() if p.requires_grad)
            else:
                tensors.append(item)
        seen: set[int] = set()  # a module listed twice, or shared parameters: keep one
        g["params"] = [p for p in tensors if not (id(p) in seen or seen.add(id(p)))]
        seen_t: set[int] = set()
        g["tiles"] = [t for t in tiles if not (id(t) in seen_t or seen_t.add(id(t)))]
        groups.append(g)
    return groups


class AnalogSGD(torch.optim.SGD):
    """torch.optim.SGD for a model (or pipeline stage) with analog tiles.

    params: an nn.Module (the usual form: its analog tiles and its digital parameters), several
        modules, or torch-style param groups whose "params" may hold modules (their tiles join
        that group) or tensors. Plain tensors such as `model.parameters()` reach no tile: pass
        the model itself. lr, momentum, dampening, weight_decay, nesterov, maximize, foreach:
        as torch.optim.SGD, applied to the digital parameters (biases, BatchNorm, learned
        output scales) with exactly torch's arithmetic (torch.optim.sgd.sgd).

    `step(closure=None, count=None)` first updates the digital parameters of every group, then
    applies the oldest `count` stashed micro-batches of every tile of the group (all if None)
    with the group's current lr, so torch.optim.lr_scheduler schedules drive the analog update
    too. Tiles get plain analog SGD: momentum, weight decay and nesterov act on the digital
    parameters only (an in-place analog update has no momentum buffer) and maximize is refused
    for groups with tiles.

    Pipeline semantics (kept for the executors): digital parameters are updated through
    `.data`, so graphs of micro-batches still in flight read the new values at their backward
    instead of failing autograd's version check, like the tiles ("live" weights); and `step`
    consumes the gradients (sets `.grad` to None), as it consumes the tiles' stash, so the next
    update covers only the micro-batches after it. `zero_grad()` also drops every pending
    analog update. `end_microbatch()` marks a micro-batch boundary on every tile (the pipeline
    executors call it after each backward).

    state_dict: torch's (param_groups with lr etc., momentum buffers); tiles are not part of it
    (their conductances are in the model's state_dict).
    """

    def __init__(self, params: nn.Module | Iterable[Any], lr: float = 1e-3,
                 momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None) -> None:
        check(isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0, "lr", lr,
              "a finite value > 0 (a scheduler may later take it to 0)")
        check(not differentiable, "differentiable", differentiable,
              "False (analog updates are not differentiable)")
        check(not fused, "fused", fused, "None or False (no fused kernel for analog tiles)")
        groups = _expand(params)
        if not any(g["tiles"] for g in groups) and not _given_modules(params):
            warnings.warn("AnalogSGD got tensors only: no analog tile can be reached from "
                          "them, so it acts as torch.optim.SGD. Pass the model (or its "
                          "modules) to train its analog layers", UserWarning, stacklevel=2)
        super().__init__(groups, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                         foreach=foreach)
        for g in self.param_groups:
            check(not (g["maximize"] and g["tiles"]), "maximize", True,
                  "False for a param group with analog tiles (tiles only descend)")

    # --- compatibility with the pre-Optimizer API --------------------------------------------
    @property
    def tiles(self) -> list[AnalogTile]:
        return [t for g in self.param_groups for t in g["tiles"]]

    @property
    def params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def lr(self) -> float:
        """The first group's lr; setting it sets every group's lr."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        check(math.isfinite(value) and value >= 0, "lr", value, "a finite value >= 0")
        for g in self.param_groups:
            g["lr"] = value

    # --- torch.optim.Optimizer ---------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "tiles" not in param_group:
            param_group = _expand([param_group])[0]
        super().add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's zero_grad, and drop every pending (stashed, not yet applied) analog update."""
        super().zero_grad(set_to_none)
        for tile in self.tiles:
            tile.clear_stash()

    def end_microbatch(self) -> None:
        """Mark a micro-batch boundary on every tile (see AnalogTile.end_microbatch)."""
        for tile in self.tiles:
            tile.end_microbatch()

    @torch.no_grad()
    def step(self, closure: Any = None, count: int | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if params:
                grads = [p.grad for p in params]
                bufs = [self.state[p].get("momentum_buffer") for p in params]
                _sgd([p.data for p in params], grads, bufs,
                     has_sparse_grad=any(gr.is_sparse for gr in grads), foreach=g["foreach"],
                     fused=None, grad_scale=None, found_inf=None,
                     weight_decay=g["weight_decay"], momentum=g["momentum"], lr=g["lr"],
                     dampening=g["dampening"], nesterov=g["nesterov"], maximize=g["maximize"])
                if g["momentum"] != 0:
                    for p, b in zip(params, bufs):
                        self.state[p]["momentum_buffer"] = b
                for p in params:
                    p.grad = None
            lr = g["lr"]
            lr = float(lr) if isinstance(lr, Tensor) else lr
            for tile in g["tiles"]:
                tile.apply_update(lr, count)
        return loss

    def state_dict(self) -> dict[str, Any]:
        tiles = [g.pop("tiles") for g in self.param_groups]
        try:
            return super().state_dict()
        finally:
            for g, t in zip(self.param_groups, tiles):
                g["tiles"] = t

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "momentum_buffers" in state_dict and "param_groups" not in state_dict:
            state_dict = self._from_legacy(state_dict)
        tiles = [g["tiles"] for g in self.param_groups]
        super().load_state_dict(state_dict)
        for g, t in zip(self.param_groups, tiles):
            g["tiles"] = t

    def _from_legacy(self, old: dict[str, Any]) -> dict[str, Any]:
        """The pre-Optimizer format {"lr", "momentum_buffers"} (single group)."""
        new = self.state_dict()
        for g in new["param_groups"]:
            g["lr"] = old["lr"]
        new["state"] = {i: {"momentum_buffer": b}
                        for i, b in enumerate(old["momentum_buffers"]) if b is not None}
        return new
