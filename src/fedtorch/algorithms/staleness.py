"""Staleness weights s(tau) of asynchronous server rules: pure functions of the staleness.

tau = server version when an update arrives minus the version its client started from
(an int >= 0). Xie, Koyejo, Gupta 2019, "Asynchronous Federated Optimization", Sec. 3
(FedAsync's adaptive mixing weight alpha_t = alpha * s(t - tau)) define::

    constant:          s(tau) = 1
    polynomial(a):     s(tau) = (tau + 1) ** (-a)
    hinge(a, b):       s(tau) = 1                        if tau <= b
                                1 / (a (tau - b) + 1)    otherwise

FedBuff (Nguyen et al., AISTATS 2022) scales each buffered update by 1 / sqrt(1 + tau),
which is ``polynomial(0.5)``. FedLab's ``adapt_alpha`` offers the same three functions.
"""

from __future__ import annotations

from typing import Callable

from fedtorch.algorithms.hparams import check


def constant(tau: int, a: float = 0.0, b: float = 0.0) -> float:
    """s(tau) = 1: no discount for stale updates (``a``, ``b`` unused)."""
    return 1.0


def polynomial(tau: int, a: float, b: float = 0.0) -> float:
    """s(tau) = (tau + 1)^(-a); a = 0.5 is FedBuff's 1/sqrt(1 + tau) (``b`` unused)."""
    return float((tau + 1) ** (-a))


def hinge(tau: int, a: float, b: float) -> float:
    """s(tau) = 1 for tau <= b, else 1 / (a (tau - b) + 1)."""
    return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)


STALENESS: dict[str, Callable[[int, float, float], float]] = {
    "constant": constant,
    "polynomial": polynomial,
    "hinge": hinge,
}


def staleness_weight(name: str, tau: int, a: float, b: float) -> float:
    """s(tau) for the function called ``name`` with parameters ``a`` and ``b``.

    Raises:
        ValueError: unknown ``name`` or negative ``tau``.
    """
    if name not in STALENESS:
        raise ValueError(f"unknown staleness function {name!r}; known: {', '.join(sorted(STALENESS))}")
    if tau < 0:
        raise ValueError(f"staleness must be >= 0, got {tau}")
    return STALENESS[name](tau, a, b)


def check_staleness_hparams(name: str, a: float, b: float) -> None:
    """Validate a staleness choice for an algorithm's ``Hparams``.

    Raises:
        ValueError: ``algorithm.staleness`` unknown, or ``staleness_a`` / ``staleness_b`` < 0.
    """
    check(name in STALENESS, "staleness", name, f"use one of {', '.join(sorted(STALENESS))}")
    for key, value in (("staleness_a", a), ("staleness_b", b)):
        check(value >= 0, key, value, "must be >= 0")
