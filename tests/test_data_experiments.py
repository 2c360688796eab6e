"""`fedtorch run` trains FedAvg on every data-suite experiment folder (tiny settings), on
LEAF Shakespeare with the char-LSTM, and through the config checks of the data keys."""

import math
from pathlib import Path

import pytest

from fedtorch.data.leaf import SHAKESPEARE_LETTERS

from data_files import write_leaf
from helpers import metrics, run_cli, run_dirs

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
FAST = ["rounds=2", "eval.every=1", "logging.progress=none", "client.local_epochs=1"]


def tiny_fashion(root):
    """Overrides that put a FashionMNIST folder on the tiny IDX files (600 images)."""
    return [f"data.root={root}", "model.name=logreg", "federation.clients_per_round=3"]


CASES = {
    "FashionMNIST/A0d1C100": lambda root: tiny_fashion(root) + ["data.num_clients=10", "data.min_samples=5"],
    "FashionMNIST/A100d0C100": lambda root: tiny_fashion(root) + ["data.num_clients=10", "data.min_samples=5"],
    "FashionMNIST/powerlaw_k2_C1000": lambda root: tiny_fashion(root) + ["data.num_clients=20", "client.batch_size=32"],
    "Synthetic/alpha1_beta1_C30": lambda root: ["federation.clients_per_round=3"],
    "BreastCancer/A0d5C10": lambda root: [],
}


@pytest.mark.parametrize("folder", sorted(CASES))
def test_fedavg_runs_on_experiment_folder(capsys, tmp_path, tiny_idx_dir, folder):
    overrides = [f"output_dir={tmp_path}", *FAST, *CASES[folder](tiny_idx_dir)]
    code, out, err = run_cli(capsys, "run", EXPERIMENTS / folder, *overrides)
    assert code == 0, err
    (run_dir,) = run_dirs(tmp_path)
    rows = metrics(run_dir)
    assert [r["round"] for r in rows] == [1, 2] and all(r["test_accuracy"] is not None for r in rows)
    assert (run_dir / "result.json").is_file()


def test_breast_cancer_folder_learns(capsys, tmp_path):
    assert run_cli(capsys, "run", EXPERIMENTS / "BreastCancer/A0d5C10", f"output_dir={tmp_path}", "rounds=10",
                   "eval.every=10", "logging.progress=none")[0] == 0
    (run_dir,) = run_dirs(tmp_path)
    assert metrics(run_dir)[-1]["test_accuracy"] >= 0.9


def test_partition_of_the_power_law_folder_at_full_scale(capsys, tmp_path, tiny_idx_dir):
    code, printed, _ = run_cli(capsys, "partition", EXPERIMENTS / "FashionMNIST/powerlaw_k2_C1000", f"data.root={tiny_idx_dir}",
                               "data.num_clients=50", "--out", tmp_path)
    assert code == 0 and "50 clients, 600 samples assigned" in printed and "classes per client: mean 2.00" in printed


def cyclic_users(sizes: dict[str, int], offset: int, length: int = 20, cycle: str = "abcdefgh") -> dict:
    """LEAF Shakespeare users whose lines are windows of ``cycle`` repeated: only
    len(cycle) of the 80 letters ever occur, and the next character follows from the last."""
    text = cycle * (length // len(cycle) + 2)
    users = {}
    for u, n in sizes.items():
        starts = [(offset + 3 * j + len(users)) % len(cycle) for j in range(n)]
        users[u] = ([text[s:s + length] for s in starts], [text[s + length] for s in starts])
    return users


def test_shakespeare_char_lstm_on_leaf_users(capsys, tmp_path):
    """The char-LSTM learns from LEAF users: an untrained model is at about log(80) nats
    (80 letters), and a few rounds of FedAvg bring the loss on the test user, and the
    training loss, clearly down (towards log(8): 8 letters occur)."""
    write_leaf(tmp_path / "leaf", cyclic_users({f"ROLE{i}": 6 + i for i in range(4)}, 0), "train")
    write_leaf(tmp_path / "leaf", cyclic_users({"ROLE0": 5}, 1), "test")
    cfg = (f"CONFIG = {{'rounds': 4, 'output_dir': {str(tmp_path / 'runs')!r}, "
           f"'data': {{'dataset': 'shakespeare', 'root': {str(tmp_path / 'leaf')!r}, 'partition': 'natural', 'num_clients': 4}}, "
           "'model': {'name': 'char_lstm'}, 'client': {'local_steps': 4, 'batch_size': 4, 'lr': 0.5}, "
           "'federation': {'clients_per_round': 2}, 'logging': {'progress': 'none'}}\n")
    folder = tmp_path / "experiments" / "Shakespeare" / "natural_C4"
    folder.mkdir(parents=True)
    (folder / "config.py").write_text(cfg)
    code, _, err = run_cli(capsys, "run", folder)
    assert code == 0, err
    rows = metrics(run_dirs(tmp_path / "runs")[0])
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    chance = math.log(len(SHAKESPEARE_LETTERS))  # 4.38 nats
    assert rows[0]["train_loss"] > chance - 0.5  # round 1 starts near chance ...
    assert rows[-1]["train_loss"] < 0.75 * rows[0]["train_loss"]  # ... and training lowers it
    assert rows[-1]["test_loss"] < chance - 1.5


def test_noise_partition_trains(capsys, tiny_experiment, runs_dir):
    code, _, err = run_cli(capsys, "run", tiny_experiment, "data.partition=noise", "data.noise_sigma=0.5", "rounds=2")
    assert code == 0, err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.partition=natural"], "data.partition='natural' is not allowed: dataset 'fashion_mnist' has no users of its own; "
                                     "natural needs one of femnist, shakespeare, synthetic"),
        (["data.partition=nope"], "data.partition: unknown value 'nope'; allowed: client-inner-dir, dirichlet, fcube"),
        (["data.beta=0"], "data.beta=0.0 is not allowed: Dirichlet beta must be > 0"),
        (["data.size_sigma=-1"], "data.size_sigma=-1.0 is not allowed: must be >= 0"),
        (["data.classes_per_client=0"], "data.classes_per_client=0 is not allowed: must be >= 1"),
        (["data.partition=fcube"], "partition=fcube needs 3-D points (data.dataset=fcube)"),
        (["data.dataset=femnist", f"data.root={EXPERIMENTS}"], "femnist: no LEAF JSON files in"),
    ],
)
def test_bad_data_settings(capsys, tiny_experiment, runs_dir, overrides, message):
    code, _, err = run_cli(capsys, "run", tiny_experiment, *overrides)
    assert code == 2 and message in err, err
    assert run_dirs(runs_dir) == []


def test_readme_lists_every_dataset_and_partitioner():
    from fedtorch.data import DATASETS, PARTITIONERS

    readme = (EXPERIMENTS.parent / "README.md").read_text()
    data_section = readme[readme.index("## Data"):readme.index("## Design")]
    for name in PARTITIONERS:
        assert f"| `{name}` |" in data_section, name
    for name in DATASETS:
        listed = f"`{name}`" in data_section or (name.startswith("emnist_") and "`emnist_<split>`" in data_section
                                                 and name.removeprefix("emnist_") in data_section)
        assert listed, name
