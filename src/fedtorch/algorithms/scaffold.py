"""SCAFFOLD — Karimireddy et al., ICML 2020, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", Algorithm 1 with option II.

Client state c_i (zeros at first participation), server state c (zeros); c is broadcast
with x^t. Local steps are corrected by the control variates::

    d = g - c_i + c

After its K_i steps client i updates its control variate (option II) and sends both
differences::

    c_i^+ = c_i - c + Delta_i / (K_i eta_l)
    message = (Delta_i, dc_i = c_i^+ - c_i)

Server, over the M clients aggregated of N in total::

    x^{t+1} = x^t - eta_g sum_i p_i Delta_i        (any server.optimizer)
    c      <- c + (M / N) (1/M) sum_i dc_i

Each client uses its own K_i. Memory: one P-vector per client that has taken part
(P x 4 bytes) in the client-state store; the message and the broadcast are two
P-vectors each.
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, local_work, uniform_mean, weighted_mean
from fedtorch.algorithms.registry import register
from fedtorch.protocol import Broadcast, ClientMessage, LocalRun, ServerState, State


@dataclass
class ScaffoldMessage(ClientMessage):
    """A :class:`ClientMessage` plus dc: ``(P,)`` change of the client's control variate."""

    dc: Tensor = None


@register
class Scaffold(FedAlgorithm):
    name = "scaffold"
    paper = "Karimireddy et al., ICML 2020, SCAFFOLD: Stochastic Controlled Averaging for Federated Learning"
    state_vectors = 1
    needs_federation = True

    def init_extra(self, x0: Tensor) -> State:
        """The server control variate c: ``(P,)`` zeros."""
        return {"c": x0.new_zeros(x0.shape)}

    def init_client(self, x0: Tensor) -> State:
        """The client control variate c_i: ``(P,)`` zeros."""
        return {"c": x0.new_zeros(x0.shape)}

    def broadcast(self, server: ServerState) -> Broadcast:
        """x^t and c (``(P,)`` each)."""
        return Broadcast(x=server.x, extra={"c": server.extra["c"]})

    def init_local(self, run: LocalRun) -> Tensor:
        """y_0 = x^t; the correction c - c_i (``(P,)`` or ``(C, P)``) is formed once per round."""
        run.buffers["correction"] = run.broadcast.extra["c"] - run.state["c"]
        return super().init_local(run)

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """d = g - c_i + c (Algorithm 1, the local update)."""
        return g + run.buffers["correction"]

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """c_i^+ = c_i - c + Delta_i / (K_i eta_l); sends (Delta_i, c_i^+ - c_i)."""
        base = self.message(run, loss)
        c_i = run.state["c"]
        c_new = c_i - run.broadcast.extra["c"] + base.delta / local_work(run)
        message = ScaffoldMessage(**vars(base), dc=c_new - c_i)
        return message, {"c": c_new}

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """Delta = sum p_i Delta_i; c <- c + (M/N) mean_i dc_i."""
        m = messages.dc.shape[0]
        c = server.extra["c"] + (m / self.federation.num_clients) * uniform_mean(messages.dc)
        return weighted_mean(messages.delta, weights), {"c": c}
