"""NIID-Bench, Fashion-MNIST, 10 parties: Li, Diao, Chen, He, "Federated Learning on Non-IID
Data Silos: An Experimental Study", ICDE 2022, Table 3 (as reproduced by Flower's NIID-Bench
baseline). Final test accuracy (%) after 50 rounds.

Setting (NIID-Bench ``scripts/image-data-without-noise.sh`` and ``experiments.py``, read at
github.com/Xtra-Computing/NIID-Bench master): 10 parties, all of them every round, 50 rounds
of 10 local epochs, batch 64, SGD lr 0.01, momentum 0.9 (``--rho=0.9``), weight decay 1e-5
(``--reg`` default), model ``simple-cnn`` (``SimpleCNNMNIST``: 44,426 parameters), aggregation
weighted by party size (``fed_avg_freqs = n_i / n``), FedProx mu 0.01.

Partitions, NIID-Bench ``utils.partition_data`` -> fedtorch ``data.partition``:

* ``homo`` (random permutation, ``array_split`` into 10) -> ``iid`` (balanced IID);
* ``noniid-labeldir`` with beta 0.5 (per class ``Dir(0.5)`` shares, a party already holding
  ``>= N/10`` samples gets no further share, redrawn until every party has >= 10 samples)
  -> ``dirichlet`` with ``alpha=0.5``, ``min_samples=10``: the same rule;
* ``noniid-#label2`` (party i holds class ``i mod 10`` and one other distinct class drawn at
  random; each class split equally among its holders) -> ``label-quantity`` with
  ``classes_per_client=2``: the same rule.

The random draws differ (NIID-Bench uses numpy's global RNG seeded with ``init_seed``;
fedtorch a generator from ``data.seed``), so a seed gives another split of the same law.
"""

from fedtorch.reproduce.table import Method, Table

CONFIG = {
    "seed": 0,
    "rounds": 50,
    "data": {"dataset": "fashion_mnist", "num_clients": 10, "seed": 0},
    "model": {"name": "simple-cnn"},
    "algorithm": {"name": "fedavg"},
    "client": {"local_epochs": 10, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-5},
    "federation": {"clients_per_round": 10, "weighting": "samples"},  # every party, every round
    "eval": {"every": 1},
    "logging": {"progress": "none"},
}

CELLS = {
    "iid": ("data.partition=iid",),
    "dir0.5": ("data.partition=dirichlet", "data.alpha=0.5", "data.min_samples=10"),
    "c2": ("data.partition=label-quantity", "data.classes_per_client=2"),
}

METHODS = (
    Method("fedavg", "FedAvg", ("algorithm.name=fedavg",)),
    Method("fedprox", "FedProx (mu=0.01)", ("algorithm.name=fedprox", "algorithm.mu=0.01")),
    Method("scaffold", "SCAFFOLD", ("algorithm.name=scaffold",)),
    Method("fednova", "FedNova", ("algorithm.name=fednova",)),
)

_PUBLISHED = {  # FedAvg, FedProx, SCAFFOLD, FedNova
    "iid": (89.0, 89.5, 89.5, 89.3),
    "dir0.5": (88.4, 88.4, 88.6, 88.1),
    "c2": (81.0, 10.0, 78.8, 70.5),
}

TABLE = Table(
    name="niid-bench-fmnist",
    title="NIID-Bench (Li et al., ICDE 2022), Table 3: Fashion-MNIST, 10 parties, simple-cnn",
    source="Li et al., ICDE 2022, Table 3, as reproduced by Flower's NIID-Bench baseline",
    config=CONFIG,
    cells=CELLS,
    methods=METHODS,
    published={(cell, m.key): v for cell, row in _PUBLISHED.items() for m, v in zip(METHODS, row)},
    metric="final_test_accuracy",
    metric_label="final test accuracy (%)",
    scale=100.0,
    tolerance=1.5,
    curve="test_accuracy",
    smoke=("data.max_train_samples=1000", "data.max_test_samples=500", "client.local_epochs=1"),
    smoke_cell="dir0.5",
    notes=(
        "Partitions: NIID-Bench `homo` -> `iid`; `noniid-labeldir` (beta 0.5, every party >= 10 samples, "
        "a party holding >= N/10 samples gets no further share) -> `dirichlet` alpha 0.5, min_samples 10; "
        "`noniid-#label2` -> `label-quantity` classes_per_client 2. Same rules, other random draws.",
        "Inputs: NIID-Bench feeds Fashion-MNIST pixels in [0, 1] (`transforms.ToTensor()` only); fedtorch "
        "normalises them with mean 0.2860, std 0.3530. Everything else (10 parties, all every round, "
        "batch 64, SGD lr 0.01 momentum 0.9 weight decay 1e-5, simple-cnn, size-weighted averaging, "
        "FedProx mu 0.01) follows NIID-Bench's script.",
        "The paper reports the mean of 3 runs (`init_seed` 0, 1, 2); `--seeds N` runs seeds 0..N-1, each "
        "with its own data split (`data.seed` = `seed`), as NIID-Bench's `init_seed` seeds both.",
    ),
)
