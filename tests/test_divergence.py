"""Diverged runs stop at their first non-finite round with exit code 3 and a ``result.json``
that says so; sweeps and comparisons record them and go on; the executor is closed at the end
of every run, also when it fails."""

import csv
import json

import pytest
import torch

from fedtorch.experiment import runner
from tests.helpers import metrics, run_cli, run_dirs


def _result(run_dir):
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_huge_learning_rate_stops_at_the_first_non_finite_round_with_exit_3(capsys, tiny_experiment, runs_dir, mode):
    args = ["rounds=8", "model.name=mlp", "client.lr=100", "client.local_epochs=3"]
    if mode == "async":
        args += ["federation.mode=async", "algorithm.name=fedbuff", "algorithm.buffer_size=2"]
    code, _, err = run_cli(capsys, "run", tiny_experiment, *args)
    assert code == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: diverged at round ") and "client.lr (now 100.0)" in lines[0]
    (run_dir,) = run_dirs(runs_dir)
    result = _result(run_dir)
    rows = metrics(run_dir)
    assert result["status"] == "diverged" and result["diverged_at"] < 8
    if mode == "sync":  # the diverged round is the last row: it stopped right there
        assert rows[-1]["round"] == result["diverged_at"] and all(r["train_loss"] is not None for r in rows[:-1])
    else:  # async: rejected arrivals make no server version; it stopped at the version it had
        assert len(rows) == result["diverged_at"] and "at arrival " in result["reason"]
    assert not (run_dir / "model.pt").exists()
    if (run_dir / "checkpoint.pt").exists():  # the last good round's, never the diverged one
        assert torch.isfinite(torch.load(run_dir / "checkpoint.pt", weights_only=True)["server"]["x"]).all()


def test_the_share_of_non_finite_updates_decides(capsys, tiny_experiment, runs_dir):
    """lr 100 with momentum: in round 1 one client of four explodes to NaN, the others reach a
    finite loss of ~1e30. The default share 0.5 leaves that client out and goes on; a share of
    0.25 stops at round 1; and the loss limit stops it too."""
    args = ["rounds=3", "model.name=mlp", "client.lr=100", "client.momentum=0.9"]
    code, _, err = run_cli(capsys, "run", tiny_experiment, *args)
    assert code == 0 and "round 1: clients [0] sent non-finite updates; left out of aggregation" in err
    code, _, err = run_cli(capsys, "run", tiny_experiment, *args, "eval.diverge_nonfinite=0.25")
    assert code == 3 and "1 of 4 client updates held NaN/Inf (eval.diverge_nonfinite=0.25)" in err
    code, _, err = run_cli(capsys, "run", tiny_experiment, *args, "eval.diverge_loss=1e6")
    assert code == 3 and "exceeds eval.diverge_loss=1000000.0" in err
    assert [_result(d)["status"] for d in run_dirs(runs_dir)] == ["completed", "diverged", "diverged"]


def test_a_loss_above_eval_diverge_loss_stops_the_run(capsys, tiny_experiment, runs_dir):
    code, _, err = run_cli(capsys, "run", tiny_experiment, "rounds=4", "eval.diverge_loss=0.01")
    assert code == 3 and "exceeds eval.diverge_loss=0.01" in err
    (run_dir,) = run_dirs(runs_dir)
    assert _result(run_dir)["diverged_at"] == 1 and len(metrics(run_dir)) == 1
    code, _, err = run_cli(capsys, "run", tiny_experiment, "eval.diverge_loss=0")
    assert code == 2 and "eval.diverge_loss=0" in err and "must be null (off) or > 0" in err


def test_a_healthy_run_is_completed_and_never_stopped(capsys, tiny_experiment, runs_dir):
    assert run_cli(capsys, "run", tiny_experiment, "eval.diverge_loss=100")[0] == 0
    (run_dir,) = run_dirs(runs_dir)
    assert _result(run_dir)["status"] == "completed" and len(metrics(run_dir)) == 3


def test_a_sweep_records_a_diverged_run_and_goes_on(capsys, tiny_experiment, runs_dir):
    code, out, _ = run_cli(capsys, "run", tiny_experiment, "--multirun", "client.lr=100,0.05", "model.name=mlp",
                           "client.local_epochs=3", "rounds=4")
    assert code == 0 and "diverged at round" in out
    (summary,) = runs_dir.rglob("summary.csv")
    rows = list(csv.DictReader(summary.open()))
    assert [r["status"] for r in rows] == ["diverged", "completed"]


def test_compare_reports_the_diverged_run_with_its_reason(capsys, tiny_experiment):
    code, out, _ = run_cli(capsys, "compare", tiny_experiment, "--algorithms", "fedavg,fedprox", "model.name=mlp",
                           "client.lr=100", "client.local_epochs=3", "rounds=4")
    assert code == 0
    table = [line for line in out.splitlines() if line.startswith("| fed")]
    assert len(table) == 2 and all("diverged (stopped at round" in line for line in table)


def test_the_executor_is_closed_after_a_run_and_after_a_failure(tiny_experiment, monkeypatch):
    from fedtorch.experiment.config import load_experiment, validate

    base, _ = load_experiment(tiny_experiment)
    closed = []

    def prepare_and_watch(cfg, tmp):
        prep = runner.prepare(validate(cfg))
        monkeypatch.setattr(prep.executor, "close", lambda: closed.append(True))
        return prep

    prep = prepare_and_watch(base, None)
    run_dir = runner.new_run_dir(prep.cfg, tiny_experiment)
    runner.execute(prep, run_dir)
    assert closed == [True]

    prep = prepare_and_watch(base, None)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep.executor, "run", boom)
    with pytest.raises(KeyboardInterrupt):
        runner.execute(prep, runner.new_run_dir(prep.cfg, tiny_experiment))
    assert closed == [True, True]
