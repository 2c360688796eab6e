"""Partitioners: ``targets -> list of per-client index arrays``, seeded and exact.

Each function takes the training labels ``targets (N,)``, ``num_clients`` and ``seed``
(the config's ``data.seed``, independent of the training seed) plus its own keyword
arguments, and returns ``list[np.ndarray]`` of length ``num_clients``: client i's sorted
int64 sample indices. Every index appears at most once, and exactly once unless the
function's docstring names the samples it leaves out. Impossible requests raise
:class:`PartitionError` instead of retrying forever.

:data:`PARTITIONERS` names each one (``data.partition``) with the ``data.*`` keys it
reads; :func:`split_dataset` runs one on a dataset, including the per-client input
transform of feature-skew splits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from fedtorch.data.partition.common import PartitionError
from fedtorch.data.partition.feature import add_client_noise, fcube_split, natural
from fedtorch.data.partition.label import client_inner_dirichlet, dirichlet, label_quantity, power_law, shards
from fedtorch.data.partition.quantity import iid, iid_lognormal, quantity_dirichlet
from fedtorch.data.tensors import TensorDataset


@dataclass(frozen=True)
class Partitioner:
    """One entry of :data:`PARTITIONERS`.

    Attributes:
        split: ``split(targets, num_clients, seed, **kwargs) -> list of index arrays``.
        summary: one line for help texts.
        options: ``data.*`` keys passed to ``split`` as keyword arguments of the same name.
        needs: dataset fields passed too: ``"inputs"`` (``train_x`` as numpy) or ``"users"``.
        transform: ``(train_x, parts, seed, **kwargs) -> train_x``, a per-client input
            transform applied once to the training tensor (feature skew), or None.
        transform_options: ``data.*`` keys passed to ``transform``.
    """

    split: Callable[..., list[np.ndarray]]
    summary: str
    options: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    transform: Callable[..., torch.Tensor] | None = None
    transform_options: tuple[str, ...] = ()


PARTITIONERS: dict[str, Partitioner] = {
    "iid": Partitioner(iid, "balanced IID (McMahan et al. 2017)"),
    "iid-lognormal": Partitioner(
        iid_lognormal, "unbalanced IID, sizes ~ LogNormal(0, data.size_sigma) (FedLab; Acar et al. 2021)",
        ("size_sigma", "min_samples")),
    "quantity-dir": Partitioner(
        quantity_dirichlet, "quantity skew / unbalanced IID, sizes q ~ Dir(data.beta) (NIID-Bench, Li et al. 2022)",
        ("beta", "min_samples")),
    "dirichlet": Partitioner(
        dirichlet, "hetero-dir label skew, per-class q ~ Dir(data.alpha), data.min_samples (Yurochkin et al. 2019)",
        ("alpha", "min_samples")),
    "client-inner-dir": Partitioner(
        client_inner_dirichlet, "label skew with fixed client sizes, priors ~ Dir(data.alpha) (Acar et al. 2021)",
        ("alpha", "size_sigma", "min_samples")),
    "shards": Partitioner(
        shards, "sorted-label shards, data.shards_per_client each (McMahan et al. 2017)", ("shards_per_client",)),
    "label-quantity": Partitioner(
        label_quantity, "#C=k: exactly data.classes_per_client classes per client (NIID-Bench, Li et al. 2022)",
        ("classes_per_client",)),
    "powerlaw": Partitioner(
        power_law, "k classes per client, heavy-tailed sizes (FedProx, Li et al. 2020)",
        ("classes_per_client", "size_sigma", "min_samples")),
    "noise": Partitioner(
        iid, "balanced IID + Gaussian input noise, client i std data.noise_sigma*i/(N-1) (NIID-Bench)",
        transform=add_client_noise, transform_options=("noise_sigma",)),
    "fcube": Partitioner(
        fcube_split, "FCUBE feature skew: octant pairs of the cube (NIID-Bench); data.dataset=fcube", needs=("inputs",)),
    "natural": Partitioner(natural, "the dataset's own users (LEAF, Synthetic)", needs=("users",)),
}


def split_dataset(
    ds: TensorDataset, partition: str, num_clients: int, seed: int, options: Mapping[str, Any] | None = None
) -> tuple[TensorDataset, list[np.ndarray]]:
    """Split ``ds`` among ``num_clients`` clients with partitioner ``partition``.

    Args:
        ds: the dataset.
        partition: a key of :data:`PARTITIONERS`, or a plug-in reference to a user's
            ``(targets, num_clients, rng) -> {client: indices}`` with ``rng =
            numpy.random.default_rng(seed)`` (:func:`fedtorch.experiment.plugins.partition`).
        num_clients: N.
        seed: ``data.seed``.
        options: the ``data`` config section (or any mapping): the partitioner takes the
            keys its :attr:`Partitioner.options` names, its defaults for absent or None ones.

    Returns:
        ``(dataset, parts)``: the dataset (a new one with transformed ``train_x`` for a
        feature-skew split) and one non-empty sorted int64 index array per client.

    Raises:
        KeyError: unknown partitioner (message lists the known ones).
        PartitionError: the split is impossible, or some client would get no sample.
        ConfigError: a plug-in partition that cannot be called or gives a bad split.
    """
    if ":" in partition:
        from fedtorch.experiment.plugins import partition as plugin_partition  # user code: only when named

        return ds, plugin_partition(partition, ds.train_y.numpy(), num_clients, seed)
    if partition not in PARTITIONERS:
        raise KeyError(f"unknown partitioner {partition!r}; available: {', '.join(sorted(PARTITIONERS))}")
    spec, options = PARTITIONERS[partition], options or {}
    def pick(keys):
        return {k: options[k] for k in keys if options.get(k) is not None}  # None: the function's default

    kwargs = pick(spec.options)
    fields = {"inputs": lambda: ds.train_x.numpy(), "users": lambda: ds.users}
    kwargs.update({name: fields[name]() for name in spec.needs})
    parts = spec.split(ds.train_y.numpy(), num_clients, seed, **kwargs)
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise PartitionError(
            f"partition={partition} left {len(empty)} of {num_clients} clients without samples (client {empty[0]}); "
            "lower data.num_clients or raise data.min_samples"
        )
    if spec.transform is not None:
        ds = dataclasses.replace(ds, train_x=spec.transform(ds.train_x, parts, seed, **pick(spec.transform_options)))
    return ds, parts


__all__ = [
    "PARTITIONERS", "Partitioner", "PartitionError", "split_dataset", "iid", "iid_lognormal", "quantity_dirichlet",
    "dirichlet", "client_inner_dirichlet", "shards", "label_quantity", "power_law", "add_client_noise",
    "fcube_split", "natural",
]
