"""The library's linear operators through linear_operator's own contract suites (LinearOperatorTestCase and
RectangularLinearOperatorTestCase), as linear_operator tests its own operators: products, solves, log
determinants, indexing, batching, transposes, pickling and gradients through the operator's representation."""
import unittest

import pytest
import torch
from helpers.jacobians import autograd_jacobian
from keops_stand_in import TorchLazyTensor
from linear_operator.test.linear_operator_test_case import LinearOperatorTestCase, RectangularLinearOperatorTestCase
from torch import nn

from gpytorch_nngp import Residual
from gpytorch_nngp.activations import Erf, ReLU
from gpytorch_nngp.algebra.mlp import fully_connected_recursion, input_grams
from gpytorch_nngp.backends import DeviceSharding, FullyConnectedEvaluator, keops, memory_budget
from gpytorch_nngp.backends.keops import KeOpsNetworkKernelOperator
from gpytorch_nngp.backends.lazy import NetworkKernelOperator
from gpytorch_nngp.backends.tiling import NetworkEvaluator, architecture_matrix
from gpytorch_nngp.dnn2gp import FiniteNTKOperator, LinearizedNetwork
from gpytorch_nngp.frontend.translate import network_from_module


def dense_network_kernel(op):
    """The operator's kernel through the dense recursion on whole-matrix Grams (the reference for the suites).

    A symmetric operator reads the variances of its diagonal entries from x2 (so that |c| = 1 exactly there); the
    reference builds its layer-0 state the same way, so that gradients split between x1 and x2 alike.
    """
    gram, var1, var2 = input_grams(op.x1, op.x2, diagonal_offset=0 if op.x1_eq_x2 else None)
    e = op.evaluator
    k, theta = fully_connected_recursion(gram, var1, var2, e.depth, e.activation, op.weight_var, op.bias_var,
                                         ntk=e.ntk)
    return theta if e.ntk else k


class _NetworkOperatorCase:
    """Small operators (n = 5, d = 6) evaluated in row blocks of a few rows, so the block loops are exercised."""

    depth, activation, ntk, batch, x1_eq_x2, cache_bytes = 2, ReLU(), False, (), False, 0
    seed = 0

    def points(self, n, offset=0):
        g = torch.Generator().manual_seed(self.seed + offset)
        return torch.randn(*self.batch, n, 6, generator=g)

    def operator(self, x1, x2):
        shape = (*self.batch, 1, 1)
        return NetworkKernelOperator(x1, torch.full(shape, 1.7), torch.full(shape, 0.4),
                                     None if self.x1_eq_x2 else x2,
                                     evaluator=FullyConnectedEvaluator(self.depth, self.activation, self.ntk),
                                     cache_bytes=self.cache_bytes)

    def setUp(self):
        super().setUp()  # linear_operator's BaseTestCase seeds torch from `seed`
        self._budget = memory_budget(block_bytes=64 * 6 * 4).__enter__()

    def tearDown(self):
        self._budget.__exit__(None, None, None)
        super().tearDown()

    def evaluate_linear_op(self, op):
        return dense_network_kernel(op)


class _Square(_NetworkOperatorCase):
    def create_linear_op(self):
        x = self.points(5)
        return self.operator(x, x)


class TestNNGPReLUOperator(_Square, LinearOperatorTestCase, unittest.TestCase):
    """Products through recomputed row blocks."""


class TestNNGPReLUOperatorSymmetricCached(_Square, LinearOperatorTestCase, unittest.TestCase):
    """x1 and x2 the same points (exact diagonal), products through the cached no-grad matrix."""

    x1_eq_x2, cache_bytes = True, 2 ** 20


class TestNTKErfOperator(_Square, LinearOperatorTestCase, unittest.TestCase):
    activation, ntk, depth = Erf(), True, 3


class TestBatchedNTKReLUOperator(_Square, LinearOperatorTestCase, unittest.TestCase):
    ntk, batch, x1_eq_x2 = True, (2,), True


class TestRectangularNNGPOperator(_NetworkOperatorCase, RectangularLinearOperatorTestCase, unittest.TestCase):
    def create_linear_op(self):
        return self.operator(self.points(5), self.points(4, offset=1))


class _ArchitectureOperatorCase(_NetworkOperatorCase):
    """The same operator over the layer algebra (NetworkEvaluator, tiles) for a small 1-d CNN with pooling and a
    residual block; the reference is the dense tiled evaluation (backends/tiling.py, architecture_matrix)."""

    SHAPE = (2, 4)

    def points(self, n, offset=0):
        g = torch.Generator().manual_seed(self.seed + offset)
        return torch.randn(*self.batch, n, 8, generator=g)

    def operator(self, x1, x2):
        module = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), Residual(nn.Sequential(nn.ReLU(), nn.Conv1d(3, 3, 1))),
                               nn.AvgPool1d(2), nn.Flatten(), nn.Linear(6, 1))
        network = network_from_module(module, self.SHAPE, per_layer=True)
        shape = (*self.batch, network.num_parameters)
        variances = torch.linspace(1.2, 1.8, network.num_parameters).expand(shape).clone()
        return NetworkKernelOperator(x1, variances, torch.full(shape, 0.3),
                                     None if self.x1_eq_x2 else x2,
                                     evaluator=NetworkEvaluator(network, self.ntk), cache_bytes=self.cache_bytes)

    def evaluate_linear_op(self, op):
        e = op.evaluator
        return architecture_matrix(e.network, op.x1, op.x2, op.weight_var, op.bias_var, e.ntk, x1_eq_x2=op.x1_eq_x2)


