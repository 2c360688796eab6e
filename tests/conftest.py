"""Shared fixtures: a tiny MNIST-format dataset written by the tests, and experiment folders."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedtorch.data.idx import write_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def make_tiny_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images in 10 classes: class k lights a 7x7 block at a
    class-specific place, plus noise (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 4)
        images[i, 7 * r : 7 * r + 7, 7 * c : 7 * c + 7] += 150
    return images, labels


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory) -> Path:
    """A directory of gzip IDX files: 600 training and 200 test images."""
    return write_tiny_idx(tmp_path_factory.mktemp("tiny_idx"))


def write_tiny_idx(root: Path, train_seed: int = 0, test_seed: int = 1) -> Path:
    """Write 600 training and 200 test tiny images as gzip IDX files into ``root``; return it."""
    for split, n, seed in (("train", 600, train_seed), ("t10k", 200, test_seed)):
        images, labels = make_tiny_images(n, seed)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def write_experiment(parent: Path, folder: str, config: dict) -> Path:
    path = parent / "experiments" / "Tiny" / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.py").write_text("CONFIG = " + repr(config) + "\n")
    return path


def tiny_config(root: Path, output_dir: Path, **overrides) -> dict:
    cfg = {
        "seed": 0,
        "rounds": 3,
        "output_dir": str(output_dir),
        "data": {"dataset": "fashion_mnist", "root": str(root), "partition": "dirichlet",
                 "num_clients": 10, "alpha": 0.5, "min_samples": 5, "seed": 0},
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg"},
        "client": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "federation": {"clients_per_round": 4},
        "logging": {"progress": "none"},
    }
    for key, value in overrides.items():
        section, _, sub = key.partition("__")
        if sub:
            cfg[section][sub] = value
        else:
            cfg[section] = value
    return cfg


@pytest.fixture
def tiny_experiment(tmp_path, tiny_idx_dir) -> Path:
    """An experiment folder ``A0d5C10`` on the tiny data: FedAvg, logreg, 3 rounds."""
    return write_experiment(tmp_path, "A0d5C10", tiny_config(tiny_idx_dir, tmp_path / "runs"))


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()


@pytest.fixture(autouse=True, scope="module")
def _algorithm_registry_per_module():
    """Plug-in algorithms a test module registers (an experiment's ``config.py`` loaded in
    this process) are dropped when the module ends, so that no later module sees them
    (``available: ...`` in error messages lists every registered name)."""
    from fedtorch.algorithms import registry

    saved = dict(registry._REGISTRY), dict(registry._ALIASES)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved[0])
    registry._ALIASES.clear()
    registry._ALIASES.update(saved[1])
