"""The configuration schema: every key, its type and its default.

``experiments/<DATASET>/<folder>/config.py`` holds a plain ``CONFIG`` dict; it is merged
onto these dataclasses (OmegaConf checks key names and types), then command-line
overrides ``key.sub=value`` are applied, then :func:`fedtorch.experiment.config.validate`
checks values. Algorithm hyper-parameters (``algorithm.mu``, ...) are checked against
the chosen algorithm's ``Hparams`` dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # fashion_mnist | mnist (any MNIST-format IDX directory)
    root: Optional[str] = None  # directory of the files; default $FEDTORCH_DATA_DIR or the Debian path
    partition: str = "dirichlet"  # iid | dirichlet | shards
    num_clients: int = 100  # N
    alpha: float = 0.5  # Dirichlet concentration (partition=dirichlet)
    min_samples: int = 10  # minimum samples per client (partition=dirichlet)
    shards_per_client: int = 2  # partition=shards
    seed: int = 0  # data-split seed, independent of the training seed
    max_train_samples: Optional[int] = None  # use only the first N training samples
    max_test_samples: Optional[int] = None  # use only the first N test samples


@dataclass
class ModelConfig:
    name: str = "cnn"  # logreg | mlp | cnn


@dataclass
class ClientConfig:
    local_epochs: int = 1  # E: K_i = E * ceil(n_i / batch_size)
    local_steps: Optional[int] = None  # fixed K for every client (overrides local_epochs)
    batch_size: int = 32  # samples per local minibatch
    lr: float = 0.05  # eta_l
    momentum: float = 0.0  # local SGD momentum (reset every round)
    weight_decay: float = 0.0  # local L2 weight decay


@dataclass
class ServerConfig:
    optimizer: str = "sgd"  # server optimiser on the pseudo-gradient
    lr: float = 1.0  # eta_g, server learning rate
    momentum: float = 0.0  # server momentum (sgd)


@dataclass
class FederationConfig:
    mode: str = "sync"  # sync
    clients_per_round: int = 10  # M
    participation: Optional[float] = None  # fraction of clients per round; overrides clients_per_round
    weighting: str = "samples"  # samples | uniform aggregation weights


@dataclass
class EvalConfig:
    every: int = 1  # evaluate the global model on the test set every N rounds (and at the end)


@dataclass
class ExecutionConfig:
    mode: str = "serial"  # serial | parallel | vectorized | auto (picks one and prints which and why)
    device: str = "cpu"  # cpu | cuda | cuda:<i>: data, server and evaluation
    devices: Optional[List[str]] = None  # parallel worker slots "cpu/<slot>" | "cuda:<gpu>/<slot>"; null: two on `device`
    threads: Optional[int] = None  # intra-op threads per client; null: all (serial, vectorized), split among CPU slots (parallel)
    max_clients_per_step: Optional[int] = None  # vectorized: clients trained at once; null: what fits a memory budget


@dataclass
class LoggingConfig:
    progress: str = "auto"  # auto (live bar on a terminal, plain lines otherwise) | rich | plain | none
    tensorboard: bool = False  # also write TensorBoard event files


@dataclass
class CheckpointConfig:
    every: int = 1  # save a checkpoint every N rounds (and at the end)


@dataclass
class Config:
    seed: int = 0  # training seed (client sampling, minibatch order, model init)
    rounds: int = 20  # T, communication rounds
    output_dir: str = "runs"  # run directories go under <output_dir>/<DATASET>/<folder>/
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: Dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})  # name + its hyper-parameters
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
