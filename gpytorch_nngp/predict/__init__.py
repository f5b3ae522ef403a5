"""What gradient descent does to wide networks: neural-tangents' `predict`, in torch and GPyTorch kernels.

Conventions (neural-tangents 0.6.5, so that code ports line by line): the loss is the mean squared error averaged
over all N = y_train.numel() entries, L = 1/(2N) sum ||f(x_i) - y_i||^2; gradient descent with step
`learning_rate` runs for `t` steps, absolute time learning_rate * t; `diag_reg` is added to the training kernel's
diagonal, relative to its mean diagonal unless `diag_reg_absolute_scale=True`. Outputs share one kernel: y_train is
(n, k), means are (*t_shape, m, k), covariances (*t_shape, m, m).

Formulas (Jacot et al. 2018; Lee et al. 2019, "Wide neural networks of any depth evolve as linear models"), with
Theta the NTK and K the NNGP on the training set and phi_t(l) = (1 - exp(-l t / N)) / l:
- one linearized network from its own initial outputs:
      f_t(x*) = f_0(x*) + k(x*, X) phi_t(k(X, X)) (y - f_0(X)),   f_t(X) = y + exp(-k t / N) (f_0(X) - y);
- the infinite ensemble trained on all layers ("ntk"): mean Theta_*X phi_t(Theta) y, covariance
  K_** + T K_XX T^T - (T K_X* + K_*X T^T) with T = Theta_*X phi_t(Theta) (the prior of the outputs is the NNGP);
- trained readout only ("nngp"): mean K_*X phi_t(K) y, covariance K_** - K_*X phi_{2t}(K) K_X*.
t = None (or math.inf among the times) is infinite time: kernel regression (`gp_inference`, by Cholesky). Two ways
to apply the matrix functions: one exact spectral decomposition per training kernel (`_Eigen`: tridiagonal on the
CPU, eigh on a GPU) or Lanczos through the kernel's products (`_Krylov`). One network under any loss:
`gradient_descent`, an ODE (torchdiffeq).

Package layout: common.py (outputs, kinds, times, phi, the singular rule) and checks.py (argument checks);
spectral.py (the exact solver's matrix functions) and krylov.py (Lanczos); linearized.py (one network, closed
form; max_learning_rate), ode.py (one network, any loss), inference.py (gp_inference), ensemble.py
(gradient_descent_mse_ensemble over either solver).
"""
from .common import Gaussian
from .ensemble import gradient_descent_mse_ensemble
from .inference import gp_inference
from .linearized import gradient_descent_mse, max_learning_rate
from .ode import gradient_descent

__all__ = ["Gaussian", "gp_inference", "gradient_descent", "gradient_descent_mse", "gradient_descent_mse_ensemble",
           "max_learning_rate"]
