"""Translation of an ordinary torch module into the layer algebra (algebra/).

Widths are ignored (they go to infinity); every weight is N(0, weight_var / fan_in) and every bias N(0, bias_var),
the NTK parametrization. Modules without an infinite-width Gaussian limit raise an error that names them and the
nearest supported module.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from .. import algebra as L
from ..functional.activations import TORCH_MODULES, from_torch_module, get_activation
from .attention import SelfAttention
from .combinators import Elementwise, Parallel, Residual
from .graph_modules import Aggregate, GraphNetwork

SUPPORTED = ("nn.Sequential", "nn.Linear", "nn.Conv1d", "nn.Conv2d", "nn.ConvTranspose1d", "nn.ConvTranspose2d",
             "nn.AvgPool1d", "nn.AvgPool2d", "nn.AdaptiveAvgPool1d(1)", "nn.AdaptiveAvgPool2d(1)", "nn.Flatten",
             "nn.LayerNorm(elementwise_affine=False)",
             "nn.Identity", "nn.Dropout (the identity: evaluation mode)", "gpytorch_nngp.Residual",
             "gpytorch_nngp.Parallel", "gpytorch_nngp.SelfAttention", "gpytorch_nngp.Elementwise",
             "gpytorch_nngp.Aggregate", "gpytorch_nngp.GraphNetwork (outermost)",
             "nn.ReLU", "nn.LeakyReLU", "nn.GELU", "nn.Tanh", "nn.Sigmoid",
             "nn.SiLU", "nn.ELU", "nn.Softplus", "nn.Hardtanh", "nn.ReLU6", "nn.Mish", "nn.SELU", "nn.CELU",
             "nn.Softsign", "nn.Hardswish", "nn.Hardsigmoid", "nn.LogSigmoid", "nn.Tanhshrink", "nn.Softshrink",
             "nn.Hardshrink")

# Modules with no infinite-width Gaussian limit, and what to use instead.
_NEAREST = {
    (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d):
        "a max over positions is not Gaussian in the infinite-width limit; use the average pooling of the same "
        "window (nn.AvgPool1d/2d, or nn.AdaptiveAvgPool2d(1) for a global max)",
    (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.GroupNorm):
        "it couples the points of a batch (or normalizes per channel), which has no kernel limit; use "
        "nn.LayerNorm over all features with elementwise_affine=False, or leave it out",
    (nn.MultiheadAttention,):
        "its logits scale as 1 / sqrt(d) and its query and key weights are separate, so they stay random in the "
        "limit and the kernel has no closed form; use gpytorch_nngp.SelfAttention (tied keys and queries, logits over "
        "d: Hron et al. 2020)",
    (nn.RNNBase, nn.Embedding):
        "recurrent and embedding layers are not implemented; use convolutions or gpytorch_nngp.SelfAttention over the "
        "sequence axis",
}


def _activation(module: nn.Module):
    """The Activation of an activation module, or None if it is not one (the activations register their torch
    modules themselves: functional/activations.py)."""
    if isinstance(module, Elementwise):
        return module.activation
    return from_torch_module(module)


# The torch classes the translator knows; a module is translated as one of them only if it runs that class's
# own forward (a subclass that overrides forward computes something else).
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, SelfAttention)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_KNOWN = (nn.Sequential, Residual, Parallel, SelfAttention, Elementwise, Aggregate, *TORCH_MODULES, nn.Identity,
          *_DROPOUT, nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.AvgPool1d,
          nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.LayerNorm)


def _check_runs_known_forward(module: nn.Module, label: str) -> None:
    """Raises ValueError unless `module` computes what its class's known forward computes: no overridden forward
    or __call__, no forward hooks (they can change inputs and outputs)."""
    known = next((cls for cls in _KNOWN if isinstance(module, cls)), None)
    if known is None:
        return
    cls = type(module)
    if cls.forward is not known.forward or cls.__call__ is not nn.Module.__call__:
        owner = next(c for c in cls.__mro__ if "forward" in vars(c) or "__call__" in vars(c))
        raise ValueError(f"{label} overrides the forward of {known.__module__}.{known.__qualname__} (in "
                         f"{owner.__qualname__}), so it computes another function than the one from_module knows: "
                         f"build the network from unmodified torch modules (nn.Sequential, gpytorch_nngp.Residual, "
                         "gpytorch_nngp.Elementwise for an elementwise function, ...)")
    hooks = (module._forward_hooks, module._forward_pre_hooks, nn.modules.module._global_forward_hooks,
             nn.modules.module._global_forward_pre_hooks)
    if any(hooks):
        raise ValueError(f"{label} has forward hooks, which can change what it computes: remove them (handle.remove())"
                         " before building the kernel")


def _reaches_skip_input(module: nn.Module) -> List[nn.Module]:
    """The in-place activations of a residual branch that run before its first Linear/Conv: they overwrite the
    block's input, so torch's x + branch(x) adds the activated x (not x) to the branch."""
    found = []
    children = [m for m in module._modules.values() if m is not None] if isinstance(module, nn.Sequential) else [module]
    for child in children:
        if isinstance(child, _WEIGHTED):
            break
        if isinstance(child, nn.Sequential):
            inner = _reaches_skip_input(child)
            found += inner
            if any(isinstance(m, _WEIGHTED) for m in child.modules()):
                break
        elif getattr(child, "inplace", False):
            found.append(child)
    return found


def _pair(value, nd: int) -> Tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * nd


def _check_plain_conv(module, nd: int, name: str) -> None:
    """Dilation 1 and one group: what the algebra's convolutions compute."""
    if any(d != 1 for d in _pair(module.dilation, nd)):
        raise ValueError(f"{name}: dilation {module.dilation} is not implemented; use dilation=1")
    if module.groups != 1:
        raise ValueError(f"{name}: groups={module.groups} is not implemented; use groups=1")


