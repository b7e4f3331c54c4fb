"""CIFAR-10 / CIFAR-100 from a local folder in the standard "python version" pickle layout.

CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a
pickled dict with ``b"data"`` (uint8, N x 3072, channel-major 3x32x32 rows) and ``b"labels"``.
CIFAR-100 (``cifar-100-python``): ``train`` and ``test`` with ``b"data"`` and ``b"fine_labels"``.
``batches.meta`` / ``meta`` hold class names only and are not needed.

Pickles can run code when loaded, so a restricted unpickler only admits the numpy globals an
array needs; anything else is reported as a DataError instead of being executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .loader import DataError, Dataset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_PIXELS = 3 * 32 * 32


class _Layout:
    """What one CIFAR variant's folder looks like."""

    def __init__(
        self, name: str, folder: str, train: list[str], test: str, label_key: str, classes: int
    ) -> None:
        self.name, self.folder, self.train, self.test = name, folder, train, test
        self.label_key, self.classes = label_key, classes

    def describe(self) -> str:
        files = ", ".join([*self.train, self.test])
        return (
            f"{self.name} expects a folder '{self.folder}' (or its parent) holding {files}: "
            f"pickled dicts with b'data' (uint8, N x {_PIXELS}) and b'{self.label_key}' "
            f"(ints in [0, {self.classes}))"
        )


CIFAR10 = _Layout(
    "cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
    "labels", 10,
)
CIFAR100 = _Layout("cifar100", "cifar-100-python", ["train"], "test", "fine_labels", 100)

# Globals a pickled numpy array may reference (numpy 1.x and 2.x spellings, py2 bytes encoding).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _load_pickle(path: Path, layout: _Layout) -> dict[bytes, Any]:
    if not path.is_file():
        raise DataError(f"missing file {path}; {layout.describe()}")
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a corrupt or foreign file
        raise DataError(
            f"cannot read {path} as a CIFAR pickle ({type(exc).__name__}: {exc}); "
            f"{layout.describe()}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a dict; {layout.describe()}")
    # Files written by Python 3 with str keys are accepted too.
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _read_split(paths: list[Path], layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the files of one split; checks every file's shapes and label range."""
    datas, labels = [], []
    for path in paths:
        d = _load_pickle(path, layout)
        key = layout.label_key.encode()
        if b"data" not in d or key not in d:
            raise DataError(
                f"{path} lacks b'data' or b'{layout.label_key}' (has {sorted(d)}); "
                f"{layout.describe()}"
            )
        data = np.asarray(d[b"data"])
        lab = np.asarray(d[key])
        if data.ndim != 2 or data.shape[1] != _PIXELS:
            raise DataError(
                f"{path}: b'data' has shape {data.shape}, expected (N, {_PIXELS}); "
                f"{layout.describe()}"
            )
        if data.dtype != np.uint8:
            raise DataError(f"{path}: b'data' has dtype {data.dtype}, expected uint8")
        if lab.shape != (data.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
            raise DataError(
                f"{path}: b'{layout.label_key}' has shape {lab.shape} dtype {lab.dtype}, "
                f"expected {data.shape[0]} integers"
            )
        if lab.size and (lab.min() < 0 or lab.max() >= layout.classes):
            raise DataError(
                f"{path}: labels span [{lab.min()}, {lab.max()}], "
                f"outside [0, {layout.classes}) for {layout.name}"
            )
        datas.append(data)
        labels.append(lab.astype(np.int64))
    return np.concatenate(datas), np.concatenate(labels)


def resolve_folder(data_dir: str | Path, layout: _Layout) -> Path:
    """Accept the CIFAR folder itself or a parent holding it."""
    root = Path(data_dir).expanduser()
    if (root / layout.test).is_file() or (root / layout.train[0]).is_file():
        return root
    if (root / layout.folder).is_dir():
        return root / layout.folder
    # the downloaded archive (cifar-10-python.tar.gz), given itself or lying in the folder
    candidates = [root] if root.is_file() else sorted(root.iterdir()) if root.is_dir() else []
    archives = [a for a in candidates if a.name.endswith((".tar.gz", ".tgz", ".tar"))]
    if archives:
        where = archives[0].parent
        raise DataError(
            f"{root}: {archives[0].name} is an archive; extract it first "
            f"(tar -xzf {archives[0]} -C {where}) and give the folder that holds "
            f"'{layout.folder}' as the data folder")
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {layout.describe()}")
    raise DataError(
        f"{root} contains neither the {layout.name} files nor a '{layout.folder}' folder; "
        f"{layout.describe()}"
    )


def _normalise(data: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, 3072) -> float32 (N, 3, 32, 32), ((x / 255) - mean) / std, all vectorised."""
    x = torch.from_numpy(data).reshape(-1, 3, 32, 32).to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.div_(255.0).sub_(m).div_(s)


def _load(
    data_dir: str | Path, layout: _Layout, mean: tuple[float, ...], std: tuple[float, ...]
) -> Dataset:
    folder = resolve_folder(data_dir, layout)
    train_x, train_y = _read_split([folder / f for f in layout.train], layout)
    test_x, test_y = _read_split([folder / layout.test], layout)
    return Dataset(
        name=layout.name,
        train_x=_normalise(train_x, mean, std),
        train_y=torch.from_numpy(train_y),
        test_x=_normalise(test_x, mean, std),
        test_y=torch.from_numpy(test_y),
        num_classes=layout.classes,
        in_shape=(3, 32, 32),
        mean=mean,
        std=std,
        info={"folder": str(folder)},
    )


def load_cifar10(data_dir: str | Path) -> Dataset:
    """CIFAR-10, normalised with the standard per-channel mean/std; raises DataError."""
    return _load(data_dir, CIFAR10, CIFAR10_MEAN, CIFAR10_STD)


def load_cifar100(data_dir: str | Path) -> Dataset:
    """CIFAR-100 (fine labels), normalised with the standard mean/std; raises DataError."""
    return _load(data_dir, CIFAR100, CIFAR100_MEAN, CIFAR100_STD)
