"""QSGD -- Alistarh, Grubic, Li, Tomioka & Vojnovic, NeurIPS 2017, "QSGD: Communication-Efficient
SGD via Gradient Quantization and Encoding", Sec. 3.1.

Stochastic quantisation, eq. (4), per row ``v`` (a client's update) with ``s`` levels::

    Q_s(v_i) = ||v||_2 * sgn(v_i) * xi_i,      sgn(0) = +1
    a_i = |v_i| / ||v||_2 * s,  l = floor(a_i)
    xi_i = (l + 1) / s  with probability a_i - l,  else  l / s      (one uniform from gens[row])

Lemma 3.1: ``E[Q_s(v)] = v`` and ``E||Q_s(v) - v||^2 <= min(P / s^2, sqrt(P) / s) ||v||^2``.
The norm is sent as float32 and ``a_i`` is computed against that float32 norm, so the
reconstruction is unbiased for the value actually transmitted. ``Q(0) = 0``.

Encodings (``nbytes`` counted from the encoded form, bits rounded up to whole bytes):

* ``"fixed"``: 32-bit norm, then per coordinate 1 sign bit and ``b = ceil(log2(s + 1))``
  level bits (MSB first): ``nbytes = ceil((32 + P (b + 1)) / 8)``.
* ``"elias"``: the paper's Code_s: 32-bit norm, then for each nonzero level in order,
  Elias-omega(gap) + 1 sign bit (1 = negative) + Elias-omega(level), where gap is the 1-based
  position of the first nonzero, then the distance to the next one:
  ``nbytes = 4 + ceil(sum_nonzero (|omega(gap)| + 1 + |omega(level)|) / 8)``.

The paper's "QSGD variants" (Sec. 4: buckets of d values, max-normalisation) are not
implemented; the whole row is one bucket with the L2 norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fedtorch.compression.base import CompressOut, check, check_deltas, check_gens
from fedtorch.compression.elias import BitReader, omega_bits, omega_length, pack_bits

ENCODINGS = ("elias", "fixed")


@dataclass(frozen=True, kw_only=True)
class QSGD:
    """QSGD stochastic quantiser with ``levels = s`` and an Elias or fixed-width encoding.

    Args:
        levels: number of quantisation levels ``s >= 1`` (integer).
        encoding: ``"elias"`` (paper's Code_s) or ``"fixed"`` (``ceil(log2(s+1))`` bits + sign).

    Raises:
        ValueError: naming ``compression.levels`` / ``compression.encoding``.
    """

    levels: int
    encoding: str = "elias"

    def __post_init__(self):
        s = self.levels
        check(isinstance(s, int) and not isinstance(s, bool) and s >= 1, "levels", s, "an integer >= 1")
        check(self.encoding in ENCODINGS, "encoding", self.encoding, f"one of {list(ENCODINGS)}")

    @property
    def level_bits(self) -> int:
        """``b = ceil(log2(s + 1))``: bits of one level in the fixed-width encoding."""
        return self.levels.bit_length()

    def init_state(self, m: int, p: int) -> dict[str, torch.Tensor]:
        """QSGD is stateless: ``{}``."""
        return {}

    def quantise(self, deltas: torch.Tensor, gens: Sequence[torch.Generator]):
        """Draw the message: ``(norm (M,) float32, q (M, P) int64 signed levels in [-s, s])``.

        Row i uses P uniforms (float64) from ``gens[i]``, on the generator's device.
        Raises ValueError for malformed ``deltas`` or ``gens``.
        """
        m, p = check_deltas(deltas)
        check_gens(gens, m)
        s = self.levels
        norm = torch.linalg.vector_norm(deltas.double(), dim=1).float()
        mag = deltas.double().abs() / norm.double().unsqueeze(1) * s
        mag = torch.nan_to_num(mag, nan=0.0).clamp(max=s)  # zero row: 0/0 -> level 0
        low = mag.floor()
        u = torch.stack([torch.rand(p, generator=g, dtype=torch.float64, device=g.device) for g in gens]) if m else mag
        level = (low + (u.to(mag.device) < mag - low).double()).to(torch.int64)
        sign = torch.where(deltas < 0, -1, 1)  # sgn(0) = +1 (paper, Sec. 3)
        return norm, level * sign

    def reconstruct(self, norm: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``norm * q / s`` per row, computed in float64 and rounded once to float32."""
        return (norm.double().unsqueeze(1) * q.double() / self.levels).float()

    def nbytes(self, q: torch.Tensor) -> torch.Tensor:
        """Bytes of each row's encoding (formulas in the module docstring), ``(M,)`` int64."""
        m, p = q.shape
        if self.encoding == "fixed":
            return torch.full((m,), math.ceil((32 + p * (self.level_bits + 1)) / 8), dtype=torch.int64)
        nz = q != 0
        col = torch.arange(p, device=q.device).expand(m, p)
        last = torch.cummax(torch.where(nz, col, -1), dim=1).values  # last nonzero at or before j
        prev = torch.cat([torch.full((m, 1), -1, device=q.device, dtype=last.dtype), last[:, :-1]], dim=1)
        gap = torch.where(nz, col - prev, 1)
        bits = torch.where(nz, omega_length(gap) + 1 + omega_length(q.abs().clamp(min=1)), 0).sum(dim=1)
        return 4 + (bits + 7) // 8

    def compress(self, deltas: torch.Tensor, state: dict, gens: Sequence[torch.Generator], round: int = 0) -> CompressOut:
        """Quantise each row with its generator. Returns ``CompressOut(decoded, {}, nbytes)``."""
        norm, q = self.quantise(deltas, gens)
        return CompressOut(self.reconstruct(norm, q), {}, self.nbytes(q))

    def encode(self, deltas: torch.Tensor, state: dict, gens: Sequence[torch.Generator], round: int = 0):
        """The same message as :meth:`compress`, as packed bitstrings: ``(list of M bytes, {})``."""
        norm, q = self.quantise(deltas, gens)
        norm_np, q_np = norm.cpu().numpy().astype("<f4"), q.cpu().numpy()
        pack = self._pack_fixed if self.encoding == "fixed" else self._pack_elias
        return [norm_np[i].tobytes() + pack(q_np[i]) for i in range(q_np.shape[0])], {}

    def decode(self, payloads: Sequence[bytes], p: int, round: int = 0) -> torch.Tensor:
        """``(M, P)`` float32 from :meth:`encode`'s payloads (CPU); ValueError if one is malformed."""
        norms, qs = [], []
        for b in payloads:
            if len(b) < 4:
                raise ValueError(f"QSGD payload of {len(b)} bytes is shorter than its 4-byte norm")
            norms.append(float(np.frombuffer(b, dtype="<f4", count=1)[0]))
            unpack = self._unpack_fixed if self.encoding == "fixed" else self._unpack_elias
            qs.append(unpack(b[4:], p))
        if not payloads:
            return torch.zeros(0, p, dtype=torch.float32)
        return self.reconstruct(torch.tensor(norms, dtype=torch.float32), torch.from_numpy(np.stack(qs)))

    # ---- bit packing --------------------------------------------------------------------

    def _pack_fixed(self, q: np.ndarray) -> bytes:
        b = self.level_bits
        shifts = np.arange(b - 1, -1, -1)
        level_bits = (np.abs(q)[:, None] >> shifts) & 1
        bits = np.concatenate([(q < 0)[:, None].astype(np.int64), level_bits], axis=1)
        return np.packbits(bits.astype(np.uint8).ravel()).tobytes()

    def _unpack_fixed(self, data: bytes, p: int) -> np.ndarray:
        b = self.level_bits
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        if bits.size < p * (b + 1):
            raise ValueError(f"fixed-width QSGD payload holds {bits.size} bits, needs {p * (b + 1)}")
        bits = bits[: p * (b + 1)].reshape(p, b + 1).astype(np.int64)
        level = bits[:, 1:] @ (1 << np.arange(b - 1, -1, -1))
        return np.where(bits[:, 0] == 1, -level, level)

    def _pack_elias(self, q: np.ndarray) -> bytes:
        parts, prev = [], -1
        for j in np.flatnonzero(q):
            parts += [omega_bits(int(j - prev)), "1" if q[j] < 0 else "0", omega_bits(int(abs(q[j])))]
            prev = j
        return pack_bits("".join(parts))

    def _unpack_elias(self, data: bytes, p: int) -> np.ndarray:
        q, reader, pos = np.zeros(p, dtype=np.int64), BitReader(data), -1
        while (gap := reader.omega()) is not None:
            sign, level = reader.read(1), reader.omega()
            pos += gap
            if sign is None or level is None or pos >= p:
                raise ValueError("Elias QSGD payload is truncated or points past P")
            q[pos] = -level if sign == "1" else level
        return q
