"""A user's own data and model: a CSV file shipped in this folder (points.csv, 600 rows of
8 numeric features f0..f7 and a label 0..2; make_csv.py regenerates it from a fixed seed),
read by ``DATASET`` with the standard library's ``csv`` module, and a small MLP ``MODEL``.
FedAvg over 10 clients split by Dirichlet label skew (alpha 0.5), 5 clients per round.

For reference, a centralised scikit-learn logistic regression on the same split scores
0.83 test accuracy (the classes overlap; an MLP does no better centrally).
"""

import csv
from pathlib import Path

import torch
from torch import nn

CSV = Path(__file__).with_name("points.csv")
NUM_TRAIN = 480  # the first 480 rows train, the last 120 test (rows were shuffled once)


def read_points():
    """() -> (train_x (480, 8) float32, train_y (480,) int64, test_x (120, 8), test_y (120,)),
    features z-scored with the training rows' mean and std."""
    with open(CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    x = torch.tensor([[float(r[f"f{j}"]) for j in range(8)] for r in rows], dtype=torch.float32)
    y = torch.tensor([int(r["label"]) for r in rows], dtype=torch.int64)
    mean, std = x[:NUM_TRAIN].mean(0), x[:NUM_TRAIN].std(0)
    x = (x - mean) / std
    return x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:]


class SmallMLP(nn.Module):
    """(B, d) features -> (B, num_classes) logits through one hidden layer of 32 ReLUs."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 32), nn.ReLU(),
                                 nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(x)


DATASET = read_points
MODEL = SmallMLP

CONFIG = {
    "seed": 0,
    "rounds": 20,
    "data": {
        "partition": "dirichlet",
        "num_clients": 10,  # must agree with the folder name (C10)
        "alpha": 0.5,  # must agree with the folder name (A0d5)
        "min_samples": 10,
        "seed": 0,
    },
    "algorithm": {"name": "fedavg"},
    "client": {"local_epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9},
    "federation": {"clients_per_round": 5},
    "eval": {"every": 5},
}
