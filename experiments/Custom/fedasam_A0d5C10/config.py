"""A user's own algorithm in this folder: FedASAM, FedAvg with ASAM as the local optimiser.

Paper: Caldarola, Caputo and Ciccone, ECCV 2022, "Improving Generalization in Federated
Learning by Seeking Flat Minima" (FedASAM). Client rule: ASAM, Kwon et al., ICML 2021,
"ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural
Networks", Algorithm 1 with the element-wise normalisation operator
T_w = diag(|w|) + eta I. Each local step, on one minibatch xi:

    g_0 = grad f_i(y; xi),   eps = rho T_y^2 g_0 / ||T_y g_0||,   y <- y - eta_l grad f_i(y + eps; xi)

checked against the authors' asam.py (github.com/SamsungLabs/ASAM: ``ascent_step``
multiplies the gradient by T_w twice and divides by the norm after the first product;
defaults rho 0.5, eta 0.01). One difference: asam.py scales only parameters whose name
contains "weight" (biases get T = 1); the protocol's flat (P,) vector carries no names, so
here every coordinate is scaled. Server rule: FedAvg's (the base class's).
The equation number in the ASAM paper was not checked; FedASAM's own rho/eta are unverified.

Fashion-MNIST, FedAvg's 2NN (``mlp``), 10 clients by Dirichlet label skew (alpha 0.5),
5 per round. ``fedtorch compare experiments/Custom/fedasam_A0d5C10 --algorithms fedavg,fedasam``
runs both on the same seed, split and schedule.
"""

from dataclasses import dataclass

from fedtorch.algorithms.base import FedAlgorithm, check, norm


# --- user algorithm: begin (tests/test_custom_examples.py counts these lines) ---
@dataclass(frozen=True, kw_only=True)
class FedASAMHparams:
    """rho: ASAM radius (>= 0); eta: the operator's offset T_w = |w| + eta (> 0)."""

    rho: float = 0.5
    eta: float = 0.01

    def __post_init__(self):
        check(self.rho >= 0, "rho", self.rho, "must be >= 0")
        check(self.eta > 0, "eta", self.eta, "must be > 0")


class FedASAM(FedAlgorithm):
    """FedAvg with ASAM local steps (Caldarola et al. ECCV 2022; Kwon et al. ICML 2021, Alg. 1)."""

    name = "fedasam"
    paper = "Caldarola et al., ECCV 2022, Improving Generalization in Federated Learning by Seeking Flat Minima"
    Hparams = FedASAMHparams

    def perturb(self, run):
        """y + rho T^2 g_0 / ||T g_0|| with T = |y| + eta and g_0 the minibatch gradient at y
        (``(P,)``, or ``(C, P)`` vectorised; no perturbation where T g_0 = 0)."""
        _, g0 = run.grad_at(run.y)
        t = run.y.abs() + self.hp.eta
        tg = t * g0
        return run.y + self.hp.rho * t * tg / norm(tg).clamp(min=1e-16)
# --- user algorithm: end ---


CONFIG = {
    "seed": 0,
    "rounds": 20,
    "data": {
        "dataset": "fashion_mnist",
        "partition": "dirichlet",
        "num_clients": 10,  # must agree with the folder name (C10)
        "alpha": 0.5,  # must agree with the folder name (A0d5)
        "min_samples": 10,
        "seed": 0,
    },
    "model": {"name": "mlp"},
    "algorithm": {"name": "fedasam"},
    "client": {"local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
    "federation": {"clients_per_round": 5},
    "eval": {"every": 5},
}
