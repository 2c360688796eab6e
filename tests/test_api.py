"""The Python API (``fedtorch.run`` / ``fedtorch.resume``): the same metrics and a bit-identical
model as ``fedtorch run`` for the same config; config dicts; overrides as Python values;
``ConfigError`` with the CLI's message; resume; ``--version``; every key's meaning in
``--help``; and the examples of docs/api.md, executed."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fedtorch
from fedtorch import api
from fedtorch.cli import main
from fedtorch.experiment.config_keys import flat_defaults, key_meanings
from fedtorch.experiment.progress import RoundProgress
from helpers import final_model, metrics, run_cli, run_dirs

from conftest import tiny_config, write_experiment

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"
SCHEMA = Path(__file__).resolve().parents[1] / "src" / "fedtorch" / "experiment" / "schema.py"

# unequal n_i (Dirichlet 0.5), M=4 of N=10 per round, minibatch noise, momentum
OVERRIDES = {"rounds": 4, "client.lr": 0.1, "client.momentum": 0.5, "client.batch_size": 8}
CLI_OVERRIDES = ["rounds=4", "client.lr=0.1", "client.momentum=0.5", "client.batch_size=8"]


def strip_times(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_seconds", "elapsed_seconds")} for r in rows]


def assert_same_model(result: fedtorch.RunResult, cli_dir: Path) -> None:
    """``result``'s model and checkpoint are bit-identical to the CLI run's in ``cli_dir``."""
    state, reference = result.model.state_dict(), torch.load(cli_dir / "model.pt", weights_only=True)
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert torch.equal(final_model(result.run_dir), final_model(cli_dir))


def test_api_and_cli_give_the_same_metrics_and_a_bit_identical_model(capsys, tiny_idx_dir, tmp_path):
    runs_dir = tmp_path / "runs"
    folder = write_experiment(tmp_path, "A0d5C10", tiny_config(tiny_idx_dir, runs_dir, logging={"progress": "auto"}))
    code, out, _ = run_cli(capsys, "run", folder, *CLI_OVERRIDES)
    assert code == 0 and "round    4/4  train loss" in out  # auto off a terminal: plain lines
    (cli_dir,) = run_dirs(runs_dir)
    result = fedtorch.run(str(folder), **OVERRIDES)
    assert capsys.readouterr().out == ""  # the API prints nothing (progress auto -> none)
    assert result.status == "completed" and result.run_dir.parent == cli_dir.parent  # runs/Tiny/A0d5C10/
    assert [m["round"] for m in result.metrics] == [1, 2, 3, 4]
    assert strip_times(result.metrics) == strip_times(metrics(cli_dir))
    assert result.metrics == metrics(result.run_dir)
    assert_same_model(result, cli_dir)
    cli_config = yaml.safe_load((cli_dir / "config.yaml").read_text())
    assert cli_config["logging"]["progress"] == "auto" and result.config["logging"]["progress"] == "none"
    cli_config["logging"]["progress"] = "none"
    assert result.config == cli_config
    assert result.result["final_test_accuracy"] == result.metrics[-1]["test_accuracy"]


def test_a_config_dict_runs_like_its_experiment_folder(capsys, tiny_idx_dir, tmp_path):
    raw = tiny_config(tiny_idx_dir, tmp_path / "folder_runs")
    folder = write_experiment(tmp_path, "A0d5C10", raw)
    assert run_cli(capsys, "run", folder, *CLI_OVERRIDES)[0] == 0
    (cli_dir,) = run_dirs(tmp_path / "folder_runs")
    result = fedtorch.run(raw, output_dir=tmp_path / "dict_runs", **OVERRIDES)
    assert result.run_dir.parent == tmp_path / "dict_runs"  # no <DATASET>/<folder> part
    assert strip_times(result.metrics) == strip_times(metrics(cli_dir))
    assert_same_model(result, cli_dir)


def test_dataframe_or_a_clear_import_error(tiny_experiment, monkeypatch):
    result = fedtorch.run(tiny_experiment, rounds=2)
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass
    else:
        df = result.df
        assert list(df["round"]) == [1, 2] and list(df["test_accuracy"]) == [m["test_accuracy"] for m in result.metrics]
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install pandas"):
        result.dataframe()


# (key, Python value, the command line's text for it); the base config sets each key to another value
PYTHON_VALUES = [
    ("rounds", 2, "2"),
    ("client.lr", 1e-3, "0.001"),
    ("client.local_steps", 3, "3"),
    ("logging.tensorboard", True, "true"),
    ("data.max_train_samples", None, "null"),
    ("execution.devices", ["cpu/0", "cpu/1"], "[cpu/0, cpu/1]"),
    ("execution.devices", ("cpu/0",), "[cpu/0]"),
    ("output_dir", "0.5", "'0.5'"),
    ("data.root", Path("/data/x"), "/data/x"),
    ("algorithm.mu", 0.5, "0.5"),
]


@pytest.mark.parametrize(("key", "value", "text"), PYTHON_VALUES, ids=[f"{k}={t}" for k, _, t in PYTHON_VALUES])
def test_python_values_override_as_the_cli_strings(tiny_idx_dir, tmp_path, key, value, text):
    from omegaconf import OmegaConf

    raw = tiny_config(tiny_idx_dir, tmp_path / "runs", algorithm={"name": "fedprox"}, logging={"progress": "none"})
    raw["data"]["max_train_samples"] = 300
    folder = write_experiment(tmp_path, "A0d5C10", raw)
    from_api, _ = api.configure(folder, [api.override_text(key, value)])
    from_cli, _ = api.configure(folder, [f"{key}={text}"], quiet=False)
    expected = list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
    got = OmegaConf.select(from_api, key)
    assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == expected
    assert type(got) is type(OmegaConf.select(from_cli, key))
    assert OmegaConf.to_container(from_api) == OmegaConf.to_container(from_cli)


BAD = [
    ({"client.lr": -1}, "client.lr=-1"),
    ({"client.nope": 1}, "client.nope=1"),
    ({"rounds": "abc"}, "rounds=abc"),
    ({"algorithm.name": "nosuch"}, "algorithm.name=nosuch"),
    ({"data.alpha": "0.1,0.2"}, "data.alpha=0.1,0.2"),
]


@pytest.mark.parametrize(("python", "text"), BAD, ids=[t for _, t in BAD])
def test_bad_input_raises_config_error_with_the_cli_message(capsys, tiny_experiment, runs_dir, python, text):
    code, _, err = run_cli(capsys, "run", tiny_experiment, text)
    assert code == 2
    with pytest.raises(fedtorch.ConfigError) as e:
        fedtorch.run(tiny_experiment, **python)
    assert err == f"error: {e.value}\n"
    assert not runs_dir.exists()  # nothing created before the config is checked


def test_a_missing_folder_and_a_value_of_another_type(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", tmp_path / "nope")
    with pytest.raises(fedtorch.ConfigError) as e:
        fedtorch.run(tmp_path / "nope")
    assert code == 2 and err == f"error: {e.value}\n"
    with pytest.raises(fedtorch.ConfigError, match=r"client\.lr: value .* of type object cannot be set"):
        fedtorch.run(tmp_path / "nope", **{"client.lr": object()})


def test_resume_through_the_api_after_an_interruption_is_bit_identical(capsys, tiny_experiment, runs_dir, monkeypatch):
    assert run_cli(capsys, "run", tiny_experiment, *CLI_OVERRIDES)[0] == 0
    (reference,) = run_dirs(runs_dir)
    update = RoundProgress.update

    def interrupt_at_round_3(self, row):
        update(self, row)
        if row["round"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(RoundProgress, "update", interrupt_at_round_3)
    with pytest.raises(KeyboardInterrupt) as e:
        fedtorch.run(tiny_experiment, **OVERRIDES)
    monkeypatch.undo()
    (run_dir,) = [d for d in run_dirs(runs_dir) if d != reference]
    assert f"fedtorch.resume({str(run_dir)!r})" in " ".join(e.value.__notes__)
    assert not (run_dir / "result.json").exists() and [m["round"] for m in metrics(run_dir)] == [1, 2, 3]
    trained = []
    monkeypatch.setattr(RoundProgress, "update", lambda self, row: trained.append(row["round"]))
    resumed = fedtorch.resume(run_dir)
    assert trained == [3, 4]  # from round 2's checkpoint (the interrupt came before round 3's), not from scratch
    assert resumed.run_dir == run_dir and [m["round"] for m in resumed.metrics] == [1, 2, 3, 4]
    assert strip_times(resumed.metrics) == strip_times(metrics(reference))
    assert_same_model(resumed, reference)
    again = fedtorch.resume(run_dir)  # finished: read back, not trained again
    assert trained == [3, 4] and again.metrics == resumed.metrics and again.result == resumed.result


def test_a_diverged_run_is_returned_with_the_last_good_model(tiny_experiment):
    result = fedtorch.run(tiny_experiment, rounds=8, **{"model.name": "mlp", "client.lr": 10})  # NaN in round 2
    assert result.status == "diverged" and not (result.run_dir / "model.pt").exists()
    assert result.result["diverged_at"] > 1  # so a checkpoint of a good round exists
    params = torch.cat([p.detach().reshape(-1) for p in result.model.parameters()])  # mlp: no conv, flat order
    assert torch.isfinite(params).all() and torch.equal(params, final_model(result.run_dir))


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"fedtorch {importlib.metadata.version('fedtorch')}\n"


def test_run_help_gives_every_key_its_meaning_from_the_schema(capsys):
    meanings = key_meanings()
    schema_lines = SCHEMA.read_text().splitlines()
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for key, default in flat_defaults():
        meaning = meanings[key]
        assert meaning, f"{key} has no meaning: add a `# ...` comment beside it in schema.py"
        field = key.rsplit(".", 1)[-1]
        assert any(line.strip().startswith(f"{field}:") and line.rstrip().endswith(f"# {meaning}") for line in schema_lines), key
        assert " ".join(f"{key} = {default!r} {meaning}".split()) in help_text, key


def _doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_the_examples_of_docs_api_md_run(tiny_idx_dir, tmp_path, monkeypatch, capsys):
    """The page's blocks run in order in one namespace, in a folder holding
    ``experiments/FashionMNIST/A0d5C100`` (the tiny data, 100 clients, IID) and
    ``data/fashion-mnist`` (the tiny data's files)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "fashion-mnist").symlink_to(tiny_idx_dir)
    raw = tiny_config("data/fashion-mnist", "runs", data={
        "dataset": "fashion_mnist", "root": "data/fashion-mnist", "partition": "iid", "num_clients": 100, "alpha": 0.5,
    })
    raw["logging"] = {"progress": "auto"}  # the API's default turns it into none
    path = tmp_path / "experiments" / "FashionMNIST" / "A0d5C100"
    path.mkdir(parents=True)
    (path / "config.py").write_text(f"CONFIG = {raw!r}\n")
    blocks = _doc_blocks()
    assert len(blocks) >= 6
    namespace: dict = {}
    for block in blocks:
        if "needs pandas" in block and importlib.util.find_spec("pandas") is None:
            with pytest.raises(ImportError, match="pip install pandas"):
                exec(compile(block, str(DOCS), "exec"), namespace)
            continue
        exec(compile(block, str(DOCS), "exec"), namespace)
    out = capsys.readouterr().out
    assert "completed runs/FashionMNIST/A0d5C100/fedavg_seed0_" in out
    assert "client.lr=-1.0 is not allowed: must be > 0" in out
    assert sorted(p.parent.relative_to(tmp_path).parts[:2] for p in tmp_path.rglob("result.json")) == [
        ("runs", "FashionMNIST"), ("runs", "FashionMNIST"), ("runs", "api")]
