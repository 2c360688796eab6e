"""The algorithm comparison: Fashion-MNIST split over 100 clients by Dirichlet label skew
(alpha 0.1, strongly non-IID), 10 clients per round, the FedAvg paper's CNN.

One schedule for every algorithm (`fedtorch compare ... --algorithms all`): 15 rounds of
1 local epoch of plain SGD (batch 32, lr 0.05, no momentum: SCAFFOLD's option II and
FedNova's normalisation assume plain local SGD), sized to run all 21 algorithms in well
under an hour on a shared 2-core CPU. The test accuracy is measured every round on the
first 5000 test images. Each client holds out 20 % of its samples for per-client
evaluation (mean / worst-10 % accuracy, Per-FedAvg's personalised accuracy) after the
last round. Algorithm hyper-parameters are each paper's defaults. The checkpoint is
written only after the last round: with 100 clients' state vectors (SCAFFOLD, FedDyn, ...)
a checkpoint is about 0.5 GB, too much to rewrite every round of a 15-round run.
"""

CONFIG = {
    "seed": 0,
    "rounds": 15,
    "data": {
        "dataset": "fashion_mnist",
        "partition": "dirichlet",
        "num_clients": 100,  # must agree with the folder name (C100)
        "alpha": 0.1,  # must agree with the folder name (A0d1)
        "min_samples": 10,
        "seed": 0,
        "max_test_samples": 5000,  # halves the per-round evaluation cost
    },
    "model": {"name": "cnn"},
    "algorithm": {"name": "fedavg"},
    "client": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
    "federation": {"clients_per_round": 10},
    "eval": {"every": 1, "clients_every": 15, "holdout": 0.2},
    "checkpoint": {"every": 15},  # = rounds: once, at the end (with rounds=R, checkpoints at R and multiples of 15)
}
