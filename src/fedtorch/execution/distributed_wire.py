"""What crosses the wire in ``execution.mode=distributed``, and how.

Every message between rank 0 and a worker rank is two parts (:class:`Link`):

1. a small **header**, a plain Python dict, pickled and sent as ``send_object_list`` does
   (its length, then its bytes, on the gloo group; :class:`Link` says why not that call);
   it holds only numbers, strings, dtypes, shapes, :class:`RoundContext` dataclasses and a
   message class reference: never a tensor;
2. one flat **payload**, a ``uint8`` tensor holding every tensor of the message back to
   back (each field's bytes, 8-byte aligned), sent with ``torch.distributed.isend`` on the
   pair's data group (gloo on the CPU, NCCL on GPUs; :mod:`fedtorch.execution.distributed_setup`).
   The header's ``spec`` lists each field's ``(key, dtype, shape)``, so the receiver
   rebuilds the tensors bit for bit (:func:`pack`, :func:`unpack`). An empty payload is
   not sent.

Every send and receive waits a bounded time (``execution.timeout_s`` on rank 0, twice that
on a worker); a timeout or a closed connection becomes a :class:`PeerError` naming the
other rank. :class:`Traffic` holds the bytes actually sent (headers as pickled, payloads as
sent) and rank 0's transfer seconds, per round.
"""

from __future__ import annotations

import dataclasses
import datetime
import pickle
import time
from dataclasses import dataclass, field
from typing import Hashable

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.protocol import Broadcast, ClientResult, ClientTask, State

STOP, RUN, RESULTS, FAILED = "stop", "run", "results", "failed"  # a header's "op"
ALIGN = 8  # bytes: every field starts at a multiple (a float64 view needs it)

Spec = list[tuple[Hashable, torch.dtype, tuple[int, ...]]]


class PeerError(RuntimeError):
    """Another rank did not answer within ``execution.timeout_s``, or its connection closed
    (it crashed or was killed). ``rank`` is the rank that failed."""

    def __init__(self, rank: int, message: str):
        super().__init__(message)
        self.rank = rank


def pack(tensors: dict[Hashable, Tensor], device: torch.device) -> tuple[Spec, Tensor]:
    """``(spec, payload)``: the tensors' raw bytes back to back in one ``uint8`` tensor.

    Args:
        tensors: key -> tensor of any dtype and shape (contiguous copies are made where needed).
        device: where the payload lives (the data group's device).

    Returns:
        ``spec``, a list of ``(key, dtype, shape)`` in payload order, and the ``(nbytes,)``
        ``uint8`` payload (fields start at multiples of :data:`ALIGN` bytes).
    """
    spec: Spec = []
    offsets, total = [], 0
    for key, t in tensors.items():
        spec.append((key, t.dtype, tuple(t.shape)))
        offsets.append(total)
        total += _aligned(t.numel() * t.element_size())
    payload = torch.empty(total, dtype=torch.uint8, device=device)
    for (key, _, _), start in zip(spec, offsets):
        raw = tensors[key].detach().contiguous().reshape(-1).view(torch.uint8)
        payload[start:start + raw.numel()].copy_(raw)
    return spec, payload


def payload_size(spec: Spec) -> int:
    """Bytes of the payload that :func:`pack` makes for ``spec``."""
    return sum(_aligned(_numel(shape) * torch.empty((), dtype=dtype).element_size()) for _, dtype, shape in spec)


def unpack(spec: Spec, payload: Tensor, copy: bool = True) -> dict[Hashable, Tensor]:
    """The tensors of ``spec`` read back from ``payload`` (the inverse of :func:`pack`).

    Args:
        spec: the ``(key, dtype, shape)`` list of :func:`pack`.
        payload: the ``uint8`` payload.
        copy: give every tensor its own storage (states kept by the client-state store must
            not pin the whole payload); False: views into ``payload``.
    """
    out, start = {}, 0
    for key, dtype, shape in spec:
        n = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        t = payload[start:start + n].view(dtype).reshape(shape)
        out[key] = t.clone() if copy else t
        start += _aligned(n)
    return out


