"""federation.mode=async and stragglers through the CLI: bad input, run-directory outputs,
reproducible event logs, the asyncio clock, and the experiment folders (Fashion-MNIST
format and generated CIFAR-10 pickles)."""

import csv
import json
from pathlib import Path

import pytest
import torch

from data_files import write_cifar
from helpers import final_model, metrics, run_cli, run_dirs

ASYNC = ["federation.mode=async", "algorithm.name=fedasync", "rounds=6", "federation.concurrency=3",
         "delays.model=uniform", "delays.max=2.0", "client.lr_delay_alpha=0.1", "eval.every=3"]
ROOT = Path(__file__).resolve().parents[1]

BAD = [
    (["delays.mean=-1", "delays.model=exponential"], "delays.mean=-1.0 is not allowed: delays are seconds >= 0"),
    (["delays.max=-2"], "delays.max=-2.0 is not allowed: delays are seconds >= 0"),
    (["delays.model=gamma"], "delays.model='gamma' is not allowed: use one of constant, uniform, lognormal, exponential, trace"),
    (["federation.concurrency=0"], "federation.concurrency=0 is not allowed: clients in flight must be in [1, data.num_clients=10]"),
    (["federation.concurrency=11"], "federation.concurrency=11 is not allowed: clients in flight must be in [1, data.num_clients=10]"),
    (["federation.clock=threads"], "federation.clock: unknown value 'threads'; allowed: asyncio, simulated"),
    (["delays.model=trace"], "delays.model='trace' needs delays.trace, a CSV file client_id,step_seconds,delay_seconds"),
    (["delays.model=trace", "delays.trace=/nonexistent.csv"], "delays.trace='/nonexistent.csv': no such file"),
    (["federation.buffer_size=2"], "federation.buffer_size=2 is not allowed: algorithm 'fedasync' applies every "
                                   "arrival at once (apply_async) and has no buffer"),
    (["algorithm.name=fedbuff", "federation.buffer_size=2"], "federation.buffer_size=2 is not allowed: algorithm "
                                                             "'fedbuff' sets its own buffer size (algorithm.buffer_size)"),
    (["algorithm.name=fedavg", "federation.buffer_size=0"], "federation.buffer_size=0 is not allowed: must be null or >= 1"),
    (["eval.clients_every=2"], "eval.clients_every=2 is not allowed: per-client evaluation needs federation.mode=sync"),
    (["federation.sleep_scale=-1"], "federation.sleep_scale=-1.0 is not allowed: must be >= 0"),
    (["stragglers.fraction=0.5"], "stragglers are for federation.mode=sync"),
    (["federation.mode=semi"], "federation.mode: unknown value 'semi'; allowed: async, sync"),
]
BAD_SYNC = [
    (["stragglers.fraction=1.0"], "stragglers.fraction=1.0 is not allowed: must be in [0, 1)"),
    (["stragglers.policy=wait"], "stragglers.policy: unknown value 'wait'; allowed: drop, keep"),
    (["client.lr_delay_alpha=0.1"], "needs federation.mode=async (synchronous rounds have no delays)"),
    (["client.early_stopping=-1"], "client.early_stopping=-1 is not allowed: must be >= 0 epochs"),
    (["federation.buffer_size=3"], "federation.buffer_size=3 is not allowed: needs federation.mode=async"),
    (["federation.weighting=size"], "federation.weighting: unknown value 'size'; allowed: samples, uniform"),
]


@pytest.mark.parametrize("overrides, message", [(ASYNC + o, m) for o, m in BAD] + BAD_SYNC,
                         ids=[o[-1] for o, _ in BAD + BAD_SYNC])
def test_bad_async_and_straggler_input_exits_2_before_anything_runs(capsys, tiny_experiment, runs_dir, overrides, message):
    code, _, err = run_cli(capsys, "run", tiny_experiment, *overrides)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and run_dirs(runs_dir) == []


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_async_run_outputs_and_the_asyncio_clock_repeat_the_event_log(capsys, tiny_experiment, runs_dir):
    """Same seed: the simulated clock and the asyncio clock (clients as tasks, real sleeps)
    write the same event log byte for byte and end with the same model."""
    code, out, _ = run_cli(capsys, "run", tiny_experiment, *ASYNC)
    assert code == 0 and "6 client updates in" in out
    code, _, _ = run_cli(capsys, "run", tiny_experiment, *ASYNC, "federation.clock=asyncio", "federation.sleep_scale=0.001")
    assert code == 0
    first, second = run_dirs(runs_dir)
    for name in ("updates.csv", "clients.csv", "selected.csv", "selected.png", "async_progress.png", "metrics.csv",
                 "accuracy.png", "checkpoint.pt", "result.json"):
        assert (first / name).is_file(), name
    assert (first / "updates.csv").read_bytes() == (second / "updates.csv").read_bytes()
    assert torch.equal(final_model(first), final_model(second))
    updates, rows = _rows(first / "updates.csv"), metrics(first)
    assert [int(u["update"]) for u in updates] == list(range(1, 7)) and [r["round"] for r in rows] == list(range(1, 7))
    for u in updates:
        duration = float(u["arrived_at"]) - float(u["dispatched_at"])
        assert 0 <= duration <= 2.0 and float(u["lr"]) == pytest.approx(0.05 / (1 + 0.1 * duration))
        assert int(u["staleness"]) == int(u["server_version"]) - 1 - int(u["version"])
    assert [r["test_accuracy"] is not None for r in rows] == [False, False, True, False, False, True]
    assert all(r["sim_seconds"] == float(u["arrived_at"]) for r, u in zip(rows, updates))
    clients = _rows(first / "clients.csv")
    assert [c["client_id"] for c in clients] == [u["client_id"] for u in updates] and all(float(c["seconds"]) > 0 for c in clients)
    waves = _rows(first / "selected.csv")
    assert int(waves[0]["wave"]) == 0 and 1 <= int(waves[0]["count"]) <= 3
    result = json.loads((first / "result.json").read_text())
    assert result["mode"] == "async" and result["updates"] == 6 and result["simulated_seconds"] == float(updates[-1]["arrived_at"])
    model = final_model(first)
    (first / "result.json").unlink()  # as if killed after the last checkpoint: resuming only redoes the epilogue
    assert run_cli(capsys, "run", "--resume", first)[0] == 0
    assert json.loads((first / "result.json").read_text()) == {**result, "seconds_per_round": pytest.approx(result["seconds_per_round"])}
    assert torch.equal(final_model(first), model) and _rows(first / "updates.csv") == updates


