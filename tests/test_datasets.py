"""The Fashion-MNIST loader on idx files written here (the tests do not need the Debian package): the official
split kept, a seeded subset of the training images, pixels in [0, 1], and errors that say how to get the files."""
import gzip
import struct

import numpy as np
import pytest
import torch

from gpytorch_nngp.models import load_dataset
from gpytorch_nngp.models.data import FASHION_MNIST_FILES


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_dir(tmp_path):
    rng = np.random.RandomState(0)
    for part, n in (("train", 30), ("test", 12)):
        images, labels = FASHION_MNIST_FILES[part]
        _write_idx(tmp_path / images, rng.randint(0, 256, size=(n, 28, 28)))
        _write_idx(tmp_path / labels, np.arange(n) % 10)
    return tmp_path


def test_fashion_mnist_from_a_directory(fashion_dir):
    x, y, x_test, y_test = load_dataset("fashion-mnist", 20, seed=3, root=str(fashion_dir))
    assert x.shape == (20, 784) and x_test.shape == (12, 784) and x.dtype == torch.float64
    assert 0 <= x.min() and x.max() <= 1 and torch.equal(y_test, torch.arange(12) % 10)  # the official test set
    again = load_dataset("fashion-mnist", 20, seed=3, root=str(fashion_dir))
    assert torch.equal(again[0], x) and not torch.equal(load_dataset("fashion-mnist", 20, seed=4,
                                                                     root=str(fashion_dir))[0], x)
    everything = load_dataset("fashion-mnist", 30, root=str(fashion_dir))
    assert sorted(everything[1].tolist()) == sorted((np.arange(30) % 10).tolist())
    with pytest.raises(ValueError, match="n_train must be between 1 and 30 for fashion-mnist"):
        load_dataset("fashion-mnist", 31, root=str(fashion_dir))


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*root="):
        load_dataset("fashion-mnist", 10, root=str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    for files in FASHION_MNIST_FILES.values():
        for name in files:
            with gzip.open(bad / name, "wb") as f:
                f.write(b"not an idx file")
    with pytest.raises(ValueError, match="not an idx file"):
        load_dataset("fashion-mnist", 10, root=str(bad))
