"""Edge cases of runs, data and set-up: sweeps with differing result keys, --resume and interrupt messages, no
directories left by a failed compare, unique run folders, MNIST's own data folder, float32
LIBSVM loading, atomic script outputs, setup.sh's torch index, docstrings."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_images, tiny_config, write_experiment
from data_files import libsvm_text
from fedtorch.data.datasets import load_dataset
from fedtorch.data.idx import DataFileError, write_idx
from fedtorch.experiment import paths
from fedtorch.experiment.config import apply_overrides, load_experiment, validate
from fedtorch.experiment.errors import ConfigError
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
ASYNC = ["federation.mode=async", "algorithm.name=fedasync", "rounds=4", "federation.concurrency=3", "eval.every=2"]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- 1. sweep summary columns


def test_multirun_whose_results_have_different_keys(capsys, tiny_experiment, runs_dir):
    """eval.clients_every=0 gives no client_acc_* keys, =2 does: the summary has the union."""
    code, _, err = run_cli(capsys, "run", tiny_experiment, "--multirun", "eval.clients_every=0,2", "rounds=2")
    assert code == 0, err
    (summary,) = runs_dir.rglob("summary.csv")
    with summary.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert len(rows) == 2 and "client_acc_mean" in reader.fieldnames
    assert reader.fieldnames[:2] == ["run_dir", "eval.clients_every"]  # order of first appearance
    assert rows[0]["client_acc_mean"] == "" and float(rows[1]["client_acc_mean"]) >= 0


# ---------------------------------------------------------------- 2, 3. --resume and interrupts


def test_resume_without_checkpoint_is_one_error_line(capsys, tiny_experiment, runs_dir, monkeypatch):
    from fedtorch.experiment import runner

    cfg = validate(load_experiment(tiny_experiment)[0])
    run_dir = runner.new_run_dir(cfg, tiny_experiment)  # config.yaml only, as if killed before round 1 ended
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    assert code == 2 and "has no checkpoint.pt" in _one_error_line(err)
    # the runner itself turns the missing checkpoint into a config error too
    with pytest.raises(ConfigError, match="has no checkpoint.pt"):
        runner.execute(runner.prepare(cfg), run_dir, resume=True)


def test_resume_of_an_async_run_is_refused_before_loading_data(capsys, tiny_experiment, monkeypatch):
    from fedtorch.experiment import runner

    cfg = validate(apply_overrides(load_experiment(tiny_experiment)[0], [*ASYNC, "federation.clock=asyncio"]))
    run_dir = runner.new_run_dir(cfg, tiny_experiment)

    def no_prepare(cfg):
        raise AssertionError("prepare() called for a run that cannot be resumed")

    monkeypatch.setattr(runner, "prepare", no_prepare)
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    assert code == 2 and "federation.clock=asyncio or wall cannot be resumed" in _one_error_line(err)


@pytest.mark.parametrize("mode", ["sync", "async", "asyncio"])
def test_interrupt_hint_matches_the_mode(capsys, tiny_experiment, monkeypatch, mode):
    from fedtorch.experiment import runner

    def interrupted(prep, run_dir, resume=False, on_row=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "execute", interrupted)
    extra = {"sync": [], "async": ASYNC, "asyncio": [*ASYNC, "federation.clock=asyncio"]}[mode]
    code, _, err = run_cli(capsys, "run", tiny_experiment, *extra)
    assert code == 130
    if mode == "asyncio":
        assert "cannot be resumed" in err and "--resume" not in err
    else:
        assert "continue with: fedtorch run --resume" in err


# ---------------------------------------------------------------- 4, 11. compare


def test_compare_with_missing_data_leaves_no_directory(capsys, tmp_path):
    runs = tmp_path / "runs"
    folder = write_experiment(tmp_path, "A0d5C10", tiny_config(tmp_path / "nothing-here", runs))
    code, _, err = run_cli(capsys, "compare", folder, "--algorithms", "fedavg,fedprox")
    assert code == 2 and "no train-images-idx3-ubyte" in _one_error_line(err)
    assert not runs.exists() or list(runs.rglob("*")) == []


def test_compare_header_uses_participation_and_the_partitions_own_settings(capsys, tiny_experiment, runs_dir):
    code, _, _ = run_cli(capsys, "compare", tiny_experiment, "--algorithms", "fedavg", "rounds=1",
                         "federation.participation=0.5", "data.partition=iid")
    assert code == 0
    (md,) = runs_dir.rglob("comparison.md")
    head = md.read_text().splitlines()[0]
    assert "5 per round" in head and "alpha" not in head and "iid," in head, head
    code, _, _ = run_cli(capsys, "compare", tiny_experiment, "--algorithms", "fedavg", "rounds=1")
    head = sorted(runs_dir.rglob("comparison.md"))[-1].read_text().splitlines()[0]
    assert "dirichlet alpha 0.5," in head and "4 per round" in head, head


# ---------------------------------------------------------------- 6. unique folders


def same_second(monkeypatch):
    """Every folder-naming timestamp frozen at one second."""
    from fedtorch.experiment import compare, run_dirs, sweep

    for module in (paths, run_dirs, compare, sweep):
        monkeypatch.setattr(module, "timestamp", lambda: "20260101-000000")


def test_run_folders_started_in_the_same_second_do_not_collide(tiny_experiment, monkeypatch):
    from fedtorch.experiment import runner

    same_second(monkeypatch)
    cfg = validate(load_experiment(tiny_experiment)[0])
    a, b = runner.new_run_dir(cfg, tiny_experiment), runner.new_run_dir(cfg, tiny_experiment)
    assert a != b and b.name == a.name + "-1"


@pytest.mark.slow  # 4 CLI runs; the naming rule is covered by the test above and the threads one below
def test_compare_and_sweep_folders_started_in_the_same_second_do_not_collide(capsys, tiny_experiment, runs_dir, monkeypatch):
    from fedtorch.experiment import runner

    same_second(monkeypatch)
    a = runner.new_run_dir(validate(load_experiment(tiny_experiment)[0]), tiny_experiment)
    for _ in range(2):
        assert run_cli(capsys, "compare", tiny_experiment, "--algorithms", "fedavg", "rounds=1")[0] == 0
        assert run_cli(capsys, "run", tiny_experiment, "--multirun", "rounds=1")[0] == 0
    names = sorted(p.name for p in a.parent.iterdir())
    assert {"compare_20260101-000000", "compare_20260101-000000-1",
            "multirun_20260101-000000", "multirun_20260101-000000-1"} <= set(names), names


def test_make_unique_dir_from_many_threads(tmp_path):
    made, barrier = [], threading.Barrier(8)

    def make():
        barrier.wait()
        made.append(paths.make_unique_dir(tmp_path / "p", "run"))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all(p.is_dir() for p in made)


# ---------------------------------------------------------------- 5. MNIST's own folder


def _write_idx_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    for split, n, seed in (("train", 30, 0), ("t10k", 10, 1)):
        images, labels = make_tiny_images(n, seed)
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root


def test_mnist_never_falls_back_to_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDTORCH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataFileError, match=r"mnist: no train-images-idx3-ubyte\[\.gz\] in data/mnist") as e:
        load_dataset("mnist")
    assert "fashion" not in str(e.value).lower()
    _write_idx_dir(tmp_path / "data" / "mnist")
    assert len(load_dataset("mnist").train_y) == 30


def test_data_dir_env_as_parent_folder_for_idx_sets(tmp_path, monkeypatch, tiny_idx_dir):
    _write_idx_dir(tmp_path / "mnist")
    monkeypatch.setenv("FEDTORCH_DATA_DIR", str(tmp_path))  # <dir>/mnist, as for every dataset
    assert len(load_dataset("mnist").train_y) == 30
    with pytest.raises(DataFileError, match="fashion_mnist: no train-images"):  # no <dir>/fashion_mnist: <dir> itself
        load_dataset("fashion_mnist")
    monkeypatch.setenv("FEDTORCH_DATA_DIR", str(tiny_idx_dir))  # the IDX folder itself (unchanged meaning)
    assert len(load_dataset("fashion_mnist").train_y) == 600


# ---------------------------------------------------------------- 8. LIBSVM in float32


def test_libsvm_loads_in_float32_without_a_float64_copy(tmp_path):
    n, d = 1500, 4000  # dense float32: 24 MB (train + test); float64 alone would be 48 MB
    rng = np.random.default_rng(0)
    rows = [{int(j): 1.0 for j in np.sort(rng.choice(d - 1, 3, replace=False)) + 1} | {d: 0.5} for _ in range(n)]
    (tmp_path / "rcv1_train.binary").write_text(libsvm_text([1 if i % 2 else -1 for i in range(n)], rows))
    import sklearn.datasets  # noqa: F401 - imported before measuring: only the loading counts

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ds = load_dataset("rcv1", str(tmp_path))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    dense = 4 * n * d
    assert ds.train_x.shape[1] == d and len(ds.train_y) + len(ds.test_y) == n
    assert str(ds.train_x.dtype) == "torch.float32"
    assert peak < 1.5 * dense, f"peak {peak / 1e6:.0f} MB for {dense / 1e6:.0f} MB of float32 features"
    assert float(ds.train_x.mean(0).abs().max()) < 1e-4  # still standardised


# ---------------------------------------------------------------- 7. script outputs


def test_fedprox_stragglers_script_writes_atomically(tmp_path, tiny_idx_dir, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("fedprox_stragglers", ROOT / "scripts" / "fedprox_stragglers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    folder = write_experiment(tmp_path, "tiny", tiny_config(tiny_idx_dir, tmp_path / "runs"))
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    monkeypatch.setattr(mod, "EXPERIMENT", folder)
    written = []

    def spy_write_text(path, text):
        written.append(Path(path).name)
        return real_write_text(path, text)

    def spy_save_figure(fig, path):  # fedtorch.experiment.plots.save_figure: atomic PNG
        written.append(Path(path).name)
        return real_save_figure(fig, path)

    real_write_text, real_save_figure = mod.write_text, mod.save_figure
    monkeypatch.setattr(mod, "write_text", spy_write_text)
    monkeypatch.setattr(mod, "save_figure", spy_save_figure)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["fedprox_stragglers.py", "--rounds", "1", "--eval-every", "1", "--out", str(out)])
    threads = torch.get_num_threads()
    try:
        mod.main()
    finally:
        torch.set_num_threads(threads)  # the script sets 1 for the whole process; later tests run with the default
    assert sorted(written) == ["fedprox_stragglers.csv", "fedprox_stragglers.json", "fedprox_stragglers.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(written)  # no temporary files left
    assert "fedprox_mu1_beats_fedavg_at_90" in json.loads((out / "fedprox_stragglers.json").read_text())


# ---------------------------------------------------------------- 10. compare experiment


def test_compare_experiment_checkpoints_only_at_the_end():
    cfg = validate(load_experiment(ROOT / "experiments" / "FashionMNIST" / "compare_A0d1C100")[0])
    assert cfg.checkpoint.every == cfg.rounds


# ---------------------------------------------------------------- 12. setup.sh


def _fake_checkout(tmp_path: Path) -> tuple[Path, Path, dict]:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "setup.sh").write_bytes((ROOT / "scripts" / "setup.sh").read_bytes())
    (repo / "scripts" / "setup.sh").chmod(0o755)
    (repo / "pyproject.toml").write_text("")
    log = tmp_path / "log"
    bin_ = repo / ".venv" / "bin"
    bin_.mkdir(parents=True)
    # python: "import torch" fails (not installed yet), every other import succeeds
    (bin_ / "python").write_text(f'#!/bin/sh\necho "python $*" >> {log}\ncase "$2" in "import torch") exit 1;; esac\nexit 0\n')
    (bin_ / "pip").write_text(f'#!/bin/sh\necho "pip $*" >> {log}\n')
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "dpkg").write_text("#!/bin/sh\nexit 0\n")  # dataset-fashion-mnist "installed"
    for p in (bin_ / "python", bin_ / "pip", stubs / "dpkg"):
        p.chmod(0o755)
    os.utime(repo / "pyproject.toml", (1, 1))
    (repo / ".venv" / ".fedtorch-installed").touch()
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    env.pop("FEDTORCH_TORCH_INDEX_URL", None)
    return repo, log, env


@pytest.mark.parametrize("index", [None, "https://download.pytorch.org/whl/cpu"])
def test_setup_sh_torch_index(tmp_path, index):
    repo, log, env = _fake_checkout(tmp_path)
    if index:
        env["FEDTORCH_TORCH_INDEX_URL"] = index
    proc = subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    pip = [line for line in log.read_text().splitlines() if line.startswith("pip ")]
    assert len(pip) == 1 and pip[0].endswith("torch==2.13.0")
    if index:
        assert f"--index-url {index}" in pip[0] and index in proc.stdout
    else:
        assert "--index-url" not in pip[0] and "FEDTORCH_TORCH_INDEX_URL" in proc.stdout
    check = [line for line in log.read_text().splitlines() if "import fedtorch" in line]
    assert check and "sklearn" in check[0] and "yaml" in check[0]


# ---------------------------------------------------------------- 13. docstrings


def test_public_items_have_docstrings():
    from fedtorch.data.partition.common import check_positive
    from fedtorch.experiment import compare
    from fedtorch.experiment.async_outputs import AsyncRecorder, plot_async
    from fedtorch.experiment.async_run import async_settings
    from fedtorch.experiment.schema import DelaysConfig, StragglersConfig
    from fedtorch.models.lstm import CharLSTM
    from fedtorch.models.resnet import BasicBlock, ResNet18

    items = [check_positive, DelaysConfig, StragglersConfig, AsyncRecorder.flush, AsyncRecorder.close,
             AsyncRecorder.record, plot_async, CharLSTM.forward, BasicBlock.forward, ResNet18.forward,
             compare.run_comparison, compare.summarize_run, compare.write_report, async_settings]
    missing = [i.__qualname__ for i in items if not (i.__doc__ or "").strip() or i.__doc__.startswith(i.__name__ + "(")]
    assert missing == []
    for item in (check_positive, plot_async, compare.run_comparison, AsyncRecorder.flush):
        assert "Raises:" in item.__doc__, item.__qualname__
