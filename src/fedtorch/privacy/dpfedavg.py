"""DP-FedAvg's server-side transform: clip, noise, fixed-denominator mean, adaptive clip norm.

The pieces of :mod:`fedtorch.privacy` in the order of McMahan et al. (ICLR 2018, Alg. 1) and
Andrew et al. (NeurIPS 2021, Alg. 1 with DP-FedAvg)::

    ids          = sample(gen_sample)                    Poisson(q) or fixed M of N
    (loop trains the clients in ids and stacks their updates as deltas (M, P))
    out          = clip_updates(deltas, C)               every row norm <= C
    mean         = noisy_mean(out.clipped, z_Delta, C, W_hat, gen)
    C, b_bar     = adaptive.apply({C}, out.norms, W_hat, gen)    (only with adaptive clipping)
    state_acc    = accountant.step(state_acc)            epsilon(state_acc) for the metrics

``z`` (``noise_multiplier``) is the total noise multiplier that is accounted; the update is
noised with ``z_Delta = z`` without adaptive clipping and ``(z^-2 - (2 sigma_b)^-2)^(-1/2)``
with it. The mean replaces the loop's weighted average of the updates (the algorithm's server
rule then treats it as the aggregated pseudo-gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from fedtorch.privacy._checks import check, check_clip, check_sigma
from fedtorch.privacy.accounting import Accountant
from fedtorch.privacy.adaptive import AdaptiveClip
from fedtorch.privacy.clipping import clip_updates
from fedtorch.privacy.gaussian import expected_clients, noisy_mean
from fedtorch.privacy.sampling import fixed_sample, poisson_sample


class DPAggregate(NamedTuple):
    """Result of :meth:`DPFedAvg.apply`.

    Attributes:
        mean: ``(P,)``, the private mean update, ``deltas``' dtype.
        state: ``{"clip": C}`` for the next round (0-dim float64).
        unclipped_fraction: the noisy b_bar (adaptive clipping; private), else None.
        clipped_mask: ``(M,)`` bool, which updates were scaled down; NOT private (the server
            must not publish it; for debugging and tests).
    """

    mean: torch.Tensor
    state: dict[str, torch.Tensor]
    unclipped_fraction: float | None
    clipped_mask: torch.Tensor


@dataclass(frozen=True)
class DPFedAvg:
    """DP-FedAvg (McMahan et al. 2018) with optional adaptive clipping (Andrew et al. 2021).

    Args:
        noise_multiplier: z >= 0, the accounted noise multiplier.
        clip: C > 0, the clip norm (the initial one with ``adaptive``).
        num_clients: N, the population size.
        sampling_rate: q in (0, 1]; fixed-size sampling takes M = q N clients.
        sampling: ``"poisson"`` or ``"fixed"``.
        adaptive: an :class:`AdaptiveClip`, or None for a fixed C.

    Raises:
        ValueError: any ``privacy.*`` parameter out of range, including a count noise too
            small for z (``privacy.clipped_count_stddev``).
    """

    noise_multiplier: float
    clip: float
    num_clients: int
    sampling_rate: float
    sampling: str = "poisson"
    adaptive: AdaptiveClip | None = None

    def __post_init__(self) -> None:
        check_clip(self.clip)
        check_sigma(self.noise_multiplier, self.clip)
        expected_clients(self.sampling, self.num_clients, self.sampling_rate)
        check(self.adaptive is None or isinstance(self.adaptive, AdaptiveClip), "adaptive", self.adaptive,
              "an AdaptiveClip or None")
        self.update_noise_multiplier  # noqa: B018 -- validates sigma_b against z now, not at round 1

    @property
    def denominator(self) -> float:
        """``W_hat``: q N (Poisson) or M (fixed)."""
        return expected_clients(self.sampling, self.num_clients, self.sampling_rate)

    @property
    def update_noise_multiplier(self) -> float:
        """z_Delta, the noise multiplier of the update's Gaussian mechanism."""
        return self.adaptive.update_noise_multiplier(self.noise_multiplier) if self.adaptive else float(self.noise_multiplier)

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        """This round's client ids, sorted (possibly empty with Poisson sampling)."""
        if self.sampling == "poisson":
            return poisson_sample(self.num_clients, self.sampling_rate, gen)
        return fixed_sample(self.num_clients, int(self.denominator), gen)

    def init_state(self) -> dict[str, torch.Tensor]:
        """``{"clip": C}``, 0-dim float64 (constant without adaptive clipping)."""
        check(self.clip < float("inf") or self.adaptive is None, "clip", self.clip, "adaptive clipping needs a finite C")
        return {"clip": torch.tensor(float(self.clip), dtype=torch.float64)}

    def apply(self, deltas: torch.Tensor, state: dict[str, torch.Tensor], gen: torch.Generator) -> DPAggregate:
        """Clip ``deltas (M, P)`` to ``state["clip"]``, noise the sum, divide by W_hat, adapt C.

        ``gen`` draws P normals for the update, then (adaptive) one for the count.

        Raises:
            ValueError: a malformed state or the errors of the pieces.
        """
        clip_t = state.get("clip") if isinstance(state, dict) else None
        if not (isinstance(clip_t, torch.Tensor) and clip_t.dim() == 0 and clip_t.dtype == torch.float64):
            raise ValueError(f"state must be {{'clip': 0-dim float64 tensor}} (from init_state), got {state!r}")
        clip = float(clip_t)
        out = clip_updates(deltas, clip)
        mean = noisy_mean(out.clipped, self.update_noise_multiplier, clip, self.denominator, gen)
        if self.adaptive is None:
            return DPAggregate(mean, {"clip": clip_t.clone()}, None, out.clipped_mask)
        new_state, b_bar = self.adaptive.apply({"clip": clip_t}, out.norms, self.denominator, gen)
        return DPAggregate(mean, new_state, b_bar, out.clipped_mask)

    def accountant(self, delta: float, accountant: str = "rdp") -> Accountant:
        """The :class:`Accountant` of this mechanism (total z, q, sampling, N)."""
        return Accountant(self.noise_multiplier, self.sampling_rate, delta, self.sampling, accountant, self.num_clients)
