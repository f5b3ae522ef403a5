"""Architectures of the neural-tangents CNN fixture, as plain data both sides build from.

tests/reference/make_cnn_reference.py builds them with neural-tangents' stax (channel last), and
tests/test_reference_cnn.py with torch modules (channel first) through NNGPKernel.from_module. A layer is a tuple:

    ("conv", kernel_size, stride, padding)   padding "same", "valid" or "circular"
    ("conv", kernel_size, stride, padding, width)   with that many output channels (else 1 in neural-tangents)
    ("act", name)                            relu, erf, gelu, abs
    ("pool", window)                         average pooling, stride = window
    ("gap",)  ("flatten",)  ("dense",)  ("layernorm",)
    ("residual", [layers])                   x + branch(x)
    ("parallel", merge, [[layers], ...])     branches (an empty list is the identity) merged by sum, concat, prod
    ("conv_transpose", kernel_size, stride, padding)   padding "valid" or "same" (kernel_size - stride even)
    ("dropout",)                             torch.nn.Dropout: the identity in evaluation mode (nothing in stax)
    ("attention", mechanism, positional, decay)   self-attention keeping the channel count, ATTENTION variances;
                                             decay None or "exp4" (exp(-d / 4) of the squared position distance)
"""

CONV = ("conv", 3, 1, "same")
RELU = ("act", "relu")

IMAGE = (2, 6, 5)  # C, H, W
SEQUENCE = (3, 9)  # C, L

