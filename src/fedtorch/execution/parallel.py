"""The device-slot executor: worker threads, one per slot, each with its own model replica.

``devices=["cuda:0/0", "cuda:0/1", "cuda:1/0"]`` runs three workers: two on GPU 0 (each with
its own CUDA stream, so their kernels overlap) and one on GPU 1; ``["cpu/0", "cpu/1"]`` runs
two CPU workers that split the intra-op threads. Every worker runs the same per-client loop
as the serial executor (:func:`~fedtorch.execution.local_training.train_client`); clients
are handed out longest-first from one queue, and results come back in task order.

Determinism: a client's computation depends only on its task, its state, the broadcast and
its generators (``(seed, round, client, purpose)``), never on which worker ran it or when.
So the parallel executor gives the same bits as the serial one *when each client is computed
with the same intra-op thread count* (CPU GEMMs may round differently with 1 and 2 threads):
run the serial executor with ``threads`` equal to this executor's :attr:`threads` (the
default splits the caller's threads between the CPU slots). On CUDA, identical bits also
need deterministic kernels (``torch.use_deterministic_algorithms(True)`` and
``CUBLAS_WORKSPACE_CONFIG=:4096:8``; cuBLAS may otherwise pick workspaces per stream).

Thread safety (including free-threaded CPython 3.13t, ``python -X gil=0``): workers share
only read-only tensors (training data, broadcast), the algorithm object (whose hooks are
pure functions of their arguments, as the protocol requires) and a thread-safe job queue;
each writes its results into its own slots of a per-round list under a condition variable.
Replicas, generators, gradients and per-run buffers are private to one worker.
"""

from __future__ import annotations

import queue
import threading
import weakref
from typing import Sequence

import torch

from fedtorch.execution.base import Executor
from fedtorch.execution.local_training import broadcast_to, train_task
from fedtorch.execution.slots import Slot, default_slots, parse_slots, threads_per_slot
from fedtorch.flat import FlatModule
from fedtorch.protocol import Broadcast, ClientMessage, ClientResult, ClientTask, State


