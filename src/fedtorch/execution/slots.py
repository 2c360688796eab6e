"""Worker slots (``"cuda:0/1"``, ``"cpu/0"``) and intra-op thread control.

A *slot* is one worker of the parallel executor: a device plus a slot index on it. Several
slots on one GPU ("virtual GPUs") each get a model replica and a CUDA stream; several CPU
slots split the machine's cores between them (intra-op threads per slot).

``torch.set_num_threads`` looks process-global but is not quite: with PyTorch's OpenMP
backend it sets the *calling thread's* OpenMP and MKL thread counts (plus a global default
that threads started later inherit on their first parallel op). :func:`intra_op_threads`
and the parallel executor's workers rely on that: each worker thread sets its own count
once, and the caller's count is restored afterwards.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

KEY = "execution.devices"
_SLOT_RE = re.compile(r"(cpu|cuda:(\d+))/(\d+)")
_ALLOWED = "'cpu/<slot>' or 'cuda:<gpu>/<slot>' with integer gpu and slot, e.g. ['cpu/0', 'cpu/1'] or ['cuda:0/0', 'cuda:0/1']"


class SlotError(ValueError):
    """A device-slot list that cannot be used; the message names key, value and what is allowed."""


@dataclass(frozen=True)
class Slot:
    """One worker slot.

    Attributes:
        device: the torch device (``cpu`` or ``cuda:<gpu>``).
        index: the slot index on that device.
    """

    device: torch.device
    index: int

    def __str__(self) -> str:
        return f"{self.device}/{self.index}"


def parse_slots(texts: Sequence[str], cuda_devices: int | None = None) -> list[Slot]:
    """Parse a slot list such as ``["cuda:0/0", "cuda:0/1"]`` or ``["cpu/0", "cpu/1"]``.

    Args:
        texts: slot strings ``cpu/<slot>`` or ``cuda:<gpu>/<slot>``.
        cuda_devices: number of CUDA devices on this machine (default:
            ``torch.cuda.device_count()``).

    Returns:
        The slots, in the order given.

    Raises:
        SlotError: an empty list, a malformed entry (``"cpu/x"``), a GPU this machine does
            not have (``"cuda:9/0"``), a slot listed twice, or CPU and CUDA slots mixed
            (their results would differ in the last bits).
    """
    if isinstance(texts, str) or not texts:
        raise SlotError(f"{KEY}={texts!r} is not allowed: give a non-empty list of slots {_ALLOWED}")
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count()
    slots: list[Slot] = []
    for text in texts:
        m = _SLOT_RE.fullmatch(str(text).strip())
        if m is None:
            raise SlotError(f"{KEY}: {text!r} is not a device slot; allowed: {_ALLOWED}")
        if m.group(2) is not None:
            gpu = int(m.group(2))
            if gpu >= cuda_devices:
                have = f"{cuda_devices} CUDA device(s) (cuda:0..cuda:{cuda_devices - 1})" if cuda_devices else "no CUDA device"
                raise SlotError(f"{KEY}: {text!r} names GPU {gpu} but this machine has {have}; allowed: {_ALLOWED}")
        slot = Slot(torch.device(m.group(1)), int(m.group(3)))
        if slot in slots:
            raise SlotError(f"{KEY}: slot {str(slot)!r} is listed twice in {list(texts)!r}; each slot must appear once")
        slots.append(slot)
    if len({s.device.type for s in slots}) > 1:
        raise SlotError(f"{KEY}={list(texts)!r} mixes cpu and cuda slots; use slots of one kind")
    return slots


def default_slots(device: str | torch.device, count: int = 2) -> list[str]:
    """``count`` slots on ``device``: ``"cpu" -> ["cpu/0", "cpu/1"]``, ``"cuda" -> ["cuda:0/0", ...]``."""
    device = torch.device(device)
    name = "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
    return [f"{name}/{i}" for i in range(count)]


def threads_per_slot(slots: Sequence[Slot], threads: int | None = None) -> int:
    """Intra-op threads of each CPU worker: ``threads`` if given, else the caller's
    ``torch.get_num_threads()`` split evenly between the CPU slots (at least 1)."""
    if threads is not None:
        return threads
    cpu_slots = sum(1 for s in slots if s.device.type == "cpu")
    return max(1, torch.get_num_threads() // max(cpu_slots, 1))


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads in the calling thread (None: unchanged).

    The previous count is restored on exit. Results of CPU kernels (MKL GEMMs in
    particular) can depend on this count in the last bits, so executors that must agree
    bit for bit run clients under the same count.
    """
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
