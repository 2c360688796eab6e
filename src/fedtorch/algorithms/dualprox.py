"""DualProx — the seed framework's own method, from the code released with
arXiv:2511.00469 (Lei et al. 2025).

Each client keeps its own local model across rounds (initialised from x^t at its first
participation) and trains it, starting from where it left off, on::

    f_i(y) + (mu/2) ||y - x^t||^2 + (lambda/2) ||y - y_{k-1}||^2

where y_{k-1} is the previous local step's iterate (no lambda term at the first step)::

    d = g + mu (y - x^t) + lambda (y - y_{k-1})

It sends Delta_i = x^t - y_{i,K} and keeps y_{i,K} as its state. With lambda = 0 and
the persistent model replaced by x^t it is FedProx bit for bit. Memory: one P-vector
per client. Defaults mu = 0.01, lambda = 0.01 (``algorithm.lam``).

Client momentum: both proximal terms are gradients of the local objective above, so they
go into the momentum buffer with g (momentum is only the local solver). The persistent
state is the local model itself, not an average that defines a fixed point; the
aggregate uses the round's weights p_i (``federation.weighting``). How the seed
framework's code composes these terms with momentum is unverified.
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, proximal
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, LocalRun, State


@dataclass(frozen=True, kw_only=True)
class DualProxHparams:
    """Attributes:
    mu: pull toward the global model (>= 0).
    lam: pull toward the previous local iterate, lambda (>= 0).
    """

    mu: float = 0.01
    lam: float = 0.01

    def __post_init__(self):
        check(self.mu >= 0, "mu", self.mu, "must be >= 0")
        check(self.lam >= 0, "lam", self.lam, "must be >= 0")


@register
class DualProx(FedAlgorithm):
    name = "dualprox"
    paper = "Lei et al. 2025, arXiv:2511.00469 (seed framework code)"
    Hparams = DualProxHparams
    state_vectors = 1

    def init_client(self, x0: Tensor) -> State:
        """The client's last local model y_i: ``(P,)``, x^t at first participation."""
        return {"y": x0.clone()}

    def init_local(self, run: LocalRun) -> Tensor:
        """y_0 = the client's persistent local model."""
        return run.state["y"]

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """d = g + mu (y - x^t) + lambda (y - y_{k-1}) (lambda term from k = 1 on)."""
        d = proximal(g, run.y, run.broadcast.x, self.hp.mu)
        prev = run.buffers.get("prev")
        return d if prev is None or not self.hp.lam else proximal(d, run.y, prev, self.hp.lam)

    def local_step(self, run: LocalRun, d: Tensor) -> None:
        """Remember y_k (as y_{k-1} of the next step), then FedAvg's step."""
        if self.hp.lam:
            run.buffers["prev"] = run.y.clone()
        super().local_step(run, d)

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """Delta_i = x^t - y_K; the client keeps y_K."""
        return self.message(run, loss), {"y": run.y.clone()}