def _conv(module, index: int, name: str) -> L.Conv:
    nd = 1 if isinstance(module, nn.Conv1d) else 2
    _check_plain_conv(module, nd, name)
    if module.padding_mode not in ("zeros", "circular"):
        raise ValueError(f"{name}: padding_mode={module.padding_mode!r} is not implemented; use 'zeros' or 'circular'")
    kernel, stride = _pair(module.kernel_size, nd), _pair(module.stride, nd)
    if module.padding == "valid":
        padding = [(0, 0)] * nd
    elif module.padding == "same":  # torch pads (k - 1) // 2 before and the rest after (stride 1 only)
        padding = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel]
    else:
        padding = [(p, p) for p in _pair(module.padding, nd)]
    layer = L.Conv(kernel, stride, padding, circular=module.padding_mode == "circular", index=index,
                   bias=module.bias is not None, in_channels=module.in_channels, out_channels=module.out_channels)
    return layer


def _conv_transpose(module, index: int, name: str) -> L.ConvTranspose:
    nd = 1 if isinstance(module, nn.ConvTranspose1d) else 2
    _check_plain_conv(module, nd, name)
    padding = list(zip(_pair(module.padding, nd), _pair(module.output_padding, nd)))
    return L.ConvTranspose(_pair(module.kernel_size, nd), _pair(module.stride, nd), padding, index=index,
                           bias=module.bias is not None, in_channels=module.in_channels,
                           out_channels=module.out_channels)


def _avg_pool(module, name: str) -> L.AvgPool:
    nd = 1 if isinstance(module, nn.AvgPool1d) else 2
    if module.ceil_mode:
        raise ValueError(f"{name}: ceil_mode=True is not implemented; use ceil_mode=False")
    if getattr(module, "divisor_override", None) is not None:
        raise ValueError(f"{name}: divisor_override is not implemented")
    padding = _pair(module.padding, nd)
    if any(padding) and not module.count_include_pad:
        raise ValueError(f"{name}: padding with count_include_pad=False is not implemented; use count_include_pad=True")
    kernel = _pair(module.kernel_size, nd)
    stride = kernel if module.stride is None else _pair(module.stride, nd)
    return L.AvgPool(kernel, stride, padding)


