"""From a validated config to a finished run directory.

:func:`prepare` loads data, partitions it and builds the model, algorithm and executor
(every input error surfaces here, before a run directory exists); :func:`execute`
runs the federation loop chosen by ``federation.mode`` (synchronous rounds here, the
asynchronous loop in :mod:`fedtorch.experiment.async_run`) and writes the run directory with
one epilogue for both; ``resume=True`` continues from the directory's checkpoint, where
:func:`~fedtorch.experiment.run_dirs.check_resumable` (the one place that decides it) allows.
Creating and reading run directories lives in :mod:`fedtorch.experiment.run_dirs`; its
functions are re-exported here (``runner.new_run_dir``, ``runner.check_resumable``, ...).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from fedtorch.algorithms import LocalSGD, make_server_optimizer
from fedtorch.data import DataFileError, FederatedData, PartitionError, load_split
from fedtorch.data.federated import ClientIndices, mean_steps_per_round
from fedtorch.data.local_split import split_holdout
from fedtorch.execution import build_executor
from fedtorch.execution.local_training import MINIBATCH
from fedtorch.experiment import plugins
from fedtorch.experiment.atomic import write_text
from fedtorch.experiment.checkpoint import read_checkpoint, save_checkpoint, save_model
from fedtorch.experiment.algorithm_config import algorithm_hparams
from fedtorch.experiment.run_settings import clients_per_round, local_work, server_hparams
from fedtorch.experiment.divergence import Diverged, divergence
from fedtorch.experiment.divergence import hint as divergence_hint
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.plots import plot_run
from fedtorch.experiment.progress import RoundProgress
from fedtorch.experiment.recorder import Recorder, final_result
from fedtorch.experiment.run_dirs import ASYNC_NOT_RESUMABLE, check_resumable, interrupted_hint, load_run_config, new_run_dir  # noqa: F401 (re-exported)
from fedtorch.experiment.selection import write_selection
from fedtorch.experiment.privacy_config import privacy_results, queries_per_step
from fedtorch.experiment.wire_config import build_wire
from fedtorch.experiment.tracking import Tracking, open_tracking
from fedtorch.federation import ClientStateStore, SyncSettings, run_sync
from fedtorch.federation.async_loop import AsyncSettings
from fedtorch.federation.client_eval import evaluate_clients
from fedtorch.federation.client_states import SPILL_DIR_NAME
from fedtorch.federation.model_buffers import ModelBuffers
from fedtorch.flat import FlatModule
from fedtorch.models import build_model
from fedtorch.protocol import FederationInfo, ServerState
from fedtorch.seeding import derive_seed

RESULT_NAME = "result.json"


@dataclass
class Prepared:
    """Everything a run needs, built from one config."""

    cfg: DictConfig
    data: FederatedData
    algorithm: object
    executor: object
    x0: torch.Tensor
    settings: SyncSettings | AsyncSettings  # by federation.mode
    holdout: list | None = None  # per-client held-out indices (eval.clients_every > 0)
    buffers0: torch.Tensor | None = None  # the initial model's (Q,) buffers (BatchNorm statistics), None without

    def initial_server(self) -> ServerState:
        """The algorithm's initial server state, with the initial model's buffers."""
        return self.algorithm.init_server(self.x0).replace(buffers=self.buffers0)


def prepare(cfg: DictConfig) -> Prepared:
    """Load and split the data and build model, algorithm and executor.

    Plug-ins (:mod:`fedtorch.experiment.plugins`) are resolved here too: a user's dataset
    and partition by :func:`~fedtorch.data.load_split`, a user's model by ``build_model``
    (then one forward pass of two training samples checks its ``(batch, num_classes)``
    output), the loss from ``model.loss``.

    Raises:
        ConfigError: missing/corrupt data files, more clients than samples, an
            impossible partition, a model that does not fit the data, an absent device,
            a plug-in that cannot be imported or breaks its contract.
    """
    if cfg.execution.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"execution.device={cfg.execution.device!r} but no CUDA device is available; use cpu")
    try:
        ds, parts = load_split(cfg.data)
    except (DataFileError, PartitionError) as e:
        raise ConfigError(str(e)) from None
    device = torch.device(cfg.execution.device)
    parts = ClientIndices.from_arrays(parts, device)  # one flat tensor, not N of them (10^6 clients: 600 MB)
    holdout = None
    if cfg.eval.clients_every:
        parts, holdout = split_holdout(parts, cfg.eval.holdout, cfg.data.seed)
    data = FederatedData(ds, parts)

    def model_factory():
        return build_model(cfg.model.name, ds.input_shape, ds.num_classes)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "model_init"))
        try:
            model = model_factory()
            if plugins.is_reference(cfg.model.name):
                plugins.check_module(cfg.model.name, model)
            flat = FlatModule(model)
            x0, buffers0 = flat.params.detach().clone(), flat.read_buffers()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"model.name={cfg.model.name!r}: {e}") from None
    buffers0 = check_buffers(cfg, buffers0)
    if plugins.is_reference(cfg.model.name):  # a user's model (a fresh copy): logits must be (batch, num_classes)
        plugins.check_model(cfg.model.name, model_factory(), ds.train_x[: min(2, len(ds.train_x))], ds.num_classes)
    loss = plugins.loss_function(cfg.model.loss)
    cls, hp = algorithm_hparams(cfg)
    optimizer, server_hp = server_hparams(cfg)
    algorithm = cls(
        hp,
        LocalSGD(momentum=cfg.client.momentum, weight_decay=cfg.client.weight_decay),
        make_server_optimizer(optimizer, **server_hp),
        FederationInfo(
            num_clients=data.num_clients, lr=cfg.client.lr, weighting=cfg.federation.weighting,
            total_samples=int(data.sizes().sum()),
            mean_local_steps=mean_steps_per_round(data.sizes(), cfg.client.batch_size, cfg.client.local_epochs,
                                                  cfg.client.local_steps),
        ),
    )
    def probe(source) -> int:  # local DP-SGD: the algorithm's gradients per local step, on client 0
        return queries_per_step(algorithm, model_factory, ds.train_x, ds.train_y, data.client_indices[0], cfg.client.batch_size,
                                loss, x0, cfg.seed, cfg.client.lr, source)

    wire = build_wire(cfg, data, algorithm, clients_per_round(cfg), probe) if cfg.federation.mode != "async" else None
    train_y = ds.train_y if wire is None else wire.train_y  # label flipping: the malicious clients' data
    e = cfg.execution
    distributed = {}
    if e.mode == "distributed":  # this rank's place and process groups (fedtorch.experiment.distributed_run)
        from fedtorch.experiment.distributed_run import executor_options

        distributed = executor_options(cfg)
    executor = build_executor(
        e.mode, model_factory, ds.train_x, train_y, cfg.client.batch_size, loss, e.device,
        devices=None if e.devices is None else list(e.devices), threads=e.threads,
        max_clients_per_step=e.max_clients_per_step, gradients=MINIBATCH if wire is None else wire.gradients,
        **distributed,
    )
    if cfg.federation.mode == "async":
        from fedtorch.experiment.async_run import async_settings

        settings = async_settings(cfg)
    else:
        settings = SyncSettings(**local_work(cfg), rounds=cfg.rounds, clients_per_round=clients_per_round(cfg),
                                eval_every=cfg.eval.every, client_eval_every=cfg.eval.clients_every,
                                buffers=ModelBuffers(local=cfg.model.local_buffers), **wire.settings())
    return Prepared(cfg, data, algorithm, executor, x0.to(device), settings, holdout,
                    None if buffers0 is None else buffers0.to(device))


def check_buffers(cfg: DictConfig, buffers0: torch.Tensor) -> torch.Tensor | None:
    """The initial model's ``(Q,)`` buffers, or None for a model without.

    Raises:
        ConfigError: ``model.local_buffers=true`` for a model without buffers, or a model
            with buffers in ``federation.mode=async`` (not supported: the asynchronous
            server steps do not merge buffers yet).
    """
    if not buffers0.numel():
        if cfg.model.local_buffers:
            raise ConfigError(f"model.local_buffers=true but model {cfg.model.name!r} has no buffers (no BatchNorm "
                              "running statistics) to keep per client; drop the key or use a model with BatchNorm")
        return None
    if cfg.federation.mode == "async":
        raise ConfigError(f"model {cfg.model.name!r} has buffers (BatchNorm running statistics), which "
                          "federation.mode=async does not merge yet; use federation.mode=sync, or a model "
                          "without them (GroupNorm, e.g. resnet18)")
    return buffers0


@dataclass
class RunOutcome:
    """What a federation loop hands to the runner's one epilogue (:func:`execute`).

    Attributes:
        server: the final server state.
        metrics: the recorder's rows (one per round, or per server version).
        rounds: rounds (server versions) done.
        selection: ``(round or wave, client id)`` of every client trained.
        unit: ``"round"`` or ``"wave"`` (the selection plot's axis).
        title_suffix: appended to the plots' title.
        result_head, result_tail: ``result.json`` keys before / after :func:`final_result`'s.
        plots: extra ``plot(metrics, run_dir, title)`` functions.
        diverged: why the loop stopped early (:class:`~fedtorch.experiment.divergence.Diverged`), or None.
    """

    server: object
    metrics: list[dict]
    rounds: int
    selection: list[tuple[int, int]]
    unit: str = "round"
    title_suffix: str = ""
    result_head: dict = field(default_factory=dict)
    result_tail: dict = field(default_factory=dict)
    plots: list = field(default_factory=list)
    diverged: Diverged | None = None


def execute(prep: Prepared, run_dir: Path, resume: bool = False, on_row: Callable[[dict], None] | None = None) -> dict:
    """Run (or continue) the federation loop, writing everything into ``run_dir``.

    The executor is closed at the end, also on error or interrupt. A run that diverges
    (:mod:`fedtorch.experiment.divergence`) stops there: its ``result.json`` has
    ``"status": "diverged"``, ``diverged_at``, ``reason`` and ``hint``, and no ``model.pt``
    is written (``checkpoint.pt`` holds the last good round); otherwise ``"status": "completed"``.

    Returns:
        The final result (also written to ``result.json``, which marks the run finished).

    Raises:
        ConfigError: ``resume`` where :func:`check_resumable` refuses, or a checkpoint of
            another layout.
    """
    cfg, run_dir = prep.cfg, Path(run_dir)
    tracking = Tracking()  # MLflow / W&B runs (logging.mlflow, logging.wandb; docs/tracking.md); none until opened
    try:
        if resume:
            check_resumable(cfg, run_dir)
        tracking = open_tracking(cfg, run_dir, resume)
        if cfg.federation.mode == "async":
            from fedtorch.experiment.async_run import run_async_loop

            outcome = run_async_loop(prep, run_dir, resume, on_row, tracking)
        else:
            outcome = _run_sync(prep, run_dir, resume, on_row, tracking)
    except BaseException as e:
        tracking.abort(e)  # the tracker runs end as KILLED (Ctrl-C) or FAILED
        raise
    finally:
        prep.executor.close()  # worker threads and CUDA streams, also on error and Ctrl-C
    if outcome.diverged is None:
        save_model(run_dir, prep.executor.replica, outcome.server.x, outcome.server.buffers)
    title = f"{cfg.algorithm.name} on {cfg.data.dataset}{outcome.title_suffix}"
    plot_run(outcome.metrics, run_dir, title=title)
    for plot in outcome.plots:
        plot(outcome.metrics, run_dir, title=title)
    write_selection(outcome.selection, run_dir, outcome.unit)
    status = {"status": "completed"}
    if outcome.diverged is not None:
        status = {"status": "diverged", "diverged_at": outcome.diverged.round, "reason": outcome.diverged.reason,
                  "hint": divergence_hint(cfg)}
    result = {**outcome.result_head, **status, **final_result(cfg, outcome.metrics, outcome.rounds), **outcome.result_tail}
    write_text(run_dir / RESULT_NAME, json.dumps(result, indent=2) + "\n")
    tracking.finish(result, run_dir)  # artifacts (plots, model, result.json, config.yaml), then FINISHED / FAILED
    return result


def _run_sync(prep: Prepared, run_dir: Path, resume: bool, on_row: Callable[[dict], None] | None,
              tracking: Tracking | None = None) -> RunOutcome:
    """Synchronous rounds (from the checkpoint when ``resume``), their logs and checkpoints."""
    cfg = prep.cfg
    store = ClientStateStore(cfg.federation.state_memory_mb, run_dir / SPILL_DIR_NAME)
    recorder = Recorder(run_dir, tensorboard=cfg.logging.tensorboard, tracking=tracking)
    if resume:
        # the newest checkpoint that verifies (checkpoint.prev.pt if checkpoint.pt is damaged);
        # CheckpointError, a ConfigError, when none does or it is of another version or layout
        ckpt = read_checkpoint(run_dir, prep.executor.replica.layout)
        buffers = None if ckpt.server.buffers is None else ckpt.server.buffers.to(prep.x0.device)
        server = ckpt.server.replace(x=ckpt.server.x.to(prep.x0.device), buffers=buffers)
        store.load_state_dict(ckpt.clients)
        recorder.load()
        recorder.truncate(server.round)
    else:
        server = prep.initial_server()
    progress = RoundProgress(cfg.rounds, server.round, cfg.logging.progress)

    def on_round(state, report):
        row = recorder.record(report)
        progress.update(row)
        if on_row is not None:
            on_row(row)
        bad = int((~report.valid).sum())
        reason = divergence(state.x, bad, len(report.valid), [row["train_loss"], row["test_loss"]], cfg.eval)
        if reason is not None:
            raise Diverged(report.round, reason)
        if bad:
            dropped = [r.client_id for r, ok in zip(report.results, report.valid.tolist()) if not ok]
            print(f"round {report.round}: clients {dropped} sent non-finite updates; left out of aggregation", file=sys.stderr)
        if report.round % cfg.checkpoint.every == 0 or report.round == cfg.rounds:
            recorder.sync()  # the logs on disk before the checkpoint that covers them
            save_checkpoint(run_dir, state, store.state_dict(), prep.executor.replica.layout)

    def evaluate(x, buffers=None):
        return prep.executor.evaluate(x, prep.data.data.test_x, prep.data.data.test_y, buffers)

    def evaluate_each_client(state):
        local = prep.settings.buffers  # with model.local_buffers, each client's own statistics

        def buffers_of(c: int):
            return local.of_client(store.get(c, dict), state)

        return evaluate_clients(prep.algorithm, prep.executor, prep.data, prep.holdout, state, cfg.client.batch_size,
                                cfg.seed, buffers_of if local.local else None)

    diverged = None
    try:
        server = run_sync(
            prep.algorithm, prep.executor, prep.data, server, store, prep.settings, evaluate, on_round,
            evaluate_each_client if prep.holdout is not None else None,
        )
    except Diverged as d:
        diverged = d
    finally:
        progress.close()
        recorder.close()
    metrics = recorder.metrics
    client_evals = [m for m in metrics if m.get("client_acc_mean") is not None]
    tail = {k: v for k, v in client_evals[-1].items() if k.startswith(("client_acc", "personal_acc"))} if client_evals else {}
    if metrics:
        tail.update(privacy_results(prep.settings, cfg.privacy.delta, metrics[-1]))
    return RunOutcome(server=server, metrics=metrics, rounds=len(metrics),
                      selection=recorder.selection, result_tail=tail,
                      diverged=diverged)