ARCHITECTURES = {
    # name: (input_shape, layers, weight_var, bias_var)
    "same_flatten": (IMAGE, [CONV, RELU, CONV, RELU, ("flatten",), ("dense",)], 1.7, 0.2),
    "valid_stride": (IMAGE, [("conv", 3, 2, "valid"), RELU, ("conv", 2, 1, "valid"), ("act", "erf"), ("flatten",),
                             ("dense",)], 1.7, 0.2),
    "circular": (IMAGE, [("conv", 3, 1, "circular"), RELU, ("conv", 3, 1, "circular"), ("act", "abs"), ("flatten",),
                         ("dense",)], 1.3, 0.1),
    "avg_pool": (IMAGE, [CONV, RELU, ("pool", 2), CONV, RELU, ("flatten",), ("dense",)], 1.7, 0.2),
    "global_pool": (IMAGE, [CONV, RELU, CONV, ("act", "gelu"), ("gap",), ("dense",)], 1.7, 0.2),
    "residual": (IMAGE, [CONV, ("residual", [RELU, CONV]), ("residual", [RELU, CONV]), RELU, ("gap",), ("dense",)],
                 1.5, 0.1),
    "layernorm": (IMAGE, [CONV, ("layernorm",), RELU, CONV, ("layernorm",), RELU, ("flatten",), ("dense",)], 1.7,
                  0.2),
    "depth8": (IMAGE, [CONV, RELU] * 8 + [("flatten",), ("dense",)], 2.0, 0.05),
    "mlp_head": (IMAGE, [CONV, RELU, ("gap",), ("dense",), RELU, ("dense",)], 1.7, 0.2),
    "conv1d_pool": (SEQUENCE, [CONV, RELU, ("conv", 3, 2, "valid"), ("act", "erf"), ("gap",), ("dense",)], 1.7, 0.2),
    "conv1d_flatten": (SEQUENCE, [("conv", 5, 1, "same"), RELU, CONV, RELU, ("flatten",), ("dense",)], 1.7, 0.2),
    "parallel_sum": (IMAGE, [CONV, RELU, ("dropout",),
                             ("parallel", "sum", [[CONV], [("conv", 1, 1, "same"), RELU, CONV]]), RELU, ("flatten",),
                             ("dense",)], 1.5, 0.2),
    "parallel_concat": (IMAGE, [CONV, RELU, ("parallel", "concat", [[("conv", 3, 1, "same", 2)],
                                                                   [CONV, RELU, ("conv", 3, 1, "same", 6)]]),
                                ("gap",), ("dense",)], 1.7, 0.1),
    "parallel_prod": (IMAGE, [CONV, ("parallel", "prod", [[RELU, CONV], [("act", "erf"), CONV]]), ("flatten",),
                              ("dense",)], 1.3, 0.2),
    "attention_softmax": (SEQUENCE, [CONV, ("attention", "softmax", None, None), RELU, ("flatten",), ("dense",)],
                          1.5, 0.1),
    "attention_identity_2d": (IMAGE, [CONV, ("attention", "identity", None, None), ("gap",), ("dense",)], 1.7, 0.2),
    "attention_relu_sum": (SEQUENCE, [CONV, RELU, ("attention", "relu", "sum", None), ("flatten",), ("dense",)],
                           1.3, 0.1),
    "attention_abs_concat_decay": (IMAGE, [CONV, ("attention", "abs", "concat", "exp4"), RELU, CONV, ("gap",),
                                           ("dense",)], 1.5, 0.1),
    "transformer": (SEQUENCE, [CONV, ("residual", [("layernorm",), ("attention", "softmax", "sum", "exp4")]),
                               ("residual", [("layernorm",), ("conv", 1, 1, "same"), RELU, ("conv", 1, 1, "same")]),
                               ("gap",), ("dense",)], 1.5, 0.1),
    "conv_transpose_valid": (SEQUENCE, [CONV, RELU, ("conv_transpose", 3, 2, "valid"), RELU, ("flatten",),
                                        ("dense",)], 1.5, 0.1),
    "conv_transpose_unet": (IMAGE, [("conv", 2, 2, "valid"), RELU, ("conv_transpose", 4, 2, "same"), RELU, CONV,
                                    ("gap",), ("dense",)], 1.7, 0.2),
    "conv_transpose_k1": (IMAGE, [CONV, ("conv_transpose", 1, 2, "valid"), ("act", "erf"), ("flatten",), ("dense",)],
                          1.3, 0.2),
    # Branches that end in activations, concatenated: a weighted layer after the concatenation has independent
    # weights per channel, so their correlation never enters (once refused).
    "concat_activated": (IMAGE, [CONV, RELU, ("parallel", "concat", [[CONV, RELU], [("conv", 1, 1, "same"),
                                                                                   ("act", "erf")]]),
                                 ("gap",), ("dense",)], 1.6, 0.15),
    # A product of branches that each start with their own weights: independent outputs (once refused).
    "prod_independent": (SEQUENCE, [CONV, RELU, ("parallel", "prod", [[CONV, RELU], [CONV, ("act", "erf")]]),
                                    ("flatten",), ("dense",)], 1.4, 0.1),
    # neural-tangents' SAME with an even kernel at stride 1 pads the extra position at the end, as torch's "same".
    "same_even_kernel": (SEQUENCE, [("conv", 2, 1, "same"), RELU, ("conv", 4, 1, "same"), ("act", "erf"),
                                    ("flatten",), ("dense",)], 1.5, 0.1),
    "parallel_three": (SEQUENCE, [CONV, ("parallel", "sum", [[], [RELU, CONV], [("act", "erf"), CONV]]), RELU,
                                  ("gap",), ("dense",)], 1.4, 0.1),
}
LAYERNORM_EPS = 1e-5
# key_var, query_var, value_var, out_var, bias_var of every attention layer
ATTENTION = (1.3, 0.8, 1.5, 0.9, 0.2)


def inputs(input_shape, seed=0):
    """x1 (6, *shape) and x2 (4, *shape), channel first, with duplicate, antiparallel and near-zero rows."""
    import numpy as np

    rng = np.random.RandomState(seed)
    x1 = rng.randn(6, *input_shape)
    x1[2] = 1e-7 * x1[2]  # near zero
    x1[3] = -x1[0]  # antiparallel
    x1[4] = x1[1]  # duplicate within x1
    x2 = rng.randn(4, *input_shape)
    x2[0] = x1[0]  # duplicate across x1 / x2
    return x1, x2
