"""The compressor protocol and what every compressor shares: input checks, the sparse codec.

Calling protocol (every compressor in :mod:`fedtorch.compression` follows it)::

    comp = COMPRESSORS["topk"](density=0.01)          # frozen dataclass; bad values -> ValueError
    state = comp.init_state(M, P)                      # dict of (M, P) float32 tensors ({} if stateless)
    decoded, state, nbytes = comp.compress(deltas, state, gens, round)
    payloads, state = comp.encode(deltas, state, gens, round)   # the real wire bytes, one per row
    decoded_again = comp.decode(payloads, P, round)             # == decoded, bit for bit

* ``deltas``: ``(M, P)`` float32, row i = client i's update for the round.
* ``state``: per-client persistent state (error-feedback residuals, DGC momentum); row i
  belongs to client i. It is never modified in place; a new dict is returned.
* ``gens``: one ``torch.Generator`` per row (``None`` for deterministic compressors). Row
  i's result depends only on row i of ``deltas``/``state`` and on ``gens[i]``.
* ``round``: the 0-based round index (DGC's density warm-up reads it).
* ``decoded``: ``(M, P)`` float32, what the server reconstructs from the message.
* ``nbytes``: ``(M,)`` int64, bytes on the wire per client, computed in closed form from the
  message; ``len(encode(...)[0][i]) == nbytes[i]`` is the tested contract. There are no
  headers: ``P``, the compressor's parameters and the round are protocol constants both ends
  know (``k`` is read back from the payload length).

``compress`` and ``encode`` consume the generators identically, so with fresh generators of
the same seeds they describe the same message.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch


class CompressOut(NamedTuple):
    """Result of ``compress``: ``decoded (M, P) float32``, ``state`` dict, ``nbytes (M,) int64``."""

    decoded: torch.Tensor
    state: dict[str, torch.Tensor]
    nbytes: torch.Tensor


def check(ok: bool, key: str, value, rule: str) -> None:
    """Raise ``ValueError("compression.<key>=<value> is not allowed: <rule>")`` unless ``ok``.

    The same format as :func:`fedtorch.algorithms.hparams.check` (not imported: this package
    knows nothing of algorithms); the config layer turns it into a ConfigError.
    """
    if not ok:
        raise ValueError(f"compression.{key}={value!r} is not allowed: {rule}")


def check_density(key: str, value) -> None:
    """``value`` must be a real number in (0, 1]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value <= 1.0
    check(ok, key, value, "a fraction of coordinates in (0, 1]")


def check_deltas(deltas) -> tuple[int, int]:
    """Return ``(M, P)``; raise ValueError unless ``deltas`` is a 2-D float32 tensor with P >= 1."""
    if not (isinstance(deltas, torch.Tensor) and deltas.dim() == 2 and deltas.dtype == torch.float32):
        got = f"{tuple(deltas.shape)} {deltas.dtype}" if isinstance(deltas, torch.Tensor) else type(deltas).__name__
        raise ValueError(f"deltas must be a (M, P) float32 tensor, got {got}")
    if deltas.shape[1] < 1:
        raise ValueError(f"deltas must have P >= 1 columns, got shape {tuple(deltas.shape)}")
    return deltas.shape[0], deltas.shape[1]


