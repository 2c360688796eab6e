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
    # the names allowed are the registries' keys, each with one line in README "Data"
    dataset: str = "fashion_mnist"  # a key of fedtorch.data.DATASETS
    root: Optional[str] = None  # folder (libsvm: file) of the data; null: the dataset's default (fedtorch.data.datasets, README "Data")
    partition: str = "dirichlet"  # a key of fedtorch.data.PARTITIONERS
    num_clients: int = 100  # N
    alpha: float = 0.5  # Dirichlet concentration of labels (dirichlet, client-inner-dir)
    beta: float = 0.5  # Dirichlet concentration of client sizes (quantity-dir)
    min_samples: int = 10  # minimum samples per client (dirichlet, quantity-dir, iid-lognormal, client-inner-dir, powerlaw)
    size_sigma: Optional[float] = None  # log-normal sigma of client sizes; null = the partitioner's default: iid-lognormal 0.3, client-inner-dir 0 (equal sizes), powerlaw 2 (FedProx)
    shards_per_client: int = 2  # partition=shards
    classes_per_client: int = 2  # k classes per client (label-quantity, powerlaw)
    noise_sigma: float = 0.1  # partition=noise: client i adds N(0, (noise_sigma * i / (N - 1))^2) to its inputs
    synthetic_alpha: float = 1.0  # dataset=synthetic: how much local models differ (FedProx's alpha)
    synthetic_beta: float = 1.0  # dataset=synthetic: how much local data differ (FedProx's beta)
    seed: int = 0  # data-split seed (and generated datasets' seed), independent of the training seed
    max_train_samples: Optional[int] = None  # use only the first N training samples
    max_test_samples: Optional[int] = None  # use only the first N test samples
    image_key: str = "image"  # dataset=huggingface: the input column (images, arrays or lists of numbers)
    label_key: str = "label"  # dataset=huggingface: the integer label column (ClassLabel gives num_classes)
    test_split: Optional[str] = None  # dataset=huggingface: the DatasetDict split that tests; null: "test" (a single Dataset: 20% stratified hold-out)


@dataclass
class ModelConfig:
    name: str = "cnn"  # a key of fedtorch.models.MODELS (README "What is in it"), or a plug-in package.module:Name / file.py:Name
    loss: str = "cross_entropy"  # the loss clients minimise and the test loss reports: cross_entropy, or a plug-in package.module:fn / config.py's LOSS
    local_buffers: bool = False  # keep the model's buffers (BatchNorm running statistics) per client, the statistics half of FedBN; false: average them like parameters


@dataclass
class ClientConfig:
    local_epochs: int = 1  # E: K_i = E * ceil(n_i / batch_size)
    local_steps: Optional[int] = None  # fixed K for every client (overrides local_epochs)
    batch_size: int = 32  # samples per local minibatch
    lr: float = 0.05  # eta_l
    momentum: float = 0.0  # local SGD momentum (reset every round)
    weight_decay: float = 0.0  # local L2 weight decay
    early_stopping: int = 0  # stop local training after this many epochs without a lower epoch loss; 0: off
    lr_delay_alpha: float = 0.0  # async: lr = client.lr / (1 + lr_delay_alpha * d), d = the client's simulated seconds from dispatch to arrival; 0: off


@dataclass
class ServerConfig:
    # null: the algorithm's default (fedadam -> adam, fedavgm -> sgd momentum 0.9, else sgd lr 1.0)
    optimizer: Optional[str] = None  # server optimiser on the pseudo-gradient: sgd | adagrad | adam | yogi
    lr: Optional[float] = None  # eta_g, server learning rate (sgd 1.0, adaptive 1e-2)
    momentum: Optional[float] = None  # server momentum (sgd; 0)
    beta1: Optional[float] = None  # first-moment decay (adagrad, adam, yogi; 0.9)
    beta2: Optional[float] = None  # second-moment decay (adam, yogi; 0.99)
    tau: Optional[float] = None  # adaptivity tau (adagrad, adam, yogi; 1e-3)


@dataclass
class FederationConfig:
    mode: str = "sync"  # sync (rounds) | async (any algorithm; `rounds` counts server updates)
    clients_per_round: int = 10  # M
    participation: Optional[float] = None  # fraction of clients per round; overrides clients_per_round
    weighting: str = "samples"  # samples | uniform aggregation weights
    concurrency: Optional[int] = None  # async: clients in flight at once, in [1, num_clients]; null: clients_per_round
    buffer_size: Optional[int] = None  # async, buffered step (algorithms without apply_async): arrivals per server step; null: concurrency (fedbuff: algorithm.buffer_size)
    clock: str = "simulated"  # async: simulated (event queue, no sleeping) | asyncio (clients as asyncio tasks) | wall (execution.mode=distributed: real arrival order and staleness)
    sleep_scale: float = 0.0  # clock=asyncio: real seconds each client sleeps per simulated second; 0: none
    max_seconds: Optional[float] = None  # async: also stop at this simulated time (seconds)
    state_memory_mb: Optional[float] = None  # RAM budget (MiB) of stateful clients' states (SCAFFOLD's c_i, ...); beyond it they spill to <run_dir>/client_states and checkpoints reference them; null: no limit, all in RAM


