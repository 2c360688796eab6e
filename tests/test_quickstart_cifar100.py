"""The seed framework's quick start, experiments/CIFAR100/A0d01C100/ (issue 13, item 4):
``run.py`` runs the folder through the Python API, the algorithms of its ``COMMANDS`` in
turn; without the CIFAR-100 files it stops with the missing-data error."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parents[1] / "experiments" / "CIFAR100" / "A0d01C100"


def run_py(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FOLDER / "run.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def fake_cifar100(root: Path) -> Path:
    """CIFAR-100's python files with random images: 60 per class (the Dirichlet 0.01 split of
    100 clients with at least 10 samples each needs about that many)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 6000), ("test", 200)):
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": (np.arange(n) % 100).tolist()}, f)
    return root


def test_without_the_data_it_stops_with_the_missing_data_error(tmp_path):
    proc = run_py("rounds=1", f"data.root={tmp_path}", f"output_dir={tmp_path / 'runs'}", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cifar100:") and "cifar-100-python" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_runs_the_commands_in_turn(tmp_path):
    root = fake_cifar100(tmp_path / "data")
    proc = run_py("rounds=1", f"data.root={root}", "model.name=logreg", "client.local_epochs=1", "logging.progress=none",
                  f"output_dir={tmp_path / 'runs'}", "--algorithms", "fedavg,scaffold")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dirs = sorted((tmp_path / "runs" / "CIFAR100" / "A0d01C100").iterdir())
    assert [d.name.split("_")[0] for d in dirs] == ["fedavg", "scaffold"]
    for d in dirs:
        result = json.loads((d / "result.json").read_text())
        assert result["status"] == "completed"
        assert f"{result['final_test_accuracy']}" in proc.stdout
        config = (d / "config.yaml").read_text()
        assert "num_clients: 100" in config and "alpha: 0.01" in config and "name: logreg" in config


def test_an_unknown_algorithm_is_refused(tmp_path):
    proc = run_py("--algorithms", "fedavg,nosuch", timeout=120)
    assert proc.returncode == 2 and "nosuch" in proc.stderr and "fedavg" in proc.stderr
