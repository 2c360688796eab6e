"""Elias omega ("recursive") integer code, as used by QSGD's Code_s (Alistarh et al. 2017, Sec. 3.1).

Elias, IEEE Trans. Inf. Theory 21(2), 1975. For a positive integer ``n`` the code is built
right to left: write ``0``; while ``n > 1``: prepend the binary form of ``n`` and set ``n`` to
its length minus one. Examples: 1 -> ``0``, 2 -> ``10 0``, 3 -> ``11 0``, 4 -> ``10 100 0``,
17 -> ``10 100 10001 0``. Decoding: ``n = 1``; read a bit; if 0 return ``n``, else that bit
and ``n`` more bits are the new ``n``; repeat. QSGD's paper describes it as "the binary
representation of k, to which it prepends the length of this representation ... then
recursively encodes this prefix" (omega prepends length - 1, the standard form).

Bitstrings are padded to whole bytes with ``1`` bits: no omega codeword ends inside a run of
ones, so the decoder stops cleanly at the first incomplete codeword.
"""

from __future__ import annotations

import torch


def omega_bits(n: int) -> str:
    """The omega codeword of ``n >= 1`` as a string of '0'/'1'."""
    if n < 1:
        raise ValueError(f"Elias omega codes integers >= 1, got {n}")
    code = "0"
    while n > 1:
        b = format(n, "b")
        code = b + code
        n = len(b) - 1
    return code


def omega_length(n: torch.Tensor) -> torch.Tensor:
    """Codeword lengths in bits for an int64 tensor of values >= 1 (same shape, int64).

    ``len(n) = 1 + sum of bit lengths of n, L(n)-1, ...`` while the value exceeds 1; exact for
    values below 2**53 (bit length via ``frexp`` of the float64 value).
    """
    n = n.to(torch.int64)
    length = torch.ones_like(n)
    while bool((n > 1).any()):
        active = n > 1
        bitlen = torch.frexp(n.double()).exponent.to(torch.int64)
        length = length + torch.where(active, bitlen, 0)
        n = torch.where(active, bitlen - 1, n)
    return length


class BitReader:
    """Reads bits MSB-first from ``data``; ``omega()`` returns None at an incomplete codeword."""

    def __init__(self, data: bytes):
        self.bits = "".join(format(byte, "08b") for byte in data)
        self.pos = 0

    def read(self, count: int) -> str | None:
        """The next ``count`` bits, or None (position unchanged) if fewer remain."""
        if self.pos + count > len(self.bits):
            return None
        out = self.bits[self.pos : self.pos + count]
        self.pos += count
        return out

    def omega(self) -> int | None:
        """Decode one omega codeword, or None when the remaining bits hold no complete one."""
        n = 1
        while True:
            head = self.read(1)
            if head is None:
                return None
            if head == "0":
                return n
            rest = self.read(n)
            if rest is None:
                return None
            n = int(head + rest, 2)


def pack_bits(bits: str) -> bytes:
    """``bits`` padded with '1' to a multiple of 8 and packed MSB-first."""
    bits = bits + "1" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
