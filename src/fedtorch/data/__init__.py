"""Datasets as tensors, partitioners and the federated view. Imports nothing federated.

``data.dataset`` and ``data.partition`` may also be plug-in references to a user's code
(``package.module:name``, ``path/file.py:name``; :mod:`fedtorch.experiment.plugins`), which
:func:`load_split` and :func:`~fedtorch.data.partition.split_dataset` resolve.
"""

from fedtorch.data.datasets import DATASETS, DatasetSpec, load_dataset
from fedtorch.data import federated
from fedtorch.data.federated import FederatedData, minibatch_indices, steps_per_round
from fedtorch.data.idx import DataFileError, read_idx, write_idx
from fedtorch.data.partition import PARTITIONERS, Partitioner, PartitionError, split_dataset
from fedtorch.data.tensors import TensorDataset


def load_split(data):
    """:func:`fedtorch.data.federated.load_split`, also for a plug-in ``data.dataset``
    (its tensors truncated, checked and split the same way).

    Raises:
        DataFileError, PartitionError: as the built-in path; ConfigError for a bad plug-in.
    """
    if ":" not in data["dataset"]:
        return federated.load_split(data)
    from fedtorch.experiment.dataset_plugins import load_dataset as load_plugin

    ds = load_plugin(data["dataset"]).truncate(data["max_train_samples"], data["max_test_samples"])
    if data["num_clients"] > len(ds.train_y):
        raise PartitionError(f"data.num_clients={data['num_clients']} is more than the {len(ds.train_y)} training samples; lower it")
    return split_dataset(ds, data["partition"], data["num_clients"], data["seed"], data)

__all__ = [
    "DATASETS", "DatasetSpec", "TensorDataset", "load_dataset", "FederatedData", "load_split", "minibatch_indices",
    "steps_per_round", "DataFileError", "read_idx", "write_idx", "PARTITIONERS", "Partitioner", "PartitionError",
    "split_dataset",
]
