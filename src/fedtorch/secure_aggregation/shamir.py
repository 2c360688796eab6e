"""t-out-of-n Shamir secret sharing of mask seeds (Bonawitz et al. CCS 2017, Sec. 3.2).

A thin layer over pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` (Shamir over
GF(2^128), 16-byte secrets). Longer secrets (the 32-byte X25519 key ``s_u^SK``) are split in
16-byte chunks, each shared independently with the same holder indices; a holder's share is the
concatenation of its chunk shares. pycryptodome draws the polynomial coefficients from the OS
RNG, so shares differ between runs while the reconstructed secrets (and hence every masked
vector and the sum) do not.

``Shamir.combine`` silently returns garbage when given fewer than t shares; :func:`combine`
therefore checks the count itself and raises :class:`RecoveryError`.
"""

from __future__ import annotations

from typing import Sequence

from Crypto.Protocol.SecretSharing import Shamir

CHUNK = 16


class RecoveryError(RuntimeError):
    """The protocol must abort: too few clients or shares survive to continue or to unmask."""


def split(secret: bytes, threshold: int, num_holders: int) -> list[tuple[int, bytes]]:
    """Share ``secret`` (a multiple of 16 bytes) among ``num_holders`` with threshold ``threshold``.

    Returns:
        ``num_holders`` pairs ``(index, share)``; index ``j + 1`` goes to the j-th holder, and
        ``len(share) == len(secret)``.

    Raises:
        ValueError: ``len(secret)`` is not a positive multiple of 16, or not
            ``1 <= threshold <= num_holders``.
    """
    if not secret or len(secret) % CHUNK:
        raise ValueError(f"secret length must be a positive multiple of {CHUNK} bytes, got {len(secret)}")
    if not 1 <= threshold <= num_holders:
        raise ValueError(f"threshold={threshold} must be in [1, num_holders={num_holders}]")
    parts: list[list[bytes]] = [[] for _ in range(num_holders)]
    for start in range(0, len(secret), CHUNK):
        for idx, share in Shamir.split(threshold, num_holders, secret[start:start + CHUNK]):
            parts[idx - 1].append(share)
    return [(j + 1, b"".join(p)) for j, p in enumerate(parts)]


def combine(shares: Sequence[tuple[int, bytes]], threshold: int, what: str) -> bytes:
    """Reconstruct a secret from at least ``threshold`` shares with distinct indices.

    Exactly ``threshold`` shares (the lowest indices) are interpolated, as pycryptodome asks.

    Raises:
        RecoveryError: fewer than ``threshold`` distinct shares; the message names ``what``.
    """
    distinct = dict(shares)
    if len(distinct) < threshold:
        raise RecoveryError(f"cannot recover {what}: {len(distinct)} share(s) from surviving clients, "
                            f"threshold t={threshold}")
    chosen = sorted(distinct.items())[:threshold]
    length = len(chosen[0][1])
    return b"".join(Shamir.combine([(i, s[start:start + CHUNK]) for i, s in chosen])
                    for start in range(0, length, CHUNK))
