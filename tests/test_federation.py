"""The synchronous loop: client sampling, aggregation weights, non-finite updates."""

import torch
from torch import nn

from fedtorch.algorithms.base import FedAlgorithm
from fedtorch.data import FederatedData, TensorDataset
from fedtorch.execution import SerialExecutor
from fedtorch.federation import ClientStateStore, SyncSettings, run_sync, sample_clients
from fedtorch.federation.sync import aggregation_weights
from fedtorch.flat import FlatModule


class PoisonClientZero(FedAlgorithm):
    """FedAvg, except client 0 sends NaN (a diverged client)."""

    name = "poison0"

    def finish_local(self, run, loss):
        message, state = super().finish_local(run, loss)
        if run.ctx.client_id == 0:
            message.delta = torch.full_like(message.delta, float("nan"))
        return message, state


def toy(clients):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=g), torch.randint(0, 2, (30,), generator=g)
    ds = TensorDataset(x, y, x, y, 2, "toy")
    factory = lambda: nn.Linear(4, 2)  # noqa: E731
    torch.manual_seed(0)
    x0 = FlatModule(factory()).params.clone()
    ex = SerialExecutor(factory, x, y, 5, nn.functional.cross_entropy)
    return FederatedData(ds, clients), ex, x0


def test_non_finite_update_is_left_out():
    clients = [torch.arange(0, 10), torch.arange(10, 20), torch.arange(20, 30)]
    data, ex, x0 = toy(clients)
    s = SyncSettings(rounds=1, clients_per_round=3, batch_size=5, lr=0.1)
    reports = []
    poisoned = run_sync(PoisonClientZero(), ex, data, PoisonClientZero().init_server(x0), ClientStateStore(), s,
                        on_round=lambda st, r: reports.append(r))
    assert reports[0].valid.tolist() == [False, True, True]
    assert torch.isfinite(poisoned.x).all()
    d1, d2 = (r.message.delta for r in reports[0].results[1:])
    torch.testing.assert_close(poisoned.x, x0 - (0.5 * d1 + 0.5 * d2), rtol=0, atol=1e-7)


def test_all_clients_non_finite_keeps_model():
    data, ex, x0 = toy([torch.arange(0, 30)])
    s = SyncSettings(rounds=2, clients_per_round=1, batch_size=5, lr=0.1)
    final = run_sync(PoisonClientZero(), ex, data, PoisonClientZero().init_server(x0), ClientStateStore(), s)
    assert torch.equal(final.x, x0) and final.round == 2


def test_sampling_is_per_round_deterministic_and_distinct():
    a = [sample_clients(3, t, 100, 10) for t in range(5)]
    assert a == [sample_clients(3, t, 100, 10) for t in range(5)]
    assert all(len(set(s)) == 10 and s == sorted(s) for s in a)
    assert len({tuple(s) for s in a}) == 5
    assert sample_clients(4, 0, 100, 10) != a[0]


def test_aggregation_weights():
    n = torch.tensor([10, 30])
    torch.testing.assert_close(aggregation_weights(n, "samples"), torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(aggregation_weights(n, "uniform"), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_participation_fraction(tiny_experiment):
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.run_settings import clients_per_round

    base, _ = load_experiment(tiny_experiment)
    assert clients_per_round(validate(apply_overrides(base, ["federation.participation=0.3"]))) == 3
    assert clients_per_round(validate(base)) == 4