class _Translator:
    """Walks a module the way its forward runs: every entry of a Sequential in order, a reused instance as often as
    it is called (nn.Module.children() would list it once), the Residual branch inside its block."""

    def __init__(self, per_layer: bool, graphs=None):
        self.per_layer = per_layer
        self.graphs = graphs  # the packing of per-input graphs (inside a GraphNetwork), or None
        self.parameters = 0
        self.indices = {}  # id of a Linear/Conv module -> its variance index (a reused module keeps its index)
        self.names = {}  # id of a module -> the label of its first use
        self.layers_of = {}  # id of a Linear/Conv module -> its layers, one per use

    def index(self, module: nn.Module, label: str) -> int:
        if id(module) not in self.indices:
            self.parameters += 1
            self.indices[id(module)] = self.parameters - 1 if self.per_layer else 0
        return self.indices[id(module)]

    def weighted(self, module: nn.Module, layer: L.Layer) -> List[L.Layer]:
        """A Linear/Conv layer; the uses of a module called more than once are marked as tied to its first use."""
        uses = self.layers_of.setdefault(id(module), [])
        uses.append(layer)
        if len(uses) > 1:
            for use in uses:
                use.tied = self.names[id(module)]
        return [layer]

    def layers(self, module: nn.Module, name: str) -> List[L.Layer]:
        label = f"{name} ({type(module).__name__})" if name else type(module).__name__
        self.names.setdefault(id(module), label)
        _check_runs_known_forward(module, label)
        if isinstance(module, nn.Sequential):
            out = []
            for child_name, child in module._modules.items():  # repeats included, as Sequential.forward runs them
                if child is not None:
                    out += self.layers(child, f"{name}.{child_name}" if name else child_name)
            return out
        if isinstance(module, Residual):
            inplace = _reaches_skip_input(module.branch)
            if inplace:
                raise ValueError(f"{label}: {type(inplace[0]).__name__}(inplace=True) overwrites the block's input "
                                 "before the branch's first Linear/Conv, so torch adds the activated input, not the "
                                 "input, to the branch: use inplace=False")
            return self._origin([L.Residual(self.layers(module.branch, f"{name}.branch" if name else "branch"))], label)
        if isinstance(module, Parallel):
            branches = []
            for i, branch in enumerate(module.branches):
                inplace = _reaches_skip_input(branch) if len(module.branches) > 1 else []
                if inplace:
                    raise ValueError(f"{label}: {type(inplace[0]).__name__}(inplace=True) in branch {i} overwrites "
                                     "the input the other branches read, so torch feeds them the activated input: "
                                     "use inplace=False")
                branches.append(self.layers(branch, f"{name}.branches.{i}" if name else f"branches.{i}"))
            seen = {}
            for i, branch in enumerate(module.branches):
                weighted = {id(m): m for m in branch.modules() if isinstance(m, _WEIGHTED)}
                for m in weighted.values():
                    if id(m) in seen:
                        raise ValueError(f"{label}: branches {seen[id(m)]} and {i} use the same "
                                         f"{type(m).__name__} module, so their outputs are correlated (identical "
                                         "for the same input): give each branch its own modules")
                    seen[id(m)] = i
            return self._origin([L.Parallel(branches, module.merge)], label)
        if isinstance(module, SelfAttention):
            return self._origin([self._attention(module, label)], label)
        if isinstance(module, Aggregate):
            if module.adjacency is None and self.graphs is None:
                raise ValueError(f"{label}: Aggregate(adjacency=None) takes each input's own graph, so the network "
                                 "must be a GraphNetwork(module, GraphInputs(...)) on packed rows")
            return self._origin([L.Aggregate(module.adjacency)], label)
        if isinstance(module, GraphNetwork):
            raise ValueError(f"{label}: a GraphNetwork must be the outermost module (its packing decides the inputs)")
        activation = _activation(module)
        if activation is not None:
            return self._origin([L.Nonlinearity(activation)], label)
        if isinstance(module, (nn.Identity, *_DROPOUT)):
            return []  # dropout: the kernel is that of the network in evaluation mode, where dropout is the identity
        if isinstance(module, nn.Linear):
            dense = L.Dense(self.index(module, label), bias=module.bias is not None, in_features=module.in_features,
                            out_features=module.out_features)
            return self._origin(self.weighted(module, dense), label)
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
            layer = _conv_transpose(module, self.index(module, label), label)
            return self._origin(self.weighted(module, layer), label)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return self._origin(self.weighted(module, _conv(module, self.index(module, label), label)), label)
        if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)):
            return self._origin([_avg_pool(module, label)], label)
        if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            size = module.output_size
            if any(s != 1 for s in (size if isinstance(size, (tuple, list)) else (size,))):
                raise ValueError(f"{label}: only output_size=1 (global average pooling) is implemented, got "
                                 f"{size!r}; use nn.AvgPool2d with an explicit window for other sizes")
            return self._origin([L.GlobalAvgPool()], label)
        if isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                raise ValueError(f"{label}: only nn.Flatten(start_dim=1, end_dim=-1) (all features of a point) is "
                                 f"implemented, got start_dim={module.start_dim}, end_dim={module.end_dim}")
            return self._origin([L.Flatten()], label)
        if isinstance(module, nn.LayerNorm):
            if module.elementwise_affine:
                raise ValueError(f"{label}: LayerNorm with elementwise_affine=True has learned per-feature scales "
                                 "without an infinite-width limit; use nn.LayerNorm(..., elementwise_affine=False)")
            return self._origin([L.LayerNorm(module.eps, module.normalized_shape)], label)
        for kinds, advice in _NEAREST.items():
            if isinstance(module, kinds):
                raise ValueError(f"{label} has no infinite-width Gaussian limit: {advice}")
        raise ValueError(f"{label} is not supported; supported modules: {', '.join(SUPPORTED)}")

    def _attention(self, module: SelfAttention, label: str) -> L.SelfAttention:
        if module.scaling != "linear":
            raise ValueError(f"{label}: scaling='standard' (logits over sqrt(d), separate query and key weights) has "
                             "logits that stay random as the widths grow, so its kernel has no closed form (Hron et "
                             "al. 2020); use scaling='linear', whose tied keys and queries give deterministic logits")
        if id(module) in self.layers_of:
            raise ValueError(f"{label} is used more than once: give each attention layer its own module")
        self.layers_of[id(module)] = []
        share = module.positional_channels / (module.in_channels + module.positional_channels)
        return L.SelfAttention(
            module.mechanism, (module.query_var * module.key_var) ** 0.5, module.value_var * module.out_var,
            module.bias_var, module.positional,
            module.positional_covariance() if module.positional else None, module.positional_var, share,
            module.in_channels, module.out_channels, module.spatial_shape)

    @staticmethod
    def _origin(layers: List[L.Layer], label: str) -> List[L.Layer]:
        for layer in layers:
            layer.origin = label
        return layers


