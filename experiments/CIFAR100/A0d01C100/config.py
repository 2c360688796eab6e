"""The seed framework's quick start: CIFAR-100, ResNet-18, 100 clients by Dirichlet label
skew with alpha 0.01 (most clients hold one or two classes), 10 clients per round.

Run it with ``python experiments/CIFAR100/A0d01C100/run.py`` (every algorithm of
``run.py``'s ``COMMANDS`` in turn) or ``fedtorch run experiments/CIFAR100/A0d01C100``
(one run; ``algorithm.name=...`` picks another method). Needs the python version of
CIFAR-100 (``cifar-100-python/train`` and ``test``) in ``data.root`` (default
``$FEDTORCH_DATA_DIR/cifar100`` or ``./data/cifar100``); without it the run stops with the
missing-data error before anything trains.

ResNet-18 with the CIFAR stem and GroupNorm (``resnet18``); ``model.name=resnet18_bn`` uses
BatchNorm with running statistics instead, averaged over each round's clients or kept per
client with ``model.local_buffers=true`` (FedBN's statistics). The schedule (5 local epochs,
batch 50, lr 0.1, 10 % participation) is the CIFAR-100 setting common in the FL literature
(e.g. FedDyn, Acar et al. ICLR 2021); that it is the seed framework's own is unverified.
A ResNet-18 round is minutes on a CPU: use ``execution.device=cuda``.
"""

CONFIG = {
    "seed": 0,
    "rounds": 500,
    "data": {
        "dataset": "cifar100",
        "partition": "dirichlet",
        "num_clients": 100,  # must agree with the folder name (C100)
        "alpha": 0.01,  # must agree with the folder name (A0d01)
        "min_samples": 10,
        "seed": 0,
    },
    "model": {"name": "resnet18"},
    "algorithm": {"name": "fedavg"},
    "client": {"local_epochs": 5, "batch_size": 50, "lr": 0.1, "weight_decay": 1e-3},
    "federation": {"clients_per_round": 10},
    "eval": {"every": 10},
}
