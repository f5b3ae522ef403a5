"""Writes neural_tangents_reference.npz: NNGP/NTK matrices from neural-tangents (JAX, float64).

Run with an environment holding `neural-tangents==0.6.5` and `jax[cpu]==0.4.30` (kept out of the package's
dependencies):  python tests/reference/make_neural_tangents_reference.py
The inputs include a zero row, parallel, antiparallel and duplicated rows (the |c| = 1 boundary).
"""
import math
import os

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

ACTIVATIONS = {
    "relu": stax.Relu(),
    "erf": stax.Erf(),
    "abs": stax.Abs(),
    "gelu": stax.Gelu(),
    "sign": stax.Sign(),
    "identity": stax.Identity(),
    "leaky_relu_0.2": stax.LeakyRelu(0.2),
    "abrelu_-0.5_1.5": stax.ABRelu(-0.5, 1.5),
}
# (depth, weight_var, bias_var, input scale): the last gives layer variances of order 10-40.
SETTINGS = [(1, 2.0, 0.2, 1.0), (3, 1.5, 0.05, 1.0), (2, 4.0, 0.5, 3.0)]


def inputs():
    rng = np.random.RandomState(0)
    x1 = rng.randn(7, 5)
    x1[2] = 0.0  # zero input
    x1[3] = 2.5 * x1[0]  # parallel
    x1[4] = -x1[1]  # antiparallel
    x2 = rng.randn(4, 5)
    x2[0] = x1[0]  # duplicate across x1/x2
    return x1, x2


def network(act, depth, weight_var, bias_var):
    dense = stax.Dense(1, W_std=math.sqrt(weight_var), b_std=math.sqrt(bias_var))
    layers = []
    for _ in range(depth):
        layers += [dense, act]
    return stax.serial(*layers, dense)


def main():
    x1, x2 = inputs()
    out = {"x1": x1, "x2": x2}
    for name, act in ACTIVATIONS.items():
        for depth, wv, bv, scale in SETTINGS:
            _, _, kernel_fn = network(act, depth, wv, bv)
            tag = f"{name}|{depth}|{wv}|{bv}|{scale}"
            for pair, (a, b) in (("11", (x1, None)), ("12", (x1, x2))):
                k = kernel_fn(scale * a, None if b is None else scale * b, ("nngp", "ntk"))
                out[f"nngp|{pair}|{tag}"] = np.asarray(k.nngp)
                out[f"ntk|{pair}|{tag}"] = np.asarray(k.ntk)
    np.savez_compressed(os.path.join(HERE, "neural_tangents_reference.npz"), **out)
    print(f"wrote {len(out)} arrays")


if __name__ == "__main__":
    main()
