"""Theory lab: the two-linear-layer binary-activation model of Yin et al. (ICLR 2019).

Exact population loss, gradients and expected coarse gradients (model), critical points
(landscape), Monte-Carlo checks (montecarlo), Algorithm 1 and Fig. 1 (descent), and the
`stetune theory` subcommand (cli, not imported here so the package stays argparse-free).
"""
from .descent import (INITS, DescentResult, coarse_gradient_descent, initial_point,
                      one_step_losses, plot_one_step)
from .landscape import (global_minimum, identity_norm_at_spurious, saddle, saddle_angle,
                        spurious_exists, spurious_minimum)
from .model import (STES, Problem, Teacher, correlation, correlation_formula,
                    correlation_formula_clipped_relu, correlation_formula_identity,
                    correlation_formula_relu, cosine, expected_coarse_grad_w, grad_v, grad_w,
                    loss, make_problem, pq, pq_closed_form, theta, xi)
from .montecarlo import MCResult, batch_gradients, monte_carlo, per_sample, quantity_keys

__all__ = [
    "STES", "INITS", "Problem", "Teacher", "make_problem", "theta", "loss", "grad_v", "grad_w",
    "xi", "pq", "pq_closed_form", "expected_coarse_grad_w", "correlation", "cosine",
    "correlation_formula", "correlation_formula_identity", "correlation_formula_relu",
    "correlation_formula_clipped_relu", "global_minimum", "spurious_exists", "spurious_minimum",
    "saddle_angle", "saddle", "identity_norm_at_spurious", "MCResult", "monte_carlo",
    "per_sample", "batch_gradients", "quantity_keys", "DescentResult", "initial_point",
    "coarse_gradient_descent", "one_step_losses", "plot_one_step",
]
