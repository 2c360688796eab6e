"""FedProx — Li et al., MLSys 2020, "Federated Optimization in Heterogeneous Networks",
Algorithm 2 with the local objective of Eq. (2).

Client i approximately minimises ``h_i(y) = f_i(y) + (mu/2) ||y - x^t||^2``; its local
SGD direction is the gradient of h_i::

    d = g + mu (y - x^t)

Everything else (messages, aggregation, partial work of stragglers) is FedAvg's.
With mu = 0 it is FedAvg exactly.

Client momentum: the proximal term is the gradient of the local objective, so it goes
into the momentum buffer with g (momentum is only the local solver of h_i), as in
NIID-Bench's ``train_net_fedprox``, which adds (mu/2)||w - w_g||^2 to the loss before
its momentum SGD step. No client state, hence no fixed point to protect; the aggregate
uses the round's weights p_i (``federation.weighting``).
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, proximal
from fedtorch.algorithms.registry import register
from fedtorch.protocol import LocalRun


@dataclass(frozen=True, kw_only=True)
class FedProxHparams:
    """Attributes:
    mu: proximal coefficient (>= 0); the paper tries {0.001, 0.01, 0.1, 1}.
    """

    mu: float = 0.01

    def __post_init__(self):
        check(self.mu >= 0, "mu", self.mu, "must be >= 0")


@register
class FedProx(FedAlgorithm):
    name = "fedprox"
    paper = "Li et al., MLSys 2020, Federated Optimization in Heterogeneous Networks"
    Hparams = FedProxHparams

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """d = g + mu (y - x^t)  (gradient of the proximal local objective, Eq. 2)."""
        return proximal(g, run.y, run.broadcast.x, self.hp.mu)
