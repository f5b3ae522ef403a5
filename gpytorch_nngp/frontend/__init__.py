"""The torch front end: the torch modules this library defines (real nn.Modules with an infinite-width limit that
plain torch lacks) and the translation of a torch module into the layer algebra (`from_module`).

    combinators.py    Residual, Parallel, Elementwise
    attention.py      SelfAttention, positional_covariance
    graph_modules.py  Aggregate, GraphNetwork
    translate.py      network_from_module: a torch module -> algebra.Network; the supported modules
    factory.py        kernel_from_module: the fastest kernel class that computes a module's kernel

It sits above kernels/ (the GPyTorch kernels): a kernel's `from_module` classmethod calls kernel_from_module.
"""
from .attention import ATTENTION_MECHANISMS, POSITIONAL, SelfAttention, positional_covariance
from .combinators import Elementwise, Parallel, Residual
from .factory import kernel_from_module
from .graph_modules import Aggregate, GraphNetwork
from .translate import fully_connected_form, network_from_module

__all__ = ["Aggregate", "Elementwise", "GraphNetwork", "Parallel", "Residual", "SelfAttention", "ATTENTION_MECHANISMS",
           "POSITIONAL", "positional_covariance", "kernel_from_module", "network_from_module", "fully_connected_form"]
