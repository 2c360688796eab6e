"""FedNAR — Li et al., NeurIPS 2023, "FedNAR: Federated Optimization with Normalized
Annealing Regularization", Algorithm 1.

Weight decay is folded into the gradient and the two are clipped *together*
(co-clipping), so no local step, regularisation included, exceeds eta_t C::

    u = g + lambda y
    y <- y - eta_t u min(1, C / ||u||),     eta_t = eta_l decay^t

The norm is over the whole flat vector. The local step size decays exponentially with
the round t, which anneals the effective weight decay eta_t lambda min(1, C/||u||)
(the paper's "annealing"). ``client.momentum`` and ``client.weight_decay`` still apply
after co-clipping, as ``torch.optim.SGD`` does in the paper's code. With C = inf and
decay = 1 it is SGD with weight decay lambda, bit for bit. (The seed framework only
added an L2 penalty.)

Defaults lambda = 1e-4, C = 10, decay = 0.998, checked against the authors' code
(github.com/ljb121002/FedNAR): ``main.py`` defaults ``--weight_decay 1e-4``,
``--max_norm 10.0``, ``--decay 0.998``; with ``--use_nar`` the weight decay becomes an
L2 term ``0.5 lambda ||y||^2`` added to the loss before ``clip_grad_norm_(max_norm)``
(``util_general.py``), i.e. co-clipping over all parameters as here. The released
scripts (``scripts/*.sh``) pass lambda = 0.05 (CIFAR-10 FedAvg, FedProx, SCAFFOLD),
0.01 (CIFAR-10 FedAdam, FedAvgM, FedExP) or 1e-4 (every Shakespeare script), and never
set ``--max_norm`` or ``--decay``; no script uses 0.1 (this module's earlier default).
Differences from that code: it multiplies eta_l by ``decay`` already before round 0
(``configs.py`` ``get_hyper_round``: eta_t = eta_l decay^(t+1)); here eta_t = eta_l
decay^t. It averages the clients' updates with weights n_i / sum_S n_j (``main.py``),
which is ``federation.weighting=samples`` here.
"""

import math
from dataclasses import dataclass

from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, norm
from fedtorch.algorithms.registry import register
from fedtorch.protocol import LocalRun


@dataclass(frozen=True, kw_only=True)
class FedNARHparams:
    """Attributes:
    weight_decay: lambda, the co-clipped weight decay (>= 0).
    clip: C, the threshold on ||g + lambda y|| (> 0; .inf disables clipping).
    decay: per-round factor of the local step size, in (0, 1].
    """

    weight_decay: float = 1e-4
    clip: float = 10.0
    decay: float = 0.998

    def __post_init__(self):
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(self.clip > 0, "clip", self.clip, "must be > 0 (.inf for no clipping)")
        check(0 < self.decay <= 1, "decay", self.decay, "must be in (0, 1]")


@register
class FedNAR(FedAlgorithm):
    name = "fednar"
    paper = "Li et al., NeurIPS 2023, FedNAR: Federated Optimization with Normalized Annealing Regularization"
    Hparams = FedNARHparams

    def local_step(self, run: LocalRun, d: Tensor) -> None:
        """y <- y - eta_t u min(1, C / ||u||) with u = d + lambda y."""
        u = self.with_weight_decay(run, d, self.hp.weight_decay)
        if not math.isinf(self.hp.clip):
            u = u * (self.hp.clip / norm(u)).clamp(max=1.0)
        self.sgd_step(run, u, run.ctx.lr * self.hp.decay**run.ctx.round)
