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

import torch
from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, weighted_mean
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, ServerState, State


@register
class FedNova(FedAlgorithm):
    name = "fednova"
    paper = "Wang et al., NeurIPS 2020, Tackling the Objective Inconsistency Problem in Heterogeneous Federated Optimization"

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """tau_eff sum_i p_i Delta_i / a_i (Eq. 6-7; the 1/a_i folded into the ``(M,)``
        weights, so no ``(M, P)`` temporary beyond the weighted sum)."""
        a = self.local.effective_steps(messages.num_steps.to(torch.float64)).to(weights.device)  # a_i, (M,) float64
        tau_eff = (weights * a).sum()
        return tau_eff.to(messages.delta) * weighted_mean(messages.delta, weights / a), server.extra
