"""One exact-GP marginal-likelihood step with backend="distributed": p processes against one, same machine, same run.

    python benchmarks/distributed_exact_gp.py                  # n = 20,000, d = 32: p = 1, 2 (one thread each)
    python benchmarks/distributed_exact_gp.py --points 4000 --quick # seconds
    torchrun --standalone --nproc_per_node 2 benchmarks/distributed_exact_gp.py --worker --points 20000   # one row

The driver starts every row in its own processes: the distributed rows under torchrun (gloo on CPU, NCCL and one GPU
per process where CUDA is available), the single-process rows (backend="lazy") with plain python, so each "peak
RSS" is that process's own. Data: benchmarks/exact_gp_scaling.make_data (x ~ N(0, I_32), float32), a depth-3 ReLU
NNGP in a ScaleKernel, noise 0.05, GPyTorch's CG / Lanczos defaults; every rank seeds torch with 0.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def step(n, d, backend, device):
    """Seconds for one MLL step (forward + backward), and the loss."""
    import gpytorch

    sys.path.insert(0, HERE)
    from exact_gp_scaling import make_data

    from gpytorch_nngp import NNGPKernel

    x, y, _, _ = make_data(n, d)
    x, y = x.to(device), y.to(device)

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
            self.mean = gpytorch.means.ConstantMean()
            self.cov = gpytorch.kernels.ScaleKernel(NNGPKernel(3, "relu", weight_var=2.0, bias_var=0.1,
                                                               backend=backend))

        def forward(self, a):
            return gpytorch.distributions.MultivariateNormal(self.mean(a), self.cov(a))

    model = GP().to(device)
    model.likelihood.noise = 0.05
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    model.train()
    torch.manual_seed(0)  # the same Lanczos probes on every rank, and in every row
    start = time.perf_counter()
    loss = -mll(model(x), y)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, loss.item()


def worker(args):
    """One row: under torchrun with --worker, else a single process with backend="lazy". Prints RESULT{json}."""
    torch.set_num_threads(args.threads)
    distributed = "RANK" in os.environ
    device = torch.device("cpu")
    if distributed:
        import torch.distributed as dist

        cuda = torch.cuda.is_available()
        if cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=20))
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    seconds, loss = step(args.points, args.features, "distributed" if distributed else "lazy", device)
    row = {"seconds": seconds, "loss": loss,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
           "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None}
    if distributed:
        rows = [None] * dist.get_world_size()
        dist.all_gather_object(rows, row)
        if dist.get_rank() == 0:
            print("RESULT" + json.dumps(rows), flush=True)
        dist.destroy_process_group()
    else:
        print("RESULT" + json.dumps([row]), flush=True)


def launch(n, d, procs, threads, distributed):
    me = [os.path.abspath(__file__), "--worker", "--points", str(n), "--features", str(d), "--threads", str(threads)]
    if distributed:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *me]
    else:
        cmd = [sys.executable, *me]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help="measure one row (under torchrun: distributed)")
    parser.add_argument("--points", type=int, default=20000, help="n, training points")
    parser.add_argument("--features", type=int, default=32, help="d, input dimensions")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts of the distributed rows")
    parser.add_argument("--quick", action="store_true", help="skip the two-thread single-process row")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    n, item = args.points, 4
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; one MLL step, n={n}, "
          f"d={args.features}, depth-3 ReLU NNGP, float32")
    rows = [("lazy, 1 process", launch(n, args.features, 1, 1, False), 1, 1)]
    if not args.quick:
        rows.append(("lazy, 1 process", launch(n, args.features, 1, 2, False), 1, 2))
    rows += [("distributed", launch(n, args.features, p, args.threads, True), p, args.threads) for p in args.procs]
    base = rows[0][1][0]["seconds"]
    print(f"{'backend':18s} {'procs x threads':>15s} {'step (s)':>9s} {'speedup':>8s} {'peak RSS GB/rank':>17s} "
          f"{'matrix share GB/rank':>21s} {'loss':>12s}")
    for label, result, p, threads in rows:
        seconds = max(r["seconds"] for r in result)
        # what the operator keeps (float32): the whole matrix (lazy), or the rank's part of the upper triangle
        share = (n * n if label.startswith("lazy") else n * (n + 1) / 2 / p) * item / 2 ** 30
        peak = max(r["peak_rss_gb"] for r in result)
        print(f"{label:18s} {f'{p} x {threads}':>15s} {seconds:9.2f} {base / seconds:7.2f}x {peak:17.2f} "
              f"{share:21.2f} {result[0]['loss']:12.6f}")


if __name__ == "__main__":
    main()
