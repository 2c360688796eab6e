"""MLflow (logging.mlflow=true) and Weights & Biases (logging.wandb=true) tracking, read back
with the trackers' own clients: params = the resolved config, per-round metric histories
equal to metrics.jsonl (step = round, or server version for async), artifacts, run status
(FINISHED / FAILED / KILLED), resume into the same MLflow run without doubled steps, a W&B
offline run's records, and a missing extra as a ConfigError naming the pip command (exit 2).
Nothing here reaches the network: MLflow stores are SQLite files in the run directory, W&B
runs are offline."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import time
import sys
from pathlib import Path

import pytest
import yaml

import fedtorch
from fedtorch.experiment.tracking import TRACKING_NAME, flat_params
from helpers import metrics, run_cli

try:
    from mlflow.tracking import MlflowClient
except ImportError:  # the tests that need it are skipped
    MlflowClient = None
needs_mlflow = pytest.mark.skipif(MlflowClient is None, reason="pip install 'fedtorch[mlflow]'")
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="pip install 'fedtorch[wandb]'")

ASYNC = ["federation.mode=async", "algorithm.name=fedasync", "federation.concurrency=3",
         "delays.model=uniform", "delays.max=2.0"]


def run_dirs(runs: Path) -> list[Path]:
    """The run directories under ``runs`` (by ``run.json``: the MLflow artifacts in
    ``<run_dir>/mlruns/artifacts`` hold copies of ``config.yaml``)."""
    return sorted(p.parent for p in runs.rglob("run.json"))


def mlflow_run(run_dir: Path):
    """The MLflow client and run recorded in ``run_dir/tracking.json``."""
    state = json.loads((run_dir / TRACKING_NAME).read_text())["mlflow"]
    assert state["uri"] == f"sqlite:///{run_dir.resolve() / 'mlruns' / 'mlflow.db'}"  # the default store
    client = MlflowClient(tracking_uri=state["uri"])
    return client, client.get_run(state["run_id"])


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def expected(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["round"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]


def flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@needs_mlflow
def test_mlflow_run_holds_the_config_every_rounds_numbers_and_the_artifacts(capsys, tiny_experiment, runs_dir,
                                                                            tmp_path):
    code, _, _ = run_cli(capsys, "run", tiny_experiment, "rounds=4", "eval.every=3", "client.lr=0.07",
                         "logging.mlflow=true")
    assert code == 0
    (run_dir,) = run_dirs(runs_dir)
    client, run = mlflow_run(run_dir)
    assert run.info.status == "FINISHED" and run.data.tags["fedtorch.status"] == "completed"
    assert run.info.run_name == run_dir.name
    assert client.get_experiment(run.info.experiment_id).name == "Tiny/A0d5C10"  # <DATASET>/<folder>
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run.info.run_id]

    params, config = run.data.params, flat(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert params["client.lr"] == "0.07" and params["rounds"] == "4" and params["algorithm.name"] == "fedavg"
    assert params.keys() == config.keys()
    assert {k: json_or_text(v) for k, v in params.items()} == config  # every value, as config.yaml has it

    rows = metrics(run_dir)
    acc = history(client, run.info.run_id, "test_accuracy")
    assert [step for step, _ in acc] == [3, 4]  # evaluated rounds only: every 3 rounds and the last
    assert acc == expected(rows, "test_accuracy")
    numeric = {k for r in rows for k, v in r.items() if k != "round" and isinstance(v, (int, float))}
    assert {"train_loss", "test_loss", "bytes_up", "bytes_down", "wall_seconds", "clients_aggregated"} <= numeric
    assert set(run.data.metrics) == numeric
    for key in numeric:
        assert history(client, run.info.run_id, key) == expected(rows, key), key

    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"config.yaml", "result.json", "metrics.csv", "model.pt",
                     "accuracy.png", "loss.png", "selected.png"}
    local = Path(client.download_artifacts(run.info.run_id, "result.json", str(tmp_path)))
    assert local.read_bytes() == (run_dir / "result.json").read_bytes()
    assert str(Path(run.info.artifact_uri.removeprefix("file://"))).startswith(str(run_dir.resolve()))


@needs_mlflow
def test_mlflow_async_run_logs_per_server_version_with_the_final_evaluation(capsys, tiny_experiment, runs_dir):
    # no evaluation on the way (eval.every=1000): the only test accuracy is the final one, filled
    # into the last metrics row after it was logged (stopped by max_seconds)
    code, _, _ = run_cli(capsys, "run", tiny_experiment, *ASYNC, "rounds=1000", "eval.every=1000",
                         "federation.max_seconds=4", "logging.mlflow=true")
    assert code == 0
    (run_dir,) = run_dirs(runs_dir)
    client, run = mlflow_run(run_dir)
    rows = metrics(run_dir)
    assert run.info.status == "FINISHED" and len(rows) > 2
    acc = history(client, run.info.run_id, "test_accuracy")
    assert acc == expected(rows, "test_accuracy") and [s for s, _ in acc] == [rows[-1]["round"]]
    for key in ("mean_staleness", "sim_seconds", "updates", "train_loss"):
        assert history(client, run.info.run_id, key) == expected(rows, key), key
    assert "async_progress.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


@needs_mlflow
def test_mlflow_resume_continues_the_same_run_without_doubled_steps(capsys, tiny_experiment, runs_dir):
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.runner import execute, new_run_dir, prepare

    base, folder = load_experiment(tiny_experiment)
    cfg = validate(apply_overrides(base, ["rounds=5", "logging.mlflow=true"]))
    run_dir = new_run_dir(cfg, folder)

    def crash(row):
        if row["round"] == 3:  # logged, not yet checkpointed: the resumed run redoes round 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(prepare(cfg), run_dir, on_row=crash)
    client, killed = mlflow_run(run_dir)
    assert killed.info.status == "KILLED"
    assert [s for s, _ in history(client, killed.info.run_id, "test_accuracy")] == [1, 2, 3]

    assert run_cli(capsys, "run", "--resume", run_dir)[0] == 0
    client, run = mlflow_run(run_dir)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    rows = metrics(run_dir)
    for key in ("test_accuracy", "test_loss", "train_loss", "bytes_up"):  # not the wall times: they differ
        assert history(client, run.info.run_id, key) == expected(rows, key), key
    assert [s for s, _ in history(client, run.info.run_id, "wall_seconds")] == [1, 2, 3, 4, 5]


@needs_mlflow
def test_mlflow_diverged_run_is_failed_without_a_model(capsys, tiny_experiment, runs_dir):
    code, _, _ = run_cli(capsys, "run", tiny_experiment, "eval.diverge_loss=1e-6", "logging.mlflow=true")
    assert code == 3
    (run_dir,) = run_dirs(runs_dir)
    client, run = mlflow_run(run_dir)
    assert run.info.status == "FAILED" and run.data.tags["fedtorch.status"] == "diverged"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "result.json" in names and "model.pt" not in names


@needs_mlflow
def test_mlflow_uri_and_experiment_keys(capsys, tiny_experiment, runs_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a store of the user's: MLflow puts artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    for seed in (0, 1):
        assert run_cli(capsys, "run", tiny_experiment, "rounds=1", f"seed={seed}", "logging.mlflow=true",
                       f"logging.mlflow_uri={uri}", "logging.mlflow_experiment=fl-study")[0] == 0
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fl-study").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert not any((d / "mlruns").exists() for d in run_dirs(runs_dir))
    assert all(r.info.artifact_uri.startswith(str(tmp_path / "mlruns")) for r in runs)

    code, _, err = run_cli(capsys, "run", tiny_experiment, "rounds=1", "logging.mlflow=true",
                           "logging.mlflow_uri=nosuchscheme://x")
    assert code == 2 and "logging.mlflow_uri='nosuchscheme://x': MLflow cannot use the store" in err


def test_long_param_values_are_cut_to_the_limit():
    params = flat_params({"a": {"b": "x" * 10_000, "c": None, "d": [1, 2]}, "e": True, "f": 0.05}, limit=100)
    assert params == {"a.b": "x" * 97 + "...", "a.c": "null", "a.d": "[1, 2]", "e": "true", "f": "0.05"}


# --- Weights & Biases -------------------------------------------------------------------


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file (W&B's LevelDB-style log: a 7-byte header
    ``:W&B``, magic, version; 32 KiB blocks of chunks with a 7-byte header crc, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            parts = chunk
        elif kind in (3, 4):  # middle, last
            parts += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def finished_records(path: Path, timeout: float = 60.0) -> list:
    """The records of a ``.wandb`` file once its ``exit`` record is there: W&B's service
    process writes the file itself, and under load it may still be writing when
    ``run.finish()`` has returned (seen once in the full suite on a loaded 2-core machine)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(path))
        except Exception:  # a record cut off mid-write
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def json_or_text(value: str):
    """A param as fedtorch logs it: JSON for non-strings (``1e-05``, ``null``, ``[..]``), else the string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def items(update) -> dict:
    """``{key: value}`` of a record's items (W&B writes a key as ``key`` or as ``nested_key``)."""
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in update}