def test_a_synchronous_algorithm_runs_async_through_the_cli_and_matches_its_sync_run(capsys, tiny_experiment, runs_dir):
    """fedavg in async mode (no apply_async: the buffered step, K = concurrency = 4), zero
    delays: the run directory's final model is the synchronous run's with M = 4."""
    code, _, _ = run_cli(capsys, "run", tiny_experiment, "federation.clients_per_round=4", "rounds=3")
    assert code == 0
    code, out, _ = run_cli(capsys, "run", tiny_experiment, "federation.mode=async", "federation.concurrency=4", "rounds=3")
    assert code == 0 and "12 client updates in 0.0 simulated seconds" in out
    sync, asynchronous = run_dirs(runs_dir)
    assert json.loads((asynchronous / "result.json").read_text())["mode"] == "async"
    assert torch.equal(final_model(sync), final_model(asynchronous))


def test_max_seconds_and_a_trace_file(capsys, tmp_path, tiny_experiment, runs_dir):
    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,step_seconds,delay_seconds\n" + "".join(f"{c},0.01,{c}\n" for c in range(10)))
    code, _, _ = run_cli(capsys, "run", tiny_experiment, *ASYNC, "rounds=1000", "delays.model=trace",
                         f"delays.trace={trace}", "federation.max_seconds=12")
    assert code == 0
    (run,) = run_dirs(runs_dir)
    updates = _rows(run / "updates.csv")
    assert updates and all(float(u["arrived_at"]) <= 12 for u in updates)
    assert metrics(run)[-1]["test_accuracy"] is not None  # the final model is always evaluated


def test_sync_stragglers_through_the_cli(capsys, tiny_experiment, runs_dir):
    code, _, _ = run_cli(capsys, "run", tiny_experiment, "stragglers.fraction=0.5", "stragglers.policy=drop",
                         "federation.clients_per_round=4")
    assert code == 0
    (run,) = run_dirs(runs_dir)
    assert [int(r["count"]) for r in _rows(run / "selected.csv")] == [2, 2, 2]  # half of each round dropped
    assert (run / "selected.png").is_file()


def test_async_fashion_mnist_experiment_runs_on_mnist_format_files(capsys, tmp_path, tiny_idx_dir):
    folder = ROOT / "experiments" / "FashionMNIST" / "async_A0d5C10"
    code, _, _ = run_cli(capsys, "run", folder, f"data.root={tiny_idx_dir}", "data.dataset=mnist",
                         f"output_dir={tmp_path / 'runs'}", "rounds=3", "client.local_epochs=1", "logging.progress=none")
    assert code == 0
    (run,) = run_dirs(tmp_path / "runs")
    assert json.loads((run / "result.json").read_text())["updates"] == 3


def test_cifar10_resnet_experiment_runs_on_generated_pickles(capsys, tmp_path):
    write_cifar(tmp_path / "cifar", "cifar10", per_batch=8, seed=0)
    folder = ROOT / "experiments" / "CIFAR10" / "async_A0d5C10"
    code, out, err = run_cli(capsys, "run", folder, f"data.root={tmp_path / 'cifar'}", f"output_dir={tmp_path / 'runs'}",
                             "rounds=1", "client.local_steps=1", "client.batch_size=4", "data.min_samples=1",
                             "federation.concurrency=1", "logging.progress=none")
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "runs")
    assert json.loads((run / "result.json").read_text())["rounds"] == 1
    assert torch.isfinite(final_model(run)).all() and final_model(run).numel() == 11_173_962


def test_cifar10_experiment_without_pickles_says_where_to_put_them(capsys, tmp_path):
    folder = ROOT / "experiments" / "CIFAR10" / "async_A0d5C10"
    code, _, err = run_cli(capsys, "run", folder, f"data.root={tmp_path}", f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and "cifar10: no data_batch_1" in err


@pytest.mark.parametrize("folder", ["FashionMNIST/async_A0d5C10", "FashionMNIST/async_shards2_C1000", "CIFAR10/async_A0d5C10"])
def test_async_experiment_folders_validate(folder):
    from fedtorch.experiment.async_run import async_settings
    from fedtorch.experiment.config import load_experiment, validate
    from fedtorch.experiment.run_settings import delay_model

    from fedtorch.experiment.config import apply_overrides

    base = load_experiment(ROOT / "experiments" / folder)[0]
    cfg = validate(base)
    settings, delays = async_settings(cfg), delay_model(cfg)
    assert cfg.federation.mode == "async" and 1 <= settings.concurrency <= cfg.data.num_clients
    assert delays.model in ("uniform", "lognormal")
    if folder.endswith("async_A0d5C10"):  # either rule on the command line, as the README shows
        for name, hp in (("fedasync", "algorithm.alpha=0.9"), ("fedbuff", "algorithm.buffer_size=5")):
            assert validate(apply_overrides(base, [f"algorithm.name={name}", hp])).algorithm.name == name
