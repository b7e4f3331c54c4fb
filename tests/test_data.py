"""Data: CIFAR pickle reader and its errors, digits, synthetic problems, augment, batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from analogpipe.data import (
    DATASET_NAMES,
    DataError,
    augment,
    batches,
    load_dataset,
    make_synthetic_classification,
    make_teacher,
)
from analogpipe.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

# ---------------------------------------------------------------- CIFAR fixtures


def _write(path: Path, obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _batch(rng: np.random.Generator, n: int, classes: int, key: bytes) -> dict:
    return {
        b"batch_label": b"test",
        key: rng.integers(0, classes, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * n,
    }


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> tuple[Path, list[dict], dict]:
    """A real-layout CIFAR-10 folder: 5 train batches of 4 images, a test batch of 3."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    train = [_batch(rng, 4, 10, b"labels") for _ in range(5)]
    for i, b in enumerate(train, start=1):
        _write(folder / f"data_batch_{i}", b)
    test = _batch(rng, 3, 10, b"labels")
    _write(folder / "test_batch", test)
    _write(folder / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    return folder, train, test


def _expected(data: np.ndarray, mean, std) -> torch.Tensor:
    """Per-pixel reference: explicit loops over channels, no shared code with the reader."""
    img = data.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    out = np.empty_like(img)
    for c in range(3):
        out[:, c] = (img[:, c] - mean[c]) / std[c]
    return torch.from_numpy(out).float()


def test_cifar10_reads_values_labels_and_normalises(cifar10_dir) -> None:
    folder, train, test = cifar10_dir
    for where in (folder, folder.parent):  # the folder itself or its parent
        ds = load_dataset("cifar10", where)
        assert ds.n_train == 20 and ds.n_test == 3
        assert ds.in_shape == (3, 32, 32) and ds.num_classes == 10
        assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
        all_data = np.concatenate([b[b"data"] for b in train])
        all_labels = sum((b[b"labels"] for b in train), [])
        torch.testing.assert_close(ds.train_x, _expected(all_data, CIFAR10_MEAN, CIFAR10_STD))
        assert ds.train_y.tolist() == all_labels
        torch.testing.assert_close(ds.test_x, _expected(test[b"data"], CIFAR10_MEAN, CIFAR10_STD))
        assert ds.test_y.tolist() == test[b"labels"]
        assert ds.mean == CIFAR10_MEAN and ds.std == CIFAR10_STD
    # Channel-major rows: the first 1024 bytes of a row are the red plane.
    assert torch.allclose(
        ds.train_x[0, 0, 0, 1] * CIFAR10_STD[0] + CIFAR10_MEAN[0],
        torch.tensor(float(train[0][b"data"][0, 1]) / 255.0),
    )


def test_cifar10_python2_style_pickle(cifar10_dir) -> None:
    """The published files are protocol-2 pickles naming numpy.core.multiarray."""
    folder, train, _ = cifar10_dir
    raw = pickle.dumps(train[0], protocol=2).replace(b"numpy._core", b"numpy.core")
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw
    (folder / "data_batch_1").write_bytes(raw)
    ds = load_dataset("cifar10", folder)
    assert ds.train_y[:4].tolist() == train[0][b"labels"]


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    train, test = _batch(rng, 6, 100, b"fine_labels"), _batch(rng, 2, 100, b"fine_labels")
    train[b"fine_labels"][0] = 99
    _write(folder / "train", train)
    _write(folder / "test", test)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.n_train == 6 and ds.n_test == 2
    assert ds.train_y.tolist() == train[b"fine_labels"]
    torch.testing.assert_close(ds.test_x, _expected(test[b"data"], CIFAR100_MEAN, CIFAR100_STD))


def test_cifar_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*does not exist.*data_batch_1"):
        load_dataset("cifar10", missing)
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)  # exists but empty


def test_cifar_missing_batch(cifar10_dir) -> None:
    folder, _, _ = cifar10_dir
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing file .*data_batch_3"):
        load_dataset("cifar10", folder)


def test_cifar_corrupt_pickle(cifar10_dir) -> None:
    folder, _, _ = cifar10_dir
    (folder / "data_batch_2").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(DataError, match=r"cannot read .*data_batch_2"):
        load_dataset("cifar10", folder)


def test_cifar_refuses_foreign_globals(cifar10_dir) -> None:
    folder, _, _ = cifar10_dir
    _write(folder / "test_batch", {b"data": Path("x"), b"labels": [0]})
    with pytest.raises(DataError, match=r"test_batch.*not allowed"):
        load_dataset("cifar10", folder)