class ParallelExecutor(Executor):
    """Train the selected clients concurrently on worker slots.

    Args:
        *args, **kwargs: those of :class:`~fedtorch.execution.base.Executor`; ``device``
            is where messages are returned and evaluation runs (the server's device), and
            ``threads`` is the intra-op thread count of each CPU worker (default: the
            caller's thread count divided by the number of CPU slots, at least 1).
        devices: worker slots, e.g. ``["cpu/0", "cpu/1"]`` or ``["cuda:0/0", "cuda:0/1"]``
            (default: two slots on ``device``).

    Raises:
        SlotError: a malformed, duplicate or absent slot (see :func:`parse_slots`).

    The worker threads live as long as the executor; :meth:`close` (or garbage collection)
    stops them.
    """

    name = "parallel"

    def __init__(self, *args, devices: Sequence[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots = parse_slots(devices or default_slots(self.device))
        self.threads = threads_per_slot(self.slots, self.threads)
        data = {dev: (self.train_x.to(dev), self.train_y.to(dev)) for dev in dict.fromkeys(s.device for s in self.slots)}
        if any(s.device.type == "cuda" for s in self.slots):
            torch.cuda.synchronize()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = [
            _Worker(slot, FlatModule(self.model_factory().to(slot.device)), *data[slot.device], self.threads, self.device, self._jobs)
            for slot in self.slots
        ]
        caller_threads = torch.get_num_threads()
        for w in self._workers:
            w.start()
        for w in self._workers:
            w.ready.wait()
        failed = next((w for w in self._workers if w.setup_error is not None), None)
        if failed is not None:
            _stop(self._jobs, self._workers)
            torch.set_num_threads(caller_threads)
            raise RuntimeError(f"parallel execution: slot {failed.slot} could not start: {failed.setup_error}") from failed.setup_error
        # A worker's torch.set_num_threads also set the default of threads started later;
        # put the caller's count back (it sets the caller's own count, unchanged, too).
        torch.set_num_threads(caller_threads)
        self._finalizer = weakref.finalize(self, _stop, self._jobs, self._workers)
        cpu = self.slots[0].device.type == "cpu"
        per = f", {self.threads} intra-op thread(s) each" if cpu else ", one CUDA stream each"
        self.description = f"parallel on {len(self.slots)} slot(s) [{', '.join(map(str, self.slots))}]{per}"

    def run(self, algorithm, broadcast: Broadcast, tasks: Sequence[ClientTask], states: Sequence[State]) -> list[ClientResult]:
        """Local training of ``tasks`` on the workers.

        Returns:
            One :class:`ClientResult` per task, in task order; messages on :attr:`device`,
            states on the CPU.

        Raises:
            RuntimeError: the executor was closed.
            Exception: the first (in task order) exception raised by a client's training.
        """
        if not self._finalizer.alive:
            raise RuntimeError("ParallelExecutor is closed")
        bcasts = {dev: broadcast_to(broadcast, dev) for dev in dict.fromkeys(s.device for s in self.slots)}
        batch = _Batch(len(tasks))
        # Longest first (stable on ties): the queue balances load, order fixes nothing else.
        order = sorted(range(len(tasks)), key=lambda i: -tasks[i].ctx.num_steps)
        for i in order:
            self._jobs.put((batch, i, algorithm, bcasts, tasks[i], states[i], self.batch_size, self.loss_fn, self.gradients))
        return batch.wait()

    def close(self) -> None:
        """Stop the worker threads (idempotent)."""
        self._finalizer()

    def __enter__(self) -> "ParallelExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Batch:
    """The results of one ``run`` call, filled in by the workers."""

    def __init__(self, count: int):
        self.results: list[ClientResult | None] = [None] * count
        self.errors: list[BaseException | None] = [None] * count
        self._left = count
        self._done = threading.Condition()

    def finish(self, i: int, result: ClientResult | None, error: BaseException | None) -> None:
        with self._done:
            self.results[i], self.errors[i] = result, error
            self._left -= 1
            if self._left == 0:
                self._done.notify_all()

    def wait(self) -> list[ClientResult]:
        with self._done:
            while self._left:
                self._done.wait()
        for error in self.errors:
            if error is not None:
                raise error
        return self.results  # type: ignore[return-value]


class _Worker(threading.Thread):
    """One slot: a replica, the data on its device, its own CUDA stream or thread count."""

    def __init__(self, slot: Slot, replica: FlatModule, train_x, train_y, threads: int, out_device, jobs):
        super().__init__(name=f"fedtorch-slot-{slot}", daemon=True)
        self.slot, self.replica, self.train_x, self.train_y = slot, replica, train_x, train_y
        self.threads, self.out_device, self.jobs = threads, out_device, jobs
        self.ready = threading.Event()
        self.setup_error: BaseException | None = None
        self.stream = None

    def run(self) -> None:
        try:
            if self.slot.device.type == "cuda":
                torch.cuda.set_device(self.slot.device)
                self.stream = torch.cuda.Stream(self.slot.device)
            else:
                # get_num_threads first: torch initialises a thread's count lazily, from the
                # global default, on its first parallel op; afterwards set_num_threads sets this
                # thread's OpenMP/MKL count for good (the caller then restores the default).
                torch.get_num_threads()
                torch.set_num_threads(self.threads)
        except BaseException as e:  # the constructor re-raises it; the thread still serves _stop's None
            self.setup_error = e
        finally:
            self.ready.set()
        while True:
            job = self.jobs.get()
            if job is None:
                return
            batch, i = job[0], job[1]
            try:
                result = self._train(*job[2:])
            except BaseException as e:  # handed to the caller, re-raised there
                batch.finish(i, None, e)
            else:
                batch.finish(i, result, None)

    def _train(self, algorithm, bcasts, task: ClientTask, state: State, batch_size: int, loss_fn, gradients) -> ClientResult:
        dev = self.slot.device
        if self.stream is None:
            return self._train_here(algorithm, bcasts[dev], task, state, batch_size, loss_fn, gradients)
        # The broadcast and the data were written on the default stream: wait for them.
        self.stream.wait_stream(torch.cuda.default_stream(dev))
        with torch.cuda.stream(self.stream):
            result = self._train_here(algorithm, bcasts[dev], task, state, batch_size, loss_fn, gradients)
        self.stream.synchronize()
        # The caller reads these tensors on its default stream; tell the caching allocator
        # so their memory is not reused by this stream before that work is done.
        for t in _message_tensors(result.message) + ([] if result.buffers is None else [result.buffers]):
            if t.is_cuda:
                t.record_stream(torch.cuda.default_stream(t.device))
        return result

    def _train_here(self, algorithm, bcast: Broadcast, task: ClientTask, state: State, batch_size: int, loss_fn,
                    gradients) -> ClientResult:
        result = train_task(algorithm, self.replica, self.train_x, self.train_y, task, batch_size, bcast, state, loss_fn, gradients)
        if self.out_device != self.slot.device:
            result.message = _message_to(result.message, self.out_device)
            result.buffers = None if result.buffers is None else result.buffers.to(self.out_device)
        return result


def _message_tensors(message: ClientMessage) -> list[torch.Tensor]:
    return [v for v in vars(message).values() if isinstance(v, torch.Tensor)]


def _message_to(message: ClientMessage, device: torch.device) -> ClientMessage:
    fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(message).items()}
    return type(message)(**fields)


def _stop(jobs: queue.SimpleQueue, workers: list[_Worker]) -> None:
    for _ in workers:
        jobs.put(None)
    for w in workers:
        if w is not threading.current_thread():
            w.join(timeout=10)
