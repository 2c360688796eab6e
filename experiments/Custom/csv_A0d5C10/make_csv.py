"""Regenerate points.csv (run once; the file is committed): 600 rows, 8 numeric features
f0..f7 and an integer label in 0..2, from a fixed seed.

Each class is a Gaussian blob in 8-d (means drawn once from N(0, 0.8^2), unit noise),
then two features are squared so that a linear model does worse than an MLP. Rows are
shuffled; config.py's DATASET uses the first 480 for training and the last 120 as test.
"""

import csv
from pathlib import Path

import numpy as np

rng = np.random.default_rng(2024)
means = rng.normal(0.0, 0.8, size=(3, 8))
y = rng.integers(0, 3, size=600)
x = means[y] + rng.normal(size=(600, 8))
x[:, 6:] = x[:, 6:] ** 2
with open(Path(__file__).with_name("points.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([f"f{j}" for j in range(8)] + ["label"])
    for row, label in zip(x, y):
        w.writerow([f"{v:.3f}" for v in row] + [int(label)])