@dataclass
class Traffic:
    """Bytes and seconds of one round on rank 0, per worker rank.

    Attributes:
        round: the round (``ctx.round`` of its tasks).
        clients: rank -> number of clients it trained (rank 0 included).
        down, up: rank -> bytes sent to / received from it (header + payload).
        down_seconds, up_seconds: rank 0's wall seconds spent sending the work, and
            moving the results' payloads (from a result header's arrival to its payload's:
            transfer only, not the worker's training).
        wait_seconds: rank 0's seconds waiting for workers after its own share.
    """

    round: int
    clients: dict[int, int] = field(default_factory=dict)
    down: dict[int, int] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)
    down_seconds: float = 0.0
    up_seconds: float = 0.0
    wait_seconds: float = 0.0

    def row(self) -> dict:
        """A flat dict for ``distributed_traffic.jsonl`` (JSON keys are strings)."""
        return {"round": self.round, "clients": _str_keys(self.clients), "bytes_down": _str_keys(self.down),
                "bytes_up": _str_keys(self.up), "down_seconds": self.down_seconds, "up_seconds": self.up_seconds,
                "wait_seconds": self.wait_seconds}


class Link:
    """Point-to-point messages between this rank and ``peer`` (module docstring).

    A header travels as two gloo tensors, its pickle's length (int64) and the pickle
    (uint8): what ``torch.distributed.send_object_list`` sends, but with a wait bounded per
    call (a worker waits longer than rank 0, see :meth:`send`).

    Args:
        me: this process's global rank.
        peer: the other rank's global rank.
        control: the gloo group of the pair {rank 0, the worker} (headers).
        data: the group of payloads: ``control`` on the CPU, the pair's NCCL group on GPUs.
        device: where payloads are received (cpu for gloo, this rank's GPU for NCCL).
        timeout_s: ``execution.timeout_s``.
        patience: how many ``timeout_s`` this side waits for the peer (rank 0: 1; a
            worker: 2, since rank 0 may itself wait ``timeout_s`` for another worker
            before it gives up and stops everyone, and evaluates between rounds).
    """

    def __init__(self, me: int, peer: int, control, data, device: torch.device, timeout_s: float, patience: int = 1):
        self.me, self.peer, self.control, self.data, self.device = me, peer, control, data, device
        self.timeout_s, self.patience = timeout_s, patience

    def send(self, header: dict, payload: Tensor | None = None) -> int:
        """Send ``header`` (with the payload's size) and then ``payload``; returns the bytes
        sent. gloo's send returns once the peer has received (waits at most
        ``patience * timeout_s``).

        Raises:
            PeerError: the peer did not take them in time, or is gone.
        """
        nbytes = 0 if payload is None else payload.numel()
        data = pickle.dumps({**header, "nbytes": nbytes})
        with _TranslateErrors(self, "send to"):
            self._wait(dist.isend(torch.tensor([len(data)], dtype=torch.int64), self.peer, group=self.control))
            self._wait(dist.isend(torch.frombuffer(bytearray(data), dtype=torch.uint8), self.peer, group=self.control))
            if nbytes:
                self._wait(dist.isend(payload, self.peer, group=self.data), gloo=self.data is self.control)
        return 8 + len(data) + nbytes

    def receive(self, copy: bool = True) -> tuple[dict, dict[Hashable, Tensor], int, float]:
        """``(header, tensors, bytes received, payload seconds)`` of the peer's next message.

        Raises:
            PeerError: nothing arrived within ``patience * timeout_s``, or the peer is gone.
        """
        size = torch.zeros(1, dtype=torch.int64)
        with _TranslateErrors(self, "receive from"):
            self._wait(dist.irecv(size, self.peer, group=self.control))
            data = torch.empty(int(size), dtype=torch.uint8)
            self._wait(dist.irecv(data, self.peer, group=self.control))
            header = pickle.loads(data.numpy().tobytes())
            start = time.perf_counter()
            payload = torch.empty(header["nbytes"], dtype=torch.uint8, device=self.device)
            if header["nbytes"]:
                self._wait(dist.irecv(payload, self.peer, group=self.data), gloo=self.data is self.control)
        seconds = time.perf_counter() - start
        tensors = unpack(header.get("spec", []), payload, copy=copy)
        return header, tensors, 8 + int(size) + header["nbytes"], seconds

    def _wait(self, work, gloo: bool = True) -> None:
        if gloo:  # a bounded wait; NCCL: its group's timeout (watchdog)
            work.wait(datetime.timedelta(seconds=self.patience * self.timeout_s))
        else:
            work.wait()

    @property
    def limit(self) -> str:
        """The wait, as errors name it."""
        prefix = "" if self.patience == 1 else f"{self.patience} x "
        return f"{prefix}execution.timeout_s={self.timeout_s:g} s"


