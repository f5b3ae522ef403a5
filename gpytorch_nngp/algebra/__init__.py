"""The layer algebra: infinite-width limits of network layers as maps of a pair state (state.py).

Every layer maps the kernel state of a pair of inputs to the state after the layer (Novak et al. 2019, "Bayesian deep
convolutional networks with many channels are Gaussian processes"; Arora et al. 2019 for the NTK; Hron et al. 2020
for attention; the layer set of neural-tangents' `stax`). One layer per module:

    state.py          PairState, Context, Geometry: what flows between layers
    linear.py         Dense, Conv, ConvTranspose (weighted layers)
    pooling.py        AvgPool, GlobalAvgPool, Flatten, ToDiagonal
    elementwise.py    Nonlinearity (activations; their dual maps live in functional/activations.py)
    normalization.py  LayerNorm
    branches.py       Parallel (sum, concat, prod), Residual, InputMap (blocks on the raw input)
    attention.py      SelfAttention
    graph.py          Aggregate (graph aggregation, fixed or per-input graphs)
    network.py        Network: a built architecture and its propagation; mlp_program
    flat.py           FlatProgram: an MLP's layers compiled for the fully connected kernel's fast paths
    mlp.py            the fully connected kernel on input Grams (its input state and program)

Memory management (row/column tiles, buffers) belongs to the evaluation code (backends/tiling.py, the
Workspace of functional/workspace.py), not to these maps. docs/design.md says how to add a layer.
"""
from .attention import SelfAttention
from .branches import InputMap, Parallel, Residual
from .elementwise import Nonlinearity
from .flat import FlatProgram
from .graph import Aggregate
from .layer import Layer
from .linear import Conv, ConvTranspose, Dense
from .mlp import fully_connected_recursion, input_grams, input_variances, paired_kernel
from .network import Network, mlp_program
from .normalization import LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool, ToDiagonal
from .state import Context, Geometry, PairState

__all__ = ["Aggregate", "AvgPool", "Context", "Conv", "ConvTranspose", "Dense", "FlatProgram", "Flatten", "Geometry",
           "GlobalAvgPool", "Layer", "LayerNorm", "Network", "Nonlinearity", "PairState", "Parallel", "Residual",
           "SelfAttention", "ToDiagonal", "mlp_program", "InputMap", "fully_connected_recursion", "input_grams",
           "input_variances", "paired_kernel"]
