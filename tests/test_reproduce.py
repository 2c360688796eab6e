"""`fedtorch reproduce <table>`: smoke runs end to end through the CLI, cell selection,
input errors, and NIID-Bench's simple-cnn."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import torch

from conftest import FASHION_DIR
from helpers import run_cli

from fedtorch.experiment.errors import ConfigError
from fedtorch.models import build_model
from fedtorch.reproduce import get_table
from fedtorch.reproduce.runner import job_config, plan, run_dir_of, run_job

needs_fashion = pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def _csv_rows(path):
    with open(path, newline="") as f:
        return {(r["cell"], r["method"]): r for r in csv.DictReader(f)}


@needs_fashion
def test_smoke_writes_published_beside_ours_with_mean_and_std_over_seeds(capsys, tmp_path):
    code, out, err = run_cli(capsys, "reproduce", "niid-bench-fmnist", "--smoke", "--methods", "fedavg",
                             "--seeds", "2", "--out", tmp_path)
    assert code == 0, err
    for ext in ("md", "csv", "png"):
        assert (tmp_path / f"niid_bench_fmnist.{ext}").stat().st_size > 0
    # ours = the runs' own result.json accuracies (in %), two seeds with their own splits
    accs = [100 * json.loads((tmp_path / "runs" / "r2_smoke" / "dir0.5" / "fedavg" / f"seed{s}" / "result.json")
                             .read_text())["final_test_accuracy"] for s in (0, 1)]
    rows = _csv_rows(tmp_path / "niid_bench_fmnist.csv")
    row = rows[("dir0.5", "fedavg")]
    assert float(row["published"]) == 88.4
    assert int(row["seeds"]) == 2
    assert float(row["ours_mean"]) == pytest.approx(statistics.fmean(accs))
    assert float(row["ours_std"]) == pytest.approx(statistics.stdev(accs))
    assert float(row["difference"]) == pytest.approx(statistics.fmean(accs) - 88.4)
    # cells and methods not run keep their published number and no number of ours
    assert rows[("c2", "fedprox")]["published"] == "10.0" and rows[("c2", "fedprox")]["ours_mean"] == ""
    assert rows[("dir0.5", "scaffold")]["published"] == "88.6" and rows[("dir0.5", "scaffold")]["seeds"] == "0"
    md = (tmp_path / "niid_bench_fmnist.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| dir0.5 | FedAvg |"))
    assert f"| 88.4 | {statistics.fmean(accs):.1f} ± {statistics.stdev(accs):.1f} | 2 |" in line
    assert "Smoke setting" in md
    assert "dir0.5 fedavg seed1" in out


def test_fedprox_synthetic_smoke_states_the_claim(capsys, tmp_path):
    code, out, err = run_cli(capsys, "reproduce", "fedprox-synthetic", "--smoke", "--methods", "fedavg,fedprox1",
                             "--out", tmp_path)
    assert code == 0, err
    md = (tmp_path / "fedprox_synthetic.md").read_text()
    rows = _csv_rows(tmp_path / "fedprox_synthetic.csv")
    prox, avg = float(rows[("stragglers90", "fedprox1")]["ours_mean"]), float(rows[("stragglers90", "fedavg")]["ours_mean"])
    verdict = "The claim holds" if prox < avg else "The claim does NOT hold"
    assert f"{verdict}: at 90 % stragglers FedProx mu=1 with partial work ends at training loss {prox:.4f}" in md
    # the curve is the global model's loss on the training data: the last row equals the final number
    run_dir = tmp_path / "runs" / "r2_smoke" / "stragglers90" / "fedprox1" / "seed0"
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["test_loss"] == pytest.approx(prox)
    assert (tmp_path / "fedprox_synthetic.png").stat().st_size > 0


def test_cells_pick_a_partition_and_run_all_four_algorithms():
    table = get_table("niid-bench-fmnist")
    setting, jobs = plan(table, cells="dir0.5")
    assert setting.rounds == 50 and not setting.smoke
    cfgs = [job_config(table, j, setting) for j in jobs]
    assert [c.algorithm.name for c in cfgs] == ["fedavg", "fedprox", "scaffold", "fednova"]
    assert {(c.data.partition, c.data.alpha, c.data.min_samples) for c in cfgs} == {("dirichlet", 0.5, 10)}
    assert cfgs[1].algorithm.mu == 0.01
    c = cfgs[0]  # NIID-Bench's schedule, every party every round
    assert (c.data.num_clients, c.federation.clients_per_round, c.rounds, c.client.local_epochs, c.client.batch_size,
            c.client.lr, c.client.momentum, c.client.weight_decay, c.model.name) == (
        10, 10, 50, 10, 64, 0.01, 0.9, 1e-5, "simple-cnn")
    _, jobs = plan(table, cells="iid,c2", seeds=2, rounds=3)
    assert sorted({j.cell for j in jobs}) == ["c2", "iid"] and len(jobs) == 2 * 4 * 2
    cfg = job_config(table, next(j for j in jobs if j.cell == "c2" and j.seed == 1), plan(table, rounds=3)[0])
    assert (cfg.data.partition, cfg.data.classes_per_client, cfg.seed, cfg.data.seed, cfg.rounds) == ("label-quantity", 2, 1, 1, 3)


@pytest.mark.parametrize("argv, expected", [
    (["reproduce", "no-such-table"], "unknown table 'no-such-table'; available: fedprox-synthetic, niid-bench-fmnist"),
    (["reproduce", "niid-bench-fmnist", "--cells", "dir0.5,dir9"], "unknown cell 'dir9'; allowed: iid, dir0.5, c2"),
    (["reproduce", "niid-bench-fmnist", "--methods", "fedsgd"], "unknown method 'fedsgd'"),
    (["reproduce", "niid-bench-fmnist", "--seeds", "0"], "--seeds=0"),
])
def test_bad_input_is_one_error_line_and_exit_2(capsys, tmp_path, argv, expected):
    code, out, err = run_cli(capsys, *argv, "--out", tmp_path)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err
    assert not (tmp_path / "runs").exists()


def test_finished_runs_are_reused_and_a_changed_config_is_refused(tmp_path):
    table = get_table("fedprox-synthetic")
    setting, jobs = plan(table, cells="stragglers0", methods="fedavg", smoke=True)
    first = run_job(table, jobs[0], setting, tmp_path)
    again = run_job(table, jobs[0], setting, tmp_path)
    assert (first["status"], again["status"]) == ("ran", "reused")
    assert again["result"] == first["result"]
    cfg_file = run_dir_of(tmp_path, setting, jobs[0]) / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("lr: 0.01", "lr: 0.02"))
    with pytest.raises(ConfigError, match="another configuration"):
        run_job(table, jobs[0], setting, tmp_path)


def test_simple_cnn_has_niid_benchs_parameter_count():
    # NIID-Bench model.py SimpleCNNMNIST: conv1 1->6 5x5, conv2 6->16 5x5 (no padding),
    # fc1 16*4*4->120, fc2 120->84, fc3 84->10; weights + biases by hand:
    by_hand = (1 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (256 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert by_hand == 44426
    model = build_model("simple-cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == by_hand
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    # SimpleCNN for 3x32x32 (CIFAR-10): fc1 16*5*5 -> 120
    cifar = (3 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert sum(p.numel() for p in build_model("simple-cnn", (3, 32, 32), 10).parameters()) == cifar
    with pytest.raises(ValueError, match="simple-cnn needs"):
        build_model("simple-cnn", (1, 8, 8), 10)
