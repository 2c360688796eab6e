"""FedSAM — Qu et al., ICML 2022, "Generalized Federated Learning via Sharpness Aware
Minimization", Algorithm 1 (SAM as the local optimiser of FedAvg).

Each local step first takes the minibatch gradient at y, ascends to the worst point
within radius rho, and descends with the gradient there (two backward passes)::

    g_0 = grad f_i(y; xi),   g = grad f_i(y + rho g_0 / ||g_0||; xi),   y <- y - eta_l g

The norm is over the whole flat vector (no perturbation where g_0 = 0). Server rule:
FedAvg's. Default rho = 0.05 (the paper's CIFAR setting).
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, along, check
from fedtorch.algorithms.registry import register
from fedtorch.protocol import LocalRun


@dataclass(frozen=True, kw_only=True)
class FedSAMHparams:
    """Attributes:
    rho: SAM radius (>= 0).
    """

    rho: float = 0.05

    def __post_init__(self):
        check(self.rho >= 0, "rho", self.rho, "must be >= 0")


@register
class FedSAM(FedAlgorithm):
    name = "fedsam"
    paper = "Qu et al., ICML 2022, Generalized Federated Learning via Sharpness Aware Minimization"
    Hparams = FedSAMHparams

    def perturb(self, run: LocalRun) -> Tensor:
        """y + rho g_0 / ||g_0|| with g_0 the minibatch gradient at y."""
        _, g0 = run.grad_at(run.y)
        return run.y + along(g0, self.hp.rho)
