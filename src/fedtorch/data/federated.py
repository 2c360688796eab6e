"""Federated view of a dataset: shared tensors on the device, one index array per client.

Minibatches are gathers ``train_x[indices[perm[b:b+B]]]`` with a per-client generator;
there is no per-client ``DataLoader``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from fedtorch.data.datasets import load_dataset
from fedtorch.data.partition import PartitionError, split_dataset
from fedtorch.data.tensors import TensorDataset


class ClientIndices(Sequence):
    """Every client's sample indices as one flat tensor and offsets (CSR), read as a sequence
    of ``(n_i,)`` views: ``indices[i]`` is ``flat[offsets[i]:offsets[i + 1]]``.

    A Python list of 10^6 index tensors costs ~600 MB and ~5 s to build (a tensor object
    each); this costs the indices themselves plus 8 bytes a client, and a view is made only
    for a client that trains.

    Args:
        flat: ``(sum n_i,)`` int64, the clients' indices one after another (any device).
        sizes: ``(N,)`` the n_i.
    """

    def __init__(self, flat: torch.Tensor, sizes: np.ndarray):
        self.flat = flat
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()

    @classmethod
    def from_arrays(cls, parts: Sequence[np.ndarray], device: torch.device | str = "cpu") -> "ClientIndices":
        """From one int64 index array per client (a partitioner's output)."""
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        flat = np.concatenate(parts).astype(np.int64, copy=False) if len(parts) else np.zeros(0, np.int64)
        return cls(torch.from_numpy(flat).to(device), sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices; IndexError beyond the end
        return self.flat[self.offsets[i]:self.offsets[i + 1]]


@dataclass(frozen=True)
class FederatedData:
    """A dataset split among clients.

    Attributes:
        data: the :class:`TensorDataset` (tensors on the training device).
        client_indices: ``(n_i,)`` int64 tensors (same device), one per client: a list, or
            a :class:`ClientIndices` (what the runner builds; cheap at 10^6 clients).
    """

    data: TensorDataset
    client_indices: Sequence[torch.Tensor]

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def num_samples(self, client_id: int) -> int:
        if isinstance(self.client_indices, ClientIndices):
            return int(self.client_indices.sizes[client_id])
        return int(self.client_indices[client_id].numel())

    def sizes(self) -> np.ndarray:
        """``(N,)`` int64 n_i of every client."""
        if isinstance(self.client_indices, ClientIndices):
            return self.client_indices.sizes
        return np.fromiter((p.numel() for p in self.client_indices), dtype=np.int64, count=self.num_clients)


def load_split(data: Mapping[str, Any]) -> tuple[TensorDataset, list[np.ndarray]]:
    """Load, truncate and split a dataset as the ``data`` config section says.

    Args:
        data: the ``data`` section (``dataset``, ``root``, ``max_train_samples``,
            ``max_test_samples``, ``partition``, ``num_clients``, ``seed`` and the
            loader's and partitioner's own keys).

    Returns:
        ``(dataset, parts)`` as :func:`~fedtorch.data.partition.split_dataset` returns them.

    Raises:
        DataFileError: missing or corrupt files.
        PartitionError: more clients than training samples, or an impossible split.
    """
    ds = load_dataset(data["dataset"], data["root"], data).truncate(data["max_train_samples"], data["max_test_samples"])
    n = len(ds.train_y)
    if data["num_clients"] > n:
        raise PartitionError(f"data.num_clients={data['num_clients']} is more than the {n} training samples; lower it")
    return split_dataset(ds, data["partition"], data["num_clients"], data["seed"], data)


def steps_per_round(num_samples: int, batch_size: int, local_epochs: int, local_steps: int | None = None) -> int:
    """K_i: ``local_steps`` if given, else ``local_epochs * ceil(n_i / batch_size)``."""
    if local_steps is not None:
        return local_steps
    return local_epochs * math.ceil(num_samples / batch_size)


def mean_steps_per_round(sizes: np.ndarray, batch_size: int, local_epochs: int, local_steps: int | None = None) -> float:
    """The mean over clients of :func:`steps_per_round` (vectorised; the same float as the
    Python sum of the K_i divided by N).

    Args:
        sizes: ``(N,)`` int64 n_i.
    """
    if local_steps is not None:
        return float(local_steps)
    steps = local_epochs * -(-np.asarray(sizes, dtype=np.int64) // batch_size)
    return int(steps.sum()) / len(steps)


def minibatch_indices(
    indices: torch.Tensor, batch_size: int, num_steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Yield ``num_steps`` minibatches of sample indices drawn without replacement.

    Each pass over the client's data is a fresh permutation from ``generator`` (a CPU
    generator; the permutation is moved to ``indices.device``). The last batch of a
    pass may be smaller (no samples are dropped). Passes repeat as needed.

    Args:
        indices: ``(n_i,)`` the client's sample indices.
        batch_size: B.
        num_steps: K_i.
        generator: the client's generator for this round.
    """
    n = indices.numel()
    step = 0
    while step < num_steps:
        perm = torch.randperm(n, generator=generator).to(indices.device, non_blocking=True)
        shuffled = indices[perm]
        for start in range(0, n, batch_size):
            if step == num_steps:
                return
            yield shuffled[start : start + batch_size]
            step += 1
