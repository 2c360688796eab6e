"""The asynchronous loop of an experiment (``federation.mode=async``), as the runner calls it.

``rounds`` counts global-model versions (server updates); ``federation.max_seconds`` can
also stop the run in simulated time. Any algorithm runs: one with ``apply_async`` per
arrival, every other one through the buffered server step
(:mod:`fedtorch.federation.server_steps`, ``federation.buffer_size``). The final model is
always evaluated and saved in ``checkpoint.pt``, with checkpoints every
``checkpoint.every`` server versions on the way (simulated clock); whether the run can be
resumed is decided in one place, :func:`fedtorch.experiment.run_dirs.check_resumable`. The run directory's
epilogue (model, plots, selection, ``result.json``) is the runner's, shared with the
synchronous loop.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from pathlib import Path
from typing import Callable

from fedtorch.execution.distributed_async import WorkerPool
from fedtorch.experiment.async_outputs import AsyncRecorder, plot_async
from fedtorch.experiment.checkpoint import read_checkpoint, save_checkpoint
from fedtorch.experiment.run_settings import clients_per_round, delay_model, local_work
from fedtorch.experiment.divergence import Diverged, divergence
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.progress import RoundProgress
from fedtorch.experiment.runner import RunOutcome
from fedtorch.federation.async_loop import AsyncServer, AsyncSettings, run_async
from fedtorch.federation.client_states import SPILL_DIR_NAME, ClientStateStore
from fedtorch.federation.wallclock_async import run_wall_clock


def async_settings(cfg) -> AsyncSettings:
    """The :class:`AsyncSettings` of a validated config.

    ``rounds`` becomes the number of server updates, ``federation.concurrency`` the
    clients in flight (null: M, :func:`~fedtorch.experiment.run_settings.clients_per_round`),
    ``federation.buffer_size`` the buffered step's K, ``federation.max_seconds`` the
    simulated-time limit (seconds, or None); the local work is
    :func:`~fedtorch.experiment.run_settings.local_work`'s, as for synchronous rounds, and
    ``eval_every`` comes from ``eval.every`` (server versions between test evaluations).

    Args:
        cfg: a config that passed :func:`~fedtorch.experiment.config.validate`.
    """
    f = cfg.federation
    if f.clock == "wall":
        check_wall_clock(cfg)
    return AsyncSettings(
        **local_work(cfg), updates=cfg.rounds, concurrency=f.concurrency or clients_per_round(cfg),
        lr_delay_alpha=cfg.client.lr_delay_alpha, buffer_size=f.buffer_size, eval_every=cfg.eval.every,
        max_seconds=f.max_seconds,
    )


def check_wall_clock(cfg) -> None:
    """The rules of ``federation.clock=wall`` that need no process group (the number of
    workers is checked under torchrun, :func:`fedtorch.federation.wallclock_async.wall_clock_problem`).

    Raises:
        ConfigError: not ``execution.mode=distributed``, or a delay-aware learning rate.
    """
    if cfg.execution.mode != "distributed":
        raise ConfigError("federation.clock=wall needs execution.mode=distributed "
                          f"(execution.mode={cfg.execution.mode!r}): its clients in flight are worker processes; "
                          "launch it under torchrun (docs/distributed.md), or use federation.clock=simulated "
                          "in one process")
    if cfg.client.lr_delay_alpha:
        raise ConfigError(f"client.lr_delay_alpha={cfg.client.lr_delay_alpha!r} is not allowed with "
                          "federation.clock=wall: the delay-aware rate needs a client's duration at dispatch, "
                          "unknown on the wall clock; use 0")


def run_async_loop(prep, run_dir: Path, resume: bool = False, on_row: Callable[[dict], None] | None = None,
                   tracking=None) -> RunOutcome:
    """Run (or, with ``resume``, continue) the asynchronous loop of a prepared experiment,
    writing its logs and checkpoints into ``run_dir``.

    A checkpoint is written after the arrival group in which the server version reaches a
    multiple of ``checkpoint.every`` (once the wave dispatched after it is trained, so the
    clients in flight are complete: :mod:`fedtorch.federation.async_snapshot`) and at the
    end. ``resume`` restores the last good checkpoint, truncates the logs to it and goes on:
    the run ends as the uninterrupted one would, model and ``updates.csv`` bit for bit.
    Resuming needs the simulated clock (``federation.clock=simulated``).

    Args:
        prep: the runner's ``Prepared`` (``settings`` is an :class:`AsyncSettings`).
        run_dir: the run directory (``config.yaml`` already written).
        resume: continue from the directory's checkpoint.
        on_row: called with every metrics row (one per server version).
        tracking: the run's MLflow / W&B trackers (:class:`~fedtorch.experiment.tracking.Tracking`), or None.

    Returns:
        The :class:`~fedtorch.experiment.runner.RunOutcome` for the runner's epilogue
        (``diverged`` set when the run stopped as diverged).

    Raises:
        ConfigError: ``resume`` and no usable checkpoint, or one of another layout.
    """
    cfg, run_dir = prep.cfg, Path(run_dir)
    layout = prep.executor.replica.layout
    store = ClientStateStore(cfg.federation.state_memory_mb, run_dir / SPILL_DIR_NAME)
    recorder = AsyncRecorder(run_dir, tensorboard=cfg.logging.tensorboard, tracking=tracking)
    test_x, test_y = prep.data.data.test_x, prep.data.data.test_y
    wall = cfg.federation.clock == "wall"
    pool = WorkerPool(prep.executor) if wall else None  # the worker ranks, one client in flight each
    settings = dataclasses.replace(prep.settings, concurrency=len(pool.workers)) if wall else prep.settings
    recent: deque[bool] = deque(maxlen=settings.concurrency)  # the last arrivals: non-finite?

    def evaluate(x, buffers=None):
        return prep.executor.evaluate(x, test_x, test_y, buffers)

    def on_update(state, report):
        row = recorder.record(report)
        recent.append(not report.record.applied)
        if row is not None:
            progress.update(row)
            if on_row is not None:
                on_row(row)
        if row is None and report.record.applied:
            return  # a buffered arrival: the model and the non-finite share are unchanged, nothing to judge
        losses = [row["train_loss"], row["test_loss"]] if row is not None else []
        full = len(recent) == recent.maxlen  # judge a share of a whole window, not of the first arrival
        reason = divergence(state.x, sum(recent), len(recent) if full else 0, losses, cfg.eval)
        if reason is not None:
            raise Diverged(state.round, f"{reason}, at arrival {report.record.update}")

    core = AsyncServer(prep.algorithm, prep.executor, prep.data, prep.initial_server(), store,
                       settings, delay_model(cfg), evaluate, on_update)
    if resume:
        _restore(core, store, recorder, run_dir, layout, prep.x0.device)
    progress = RoundProgress(cfg.rounds, core.server.round, cfg.logging.progress)
    saved = [core.server.round]

    def checkpoint(core: AsyncServer) -> None:
        every = cfg.checkpoint.every
        if core.server.round // every > saved[0] // every:
            _save(core, store, recorder, run_dir, layout)
            saved[0] = core.server.round

    diverged = None
    try:
        if wall:
            run_wall_clock(core, pool)
        else:
            run_async(core, clock=cfg.federation.clock, sleep_scale=cfg.federation.sleep_scale,
                      on_group=checkpoint if cfg.federation.clock == "simulated" else None)
        metrics = recorder.metrics
        if metrics and metrics[-1]["test_accuracy"] is None:  # stopped by max_seconds between evaluations
            metrics[-1]["test_loss"], metrics[-1]["test_accuracy"] = evaluate(core.hooks.eval_model(core.server))
        _save(core, store, recorder, run_dir, layout, loop_state=cfg.federation.clock == "simulated")
    except Diverged as d:
        diverged = d
    finally:
        progress.close()
        recorder.close()
    metrics = recorder.metrics
    return RunOutcome(
        server=core.server, metrics=metrics, rounds=core.server.round,
        selection=recorder.selection, unit="wave", title_suffix=", async",
        result_head={"mode": "async"},
        result_tail={
            "updates": core.arrivals, ("wall_clock_seconds" if wall else "simulated_seconds"): core.now,
            "mean_staleness": recorder.mean_staleness,
        },
        plots=[plot_async], diverged=diverged,
    )


def _save(core: AsyncServer, store, recorder: AsyncRecorder, run_dir: Path, layout, loop_state: bool = True) -> None:
    """A checkpoint; with ``loop_state`` (simulated clock) also the loop's snapshot, which
    makes it resumable (the asyncio clock's clients in flight are tasks, not snapshotted)."""
    recorder.sync()
    extra = {"async": core.snapshot(), "recorder": recorder.pending()} if loop_state else None
    save_checkpoint(run_dir, core.server, store.state_dict(), layout, extra=extra)


def _restore(core: AsyncServer, store, recorder: AsyncRecorder, run_dir: Path, layout, device) -> None:
    try:
        ckpt = read_checkpoint(run_dir, layout)
        if not ckpt.extra or "async" not in ckpt.extra:
            raise ValueError(f"{ckpt.path} holds no asynchronous loop state (written by an older fedtorch); "
                             "start the run again")
        store.load_state_dict(ckpt.clients)
        core.restore(ckpt.extra["async"], ckpt.server.replace(x=ckpt.server.x.to(device)))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    recorder.load()
    recorder.truncate(core.server.round, core.arrivals)
    recorder.restore_pending(ckpt.extra["recorder"])
