"""A user's own model in this folder: a small CNN with BatchNorm on Fashion-MNIST.

``MODEL`` is the ``(input_shape, num_classes) -> nn.Module`` factory fedtorch calls; the
module here is plain PyTorch. Its BatchNorm running statistics (``running_mean``,
``running_var``, ``num_batches_tracked``) take part in federation: averaged over each
round's clients with the aggregation weights, like FedAvg averages parameters (default),
or kept per client with ``model.local_buffers=true`` (the statistics half of FedBN, Li et
al. ICLR 2021). Evaluation runs the module in eval mode, on the running statistics.

Fashion-MNIST, 10 clients by Dirichlet label skew (alpha 0.5), 5 per round, FedAvg:
``fedtorch run experiments/Custom/bn_cnn_A0d5C10`` (add ``model.local_buffers=true`` for
per-client statistics).
"""

from torch import nn


class BNCNN(nn.Module):
    """``(B, 1, 28, 28) -> (B, num_classes)``: two conv-BatchNorm-ReLU-pool blocks
    (16 and 32 channels) and a linear layer; 20,490 parameters for 10 classes."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        channels = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = input_shape[1] // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * side * (input_shape[2] // 4), num_classes))

    def forward(self, x):
        return self.head(self.features(x))


MODEL = BNCNN

CONFIG = {
    "seed": 0,
    "rounds": 10,
    "data": {
        "dataset": "fashion_mnist",
        "partition": "dirichlet",
        "num_clients": 10,  # must agree with the folder name (C10)
        "alpha": 0.5,  # must agree with the folder name (A0d5)
        "min_samples": 10,
        "seed": 0,
    },
    "algorithm": {"name": "fedavg"},
    "client": {"local_epochs": 1, "batch_size": 32, "lr": 0.02, "momentum": 0.9},
    "federation": {"clients_per_round": 5},
    "eval": {"every": 2},
}
