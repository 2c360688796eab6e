"""Running an experiment with ``federation.mode=async`` (the runner's branch for it).

``rounds`` counts global-model versions (server updates); ``federation.max_seconds`` can
also stop the run in simulated time. The final model is always evaluated and saved in
``checkpoint.pt``. Async runs cannot be resumed: the clients in flight (their models and
timers) are not checkpointed, so ``--resume`` is refused with a config error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from fedtorch.experiment.async_outputs import AsyncRecorder, plot_async
from fedtorch.experiment.atomic import write_text
from fedtorch.experiment.checkpoint import save_checkpoint, save_model
from fedtorch.experiment.config import clients_per_round, delay_model
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.plots import plot_run
from fedtorch.experiment.progress import RoundProgress
from fedtorch.experiment.recorder import final_result
from fedtorch.experiment.selection import write_selection
from fedtorch.federation.async_loop import AsyncServer, AsyncSettings, run_async
from fedtorch.federation.client_states import ClientStateStore


def async_settings(cfg) -> AsyncSettings:
    """The :class:`AsyncSettings` of a validated config.

    ``rounds`` becomes the number of server updates, ``federation.concurrency`` the
    clients in flight (null: M, :func:`~fedtorch.experiment.config.clients_per_round`),
    ``federation.max_seconds`` the simulated-time limit (seconds, or None); the local
    training keys come from ``client.*``, the seed from ``seed``, ``eval_every`` from
    ``eval.every`` (server versions between test evaluations).

    Args:
        cfg: a config that passed :func:`~fedtorch.experiment.config.validate` (values are
            not checked again).
    """
    c, f = cfg.client, cfg.federation
    return AsyncSettings(
        updates=cfg.rounds, concurrency=f.concurrency or clients_per_round(cfg), batch_size=c.batch_size,
        local_epochs=c.local_epochs, local_steps=c.local_steps, lr=c.lr, lr_delay_alpha=c.lr_delay_alpha,
        early_stopping=c.early_stopping, seed=cfg.seed, eval_every=cfg.eval.every, max_seconds=f.max_seconds,
    )


def execute_async(prep, run_dir: Path, resume: bool = False, on_row: Callable[[dict], None] | None = None) -> dict:
    """Run the asynchronous loop of a prepared experiment and write its run directory.

    Args:
        prep: the runner's ``Prepared`` (data, algorithm, executor, x0, config).
        run_dir: the run directory (``config.yaml`` already written).
        resume: must be False.
        on_row: called with every metrics row (one per server version).

    Returns:
        The result, also written to ``result.json``.

    Raises:
        ConfigError: ``resume`` requested.
    """
    if resume:
        raise ConfigError(f"{run_dir} is an async run (federation.mode=async); async runs cannot be resumed, run it again")
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
                           async_settings(cfg), delay_model(cfg), evaluate, on_update)
        run_async(core, clock=cfg.federation.clock, sleep_scale=cfg.federation.sleep_scale)
        metrics = recorder.metrics
        if metrics and metrics[-1]["test_accuracy"] is None:  # stopped by max_seconds between evaluations
            metrics[-1]["test_loss"], metrics[-1]["test_accuracy"] = evaluate(core.server.x)
    finally:
        progress.close()
        recorder.close()
    save_checkpoint(run_dir, core.server, store.state_dict(), prep.executor.replica.layout)
    save_model(run_dir, prep.executor.replica.layout, core.server.x)
    title = f"{cfg.algorithm.name} on {cfg.data.dataset}, async"
    plot_run(metrics, run_dir, title=title)
    plot_async(metrics, run_dir, title=title)
    write_selection([(u["wave"], u["client_id"]) for u in recorder.updates], run_dir, "wave")
    result = {
        "mode": "async",
        **final_result(cfg, metrics, core.server.round),
        "updates": core.arrivals,
        "simulated_seconds": core.now,
        "mean_staleness": sum(u["staleness"] for u in recorder.updates) / max(len(recorder.updates), 1),
    }
    write_text(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
    return result
