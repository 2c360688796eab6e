"""The client-state store: persistent per-client tensors, kept off the accelerator.

Algorithms with client state (SCAFFOLD's c_i, FedDyn's gradient, FedInit's last local
model, ...) return it from ``finish_local``; the federation loop keeps it here between
participations. States are created lazily at a client's first participation and held
as CPU tensors, so memory is ``P x 4 bytes x vectors per client x clients seen``
(e.g. SCAFFOLD with the 1.66 M-parameter CNN: 6.7 MB per client that has taken part).

Two modes:

* ``ClientStateStore()`` (``federation.state_memory_mb: null``, the default): every state
  in RAM; :meth:`~ClientStateStore.state_dict` is the ``{client id: state}`` dict itself and
  a checkpoint copies it.
* ``ClientStateStore(memory_mb=B, spill_dir=D)``: disk-backed. States live in slot files in
  ``D`` (format, copy-on-write rule and space reclamation:
  :mod:`fedtorch.federation.state_slots`); RAM holds a write-back cache of at most ``B``
  MiB of states (the most recently put; ``B = 0``: none). A state leaving the cache, and
  every cached state at a snapshot, is written to a free slot. :meth:`state_dict` is then
  a small *reference* (the schemas, file names and the ``(client, schema, slot)`` index,
  a few bytes per client) that a checkpoint stores instead of the states; the records of
  the two last snapshots are never overwritten, so ``checkpoint.pt`` and
  ``checkpoint.prev.pt`` both stay loadable after later puts and after a ``kill -9``.

The budget counts the states held by the store between uses; the states a round is
training on (``get_many``'s result, M of them) are the loop's working set, not counted.
Both modes give the same states bit for bit (tensors are stored and read as raw bytes).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from fedtorch.federation.state_slots import Schema, SlotFile, schema_bytes, schema_of
from fedtorch.protocol import State

FORMAT = "fedtorch-client-states/1"
SPILL_DIR_NAME = "client_states"


def _own(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a copy when it is a view of a larger buffer (an executor's stacked
    ``(M, P)`` result): a cached row must not keep the whole batch alive behind the budget."""
    return t if t.untyped_storage().nbytes() <= t.numel() * t.element_size() else t.clone()


