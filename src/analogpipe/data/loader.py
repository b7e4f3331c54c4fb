"""The ``Dataset`` record, mini-batch iteration and batched augmentation.

Everything random takes an explicit ``torch.Generator`` so a run replays exactly from its seed.
The readers (digits, cifar, synthetic) import from here; this module imports none of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch


class DataError(ValueError):
    """A dataset on disk is missing or malformed; the message names the file and the layout."""


@dataclass
class Dataset:
    """Tensors of one dataset, already normalised, kept in memory (all our sets are small).

    ``task`` is "classification" (``*_y`` int64 labels, ``num_classes`` classes) or "regression"
    (``*_y`` float32 targets of shape (N, num_classes): there ``num_classes`` is the output size).
    ``mean``/``std`` are the per-channel values used for normalisation (information only);
    ``info`` carries extras such as a synthetic teacher's weights and noise level.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_shape: tuple[int, ...]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    task: str = "classification"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        splits = (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y))
        for split, x, y in splits:
            if len(x) != len(y):
                raise ValueError(f"{self.name}: {split}_x has {len(x)} rows, {split}_y {len(y)}")
            if tuple(x.shape[1:]) != tuple(self.in_shape):
                raise ValueError(
                    f"{self.name}: {split}_x per-sample shape {tuple(x.shape[1:])} "
                    f"!= in_shape {tuple(self.in_shape)}"
                )
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")

    @property
    def n_train(self) -> int:
        return len(self.train_x)

    @property
    def n_test(self) -> int:
        return len(self.test_x)


def take_subset(ds: Dataset, subset: int, seed: int = 0) -> Dataset:
    """Keep ``subset`` training samples: the first ones after a shuffle seeded by ``seed``.

    A seeded shuffle (not the file order) keeps the class balance of sorted files.
    """
    if subset < 1 or subset > ds.n_train:
        raise ValueError(
            f"subset must be in [1, {ds.n_train}] for {ds.name!r} (its training size), got {subset}"
        )
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(ds.n_train, generator=gen)[:subset]
    return replace(ds, train_x=ds.train_x[idx], train_y=ds.train_y[idx])


def flatten_dataset(ds: Dataset) -> Dataset:
    """Samples as vectors (for the MLP): in_shape becomes (prod(in_shape),)."""
    n_features = math.prod(ds.in_shape)
    return replace(
        ds,
        train_x=ds.train_x.reshape(ds.n_train, n_features),
        test_x=ds.test_x.reshape(ds.n_test, n_features),
        in_shape=(n_features,),
    )


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    crop_padding: int = 4,
    flip: bool = True,
) -> torch.Tensor:
    """Random crop after zero padding, then random horizontal flip, for a whole batch at once.

    x: (N, C, H, W). Random draws, in this order, on the generator's device:
    ``offsets = torch.randint(0, 2 * crop_padding + 1, (N, 2))`` (row, column offset into the
    padded image) and, if ``flip``, ``flipped = torch.rand(N) < 0.5``. Sample n of the output is
    ``padded[n, :, dy:dy+H, dx:dx+W]``, mirrored along W when flipped. One gather does all of it.
    """
    if x.dim() != 4:
        raise ValueError(f"augment expects (N, C, H, W), got shape {tuple(x.shape)}")
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    n, c, h, w = x.shape
    p = crop_padding
    gen_device = generator.device
    offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator, device=gen_device)
    offsets = offsets.to(x.device)
    padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x

    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (N, H)
    cols = torch.arange(w, device=x.device).expand(n, w)  # (N, W)
    if flip:
        flipped = torch.rand(n, generator=generator, device=gen_device).to(x.device) < 0.5
        cols = torch.where(flipped[:, None], (w - 1) - cols, cols)
    cols = cols + offsets[:, 1:2]

    batch_idx = torch.arange(n, device=x.device)[:, None, None, None]
    chan_idx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (x, y) mini-batches.

    ``drop_last`` defaults to True because a pipeline splits every mini-batch into equal
    micro-batches; a short last batch would change the schedule. Shuffling needs an explicit
    ``generator`` (no hidden global RNG), so the order replays from the run's seed.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} samples but y has {len(y)}")
    if batch_size < 1 or batch_size > n:
        raise ValueError(f"batch_size must be in [1, {n}] (the dataset size), got {batch_size}")
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs an explicit torch.Generator (generator=...)")
        order = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx.to(y.device)]
