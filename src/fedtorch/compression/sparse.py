"""Sparsifiers: top-k with error feedback, and Deep Gradient Compression (DGC).

**Top-k with error feedback** -- Stich, Cordonnier & Jaggi, NeurIPS 2018, "Sparsified SGD
with Memory", Algorithm 1 (memory ``m``); Karimireddy et al., ICML 2019, "Error Feedback
Fixes SignSGD and other Gradient Compression Schemes", Algorithm 2 (EF with any compressor).
Per client i and round, with residual ``e_i`` (``state["residual"]``)::

    p_i = Delta_i + e_i
    sent_i = top_k(p_i)          # the k = ceil(density * P) largest-|.| entries, copied
    e_i <- p_i - sent_i          # = p_i with the sent entries set to 0  (exact, no rounding)

**DGC** -- Lin, Han, Mao, Wang & Dally, ICLR 2018, "Deep Gradient Compression", Sec. 3 and
Algorithm 1, with the client's round update ``g_i = Delta_i`` as the gradient::

    g_i <- g_i * min(1, clip_norm / ||g_i||_2)             # local gradient clipping, Sec. 3.2
    u_i <- m u_i + g_i                                     # momentum correction, Sec. 3.2, eq. (7)
    v_i <- v_i + u_i
    Mask <- top_k(|v_i|);  sent_i = v_i * Mask             # sparse(v), k = ceil(density_t * P)
    v_i <- v_i * not Mask;  u_i <- u_i * not Mask          # momentum factor masking, Sec. 3.3, eq. (9)

* Clipping: the paper clips each node's gradient before accumulation, with the node threshold
  ``thr_k = N^{-1/2} thr_G`` (eq. 8, N nodes). Here ``clip_norm`` is that per-client threshold
  directly; the loop passes ``thr_G / sqrt(M)`` to follow the paper's scaling.
* Warm-up (Sec. 3.3 and 5: sparsity raised exponentially, 75 %, 93.75 %, 98.4375 %, 99.6 %,
  99.9 % over the first epochs): ``density_t = max(density, warmup_base ** (t + 1))`` for
  ``t < warmup_rounds``, else ``density``; ``warmup_base=0.25`` with ``warmup_rounds=4`` and
  ``density=0.001`` gives exactly that list. (The sparsity list was checked against a
  translation of the paper, PaddlePaddle's DGC guide; the authors' code,
  synxlin/deep-gradient-compression ``dgc/compression.py``, instead uses
  ``density ** ((t + 1) / (W + 1))``, i.e. ``warmup_base = density ** (1 / (W + 1))``.)
* Selection is exact top-k (the paper estimates the threshold from a sample, Sec. 4; its code
  then re-selects top-k when too many pass). Nesterov's variant is not implemented.

Wire format of both (see :func:`~fedtorch.compression.base.encode_sparse`): k indices in
the smallest unsigned width for P, then k float32 values; ``nbytes = k * (width + 4)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from fedtorch.compression.base import (
    CompressOut,
    check,
    check_deltas,
    check_density,
    check_state,
    decode_sparse,
    density_to_k,
    encode_sparse,
    scatter_rows,
    sparse_nbytes,
    topk_split,
    zeros_state,
)


class _Sparse:
    """Shared driver: subclasses define ``_state_keys``, ``_k(P, round)`` and ``_select``."""

    _state_keys: tuple[str, ...] = ()

    def init_state(self, m: int, p: int) -> dict[str, torch.Tensor]:
        """Zero per-client state ``{key: (M, P) float32}`` ({} for top-k without error feedback)."""
        return zeros_state(self._state_keys, m, p)

    def _message(self, deltas, state, round):
        m, p = check_deltas(deltas)
        check_state(state, self._state_keys, deltas)
        check(isinstance(round, int) and round >= 0, "round", round, "a round index >= 0")
        return self._select(deltas, state, self._k(p, round))

    def compress(self, deltas: torch.Tensor, state: dict, gens=None, round: int = 0) -> CompressOut:
        """Sparsify each row; ``gens`` is unused (selection is deterministic).

        Returns ``CompressOut(decoded (M, P) float32, new state, nbytes (M,) int64)``.
        Raises ValueError for a malformed ``deltas``/``state`` or a negative ``round``.
        """
        idx, vals, new_state = self._message(deltas, state, round)
        m, p = deltas.shape
        nbytes = torch.full((m,), sparse_nbytes(p, idx.shape[1]), dtype=torch.int64)
        return CompressOut(scatter_rows(idx, vals, p), new_state, nbytes)

    def encode(self, deltas: torch.Tensor, state: dict, gens=None, round: int = 0):
        """Same message as :meth:`compress`, serialised: ``(list of M bytes, new state)``."""
        idx, vals, new_state = self._message(deltas, state, round)
        return encode_sparse(idx, vals, deltas.shape[1]), new_state

    def decode(self, payloads: Sequence[bytes], p: int, round: int = 0) -> torch.Tensor:
        """``(M, P)`` float32 from the payloads of :meth:`encode` (CPU)."""
        return decode_sparse(payloads, p)


@dataclass(frozen=True, kw_only=True)
class TopK(_Sparse):
    """Top-k sparsification with error feedback (Stich et al. 2018, Alg. 1).

    Args:
        density: fraction of coordinates sent, in (0, 1]; ``k = ceil(density * P)``.
        error_feedback: keep the unsent part in ``state["residual"]`` and add it next round.

    Raises:
        ValueError: naming ``compression.density`` / ``compression.error_feedback``.
    """

    density: float
    error_feedback: bool = True

    def __post_init__(self):
        check_density("density", self.density)
        check(isinstance(self.error_feedback, bool), "error_feedback", self.error_feedback, "true or false")
        object.__setattr__(self, "_state_keys", ("residual",) if self.error_feedback else ())

    def _k(self, p: int, round: int) -> int:
        return density_to_k(self.density, p)

    def _select(self, deltas, state, k):
        acc = deltas + state["residual"] if self.error_feedback else deltas
        idx, vals, rest = topk_split(acc, k)
        return idx, vals, ({"residual": rest} if self.error_feedback else {})


@dataclass(frozen=True, kw_only=True)
class DGC(_Sparse):
    """Deep Gradient Compression (Lin et al., ICLR 2018), per client, one round = one step.

    Args:
        density: final fraction of coordinates sent, in (0, 1] (paper: 0.001).
        momentum: ``m`` of the momentum correction, in [0, 1) (0 = plain accumulation).
        clip_norm: per-client L2 threshold for local gradient clipping, > 0, or None (off).
        warmup_rounds: rounds of density warm-up, >= 0 (paper: 4 epochs).
        warmup_base: warm-up density ratio per round, in (0, 1) (paper's list: 0.25).

    State: ``u`` (momentum) and ``v`` (accumulated velocity), both (M, P) float32.

    Raises:
        ValueError: naming the offending ``compression.<parameter>``.
    """

    density: float = 0.001
    momentum: float = 0.9
    clip_norm: float | None = None
    warmup_rounds: int = 0
    warmup_base: float = 0.25
    _state_keys = ("u", "v")

    def __post_init__(self):
        check_density("density", self.density)
        m = self.momentum
        check(_real(m) and 0.0 <= m < 1.0, "momentum", m, "a number in [0, 1)")
        c = self.clip_norm
        check(c is None or (_real(c) and c > 0), "clip_norm", c, "null (no clipping) or a number > 0")
        w = self.warmup_rounds
        check(isinstance(w, int) and not isinstance(w, bool) and w >= 0, "warmup_rounds", w, "an integer >= 0")
        b = self.warmup_base
        check(_real(b) and 0.0 < b < 1.0, "warmup_base", b, "a number in (0, 1)")

    def density_at(self, round: int) -> float:
        """Density of round ``round`` (0-based): ``max(density, warmup_base**(round+1))`` in warm-up."""
        if round < self.warmup_rounds:
            return max(self.density, self.warmup_base ** (round + 1))
        return self.density

    def _k(self, p: int, round: int) -> int:
        return density_to_k(self.density_at(round), p)

    def clip(self, g: torch.Tensor) -> torch.Tensor:
        """Rows scaled by ``min(1, clip_norm / ||g_i||_2)`` (eq. 8's local clipping); identity if off."""
        if self.clip_norm is None:
            return g
        norm = torch.linalg.vector_norm(g.double(), dim=1, keepdim=True)
        scale = torch.clamp(self.clip_norm / norm, max=1.0)  # norm 0 -> inf -> 1
        return (g.double() * scale).float()

    def _select(self, deltas, state, k):
        u = self.momentum * state["u"] + self.clip(deltas)
        v = state["v"] + u
        idx, vals, v_rest = topk_split(v, k)
        return idx, vals, {"u": u.scatter(1, idx, 0.0), "v": v_rest}


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