@dataclass
class DelaysConfig:
    """``delays.*``: simulated client latency of asynchronous runs (``federation.mode=async``).

    A client dispatched at simulated time ``t`` (seconds) arrives at ``t + K_i *
    step_seconds + delay``, ``K_i`` its local steps and ``delay`` a draw from ``model``
    (seeded by the training seed). All times are simulated seconds, >= 0; ``trace`` gives
    each client its own ``step_seconds`` and delay from a CSV file. Checked by
    :func:`~fedtorch.experiment.config.validate` (ConfigError for a negative value, an
    unknown model or an unreadable trace).
    """

    model: str = "constant"  # constant | uniform | lognormal | exponential | trace
    mean: float = 0.0  # seconds: the constant delay; the mean of exponential and lognormal
    max: float = 2.0  # seconds: uniform draws from U(0, max)
    sigma: float = 1.0  # lognormal: standard deviation of log(delay)
    step_seconds: float = 0.0  # simulated compute seconds per local step
    trace: Optional[str] = None  # model=trace: CSV client_id,step_seconds,delay_seconds, one row per client


@dataclass
class StragglersConfig:
    """``stragglers.*``: FedProx's systems heterogeneity in synchronous rounds (Li et al. 2020).

    In every round ``floor(fraction * M)`` of the ``M`` selected clients are stragglers and
    run only ``U{1..E}`` of the ``E`` local epochs; ``policy`` says whether their partial
    updates are aggregated. ``fraction`` must lie in ``[0, 1)`` (ConfigError otherwise).
    """

    fraction: float = 0.0  # share of each round's clients that run only U{1..E} local epochs, in [0, 1)
    policy: str = "drop"  # drop: leave them out (FedAvg) | keep: aggregate their partial work (FedProx)


@dataclass
class EvalConfig:
    every: int = 1  # evaluate the global model on the test set every N rounds (and at the end)
    clients_every: int = 0  # per-client accuracy on held-out local splits every N rounds (and at the end); 0: off
    holdout: float = 0.2  # share of each client's samples held out (training uses the rest) when clients_every > 0
    diverge_loss: Optional[float] = None  # stop (exit 3) when the round's train or test loss exceeds this; null: off
    diverge_nonfinite: float = 0.5  # stop (exit 3) when at least this share of a round's updates is NaN/Inf, in (0, 1]; 1: only when all are


@dataclass
class ExecutionConfig:
    mode: str = "serial"  # serial | parallel | vectorized | auto (picks one and prints which and why) | distributed (under torchrun, docs/distributed.md)
    device: str = "cpu"  # cpu | cuda | cuda:<i>: data, server and evaluation
    devices: Optional[List[str]] = None  # parallel worker slots "cpu/<slot>" | "cuda:<gpu>/<slot>"; null: two on `device`
    threads: Optional[int] = None  # intra-op threads per client; null: all (serial, vectorized), split among CPU slots (parallel)
    max_clients_per_step: Optional[int] = None  # vectorized: clients trained at once; null: what fits a memory budget
    worker_mode: str = "serial"  # distributed: each rank's local executor, serial | parallel | vectorized (docs/distributed.md)
    server_trains: bool = True  # distributed: rank 0 trains a share of the clients too; false: it only serves
    edges: int = 0  # distributed: hierarchical FL, the training ranks grouped under this many edge aggregators (docs/distributed.md); 0: flat
    timeout_s: float = 300.0  # distributed: seconds rank 0 waits for a worker (a worker twice that for rank 0), more than a rank's share of a round and rank 0's evaluation; then the run stops naming the rank


@dataclass
class LoggingConfig:
    progress: str = "auto"  # auto (live bar on a terminal, plain lines otherwise) | rich | plain | none
    tensorboard: bool = False  # also write TensorBoard event files
    mlflow: bool = False  # also log the run to MLflow (pip install 'fedtorch[mlflow]'): config as params, metrics per round, plots/model/result.json as artifacts (docs/tracking.md)
    mlflow_uri: Optional[str] = None  # MLflow tracking URI: sqlite:///path.db, file:///dir, http://host:port; null: a SQLite store in <run_dir>/mlruns
    mlflow_experiment: Optional[str] = None  # MLflow experiment name; null: <DATASET>/<folder> of the experiment folder, or fedtorch for a config dict
    wandb: bool = False  # also log the run to Weights & Biases (pip install 'fedtorch[wandb]'): config and metrics per round, in <run_dir>/wandb (docs/tracking.md)
    wandb_mode: str = "offline"  # offline (no network; upload later with `wandb sync <run_dir>/wandb`) | online (needs `wandb login`)
    wandb_project: Optional[str] = None  # W&B project; null: <DATASET>-<folder> of the experiment folder, or fedtorch for a config dict


