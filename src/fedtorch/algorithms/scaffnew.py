"""Scaffnew — Mishchenko et al., ICML 2022, "ProxSkip: Yes! Local Gradient Steps Provably
Lead to Communication Acceleration! Finally!", Algorithm 2 (Scaffnew, ProxSkip applied
to federated learning).

Client state h_i (zeros at first participation), step size gamma = eta_l, communication
probability p. Local steps are shifted by h_i::

    y <- y - gamma (g - h_i)

The number of local steps per round is K ~ Geometric(p), one draw per round shared by
all clients (``random_steps=true``, the exact method), or the schedule's K_i with
p = 1/K_i (default). Averaging is uniform (``federation.weighting`` is ignored)::

    x^{t+1} = (1/M) sum_j (y_{j,K} - (gamma/p) h_j)
    h_i    <- h_i + (p/gamma) (x^{t+1} - y_{i,K})

Client i sends Delta_i = x^t - xhat_i with xhat_i = y_{i,K} - (gamma/p) h_i, so the
uniform mean of the Delta_i is x^t - x^{t+1} and the default ``server.optimizer``
(SGD, lr 1) lands exactly on x^{t+1}. Since h_i + (p/gamma)(x^{t+1} - y_{i,K}) =
(p/gamma)(x^{t+1} - xhat_i), the client keeps xhat_i and p/gamma after training and
``after_aggregate`` turns them into its new h_i once x^{t+1} exists. With full
participation sum_i h_i = 0 after every round; with partial participation only the
clients of the round update h_i (a heuristic: the paper assumes every client averages).
Memory: one P-vector per client between rounds.
(The seed framework used an exponential average of x - y as h_i; this is the paper's.)
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, local_work, uniform_mean
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, LocalRun, ServerState, State
from fedtorch.seeding import generator


@dataclass(frozen=True, kw_only=True)
class ScaffnewHparams:
    """Attributes:
    random_steps: draw K ~ Geometric(p) every round (the exact ProxSkip method).
    p: communication probability in (0, 1], used when random_steps is true.
    """

    random_steps: bool = False
    p: float = 0.1

    def __post_init__(self):
        check(0 < self.p <= 1, "p", self.p, "must be in (0, 1]")


@register
class Scaffnew(FedAlgorithm):
    name = "scaffnew"
    aliases = ("proxskip",)
    paper = "Mishchenko et al., ICML 2022, ProxSkip: Yes! Local Gradient Steps Provably Lead to Communication Acceleration! Finally!"
    Hparams = ScaffnewHparams
    state_vectors = 1

    def num_local_steps(self, round: int, client_id: int, seed: int, default: int) -> int:
        """K ~ Geometric(p) on {1, 2, ...} from (seed, round) when ``random_steps``."""
        if not self.hp.random_steps:
            return default
        u = torch.rand((), generator=generator(seed, round, "local_steps"), dtype=torch.float64).item()
        return 1 + int(math.log1p(-u) / math.log1p(-self.hp.p))

    def init_client(self, x0: Tensor) -> State:
        """The client's control variate h_i: ``(P,)`` zeros."""
        return {"h": x0.new_zeros(x0.shape)}

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """d = g - h_i (the step is y - gamma d)."""
        return g - run.state["h"]

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """xhat_i = y_K - (gamma/p) h_i; sends Delta_i = x^t - xhat_i; keeps xhat_i, p/gamma."""
        gamma_over_p = run.ctx.lr / self.hp.p if self.hp.random_steps else local_work(run)  # gamma / p
        xhat = run.y - gamma_over_p * run.state["h"]
        message = self.message(run, loss)
        message.delta = run.broadcast.x - xhat
        return message, {"xhat": xhat, "coef": run.y.new_ones(run.y.shape[:-1] + (1,)) / gamma_over_p}

    def after_aggregate(self, server: ServerState, state: State) -> State:
        """h_i = (p/gamma)(x^{t+1} - xhat_i)."""
        return {"h": state["coef"] * (server.x - state["xhat"])}

    def server_delta(self, server: ServerState, messages: ClientMessage, weights: Tensor) -> tuple[Tensor, State]:
        """x^t - x^{t+1} = (1/M) sum_j Delta_j (uniform)."""
        return uniform_mean(messages.delta), server.extra
