"""FedDyn — Acar et al., ICLR 2021, "Federated Learning Based on Dynamic
Regularization", Algorithm 1.

Client state grad_i (zeros at first participation), server state h (zeros), alpha > 0.
Client i minimises f_i(y) - <grad_i, y> + (alpha/2) ||y - x^t||^2 with local SGD::

    d = g - grad_i + alpha (y - x^t)

then updates its linear term: grad_i <- grad_i - alpha (y_{i,K} - x^t) (= grad_i + alpha Delta_i).
Server, over the M clients aggregated of N in total (uniform mean, the paper's rule;
``federation.weighting`` is ignored)::

    h       <- h - (alpha / N) sum_{i in S} (y_{i,K} - x^t)
    x^{t+1}  = (1/M) sum_{i in S} y_{i,K} - h / alpha

i.e. the pseudo-gradient handed to ``server.optimizer`` (default SGD, lr 1, exactly the
rule above) is (1/M) sum_i Delta_i + h / alpha. Memory: one P-vector per client.
Default alpha = 0.01 (the paper sweeps {0.1, 0.01, 0.001}).
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, proximal, uniform_mean
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, LocalRun, ServerState, State


@dataclass(frozen=True, kw_only=True)
class FedDynHparams:
    """Attributes:
    alpha: dynamic-regularisation coefficient (> 0).
    """

    alpha: float = 0.01

    def __post_init__(self):
        check(self.alpha > 0, "alpha", self.alpha, "must be > 0")


@register
class FedDyn(FedAlgorithm):
    name = "feddyn"
    paper = "Acar et al., ICLR 2021, Federated Learning Based on Dynamic Regularization"
    Hparams = FedDynHparams
    state_vectors = 1
    needs_federation = True

    def init_extra(self, x0: Tensor) -> State:
        """The server state h: ``(P,)`` zeros."""
        return {"h": x0.new_zeros(x0.shape)}

    def init_client(self, x0: Tensor) -> State:
        """The client's gradient state grad L_i (the linear term): ``(P,)`` zeros."""
        return {"grad": x0.new_zeros(x0.shape)}

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """d = g - grad_i + alpha (y - x^t)."""
        return proximal(g - run.state["grad"], run.y, run.broadcast.x, self.hp.alpha)

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """grad_i <- grad_i - alpha (y_K - x^t)."""
        message = self.message(run, loss)
        return message, {"grad": run.state["grad"] + self.hp.alpha * message.delta}

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """h <- h + (alpha/N) sum_i Delta_i; pseudo-gradient mean_i Delta_i + h / alpha."""
        mean = uniform_mean(messages.delta)
        h = server.extra["h"] + (self.hp.alpha * messages.delta.shape[0] / self.federation.num_clients) * mean
        return mean + h / self.hp.alpha, {"h": h}
