"""Disk side of the client-state store: fixed-size slot files, written copy-on-write.

Format and why. Every state of one algorithm has the same *schema* (names, shapes, dtypes
of its tensors: SCAFFOLD ``{"c": (P,) float32}``), so one record has a fixed byte size and a
file of records is an array of *slots*: record k lives at byte ``k * record_bytes``. One
raw file per schema (``states-<k>.bin`` in the spill folder), read and written with
``os.preadv`` / ``os.pwritev`` (no new dependency, no per-record metadata, O(1) addressing,
batch reads sorted by offset). Plain positional I/O rather than ``numpy.memmap``: mapped
pages count in the process's resident set, so a memory budget could not be kept.
safetensors / LMDB would add a dependency and per-write rewriting (safetensors) or a
B-tree we do not need (LMDB) for what is an array of equal records.

Copy-on-write: a put never overwrites a slot; it takes a free one and frees the client's
old slot. A *snapshot* (:meth:`SlotFile.sync` + the caller's index) fsyncs the file and
*pins* the slots it references. The rule for reuse: **a slot is free when neither the live
index nor either of the two last snapshots references it** (``checkpoint.pt`` and
``checkpoint.prev.pt`` each hold one). So a snapshot stays readable after any later puts
until two newer snapshots exist, and a ``kill -9`` at any point (even in the middle of a
``pwritev``) leaves every retained snapshot's records intact: only free slots are ever
written. Space is reclaimed by slot reuse: a file holds at most live + pinned records
(<= 3 x the clients with a state, in practice clients + 2 x those changed between
checkpoints) however many rounds run; it never shrinks (its size is the high-water mark).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fedtorch.protocol import State

ALIGN = 16  # every field starts at a multiple of 16 bytes, so any dtype can be viewed in place

Schema = tuple[tuple[str, tuple[int, ...], str], ...]  # ((name, shape, dtype name), ...) in state order


def schema_of(state: State) -> Schema:
    """The schema of a state: ``((name, shape, "float32"), ...)`` in the state's key order."""
    return tuple((k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items())


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=getattr(torch, dtype)).element_size()


def schema_bytes(schema: Schema) -> int:
    """Bytes of one state of ``schema`` (its tensors' data, without the slot's padding)."""
    return sum(_nbytes(shape, dtype) for _, shape, dtype in schema)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class SlotFile:
    """One schema's slot file: allocation, pinning, batch reads and writes.

    Args:
        path: the file (created if absent; ``truncate=True`` empties it).
        schema: the records' :data:`Schema`.
        truncate: start empty (a schema no retained snapshot knows).

    Attributes:
        record_bytes: bytes per slot (fields aligned to 16 bytes).
        capacity: slots in the file.
    """

    def __init__(self, path: Path, schema: Schema, truncate: bool = False):
        self.path, self.schema = Path(path), schema
        self.offsets, pos = [], 0
        for _, shape, dtype in schema:
            self.offsets.append(pos)
            pos += _aligned(_nbytes(shape, dtype))
        self.record_bytes = max(pos, ALIGN)
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if truncate else 0)
        self.fd = os.open(self.path, flags, 0o666)
        self.capacity = os.fstat(self.fd).st_size // self.record_bytes
        self.live = np.zeros(self.capacity, dtype=bool)
        self.pinned = np.zeros(self.capacity, dtype=bool)
        self._free: list[int] = list(range(self.capacity - 1, -1, -1))

    # -- allocation --------------------------------------------------------------------
    def allocate(self, count: int) -> np.ndarray:
        """``count`` free slots (the file grows when too few are free); marked live."""
        if len(self._free) < count:
            self._grow(count - len(self._free))
        slots = np.array([self._free.pop() for _ in range(count)], dtype=np.int64)
        self.live[slots] = True
        return slots

    def release(self, slots: np.ndarray) -> None:
        """The live index no longer references ``slots``; unpinned ones become free now."""
        slots = np.asarray(slots, dtype=np.int64)
        self.live[slots] = False
        self._free.extend(slots[~self.pinned[slots]].tolist())

    def set_pins(self, pinned_slots: np.ndarray, live_slots: np.ndarray) -> None:
        """Pin exactly ``pinned_slots`` (the retained snapshots'), mark ``live_slots`` live,
        and recompute the free list: slots neither live nor pinned."""
        self.pinned[:] = False
        self.pinned[np.asarray(pinned_slots, dtype=np.int64)] = True
        self.live[:] = False
        self.live[np.asarray(live_slots, dtype=np.int64)] = True
        self._free = np.flatnonzero(~(self.live | self.pinned))[::-1].tolist()

    def _grow(self, need: int) -> None:
        extra = max(need, self.capacity // 8, 16)
        new = self.capacity + extra
        os.ftruncate(self.fd, new * self.record_bytes)
        self.live = np.concatenate([self.live, np.zeros(extra, dtype=bool)])
        self.pinned = np.concatenate([self.pinned, np.zeros(extra, dtype=bool)])
        self._free = list(range(new - 1, self.capacity - 1, -1)) + self._free
        self.capacity = new

    # -- I/O ---------------------------------------------------------------------------
    def write(self, slots: np.ndarray, states: list[State]) -> None:
        """Write ``states[j]`` into ``slots[j]`` (each state of this file's schema)."""
        pad = {}
        for slot, state in zip(slots.tolist(), states):
            buffers, pos = [], 0
            for (name, _, _), off in zip(self.schema, self.offsets):
                if off > pos:
                    buffers.append(pad.setdefault(off - pos, bytes(off - pos)))
                t = state[name].detach().contiguous().reshape(-1)
                raw = t.view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
                buffers.append(raw)
                pos = off + raw.nbytes
            os.pwritev(self.fd, buffers, slot * self.record_bytes)

    def read(self, slots: np.ndarray) -> list[State]:
        """The states in ``slots`` (tensors are views into one buffer per call), in order."""
        slots = np.asarray(slots, dtype=np.int64)
        buf = torch.empty(len(slots) * self.record_bytes, dtype=torch.uint8)
        raw = buf.numpy()
        rb = self.record_bytes
        for j in np.argsort(slots, kind="stable").tolist():  # in file order
            got = os.preadv(self.fd, [raw[j * rb:(j + 1) * rb]], int(slots[j]) * rb)
            if got != rb:
                raise OSError(f"{self.path}: slot {int(slots[j])} is beyond the end of the file "
                              f"(truncated spill file); the run's client states are damaged")
        out = []
        for j in range(len(slots)):
            state = {}
            for (name, shape, dtype), off in zip(self.schema, self.offsets):
                n = _nbytes(shape, dtype)
                start = j * rb + off
                state[name] = buf[start:start + n].view(getattr(torch, dtype)).reshape(shape)
            out.append(state)
        return out

    def sync(self) -> None:
        """fsync the file (data and size) so a snapshot survives a crash."""
        os.fsync(self.fd)

    @property
    def nbytes(self) -> int:
        """Bytes of the file on disk (its apparent size)."""
        return self.capacity * self.record_bytes

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
