"""FedInit — Sun, Shen, Tao, ICCV 2023, "Understanding How Consistency Works in
Federated Learning via Stage-wise Relaxed Initialization", Algorithm 1.

Client state z_i: its local model at the end of its last participation. Each local
stage starts from a relaxed point that moves away from it::

    y_{i,0} = x^t + beta (x^t - z_i)

then runs FedAvg's local SGD and keeps z_i <- y_{i,K}. The pseudo-gradient the server
optimiser receives depends on ``delta_from``:

* ``"start"`` (default, the authors' code): Delta_i = y_{i,0} - y_{i,K}, the local
  progress only, so x^{t+1} = x^t - eta_g sum_i p_i (y_{i,0} - y_{i,K}); the relaxation
  offset beta (x^t - z_i) stays on the client.
* ``"global"``: Delta_i = x^t - y_{i,K} (FedAvg's message), so with eta_g = 1 the new
  global model is the average of the clients' end models, offsets included.

Checked against the authors' code, FL-Simulator by the first author
(github.com/woodenchild95/FL-Simulator; FedInit is FedAvg with ``--use-RI``):
``server/FedAvg.py`` ``process_for_communication`` sends x^t + beta (x^t - z_i);
``client/client.py`` returns ``local_update_list`` = y_K minus the point it received;
``server/server.py`` averages those updates uniformly (``torch.mean``) and
``global_update`` adds eta_g times the mean to x^t: the ``"start"`` rule. The same
``server.py`` initialises every z_i to the initial model x^0 (``init_par_list.repeat``),
so there a client's first stage starts at x^t + beta (x^t - x^0); here z_i = x^t at
first participation (the store creates it from the current global model), so
y_{i,0} = x^t: FedAvg. ``train.py`` defaults ``--beta 0.1``, as here. The paper's own
algorithm box was not checked here. With beta = 0 both rules are FedAvg bit for bit.
Memory: one P-vector per client, held on the CPU by the client-state store (10^4
clients x P floats never sit on the accelerator).
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
    delta_from: "start" (Delta_i = y_{i,0} - y_{i,K}, the authors' code) or "global"
        (Delta_i = x^t - y_{i,K}).
    """

    beta: float = 0.1
    delta_from: str = "start"

    def __post_init__(self):
        check(self.beta >= 0, "beta", self.beta, "must be >= 0")
        check(self.delta_from in ("start", "global"), "delta_from", self.delta_from, "use start or global")


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
        """y_0 = x^t + beta (x^t - z_i); kept in ``run.buffers["start"]`` for ``"start"``."""
        x = run.broadcast.x
        y0 = x + self.hp.beta * (x - run.state["z"])
        if self.hp.delta_from == "start":
            run.buffers["start"] = y0
        return y0

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """Delta_i per ``delta_from``; z_i <- y_{i,K}."""
        msg = self.message(run, loss)
        if self.hp.delta_from == "start":
            msg.delta = run.buffers["start"] - run.y
        return msg, {"z": run.y.clone()}
