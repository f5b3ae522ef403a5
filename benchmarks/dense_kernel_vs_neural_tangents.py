"""Dense kernel matrix timing against neural-tangents (jit, CPU), measured in the same run.

    python benchmarks/dense_kernel_vs_neural_tangents.py [--n 4000] [--d 784] [--depth 3] [--nt-python PATH]

Times (median of --repeats): our first evaluation (input Gram included), our re-evaluation after a
weight_var/bias_var change (Gram cached), and neural-tangents' jitted kernel_fn (compilation excluded; its
hyperparameters are baked into kernel_fn, so every re-evaluation costs the same as this). neural-tangents runs
in a subprocess of the interpreter given by --nt-python (default: .venv-nt/bin/python if present, else this one),
so it can live in its own environment (neural-tangents==0.6.5, jax[cpu]==0.4.30).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from gpytorch_nngp import NNGPKernel, NTKKernel

NT_SNIPPET = r"""
import json, math, sys, time, statistics
import numpy as np, jax
from neural_tangents import stax
x = np.load(sys.argv[1]); depth = int(sys.argv[2]); repeats = int(sys.argv[5])
wv, bv = float(sys.argv[3]), float(sys.argv[4])
dense = stax.Dense(1, W_std=math.sqrt(wv), b_std=math.sqrt(bv))
_, _, kernel_fn = stax.serial(*([dense, stax.Relu()] * depth), dense)
out = {}
for kind in ("nngp", "ntk"):
    fn = jax.jit(kernel_fn, static_argnames="get")
    t0 = time.perf_counter(); fn(x, None, get=kind).block_until_ready(); compile_and_first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(x, None, get=kind).block_until_ready(); times.append(time.perf_counter() - t0)
    out[kind] = {"median": statistics.median(times), "first_with_compile": compile_and_first,
                 "sample": np.asarray(fn(x[:5], None, get=kind)).tolist()}
out["jax"] = jax.__version__
print(json.dumps(out))
"""


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours(x, depth, wv, bv, repeats, cls):
    firsts = []
    for _ in range(repeats):
        kernel = cls(depth, "relu", weight_var=wv, bias_var=bv)
        t0 = time.perf_counter()
        with torch.no_grad():
            kernel(x).to_dense()
        firsts.append(time.perf_counter() - t0)
    step = [0]

    def reevaluate():
        step[0] += 1
        kernel.weight_var = wv * (1 + 0.01 * step[0])
        kernel.bias_var = bv * (1 + 0.01 * step[0])
        with torch.no_grad():
            kernel(x).to_dense()

    return statistics.median(firsts), median_time(reevaluate, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    default_nt = os.path.join(os.path.dirname(__file__), "..", ".venv-nt", "bin", "python")
    parser.add_argument("--nt-python", default=default_nt if os.path.exists(default_nt) else sys.executable)
    args = parser.parse_args()
    wv, bv = 2.0, 0.2
    rng = np.random.RandomState(0)
    x_np = rng.rand(args.n, args.d).astype(np.float32)  # MNIST-like: pixels in [0, 1]
    x = torch.from_numpy(x_np)

    rows = []
    nt = None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.npy")
        np.save(path, x_np)
        command = [args.nt_python, "-c", NT_SNIPPET, path, str(args.depth), str(wv), str(bv), str(args.repeats)]
        proc = subprocess.run(command,
                              capture_output=True, text=True)
        if proc.returncode == 0:
            nt = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            print(f"neural-tangents unavailable ({args.nt_python}): {proc.stderr.strip().splitlines()[-1:]}")
    for kind, cls in (("nngp", NNGPKernel), ("ntk", NTKKernel)):
        first, again = ours(x, args.depth, wv, bv, args.repeats, cls)
        nt_time = nt[kind]["median"] if nt else float("nan")
        if nt:
            with torch.no_grad():
                sample = cls(args.depth, "relu", weight_var=wv, bias_var=bv)(x[:5]).to_dense().numpy()
            agree = float(np.max(np.abs(sample - np.array(nt[kind]["sample"])) / np.abs(np.array(nt[kind]["sample"]))))
        else:
            agree = float("nan")
        rows.append((kind, first, again, nt_time, first / nt_time, again / nt_time, agree))

    print(f"\nDense {args.n}x{args.n} kernel, d={args.d}, depth={args.depth} ReLU, float32, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores" + (f", jax {nt['jax']}" if nt else ""))
    header = (f"{'kernel':6s} {'ours first (s)':>15s} {'ours re-eval (s)':>17s} {'neural-tangents (s)':>20s} "
              f"{'first/NT':>9s} {'re-eval/NT':>11s} {'max rel diff':>13s}")
    print(header)
    print("-" * len(header))
    for kind, first, again, nt_time, r1, r2, agree in rows:
        print(f"{kind:6s} {first:15.3f} {again:17.3f} {nt_time:20.3f} {r1:9.2f} {r2:11.2f} {agree:13.1e}")


if __name__ == "__main__":
    main()
