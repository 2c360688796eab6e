"""Validation shared by the robust aggregators and the attacks: one error format.

Every bad parameter raises ``ValueError("<section>.<key>=<value> is not allowed: <rule>")``
(the format of :func:`fedtorch.algorithms.hparams.check`, kept here so that this package does
not import the algorithm zoo); the config layer turns it into a ConfigError for ``robust.*``
or ``attack.*``.
"""

from __future__ import annotations

import math

import torch


def check(ok: bool, key: str, value, rule: str, section: str = "robust") -> None:
    """Raise ``ValueError("<section>.<key>=<value> is not allowed: <rule>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{section}.{key}={value!r} is not allowed: {rule}")


def is_int(value) -> bool:
    """True for a Python/NumPy integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_count(key: str, value, section: str = "robust") -> None:
    """``value`` must be an int >= 0 (a number of clients)."""
    check(is_int(value) and value >= 0, key, value, "must be an integer >= 0", section)


def check_number(key: str, value, rule: str, ok, section: str = "robust") -> None:
    """``value`` must be a real number (not bool, not NaN) for which ``ok(value)`` holds."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    check(real and ok(value), key, value, rule, section)


def check_stack(deltas: torch.Tensor, weights: torch.Tensor) -> int:
    """Validate an aggregation input and return the number of rows ``M``.

    Args:
        deltas: ``(M, P)`` floating tensor, every entry finite (the loop drops NaN/Inf
            updates before aggregation, as DESIGN.md requires).
        weights: ``(M,)`` non-negative finite aggregation weights.

    Raises:
        ValueError: wrong rank/shape/dtype, no rows, or non-finite entries.
    """
    if deltas.dim() != 2 or not deltas.is_floating_point():
        raise ValueError(f"deltas must be a floating (M, P) tensor, got {tuple(deltas.shape)} {deltas.dtype}")
    m = deltas.shape[0]
    if m == 0:
        raise ValueError("deltas has no rows: a robust aggregate needs at least one client update")
    if tuple(weights.shape) != (m,):
        raise ValueError(f"weights must have shape ({m},) to match deltas {tuple(deltas.shape)}, got {tuple(weights.shape)}")
    if not bool(torch.isfinite(deltas).all()):
        raise ValueError("deltas contains NaN or Inf: drop non-finite updates before robust aggregation")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    return m