class TestArchitectureNTKOperator(_ArchitectureOperatorCase, _Square, LinearOperatorTestCase, unittest.TestCase):
    ntk, x1_eq_x2 = True, True


class TestArchitectureRectangularNNGPOperator(_ArchitectureOperatorCase, RectangularLinearOperatorTestCase,
                                              unittest.TestCase):
    def create_linear_op(self):
        return self.operator(self.points(5), self.points(4, offset=1))


class _ShardedCase(_NetworkOperatorCase):
    """The operator sharded over three devices in one process (all the CPU here): triangle shares of 5 rows
    (0-1, 1-2, 2-5; the first is empty), or even shares of a rectangle's rows."""

    def operator(self, x1, x2):
        op = super().operator(x1, x2)
        return op._like(op.x1, None if op.x1_eq_x2 else op.x2, sharding=DeviceSharding(["cpu", "cpu", "cpu"]))


class TestShardedNTKReLUOperator(_ShardedCase, _Square, LinearOperatorTestCase, unittest.TestCase):
    ntk, batch, x1_eq_x2 = True, (2,), True


class TestShardedNNGPErfOperatorCached(_ShardedCase, _Square, LinearOperatorTestCase, unittest.TestCase):
    activation, x1_eq_x2, cache_bytes = Erf(), True, 2 ** 20


class TestShardedRectangularOperator(_ShardedCase, RectangularLinearOperatorTestCase, unittest.TestCase):
    def create_linear_op(self):
        return self.operator(self.points(5), self.points(4, offset=1))


class _KeOpsOperatorCase(_NetworkOperatorCase):
    """KeOpsNetworkKernelOperator: products and their gradients through the KeOps formula.

    In float64: slices of the symmetric operator (test_getitem*) pair some points with themselves through a
    cross-Gram, where float32 rounding leaves c = 1 - O(1e-7) and sqrt(1 - c^2) turns that into a 1e-4 relative
    difference from the exact diagonal of the reference -- rounding of the inputs, not an error of the formulas.
    """

    ntk, depth, x1_eq_x2 = True, 2, True

    def setUp(self):
        super().setUp()
        self._default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def tearDown(self):
        torch.set_default_dtype(self._default_dtype)
        super().tearDown()

    def operator(self, x1, x2):
        return KeOpsNetworkKernelOperator(x1, torch.tensor([[1.7]]), torch.tensor([[0.4]]),
                                          None if self.x1_eq_x2 else x2,
                                          evaluator=FullyConnectedEvaluator(self.depth, self.activation, self.ntk))


class TestKeOpsOperatorFormulasOnTorch(_Square, _KeOpsOperatorCase, LinearOperatorTestCase, unittest.TestCase):
    """The formula evaluated by tests/keops_stand_in.py instead of compiled KeOps (same builder, milliseconds)."""

    def setUp(self):
        super().setUp()
        self._lazy_tensor, keops.LazyTensor = keops.LazyTensor, TorchLazyTensor

    def tearDown(self):
        keops.LazyTensor = self._lazy_tensor
        super().tearDown()


@pytest.mark.slow
@pytest.mark.skipif(not keops.KEOPS_AVAILABLE, reason="pykeops not importable")
class TestKeOpsOperatorCompiled(_Square, _KeOpsOperatorCase, LinearOperatorTestCase, unittest.TestCase):
    """The same suite through compiled KeOps formulas: dozens of builds (each dtype, each gradient) on a cold cache,
    more than an hour on 2 cores; a GPU machine's cache makes it minutes."""


class TestFiniteNTKOperator(LinearOperatorTestCase, unittest.TestCase):
    """J(x1) J(x2)^T through Jacobian-vector products, against Jacobians from plain autograd. Float64 throughout:
    the operator computes in the network's dtype (a float32 operator needs a float32 network)."""

    seed = 0
    should_test_sample = True

    def setUp(self):
        super().setUp()
        self._default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        torch.manual_seed(1)
        # P = 321 parameters > n C = 5: J J^T is positive definite (eigenvalues 1.9 to 26), as the solves and the
        # stochastic log determinants need; a width-8 network on 3-D inputs had condition number 1,400.
        self.model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()
        self.network = LinearizedNetwork(self.model)

    def tearDown(self):
        torch.set_default_dtype(self._default_dtype)
        super().tearDown()

    def create_linear_op(self):
        x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
        return FiniteNTKOperator(x, x, network=self.network)

    def evaluate_linear_op(self, op):
        with torch.enable_grad():  # some suites evaluate under no_grad; the Jacobians need autograd
            j1 = autograd_jacobian(self.model, op.x1, create_graph=True).flatten(0, 1)
            j2 = autograd_jacobian(self.model, op.x2, create_graph=True).flatten(0, 1)
        return (j1 @ j2.mT).expand(op.shape)

    def test_float(self):
        self.skipTest("the operator computes in its network's dtype (float64 here); a float32 operator needs a "
                      "float32 network")

    def test_half(self):
        self.skipTest("the operator computes in its network's dtype (float64 here)")