class _TranslateErrors:
    """Turns a backend's timeout or closed-connection error into a :class:`PeerError`."""

    def __init__(self, link: Link, what: str):
        self.link, self.what = link, what

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or not isinstance(error, RuntimeError) or isinstance(error, PeerError):
            return False
        text = " ".join(str(error).split())
        peer, me = self.link.peer, self.link.me
        if "timed out" in text.lower() or "timeout" in text.lower():
            why = f"no answer within {self.link.limit}"
        elif "closed" in text.lower() or "reset" in text.lower() or "broken pipe" in text.lower():
            why = "its connection closed (the process crashed or was killed)"
        else:
            why = text[:300]
        raise PeerError(peer, f"rank {peer} failed: rank {me} could not {self.what} it: {why}") from None


# ---- the messages of a round (DistributedExecutor) ------------------------------------

def work_of(header: dict, tensors: dict, device: torch.device) -> tuple[Broadcast, list[ClientTask], list[State]]:
    """A worker's view of a RUN message: the broadcast, its tasks and their states."""
    contexts = header["contexts"]
    extra = {key[1]: t for key, t in tensors.items() if key[0] == "extra"}
    broadcast = Broadcast(x=tensors[("x",)].to(device), extra={k: v.to(device) for k, v in extra.items()},
                          buffers=None if ("buffers",) not in tensors else tensors[("buffers",)].to(device))
    states: list[State] = [{} for _ in contexts]
    for key, t in tensors.items():
        if key[0] == "state":
            states[key[1]][key[2]] = t
    tasks = [ClientTask(ctx, tensors[("indices", j)], tensors.get(("task_buffers", j))) for j, ctx in enumerate(contexts)]
    return broadcast, tasks, states


def results_message(results: list[ClientResult], device: torch.device, extra: dict | None = None,
                     extra_tensors: dict | None = None) -> tuple[dict, torch.Tensor]:
    """A worker's RESULTS header and payload: message tensor fields, states, buffers (and
    an edge leader's ``extra`` header fields and tensors, :func:`~fedtorch.execution.distributed_edges.part_fields`)."""
    tensors, metas = dict(extra_tensors or {}), []
    for j, res in enumerate(results):
        fields = {f.name: getattr(res.message, f.name) for f in dataclasses.fields(res.message)}
        plain = {k: v for k, v in fields.items() if not isinstance(v, torch.Tensor)}
        tensors.update({("message", j, k): v for k, v in fields.items() if k not in plain})
        tensors.update({("state", j, k): v for k, v in res.state.items()})
        if res.buffers is not None:
            tensors[("buffers", j)] = res.buffers
        metas.append({"client_id": res.client_id, "cls": type(res.message), "plain": plain, "seconds": res.seconds})
    spec, payload = pack(tensors, device)
    return {"op": RESULTS, "results": metas, "spec": spec, **(extra or {})}, payload


def rebuild_result(meta: dict, j: int, tensors: dict, device: torch.device) -> ClientResult:
    """Result ``j`` of a RESULTS message, rebuilt on rank 0 (message on ``device``, state on the CPU)."""
    fields = {key[2]: t.to(device) for key, t in tensors.items() if key[0] == "message" and key[1] == j}
    state = {key[2]: t.cpu() for key, t in tensors.items() if key[0] == "state" and key[1] == j}
    buffers = tensors.get(("buffers", j))
    message = meta["cls"](**fields, **meta["plain"])
    return ClientResult(meta["client_id"], message, state, meta["seconds"], None if buffers is None else buffers.to(device))


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _str_keys(d: dict) -> dict:
    return {str(k): v for k, v in d.items()}
