"""Asynchronous federation on the wall clock, across processes (``federation.clock=wall``).

FedLab's asynchronous cross-process mode on fedtorch's pieces: every worker rank of a
distributed run trains one client at a time; when it is idle it gets the *current* global
model and a new client, and it pushes the update when it finishes. Rank 0 applies the
updates in the order they really arrive, with the staleness it measures::

    t0 = now;  give every worker one client from model v0           (dispatch wave 0)
    loop:  wait for the first worker to finish (any worker)
           staleness = server.round - v_client   # versions applied between its pull and its push
           server = step.arrive(server, message, staleness)        # FedAsync per arrival, or buffered (FedBuff)
           give that worker a new client from the current model    (the next dispatch wave, one client)

The server side is :class:`~fedtorch.federation.async_loop.AsyncServer`, unchanged: client
choice (wave w takes the first free clients of ``generator(seed, w, "client_sampling")``),
task planning, the server step, client states, evaluation and the event log
(``updates.csv``). Only time differs: a job's ``dispatched_at`` and ``arrived_at`` are
real seconds since the run started on rank 0, and ``federation.max_seconds`` limits real
seconds; the simulated delays (``delays.*``) are not used.

Reproducibility: each client's work (its minibatches, its lr) still comes from generators
of ``(seed, wave, client, purpose)``, but which worker finishes first is a race, so the
order of arrivals, hence the staleness of each update, which clients a wave picks and
the final model, differ from run to run. For a reproducible asynchronous run use the
simulated clock (also across processes).

Entry point: :func:`run_wall_clock`, with a
:class:`~fedtorch.execution.distributed_async.WorkerPool` (one client in flight per worker).
"""

from __future__ import annotations

import time

from fedtorch.federation.async_loop import AsyncServer, Job


def wall_clock_problem(concurrency: int | None, workers: int, num_clients: int) -> str | None:
    """What stops a wall-clock run with ``workers`` worker ranks, or None.

    Args:
        concurrency: ``federation.concurrency`` (None: one client per worker).
        workers: worker ranks (world size - 1).
        num_clients: N.
    """
    if concurrency is not None and concurrency != workers:
        return (f"federation.concurrency={concurrency!r} is not allowed with federation.clock=wall: one client is "
                f"in flight per worker rank, {workers} here (world size - 1); leave it null")
    if workers > num_clients:
        return (f"federation.clock=wall with {workers} worker ranks but data.num_clients={num_clients}: one client "
                "in flight per worker needs at least as many clients as workers; start fewer processes")
    return None


def run_wall_clock(core: AsyncServer, pool) -> AsyncServer:
    """Run an asynchronous federation on the wall clock to its end (module docstring).

    Args:
        core: a fresh :class:`AsyncServer` whose ``settings.concurrency`` is the number of
            workers of ``pool``.
        pool: a :class:`~fedtorch.execution.distributed_async.WorkerPool` (``workers``,
            ``submit``, ``next_result``, ``drain``).

    Returns:
        ``core``, finished: ``.server`` the final state, ``.now`` the real seconds of the
        last applied arrival, ``.arrivals`` the arrivals applied. Clients still in flight
        at the end are waited for (each at most ``execution.timeout_s``) and discarded.

    Raises:
        ValueError: a restored ``core``, or concurrency other than the number of workers.
        PeerError: a worker timed out, crashed, or its training raised (also on a client
            still in flight at the end).
    """
    if core.started:
        raise ValueError("federation.clock=wall starts from wave 0 (wall-clock runs are not resumable)")
    if core.s.concurrency != len(pool.workers):
        raise ValueError(f"concurrency {core.s.concurrency} != {len(pool.workers)} workers: one client in flight each")
    start = time.perf_counter()
    in_flight: dict[int, Job] = {}  # worker rank -> its client

    def now() -> float:
        return time.perf_counter() - start

    def fill() -> None:  # every idle worker gets a client from the current model
        idle = [r for r in pool.workers if r not in in_flight]
        for rank, job in zip(idle, core.dispatch(now(), queue=False)):  # arrivals are the workers' own
            pool.submit(rank, job.broadcast, job.task, job.state)
            job.broadcast = None
            in_flight[rank] = job

    try:
        fill()
        while in_flight and not core.done:
            rank, result = pool.next_result()
            job = in_flight.pop(rank)
            job.arrives_at = now()
            if core.s.max_seconds is not None and job.arrives_at > core.s.max_seconds:
                break
            core.arrive(job, result)
            fill()
    except BaseException:
        pool.drain(check=False)
        raise
    pool.drain()  # the clients still in flight: waited for, discarded; a worker that failed on one stops the run
    return core
