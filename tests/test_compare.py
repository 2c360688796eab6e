"""``fedtorch compare``: same seed, split and schedule for every algorithm; table and
plot; diverged and crashed runs reported, not fatal."""

import csv
import json

import torch

from fedtorch.algorithms import get_algorithm

from helpers import final_model, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_compare_writes_table_and_plot_and_reports_divergence(capsys, tiny_experiment, runs_dir, monkeypatch):
    def broken(self, run):
        raise RuntimeError("boom")

    monkeypatch.setattr(get_algorithm("fedinit"), "init_local", broken)
    code, out, _ = run_cli(capsys, "compare", tiny_experiment, "--algorithms", "fedavg,fedprox,perfedavg,fedinit",
                           "algorithm.mu=1e30", "rounds=3", "eval.clients_every=3", "--target", "0.5")
    assert code == 1  # one crashed run
    (folder,) = list(runs_dir.rglob("compare_*"))
    with open(folder / "comparison.csv") as f:
        rows = {r["algorithm"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["fedavg", "fedprox", "perfedavg", "fedinit"]
    assert rows["fedavg"]["status"] == "ok" and float(rows["fedavg"]["final_test_accuracy"]) > 0.5
    assert rows["fedprox"]["status"] == "diverged"  # mu = 1e30 blows the local iterate up
    assert rows["fedinit"]["status"] == "crashed" and "RuntimeError: boom" in rows["fedinit"]["note"]
    assert rows["perfedavg"]["personal_acc_mean"] != "" and rows["fedavg"]["personal_acc_mean"] == ""
    assert 1 <= int(rows["fedavg"]["rounds_to_target"]) <= 3
    assert float(rows["fedavg"]["bytes_per_round"]) == 2 * 4 * 7850 * 4  # down + up, 4 clients, logreg
    md = (folder / "comparison.md").read_text()
    assert "| fedprox | diverged (stopped at round 1: " in md and "rounds to 0.5" in md and md in out
    assert (folder / "accuracy.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["00_fedavg", "01_fedprox", "02_perfedavg", "03_fedinit"]
    assert json.loads((folder / "00_fedavg" / "result.json").read_text())["rounds"] == 3


def test_compare_runs_share_seed_split_and_schedule(capsys, tiny_experiment, runs_dir):
    import yaml

    elsewhere = runs_dir.parent / "elsewhere"
    assert run_cli(capsys, "compare", tiny_experiment, "--algorithms", "fedavg,FedPROX", "algorithm.mu=0", "rounds=2", "seed=3",
                   f"output_dir={elsewhere}")[0] == 0
    (folder,) = list(elsewhere.rglob("compare_*"))
    assert not runs_dir.exists()
    a, b = sorted(p for p in folder.iterdir() if p.is_dir())
    ca, cb = (yaml.safe_load((p / "config.yaml").read_text()) for p in (a, b))
    assert ca["algorithm"] == {"name": "fedavg"} and cb["algorithm"] == {"name": "fedprox", "mu": 0.0}
    ca.pop("algorithm"), cb.pop("algorithm")
    assert ca == cb and ca["seed"] == 3
    assert torch.equal(final_model(a), final_model(b))  # fedprox with mu = 0 is fedavg: same seed, split, order
    assert (a / "clients.csv").read_text().splitlines()[1:] and [r.split(",")[:4] for r in (a / "clients.csv").read_text().splitlines()] == \
        [r.split(",")[:4] for r in (b / "clients.csv").read_text().splitlines()]  # same clients, sizes and steps


def test_compare_rejects_bad_input_before_running(capsys, tiny_experiment, runs_dir):
    for args, message in [
        (["--algorithms", "fedavg,fedfoo"], "unknown algorithm 'fedfoo'"),
        (["--algorithms", "fedavg,scaffold", "algorithm.mu=0.1"], "no algorithm in --algorithms takes algorithm.mu"),
        (["--algorithms", "fedavg,fedprox", "algorithm.mu=-1"], "algorithm.mu=-1.0 is not allowed"),
    ]:
        code, _, err = run_cli(capsys, "compare", tiny_experiment, *args)
        assert code == 2 and message in err, err
    assert not list(runs_dir.rglob("compare_*"))


def _write_metrics(run_dir, accuracies, loss=0.5):
    run_dir.mkdir(parents=True)
    rows = [{"round": r + 1, "train_loss": loss, "test_loss": loss, "test_accuracy": a} for r, a in enumerate(accuracies)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_a_run_ending_at_chance_accuracy_is_flagged(tmp_path):
    from fedtorch.experiment.compare import CHANCE_MARGIN, summarize_run

    collapsed = _write_metrics(tmp_path / "collapsed", [0.45, 0.30, 0.10])  # learnt, then collapsed (FedCM at momentum 0.9)
    row = summarize_run("fedcm", collapsed, 0.5, num_classes=10)
    assert row["status"] == "chance" and "1/10" in row["note"]
    edge = _write_metrics(tmp_path / "edge", [0.1 + CHANCE_MARGIN])
    assert summarize_run("a", edge, 0.5, num_classes=10)["status"] == "chance"
    learnt = _write_metrics(tmp_path / "learnt", [0.1, 0.1 + CHANCE_MARGIN + 0.01])
    assert summarize_run("a", learnt, 0.5, num_classes=10)["status"] == "ok"
    assert summarize_run("a", collapsed, 0.5)["status"] == "ok"  # classes unknown: no check
    binary = _write_metrics(tmp_path / "binary", [0.51])
    assert summarize_run("a", binary, 0.5, num_classes=2)["status"] == "chance"
    nan = _write_metrics(tmp_path / "nan", [0.1], loss=float("nan"))
    assert summarize_run("a", nan, 0.5, num_classes=10)["status"] == "diverged"  # diverged wins over chance
