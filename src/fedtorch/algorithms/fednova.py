"""FedNova — Wang et al., NeurIPS 2020, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", Eq. (6)-(7).

Clients run FedAvg's local SGD (each its own K_i). The server normalises every update
by the client's effective number of steps a_i before averaging, then rescales::

    a_i     = K_i                                                  (plain SGD)
    a_i     = (K_i - rho (1 - rho^{K_i}) / (1 - rho)) / (1 - rho)  (local momentum rho)
    d_i     = Delta_i / a_i
    tau_eff = sum_i p_i a_i
    x^{t+1} = x^t - eta_g tau_eff sum_i p_i d_i

``tau_eff sum_i p_i d_i`` is the pseudo-gradient handed to ``server.optimizer``.
With equal K_i it equals FedAvg; with unequal K_i its fixed point is the minimiser of
sum_i p_i f_i, where FedAvg's is pulled toward clients that take more steps.
"""

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, weighted_mean
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, ServerState, State


def effective_steps(num_steps: Tensor, rho: float) -> Tensor:
    """a_i for K_i local steps of SGD with heavy-ball momentum rho (``(M,)`` float64)."""
    k = num_steps.to(float)
    if not rho:
        return k
    return (k - rho * (1 - rho**k) / (1 - rho)) / (1 - rho)


@register
class FedNova(FedAlgorithm):
    name = "fednova"
    paper = "Wang et al., NeurIPS 2020, Tackling the Objective Inconsistency Problem in Heterogeneous Federated Optimization"

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """tau_eff sum_i p_i Delta_i / a_i (Eq. 6-7; the 1/a_i folded into the ``(M,)``
        weights, so no ``(M, P)`` temporary beyond the weighted sum)."""
        a = effective_steps(messages.num_steps, self.local.momentum).to(weights.device)
        tau_eff = (weights * a).sum()
        return tau_eff.to(messages.delta) * weighted_mean(messages.delta, weights / a), server.extra
