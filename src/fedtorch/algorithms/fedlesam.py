"""FedLESAM — Fan et al., ICML 2024, "Locally Estimated Global Perturbations are Better
than Local Perturbations for Federated Sharpness-aware Minimization", Algorithm 1.

Client state x_i^old: the global model it received at its last participation. The
global model's movement since then estimates the global gradient direction, and each
local gradient is taken at a point perturbed along it::

    delta_i = rho (x_i^old - x^t) / ||x_i^old - x^t||     (0 at first participation
                                                           or when the norm is 0)
    g = grad f_i(y + delta_i),   applied at y:  y <- y - eta_l g

One backward pass per step (unlike SAM's two). The norm is over the whole flat vector.
After training, x_i^old <- x^t. With rho = 0 it is FedAvg bit for bit. Memory: one
P-vector per client.

Default rho = 0.1, checked against the authors' code (github.com/MediaBrain-SJTU/FedLESAM):
``train.py`` defaults ``--rho 0.1``; the README's example command uses 0.5 (for
FedLESAM-S) and says rho needs tuning. (The seed framework's 0.01 matches neither.)
Differences from that code, where fedtorch follows the paper: ``server/FedLESAM.py``
broadcasts the last global update x^t - x^{t-1} to every client and
``optimizer/LESAM.py`` perturbs along -(x^t - x^{t-1}), which equals the paper's
x_i^old - x^t only for a client that took part in round t-1; and ``LESAM.first_step``
indexes that flat vector by parameter-tensor number (``g_update[idx]``), so its "norm"
is a sum of single entries and each tensor is shifted by one scalar. The code averages
client models uniformly (``server/server.py``, ``torch.mean``); fedtorch follows
``federation.weighting`` (docs/algorithms.md).
"""

from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, along, check, per_client
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, LocalRun, State


@dataclass(frozen=True, kw_only=True)
class FedLESAMHparams:
    """Attributes:
    rho: perturbation radius (>= 0).
    """

    rho: float = 0.1

    def __post_init__(self):
        check(self.rho >= 0, "rho", self.rho, "must be >= 0")


@register
class FedLESAM(FedAlgorithm):
    name = "fedlesam"
    paper = "Fan et al., ICML 2024, Locally Estimated Global Perturbations are Better than Local Perturbations for Federated Sharpness-aware Minimization"
    Hparams = FedLESAMHparams
    state_vectors = 1

    def init_client(self, x0: Tensor) -> State:
        """The global model this client last saw: ``(P,)``, x^t at first participation."""
        return {"x_old": x0.clone()}

    def init_local(self, run: LocalRun) -> Tensor:
        """y_0 = x^t; fixes delta_i for the round."""
        run.buffers["delta"] = along(run.state["x_old"] - run.broadcast.x, self.hp.rho)
        return run.broadcast.x

    def perturb(self, run: LocalRun) -> Tensor:
        """The gradient is taken at y + delta_i."""
        return run.y + run.buffers["delta"]

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """x_i^old <- x^t."""
        return self.message(run, loss), {"x_old": per_client(run, run.broadcast.x)}
