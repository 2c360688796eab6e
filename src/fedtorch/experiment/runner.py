"""From a validated config to a finished run directory.

:func:`prepare` loads data, partitions it and builds the model, algorithm and executor
(every input error surfaces here, before a run directory exists); :func:`execute`
runs the federation loop and writes the run directory; ``resume=True`` continues from
the directory's checkpoint.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

import fedtorch
from fedtorch.algorithms import LocalSGD, make_server_optimizer
from fedtorch.data import DataFileError, FederatedData, PartitionError, load_split
from fedtorch.data.local_split import split_holdout
from fedtorch.execution import build_executor
from fedtorch.experiment.atomic import write_text
from fedtorch.experiment.async_run import execute_async  # federation.mode=async
from fedtorch.experiment.checkpoint import load_checkpoint, save_checkpoint, save_model
from fedtorch.experiment.config import algorithm_hparams, clients_per_round, server_hparams
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.paths import experiment_output_dir, make_unique_dir, timestamp
from fedtorch.experiment.plots import plot_run
from fedtorch.experiment.progress import RoundProgress
from fedtorch.experiment.recorder import Recorder, final_result
from fedtorch.experiment.selection import write_selection
from fedtorch.federation import ClientStateStore, SyncSettings, run_sync
from fedtorch.federation.client_eval import evaluate_clients
from fedtorch.flat import FlatModule
from fedtorch.models import build_model
from fedtorch.protocol import FederationInfo
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
    settings: SyncSettings
    holdout: list | None = None  # per-client held-out indices (eval.clients_every > 0)


def prepare(cfg: DictConfig) -> Prepared:
    """Load and split the data and build model, algorithm and executor.

    Raises:
        ConfigError: missing/corrupt data files, more clients than samples, an
            impossible partition, a model that does not fit the data, an absent device.
    """
    if cfg.execution.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"execution.device={cfg.execution.device!r} but no CUDA device is available; use cpu")
    try:
        ds, parts = load_split(cfg.data)
    except (DataFileError, PartitionError) as e:
        raise ConfigError(str(e)) from None
    device = torch.device(cfg.execution.device)
    parts = [torch.from_numpy(p).to(device) for p in parts]
    holdout = None
    if cfg.eval.clients_every:
        parts, holdout = split_holdout(parts, cfg.eval.holdout, cfg.data.seed)
    data = FederatedData(ds, parts)

    def model_factory():
        return build_model(cfg.model.name, ds.input_shape, ds.num_classes)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "model_init"))
        try:
            x0 = FlatModule(model_factory()).params.detach().clone()
        except ValueError as e:
            raise ConfigError(f"model.name={cfg.model.name!r}: {e}") from None
    cls, hp = algorithm_hparams(cfg)
    optimizer, server_hp = server_hparams(cfg)
    algorithm = cls(
        hp,
        LocalSGD(momentum=cfg.client.momentum, weight_decay=cfg.client.weight_decay),
        make_server_optimizer(optimizer, **server_hp),
        FederationInfo(num_clients=len(parts), lr=cfg.client.lr),
    )
    e = cfg.execution
    executor = build_executor(
        e.mode, model_factory, ds.train_x, ds.train_y, cfg.client.batch_size, F.cross_entropy, e.device,
        devices=None if e.devices is None else list(e.devices), threads=e.threads,
        max_clients_per_step=e.max_clients_per_step,
    )
    m = clients_per_round(cfg)
    if m > cfg.data.num_clients:
        raise ConfigError(f"federation.clients_per_round={m} is more than data.num_clients={cfg.data.num_clients}")
    settings = SyncSettings(
        straggler_fraction=cfg.stragglers.fraction, straggler_policy=cfg.stragglers.policy, early_stopping=cfg.client.early_stopping,
        rounds=cfg.rounds, clients_per_round=m, batch_size=cfg.client.batch_size,
        local_epochs=cfg.client.local_epochs, local_steps=cfg.client.local_steps, lr=cfg.client.lr,
        seed=cfg.seed, weighting=cfg.federation.weighting, eval_every=cfg.eval.every,
        client_eval_every=cfg.eval.clients_every,
    )
    return Prepared(cfg, data, algorithm, executor, x0.to(device), settings, holdout)


def new_run_dir(cfg: DictConfig, experiment: Path | None, parent: Path | None = None, name: str | None = None) -> Path:
    """Create a fresh run directory and write the resolved ``config.yaml`` into it.

    Default location: ``<output_dir>/<DATASET>/<folder>/<algorithm>_seed<seed>_<time>``
    (``parent/name`` when given); ``-1``, ``-2``, ... is appended when the name is taken.
    """
    stamp = timestamp()
    if parent is None:
        parent = experiment_output_dir(cfg.output_dir, experiment)
    run_dir = make_unique_dir(parent, name or f"{cfg.algorithm.name}_seed{cfg.seed}_{stamp}")
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    meta = {
        "experiment": str(experiment) if experiment else None, "created": stamp, "fedtorch": fedtorch.__version__,
        "torch": torch.__version__, "python": platform.python_version(),
        "seed": cfg.seed, "data_seed": cfg.data.seed,
    }
    write_text(run_dir / "run.json", json.dumps(meta, indent=2) + "\n")
    return run_dir


def load_run_config(run_dir: Path) -> DictConfig:
    """The resolved config saved in a run directory.

    Raises:
        ConfigError: not a run directory.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    from fedtorch.experiment.config import from_dict

    return from_dict(OmegaConf.to_container(OmegaConf.load(path)), where=str(path))