def test_cifar_wrong_shape(cifar10_dir) -> None:
    folder, _, _ = cifar10_dir
    bad = {b"data": np.zeros((4, 3000), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    _write(folder / "data_batch_4", bad)
    with pytest.raises(DataError, match=r"data_batch_4.*\(4, 3000\).*3072"):
        load_dataset("cifar10", folder)


def test_cifar_labels_out_of_range(cifar10_dir) -> None:
    folder, _, _ = cifar10_dir
    bad = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [3, 10]}
    _write(folder / "test_batch", bad)
    with pytest.raises(DataError, match=r"test_batch.*labels span \[3, 10\]"):
        load_dataset("cifar10", folder)


def test_cifar_missing_key_and_label_count(cifar10_dir) -> None:
    folder, _, _ = cifar10_dir
    _write(folder / "data_batch_5", {b"data": np.zeros((2, 3072), dtype=np.uint8)})
    with pytest.raises(DataError, match=r"data_batch_5 lacks"):
        load_dataset("cifar10", folder)
    _write(folder / "data_batch_5", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]})
    with pytest.raises(DataError, match=r"data_batch_5.*expected 2 integers"):
        load_dataset("cifar10", folder)


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------- digits and dispatch


def test_digits_sizes_and_split_determinism() -> None:
    a = load_dataset("digits", seed=0)
    assert a.n_train + a.n_test == 1797
    assert a.n_test in (359, 360)  # one of 5 stratified folds of 1797
    assert a.num_classes == 10 and a.in_shape == (1, 8, 8)
    assert set(a.train_y.tolist()) == set(range(10)) == set(a.test_y.tolist())
    # Normalised with the training split's statistics.
    assert abs(a.train_x.mean().item()) < 1e-5 and abs(a.train_x.std().item() - 1) < 1e-2
    b = load_dataset("digits", seed=0)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = load_dataset("digits", seed=1)
    assert not torch.equal(a.train_y, c.train_y)
    # Stratified: each class's test share is close to 20 %.
    for k in range(10):
        share = (a.test_y == k).sum() / ((a.test_y == k).sum() + (a.train_y == k).sum())
        assert abs(share.item() - 0.2) < 0.02


def test_digits_five_seeds_test_every_image_exactly_once() -> None:
    # k-fold: the test sets of seeds 0..4 partition the 1797 images; seed 5 re-partitions
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().data).float().reshape(-1, 64)
    keys = {tuple(r.tolist()): i for i, r in enumerate(raw)}  # a few digits are duplicates
    seen: list[int] = []
    for seed in range(5):
        ds = load_dataset("digits", seed=seed)
        # undo the per-split normalisation to recover the raw pixels (0..16, integers)
        pix = (ds.test_x.reshape(-1, 64) * ds.std[0] + ds.mean[0]) * 16.0
        seen += [keys.get(tuple(p.round().tolist()), -1) for p in pix]
        assert ds.n_train + ds.n_test == 1797
    assert len(seen) == 1797 and -1 not in seen
    assert len(set(seen)) == len(keys)  # every distinct image tested
    other = load_dataset("digits", seed=5)
    assert not torch.equal(other.test_y, load_dataset("digits", seed=0).test_y)


def test_flatten_and_subset() -> None:
    ds = load_dataset("digits", flatten=True, subset=100, seed=3)
    assert ds.in_shape == (64,) and ds.train_x.shape == (100, 64)
    assert ds.test_x.shape in ((359, 64), (360, 64))
    again = load_dataset("digits", flatten=True, subset=100, seed=3)
    assert torch.equal(ds.train_x, again.train_x)
    full = load_dataset("digits", seed=3)
    # Every kept sample is a row of the full training set.
    rows = {tuple(r.tolist()) for r in full.train_x.flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in ds.train_x)
    with pytest.raises(ValueError, match="subset"):
        load_dataset("digits", subset=10_000)


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(ValueError, match="'mnist' unknown; allowed: digits, cifar10, cifar100"):
        load_dataset("mnist")
    assert "teacher" in DATASET_NAMES and "synthetic-cls" in DATASET_NAMES


# ---------------------------------------------------------------- synthetic


def test_teacher_noise_std_matches() -> None:
    # 20000 x 8 residuals: the sample std's relative error is ~1/sqrt(2 * 160000) = 0.18 %;
    # a 2 % tolerance is > 10 standard errors.
    ds = make_teacher(n_train=20_000, n_test=100, noise_std=0.3, seed=5)
    w = ds.info["teacher_weight"]
    resid = ds.train_y - ds.train_x @ w.T
    assert abs(resid.std().item() - 0.3) < 0.02 * 0.3
    assert abs(resid.mean().item()) < 0.01
    assert ds.task == "regression" and ds.train_y.dtype == torch.float32
    assert ds.num_classes == 8 and ds.in_shape == (32,)
    noiseless = make_teacher(n_train=50, n_test=10, noise_std=0.0)
    torch.testing.assert_close(noiseless.train_y, noiseless.train_x @ noiseless.info[
        "teacher_weight"].T)


def test_teacher_via_load_dataset_is_seeded() -> None:
    a, b = load_dataset("teacher", seed=2), load_dataset("teacher", seed=2)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, load_dataset("teacher", seed=3).train_x)


def test_synthetic_classification_label_noise() -> None:
    # Flip rate over 40000 labels: standard error sqrt(.1 * .9 / 40000) = 0.0015; tolerance 0.01.
    ds = make_synthetic_classification(n_train=40_000, n_test=10, label_noise=0.1, seed=0)
    clean = ds.info["clean_train_y"]
    assert abs((ds.train_y != clean).float().mean().item() - 0.1) < 0.01
    assert torch.equal(clean, (ds.train_x @ ds.info["teacher_weight"].T).argmax(1))
    assert ds.train_y.min() >= 0 and ds.train_y.max() < ds.num_classes
    assert ds.train_y.dtype == torch.int64
    none = make_synthetic_classification(n_train=500, label_noise=0.0)
    assert torch.equal(none.train_y, none.info["clean_train_y"])


