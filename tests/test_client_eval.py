"""Per-client evaluation on held-out local splits, and per-client logs."""

import csv
import json

import pytest
import torch

from fedtorch.data.local_split import split_holdout
from fedtorch.federation.client_eval import summarize

from helpers import metrics, run_cli, run_dirs


def test_split_holdout_partitions_each_client():
    parts = [torch.arange(0, 1), torch.arange(1, 3), torch.arange(3, 13), torch.arange(13, 113)]
    train, held = split_holdout(parts, 0.2, seed=0)
    assert [h.numel() for h in held] == [0, 1, 2, 20]
    for p, t, h in zip(parts, train, held):
        assert sorted(torch.cat([t, h]).tolist()) == p.tolist() and not set(t.tolist()) & set(h.tolist())
        assert t.tolist() == sorted(t.tolist())  # original order kept
    again, held_again = split_holdout(parts, 0.2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(held, held_again))
    assert any(not torch.equal(a, b) for a, b in zip(held, split_holdout(parts, 0.2, seed=1)[1]))
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        split_holdout(parts, 1.0, seed=0)


def test_summary_statistics():
    acc = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3, 1.0, 0.2, 0.6, 0.4, 0.8, 0.05])  # 11 clients: 10 % -> 2
    out = summarize(acc, "acc")
    assert out["acc_worst10"] == pytest.approx(0.075) and out["acc_best10"] == pytest.approx(0.95)
    assert out["acc_mean"] == pytest.approx(acc.double().mean().item())
    assert out["acc_std"] == pytest.approx(acc.double().std(unbiased=False).item())


