"""from_module computes the network it is given, or refuses it: the idioms users write, checked against exact formulas
and Monte Carlo of the very module (a wrong kernel that looks plausible is the worst bug this library can have).
"""
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from gpytorch_nngp import Elementwise, NNGPKernel, NTKKernel, Residual
from gpytorch_nngp.experiments.arguments import cnn_module, network_kernel

WV, BV = 1.6, 0.2


def kernel(cls, module, shape, **kwargs):
    k = cls.from_module(module, shape, **kwargs).double()
    k.weight_var, k.bias_var = WV, BV  # set in float64 (values given before .double() keep float32 rounding)
    return k


def fully(cls, depth, activation="relu"):
    k = cls(depth, activation).double()
    k.weight_var, k.bias_var = WV, BV
    return k


def matrix(k, x, y=None):
    with torch.no_grad():
        return k(x, y).to_dense()


def points(n=6, d=3, seed=0, scale=1.0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    x[-1] = -0.5 * x[0]  # antiparallel to the first point
    return x


# -- 1. reused module instances ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
def test_a_reused_activation_instance_acts_at_every_use(cls):
    act = nn.ReLU()
    net = nn.Sequential(nn.Linear(3, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 1))
    k = kernel(cls, net, (3,))
    assert k.depth == 2
    x = points()
    torch.testing.assert_close(matrix(k, x), matrix(fully(cls, 2), x))


def test_a_reused_activation_in_a_cnn_equals_fresh_ones():
    act = nn.ReLU()
    shared = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), act, nn.Conv2d(4, 4, 3, padding=1), act,
                           nn.Conv2d(4, 4, 3, padding=1), act, nn.Flatten(), nn.Linear(64, 1))
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 1))
    x = points(5, 16)
    assert kernel(NNGPKernel, shared, (1, 4, 4)).network.describe().count("ReLU") == 3
    torch.testing.assert_close(matrix(kernel(NNGPKernel, shared, (1, 4, 4)), x),
                               matrix(kernel(NNGPKernel, fresh, (1, 4, 4)), x))


def test_the_classify_command_builds_the_cnn_it_describes():
    """--architecture cnn --depth 3 is three conv layers, each with its own ReLU (the command once shared one
    activation instance and got one ReLU)."""
    args = type("Args", (), {"kernel": "nngp", "architecture": "cnn", "dataset": "digits", "depth": 3,
                             "readout": "flatten"})()
    k = network_kernel(args, WV, BV)
    k.weight_var, k.bias_var = WV, BV  # in float64, as kernel() sets them
    assert k.network.describe().count("ReLU") == 3
    plain = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 10))
    x = points(4, 64, seed=1).abs()
    torch.testing.assert_close(matrix(k, x), matrix(kernel(NNGPKernel, plain, (1, 8, 8)), x))
    module = cnn_module(2, "gap", 8, activation="erf")
    assert module[1] is not module[3]


def _tied_mlp(width, tied=True):
    lin = nn.Linear(width, width)
    middle = [lin, nn.ReLU(), lin] if tied else [nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)]
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), *middle, nn.ReLU(), nn.Linear(width, 1)).double()


def _draw(module, gen):
    """Prior weights N(0, WV / fan_in), biases N(0, BV); a reused module is one set of parameters (tied)."""
    variances = {}
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            variances[f"{name}.weight"], variances[f"{name}.bias"] = WV / sub.in_features, BV
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * math.sqrt(variances[name]))
    return variances


def _empirical_ntk(module, variances, x):
    params = {k: v.detach() for k, v in module.named_parameters()}
    jac = jacrev(lambda p: functional_call(module, p, (x,)).squeeze(-1))(params)
    return sum(variances[k] * j.reshape(len(x), -1) @ j.reshape(len(x), -1).T for k, j in jac.items())


def test_tied_hidden_weights_have_the_kernels_of_independent_weights():
    """A hidden Linear used twice: Monte Carlo of the tied module converges to the independent-weights NNGP and NTK
    (Yang 2019, 2020), which is what from_module returns for it."""
    width, x = 512, points(5, 4, seed=3)
    module = _tied_mlp(width)
    assert isinstance(kernel(NTKKernel, module, (4,)), NTKKernel)
    gen = torch.Generator().manual_seed(1)
    nngp, ntk = [], []
    for _ in range(6):
        variances = _draw(module, gen)
        with torch.no_grad():
            h = module[:-1](x)
        nngp.append(WV * h @ h.T / width + BV)
        ntk.append(_empirical_ntk(module, variances, x))
    for cls, samples in ((NNGPKernel, nngp), (NTKKernel, ntk)):
        samples, ref = torch.stack(samples), matrix(kernel(cls, module, (4,)), x)
        err = (torch.linalg.norm(samples.mean(0) - ref) / torch.linalg.norm(ref)).item()
        stderr = (torch.linalg.norm(samples.std(0)) / math.sqrt(len(samples)) / torch.linalg.norm(ref)).item()
        assert err < max(4 * stderr, 0.02), f"{cls.__name__}: error {err:.4f}, standard error {stderr:.4f}"


