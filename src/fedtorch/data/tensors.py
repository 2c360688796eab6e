"""The in-memory dataset every loader returns, and helpers loaders share.

A loader returns a :class:`TensorDataset` with train and test tensors in memory and,
for datasets that come with their own users (LEAF, Synthetic), the users' index arrays.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_DIR_ENV = "FEDTORCH_DATA_DIR"


@dataclass(frozen=True)
class TensorDataset:
    """Train and test tensors of one dataset.

    Attributes:
        train_x: ``(N, *input_shape)`` float32 features, or int64 token ids for text
            (Shakespeare: ``(N, 80)`` character indices).
        train_y: ``(N,)`` int64 labels in ``[0, num_classes)``.
        test_x: ``(N_test, *input_shape)``, same dtype as ``train_x``.
        test_y: ``(N_test,)`` int64.
        num_classes: number of classes.
        name: dataset name.
        users: the dataset's own client split (LEAF users, Synthetic devices): one
            sorted int64 array of ``train_x`` row indices per user, or None for datasets
            without users. Used by ``data.partition=natural``.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    name: str
    users: tuple[np.ndarray, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def truncate(self, max_train: int | None, max_test: int | None) -> "TensorDataset":
        """Keep the first ``max_train`` training and ``max_test`` test samples (None: all).

        Users keep only their indices below ``max_train``; users left empty are dropped.
        """
        if not max_train and not max_test:
            return self
        users = self.users
        if users is not None and max_train:
            users = tuple(u[u < max_train] for u in users)
            users = tuple(u for u in users if len(u))
        return dataclasses.replace(
            self, train_x=self.train_x[:max_train], train_y=self.train_y[:max_train],
            test_x=self.test_x[:max_test], test_y=self.test_y[:max_test], users=users,
        )


def dataset_root(root: str | None, folder: str) -> Path:
    """Where a dataset's files are: ``root`` if given, else ``$FEDTORCH_DATA_DIR/<folder>``,
    else ``./data/<folder>``."""
    if root:
        return Path(root)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) / folder if env else Path("data") / folder


def stratified_holdout(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train, test), ``round(fraction * n_k)`` of each class k to test.

    For datasets shipped without a test split (scikit-learn sets, single LIBSVM files).
    The split uses its own fixed ``seed`` so that it does not move with ``data.seed``.

    Returns:
        ``(train_idx, test_idx)``: sorted int64 arrays that together cover ``range(len(y))``.
    """
    rng = np.random.default_rng(seed)
    test = [rng.permutation(np.flatnonzero(y == k))[: round(fraction * np.sum(y == k))] for k in np.unique(y)]
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    return np.setdiff1d(np.arange(len(y)), test_idx).astype(np.int64), test_idx


def standardised(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """z-score both ``(n, d)`` arrays with the training mean and std (constant features -> 0).

    Mean and std are accumulated in float64 over blocks of rows. float32 arrays are
    scaled in place and wrapped without a copy (a dense LIBSVM set can take gigabytes);
    other dtypes are scaled in float64, then converted.

    Returns:
        float32 tensors of the same shapes (sharing memory with float32 inputs).
    """
    mean, std = _column_stats(train)
    return tuple(torch.from_numpy(_zscore(a, mean, std)) for a in (train, test))


_BLOCK_ELEMENTS = 1 << 18  # rows per block: temporaries of at most 2 MB (float64)


def _row_blocks(x: np.ndarray):
    rows = max(1, _BLOCK_ELEMENTS // max(x.shape[1], 1))
    return (x[i : i + rows] for i in range(0, len(x), rows))


def _column_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (population) of ``(n, d)`` ``x`` as float64, std 0 -> 1."""
    n = max(len(x), 1)
    total = np.zeros(x.shape[1], dtype=np.float64)
    for block in _row_blocks(x):
        total += block.sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros(x.shape[1], dtype=np.float64)
    for block in _row_blocks(x):
        dev = block - mean
        dev *= dev
        sq += dev.sum(axis=0)
    std = np.sqrt(sq / n)
    return mean, np.where(std > 0, std, 1.0)


def _zscore(a: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    if a.dtype != np.float32 or not a.flags.writeable:
        return ((a - mean) / std).astype(np.float32)
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    for block in _row_blocks(a):
        block -= mean32
        block /= std32
    return a


def labels_to_range(y_train: np.ndarray, y_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Map the sorted distinct labels of both splits to ``0..C-1`` (e.g. LIBSVM's -1/+1 -> 0/1).

    Returns:
        ``(train labels, test labels, C)`` as int64 tensors and an int.
    """
    values = np.unique(np.concatenate([y_train, y_test]))
    return (
        torch.from_numpy(np.searchsorted(values, y_train).astype(np.int64)),
        torch.from_numpy(np.searchsorted(values, y_test).astype(np.int64)),
        len(values),
    )