def network_from_module(module: nn.Module, input_shape: Sequence[int], per_layer: bool = False,
                        spatial_output: bool = False) -> L.Network:
    """The layer algebra of `module` for inputs of `input_shape` ((d,), (C, L) or (C, H, W), channel first).

    per_layer: one (weight_var, bias_var) pair per Linear/Conv layer, else one pair shared by all.
    spatial_output: the module's output keeps its positions (see Network).

    Raises:
        TypeError: module is not a torch.nn.Module.
        ValueError: an unsupported module (named, with the nearest supported one), a bad input_shape, or layers
            that do not fit it.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if isinstance(input_shape, int) or not isinstance(input_shape, (tuple, list, torch.Size)) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in input_shape):
        raise TypeError(f"input_shape must be a tuple of ints, (d,), (C, L) or (C, H, W), got {input_shape!r}")
    graphs = None
    if isinstance(module, GraphNetwork):
        graphs = module.graphs
        if tuple(input_shape) not in ((graphs.dim,), (graphs.channels, graphs.nodes)):
            raise ValueError(f"input_shape {tuple(input_shape)} does not match {graphs!r}: the kernel's inputs are "
                             f"its packed rows, input_shape ({graphs.dim},)")
        input_shape, module = (graphs.channels, graphs.nodes), module.module
    translator = _Translator(per_layer, graphs)
    layers = translator.layers(module, "")
    if translator.parameters == 0:
        raise ValueError(f"{type(module).__name__} has no Linear or Conv layer: its kernel has no weights to vary")
    return L.Network(layers, input_shape, translator.parameters if per_layer else 1, graphs=graphs,
                     spatial_output=spatial_output)


def fully_connected_form(network: L.Network):
    """(depth, activation) if the network is the fully connected one of NNGPKernel(depth, activation): flat input
    (or a flatten of it), Linear layers with biases and one shared activation between them, shared variances. Else
    None."""
    if network.state_shape[1:] or network.num_parameters != 1 or any(
            not isinstance(layer, L.Flatten) for layer in network.prefix):
        return None
    layers = network.layers
    if len(layers) % 2 != 1 or not all(isinstance(layer, L.Dense) and layer.bias for layer in layers[::2]):
        return None
    activations = [layer.activation for layer in layers[1::2] if isinstance(layer, L.Nonlinearity)]
    if len(activations) != len(layers) // 2 or any(a != activations[0] for a in activations):
        return None
    return len(activations), (activations[0] if activations else get_activation("relu"))
