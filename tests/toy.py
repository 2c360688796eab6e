"""Tiny real-model federations for equivalence tests: a linear classifier on random
features, run through a real executor and the sync loop."""

from __future__ import annotations

import torch
from torch import nn

from fedtorch.algorithms import LocalSGD, get_algorithm
from fedtorch.algorithms.server_optimizers import make_server_optimizer
from fedtorch.data import FederatedData, TensorDataset
from fedtorch.execution import EXECUTORS
from fedtorch.federation import ClientStateStore, SyncSettings, run_sync
from fedtorch.flat import FlatModule
from fedtorch.protocol import FederationInfo

CLIENTS = [torch.arange(0, 13), torch.arange(13, 40)]


def toy_data(n: int = 40, features: int = 5, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(x, y, x, y, classes, "toy")


def make(name: str, num_clients: int = 2, lr: float = 0.1, local: LocalSGD | None = None, server: dict | None = None,
         mean_local_steps: float | None = 1.0, **hp):
    """Algorithm ``name`` with hyper-parameters ``hp`` (others default); ``mean_local_steps``
    sets Scaffnew's default p = 1 / mean K_i."""
    cls = get_algorithm(name)
    opt = make_server_optimizer(**server) if server is not None else None
    return cls(cls.Hparams(**hp), local, opt, FederationInfo(num_clients, lr, mean_local_steps=mean_local_steps))


def x0_for(ds: TensorDataset) -> torch.Tensor:
    torch.manual_seed(0)
    return FlatModule(nn.Linear(ds.train_x.shape[1], ds.num_classes)).params.detach().clone()


def run_toy(algorithm, ds: TensorDataset | None = None, clients=None, rounds: int = 3, executor: str = "serial",
            batch_size: int = 4, lr: float = 0.1, server=None, store=None, **settings):
    """Run ``rounds`` rounds (or continue ``server``) with every client each round.

    Returns (final server state, client-state store).
    """
    ds = ds or toy_data()
    clients = clients or CLIENTS
    features, classes = ds.train_x.shape[1], ds.num_classes
    ex = EXECUTORS[executor](lambda: nn.Linear(features, classes), ds.train_x, ds.train_y, batch_size, nn.functional.cross_entropy)
    store = store or ClientStateStore()
    server = server or algorithm.init_server(x0_for(ds))
    on_round = settings.pop("on_round", None)
    s = SyncSettings(rounds=rounds, clients_per_round=settings.pop("clients_per_round", len(clients)),
                     batch_size=batch_size, lr=lr, **settings)
    return run_sync(algorithm, ex, FederatedData(ds, clients), server, store, s, on_round=on_round), store
