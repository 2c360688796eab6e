"""Delta-SGD — Kim, Toghani, Uribe, Kyrillidis, ICLR 2024, "Adaptive Federated Learning
with Auto-Tuned Clients", Algorithm 1.

Every client tunes its own step size from the local smoothness it observes, starting
afresh each round from eta_0 and theta_0::

    y_1     = y_0 - eta_0 g_0(y_0)
    eta_k   = min( gamma ||y_k - y_{k-1}|| / (2 ||g_k(y_k) - g_k(y_{k-1})||),
                   sqrt(1 + delta theta_{k-1}) eta_{k-1} )  + eps          (k >= 1)
    theta_k = eta_k / eta_{k-1}
    y_{k+1} = y_k - eta_k g_k(y_k)

g_k(.) is the gradient on step k's minibatch xi_k: **both gradients of the curvature
estimate are taken on the same minibatch**, the previous iterate y_{k-1} being evaluated
again on xi_k through ``run.grad_at`` (one extra forward/backward per step). Comparing
gradients of two different minibatches (what this module did before) measures mostly
minibatch noise: ||g_k - g_{k-1}|| stays of the order of the noise while ||y_k - y_{k-1}||
shrinks with eta, so eta_k shrinks geometrically (on least squares with batches of 1 to 8
it reached exactly 0 within 100 steps; see tests/test_deltasgd_perfedavg.py).

Checked against the authors' code (github.com/jlylekim/auto-tuned-FL, ``src/update.py``
``update_weights`` and ``src/adsgd.py`` ``Adsgd``): each step runs the previous model
``prev_net`` and the current one on the same ``(images, labels)`` batch, backpropagates
both, forms ``||g - g_prev||`` and ``||y - y_prev||`` over all parameters, and steps with
``min(lr sqrt(1 + amplifier theta), param_dif / (damping grad_dif)) + eps``. Their
``damping = 1`` is gamma = 2 here; ``amplifier`` (``--lr_amplifier``, default 0.02 in
``src/options.py`` and in ``Adsgd``; one CIFAR-100 run in ``run.sh`` uses 0.1) is delta;
``--lr_eps`` defaults to 1e-8. The paper's Algorithm 1 writes sqrt(1 + theta_{k-1}),
i.e. delta = 1 (as shared/ALGORITHMS.md states it; the paper text was not re-read here). Defaults here: delta = 0.02 (the authors' code), eps = 0 (the paper);
``algorithm.amplifier=1`` gives the paper's rule, ``algorithm.eps=1e-8`` the code's.
One difference from that code is kept on purpose: at k = 0 (where y_{-1} does not exist)
the code already multiplies eta_0 by sqrt(1 + delta theta_0); here y_1 = y_0 - eta_0 g_0
as in the paper. The authors average the clients' models uniformly (``src/main.py``
``average_weights``; the sample-weighted line is commented out); fedtorch's server step
follows ``federation.weighting`` (``uniform`` is theirs), see docs/algorithms.md.

Norms are over the whole flat vector (the seed framework took them per tensor). Guards:
where y moved but g_k(y_k) = g_k(y_{k-1}) the curvature bound is +inf and the growth
bound decides; where y did not move (y_k = y_{k-1}: an exact stationary point, 0/0) the
step size is kept, eta_k = eta_{k-1} (the authors' code applies the growth bound in both
cases). On an L-smooth quadratic the curvature bound is >= gamma / (2L), with equality
along the top eigenvector. The rule replaces the client optimiser: ``client.lr`` and ``client.momentum`` are not used
(``client.weight_decay`` is added to both gradients).

Logging: the message carries the client's mean, min and max eta_k over the round
(``step_size``, ``step_size_min``, ``step_size_max``; ``(1,)`` each, ``(C, 1)``
vectorised); the run directory's ``clients.csv`` has them per client and
``metrics.jsonl``/``metrics.csv`` their min / mean / max over the round's clients.
Defaults gamma = 2, eta_0 = 0.2, theta_0 = 1 (the code's ``Adsgd`` defaults, checked; the
paper's per shared/ALGORITHMS.md).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check, norm
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, LocalRun, State


@dataclass(frozen=True, kw_only=True)
class DeltaSGDHparams:
    """Attributes:
    gamma: curvature-bound factor (> 0).
    eta0: first step size of every round (> 0).
    theta0: initial growth ratio theta_0 (>= 0).
    amplifier: delta in the growth bound sqrt(1 + delta theta_{k-1}) eta_{k-1} (>= 0);
        0.02 in the authors' code, 1 in the paper's Algorithm 1.
    eps: added to every eta_k, k >= 1 (>= 0); 1e-8 in the authors' code, 0 in the paper.
    """

    gamma: float = 2.0
    eta0: float = 0.2
    theta0: float = 1.0
    amplifier: float = 0.02
    eps: float = 0.0

    def __post_init__(self):
        check(self.gamma > 0, "gamma", self.gamma, "must be > 0")
        check(self.eta0 > 0, "eta0", self.eta0, "must be > 0")
        check(self.theta0 >= 0, "theta0", self.theta0, "must be >= 0")
        check(self.amplifier >= 0, "amplifier", self.amplifier, "must be >= 0 (1 = the paper's rule, 0.02 = the authors' code)")
        check(self.eps >= 0, "eps", self.eps, "must be >= 0")


@dataclass
class DeltaSGDMessage(ClientMessage):
    """A :class:`ClientMessage` plus the round's step sizes eta_k of this client (for the
    log): ``step_size`` their mean, ``step_size_min`` / ``step_size_max`` their extremes;
    ``(1,)`` each (``(M, 1)`` stacked)."""

    step_size: Tensor = None
    step_size_min: Tensor = None
    step_size_max: Tensor = None


@register
class DeltaSGD(FedAlgorithm):
    name = "deltasgd"
    aliases = ("delta-sgd", "delta_sgd")
    paper = "Kim, Toghani, Uribe, Kyrillidis, ICLR 2024, Adaptive Federated Learning with Auto-Tuned Clients"
    Hparams = DeltaSGDHparams

    def local_step(self, run: LocalRun, d: Tensor) -> None:
        """y_{k+1} = y_k - eta_k g_k with eta_k from the rule above; for k >= 1 it calls
        ``run.grad_at(y_{k-1})`` once (the previous iterate on this step's minibatch)."""
        g = self.with_weight_decay(run, d, self.local.weight_decay)
        b = run.buffers
        if "eta" not in b:
            eta = torch.full_like(norm(run.y), self.hp.eta0)
            b["theta"] = torch.full_like(eta, self.hp.theta0)
            b["eta_sum"], b["eta_min"], b["eta_max"] = torch.zeros_like(eta), eta.clone(), eta.clone()
        else:
            y_prev = b["y_prev"]
            g = g.clone()  # d may be the executor's gradient buffer, which grad_at overwrites
            _, g_prev = run.grad_at(y_prev)  # g_k(y_{k-1}): same minibatch as g
            g_prev = g_prev + self.local.weight_decay * y_prev if self.local.weight_decay else g_prev
            dy, dg = norm(run.y - y_prev), norm(g - g_prev)
            tiny = torch.finfo(dg.dtype).tiny
            curvature = torch.where(dg > 0, self.hp.gamma * dy / (2 * dg.clamp(min=tiny)), torch.full_like(dg, torch.inf))
            growth = (1 + self.hp.amplifier * b["theta"]).sqrt() * b["eta"]
            eta = torch.minimum(curvature, growth) + self.hp.eps
            eta = torch.where(dy > 0, eta, b["eta"])  # y did not move: no new information
            b["theta"] = torch.where(b["eta"] > 0, eta / b["eta"].clamp(min=tiny), b["theta"])
            torch.minimum(b["eta_min"], eta, out=b["eta_min"])
            torch.maximum(b["eta_max"], eta, out=b["eta_max"])
        b["eta"], b["y_prev"] = eta, run.y.clone()
        b["eta_sum"] += eta
        run.y.sub_(eta * g)

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """FedAvg's message plus the round's mean / min / max step size (zeros when the
        client took no step)."""
        base = self.message(run, loss)
        zeros = torch.zeros_like(norm(run.y))
        steps = run.ctx.num_steps
        steps = steps.clamp(min=1).to(zeros.dtype) if isinstance(steps, Tensor) else max(steps, 1)
        b = run.buffers
        return DeltaSGDMessage(
            **vars(base),
            step_size=b.get("eta_sum", zeros) / steps,
            step_size_min=b.get("eta_min", zeros).clone(),
            step_size_max=b.get("eta_max", zeros).clone(),
        ), run.state