# ---------------------------------------------------------------- augmentation


def _reference_augment(x, generator, crop_padding, flip):
    """Per-sample loop with the documented draws: obviously correct, slow."""
    n, _, h, w = x.shape
    p = crop_padding
    offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator)
    flipped = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=bool)
    out = torch.empty_like(x)
    for i in range(n):
        img = F.pad(x[i], (p, p, p, p))
        dy, dx = offsets[i].tolist()
        crop = img[:, dy : dy + h, dx : dx + w]
        out[i] = torch.flip(crop, dims=[2]) if flipped[i] else crop
    return out


@pytest.mark.parametrize("crop_padding,flip", [(4, True), (4, False), (0, True), (2, True)])
def test_augment_matches_reference(crop_padding: int, flip: bool) -> None:
    x = torch.randn(16, 3, 8, 10)
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    got = augment(x, g1, crop_padding=crop_padding, flip=flip)
    assert torch.equal(got, _reference_augment(x, g2, crop_padding, flip))
    # Both consumed the same draws: the generators stay in step.
    assert torch.equal(g1.get_state(), g2.get_state())


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7),
    p=st.integers(0, 3), flip=st.booleans(), seed=st.integers(0, 2**31),
)
def test_augment_matches_reference_property(n, c, h, w, p, flip, seed) -> None:
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    got = augment(x, torch.Generator().manual_seed(seed), crop_padding=p, flip=flip)
    want = _reference_augment(x, torch.Generator().manual_seed(seed), p, flip)
    assert torch.equal(got, want)


def test_augment_flip_only_and_padding_zeros() -> None:
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4) + 1.0  # no zeros
    flipped = augment(x, torch.Generator().manual_seed(0), crop_padding=0, flip=True)
    for i in range(2):  # each sample is either itself or its mirror image
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    # With large padding on many samples, zeros from the padding appear; with none they never do.
    big = torch.ones(64, 1, 4, 4)
    out = augment(big, torch.Generator().manual_seed(1), crop_padding=4)
    assert (out == 0).any() and (out == 1).any()
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert not (augment(big, torch.Generator().manual_seed(1), crop_padding=0) == 0).any()


def test_augment_same_state_same_output() -> None:
    x = torch.randn(8, 3, 32, 32)
    g = torch.Generator().manual_seed(11)
    state = g.get_state()
    first = augment(x, g)
    second = augment(x, g)
    g.set_state(state)
    assert torch.equal(augment(x, g), first)
    assert not torch.equal(first, second)  # the generator advanced


def test_augment_rejects_bad_input() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match="N, C, H, W"):
        augment(torch.zeros(3, 4, 4), g)
    with pytest.raises(ValueError, match="crop_padding"):
        augment(torch.zeros(1, 1, 4, 4), g, crop_padding=-1)


# ---------------------------------------------------------------- batches


def test_batches_cover_every_sample_once_without_drop_last() -> None:
    x = torch.arange(23).float()[:, None]
    y = torch.arange(23)
    got = list(batches(x, y, 5, generator=torch.Generator().manual_seed(0), drop_last=False))
    assert [len(b[1]) for b in got] == [5, 5, 5, 5, 3]
    seen = torch.cat([b[1] for b in got])
    assert sorted(seen.tolist()) == list(range(23))
    for bx, by in got:  # x and y stay paired
        assert torch.equal(bx[:, 0].long(), by)


def test_batches_drop_last_default_and_order() -> None:
    x, y = torch.arange(23).float(), torch.arange(23)
    got = list(batches(x, y, 5, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in got] == [5, 5, 5, 5]
    in_order = list(batches(x, y, 5, shuffle=False, drop_last=False))
    assert torch.equal(torch.cat([b[1] for b in in_order]), y)


def test_batches_seeded_order_reproducible() -> None:
    x, y = torch.randn(40, 3), torch.arange(40)

    def order(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([b for _, b in batches(x, y, 8, generator=g)]).tolist()

    assert order(4) == order(4)
    assert order(4) != order(5)
    g = torch.Generator().manual_seed(4)
    epoch1 = torch.cat([b for _, b in batches(x, y, 8, generator=g)]).tolist()
    epoch2 = torch.cat([b for _, b in batches(x, y, 8, generator=g)]).tolist()
    assert epoch1 == order(4) and epoch1 != epoch2  # the generator carries across epochs


def test_batches_errors() -> None:
    x, y = torch.zeros(10, 2), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(x, y, 0, shuffle=False))
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 10\]"):
        next(batches(x, y, 11, shuffle=False))
    with pytest.raises(ValueError, match="generator"):
        next(batches(x, y, 2))
    with pytest.raises(ValueError, match="samples"):
        next(batches(x, y[:5], 2, shuffle=False))