@dataclass
class CheckpointConfig:
    every: int = 1  # save a checkpoint every N rounds (and at the end)


@dataclass
class CompressionConfig:
    method: Optional[str] = None  # uplink compression of each client's update: null (off), topk, dgc, qsgd, sign (docs/compression.md)
    density: float = 0.01  # topk, dgc: fraction of coordinates sent, in (0, 1]
    error_feedback: bool = True  # topk, sign: keep what was not sent and add it next round (per client, in the client-state store)
    levels: int = 16  # qsgd: s, quantisation levels
    encoding: str = "elias"  # qsgd: elias (Elias-omega run lengths) or fixed (ceil(log2(s+1)) bits + sign per coordinate)
    momentum: float = 0.9  # dgc: momentum correction factor
    clip_norm: Optional[float] = None  # dgc: per-client clipping threshold of the update's L2 norm; null: no clipping
    warmup_rounds: int = 0  # dgc: rounds of exponentially rising sparsity before compression.density


@dataclass
class RobustConfig:
    aggregator: Optional[str] = None  # the server's robust rule instead of the weighted mean: null, mean, krum, multi_krum, median, trimmed_mean, bulyan, centered_clipping (docs/robustness.md)
    f: int = 1  # krum, multi_krum, bulyan: assumed number of Byzantine clients per round
    m: Optional[int] = None  # multi_krum: rows averaged; null: M - f
    beta: float = 0.1  # trimmed_mean: fraction cut on each side, in [0, 1/2)
    tau: float = 1.0  # centered_clipping: clipping radius (L2)
    iters: int = 1  # centered_clipping: clipping iterations per round


@dataclass
class AttackConfig:
    name: Optional[str] = None  # simulated malicious clients: null (none), sign_flip, scale, gaussian, label_flip (docs/robustness.md)
    fraction: float = 0.2  # share of the N clients that are malicious (drawn once from the seed)
    scale: float = 1.0  # sign_flip: send -scale * delta
    factor: float = 10.0  # scale: send factor * delta
    sigma: float = 1.0  # gaussian: send N(0, sigma^2 I)


@dataclass
class PrivacyConfig:
    mechanism: Optional[str] = None  # differential privacy: null (off), dp_fedavg (clip each update, Gaussian noise on the sum) or dp_sgd (local DP-SGD: Poisson lots, per-sample clipping to privacy.clip, noise privacy.noise_multiplier; docs/privacy.md)
    clip: float = 1.0  # C: the L2 clip norm of each client's update (dp_fedavg; the initial one with adaptive_clipping) or of each sample's gradient (dp_sgd)
    noise_multiplier: Optional[float] = None  # z: noise std z*C on the sum; null: chosen for privacy.target_epsilon over the planned rounds
    target_epsilon: Optional[float] = None  # epsilon at privacy.delta after all rounds, when privacy.noise_multiplier is null
    delta: float = 1.0e-5  # the delta of (epsilon, delta)-DP
    sampling: str = "fixed"  # fixed: M = federation.clients_per_round of N each round; poisson: each client with probability M / N (a round may be empty)
    accountant: str = "rdp"  # dp-accounting's accountant: rdp, or pld (Poisson sampling only)
    adaptive_clipping: bool = False  # C tracks the privacy.target_quantile of the update norms (Andrew et al. 2021)
    target_quantile: float = 0.5  # adaptive clipping: gamma, the fraction of updates left unclipped
    clip_learning_rate: float = 0.2  # adaptive clipping: eta_C, the geometric step of C
    clipped_count_stddev: Optional[float] = None  # adaptive clipping: sigma_b, noise std of the unclipped count (clients); null: M / 20 (the paper's suggestion, unverified)


@dataclass
class SecAggConfig:
    enabled: bool = False  # secure aggregation: the server sees only masked, quantised updates and their sum (docs/secure_aggregation.md)
    masked: bool = True  # false: the same quantised sum in the clear (the reference a SecAgg run equals bit for bit)
    bits: int = 32  # the field Z_2^bits the masked sum lives in
    quant_bits: int = 16  # quantisation resolution: levels 2^(quant_bits-1) - 1 on each side of 0
    clip_range: float = 1.0  # updates are clipped to [-clip_range, clip_range] per coordinate before quantisation
    neighbours: Optional[int] = None  # SecAgg+: an even number of neighbours per client (Harary graph); null: every client (SecAgg)
    threshold: float = 0.6  # Shamir threshold as a fraction of each secret's holders (the client and its neighbours)
    dropout: float = 0.0  # fraction of each round's clients that drop after sending their masked input
    stochastic: bool = False  # stochastic (unbiased) rounding instead of round-half-to-even


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
    delays: DelaysConfig = field(default_factory=DelaysConfig)
    stragglers: StragglersConfig = field(default_factory=StragglersConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
