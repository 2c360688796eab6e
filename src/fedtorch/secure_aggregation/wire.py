"""Byte layouts of the messages that cross the (simulated) wire, so costs are counted from bytes.

* field vector: ``P + 1`` elements of ``Z_{2^bits}``, each ``ceil(bits / 8)`` bytes little-endian;
* share plaintext (round 1, then AES-GCM sealed): ``<u:u32><v:u32><index:u16>`` + share of
  ``s_u^SK`` (32 bytes) + share of ``b_u`` (16 bytes);
* unmasking reply (round 3): records ``<owner:u32><kind:u8><index:u16>`` + share bytes, kind
  0 = share of ``b_owner`` (16 bytes), 1 = share of ``s_owner^SK`` (32 bytes).
"""

from __future__ import annotations

import struct

import numpy as np
import torch

KIND_B, KIND_SK = 0, 1
_SHARE_LEN = {KIND_B: 16, KIND_SK: 32}
_HEAD = struct.Struct("<IIH")
_REC = struct.Struct("<IBH")


def element_bytes(bits: int) -> int:
    """Bytes per field element on the wire."""
    return (bits + 7) // 8


def pack_vector(v: torch.Tensor, bits: int) -> bytes:
    """Field vector (int64 in ``[0, 2^bits)``) -> bytes."""
    nb = element_bytes(bits)
    return v.numpy().astype("<u8").view(np.uint8).reshape(-1, 8)[:, :nb].tobytes()


def unpack_vector(data: bytes, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_vector`."""
    nb = element_bytes(bits)
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, nb)
    full = np.zeros((raw.shape[0], 8), dtype=np.uint8)
    full[:, :nb] = raw
    return torch.from_numpy(full.view("<u8").reshape(-1).astype(np.int64))


def pack_share(u: int, v: int, index: int, share_sk: bytes, share_b: bytes) -> bytes:
    """Round-1 plaintext from owner ``u`` to holder ``v``."""
    return _HEAD.pack(u, v, index) + share_sk + share_b


def unpack_share(data: bytes) -> tuple[int, int, int, bytes, bytes]:
    """Inverse of :func:`pack_share`: ``(u, v, index, share_sk, share_b)``."""
    u, v, index = _HEAD.unpack_from(data)
    body = data[_HEAD.size:]
    return u, v, index, body[:32], body[32:48]


def pack_reveal(records: list[tuple[int, int, int, bytes]]) -> bytes:
    """Round-3 reply: records ``(owner, kind, index, share)``."""
    return b"".join(_REC.pack(o, k, i) + s for o, k, i, s in records)


def unpack_reveal(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Inverse of :func:`pack_reveal`."""
    out, pos = [], 0
    while pos < len(data):
        owner, kind, index = _REC.unpack_from(data, pos)
        pos += _REC.size
        out.append((owner, kind, index, data[pos:pos + _SHARE_LEN[kind]]))
        pos += _SHARE_LEN[kind]
    return out
