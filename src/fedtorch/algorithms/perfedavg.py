"""Per-FedAvg — Fallah, Mokhtari, Ozdaglar, NeurIPS 2020, "Personalized Federated
Learning with Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach",
Algorithm 1 with its first-order (FO) and Hessian-free (HF) variants.

Clients optimise the MAML objective F_i(y) = f_i(y - alpha grad f_i(y)). One **meta
step** uses two minibatches D, D' (eta_l plays the paper's beta)::

    y~ = y - alpha grad f_i(y; D)                                  (inner, loop step 2m)
    FO: y <- y - eta_l grad f_i(y~; D')                            (outer, loop step 2m+1)
    HF: y <- y - eta_l (I - alpha H_i(y)) grad f_i(y~; D'),
        H_i(y) v ~ (grad f_i(y + delta v; D') - grad f_i(y - delta v; D')) / (2 delta)

Counting: the schedule's K_i (local epochs x ceil(n_i / B), or ``local_steps``) is the
number of meta steps, as tau in the paper's Algorithm 1. ``num_local_steps`` therefore
asks the loop for 2 K_i loop steps (each consumes one minibatch), and the message's
``num_steps`` is the number of meta steps completed (what moved y; ``clients.csv``
shows it). A client with K_i = 1 thus makes one full meta step; before, K_i loop steps
made floor(K_i / 2) meta steps, so K_i = 1 sent a zero update that was still averaged
in with full weight, and an odd K_i wasted its last gradient.

Odd loop counts (a straggler's cut, ``stragglers.*``): when the planned last loop step
is an inner one, that meta step is completed on the same minibatch (D' = D, through
``run.grad_at``), so no work is dropped and every planned meta step moves y. (The
straggler's cut itself is drawn in loop steps, e_i epochs of ceil(n_i / B) each, so a
Per-FedAvg straggler makes about half as many meta steps as its e_i suggests.) Early
stopping is decided after a step, at an epoch boundary: if it stops after an inner step,
that half step cannot be completed and is dropped (one gradient; y and ``num_steps``
are unaffected).

The HF variant estimates the Hessian-vector product on D' (the paper draws a third
batch D''; the loop offers one batch per step). The server averages models as FedAvg
with ``federation.weighting`` (``uniform`` is a plain mean over the selected clients,
which is how Algorithm 1 is usually stated; not re-checked against the paper here, see
docs/algorithms.md). Evaluation personalises: before per-client accuracy is measured,
every client fine-tunes the global model with ``personal_steps`` SGD step(s) of size
alpha on its own training data (one step in the paper). Defaults alpha = 0.01, delta = 1e-3 (unverified against the
paper's experiments; no released code was checked).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from fedtorch.algorithms.base import FedAlgorithm, check
from fedtorch.algorithms.registry import register
from fedtorch.protocol import ClientMessage, LocalRun, Personalization, State

LOOP_STEPS_PER_META_STEP = 2


@dataclass(frozen=True, kw_only=True)
class PerFedAvgHparams:
    """Attributes:
    alpha: inner (adaptation) step size (> 0).
    variant: "fo" (first-order) or "hf" (Hessian-free).
    delta: finite-difference step of the HF Hessian-vector product (> 0).
    personal_steps: fine-tuning steps before per-client evaluation (>= 1).
    """

    alpha: float = 0.01
    variant: str = "fo"
    delta: float = 1e-3
    personal_steps: int = 1

    def __post_init__(self):
        check(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        check(self.variant in ("fo", "hf"), "variant", self.variant, "use fo or hf")
        check(self.delta > 0, "delta", self.delta, "must be > 0")
        check(self.personal_steps >= 1, "personal_steps", self.personal_steps, "must be >= 1")


@register
class PerFedAvg(FedAlgorithm):
    name = "perfedavg"
    aliases = ("per-fedavg",)
    paper = "Fallah, Mokhtari, Ozdaglar, NeurIPS 2020, Personalized Federated Learning with Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach"
    Hparams = PerFedAvgHparams

    def num_local_steps(self, round: int, client_id: int, seed: int, default: int) -> int:
        """2 K_i loop steps for the schedule's K_i meta steps (two minibatches each)."""
        return LOOP_STEPS_PER_META_STEP * default

    def perturb(self, run: LocalRun) -> Tensor | None:
        """Outer (odd) loop steps take the gradient at the adapted point y~."""
        return run.buffers["adapted"] if run.step % 2 else None

    def direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """Inner steps: y~ = y - alpha g (returned as is). Outer steps: g (FO) or
        g - alpha H g (HF), g taken at y~."""
        if run.step % 2 == 0:
            run.buffers["adapted"] = run.y - self.hp.alpha * g
            return g
        return self._outer_direction(run, g)

    def local_step(self, run: LocalRun, d: Tensor) -> None:
        """Outer steps move y (one meta step). An inner step that is the client's planned
        last loop step completes its meta step on the same minibatch (module docstring)."""
        if run.step % 2:
            super().local_step(run, d)
            self._count(run, True)
            return
        last = run.ctx.num_steps - 1 == run.step  # bool, or (C, 1) when vectorised
        if not (bool(last.any()) if isinstance(last, Tensor) else last):
            return
        _, g_out = run.grad_at(run.buffers["adapted"])
        d_out = self._outer_direction(run, g_out)
        if not isinstance(last, Tensor):
            super().local_step(run, d_out)
            self._count(run, True)
            return
        y, mom = run.y.clone(), run.buffers.get("momentum")
        mom = mom.clone() if mom is not None else None
        super().local_step(run, d_out)
        run.y.copy_(torch.where(last, run.y, y))  # only the rows whose last step this is
        if "momentum" in run.buffers:
            run.buffers["momentum"].copy_(torch.where(last, run.buffers["momentum"], mom if mom is not None else 0.0))
        self._count(run, last)

    def _outer_direction(self, run: LocalRun, g: Tensor) -> Tensor:
        """g (FO) or g - alpha H_i(y) g with the finite-difference H on this minibatch (HF)."""
        if self.hp.variant == "fo":
            return g
        dlt = self.hp.delta
        _, g_plus = run.grad_at(run.y + dlt * g)
        _, g_minus = run.grad_at(run.y - dlt * g)
        return g - self.hp.alpha * (g_plus - g_minus) / (2 * dlt)

    @staticmethod
    def _count(run: LocalRun, moved) -> None:
        """Meta steps completed, per client (``(1,)`` or ``(C, 1)`` in ``run.buffers``)."""
        count = run.buffers.get("meta_steps")
        if count is None:
            count = run.buffers["meta_steps"] = run.y.new_zeros(run.y.shape[:-1] + (1,))
        count += moved.to(count.dtype) if isinstance(moved, Tensor) else float(moved)

    def finish_local(self, run: LocalRun, loss: float) -> tuple[ClientMessage, State]:
        """FedAvg's message with ``num_steps`` = the meta steps completed."""
        msg = self.message(run, loss)
        count = run.buffers.get("meta_steps", run.y.new_zeros(run.y.shape[:-1] + (1,)))
        msg.num_steps = count.round().to(torch.int64) if isinstance(run.ctx.num_steps, Tensor) else int(count.item())
        return msg, run.state

    def personalization(self) -> Personalization:
        """``personal_steps`` plain SGD step(s) of size alpha on the client's data."""
        return Personalization(FedAlgorithm(), steps=self.hp.personal_steps, lr=self.hp.alpha)
