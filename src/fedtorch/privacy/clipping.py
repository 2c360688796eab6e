"""Per-client L2 clipping of updates (McMahan, Ramage, Talwar, Zhang, ICLR 2018, "Learning
Differentially Private Recurrent Language Models", Algorithm 1, ``ClipFn`` with flat clipping)::

    pi(Delta, S) = Delta * min(1, S / ||Delta||_2)

Clipping bounds every client's contribution to the sum by ``S`` (here ``C``), the L2
sensitivity the Gaussian mechanism (:func:`fedtorch.privacy.gaussian.noisy_mean`) is scaled to.
The same rule clips per-sample gradients in DP-SGD (:mod:`fedtorch.privacy.dpsgd`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fedtorch.privacy._checks import check_clip, check_stack


class ClipOut(NamedTuple):
    """Result of :func:`clip_updates`.

    Attributes:
        clipped: ``(M, P)``, ``deltas``' dtype; row i has L2 norm <= C (up to one rounding
            of the float64 product to ``deltas``' dtype: relative excess <= 1e-6 in float32).
            A row already inside the ball is returned bit for bit.
        norms: ``(M,)`` float64, the L2 norm of each input row (before clipping).
        clipped_mask: ``(M,)`` bool, True where the row was scaled down (``norm > C``).
    """

    clipped: torch.Tensor
    norms: torch.Tensor
    clipped_mask: torch.Tensor


def clip_updates(deltas: torch.Tensor, clip: float) -> ClipOut:
    """Clip each row of ``deltas`` to L2 norm ``clip`` (McMahan et al. 2018, Alg. 1, flat clipping).

    Args:
        deltas: ``(M, P)`` floating tensor, row i = client i's update (M may be 0: an empty
            Poisson sample).
        clip: C > 0, in the units of ``deltas``; ``math.inf`` leaves every row unchanged.

    Returns:
        :class:`ClipOut` ``(clipped (M, P), norms (M,) float64, clipped_mask (M,) bool)``.
        The norm and the scale ``C / ||d||`` are computed in float64, the product rounded
        once to ``deltas``' dtype. Row i depends only on row i.

    Raises:
        ValueError: ``privacy.clip`` not > 0; ``deltas`` not ``(M, P)`` floating, or non-finite.
    """
    check_clip(clip)
    check_stack(deltas)
    wide = deltas.double()
    norms = torch.linalg.vector_norm(wide, dim=1)
    clipped_mask = norms > clip
    scale = (clip / norms.clamp(min=torch.finfo(torch.float64).tiny)).clamp(max=1.0)
    scaled = (wide * scale[:, None]).to(deltas.dtype)
    return ClipOut(torch.where(clipped_mask[:, None], scaled, deltas), norms, clipped_mask)