@needs_wandb
def test_wandb_offline_run_has_the_config_history_and_summary(capsys, tiny_experiment, runs_dir, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    code, out, err = run_cli(capsys, "run", tiny_experiment, "rounds=3", "eval.every=2", "client.lr=0.07",
                             "logging.wandb=true")
    assert code == 0 and "done: 3 rounds" in out, err
    (run_dir,) = run_dirs(runs_dir)
    state = json.loads((run_dir / TRACKING_NAME).read_text())["wandb"]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")  # offline: nothing uploaded
    assert Path(state["dir"]) == offline and offline.name.endswith(state["id"])

    records = finished_records(offline / f"run-{state['id']}.wandb")
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = items(run.config.update)
    assert run.project == "Tiny-A0d5C10" and run.display_name == run_dir.name
    assert config["client"]["lr"] == 0.07 and config["rounds"] == 3
    steps = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            steps[r.history.step.num] = items(r.history.item)
    rows = metrics(run_dir)
    assert sorted(steps) == [1, 2, 3]
    for row in rows:
        assert {k: steps[row["round"]].get(k) for k in ("train_loss", "test_accuracy", "bytes_up")} == \
            {k: row[k] for k in ("train_loss", "test_accuracy", "bytes_up")}
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(items(r.summary.update))
    result = json.loads((run_dir / "result.json").read_text())
    assert summary["final_test_accuracy"] == result["final_test_accuracy"] == rows[-1]["test_accuracy"]
    assert summary["status"] == "completed"
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("key, module, pip", [
    ("logging.mlflow", "mlflow", "logging.mlflow=true needs MLflow: pip install 'fedtorch[mlflow]'"),
    ("logging.mlflow", "sqlalchemy", "logging.mlflow=true needs MLflow: pip install 'fedtorch[mlflow]'"),
    ("logging.wandb", "wandb", "logging.wandb=true needs Weights & Biases: pip install 'fedtorch[wandb]'"),
])
def test_a_missing_extra_is_a_config_error_before_the_run_starts(capsys, monkeypatch, tiny_experiment, runs_dir,
                                                                   key, module, pip):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(fedtorch.ConfigError) as e:
        fedtorch.run(tiny_experiment, **{key: True})
    assert pip in str(e.value)
    code, _, err = run_cli(capsys, "run", tiny_experiment, f"{key}=true")
    assert code == 2 and err.startswith(f"error: {pip}")
    assert not runs_dir.exists()  # refused before a run directory exists


@pytest.mark.parametrize("override, message", [
    ("logging.wandb_mode=cloud", "logging.wandb_mode: unknown value 'cloud'; allowed: offline, online"),
    ("logging.wandb_project=a/b", "logging.wandb_project='a/b' is not allowed: W&B project names cannot hold"),
    ("logging.mlflow_experiment=' '", "logging.mlflow_experiment=' ' is not allowed: must be null or a non-empty text"),
])
def test_bad_tracking_keys(capsys, tiny_experiment, override, message):
    code, _, err = run_cli(capsys, "run", tiny_experiment, override)
    assert code == 2 and message in err


def test_tracking_is_off_by_default(capsys, tiny_experiment, runs_dir):
    assert run_cli(capsys, "run", tiny_experiment, "rounds=1")[0] == 0
    (run_dir,) = run_dirs(runs_dir)
    assert not any((run_dir / name).exists() for name in (TRACKING_NAME, "mlruns", "wandb"))
    assert math.isfinite(metrics(run_dir)[-1]["test_accuracy"])


def test_run_help_explains_the_tracking_keys(capsys):
    from fedtorch.cli import main
    from fedtorch.experiment.config_keys import flat_defaults, key_meanings

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text, meanings = " ".join(capsys.readouterr().out.split()), key_meanings()
    keys = {k: v for k, v in flat_defaults() if k.startswith(("logging.mlflow", "logging.wandb"))}
    assert keys == {"logging.mlflow": False, "logging.mlflow_uri": None, "logging.mlflow_experiment": None,
                    "logging.wandb": False, "logging.wandb_mode": "offline", "logging.wandb_project": None}
    for key, default in keys.items():
        assert meanings[key] and " ".join(f"{key} = {default!r} {meanings[key]}".split()) in text, key
    assert "pip install 'fedtorch[mlflow]'" in meanings["logging.mlflow"]
    assert "pip install 'fedtorch[wandb]'" in meanings["logging.wandb"]
