"""Non-blocking work for the worker ranks of a distributed run: one client at a time per
worker, results taken in the order they arrive (``federation.clock=wall``).

:class:`WorkerPool` sits on a rank-0 :class:`~fedtorch.execution.distributed.DistributedExecutor`
and reuses its links, message format and error handling unchanged; the workers run their
usual :meth:`~fedtorch.execution.distributed.DistributedExecutor.serve` loop (a one-client
task is an ordinary RUN message)::

    pool = WorkerPool(executor)           # rank 0; the workers are ranks 1 .. W-1
    pool.submit(1, broadcast, task, state)
    rank, result = pool.next_result()     # whichever worker finished first
    pool.drain()                          # before executor.stop(): results still owed, dropped

How: :meth:`WorkerPool.submit` sends the task on the calling thread, then starts one
receiving thread for that worker, which waits (at most ``execution.timeout_s``, as every
receive of the executor) for the worker's result and puts it on a queue;
:meth:`WorkerPool.next_result` takes the first one there. A worker has at most one task
outstanding, so at any time a pair's process group {0, r} is used by one thread only:
the send happens before its receiving thread starts, and the next send to that worker
only after that thread has delivered.
"""

from __future__ import annotations

import queue
import threading
import time

from fedtorch.execution.distributed_wire import Traffic
from fedtorch.protocol import Broadcast, ClientResult, ClientTask, State


class WorkerPool:
    """Rank 0's asynchronous view of the worker ranks (module docstring).

    Args:
        executor: rank 0's :class:`~fedtorch.execution.distributed.DistributedExecutor`,
            bound to the run's algorithm (``bind``).

    Attributes:
        workers: the worker ranks, ``[1, ..., W-1]`` (rank 0 applies updates, it does not
            train in this mode).
        traffic: the executor's :class:`~fedtorch.execution.distributed_wire.Traffic` list;
            one row per arrival here, in arrival order (``round``: the client's dispatch
            wave; ``wait_seconds``: rank 0 blocked in :meth:`next_result`, which overlaps
            the worker's transfer ``up_seconds`` or not).

    Raises:
        ValueError: an executor on another rank than 0, or not bound to an algorithm.
    """

    def __init__(self, executor):
        if executor.rank != 0 or executor.algorithm is None:
            raise ValueError("WorkerPool needs rank 0's DistributedExecutor, bound to the run's algorithm")
        self.executor = executor
        self.workers = list(range(1, executor.world_size))
        self.traffic = executor.traffic
        self._results: queue.Queue = queue.Queue()
        self._threads: dict[int, threading.Thread] = {}
        self._sent: dict[int, tuple[int, int, float]] = {}  # worker -> (wave, bytes down, send seconds) of its task

    @property
    def busy(self) -> set[int]:
        """The workers with a task outstanding (its result not yet taken by :meth:`next_result`)."""
        return set(self._sent)

    def submit(self, rank: int, broadcast: Broadcast, task: ClientTask, state: State) -> None:
        """Send one client's task to worker ``rank`` and start waiting for its result.

        Args:
            rank: an idle worker rank (in :attr:`workers`, not :attr:`busy`).
            broadcast: the model version the client trains from.
            task, state: the client's task and persistent state (as for ``executor.run``).

        Raises:
            ValueError: ``rank`` is not an idle worker.
            PeerError: the worker did not take the task in time, or is gone.
        """
        if rank not in self.workers or rank in self._sent:
            raise ValueError(f"rank {rank} is not an idle worker (workers {self.workers}, busy {sorted(self._sent)})")
        start = time.perf_counter()
        nbytes = self.executor._send_work(rank, broadcast, [task], [state])
        self._sent[rank] = (task.ctx.round, nbytes, time.perf_counter() - start)
        thread = threading.Thread(target=self._receive, args=(rank,), name=f"fedtorch-receive-{rank}", daemon=True)
        self._threads[rank] = thread
        thread.start()

    def _receive(self, rank: int) -> None:
        try:
            (result,), nbytes, seconds = self.executor._receive_results(rank)
            self._results.put((rank, result, nbytes, seconds))
        except BaseException as e:  # delivered to next_result, which raises it on rank 0's main thread
            self._results.put((rank, e, 0, 0.0))

    def next_result(self) -> tuple[int, ClientResult]:
        """Wait for the first outstanding result to arrive: ``(worker rank, result)``.

        The wait is bounded: every receiving thread gives up after ``execution.timeout_s``.

        Raises:
            ValueError: no task outstanding.
            PeerError: that worker timed out, crashed, or its training raised (named).
        """
        if not self._sent:
            raise ValueError("next_result with no task outstanding")
        start = time.perf_counter()
        rank, result, nbytes, seconds = self._results.get()
        waited = time.perf_counter() - start
        self._threads.pop(rank).join()
        wave, down, down_seconds = self._sent.pop(rank)
        if isinstance(result, BaseException):
            raise result
        self.traffic.append(Traffic(round=wave, clients={rank: 1}, down={rank: down}, up={rank: nbytes},
                                    down_seconds=down_seconds, up_seconds=seconds, wait_seconds=waited))
        return rank, result

    def drain(self, check: bool = True) -> None:
        """Wait for every outstanding result and drop it (the end of a run: clients still in
        flight are discarded), so that ``executor.stop`` can talk to every worker.

        Args:
            check: raise a worker's failure (False on an error path, not to hide the error
                being raised).

        Raises:
            PeerError: with ``check``, a worker timed out, crashed, or its training raised
                on its last client.
        """
        for thread in list(self._threads.values()):
            thread.join()
        self._threads.clear()
        self._sent.clear()
        errors = []
        while not self._results.empty():
            result = self._results.get_nowait()[1]
            if isinstance(result, BaseException):
                errors.append(result)
        if check and errors:
            raise errors[0]

