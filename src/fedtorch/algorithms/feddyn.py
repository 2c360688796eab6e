"""FedDyn — Acar et al., ICLR 2021, "Federated Learning Based on Dynamic
Regularization", Algorithm 1.

Client state grad_i (zeros at first participation), server state h (zeros), alpha > 0.
Client i minimises f_i(y) - <grad_i, y> + (alpha/2) ||y - x^t||^2 with local SGD::

    d = g - grad_i + alpha (y - x^t)

then updates its linear term: grad_i <- grad_i - alpha (y_{i,K} - x^t) (= grad_i + alpha Delta_i).
Server, over the M clients aggregated of N in total::

    h       <- h - alpha sum_{i in S} q_i (y_{i,K} - x^t)
    x^{t+1}  = sum_{i in S} p_i y_{i,K} - h / alpha

with p_i the round's weights and q_i the population weights of the objective
``federation.weighting`` names (:meth:`fedtorch.protocol.FederationInfo.population_weights`:
n_i / n, or 1/N). Under ``weighting=uniform`` (p_i = 1/M, q_i = 1/N) this is the paper's
rule, h <- h - (alpha/N) sum_S (y_{i,K} - x^t) and a plain mean of the y_{i,K}. h is
sum_{all i} q_i grad_i, and at a fixed point y_{i,K} = x*, grad_i = grad f_i(x*) (the
local stationarity condition) and h = 0, so sum_i q_i grad f_i(x*) = 0: the
sample-weighted objective under ``samples``, the uniform one under ``uniform``. (With h
averaged uniformly, as in the paper, FedDyn targets the uniform objective whatever the
weighting.)

The pseudo-gradient handed to ``server.optimizer`` (default SGD, lr 1, exactly the rule
above) is sum_S p_i Delta_i + h / alpha.

Client momentum: the whole direction (linear and proximal terms included) goes into the
momentum buffer. The terms are gradients of the local objective and grad_i is updated
from the local stationarity condition, not from the displacement per step, so momentum
is only the local solver and the fixed point is unchanged (tested at momentum 0.9).
Memory: one P-vector per client. Default alpha = 0.01 (the paper sweeps
{0.1, 0.01, 0.001}).
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, proximal, weighted_mean
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
    edge_reducible = True  # Delta enters only through means under p_i and q_i (fedtorch.edge_sums)

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
        """h <- h + alpha sum_S q_i Delta_i; pseudo-gradient sum_S p_i Delta_i + h / alpha."""
        q = self.federation.population_weights(messages.num_samples, messages.num_clients)
        h = server.extra["h"] + self.hp.alpha * weighted_mean(messages.delta, q)
        return weighted_mean(messages.delta, weights) + h / self.hp.alpha, {"h": h}
