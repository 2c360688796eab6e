"""SCAFFOLD — Karimireddy et al., ICML 2020, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", Algorithm 1 with option II.

Client state c_i (zeros at first participation), server state c (zeros); c is broadcast
with x^t. Local steps are corrected by the control variates::

    d = g - c_i + c

After its K_i steps client i updates its control variate (option II) and sends both
differences::

    c_i^+ = c_i - c + Delta_i / (tau_i eta_l)
    message = (Delta_i, dc_i = c_i^+ - c_i)

with tau_i = K_i without client momentum (the paper) and the momentum-effective step
count :meth:`~fedtorch.algorithms.base.LocalSGD.effective_steps` with it. Server, over
the M clients aggregated of N in total::

    x^{t+1} = x^t - eta_g sum_{i in S} p_i Delta_i          (any server.optimizer)
    c      <- c + sum_{i in S} q_i dc_i

p_i are the round's weights and q_i the population weights of the objective
``federation.weighting`` names (:meth:`fedtorch.protocol.FederationInfo.population_weights`:
n_i / n, or 1/N). So c = sum_{all i} q_i c_i stays the objective's average control
variate; uniform q gives the paper's c <- c + (M/N) mean_i dc_i. At a fixed point
c_i = grad f_i(x*) and c = 0, i.e. sum_i q_i grad f_i(x*) = 0: the run targets the
sample-weighted objective sum_i (n_i/n) f_i under ``weighting=samples`` and
(1/N) sum_i f_i under ``uniform`` (averaging c uniformly while x is sample-weighted, as
NIID-Bench's ``local_train_net_scaffold`` does, targets the uniform one in both cases).

Client momentum: the correction goes into the momentum buffer with the gradient (the
heavy ball then acts on g - c_i + c, which vanishes at the optimum) and option II divides
by tau_i, so c_i stays a per-step gradient estimate; see :class:`~fedtorch.algorithms.base.LocalSGD`
for why NIID-Bench's rule (correction applied after the momentum step) is not used.
Momentum 0 gives the paper's rule bit for bit.

Each client uses its own K_i. Memory: one P-vector per client that has taken part
(P x 4 bytes) in the client-state store; the message and the broadcast are two
P-vectors each.
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, local_work, weighted_mean
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
    edge_reducible = True  # Delta and dc enter only through means under p_i and q_i (fedtorch.edge_sums)

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
        """c_i^+ = c_i - c + Delta_i / (tau_i eta_l); sends (Delta_i, c_i^+ - c_i)."""
        base = self.message(run, loss)
        c_i = run.state["c"]
        c_new = c_i - run.broadcast.extra["c"] + base.delta / local_work(run, self.local)
        message = ScaffoldMessage(**vars(base), dc=c_new - c_i)
        return message, {"c": c_new}

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """Delta = sum_S p_i Delta_i; c <- c + sum_S q_i dc_i (q_i: population weights)."""
        q = self.federation.population_weights(messages.num_samples, messages.num_clients)
        c = server.extra["c"] + weighted_mean(messages.dc, q)
        return weighted_mean(messages.delta, weights), {"c": c}
