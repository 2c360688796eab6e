"""Attack simulation: what a malicious client sends, and which clients are malicious.

Model-poisoning attacks replace a malicious client's honest update row ``delta (P,)`` (or a
``(K, P)`` stack of such rows) before it leaves the client:

    sign flip     -scale * delta          (scale > 0; scale = 1 is the plain sign flip)
    scaled        factor * delta          (any finite factor; "boosting" for factor > 1)
    gaussian      N(0, sigma^2 I)         drawn from the client's own generator; delta ignored

The data attack flips a malicious client's training labels ``y -> C - 1 - y`` before local
training. Checked in Karimireddy, He, Jaggi's code (epfml/byzantine-robust-optimizer): its
label flipping is ``9 - y`` on CIFAR-10 (``codes/attacks/labelflipping.py``) and its "bit
flipping" worker sends ``-gradient`` (``codes/attacks/bitflipping.py``), our sign flip with scale 1.

Attackers are a fixed set of clients chosen once per run from a generator seeded by
``(seed, "attackers")``, independent of the round. All functions are pure; the Gaussian attack
uses only the generator it is given (never the global RNG), so row i depends on row i and
``gens[i]`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from fedtorch.robust._checks import check, check_number, is_int
from fedtorch.seeding import generator


def sign_flip(delta: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``-scale * delta`` (same shape and dtype)."""
    return -scale * delta


def scaled(delta: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor * delta`` (same shape and dtype)."""
    return factor * delta


def gaussian_noise(delta: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """``sigma * N(0, I)`` shaped like ``delta``, drawn from ``gen`` (on ``delta``'s device)."""
    return sigma * torch.randn(delta.shape, generator=gen, dtype=delta.dtype, device=delta.device)


def flip_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``num_classes - 1 - labels`` for an integer label tensor with values in ``[0, C)``.

    Raises:
        ValueError: non-integer dtype, or a label outside ``[0, num_classes)``.
    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return (num_classes - 1) - labels


def attacker_count(num_clients: int, fraction: float) -> int:
    """``floor(fraction * num_clients)``, guarded against binary rounding (0.29 * 100 -> 29)."""
    return min(num_clients, math.floor(fraction * num_clients + 1e-9))


def attackers(num_clients: int, fraction: float, seed: int) -> torch.Tensor:
    """The malicious clients of a run: ``floor(fraction * N)`` distinct ids, sorted, int64.

    Drawn as the first ids of ``randperm(N)`` from ``fedtorch.seeding.generator(seed,
    "attackers")``: fixed for the whole run (no round enters), independent of sampling.

    Raises:
        ValueError: ``attack.num_clients`` < 1 or ``attack.fraction`` outside ``[0, 1]``.
    """
    check(is_int(num_clients) and num_clients >= 1, "num_clients", num_clients, "must be an integer >= 1", "attack")
    check_number("fraction", fraction, "must be in [0, 1]", lambda q: 0 <= q <= 1, "attack")
    order = torch.randperm(num_clients, generator=generator(seed, "attackers"))
    return torch.sort(order[: attacker_count(num_clients, fraction)]).values


@dataclass(frozen=True)
class SignFlip:
    """Send ``-scale * delta``. Raises ValueError unless ``attack.scale > 0``."""

    target: ClassVar[str] = "update"
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_number("scale", self.scale, "must be a finite number > 0", lambda s: 0 < s < math.inf, "attack")

    def apply(self, delta: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """The malicious row(s) for honest ``delta``; ``gen`` unused."""
        return sign_flip(delta, self.scale)


@dataclass(frozen=True)
class Scale:
    """Send ``factor * delta``. Raises ValueError unless ``attack.factor`` is finite."""

    target: ClassVar[str] = "update"
    factor: float = 10.0

    def __post_init__(self) -> None:
        check_number("factor", self.factor, "must be a finite number", math.isfinite, "attack")

    def apply(self, delta: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """The malicious row(s) for honest ``delta``; ``gen`` unused."""
        return scaled(delta, self.factor)


@dataclass(frozen=True)
class GaussianNoise:
    """Send ``N(0, sigma^2 I)`` from the client's generator. Raises ValueError unless ``attack.sigma >= 0``."""

    target: ClassVar[str] = "update"
    sigma: float = 1.0

    def __post_init__(self) -> None:
        check_number("sigma", self.sigma, "must be a finite number >= 0", lambda s: 0 <= s < math.inf, "attack")

    def apply(self, delta: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Noise shaped like ``delta``. Raises ValueError when ``gen`` is None (no global RNG)."""
        if gen is None:
            raise ValueError("the gaussian attack needs the client's torch.Generator (the global RNG is never used)")
        return gaussian_noise(delta, self.sigma, gen)


@dataclass(frozen=True)
class LabelFlip:
    """Train on labels ``C - 1 - y``. Raises ValueError unless ``attack.num_classes >= 2``."""

    target: ClassVar[str] = "data"
    num_classes: int = 10

    def __post_init__(self) -> None:
        ok = is_int(self.num_classes) and self.num_classes >= 2
        check(ok, "num_classes", self.num_classes, "must be an integer >= 2", "attack")

    def apply_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The flipped labels of a malicious client's samples."""
        return flip_labels(labels, self.num_classes)


def poison(
    deltas: torch.Tensor,
    malicious: torch.Tensor,
    attack: SignFlip | Scale | GaussianNoise,
    gens: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """Replace the malicious rows of ``deltas (M, P)`` by ``attack.apply(row, gens[i])``.

    Args:
        deltas: honest updates of the cohort, ``(M, P)``; not modified.
        malicious: ``(M,)`` bool, True where row i's client is an attacker.
        attack: an update attack (``target == "update"``).
        gens: one generator (or None for deterministic attacks) per row.

    Returns:
        A new ``(M, P)`` tensor; honest rows are bit-identical copies.

    Raises:
        ValueError: ``malicious`` or ``gens`` of the wrong length, or a data attack.
    """
    m = deltas.shape[0]
    if tuple(malicious.shape) != (m,) or malicious.dtype != torch.bool:
        got = f"{tuple(malicious.shape)} {malicious.dtype}"
        raise ValueError(f"malicious must be a bool tensor of shape ({m},), got {got}")
    if len(gens) != m:
        raise ValueError(f"need one generator per row: {m} rows, {len(gens)} generators")
    if getattr(attack, "target", None) != "update":
        raise ValueError(f"{type(attack).__name__} is not an update attack (apply it to the client's labels instead)")
    out = deltas.clone()
    for i in torch.nonzero(malicious).flatten().tolist():
        out[i] = attack.apply(deltas[i], gens[i])
    return out