def test_the_ntk_cross_terms_of_tied_weights_vanish_with_width():
    """Tied NTK minus the NTK of the same weights untied (same draw, gradients kept per use): the cross terms
    between the two uses, which the limit drops. They shrink like 1/sqrt(width)."""
    x = points(5, 4, seed=3)
    ref = torch.linalg.norm(matrix(kernel(NTKKernel, _tied_mlp(8), (4,)), x))
    sizes = {}
    for width in (64, 1024):
        tied, untied = _tied_mlp(width), _tied_mlp(width, tied=False)
        gen = torch.Generator().manual_seed(width)
        cross = []
        for _ in range(3):
            variances = _draw(tied, gen)
            with torch.no_grad():
                for name, p in untied.named_parameters():
                    p.copy_(dict(tied.named_parameters())[name.replace("4.", "2.")])
            untied_variances = {name: variances[name.replace("4.", "2.")] for name, _ in untied.named_parameters()}
            with torch.no_grad():
                torch.testing.assert_close(tied(x), untied(x))
            cross.append(torch.linalg.norm(_empirical_ntk(tied, variances, x)
                                           - _empirical_ntk(untied, untied_variances, x)) / ref)
        sizes[width] = sum(cross).item() / len(cross)
    assert sizes[1024] < 0.03 and sizes[1024] < sizes[64] / 2, sizes


@pytest.mark.parametrize("make", [
    lambda lin: nn.Sequential(lin, nn.ReLU(), lin),  # on the input and as the readout
    lambda lin: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), lin, nn.ReLU(), lin),  # as the readout
])
def test_tied_weights_on_the_input_or_readout_are_refused(make):
    with pytest.raises(ValueError, match=r"used more than once \(tied weights\).*cannot send to infinity"):
        NNGPKernel.from_module(make(nn.Linear(4, 4)), (4,))


def test_a_reused_module_keeps_one_variance_pair_per_module():
    lin = nn.Linear(8, 8)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), lin, nn.ReLU(), lin, nn.ReLU(), nn.Linear(8, 1))
    k = NNGPKernel.from_module(net, (3,), per_layer=True)
    assert k.network.num_parameters == 3


# -- 2. activations on values that are not Gaussian ---------------------------------------------------------------
@pytest.mark.parametrize("first, fn", [(nn.ReLU(), torch.relu), (Elementwise("erf"), torch.erf),
                                       (nn.Tanh(), torch.tanh)])
def test_an_activation_on_the_raw_input_is_computed_exactly(first, fn):
    x, y = points(), points(4, seed=1)
    k = kernel(NNGPKernel, nn.Sequential(first, nn.Linear(3, 1)), (3,))
    torch.testing.assert_close(matrix(k, x, y), WV * fn(x) @ fn(y).T / 3 + BV)
    torch.testing.assert_close(k(x, diag=True).detach(), (WV * fn(x).pow(2).sum(-1) / 3 + BV))
    ntk = kernel(NTKKernel, nn.Sequential(first, nn.Linear(3, 1)), (3,))
    torch.testing.assert_close(matrix(ntk, x, y), WV * fn(x) @ fn(y).T / 3 + BV)  # one layer: NTK = NNGP


def test_layer_norm_on_the_raw_input_is_computed_exactly():
    x = points(5, 6) + 3.0  # a mean that LayerNorm removes
    k = kernel(NNGPKernel, nn.Sequential(nn.LayerNorm(6, elementwise_affine=False), nn.Linear(6, 1)), (6,))
    z = nn.functional.layer_norm(x, (6,))
    torch.testing.assert_close(matrix(k, x), WV * z @ z.T / 6 + BV)


def test_pooling_an_activated_input_is_exact_on_images():
    x = points(4, 2 * 16, seed=2)
    module = nn.Sequential(nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(2, 3, 2), nn.Flatten(), nn.Linear(3, 1))
    k = kernel(NNGPKernel, module, (2, 4, 4))
    z = nn.functional.avg_pool2d(torch.relu(x.reshape(4, 2, 4, 4)), 2).reshape(4, -1)  # (4, 2 * 2 * 2)
    torch.testing.assert_close(matrix(k, x), WV * (WV * z @ z.T / 8 + BV) + BV)  # a 2x2 conv on 2x2: one position


