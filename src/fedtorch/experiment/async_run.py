"""The asynchronous loop of an experiment (``federation.mode=async``), as the runner calls it.

``rounds`` counts global-model versions (server updates); ``federation.max_seconds`` can
also stop the run in simulated time. Any algorithm runs: one with ``apply_async`` per
arrival, every other one through the buffered server step
(:mod:`fedtorch.federation.server_steps`, ``federation.buffer_size``). The final model is
always evaluated and saved in ``checkpoint.pt``; whether the run can be resumed is decided
in one place, :func:`fedtorch.experiment.runner.check_resumable`. The run directory's
epilogue (model, plots, selection, ``result.json``) is the runner's, shared with the
synchronous loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fedtorch.experiment.async_outputs import AsyncRecorder, plot_async
from fedtorch.experiment.checkpoint import save_checkpoint
from fedtorch.experiment.config import clients_per_round, delay_model, local_work
from fedtorch.experiment.progress import RoundProgress
from fedtorch.experiment.runner import RunOutcome
from fedtorch.federation.async_loop import AsyncServer, AsyncSettings, run_async
from fedtorch.federation.client_states import ClientStateStore


def async_settings(cfg) -> AsyncSettings:
    """The :class:`AsyncSettings` of a validated config.

    ``rounds`` becomes the number of server updates, ``federation.concurrency`` the
    clients in flight (null: M, :func:`~fedtorch.experiment.config.clients_per_round`),
    ``federation.buffer_size`` the buffered step's K, ``federation.max_seconds`` the
    simulated-time limit (seconds, or None); the local work is
    :func:`~fedtorch.experiment.config.local_work`'s, as for synchronous rounds, and
    ``eval_every`` comes from ``eval.every`` (server versions between test evaluations).

    Args:
        cfg: a config that passed :func:`~fedtorch.experiment.config.validate`.
    """
    f = cfg.federation
    return AsyncSettings(
        **local_work(cfg), updates=cfg.rounds, concurrency=f.concurrency or clients_per_round(cfg),
        lr_delay_alpha=cfg.client.lr_delay_alpha, buffer_size=f.buffer_size, eval_every=cfg.eval.every,
        max_seconds=f.max_seconds,
    )


def run_async_loop(prep, run_dir: Path, on_row: Callable[[dict], None] | None = None) -> RunOutcome:
    """Run the asynchronous loop of a prepared experiment, writing its logs into ``run_dir``.

    Args:
        prep: the runner's ``Prepared`` (``settings`` is an :class:`AsyncSettings`).
        run_dir: the run directory (``config.yaml`` already written).
        on_row: called with every metrics row (one per server version).

    Returns:
        The :class:`~fedtorch.experiment.runner.RunOutcome` for the runner's epilogue.
    """
    cfg, run_dir = prep.cfg, Path(run_dir)
    store = ClientStateStore()
    recorder = AsyncRecorder(run_dir, tensorboard=cfg.logging.tensorboard)
    progress = RoundProgress(cfg.rounds, 0, cfg.logging.progress)
    test_x, test_y = prep.data.data.test_x, prep.data.data.test_y

    def evaluate(x):
        return prep.executor.evaluate(x, test_x, test_y)

    def on_update(state, report):
        row = recorder.record(report)
        if row is not None:
            progress.update(row)
            if on_row is not None:
                on_row(row)

    try:
        core = AsyncServer(prep.algorithm, prep.executor, prep.data, prep.algorithm.init_server(prep.x0), store,
                           prep.settings, delay_model(cfg), evaluate, on_update)
        run_async(core, clock=cfg.federation.clock, sleep_scale=cfg.federation.sleep_scale)
        metrics = recorder.metrics
        if metrics and metrics[-1]["test_accuracy"] is None:  # stopped by max_seconds between evaluations
            metrics[-1]["test_loss"], metrics[-1]["test_accuracy"] = evaluate(core.hooks.eval_model(core.server))
    finally:
        progress.close()
        recorder.close()
    save_checkpoint(run_dir, core.server, store.state_dict(), prep.executor.replica.layout)
    return RunOutcome(
        server=core.server, metrics=metrics, rounds=core.server.round,
        selection=[(u["wave"], u["client_id"]) for u in recorder.updates], unit="wave", title_suffix=", async",
        result_head={"mode": "async"},
        result_tail={
            "updates": core.arrivals, "simulated_seconds": core.now,
            "mean_staleness": sum(u["staleness"] for u in recorder.updates) / max(len(recorder.updates), 1),
        },
        plots=[plot_async],
    )
