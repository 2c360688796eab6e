"""Scaled sign compression with error feedback -- Karimireddy, Rebjock, Stich & Jaggi, ICML 2019,
"Error Feedback Fixes SignSGD and other Gradient Compression Schemes", Algorithm 1 (EF-SignSGD).

Per client i and round, with ``gamma g_t`` = the client's update ``Delta_i`` and residual
``e_i`` (``state["residual"]``)::

    p_i = Delta_i + e_i
    sent_i = (||p_i||_1 / P) * sgn(p_i)      # sgn(0) = +1: one bit per coordinate
    e_i <- p_i - sent_i

``e_i`` is exactly the float32 value ``fl(p_i - sent_i)`` of the recurrence, so ``e_i +
sent_i`` equals ``p_i`` up to one float32 rounding per entry (unlike top-k, the sent value is
not a copy of ``p_i``). The scale ``||p_i||_1 / P`` is accumulated in float64 and sent as one
float32. Without error feedback this is scaled signSGD (``state`` is ``{}``).

Wire format: the float32 scale, then P sign bits (1 = negative, MSB first, padded with 0):
``nbytes = 4 + ceil(P / 8)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fedtorch.compression.base import CompressOut, check, check_deltas, check_state, zeros_state


@dataclass(frozen=True, kw_only=True)
class SignEF:
    """EF-SignSGD message compression (Karimireddy et al. 2019, Alg. 1).

    Args:
        error_feedback: keep ``p - sent`` in ``state["residual"]`` (Alg. 1) or drop it.

    Raises:
        ValueError: naming ``compression.error_feedback``.
    """

    error_feedback: bool = True

    def __post_init__(self):
        check(isinstance(self.error_feedback, bool), "error_feedback", self.error_feedback, "true or false")

    @property
    def _state_keys(self) -> tuple[str, ...]:
        return ("residual",) if self.error_feedback else ()

    def init_state(self, m: int, p: int) -> dict[str, torch.Tensor]:
        """``{"residual": zeros (M, P) float32}`` ({} without error feedback)."""
        return zeros_state(self._state_keys, m, p)

    def _message(self, deltas, state):
        check_deltas(deltas)
        check_state(state, self._state_keys, deltas)
        p = deltas + state["residual"] if self.error_feedback else deltas
        scale = (p.double().abs().sum(dim=1) / p.shape[1]).float()
        negative = p < 0
        sent = torch.where(negative, -scale.unsqueeze(1), scale.unsqueeze(1))
        new_state = {"residual": p - sent} if self.error_feedback else {}
        return scale, negative, sent, new_state

    def compress(self, deltas: torch.Tensor, state: dict, gens=None, round: int = 0) -> CompressOut:
        """Returns ``CompressOut(decoded (M, P) float32, new state, nbytes (M,) int64)``; gens unused."""
        _, _, sent, new_state = self._message(deltas, state)
        m, p = deltas.shape
        return CompressOut(sent, new_state, torch.full((m,), 4 + math.ceil(p / 8), dtype=torch.int64))

    def encode(self, deltas: torch.Tensor, state: dict, gens=None, round: int = 0):
        """``(list of M payloads: float32 scale + packed sign bits, new state)``."""
        scale, negative, _, new_state = self._message(deltas, state)
        scale_np, neg_np = scale.cpu().numpy().astype("<f4"), negative.cpu().numpy()
        return [scale_np[i].tobytes() + np.packbits(neg_np[i]).tobytes() for i in range(len(scale_np))], new_state

    def decode(self, payloads: Sequence[bytes], p: int, round: int = 0) -> torch.Tensor:
        """``(M, P)`` float32 from :meth:`encode`'s payloads (CPU)."""
        rows = []
        for b in payloads:
            if len(b) != 4 + math.ceil(p / 8):
                raise ValueError(f"sign payload of {len(b)} bytes, expected {4 + math.ceil(p / 8)} for P={p}")
            scale = torch.from_numpy(np.frombuffer(b, dtype="<f4", count=1).copy())
            negative = torch.from_numpy(np.unpackbits(np.frombuffer(b[4:], dtype=np.uint8))[:p].astype(bool))
            rows.append(torch.where(negative, -scale, scale))
        return torch.stack(rows) if rows else torch.zeros(0, p, dtype=torch.float32)