@pytest.mark.parametrize("cls", [NNGPKernel, NTKKernel])
def test_an_activation_of_an_activation_is_their_composition(cls):
    x = points()
    relu_relu = kernel(cls, nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.ReLU(), nn.Linear(5, 1)), (3,))
    torch.testing.assert_close(matrix(relu_relu, x), matrix(fully(cls, 1), x))
    leaky = kernel(cls, nn.Sequential(nn.Linear(3, 5), nn.LeakyReLU(0.2), nn.LeakyReLU(0.5), nn.Linear(5, 1)), (3,))
    from gpytorch_nngp.activations import LeakyReLU
    torch.testing.assert_close(matrix(leaky, x), matrix(fully(cls, 1, LeakyReLU(0.1)), x))


def test_an_activation_after_tanh_matches_monte_carlo():
    """relu(tanh(z)) of a Gaussian z, by Monte Carlo of the wide network itself."""
    width, x = 4096, points(5, 3, seed=4)
    module = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.ReLU(), nn.Linear(width, 1)).double()
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(8):
        _draw(module, gen)
        with torch.no_grad():
            h = module[:-1](x)
        samples.append(WV * h @ h.T / width + BV)
    samples, ref = torch.stack(samples), matrix(kernel(NNGPKernel, module, (3,)), x)
    err = (torch.linalg.norm(samples.mean(0) - ref) / torch.linalg.norm(ref)).item()
    stderr = (torch.linalg.norm(samples.std(0)) / math.sqrt(len(samples)) / torch.linalg.norm(ref)).item()
    assert err < max(4 * stderr, 0.01), f"error {err:.4f}, standard error {stderr:.4f}"
    wrong = matrix(kernel(NNGPKernel, nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1)), (3,)), x)
    assert (torch.linalg.norm(wrong - ref) / torch.linalg.norm(ref)).item() > 10 * max(stderr, 0.01)


def test_an_activation_after_a_flatten_acts_per_position():
    x = points(4, 2 * 9, seed=5)
    after = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten(), nn.ReLU(), nn.Linear(12, 1))
    before = nn.Sequential(nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 1))
    for cls in (NNGPKernel, NTKKernel):
        torch.testing.assert_close(matrix(kernel(cls, after, (2, 3, 3)), x), matrix(kernel(cls, before, (2, 3, 3)), x))


def test_a_residual_block_on_the_raw_input_is_exact_before_a_linear_layer():
    x, y = points(), points(4, seed=1)
    k = kernel(NNGPKernel, nn.Sequential(Residual(nn.Linear(3, 3)), nn.Linear(3, 1)), (3,))
    gram = x @ y.T / 3
    torch.testing.assert_close(matrix(k, x, y), WV * (gram + WV * gram + BV) + BV)


@pytest.mark.parametrize("module, shape, match", [
    # an activation after pooled activations: an average of non-Gaussian values
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.ReLU(), nn.Flatten(),
                   nn.Linear(8, 1)), (1, 4, 4),
     r"3 \(ReLU\): .*averages of activations over a window.*neither Gaussian"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.ReLU(),
                   nn.Linear(2, 1)), (1, 4, 4), "averages of activations over all positions"),
    # a residual block on the raw input, then an activation: input plus a Gaussian branch
    (nn.Sequential(Residual(nn.Linear(3, 3)), nn.ReLU(), nn.Linear(3, 1)), (3,),
     "adds the input and a weighted branch: a Gaussian with a nonzero mean.*start the network with a Linear/Conv"),
    # ... or after a Linear layer after it: the sum has the data's width, so its randomness never averages out
    (nn.Sequential(Residual(nn.Linear(3, 3)), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), (3,),
     r"kernel is random in the infinite-width limit.*data's width \(3 channels\)"),
    # a post-activation residual block (ResNet v1): the skip path carries activations
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Residual(nn.Linear(4, 4)), nn.ReLU(), nn.Linear(4, 1)), (3,),
     "sum of non-Gaussian values and a Gaussian residual branch.*pre-activation blocks"),
])
def test_activations_on_values_that_are_not_gaussian_are_refused(module, shape, match):
    for cls in (NNGPKernel, NTKKernel):
        with pytest.raises(ValueError, match=match):
            cls.from_module(module, shape)