def execute(prep: Prepared, run_dir: Path, resume: bool = False, on_row: Callable[[dict], None] | None = None) -> dict:
    """Run (or continue) the federation loop, writing everything into ``run_dir``.

    Returns:
        The final result (also written to ``result.json``, which marks the run complete).
    """
    cfg, run_dir = prep.cfg, Path(run_dir)
    if cfg.federation.mode == "async":
        return execute_async(prep, run_dir, resume, on_row)
    store = ClientStateStore()
    recorder = Recorder(run_dir, tensorboard=cfg.logging.tensorboard)
    if resume:
        try:
            server, clients = load_checkpoint(run_dir, prep.executor.replica.layout)
        except (FileNotFoundError, ValueError) as e:  # no checkpoint.pt, or one of another layout
            raise ConfigError(str(e)) from None
        server = server.replace(x=server.x.to(prep.x0.device))
        store.load_state_dict(clients)
        recorder.load()
        recorder.truncate(server.round)
    else:
        server = prep.algorithm.init_server(prep.x0)
    progress = RoundProgress(cfg.rounds, server.round, cfg.logging.progress)

    def on_round(state, report):
        if not report.valid.all():
            dropped = [r.client_id for r, ok in zip(report.results, report.valid.tolist()) if not ok]
            print(f"round {report.round}: clients {dropped} sent non-finite updates; left out of aggregation", file=sys.stderr)
        row = recorder.record(report)
        progress.update(row)
        if on_row is not None:
            on_row(row)
        if report.round % cfg.checkpoint.every == 0 or report.round == cfg.rounds:
            save_checkpoint(run_dir, state, store.state_dict(), prep.executor.replica.layout)

    def evaluate(x):
        return prep.executor.evaluate(x, prep.data.data.test_x, prep.data.data.test_y)

    def evaluate_each_client(state):
        return evaluate_clients(prep.algorithm, prep.executor, prep.data, prep.holdout, state, cfg.client.batch_size, cfg.seed)

    try:
        server = run_sync(
            prep.algorithm, prep.executor, prep.data, server, store, prep.settings, evaluate, on_round,
            evaluate_each_client if prep.holdout is not None else None,
        )
    finally:
        progress.close()
        recorder.close()
    save_model(run_dir, prep.executor.replica.layout, server.x)
    metrics = recorder.metrics
    plot_run(metrics, run_dir, title=f"{cfg.algorithm.name} on {cfg.data.dataset}")
    write_selection([(int(c["round"]), int(c["client_id"])) for c in recorder.clients], run_dir, "round")
    result = final_result(cfg, metrics, len(metrics))
    client_evals = [m for m in metrics if m.get("client_acc_mean") is not None]
    if client_evals:
        result.update({k: v for k, v in client_evals[-1].items() if k.startswith(("client_acc", "personal_acc"))})
    write_text(run_dir / RESULT_NAME, json.dumps(result, indent=2) + "\n")
    return result
