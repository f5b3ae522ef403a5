"""Writes neural_tangents_cnn_reference.npz: CNN-GP / CNTK matrices from neural-tangents (JAX, float64).

Run with an environment holding `neural-tangents==0.6.5` and `jax[cpu]==0.4.30` (kept out of the package's
dependencies):  python tests/reference/make_cnn_reference.py
The architectures and inputs are in cnn_architectures.py. neural-tangents takes channel-last inputs, so the
channel-first inputs are transposed.
"""
import math
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cnn_architectures import ARCHITECTURES, ATTENTION, LAYERNORM_EPS, inputs  # noqa: E402

ACTIVATIONS = {"relu": stax.Relu, "erf": stax.Erf, "gelu": stax.Gelu, "abs": stax.Abs}
PADDING = {"same": "SAME", "valid": "VALID", "circular": "CIRCULAR"}


def layers(spec, nd, w_std, b_std):
    out = []
    for layer in spec:
        kind = layer[0]
        if kind == "conv":
            _, k, s, padding = layer[:4]
            width = layer[4] if len(layer) > 4 else 1
            out.append(stax.Conv(width, (k,) * nd, (s,) * nd, PADDING[padding], W_std=w_std, b_std=b_std))
        elif kind == "act":
            out.append(ACTIVATIONS[layer[1]]())
        elif kind == "pool":
            out.append(stax.AvgPool((layer[1],) * nd, (layer[1],) * nd))
        elif kind == "gap":
            out.append(stax.GlobalAvgPool())
        elif kind == "flatten":
            out.append(stax.Flatten())
        elif kind == "dense":
            out.append(stax.Dense(1, W_std=w_std, b_std=b_std))
        elif kind == "layernorm":
            out.append(stax.LayerNorm(axis=tuple(range(1, nd + 2)), eps=LAYERNORM_EPS))
        elif kind == "residual":
            branch = stax.serial(*layers(layer[1], nd, w_std, b_std))
            out.append(stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), branch), stax.FanInSum()))
        elif kind == "parallel":
            _, merge, branches = layer
            fan_in = {"sum": stax.FanInSum(), "concat": stax.FanInConcat(axis=-1), "prod": stax.FanInProd()}[merge]
            parts = [stax.serial(*layers(b, nd, w_std, b_std)) if b else stax.Identity() for b in branches]
            out.append(stax.serial(stax.FanOut(len(branches)), stax.parallel(*parts), fan_in))
        elif kind == "conv_transpose":
            _, k, s, padding = layer
            out.append(stax.ConvTranspose(1, (k,) * nd, (s,) * nd, PADDING[padding], W_std=w_std, b_std=b_std))
        elif kind == "attention":
            _, mechanism, positional, decay = layer
            kv, qv, vv, ov, bv = ATTENTION
            out.append(stax.GlobalSelfAttention(
                1, 1, 1, 1, linear_scaling=True, W_key_std=math.sqrt(kv), W_query_std=math.sqrt(qv),
                W_value_std=math.sqrt(vv), W_out_std=math.sqrt(ov), b_std=math.sqrt(bv),
                attention_mechanism=mechanism.upper(), pos_emb_type=(positional or "none").upper(),
                pos_emb_decay_fn=None if decay is None else (lambda d: jnp.exp(-d / 4))))
        elif kind == "dropout":
            pass  # the identity in evaluation mode
        else:
            raise ValueError(kind)
    return out


def main():
    out = {}
    for name, (shape, spec, wv, bv) in ARCHITECTURES.items():
        nd = len(shape) - 1
        _, _, kernel_fn = stax.serial(*layers(spec, nd, math.sqrt(wv), math.sqrt(bv)))
        x1, x2 = inputs(shape)
        last = lambda x: np.moveaxis(x, 1, -1)  # noqa: E731 - (n, C, *spatial) -> (n, *spatial, C)
        for pair, (a, b) in (("11", (x1, None)), ("12", (x1, x2))):
            k = kernel_fn(last(a), None if b is None else last(b), ("nngp", "ntk"))
            out[f"nngp|{pair}|{name}"] = np.asarray(k.nngp)
            out[f"ntk|{pair}|{name}"] = np.asarray(k.ntk)
    np.savez_compressed(os.path.join(HERE, "neural_tangents_cnn_reference.npz"), **out)
    print(f"wrote {len(out)} arrays")


if __name__ == "__main__":
    main()