# -- 3. modules whose forward is not the one from_module knows ----------------------------------------------------
class ResidualSequential(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 10 * super().forward(x)


class DoubleReLU(nn.ReLU):
    def forward(self, x):
        return 2 * torch.relu(x)


class InitializedLinear(nn.Linear):  # overrides nothing that runs: translated as nn.Linear
    def __init__(self, *args):
        super().__init__(*args)
        nn.init.zeros_(self.bias)


@pytest.mark.parametrize("module, name", [
    (nn.Sequential(nn.Linear(3, 3), ResidualSequential(nn.ReLU(), nn.Linear(3, 3)), nn.Linear(3, 1)),
     "ResidualSequential"),
    (nn.Sequential(ScaledLinear(3, 4), nn.ReLU(), nn.Linear(4, 1)), "ScaledLinear"),
    (nn.Sequential(nn.Linear(3, 4), DoubleReLU(), nn.Linear(4, 1)), "DoubleReLU"),
])
def test_an_overridden_forward_is_refused_by_name(module, name):
    with pytest.raises(ValueError, match=rf"\({name}\) overrides the forward of torch\.nn\..*"):
        NNGPKernel.from_module(module, (3,))


def test_forward_hooks_and_in_place_skip_activations_are_refused():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    handle = net[1].register_forward_hook(lambda module, inputs, output: 2 * output)
    with pytest.raises(ValueError, match=r"1 \(ReLU\) has forward hooks"):
        NNGPKernel.from_module(net, (3,))
    handle.remove()
    NNGPKernel.from_module(net, (3,))
    block = Residual(nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 4)))
    with pytest.raises(ValueError, match=r"inplace=True\) overwrites the block's input"):
        NNGPKernel.from_module(nn.Sequential(nn.Linear(3, 4), block, nn.Linear(4, 1)), (3,))
    x = torch.randn(2, 4)
    assert not torch.allclose(block(x.clone()), x + block.branch(x.clone()))  # what torch really computes


def test_a_subclass_that_keeps_forward_is_translated():
    x = points()
    k = kernel(NNGPKernel, nn.Sequential(InitializedLinear(3, 4), nn.ReLU(), nn.Linear(4, 1)), (3,))
    torch.testing.assert_close(matrix(k, x), matrix(fully(NNGPKernel, 1), x))


# -- 4. shapes that contradict the module --------------------------------------------------------------------------
@pytest.mark.parametrize("module, shape, match", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 1)), (8, 8, 1),
     r"0 \(Conv2d\): a convolution with in_channels=1 gets an input of shape \(8, 8, 1\).*channel last"),
    (nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1)), (3,),
     r"0 \(Linear\): Linear with in_features=5 gets 3 features"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 1)), (1, 8, 8), "in_channels=3"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(999, 1)), (1, 9, 9),
     r"3 \(Linear\): Linear with in_features=999 gets 32 features"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.LayerNorm([5, 6, 6], elementwise_affine=False), nn.Flatten(),
                   nn.Linear(144, 1)), (1, 8, 8), r"LayerNorm\(5, 6, 6\) gets an input of shape \(4, 6, 6\)"),
    (nn.Sequential(nn.Linear(3, 4), Residual(nn.Linear(4, 5)), nn.Linear(5, 1)), (3,),
     r"keep the shape of its input: shape \(4,\) in, shape \(5,\) out"),
    (nn.Sequential(nn.Conv2d(1, 2, 8), nn.Linear(2, 1)), (1, 8, 8), r"Linear\): a dense layer needs a flat input"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Linear(1, 1)), (1, 8, 8),
     r"2 \(Linear\): a dense layer needs a flat input, got shape \(2, 1, 1\) after global average pooling"),
])
def test_shapes_that_contradict_the_module_are_named(module, shape, match):
    with pytest.raises(ValueError, match=match):
        NNGPKernel.from_module(module, shape)


# -- 5. callables that are not elementwise -------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [nn.functional.softmax, lambda x: x.cumsum(-1), lambda x: x - x.mean(),
                                lambda x: x / x.norm(), lambda x: x.flip(0)])
def test_callables_that_are_not_elementwise_are_refused(fn):
    with pytest.raises(ValueError, match="not elementwise|must be elementwise"):
        NNGPKernel(2, fn)
    with pytest.raises(ValueError, match="not elementwise|must be elementwise"):
        Elementwise(fn)


def test_elementwise_callables_are_accepted():
    for fn in (torch.tanh, nn.functional.mish, nn.Hardtanh(), lambda x: x * torch.sigmoid(1.7 * x)):
        NNGPKernel(1, fn)
    with pytest.raises(TypeError, match="could not be evaluated"):
        NNGPKernel(1, lambda x: x.item())
