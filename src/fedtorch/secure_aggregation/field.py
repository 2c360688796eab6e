"""Quantisation of client updates into the ring Z_{2^bits}, and decoding of the field sum.

SecAgg (Bonawitz et al. CCS 2017, Sec. 3 and Sec. 4) sums vectors of elements of Z_R; masks
cancel only in exact modular arithmetic, so float updates are first mapped to integers. The
ring here is ``Z_{2^bits}`` (not a prime field): the PRG's uniform 64-bit words reduced by a
bit mask are then exactly uniform (no modular bias), and int64 arithmetic followed by
``& (2^bits - 1)`` is exact. An element ``v`` is read as the signed integer ``v - 2^bits``
when ``v >= 2^(bits-1)`` (two's complement), so negative updates need no offset.

Encoding of client i's row ``x_i (P,)`` with integer weight ``w_i`` (Flower's SecAgg+ uses the
same clip / quantise / modulus split; here it is exact end to end):

1. clip: ``x <- clamp(x, -clip_range, clip_range)``;
2. quantise to ``q in [-L, L]``, ``L = 2^(quant_bits-1) - 1``, step ``delta = clip_range / L``:
   deterministic ``q = round_half_even(x / delta)``, or stochastic (unbiased)
   ``q = floor(x / delta + u)``, ``u ~ U[0, 1)`` drawn from the row's ``torch.Generator``;
3. weight: ``w_i * q`` (the client pre-multiplies by its integer weight, e.g. its sample count);
4. append ``w_i`` as coordinate ``P``, so the secure sum also carries ``sum_i w_i`` and the
   server needs no plain per-client weight;
5. reduce mod ``2^bits``.

The field sum of the surviving rows decodes to ``sum_i w_i q_i * delta`` (float64, exact
given the integers) and the total weight; a weighted mean is ``sum / total_weight``. The
capacity check ``sum_i w_i * L <= 2^(bits-1) - 1`` guarantees no wrap-around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

MAX_BITS = 53  # |signed sum| < 2^52: int64 -> float64 conversion in decode_sum is exact


def check(ok: bool, key: str, value, rule: str) -> None:
    """Raise ``ValueError("secagg.<key>=<value> is not allowed: <rule>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"secagg.{key}={value!r} is not allowed: {rule}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class FieldQuantizer:
    """Clip, quantise and embed float updates into ``Z_{2^bits}`` (see the module docstring).

    Args:
        bits: field size, modulus ``2^bits``; an int in [2, 53].
        quant_bits: quantisation resolution, levels ``q in [-(2^(quant_bits-1)-1), ...]``; an
            int in [2, bits].
        clip_range: ``r > 0``; every coordinate is clipped to ``[-r, r]``.
        stochastic: stochastic (unbiased) rounding, needs one ``torch.Generator`` per row;
            ``False``: deterministic round-half-to-even.

    Raises:
        ValueError: naming the parameter (``secagg.<name>``), its value and what is allowed.
    """

    bits: int = 32
    quant_bits: int = 16
    clip_range: float = 1.0
    stochastic: bool = False

    def __post_init__(self):
        check(_is_int(self.bits) and 2 <= self.bits <= MAX_BITS, "bits", self.bits, f"an int in [2, {MAX_BITS}]")
        check(_is_int(self.quant_bits) and 2 <= self.quant_bits <= self.bits, "quant_bits", self.quant_bits,
              f"an int in [2, bits={self.bits}]")
        ok = isinstance(self.clip_range, (int, float)) and not isinstance(self.clip_range, bool)
        check(ok and math.isfinite(self.clip_range) and self.clip_range > 0, "clip_range", self.clip_range,
              "a finite number > 0")
        check(isinstance(self.stochastic, bool), "stochastic", self.stochastic, "true or false")

    @property
    def modulus(self) -> int:
        """``2^bits``."""
        return 1 << self.bits

    @property
    def mask(self) -> int:
        """``2^bits - 1``: ``v & mask`` is ``v mod 2^bits`` for any int64 ``v`` (two's complement)."""
        return (1 << self.bits) - 1

    @property
    def levels(self) -> int:
        """``L = 2^(quant_bits-1) - 1``, the largest |q|."""
        return (1 << (self.quant_bits - 1)) - 1

    @property
    def step(self) -> float:
        """The quantisation step ``delta = clip_range / L`` (float64)."""
        return float(self.clip_range) / self.levels

    def quantize(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Clip and quantise one row: ``x (P,)`` float32 -> ``q (P,)`` int64 in ``[-L, L]``.

        Raises:
            ValueError: ``x`` has a NaN/Inf, or ``stochastic`` and ``gen`` is not a Generator.
        """
        if not bool(torch.isfinite(x).all()):
            raise ValueError("secure aggregation input has NaN/Inf values; reject the update before encoding")
        z = x.to(torch.float64).clamp(-self.clip_range, self.clip_range) / self.step
        if self.stochastic:
            if not isinstance(gen, torch.Generator):
                raise ValueError(f"stochastic rounding needs a torch.Generator per row, got {type(gen).__name__}")
            z = torch.floor(z + torch.rand(z.shape, generator=gen, dtype=torch.float64))
        else:
            z = torch.round(z)
        return z.clamp(-self.levels, self.levels).to(torch.int64)

    def encode(self, x: torch.Tensor, weight: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """One client's field vector: ``(P + 1,)`` int64 in ``[0, 2^bits)``, ``[w*q, w] mod 2^bits``."""
        q = self.quantize(x, gen) * int(weight)
        return torch.cat([q, torch.tensor([int(weight)], dtype=torch.int64)]) & self.mask

    def check_capacity(self, weights: Sequence[int]) -> None:
        """Raise ValueError unless ``sum(weights) * L <= 2^(bits-1) - 1`` (no wrap-around of the sum)."""
        total = sum(int(w) for w in weights)
        limit = (1 << (self.bits - 1)) - 1
        if total * max(self.levels, 1) > limit:
            need = math.ceil(math.log2(total * self.levels + 1)) + 1
            raise ValueError(f"secagg.bits={self.bits} is not allowed: the sum of weights {total} times "
                             f"{self.levels} levels overflows Z_2^{self.bits}; use bits >= {need} "
                             f"or a smaller quant_bits / weights")

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(a + b) mod 2^bits`` for int64 tensors in the field."""
        return (a + b) & self.mask

    def sub(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(a - b) mod 2^bits`` for int64 tensors in the field."""
        return (a - b) & self.mask

    def signed(self, v: torch.Tensor) -> torch.Tensor:
        """Field elements ``[0, 2^bits)`` -> signed int64 ``[-2^(bits-1), 2^(bits-1))``."""
        half = 1 << (self.bits - 1)
        return torch.where(v >= half, v - self.modulus, v)

    def decode_sum(self, field_sum: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Field sum ``(P + 1,)`` -> ``(sum (P,) float64 = sum_i w_i q_i * step, total_weight int)``."""
        s = self.signed(field_sum)
        return s[:-1].to(torch.float64) * self.step, int(s[-1])


def plain_quantised_sum(quantizer: FieldQuantizer, updates: torch.Tensor, weights: Sequence[int],
                        include: Sequence[int], gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """The reference the secure sum must equal: ``sum_{i in include} encode(x_i)`` mod 2^bits.

    Args:
        quantizer: the same :class:`FieldQuantizer` the protocol uses.
        updates: ``(M, P)`` float32.
        weights: ``M`` non-negative ints.
        include: the client indices whose input counts (SecAgg's survivors ``U_3``).
        gens: one Generator per row for stochastic rounding (fresh ones of the same seeds as
            the protocol's give the same quantisation), or ``None``.

    Returns:
        ``(P + 1,)`` int64 field sum; :meth:`FieldQuantizer.decode_sum` turns it into floats.
    """
    quantizer.check_capacity([weights[i] for i in include])
    total = torch.zeros(updates.shape[1] + 1, dtype=torch.int64)
    for i in sorted(include):
        total = quantizer.add(total, quantizer.encode(updates[i], weights[i], None if gens is None else gens[i]))
    return total
