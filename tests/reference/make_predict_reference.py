"""Writes neural_tangents_predict_reference.npz: neural-tangents 0.6.5's `predict` on three networks (float64).

Run with an environment holding `neural-tangents==0.6.5` and `jax[cpu]==0.4.30` (kept out of the package's
dependencies):  python tests/reference/make_predict_reference.py
The training set has a duplicated point and the test set holds a training point. For each network: the ensemble's
means and covariances at times 0, 1, 30, 1000 and infinity (t=None), "nngp" and "ntk", on the test and on the training
inputs, with and without diag_reg; gp_inference's "ntkgp"; one linearized network (gradient_descent_mse, and
gradient_descent's ODE for cross-entropy with and without momentum).
"""
import math
import os

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import predict, stax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WV, BV, LR = 1.7, 0.15, 2.0
TIMES = np.array([0.0, 1.0, 30.0, 1000.0])


def networks():
    w, b = math.sqrt(WV), math.sqrt(BV)
    relu = stax.serial(stax.Dense(64, W_std=w, b_std=b), stax.Relu(), stax.Dense(64, W_std=w, b_std=b), stax.Relu(),
                       stax.Dense(1, W_std=w, b_std=b))
    erf = stax.serial(stax.Dense(64, W_std=w, b_std=b), stax.Erf(), stax.Dense(1, W_std=w, b_std=b))
    # Channel last here; the torch twin in test_predict.py is channel first, (C, H, W) = (2, 4, 4).
    cnn = stax.serial(stax.Conv(8, (3, 3), padding="SAME", W_std=w, b_std=b), stax.Relu(), stax.AvgPool((2, 2), (2, 2)),
                      stax.Conv(8, (2, 2), padding="SAME", W_std=w, b_std=b), stax.Relu(), stax.GlobalAvgPool(),
                      stax.Dense(1, W_std=w, b_std=b))
    return {"relu": (relu, (5,)), "erf": (erf, (5,)), "cnn": (cnn, (2, 4, 4))}


def data(shape):
    rng = np.random.RandomState(0)
    d = int(np.prod(shape))
    x_train = rng.randn(12, d)
    x_train[5] = x_train[2]  # a duplicated training point
    x_test = rng.randn(4, d)
    x_test[1] = x_train[7]  # a test point equal to a training point
    y_train = rng.randn(12, 2)
    return x_train, x_test, y_train


def channel_last(x, shape):
    """Flattened channel-first points (n, C*H*W) as neural-tangents' channel-last images; flat points unchanged."""
    return np.moveaxis(x.reshape(len(x), *shape), 1, -1) if len(shape) > 1 else x


def main():
    out = {}
    for name, (net, shape) in networks().items():
        _, _, kernel_fn = net
        x_train, x_test, y_train = data(shape)
        xt, xs = (channel_last(x, shape) for x in (x_train, x_test))
        out[f"{name}/x_train"], out[f"{name}/x_test"], out[f"{name}/y_train"] = x_train, x_test, y_train
        for reg in (0.0, 1e-3):
            fn = predict.gradient_descent_mse_ensemble(kernel_fn, xt, y_train, learning_rate=LR, diag_reg=reg)
            for t_name, t in (("t", TIMES), ("inf", None)):
                for where, x in (("test", xs), ("train", None)):
                    res = fn(t=t, x_test=x, get=("nngp", "ntk"), compute_cov=True)
                    for g in ("nngp", "ntk"):
                        key = f"{name}/ensemble/{reg}/{t_name}/{where}/{g}"
                        out[key + "/mean"] = np.asarray(getattr(res, g).mean)
                        out[key + "/cov"] = np.asarray(getattr(res, g).covariance)
        k_dd = kernel_fn(xt, None, ("nngp", "ntk"))
        k_td = kernel_fn(xs, xt, ("nngp", "ntk"))
        k_tt = kernel_fn(xs, None, ("nngp", "ntk"))
        gp = predict.gp_inference(k_dd, y_train, diag_reg=1e-3)
        res = gp(get="ntkgp", k_test_train=k_td, k_test_test=k_tt)
        out[f"{name}/ntkgp/mean"], out[f"{name}/ntkgp/cov"] = np.asarray(res.mean), np.asarray(res.covariance)
        fx_train_0 = np.random.RandomState(1).randn(12, 2)
        fx_test_0 = np.random.RandomState(2).randn(4, 2)
        single = predict.gradient_descent_mse(np.asarray(k_dd.ntk), y_train, learning_rate=LR, diag_reg=1e-3)
        for t_name, t in (("t", TIMES), ("inf", None)):
            f_train, f_test = single(t, fx_train_0, fx_test_0, np.asarray(k_td.ntk))
            out[f"{name}/single/{t_name}/train"], out[f"{name}/single/{t_name}/test"] = f_train, f_test
        out[f"{name}/single/fx_train_0"], out[f"{name}/single/fx_test_0"] = fx_train_0, fx_test_0
        # One network under any loss, by the ODE solver: cross-entropy on softmax targets, with and without momentum.
        targets = jax.nn.softmax(y_train, axis=-1)
        cross_entropy = lambda fx, y: -jnp.mean(jax.nn.log_softmax(fx) * y)  # noqa: E731
        for momentum in (None, 0.9):
            ode = predict.gradient_descent(cross_entropy, np.asarray(k_dd.ntk), targets, learning_rate=LR,
                                           momentum=momentum)
            f_train, f_test = ode(TIMES, fx_train_0, fx_test_0, np.asarray(k_td.ntk))
            out[f"{name}/ode/{momentum}/train"], out[f"{name}/ode/{momentum}/test"] = f_train, f_test
        # predict.max_learning_rate calls scipy's removed eigvalsh(eigvals=...): its formula, 2 N / lambda_max, here.
        out[f"{name}/max_learning_rate"] = np.asarray(2 * y_train.size / (np.linalg.eigvalsh(k_dd.ntk)[-1] + 1e-12))
    np.savez_compressed(os.path.join(HERE, "neural_tangents_predict_reference.npz"), **out)
    print(f"wrote {len(out)} arrays")


if __name__ == "__main__":
    main()
