"""Asynchronous FL on CIFAR-10 with ResNet-18 (CIFAR stem, GroupNorm: the usual choice under
non-IID data, and asynchronous runs do not merge BatchNorm statistics yet), 10 clients split by
Dirichlet label skew (alpha 0.5), FedAsync with 5 clients in flight and U(0, 2) s delays.

Needs the python version of CIFAR-10 (``cifar-10-batches-py/``) in data.root (default
$FEDTORCH_DATA_DIR/cifar10 or ./data/cifar10). The async seed design's client options
(delay-aware lr, early stopping after 10 epochs without improvement) as in
FashionMNIST/async_A0d5C10; SGD with momentum and a larger lr suit the ResNet. A ResNet-18
epoch over a 5000-image client is minutes on a CPU: run this on a GPU
(execution.device=cuda) or shorten it (client.local_epochs=1, rounds=10).
"""

CONFIG = {
    "seed": 0,
    "rounds": 100,  # server updates
    "data": {
        "dataset": "cifar10",
        "partition": "dirichlet",
        "num_clients": 10,  # must agree with the folder name (C10)
        "alpha": 0.5,  # must agree with the folder name (A0d5)
        "min_samples": 10,
        "seed": 0,
    },
    "model": {"name": "resnet18"},
    "algorithm": {"name": "fedasync"},  # defaults: alpha 0.6, staleness (tau + 1)^-0.5; algorithm.name=fedbuff also works
    "client": {"local_epochs": 2, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "lr_delay_alpha": 0.01,
               "early_stopping": 10},
    "federation": {"mode": "async", "concurrency": 5},
    "delays": {"model": "uniform", "max": 2.0},
    "eval": {"every": 10},
}