def test_client_metrics_are_recorded(capsys, tiny_experiment, runs_dir):
    code, _, _ = run_cli(capsys, "run", tiny_experiment, "algorithm.name=perfedavg", "algorithm.alpha=0.1",
                         "rounds=3", "eval.clients_every=2", "eval.holdout=0.25")
    assert code == 0
    (run_dir,) = run_dirs(runs_dir)
    rows = metrics(run_dir)
    assert [r["client_acc_mean"] is not None for r in rows] == [False, True, True]  # every 2 rounds and at the end
    for r in rows[1:]:
        assert 0 <= r["client_acc_worst10"] <= r["client_acc_mean"] <= r["client_acc_best10"] <= 1
        assert r["personal_acc_mean"] is not None and r["client_acc_std"] >= 0
    with open(run_dir / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert header[:9] == ["round", "train_loss", "test_loss", "test_accuracy", "wall_seconds", "elapsed_seconds",
                          "bytes_down", "bytes_up", "clients_aggregated"]
    assert "client_acc_worst10" in header and "personal_acc_best10" in header
    result = json.loads((run_dir / "result.json").read_text())
    assert result["client_acc_mean"] == rows[-1]["client_acc_mean"] and "personal_acc_mean" in result


def test_clients_train_on_the_rest_of_their_split(tiny_experiment):
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.runner import prepare

    base, _ = load_experiment(tiny_experiment)
    plain = prepare(validate(base))
    split = prepare(validate(apply_overrides(base, ["eval.clients_every=1", "eval.holdout=0.25"])))
    assert plain.holdout is None and len(split.holdout) == 10
    for whole, train, held in zip(plain.data.client_indices, split.data.client_indices, split.holdout):
        assert sorted(torch.cat([train, held]).tolist()) == sorted(whole.tolist())
        assert held.numel() == int(0.25 * whole.numel())


def test_global_only_algorithms_have_no_personal_accuracy_and_deltasgd_logs_step_sizes(capsys, tiny_experiment, runs_dir):
    assert run_cli(capsys, "run", tiny_experiment, "algorithm.name=deltasgd", "rounds=2", "eval.clients_every=1")[0] == 0
    (run_dir,) = run_dirs(runs_dir)
    assert all(r["personal_acc_mean"] is None and r["client_acc_mean"] is not None for r in metrics(run_dir))
    with open(run_dir / "clients.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(float(r["step_size"]) > 0 for r in rows)


# ------------------------------------------------------------------ fine-tuning draws and hook fallbacks


def _four_clients():
    from torch import nn

    from fedtorch.data import FederatedData, TensorDataset
    from fedtorch.execution import SerialExecutor

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(56, 5, generator=g), torch.randint(0, 3, (56,), generator=g)
    sizes = [12, 16, 8, 20]  # unequal n_i, each more than one minibatch of 4
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    parts = [torch.arange(a, b) for a, b in zip(bounds, bounds[1:])]
    train = [p[: len(p) * 3 // 4] for p in parts]
    holdout = [p[len(p) * 3 // 4:] for p in parts]
    ex = SerialExecutor(lambda: nn.Linear(5, 3), x, y, 4, nn.functional.cross_entropy)
    torch.manual_seed(0)
    from fedtorch.flat import FlatModule

    x0 = FlatModule(nn.Linear(5, 3)).params.detach().clone()
    return FederatedData(TensorDataset(x, y, x, y, 3, "toy"), train), holdout, ex, x0


class _FirstGradient:
    """A local rule (plain SGD) that records each client's first minibatch gradient."""

    def __init__(self):
        from fedtorch.algorithms import get_algorithm

        self.inner = get_algorithm("fedavg")()
        self.first = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def direction(self, run, g):
        if run.step == 0:
            self.first[run.ctx.client_id] = g.clone()
        return g


def test_fine_tuning_does_not_draw_the_minibatches_of_the_next_training_round():
    """Per-client evaluation after round t fine-tunes at server.round = t + 1; with the
    training seed it drew exactly the minibatches each client trains on in round t + 1
    (same first gradient at the same model). Its own purpose gives other minibatches."""
    from fedtorch.algorithms import get_algorithm
    from fedtorch.federation.client_eval import evaluate_clients
    from fedtorch.protocol import ClientTask, Personalization, RoundContext

    data, holdout, ex, x0 = _four_clients()
    tune = _FirstGradient()

    class Personalised(get_algorithm("fedavg")):
        def personalization(self):
            return Personalization(algorithm=tune, steps=2, lr=0.1)

    alg = Personalised()
    server = alg.init_server(x0).replace(round=5)
    evaluate_clients(alg, ex, data, holdout, server, batch_size=4, seed=7)
    train = _FirstGradient()  # round 5's local training of the same clients from the same model
    tasks = [ClientTask(RoundContext(5, c, 7, data.num_samples(c), 3, 0.1), data.client_indices[c]) for c in range(4)]
    ex.run(train, train.broadcast(server), tasks, [{} for _ in range(4)])
    assert sorted(tune.first) == sorted(train.first) == [0, 1, 2, 3]
    for c in range(4):
        assert not torch.equal(tune.first[c], train.first[c]), c


def test_client_eval_falls_back_to_the_default_hooks():
    """An algorithm object without eval_model / personalization: the global model x is
    evaluated and there is no personalised accuracy (not an AttributeError)."""
    from fedtorch.algorithms import get_algorithm
    from fedtorch.federation.client_eval import evaluate_clients

    data, holdout, ex, x0 = _four_clients()

    class Bare:
        def __init__(self):
            self.inner = get_algorithm("fedavg")()

        def __getattr__(self, name):
            if name in ("eval_model", "personalization"):
                raise AttributeError(name)
            return getattr(self.inner, name)

    server = get_algorithm("fedavg")().init_server(x0)
    out = evaluate_clients(Bare(), ex, data, holdout, server, batch_size=4, seed=0)
    accs = torch.tensor([ex.evaluate(x0, data.data.train_x[h], data.data.train_y[h])[1] for h in holdout])
    assert set(out) == {"client_acc_mean", "client_acc_std", "client_acc_worst10", "client_acc_best10"}
    assert out["client_acc_mean"] == pytest.approx(accs.double().mean().item())
