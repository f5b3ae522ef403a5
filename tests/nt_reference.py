"""Loads the neural-tangents reference fixture (see tests/reference/make_neural_tangents_reference.py)."""
import os

import numpy as np
import torch

from gpytorch_nngp import activations as A

PATH = os.path.join(os.path.dirname(__file__), "reference", "neural_tangents_reference.npz")

CLOSED_FORM = {
    "relu": lambda: "relu",
    "erf": lambda: "erf",
    "abs": lambda: "abs",
    "gelu": lambda: "gelu",
    "sign": lambda: "sign",
    "identity": lambda: "identity",
    "leaky_relu_0.2": lambda: A.LeakyReLU(0.2),
    "abrelu_-0.5_1.5": lambda: A.ABReLU(-0.5, 1.5),
}
# The same functions as plain callables: they go through the numerical (Hermite series) path.
AS_CALLABLE = {
    "relu": torch.relu,
    "erf": torch.erf,
    "abs": torch.abs,
    "gelu": torch.nn.functional.gelu,
    "leaky_relu_0.2": lambda x: torch.nn.functional.leaky_relu(x, 0.2),
    "abrelu_-0.5_1.5": lambda x: torch.where(x < 0, -0.5 * x, 1.5 * x),
}


def load():
    data = np.load(PATH)
    cases = {}
    for key in data.files:
        if "|" not in key:
            continue
        kind, pair, name, depth, wv, bv, scale = key.split("|")
        case = cases.setdefault((name, int(depth), float(wv), float(bv), float(scale)), {})
        case[(kind, pair)] = torch.from_numpy(data[key])
    return torch.from_numpy(data["x1"]), torch.from_numpy(data["x2"]), cases
