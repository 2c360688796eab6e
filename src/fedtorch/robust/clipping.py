"""Centred clipping (Karimireddy, He, Jaggi, ICML 2021, "Learning from History for Byzantine
Robust Optimization", the centred-clipping (CC) rule)::

    v_{l+1} = v_l + (1/M) sum_i clip_tau(x_i - v_l),   clip_tau(z) = z * min(1, tau / ||z||)

for ``l = 0 .. L-1``, starting from ``v_0`` = the previous round's aggregate (the server state
``{"centre": (P,)}``, zeros at the first round) and returning ``v_L``, which becomes the next
centre. Each iteration moves the centre by at most tau (``||(1/M) sum clip|| <= tau``).
The authors' code (epfml/byzantine-robust-optimizer, ``codes/aggregator/clipping.py``, checked)
does the same: zero initial centre, ``n_iter`` iterations, 1/n average, centre kept between
calls. In the paper the x_i are worker momenta; here they are the client pseudo-gradients the
loop hands in. ``weights`` are ignored (the paper's 1/M).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedtorch.robust._checks import check, check_number, check_stack, is_int
from fedtorch.robust.base import Aggregator, RobustAggregate


@dataclass(frozen=True)
class CenteredClipping(Aggregator):
    """Centred clipping with radius ``tau`` and ``iters`` (L) iterations per round.

    Args:
        tau: clipping radius, in the units of ``deltas`` (an L2 norm), ``tau > 0``;
            ``math.inf`` disables clipping (one iteration is then the plain mean).
        iters: L, an int >= 1.

    Raises:
        ValueError: ``robust.tau`` <= 0 or NaN, ``robust.iters`` < 1; a state centre whose
            shape is not ``(P,)``.
    """

    tau: float = 1.0
    iters: int = 1

    def __post_init__(self) -> None:
        check_number("tau", self.tau, "must be > 0 (math.inf for no clipping)", lambda t: t > 0)
        check(is_int(self.iters) and self.iters >= 1, "iters", self.iters, "must be an integer >= 1")

    def init_state(self, num_params: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """``{"centre": zeros(P)}``: the centre of the first round."""
        return {"centre": torch.zeros(num_params, dtype=dtype)}

    def apply(self, deltas: torch.Tensor, weights: torch.Tensor, state=None) -> RobustAggregate:
        """L centred-clipping steps from ``state["centre"]``; returns ``v_L`` and ``{"centre": v_L}``.

        ``state=None`` starts from zeros. Iterations run in float64; ``value`` and the new centre
        are in ``deltas.dtype`` (so a checkpointed centre resumes bit-identically).
        """
        check_stack(deltas, weights)
        num_params = deltas.shape[1]
        centre = (state or {}).get("centre")
        if centre is None:
            centre = torch.zeros(num_params, dtype=deltas.dtype, device=deltas.device)
        if tuple(centre.shape) != (num_params,):
            raise ValueError(f"state['centre'] must have shape ({num_params},), got {tuple(centre.shape)}")
        x = deltas.double()
        v = centre.to(device=deltas.device, dtype=torch.float64)
        for _ in range(self.iters):
            diff = x - v
            scale = (self.tau / diff.norm(dim=1)).clamp(max=1.0)  # tau/0 = inf and inf/r = inf clamp to 1
            v = v + (diff * scale[:, None]).mean(dim=0)
        value = v.to(deltas.dtype)
        return RobustAggregate(value, None, {"centre": value.clone()})
