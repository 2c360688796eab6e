"""FedGM — Sun et al., AAAI 2024, "On the Role of Server Momentum in Federated Learning"
(generalised heavy-ball / quasi-hyperbolic server momentum).

Clients run FedAvg's local SGD. With Delta = sum_i p_i Delta_i the server keeps a
momentum buffer d and steps along a mix of it and the fresh aggregate::

    d^{t+1} = (1 - beta) Delta + beta d^t
    x^{t+1} = x^t - eta_g ((1 - nu) Delta + nu d^{t+1})

``(1 - nu) Delta + nu d^{t+1}`` is the pseudo-gradient handed to ``server.optimizer``
(default SGD, lr = eta_g). nu = 0 is FedAvg at the same eta_g (bit for bit); nu = 1 is
normalised heavy-ball momentum. Defaults beta = 0.9, nu = 0.9 (seed defaults; not
checked against the paper's experiments).

Weighting: Delta uses the round's weights p_i from ``federation.weighting`` (``samples``:
n_i / sum_S n_j; ``uniform``: 1/M). Which one the paper's experiments use was not
checked here (no released code was found); ``uniform`` is the plain mean over the
participating clients. See docs/algorithms.md.
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, weighted_mean
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, ServerState, State


@dataclass(frozen=True, kw_only=True)
class FedGMHparams:
    """Attributes:
    beta: momentum decay in [0, 1).
    nu: weight of the momentum buffer in the step, in [0, 1].
    """

    beta: float = 0.9
    nu: float = 0.9

    def __post_init__(self):
        check(0 <= self.beta < 1, "beta", self.beta, "must be in [0, 1)")
        check(0 <= self.nu <= 1, "nu", self.nu, "must be in [0, 1]")


@register
class FedGM(FedAlgorithm):
    name = "fedgm"
    edge_reducible = True  # the server momentum acts on the mean Delta (fedtorch.edge_sums)
    paper = "Sun et al., AAAI 2024, On the Role of Server Momentum in Federated Learning"
    Hparams = FedGMHparams

    def init_extra(self, x0: Tensor) -> State:
        """The server momentum buffer d: ``(P,)`` zeros."""
        return {"d": x0.new_zeros(x0.shape)}

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """d^{t+1} = (1 - beta) Delta + beta d^t; pseudo-gradient (1 - nu) Delta + nu d^{t+1}
        (the module docstring's rule; ``(P,)``)."""
        delta = weighted_mean(messages.delta, weights)
        d = (1 - self.hp.beta) * delta + self.hp.beta * server.extra["d"]
        return (1 - self.hp.nu) * delta + self.hp.nu * d, {"d": d}
