"""Writes neural_tangents_graph_reference.npz: graph-network NNGP / NTK from neural-tangents' stax.Aggregate (JAX,
float64).

Run with an environment holding `neural-tangents==0.6.5` and `jax[cpu]==0.4.30` (kept out of the package's
dependencies):  python tests/reference/make_graph_reference.py
The networks and inputs are in graph_architectures.py. neural-tangents takes channel-last inputs (N, V, C), and its
pattern P[n, i, j] is an edge i -> j (out[j] = sum_i x[i] P[i, j]): the transposed adjacency of this library.
"""
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from graph_architectures import BIAS_VAR, CASES, WEIGHT_VAR, edge_lists, inputs  # noqa: E402

ACTIVATIONS = {"relu": stax.Relu, "erf": stax.Erf}


def layers(spec, sparse):
    w_std, b_std = WEIGHT_VAR ** 0.5, BIAS_VAR ** 0.5
    out = []
    for layer in spec:
        kind = layer[0]
        if kind == "node":
            out.append(stax.Conv(layer[1], (1,), W_std=w_std, b_std=b_std))
        elif kind == "act":
            out.append(ACTIVATIONS[layer[1]]())
        elif kind == "agg":
            out.append(stax.Aggregate(aggregate_axis=1, batch_axis=0, channel_axis=-1,
                                      implementation="SPARSE" if sparse else "DENSE"))
        elif kind == "gap":
            out.append(stax.GlobalAvgPool())
        elif kind == "flatten":
            out.append(stax.Flatten())
        elif kind == "readout":
            out.append(stax.Dense(1, W_std=w_std, b_std=b_std))
        else:
            raise ValueError(kind)
    return stax.serial(*out)


def main():
    data = inputs()
    x1, x2 = (jnp.asarray(np.transpose(data[k], (0, 2, 1))) for k in ("x1", "x2"))
    out = {k: v for k, v in data.items()}
    for name, (graphs, spec) in CASES.items():
        _, _, kernel_fn = layers(spec, sparse=graphs == "edges")
        if graphs in ("fixed", "fixed_sparse"):
            pattern = (jnp.broadcast_to(data["fixed"].T, (len(x1),) + data["fixed"].shape),
                       jnp.broadcast_to(data["fixed"].T, (len(x2),) + data["fixed"].shape))
        elif graphs == "dense":
            pattern = (jnp.asarray(np.transpose(data["weighted1"], (0, 2, 1))),
                       jnp.asarray(np.transpose(data["weighted2"], (0, 2, 1))))
        elif graphs == "edges":
            pattern = (jnp.asarray(edge_lists(data["counts1"])), jnp.asarray(edge_lists(data["counts2"])))
        if graphs == "nodes":
            fixed = jnp.asarray(data["fixed"].T)[None]
            k = kernel_fn(x1[:1], None, ("nngp", "ntk"), pattern=(fixed, fixed))
            out[f"{name}_nngp"] = np.asarray(k[0])[0, 0]  # (V, V): node i of the input with node j
            out[f"{name}_ntk"] = np.asarray(k[1])[0, 0]
            continue
        k = kernel_fn(x1, x2, ("nngp", "ntk"), pattern=pattern)
        out[f"{name}_nngp"], out[f"{name}_ntk"] = np.asarray(k[0]), np.asarray(k[1])
        print(name, out[f"{name}_nngp"].shape)
    np.savez_compressed(os.path.join(HERE, "neural_tangents_graph_reference.npz"), **out)


if __name__ == "__main__":
    main()