def _state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class ClientStateStore:
    """Maps client id -> named CPU tensors, in RAM or spilled to disk beyond a budget.

    Args:
        memory_mb: RAM budget of the states held, in MiB (2^20 bytes); None: no limit,
            everything in RAM (the default). Needs ``spill_dir`` when set.
        spill_dir: folder of the slot files (created on first use), e.g.
            ``<run_dir>/client_states``.

    Raises:
        ValueError: ``memory_mb`` negative or not finite, or given without ``spill_dir``.
    """

    def __init__(self, memory_mb: float | None = None, spill_dir: str | Path | None = None) -> None:
        if memory_mb is not None and not (np.isfinite(memory_mb) and memory_mb >= 0):
            raise ValueError(f"federation.state_memory_mb={memory_mb!r} is not allowed: must be null (no limit) or >= 0 MiB")
        if memory_mb is not None and spill_dir is None:
            raise ValueError("ClientStateStore(memory_mb=...) needs spill_dir, the folder its slot files go in")
        self._states: dict[int, State] = {}  # RAM mode: every state; spill mode: the cache
        self.spill_dir = None if spill_dir is None else Path(spill_dir)
        self.budget = None if memory_mb is None else int(memory_mb * 2**20)
        self.spilled = memory_mb is not None
        self._dirty: set[int] = set()  # cached states newer than their disk record
        self._cache_bytes = 0
        self._schemas: list[Schema] = []
        self._files: list[SlotFile] = []
        self._schema_of = np.full(0, -1, dtype=np.int32)  # client id -> schema of its disk record, -1: none
        self._slot_of = np.full(0, -1, dtype=np.int64)
        self._snapshots: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=2)  # (schema, slot) per snapshot

    # -- the loop's interface --------------------------------------------------------
    def get(self, client_id: int, init: Callable[[], State]) -> State:
        """The client's state, or ``init()`` if it has none yet (not stored until put)."""
        return self.get_many([client_id], init)[0]

    def get_many(self, client_ids: Iterable[int], init: Callable[[], State]) -> list[State]:
        """The states of ``client_ids`` (one batch of disk reads, in file order), in order;
        ``init()`` (on the CPU) for a client with none yet."""
        ids = [int(c) for c in client_ids]
        out: list[State | None] = [self._states.get(c) for c in ids]
        if self.spilled:
            missing = [j for j, s in enumerate(out) if s is None and self._on_disk(ids[j])]
            for k, f in enumerate(self._files):
                js = [j for j in missing if self._schema_of[ids[j]] == k]
                if js:
                    for j, state in zip(js, f.read(self._slot_of[[ids[j] for j in js]])):
                        out[j] = state
        return [s if s is not None else {k: v.cpu() for k, v in init().items()} for s in out]

    def put(self, client_id: int, state: State) -> None:
        """Store the client's new state (an empty state stores nothing)."""
        self.put_many([client_id], [state])

    def put_many(self, client_ids: Iterable[int], states: Iterable[State]) -> None:
        """Store several clients' new states (empty ones store nothing); beyond the budget
        the oldest cached states are written to disk in one batch."""
        for c, state in zip(client_ids, states):
            if not state:
                continue
            c = int(c)
            state = {k: _own(v.cpu()) for k, v in state.items()} if self.spilled else {k: v.cpu() for k, v in state.items()}
            old = self._states.pop(c, None)
            if old is not None:
                self._cache_bytes -= _state_bytes(old)
            self._states[c] = state  # last in dict order: evicted last
            self._cache_bytes += _state_bytes(state)
            self._dirty.add(c)
        if self.spilled:
            self._evict()

    def __len__(self) -> int:
        if not self.spilled:
            return len(self._states)
        return len(set(self._states) | set(np.flatnonzero(self._schema_of >= 0).tolist()))

    @property
    def nbytes(self) -> int:
        """Bytes of all stored states (in RAM and on disk)."""
        if not self.spilled:
            return self._cache_bytes
        sizes = np.array([schema_bytes(s) for s in self._schemas] + [0], dtype=np.int64)
        on_disk = self._schema_of >= 0
        cached = np.array([c for c in self._states if c < len(on_disk)], dtype=np.int64)
        on_disk[cached] = False  # counted in the cache
        return self._cache_bytes + int(sizes[self._schema_of[on_disk]].sum())

    @property
    def memory_bytes(self) -> int:
        """Bytes of the states held in RAM (<= the budget in spill mode)."""
        return self._cache_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes of the slot files (0 in RAM mode)."""
        return sum(f.nbytes for f in self._files)

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a checkpoint stores.

        RAM mode: ``{client id: state}`` (the store's own dict). Spill mode: every cached
        state is written to disk, the files are fsynced, and the result is a reference
        ``{"format", "schemas", "files", "clients", "schema", "slot", "previous"}``
        (``clients``/``schema``/``slot``: ``(S,)`` tensors of the S clients with a state;
        ``previous``: the previous snapshot's ``(schema, slot)``, pinned again on resume).
        Taking a snapshot pins its slots until two newer snapshots exist.
        """
        if not self.spilled:
            return self._states
        self._flush(list(self._dirty))
        for f in self._files:
            f.sync()
        clients = np.flatnonzero(self._schema_of >= 0)
        snap = (self._schema_of[clients].copy(), self._slot_of[clients].copy())
        previous = self._snapshots[-1] if self._snapshots else None
        self._snapshots.append(snap)
        self._repin()
        return {
            "format": FORMAT,
            "schemas": [[[n, list(s), d] for n, s, d in schema] for schema in self._schemas],
            "files": [f.path.name for f in self._files],
            "clients": torch.from_numpy(clients.astype(np.int64)),
            "schema": torch.from_numpy(snap[0].astype(np.int64)),
            "slot": torch.from_numpy(snap[1]),
            "previous": None if previous is None else
            {"schema": torch.from_numpy(previous[0].astype(np.int64)), "slot": torch.from_numpy(previous[1].copy())},
        }

    def load_state_dict(self, states: dict) -> None:
        """Restore what :meth:`state_dict` returned (either mode's form).

        Raises:
            ValueError: a spilled reference given to a store without ``spill_dir``, or a
                reference whose slot files are missing from it.
        """
        if states.get("format") != FORMAT:
            self._states = {int(k): dict(v) for k, v in states.items()}
            self._cache_bytes = sum(_state_bytes(s) for s in self._states.values())
            self._dirty = set(self._states) if self.spilled else set()
            if self.spilled:
                self._evict()
            return
        if self.spill_dir is None:
            raise ValueError("this checkpoint's client states are spilled to disk (federation.state_memory_mb was set); "
                             "the store needs spill_dir, the run directory's client_states folder")
        self.spilled = True
        for name in states["files"]:
            if not (self.spill_dir / name).is_file():
                raise ValueError(f"{self.spill_dir / name} is missing: the checkpoint's client states cannot be read; "
                                 "start the run again")
        self.close()
        self._states, self._dirty, self._cache_bytes = {}, set(), 0
        self._schemas = [tuple((n, tuple(s), d) for n, s, d in schema) for schema in states["schemas"]]
        self._files = [SlotFile(self.spill_dir / name, schema) for name, schema in zip(states["files"], self._schemas)]
        clients = states["clients"].numpy()
        size = int(clients.max()) + 1 if len(clients) else 0
        self._schema_of = np.full(size, -1, dtype=np.int32)
        self._slot_of = np.full(size, -1, dtype=np.int64)
        self._schema_of[clients] = states["schema"].numpy()
        self._slot_of[clients] = states["slot"].numpy()
        self._snapshots.clear()
        prev = states.get("previous")
        if prev is not None:
            self._snapshots.append((prev["schema"].numpy().astype(np.int32), prev["slot"].numpy()))
        self._snapshots.append((self._schema_of[clients].copy(), self._slot_of[clients].copy()))
        self._repin()

    def close(self) -> None:
        """Close the slot files (the store is unusable afterwards in spill mode)."""
        for f in self._files:
            f.close()

    # -- internals ---------------------------------------------------------------------
    def _on_disk(self, client: int) -> bool:
        return client < len(self._schema_of) and self._schema_of[client] >= 0

    def _evict(self) -> None:
        """Drop the oldest cached states until the cache fits the budget (dirty ones go to disk)."""
        if self._cache_bytes <= self.budget:
            return
        leaving, freed = [], 0
        for c, s in self._states.items():  # dict order = oldest put first
            if self._cache_bytes - freed <= self.budget:
                break
            leaving.append(c)
            freed += _state_bytes(s)
        self._flush([c for c in leaving if c in self._dirty])
        for c in leaving:
            self._cache_bytes -= _state_bytes(self._states.pop(c))

    def _flush(self, clients: list[int]) -> None:
        """Write the cached states of ``clients`` to free slots (copy-on-write); clean after."""
        if not clients:
            return
        self._grow_index(max(clients) + 1)
        by_schema: dict[int, list[int]] = {}
        for c in clients:
            by_schema.setdefault(self._schema_index(schema_of(self._states[c])), []).append(c)
        for k, cs in by_schema.items():
            f = self._files[k]
            slots = f.allocate(len(cs))
            f.write(slots, [self._states[c] for c in cs])
            ids = np.array(cs, dtype=np.int64)
            old_k, old_slot = self._schema_of[ids], self._slot_of[ids]
            for j, file in enumerate(self._files):  # free the superseded records
                sel = old_k == j
                if sel.any():
                    file.release(old_slot[sel])
            self._schema_of[ids], self._slot_of[ids] = k, slots
        self._dirty.difference_update(clients)

    def _schema_index(self, schema: Schema) -> int:
        if schema not in self._schemas:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            k = len(self._schemas)
            self._schemas.append(schema)
            self._files.append(SlotFile(self.spill_dir / f"states-{k}.bin", schema, truncate=True))
        return self._schemas.index(schema)

    def _grow_index(self, size: int) -> None:
        if size > len(self._schema_of):
            size = max(size, 2 * len(self._schema_of))
            self._schema_of = np.concatenate([self._schema_of, np.full(size - len(self._schema_of), -1, np.int32)])
            self._slot_of = np.concatenate([self._slot_of, np.full(size - len(self._slot_of), -1, np.int64)])

    def _repin(self) -> None:
        """Pins = the retained snapshots' slots; live = the current index; recompute free lists."""
        live = self._schema_of >= 0
        for k, f in enumerate(self._files):
            pinned = [slot[schema == k] for schema, slot in self._snapshots]
            f.set_pins(np.concatenate(pinned) if pinned else np.zeros(0, np.int64),
                       self._slot_of[live & (self._schema_of == k)])
