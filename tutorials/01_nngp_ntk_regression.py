"""Tutorial 1: NNGP and NTK Gaussian processes in GPyTorch.
========================================================

Run it with::

    python tutorials/01_nngp_ntk_regression.py [--quick] [--out tutorials/figures]

1. 1-D regression: ExactGP models with ScaleKernel(NNGPKernel) and ScaleKernel(NTKKernel); weight_var, bias_var,
   the output scale and the noise are learned by maximizing the marginal likelihood. Figure: posterior mean and
   a 2-standard-deviation band for each kernel.
2. Samples from the NNGP prior of ReLU networks at several depths: deep kernels flatten (correlations of all
   input pairs approach 1, the ordered phase of Schoenholz et al. 2017), so deep samples become nearly constant.

--quick runs a reduced size (used by the test suite).
"""
import argparse
import os

import gpytorch
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from gpytorch_nngp import NNGPKernel, NTKKernel  # noqa: E402


class NetworkGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, kernel):
        super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(kernel)

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def with_bias_feature(x):
    """Inputs (n, 1) -> (n, 2) with a constant feature, so the kernel is not a function of the angle alone."""
    return torch.cat([x, torch.ones_like(x)], dim=-1)


def fit(model, x, y, iters):
    model.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(iters):
        opt.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def regression(args):
    torch.manual_seed(0)
    n = 40 if args.quick else 120
    x = torch.rand(n, 1, dtype=torch.float64) * 6 - 3
    y = torch.sin(2 * x).squeeze(-1) + 0.3 * x.squeeze(-1) + 0.1 * torch.randn(n, dtype=torch.float64)
    x_test = torch.linspace(-4.5, 4.5, 200, dtype=torch.float64).unsqueeze(-1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    report = {}
    for ax, (name, cls) in zip(axes, (("NNGP", NNGPKernel), ("NTK", NTKKernel))):
        model = NetworkGP(with_bias_feature(x), y, cls(depth=3, activation="relu")).double()
        losses = fit(model, with_bias_feature(x), y, 30 if args.quick else 150)
        model.eval()
        with torch.no_grad():
            pred = model.likelihood(model(with_bias_feature(x_test)))
        lower, upper = pred.confidence_region()
        k = model.covar_module.base_kernel
        report[name] = dict(loss_first=losses[0], loss_last=losses[-1], weight_var=k.weight_var.item(),
                            bias_var=k.bias_var.item())
        ax.fill_between(x_test.squeeze(), lower, upper, alpha=0.3, label="±2 std")
        ax.plot(x_test.squeeze(), pred.mean, label="posterior mean")
        ax.scatter(x.squeeze(), y, s=10, c="k", label="data")
        ax.set_title(f"{name} GP, depth 3 ReLU\nweight_var={k.weight_var.item():.2f}, bias_var={k.bias_var.item():.3f}")
        ax.set_xlabel("x")
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    path = os.path.join(args.out, "regression_posterior.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, report


def prior_samples(args):
    torch.manual_seed(1)
    x = torch.linspace(-3, 3, 150 if args.quick else 400, dtype=torch.float64).unsqueeze(-1)
    depths = [1, 4, 16, 64]
    fig, axes = plt.subplots(1, len(depths), figsize=(14, 3.2), sharey=True)
    for ax, depth in zip(axes, depths):
        kernel = NNGPKernel(depth, "relu", weight_var=2.0, bias_var=0.1).double()
        with torch.no_grad():
            cov = kernel(with_bias_feature(x)).to_dense()
            chol = torch.linalg.cholesky(cov + 1e-8 * cov.diagonal().mean() * torch.eye(len(x), dtype=cov.dtype))
            samples = chol @ torch.randn(len(x), 5, dtype=cov.dtype)
        ax.plot(x.squeeze(), samples)
        ax.set_title(f"NNGP prior, depth {depth}")
        ax.set_xlabel("x")
    fig.tight_layout()
    path = os.path.join(args.out, "prior_samples_by_depth.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="where the figures go (default: tutorials/figures)")
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
    os.makedirs(args.out, exist_ok=True)
    path, report = regression(args)
    for name, r in report.items():
        print(f"{name}: -MLL {r['loss_first']:.3f} -> {r['loss_last']:.3f}, weight_var {r['weight_var']:.3f}, "
              f"bias_var {r['bias_var']:.4f}")
    print("wrote", path)
    print("wrote", prior_samples(args))
    return report


if __name__ == "__main__":
    main()
