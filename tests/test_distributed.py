"""backend="distributed": two gloo processes on this CPU against one process, and the errors of misuse.

Each test starts two ranks of tests/distributed_worker.py (a file store in tmp_path, no network) and gives them a
deadline: a hang fails the test instead of stalling the suite.
"""
import os
import subprocess
import sys

import gpytorch
import pytest
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel
from gpytorch_nngp.backends import DeviceSharding, NetworkKernelOperator, ProcessGroupSharding

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import distributed_worker as worker  # noqa: E402

# Relative to the largest entry, against the unsharded operator. Splitting the rows changes how BLAS rounds the
# products, and Lanczos and CG amplify rounding: the MLL and its gradients agree to about 1e-8 (measured 3e-12 and
# 1.2e-8 for the erf NTK). The rest ends in CG (tolerance 1e-5, by the mean residual); the variance
# k** - k*^T K^-1 k* subtracts, so it keeps fewer digits.
TOLERANCE = {"mll": 1e-7, "grads": 1e-7, "solve": 1e-7, "input_grads": 1e-7, "mean": 1e-7, "variance": 1e-5}


def run_ranks(scenario, tmp_path, world=2, deadline=120):
    """Start `world` ranks of the worker and return their outputs (a list of dicts, by rank)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    paths = [tmp_path / f"rank{r}.pt" for r in range(world)]
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "distributed_worker.py"), scenario, str(r),
                               str(world), str(tmp_path / "store"), str(paths[r])], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=deadline)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"the {scenario} ranks did not finish within {deadline} s (a hang)")
    for r, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {r} failed:\n{log[-3000:]}"
    return [torch.load(p) for p in paths]


def test_two_processes_equal_one(tmp_path):
    """Two gloo ranks (101 rows split 50 / 51) against one process: the marginal likelihood, its gradients, a CG
    solve, input gradients and the predictive mean and variance (float64, same probes). Against one process with
    the same row split the agreement is 1e-8 (the same arithmetic: measured bitwise); against the unsharded
    operator it is TOLERANCE. Both ranks get bitwise the same results."""
    ranks = run_ranks("agree", tmp_path)
    for name in worker.KERNELS:
        same_split = worker.results(name, DeviceSharding(["cpu", "cpu"]))
        single = worker.results(name, "lazy")
        for key, value in single.items():
            for rank in ranks:
                assert torch.equal(rank[name][key], ranks[0][name][key]), (name, key)
            got = ranks[0][name][key]
            scale = value.abs().max()
            assert (got - same_split[key]).abs().max() <= 1e-8 * scale, (name, key, got, same_split[key])
            assert (got - value).abs().max() <= TOLERANCE[key] * scale, (name, key, got, value)


def test_misuse_raises_clear_errors_instead_of_hanging(tmp_path):
    """Different inputs on the ranks, different seeds (so different random probes), and a rank that stops: each
    gives an error that says what happened, on every rank still running, within the timeout."""
    ranks = run_ranks("failures", tmp_path)
    for out in ranks:
        assert "ranks passed different x1, x2" in out["data"]
        assert "different right-hand side" in out["seed"] and "torch.manual_seed" in out["seed"]
    assert "did not complete" in ranks[0]["stopped"] and "Another rank failed" in ranks[0]["stopped"]
    assert 4.5 < ranks[0]["stopped_after_s"] < 20  # the 5 s timeout (rank 1 stays alive for 8 s), not a hang
    assert "stopped" not in ranks[1]


def test_device_sharding_equals_one_device():
    """DeviceSharding splits the rows inside one process (three shares of 101 rows, all on the CPU here): the same
    marginal likelihood, gradients, solve and predictions as the unsharded operator."""
    single = worker.results("nngp-relu", "lazy")
    sharded = worker.results("nngp-relu", DeviceSharding(["cpu", "cpu", "cpu"]))
    for key, value in single.items():
        assert (sharded[key] - value).abs().max() <= TOLERANCE[key] * value.abs().max(), key


def test_distributed_backend_outside_a_process_group_and_bad_arguments():
    x = torch.randn(10, 3)
    with pytest.raises(RuntimeError, match="needs an initialized torch.distributed process group"):
        NNGPKernel(2, backend="distributed")(x).evaluate_kernel()
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        ProcessGroupSharding(timeout=0)
    with pytest.raises(ValueError, match="devices must be a non-empty list"):
        DeviceSharding("cuda:0")
    with pytest.raises(ValueError, match="or a RowSharding"):
        NTKKernel(2, backend="mpi")
    op = NNGPKernel(2, backend=DeviceSharding(["cpu", "cpu"]))(x).evaluate_kernel()
    assert isinstance(op, NetworkKernelOperator) and op.sharding is not None
    with gpytorch.settings.max_cholesky_size(0):
        assert torch.allclose(op.to_dense(), NNGPKernel(2)(x).to_dense(), rtol=1e-6, atol=1e-7)


def test_ard_with_device_sharding_equals_one_device():
    """The length scales scale the inputs before the rows are shared out: the same products and gradients."""
    x = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rhs = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = []
    for backend in ("lazy", DeviceSharding(["cpu", "cpu"])):
        k = NNGPKernel(2, backend=backend, ard_num_dims=3).double()
        k.lengthscale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
        loss = (k(x).evaluate_kernel() @ rhs).square().sum()
        out.append((loss.detach(), *torch.autograd.grad(loss, [k.raw_lengthscale])))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