def check_state(state, keys: Sequence[str], deltas: torch.Tensor) -> None:
    """Raise ValueError unless ``state[key]`` is a float32 tensor shaped like ``deltas`` for each key."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict (from init_state), got {type(state).__name__}")
    for key in keys:
        t = state.get(key)
        if not (isinstance(t, torch.Tensor) and t.shape == deltas.shape and t.dtype == torch.float32):
            got = "missing" if t is None else f"{tuple(getattr(t, 'shape', ()))} {getattr(t, 'dtype', type(t))}"
            raise ValueError(f"state[{key!r}] must be a {tuple(deltas.shape)} float32 tensor, got {got}")


def check_gens(gens, m: int) -> None:
    """Raise ValueError unless ``gens`` is a sequence of ``m`` ``torch.Generator``."""
    if gens is None or len(gens) != m or not all(isinstance(g, torch.Generator) for g in gens):
        got = "None" if gens is None else f"{len(gens)} items"
        raise ValueError(f"gens must be one torch.Generator per row ({m}), got {got}")


def zeros_state(keys: Sequence[str], m: int, p: int) -> dict[str, torch.Tensor]:
    """``{key: zeros(m, p) float32}``; raises ValueError for negative sizes."""
    if m < 0 or p < 1:
        raise ValueError(f"init_state needs M >= 0 and P >= 1, got M={m}, P={p}")
    return {key: torch.zeros(m, p, dtype=torch.float32) for key in keys}


def density_to_k(density: float, p: int) -> int:
    """``k = ceil(density * P)``, at least 1 and at most P (Stich et al. 2018 keep k of d).

    The product is rounded to 9 decimals first so that float noise (``0.07 * 100 =
    7.000000000000001``) does not add a coordinate.
    """
    return min(p, max(1, math.ceil(round(density * p, 9))))


# ---- sparse codec: (indices, float32 values), shared by top-k and DGC ----------------------


def index_dtype(p: int) -> np.dtype:
    """Smallest little-endian unsigned integer that holds every index ``0 .. P-1``."""
    for dt in ("<u1", "<u2", "<u4", "<u8"):
        if p - 1 <= np.iinfo(np.dtype(dt)).max:
            return np.dtype(dt)
    raise ValueError(f"P={p} is too large for 64-bit indices")


def sparse_nbytes(p: int, k: int) -> int:
    """Bytes of one sparse message: ``k * (index width + 4)`` (indices then float32 values)."""
    return k * (index_dtype(p).itemsize + 4)


def topk_split(acc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split each row of ``acc (M, P)`` into its k largest-|.| entries and the rest.

    Returns ``(idx (M, k) int64 ascending, vals (M, k) float32, rest (M, P))`` where ``vals =
    acc[idx]`` (copied) and ``rest`` is ``acc`` with those entries set to 0, so that
    ``rest + scatter(idx, vals) == acc`` holds exactly (each entry is ``x + 0`` or ``0 + x``).
    """
    idx = torch.topk(acc.abs(), k, dim=1, sorted=False).indices.sort(dim=1).values
    vals = acc.gather(1, idx)
    rest = acc.scatter(1, idx, 0.0)
    return idx, vals, rest


def scatter_rows(idx: torch.Tensor, vals: torch.Tensor, p: int) -> torch.Tensor:
    """Dense ``(M, P)`` float32 with ``vals`` at ``idx`` per row and zeros elsewhere."""
    out = torch.zeros(idx.shape[0], p, dtype=torch.float32, device=vals.device)
    return out.scatter(1, idx, vals)


def encode_sparse(idx: torch.Tensor, vals: torch.Tensor, p: int) -> list[bytes]:
    """Per row: the k indices (``index_dtype(P)``) then the k float32 values, little-endian."""
    idx_np = idx.cpu().numpy().astype(index_dtype(p))
    val_np = vals.cpu().numpy().astype("<f4")
    return [idx_np[i].tobytes() + val_np[i].tobytes() for i in range(idx_np.shape[0])]


def decode_sparse(payloads: Sequence[bytes], p: int) -> torch.Tensor:
    """Inverse of :func:`encode_sparse`; ``k`` is the payload length over ``width + 4``."""
    dt = index_dtype(p)
    rows = []
    for b in payloads:
        k, extra = divmod(len(b), dt.itemsize + 4)
        if extra:
            raise ValueError(f"sparse payload of {len(b)} bytes is not k * {dt.itemsize + 4}")
        idx = np.frombuffer(b, dtype=dt, count=k).astype(np.int64)
        vals = np.frombuffer(b, dtype="<f4", count=k, offset=k * dt.itemsize)
        row = torch.zeros(p, dtype=torch.float32)
        row[torch.from_numpy(idx)] = torch.from_numpy(vals.copy())
        rows.append(row)
    return torch.stack(rows) if rows else torch.zeros(0, p, dtype=torch.float32)
