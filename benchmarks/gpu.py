"""The GPU measurements, in one run: what a lent GPU should be used for, and the README table it prints.

    python benchmarks/gpu.py                    # on a CUDA machine: every row (about 10 minutes on one H100-class GPU)
    python benchmarks/gpu.py --quick --device cpu   # tiny sizes, any machine (checks the script itself)

Rows:
1. Exact-GP marginal-likelihood step (CG/Lanczos, GPyTorch defaults) with a depth-3 ReLU NNGP, float32, d = 32:
   the lazy backend at n = 50,000 and 200,000 (the cached matrix is its upper triangle, up to the device's memory
   budget; past it the blocks are recomputed for every product), and KeOps at n = 50,000.
2. The 21-layer CNN of neural-tangents' performance table (3x3 SAME convolutions and ReLU on 3 x 32 x 32 inputs),
   NTK, with a flatten readout and with global average pooling, float32 and float64: milliseconds per kernel entry,
   beside neural-tangents' published figures for one V100 (README of neural-tangents 0.6.5, measured with 0.2.1).
The table is printed as markdown and written to benchmarks/results/gpu.md with the device's name.
"""
import argparse
import math
import os
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# neural-tangents' README, "Performance": milliseconds per NTK entry on one NVIDIA V100.
PUBLISHED_V100_MS = {("flatten", "float32"): 0.0046510, ("flatten", "float64"): 0.010822,
                     ("gap", "float32"): 2.7001, ("gap", "float64"): 6.2058}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return float("nan")


def exact_gp_step(n, backend, device, d=32):
    import gpytorch

    from gpytorch_nngp import NNGPKernel

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.sin(3 * x @ (torch.randn(d, generator=g) / d ** 0.5)) + 0.1 * torch.randn(n, generator=g)
    x, y = x.to(device), y.to(device)

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
            self.mean = gpytorch.means.ConstantMean()
            self.cov = NNGPKernel(3, "relu", backend=backend)

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean(z), self.cov(z))

    model = GP().to(device)
    model.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    loss = -mll(model(x), y)
    loss.backward()
    sync(device)
    return time.perf_counter() - start, peak_gb(device), math.isfinite(loss.item())


def cnn_ms_per_entry(readout, dtype, device, n, depth=21):
    from torch import nn

    from gpytorch_nngp import NTKKernel

    layers = []
    for i in range(depth):
        layers += [nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1), nn.ReLU()]
    head = [nn.Flatten(), nn.Linear(8 * 32 * 32, 1)] if readout == "flatten" else \
        [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1)]
    kernel = NTKKernel.from_module(nn.Sequential(*layers, *head), (3, 32, 32), backend="dense").to(device, dtype)
    x = torch.randn(n, 3 * 32 * 32, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    with torch.no_grad():
        kernel(x[:2]).to_dense()  # warm-up
        sync(device)
        start = time.perf_counter()
        k = kernel(x).to_dense()
        sync(device)
    seconds = time.perf_counter() - start
    assert torch.isfinite(k).all()
    return 1000 * seconds / (n * n)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script on any machine)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gpu.md"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = []

    sizes = [(2000, "lazy"), (2000, "keops")] if args.quick else [(50000, "lazy"), (200000, "lazy"), (50000, "keops")]
    for n, backend in sizes:
        if backend == "keops" and device.type != "cuda":
            continue  # KeOps on a CPU compiles with g++ and is far slower than the lazy backend
        seconds, gb, finite = exact_gp_step(n, backend, device)
        rows.append(f"| exact-GP MLL step, n = {n:,}, {backend} | {seconds:.2f} s | {gb:.2f} GB | | finite: {finite} |")
        print(rows[-1], flush=True)

    pairs = {"flatten": 4 if args.quick else 64, "gap": 2 if args.quick else 16}
    for readout in ("flatten", "gap"):
        for dtype in (torch.float32, torch.float64):
            label = str(dtype).replace("torch.", "")
            depth = 3 if args.quick else 21
            ms = cnn_ms_per_entry(readout, dtype, device, pairs[readout], depth=depth)
            ref = PUBLISHED_V100_MS[(readout, label)]
            rows.append(f"| {depth}-layer CNN NTK, {readout}, {label} | {ms:.4g} ms / entry | | V100, 21 layers "
                        f"(neural-tangents): {ref:.4g} ms | {ref / ms:.2f}x |")
            print(rows[-1], flush=True)

    table = "\n".join([f"Device: {name}, torch {torch.__version__}" + (" (quick sizes)" if args.quick else ""), "",
                       "| measurement | time | peak memory | reference | speed-up |", "|---|---|---|---|---|", *rows])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table + "\n")
    print(f"\n{table}\n\nwritten to {args.out}")


if __name__ == "__main__":
    main()
