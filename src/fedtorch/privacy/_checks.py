"""Validation shared by :mod:`fedtorch.privacy`: one error format for bad parameters.

Every bad parameter raises ``ValueError("privacy.<key>=<value> is not allowed: <rule>")``
(the format of :func:`fedtorch.algorithms.hparams.check`, repeated here so that this package
imports neither the algorithm zoo nor its sibling transform packages); the config layer turns
it into a ConfigError for the ``privacy.*`` key.
"""

from __future__ import annotations

import math

import torch


def check(ok: bool, key: str, value, rule: str) -> None:
    """Raise ``ValueError("privacy.<key>=<value> is not allowed: <rule>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"privacy.{key}={value!r} is not allowed: {rule}")


def is_real(value) -> bool:
    """True for a Python/NumPy real number that is neither a bool nor NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def is_int(value) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_clip(value, key: str = "clip") -> None:
    """An L2 clipping norm: a real number > 0 (``math.inf`` means no clipping)."""
    check(is_real(value) and value > 0, key, value, "an L2 norm > 0 (math.inf for no clipping)")


def check_sigma(value, clip: float, key: str = "noise_multiplier") -> None:
    """A noise multiplier: finite and >= 0, and 0 unless the clip norm is finite."""
    check(is_real(value) and 0 <= value < math.inf, key, value, "a finite noise multiplier >= 0")
    check(value == 0 or clip < math.inf, key, value,
          f"noise sigma*C needs a finite clip norm C (got C={clip!r}); use sigma=0 without clipping")


def check_rate(value, key: str = "sampling_rate") -> None:
    """A sampling probability in (0, 1]."""
    check(is_real(value) and 0 < value <= 1, key, value, "a probability in (0, 1]")


def check_generator(gen, like: torch.Tensor | None = None) -> None:
    """``gen`` must be a ``torch.Generator`` (on ``like``'s device when given)."""
    if not isinstance(gen, torch.Generator):
        raise ValueError(f"gen must be a torch.Generator (never the global RNG), got {type(gen).__name__}")
    if like is not None and torch.device(gen.device).type != like.device.type:
        raise ValueError(f"gen is on {gen.device} but the tensor is on {like.device}")


def check_stack(deltas) -> tuple[int, int]:
    """Return ``(M, P)`` of a ``(M, P)`` floating tensor with finite entries (M may be 0).

    Raises:
        ValueError: not a 2-D floating tensor, or a NaN/Inf entry (the loop drops such
            updates before any transform, as DESIGN.md requires).
    """
    if not (isinstance(deltas, torch.Tensor) and deltas.dim() == 2 and deltas.is_floating_point()):
        got = f"{tuple(deltas.shape)} {deltas.dtype}" if isinstance(deltas, torch.Tensor) else type(deltas).__name__
        raise ValueError(f"deltas must be a floating (M, P) tensor, got {got}")
    if not bool(torch.isfinite(deltas).all()):
        raise ValueError("deltas contains NaN or Inf: drop non-finite updates before clipping")
    return deltas.shape[0], deltas.shape[1]
