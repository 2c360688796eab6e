"""The run directory, sweeps and TensorBoard output."""

import csv
import itertools
import json

import pytest
import torch
import yaml

from helpers import final_model, metrics, run_cli, run_dirs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_run_directory_contents(capsys, tiny_experiment, runs_dir):
    code, out, _ = run_cli(capsys, "run", tiny_experiment, "rounds=4", "eval.every=2", "logging.progress=plain", "data.seed=3", "seed=5")
    assert code == 0
    assert "round    4/4" in out and "s/round" in out and "test acc" in out
    (run_dir,) = run_dirs(runs_dir)
    assert run_dir.parent == runs_dir / "Tiny" / "A0d5C10"
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["seed"] == 5 and cfg["data"]["seed"] == 3 and cfg["rounds"] == 4
    rows = metrics(run_dir)
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert [r["test_accuracy"] is not None for r in rows] == [False, True, False, True]
    assert all(r["bytes_down"] == 4 * 7850 * 4 and r["bytes_up"] == 4 * 7850 * 4 for r in rows)
    with open(run_dir / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) [:7] == ["round", "train_loss", "test_loss", "test_accuracy", "wall_seconds", "elapsed_seconds", "bytes_down"]
    assert len(table) == 4
    with open(run_dir / "clients.csv") as f:
        clients = list(csv.DictReader(f))
    assert len(clients) == 16 and {c["round"] for c in clients} == {"1", "2", "3", "4"}
    for name in ("accuracy.png", "loss.png"):
        assert (run_dir / name).read_bytes()[:8] == PNG_MAGIC
    result = json.loads((run_dir / "result.json").read_text())
    assert result["final_test_accuracy"] == rows[-1]["test_accuracy"] and result["seed"] == 5 and result["data_seed"] == 3
    assert (run_dir / "checkpoint.pt").is_file()


def test_learns_on_tiny_data(capsys, tiny_experiment, runs_dir):
    assert run_cli(capsys, "run", tiny_experiment, "rounds=10", "model.name=mlp")[0] == 0
    (run_dir,) = run_dirs(runs_dir)
    rows = metrics(run_dir)
    assert rows[-1]["test_accuracy"] > 0.9 and rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]


def test_multirun_grid_and_summary(capsys, tiny_experiment, runs_dir, tmp_path):
    """Each grid point runs the configuration asked for, summary.csv holds each run's
    result.json, the points train different models (seed: sampling and minibatches, mu:
    the local objective), and a point run alone gives the same model as in the sweep."""
    grid = ["algorithm.name=fedprox", "algorithm.mu=0,0.5", "seed=0,1", "rounds=2"]
    code, out, _ = run_cli(capsys, "run", tiny_experiment, "--multirun", *grid)
    assert code == 0 and "[4/4]" in out
    (sweep,) = list(runs_dir.rglob("summary.csv"))
    with open(sweep) as f:
        rows = list(csv.DictReader(f))
    assert [(r["algorithm.mu"], r["seed"]) for r in rows] == [("0", "0"), ("0", "1"), ("0.5", "0"), ("0.5", "1")]
    assert len(run_dirs(runs_dir)) == 4
    models = {}
    for row in rows:
        run_dir = sweep.parent / row["run_dir"]
        mu, seed = float(row["algorithm.mu"]), int(row["seed"])
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert (cfg["algorithm"]["name"], cfg["algorithm"]["mu"], cfg["seed"], cfg["rounds"]) == ("fedprox", mu, seed, 2)
        result = json.loads((run_dir / "result.json").read_text())
        assert result["final_test_accuracy"] == metrics(run_dir)[-1]["test_accuracy"]
        shared = [k for k in result if k in row]
        assert {"final_test_accuracy", "final_train_loss", "seed"} <= set(shared)
        assert {k: row[k] for k in shared} == {k: "" if result[k] is None else str(result[k]) for k in shared}
        models[mu, seed] = final_model(run_dir)
    points = list(models)
    for a, b in itertools.combinations(points, 2):
        assert not torch.equal(models[a], models[b]), (a, b)
    assert run_cli(capsys, "run", tiny_experiment, *grid[:1], "algorithm.mu=0.5", "seed=1", "rounds=2", f"output_dir={tmp_path / 'alone'}")[0] == 0
    (alone,) = run_dirs(tmp_path / "alone")
    assert torch.equal(final_model(alone), models[0.5, 1])


def test_multirun_validates_every_point_before_running(capsys, tiny_experiment, runs_dir):
    code, _, err = run_cli(capsys, "run", tiny_experiment, "--multirun", "data.alpha=0.5,-1")
    assert code == 2 and "data.alpha=-1.0 is not allowed" in err
    assert run_dirs(runs_dir) == []


def test_tensorboard_event_files(capsys, tiny_experiment, runs_dir):
    """The event files hold, for every scalar tag, one value per round that has it, equal
    to that round's row in metrics.jsonl (rounds without a test evaluation have none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert run_cli(capsys, "run", tiny_experiment, "rounds=3", "eval.every=2", "logging.tensorboard=true")[0] == 0
    (run_dir,) = run_dirs(runs_dir)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train_loss", "test_loss", "test_accuracy", "wall_seconds"} <= set(tags)
    rows = metrics(run_dir)
    assert [r["test_loss"] is not None for r in rows] != [True] * 3  # some rounds are not evaluated
    for tag in tags:
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        want = [(r["round"], r[tag]) for r in rows if r.get(tag) is not None]
        assert [step for step, _ in logged] == [step for step, _ in want], tag
        assert [v for _, v in logged] == pytest.approx([v for _, v in want], rel=1e-6), tag  # stored as float32


def test_help_lists_keys_and_defaults(capsys):
    from fedtorch.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for line in ("data.alpha = 0.5", "client.lr = 0.05", "federation.clients_per_round = 10", "seed = 0"):
        assert line in out


def test_final_model_loads_into_a_plain_torch_model(capsys, tiny_experiment, runs_dir):
    """``model.pt`` is an ordinary state_dict (convolution weights back in the usual
    layout): loaded into the run's model it gives the run's final test accuracy."""
    import torch

    from fedtorch.data import load_split
    from fedtorch.models import build_model

    assert run_cli(capsys, "run", tiny_experiment, "rounds=2", "model.name=cnn", "client.lr=0.05")[0] == 0
    (run_dir,) = run_dirs(runs_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    state = torch.load(run_dir / "model.pt", weights_only=True)
    model = build_model("cnn", (1, 28, 28), 10)
    model.load_state_dict(state)
    assert all(t.is_contiguous() for t in state.values())
    ds, _ = load_split(cfg["data"])
    with torch.no_grad():
        accuracy = (model(ds.test_x).argmax(1) == ds.test_y).float().mean().item()
    result = json.loads((run_dir / "result.json").read_text())
    assert abs(accuracy - result["final_test_accuracy"]) < 1e-6


def test_sweep_folder_names_keep_the_value_of_dotted_keys():
    from fedtorch.experiment.sweep import _slug

    assert _slug(["algorithm.name=fedprox", "algorithm.mu=0.5", "seed=1"]) == "name=fedprox_mu=0.5_seed=1"
