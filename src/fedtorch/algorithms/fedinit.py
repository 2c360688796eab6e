"""FedInit — Sun, Shen, Tao, ICCV 2023, "Understanding How Consistency Works in
Federated Learning via Stage-wise Relaxed Initialization", Algorithm 1.

Client state z_i: its local model at the end of its last participation. Each local
stage starts from a relaxed point that moves away from it::

    y_{i,0} = x^t + beta (x^t - z_i)

then runs FedAvg's local SGD and keeps z_i <- y_{i,K}. At a client's first
participation z_i = x^t (the store creates it from the current global model), so
y_{i,0} = x^t: FedAvg. With beta = 0 it is FedAvg bit for bit. Memory: one P-vector
per client, held on the CPU by the client-state store (10^4 clients x P floats never
sit on the accelerator). Default beta = 0.1; the paper treats beta as a tuned
coefficient.
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, LocalRun, State


@dataclass(frozen=True, kw_only=True)
class FedInitHparams:
    """Attributes:
    beta: relaxation coefficient (>= 0).
    """

    beta: float = 0.1

    def __post_init__(self):
        check(self.beta >= 0, "beta", self.beta, "must be >= 0")


@register
class FedInit(FedAlgorithm):
    name = "fedinit"
    paper = "Sun, Shen, Tao, ICCV 2023, Understanding How Consistency Works in Federated Learning via Stage-wise Relaxed Initialization"
    Hparams = FedInitHparams
    state_vectors = 1

    def init_client(self, x0: Tensor) -> State:
        """The client's last local model z_i: ``(P,)``, x^t at first participation."""
        return {"z": x0.clone()}

    def init_local(self, run: LocalRun) -> Tensor:
        """y_0 = x^t + beta (x^t - z_i)."""
        x = run.broadcast.x
        return x + self.hp.beta * (x - run.state["z"])

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """z_i <- y_{i,K}."""
        return self.message(run, loss), {"z": run.y.clone()}
