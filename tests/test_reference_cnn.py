"""Architecture kernels equal neural-tangents 0.6.5 (float64): conv with each padding and a stride, average and
global average pooling, flatten readout, residual blocks, LayerNorm, depth 8, 1-D convolutions, with duplicate,
antiparallel and near-zero inputs. Fixture: tests/reference/make_cnn_reference.py."""
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from gpytorch_nngp import ArchitectureKernel, Elementwise, NNGPKernel, NTKKernel, Parallel, Residual, SelfAttention

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))
from cnn_architectures import ARCHITECTURES, ATTENTION, LAYERNORM_EPS, inputs  # noqa: E402

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), "reference", "neural_tangents_cnn_reference.npz"))

WIDTH = 4  # ignored by the kernel: any channel count gives the same limit


def torch_layers(spec, shape):
    """Torch modules for a fixture architecture; shape: (C, *spatial) of the current tensor."""
    nd = len(shape) - 1
    conv = nn.Conv1d if nd == 1 else nn.Conv2d
    pool = nn.AvgPool1d if nd == 1 else nn.AvgPool2d
    gap = nn.AdaptiveAvgPool1d if nd == 1 else nn.AdaptiveAvgPool2d
    out = []
    for layer in spec:
        kind = layer[0]
        if kind == "conv":
            _, k, s, padding = layer[:4]
            width = layer[4] if len(layer) > 4 else WIDTH
            if padding == "circular":
                out.append(conv(shape[0], width, k, s, padding=k // 2, padding_mode="circular"))
            else:
                out.append(conv(shape[0], width, k, s, padding=padding))
            spatial = [(n + (k - 1 if padding != "valid" else 0) - k) // s + 1 for n in shape[1:]]
            shape = (width, *spatial)
        elif kind == "act":
            out.append({"relu": nn.ReLU(), "gelu": nn.GELU()}.get(layer[1]) or Elementwise(layer[1]))
        elif kind == "pool":
            out.append(pool(layer[1]))
            shape = (shape[0], *[n // layer[1] for n in shape[1:]])
        elif kind == "gap":
            out += [gap(1), nn.Flatten()]
            shape = (shape[0],)
        elif kind == "flatten":
            out.append(nn.Flatten())
            shape = (int(np.prod(shape)),)
        elif kind == "dense":
            out.append(nn.Linear(shape[0], WIDTH))
            shape = (WIDTH,)
        elif kind == "layernorm":
            out.append(nn.LayerNorm(list(shape), eps=LAYERNORM_EPS, elementwise_affine=False))
        elif kind == "residual":
            branch, _ = torch_layers(layer[1], shape)
            out.append(Residual(nn.Sequential(*branch)))
        elif kind == "parallel":
            _, merge, branches = layer
            built = [torch_layers(b, shape) if b else ([nn.Identity()], shape) for b in branches]
            out.append(Parallel(*(nn.Sequential(*m) for m, _ in built), merge=merge))
            shapes = [s for _, s in built]
            shape = (sum(s[0] for s in shapes), *shapes[0][1:]) if merge == "concat" else shapes[0]
        elif kind == "conv_transpose":
            _, k, s, padding = layer
            # neural-tangents' VALID: no crop, and at least stride outputs per input; SAME: L * stride outputs
            p, q = (0, max(s - k, 0)) if padding == "valid" else ((k - s) // 2, 0)
            transpose = nn.ConvTranspose1d if nd == 1 else nn.ConvTranspose2d
            out.append(transpose(shape[0], WIDTH, k, s, padding=p, output_padding=q))
            shape = (WIDTH, *[(n - 1) * s - 2 * p + k + q for n in shape[1:]])
        elif kind == "attention":
            _, mechanism, positional, decay = layer
            kv, qv, vv, ov, bv = ATTENTION
            out.append(SelfAttention(shape[0], shape[0], heads=2, mechanism=mechanism, key_var=kv, query_var=qv,
                                     value_var=vv, out_var=ov, bias_var=bv, positional=positional,
                                     spatial_shape=shape[1:],
                                     positional_decay=None if decay is None else (lambda d: torch.exp(-d / 4))))
        elif kind == "dropout":
            out.append(nn.Dropout(0.3))
    return out, shape


def build(name):
    shape, spec, wv, bv = ARCHITECTURES[name]
    module = nn.Sequential(*torch_layers(spec, shape)[0])
    return module, shape, wv, bv


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel], ids=["nngp", "ntk"])
def test_equals_neural_tangents(name, cls):
    module, shape, wv, bv = build(name)
    kernel = cls.from_module(module, shape, weight_var=wv, bias_var=bv).double()
    assert isinstance(kernel, ArchitectureKernel)
    x1, x2 = (torch.from_numpy(x).reshape(len(x), -1) for x in inputs(shape))
    kind = "ntk" if cls is NTKKernel else "nngp"
    with torch.no_grad():
        k11 = kernel(x1).to_dense()
        k12 = kernel(x1, x2).to_dense()
        diag = kernel(x1, diag=True)
    ref11 = torch.from_numpy(FIXTURE[f"{kind}|11|{name}"])
    ref12 = torch.from_numpy(FIXTURE[f"{kind}|12|{name}"])
    torch.testing.assert_close(k11, ref11, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k12, ref12, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(diag, ref11.diagonal(), atol=1e-6, rtol=1e-6)
    assert torch.equal(diag, k11.diagonal()), "diag=True must be exactly the matrix diagonal"
