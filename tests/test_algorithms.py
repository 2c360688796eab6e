"""FedAvg and FedProx rules: exact properties from shared/ALGORITHMS.md."""

import pytest
import torch
from torch import nn

from fedtorch.algorithms import LocalSGD, available_algorithms, get_algorithm
from fedtorch.algorithms.base import FedAlgorithm
from fedtorch.data import FederatedData, TensorDataset
from fedtorch.execution import SerialExecutor
from fedtorch.federation import ClientStateStore, SyncSettings, run_sync
from fedtorch.flat import FlatModule
from fedtorch.protocol import Broadcast, LocalRun, RoundContext

from helpers import final_model, run_cli, run_dirs


def tiny_problem(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    ds = TensorDataset(x, y, x, y, 3, "toy")
    return ds, lambda: nn.Linear(5, 3)


def run_toy(algorithm, ds, factory, clients, rounds=2, **settings):
    data = FederatedData(ds, clients)
    ex = SerialExecutor(factory, ds.train_x, ds.train_y, settings.pop("batch_size", 4), nn.functional.cross_entropy)
    torch.manual_seed(0)
    x0 = FlatModule(factory()).params.clone()
    s = SyncSettings(rounds=rounds, clients_per_round=len(clients), batch_size=ex.batch_size, lr=0.1, **settings)
    return run_sync(algorithm, ex, data, algorithm.init_server(x0), ClientStateStore(), s).x, x0


def test_fedavg_one_client_one_step_is_one_sgd_step():
    ds, factory = tiny_problem()
    idx = [torch.arange(8)]
    x, x0 = run_toy(get_algorithm("fedavg")(), ds, factory, idx, rounds=1, batch_size=8, local_steps=1)
    model = factory()
    torch.nn.utils.vector_to_parameters(x0, model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(ds.train_x[:8]), ds.train_y[:8]).backward()
    opt.step()
    torch.testing.assert_close(x, torch.nn.utils.parameters_to_vector(model.parameters()), rtol=0, atol=1e-7)


def test_local_sgd_matches_torch_sgd_with_momentum_and_weight_decay():
    ds, factory = tiny_problem()
    algo = get_algorithm("fedavg")(local=LocalSGD(momentum=0.9, weight_decay=1e-3))
    x, x0 = run_toy(algo, ds, factory, [torch.arange(16)], rounds=1, batch_size=16, local_steps=5)
    model = factory()
    torch.nn.utils.vector_to_parameters(x0, model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(ds.train_x[:16]), ds.train_y[:16]).backward()
        opt.step()
    torch.testing.assert_close(x, torch.nn.utils.parameters_to_vector(model.parameters()), rtol=0, atol=1e-6)


def test_fedprox_mu0_is_bit_identical_to_fedavg_on_toy():
    ds, factory = tiny_problem()
    clients = [torch.arange(0, 13), torch.arange(13, 40)]
    a, _ = run_toy(get_algorithm("fedavg")(), ds, factory, clients, rounds=3)
    b, _ = run_toy(get_algorithm("fedprox")(get_algorithm("fedprox").Hparams(mu=0.0)), ds, factory, clients, rounds=3)
    assert torch.equal(a, b)
    c, _ = run_toy(get_algorithm("fedprox")(get_algorithm("fedprox").Hparams(mu=0.5)), ds, factory, clients, rounds=3)
    assert not torch.equal(a, c)


def test_fedprox_mu0_is_bit_identical_to_fedavg_cnn_cli(capsys, tiny_experiment, runs_dir):
    common = ["model.name=cnn", "rounds=2", "client.momentum=0.9"]
    assert run_cli(capsys, "run", tiny_experiment, *common)[0] == 0
    assert run_cli(capsys, "run", tiny_experiment, *common, "algorithm.name=fedprox", "algorithm.mu=0")[0] == 0
    a, b = [final_model(d) for d in run_dirs(runs_dir)]
    assert torch.equal(a, b)


def test_fedprox_contracts_toward_global_model_when_loss_is_flat():
    """On f_i = 0 (zero gradient) FedProx's step is y <- y - lr mu (y - x): a contraction."""
    algo = get_algorithm("fedprox")(get_algorithm("fedprox").Hparams(mu=1.0))
    x = torch.zeros(4)
    y = torch.tensor([1.0, -2.0, 3.0, 0.5])
    run = LocalRun(RoundContext(0, 0, 0, 1, 10, lr=0.1), Broadcast(x=x), {}, y)
    dists = []
    for _ in range(10):
        algo.local_step(run, algo.direction(run, torch.zeros(4)))
        dists.append(float((run.y - x).norm()))
    assert all(b < a for a, b in zip(dists, dists[1:]))
    torch.testing.assert_close(run.y, torch.tensor([1.0, -2.0, 3.0, 0.5]) * 0.9**10)


def test_server_learning_rate_scales_the_aggregate():
    class Fixed(FedAlgorithm):
        name = "fixed"

    from fedtorch.algorithms.server_optimizers import ServerSGD
    from fedtorch.protocol import ClientMessage

    algo = Fixed(server_optimizer=ServerSGD(lr=0.5))
    server = algo.init_server(torch.zeros(2))
    msgs = ClientMessage.stack([ClientMessage(torch.tensor([1.0, 0.0]), 1, 1, 0.0), ClientMessage(torch.tensor([0.0, 4.0]), 3, 1, 0.0)])
    new = algo.aggregate(server, msgs, torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(new.x, torch.tensor([-0.125, -1.5]))
    assert new.round == 1


def test_registry_is_case_insensitive_and_lists_algorithms(capsys):
    assert get_algorithm("FedAvg") is get_algorithm("fedavg")
    code, out, _ = run_cli(capsys, "algorithms")
    assert code == 0 and "fedavg" in out and "fedprox" in out and "mu=0.01" in out


def test_registering_another_class_under_a_taken_name_is_refused():
    from fedtorch.algorithms.registry import register

    class Impostor(FedAlgorithm):
        name = "FedAvg"

    class AliasThief(FedAlgorithm):
        name = "alias_thief_test"
        aliases = ("q-ffl",)

    for cls in (Impostor, AliasThief):
        with pytest.raises(ValueError, match="is already taken by"):
            register(cls)
    assert get_algorithm("fedavg").__name__ == "FedAvg" and "alias_thief_test" not in available_algorithms()
