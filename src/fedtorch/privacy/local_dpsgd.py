"""Local DP-SGD as an executor's gradient source: example-level privacy of each client's data
(Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, CCS 2016, Algorithm 1), on the
client, under any federated algorithm.

At each local step of client i (n_i samples, batch size B):

* the lot is a Poisson sample of the client's data: each sample independently with
  probability ``q_i = min(1, B / n_i)`` (``generator(seed, round, client, "dp_sgd_lots")``),
  so the expected lot size is ``L_i = q_i n_i`` (B, or n_i for a client smaller than B);
* every gradient the algorithm takes on that lot (at y, and at other points through
  ``run.grad_at``: SAM's ascent point, Delta-SGD's previous iterate, ...) is
  ``(sum_j clip_C(g_j) + N(0, sigma^2 C^2 I)) / L_i`` (:func:`~fedtorch.privacy.dpsgd.dp_sgd_step`,
  noise from ``generator(seed, round, client, "dp_sgd_noise")``).

Accounting (:mod:`fedtorch.federation.local_privacy`): a step that queries its lot m times
is m Gaussian mechanisms of sensitivity C on the same Poisson sample, i.e. one sampled
Gaussian mechanism with noise multiplier ``sigma / sqrt(m)``. The run's m is the most
queries an algorithm makes in one step (:attr:`LocalDPSGD.queries_per_step`, measured at
start-up); a step that would query more raises instead of being under-counted. Client
sampling is not credited (the bound holds for a client that takes part in every round),
and the reported training loss is a metric, not a private release.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedtorch.flat import FlatModule
from fedtorch.privacy._checks import check, check_clip, check_sigma, is_int
from fedtorch.privacy.dpsgd import dp_sgd_step
from fedtorch.seeding import generator


def lot_rate(num_samples: int, batch_size: int) -> float:
    """``q_i = min(1, B / n_i)``, the Poisson rate of client i's lots."""
    return min(1.0, batch_size / num_samples)


@dataclass(frozen=True)
class LocalDPSGD:
    """The gradient source of local DP-SGD (module docstring).

    Attributes:
        clip: C > 0, the L2 norm each per-sample gradient is clipped to.
        noise_multiplier: sigma >= 0; the noise std on the clipped sum is sigma C.
        queries_per_step: m >= 1, the most gradients one step may take on its lot (what
            the accountant charges per step).
        serial_only: why the vectorised executor runs it client by client.

    Raises:
        ValueError: ``privacy.clip`` / ``privacy.noise_multiplier`` out of range, or m < 1.
    """

    clip: float
    noise_multiplier: float
    queries_per_step: int = 1
    serial_only = "local DP-SGD takes per-sample gradients of each client's Poisson lots"

    def __post_init__(self) -> None:
        check_clip(self.clip)
        check_sigma(self.noise_multiplier, self.clip)
        check(is_int(self.queries_per_step) and self.queries_per_step >= 1, "queries_per_step", self.queries_per_step,
              "an integer >= 1")

    def for_client(self, ctx, device: torch.device) -> "_ClientLots":
        """Client ``ctx.client_id``'s lots and noisy gradients in round ``ctx.round``."""
        return _ClientLots(self, ctx, torch.device(device))


class _ClientLots:
    def __init__(self, source: LocalDPSGD, ctx, device: torch.device):
        self.source = source
        self.lots = generator(ctx.seed, ctx.round, ctx.client_id, "dp_sgd_lots", device=device)
        self.noise = generator(ctx.seed, ctx.round, ctx.client_id, "dp_sgd_noise", device=device)
        self.lot_size = 1.0
        self.queries = 0
        self.most_queries = 0  # the most gradients any step took so far

    def batches(self, indices: torch.Tensor, batch_size: int, num_steps: int):
        q = lot_rate(indices.numel(), batch_size)
        self.lot_size = q * indices.numel()
        for _ in range(num_steps):
            yield indices[torch.rand(indices.numel(), generator=self.lots, device=indices.device) < q]

    def new_step(self) -> None:
        self.queries = 0

    def loss_and_grad(self, replica: FlatModule, x: torch.Tensor, y: torch.Tensor, loss_fn):
        self.queries += 1
        self.most_queries = max(self.most_queries, self.queries)
        if self.queries > self.source.queries_per_step:
            raise RuntimeError(f"local DP-SGD was accounted for {self.source.queries_per_step} gradient(s) per local step, "
                               "but this step takes more: the privacy accounting would be wrong")
        s = self.source
        return dp_sgd_step(replica.module, replica.layout, replica.params.detach(), x, y, loss_fn, s.clip,
                           s.noise_multiplier, self.noise, self.lot_size)
