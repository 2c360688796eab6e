"""Plug-ins: a user's model, dataset, partition and algorithm from an experiment's config.py
or a dotted path (fedtorch.experiment.plugins), their errors, and a user algorithm under
every executor, in async mode and across a SIGKILL + resume in a fresh process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import fedtorch
from conftest import tiny_config
from helpers import final_model, metrics, run_cli, run_dirs
from test_determinism_resume import KILLER, strip_times

from fedtorch.experiment.config import apply_overrides, from_dict, load_experiment, validate
from fedtorch.experiment.runner import prepare

# What a user writes: every kind of plug-in. MyProx is FedProx's client rule (Li et al.,
# MLSys 2020, Eq. 2: d = g + mu (y - x^t)) with its own name and a default mu of 0.5.
PLUGINS = '''
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedtorch.algorithms.base import FedAlgorithm, proximal


class TinyNet(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(int(np.prod(input_shape)), num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    return x[:150], y[:150], x[150:], y[150:]


def round_robin(targets, num_clients, rng):
    order = rng.permutation(len(targets))
    return {i: order[i::num_clients] for i in range(num_clients)}


@dataclass(frozen=True, kw_only=True)
class MyProxHparams:
    mu: float = 0.5


class MyProx(FedAlgorithm):
    name = "myprox"
    Hparams = MyProxHparams

    def direction(self, run, g):
        return proximal(g, run.y, run.broadcast.x, self.hp.mu)
'''

FOLDER_PLUGINS = PLUGINS + "\nMODEL = TinyNet\nDATASET = make_data\nPARTITION = round_robin\n"


def plugin_config(tmp_path, **over) -> dict:
    cfg = {"seed": 0, "rounds": 2, "output_dir": str(tmp_path / "runs"),
           "data": {"num_clients": 5, "seed": 3}, "algorithm": {"name": "myprox", "mu": 0.1},
           "client": {"local_epochs": 1, "batch_size": 8, "lr": 0.1},
           "federation": {"clients_per_round": 3}, "logging": {"progress": "none"}}
    for key, value in over.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    return cfg


def write_folder(tmp_path, code: str, config: dict, name: str = "plug"):
    folder = tmp_path / "experiments" / "User" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.py").write_text(code + "\nCONFIG = " + repr(config) + "\n")
    return folder


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module holding PLUGINS on sys.path, under a name unique to this test."""
    name = "userplug_" + "".join(c for c in tmp_path.name if c.isalnum())
    (tmp_path / "pkgs").mkdir()
    (tmp_path / "pkgs" / f"{name}.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    return name


def check_uses_plugins(prep):
    """The prepared run holds make_data's tensors, round_robin's split of them with
    rng = default_rng(data.seed), a TinyNet-shaped model and MyProx with the config's mu."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    ds = prep.data.data
    assert torch.equal(ds.train_x, x[:150]) and torch.equal(ds.test_y, y[150:]) and ds.num_classes == 3
    order = np.random.default_rng(3).permutation(150)
    for i in range(5):
        got = prep.data.client_indices[i] if not hasattr(prep.data.client_indices, "of") else prep.data.client_indices.of(i)
        assert np.array_equal(np.asarray(got.cpu()), np.sort(order[i::5]))
    assert prep.x0.shape == (6 * 3 + 3,)  # TinyNet: Linear(6, 3)
    assert type(prep.algorithm).__name__ == "MyProx" and prep.algorithm.hp.mu == 0.1
    prep.executor.close()


def test_each_plugin_kind_from_config_py(tmp_path):
    folder = write_folder(tmp_path, FOLDER_PLUGINS, plugin_config(tmp_path))
    base, _ = load_experiment(folder)
    cfg = validate(base)
    path = str((folder / "config.py").resolve())
    assert cfg.model.name == f"{path}:MODEL" and cfg.data.dataset == f"{path}:DATASET"
    assert cfg.data.partition == f"{path}:PARTITION"
    assert dict(cfg.algorithm) == {"name": "myprox", "source": f"{path}:MyProx", "mu": 0.1}
    check_uses_plugins(prepare(cfg))


def test_each_plugin_kind_from_a_dotted_path(tmp_path, user_module, capsys):
    m = user_module
    config = plugin_config(tmp_path, model={"name": f"{m}:TinyNet"},
                           data={"dataset": f"{m}:make_data", "partition": f"{m}:round_robin"},
                           algorithm={"name": f"{m}:MyProx"})
    cfg = validate(apply_overrides(validate(from_dict(config)), []))
    assert dict(cfg.algorithm) == {"name": "myprox", "source": f"{m}:MyProx", "mu": 0.1}
    check_uses_plugins(prepare(cfg))
    # the same references on the command line, into an experiment folder without plug-ins
    folder = write_folder(tmp_path, "", plugin_config(tmp_path), name="plain")
    code, out, err = run_cli(capsys, "run", folder, f"model.name={m}:TinyNet", f"data.dataset={m}:make_data",
                             f"data.partition={m}:round_robin", f"algorithm.name={m}:MyProx", "algorithm.mu=0.1")
    assert code == 0, err
    (run_dir,) = run_dirs(tmp_path / "runs")
    assert run_dir.name.startswith("myprox_seed0")


def test_api_takes_plugin_objects(tmp_path):
    namespace: dict = {}
    exec(compile(PLUGINS, "<user>", "exec"), namespace)  # objects defined in a script, not importable
    config = plugin_config(tmp_path, algorithm={"mu": 0.1})
    del config["algorithm"]["name"]
    result = fedtorch.run(config, model=namespace["TinyNet"], dataset=namespace["make_data"],
                          partition=namespace["round_robin"], algorithm=namespace["MyProx"])
    assert type(result.model).__name__ == "TinyNet" and result.config["algorithm"]["name"] == "myprox"
    folder = write_folder(tmp_path, FOLDER_PLUGINS, plugin_config(tmp_path))
    from_folder = fedtorch.run(folder)
    assert torch.equal(final_model(result.run_dir), final_model(from_folder.run_dir))


@pytest.mark.parametrize("mode", ["serial", "parallel", "vectorized"])
def test_user_algorithm_matches_builtin_fedprox_under_every_executor(capsys, tiny_experiment, tmp_path, mode):
    """MyProx from config.py gives FedProx's model bit for bit at the same mu (unequal n_i,
    M < N), and differs from FedAvg: its direction hook and its mu are the ones used."""
    code = (tiny_experiment / "config.py").read_text()
    (tiny_experiment / "config.py").write_text(PLUGINS + "\n" + code)
    common = ["algorithm.mu=0.3", f"execution.mode={mode}", "execution.threads=2", "client.momentum=0.5"]
    for name in ("myprox", "fedprox", "fedavg"):
        mu = [] if name == "fedavg" else common[:1]
        assert run_cli(capsys, "run", tiny_experiment, f"algorithm.name={name}", *mu, *common[1:],
                       f"output_dir={tmp_path / name}")[0] == 0
    (mine,), (theirs,), (avg,) = (run_dirs(tmp_path / n) for n in ("myprox", "fedprox", "fedavg"))
    assert torch.equal(final_model(mine), final_model(theirs))
    assert strip_times(metrics(mine)) == strip_times(metrics(theirs))
    assert not torch.equal(final_model(mine), final_model(avg))


def test_user_algorithm_runs_async(tiny_experiment, tmp_path):
    code = (tiny_experiment / "config.py").read_text()
    (tiny_experiment / "config.py").write_text(PLUGINS + "\n" + code)
    common = {"federation.mode": "async", "algorithm.mu": 0.3, "delays.model": "uniform"}
    mine = fedtorch.run(tiny_experiment, **common, **{"algorithm.name": "myprox", "output_dir": str(tmp_path / "a")})
    theirs = fedtorch.run(tiny_experiment, **common, **{"algorithm.name": "fedprox", "output_dir": str(tmp_path / "b")})
    assert torch.equal(final_model(mine.run_dir), final_model(theirs.run_dir))
    assert strip_times(mine.metrics) == strip_times(theirs.metrics)


def test_user_algorithm_resumes_bit_identically_after_sigkill(capsys, tmp_path):
    """Killed while writing round 2's checkpoint; resumed by a fresh process, which finds the
    experiment's MODEL, DATASET, PARTITION and MyProx again from config.yaml alone."""
    folder = write_folder(tmp_path, FOLDER_PLUGINS, plugin_config(tmp_path, rounds=4))
    assert run_cli(capsys, "run", folder, f"output_dir={tmp_path / 'ref'}")[0] == 0
    (reference,) = run_dirs(tmp_path / "ref")
    killed = tmp_path / "killed"
    env = {**os.environ, "KILL_AT": "checkpoint:2"}
    proc = subprocess.run([sys.executable, "-c", KILLER, "run", str(folder), f"output_dir={killed}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (run_dir,) = run_dirs(killed)
    assert not (run_dir / "result.json").exists()
    resume = subprocess.run([sys.executable, "-m", "fedtorch.cli", "run", "--resume", str(run_dir)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert torch.equal(final_model(run_dir), final_model(reference))
    assert strip_times(metrics(run_dir)) == strip_times(metrics(reference))


def test_fedtorch_algorithms_lists_an_experiments_algorithms(capsys, tmp_path):
    folder = write_folder(tmp_path, FOLDER_PLUGINS, plugin_config(tmp_path))
    code, out, _ = run_cli(capsys, "algorithms", folder)
    assert code == 0
    block = out.split("\nmyprox\n", 1)[1].split("\n\n")[0]
    assert "algorithm: mu=0.5" in block and f"plug-in: {(folder / 'config.py').resolve()}:MyProx" in block


# ---- bad plug-ins: one error each, exit 2 through the CLI and ConfigError through the API ----
NO_HOOK = '''
class Lazy(FedAlgorithm):
    name = "lazy"
'''
SHADOW = '''
class MyAvg(FedAlgorithm):
    name = "fedavg"
    def direction(self, run, g):
        return g
'''
BAD = {
    "module": ("", {"model.name": "no_such_module_xyz:Net"}, "module 'no_such_module_xyz' cannot be imported"),
    "attribute": ("", {"model.name": "{m}:Nope"}, "has no attribute 'Nope'"),
    "not callable": ("MODEL = 3\n", {}, "is a int, not callable"),
    "signature": ("MODEL = lambda shape: None\n", {}, "has the wrong signature (shape)"),
    "output shape": ("MODEL = lambda shape, c: nn.Linear(6, c + 1)\n", {},
                     "maps a batch of shape (2, 6) to (2, 4), not (batch, num_classes) = (2, 3)"),
    "not a module": ("MODEL = lambda shape, c: 'net'\n", {}, "returned a str, not an nn.Module"),
    "dataset structure": ("DATASET = lambda: make_data()[:2]\n", {}, "returned a tuple of 2 items; it must return"),
    "dataset labels": ("DATASET = lambda: (*make_data()[:3], make_data()[3].float())\n", {},
                       "test_y must be (N,) integer labels"),
    "partition range": ("PARTITION = lambda t, n, rng: {i: [i * 1000] for i in range(n)}\n", {},
                        "client 1 has index 1000, outside the 150 training samples"),
    "partition overlap": ("PARTITION = lambda t, n, rng: {i: [0, 1] for i in range(n)}\n", {},
                          "gave some training samples to more than one client"),
    "partition clients": ("PARTITION = lambda t, n, rng: {0: list(range(len(t)))}\n", {},
                          "it must return one entry for each client 0..4"),
    "no hook": (NO_HOOK, {"algorithm.name": "lazy"}, "overrides no hook of FedAlgorithm"),
    "dotted no hook": ("", {"algorithm.name": "fedtorch.algorithms.base:FedAlgorithm"}, "is not a subclass"),
    "builtin name": (SHADOW, {}, "'fedavg' of MyAvg is a built-in algorithm's"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_plugin_gives_one_error(capsys, tmp_path, user_module, case):
    extra, overrides, message = BAD[case]
    overrides = {k: v.format(m=user_module) for k, v in overrides.items()}
    folder = write_folder(tmp_path, FOLDER_PLUGINS + extra, plugin_config(tmp_path, algorithm={"name": "myprox"}))
    code, out, err = run_cli(capsys, "run", folder, *(f"{k}={v}" for k, v in overrides.items()))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    with pytest.raises(fedtorch.ConfigError, match=None) as e:
        fedtorch.run(folder, **overrides)
    assert message in str(e.value)
    assert not (tmp_path / "runs").exists()  # nothing is created before the plug-ins are checked


def test_dataset_plugin_may_return_torch_datasets(tmp_path):
    """(train_dataset, test_dataset) of (x, y) items are materialised to the same tensors."""
    code = FOLDER_PLUGINS + ("\nfrom torch.utils.data import TensorDataset as TD\n"
                             "DATASET = lambda: (TD(*make_data()[:2]), TD(*make_data()[2:]))\n")
    folder = write_folder(tmp_path, code, plugin_config(tmp_path))
    check_uses_plugins(prepare(validate(load_experiment(folder)[0])))


def test_the_example_of_docs_api_md_runs(tmp_path, monkeypatch):
    """The ``python plugins`` block of docs/api.md "Your own model, data and algorithm"."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    (block,) = re.findall(r"```python plugins\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace = {"fedtorch": fedtorch}
    exec(compile(block, "docs/api.md", "exec"), namespace)
    assert namespace["result"].status == "completed" and len(namespace["result"].metrics) == 2


def test_a_loss_plugin_from_config_py_is_what_clients_minimise(tmp_path, tiny_idx_dir):
    """LOSS = 2 x cross-entropy with plain SGD at lr/2 takes the steps of cross-entropy at lr
    (the gradient doubles), and the reported losses double; an unknown loss name is refused."""
    twice = "import torch.nn.functional as F\n\ndef LOSS(logits, y):\n    return 2 * F.cross_entropy(logits, y)\n"
    base = tiny_config(tiny_idx_dir, tmp_path / "runs", rounds=2)
    base["client"]["lr"] = 0.05
    half = write_folder(tmp_path, twice, {**base, "client": {**base["client"], "lr": 0.025}}, "twice")
    plain = write_folder(tmp_path, "", base, "plain")
    a, b = fedtorch.run(half, output_dir=tmp_path / "a"), fedtorch.run(plain, output_dir=tmp_path / "b")
    assert a.config["model"]["loss"].endswith("config.py:LOSS") and b.config["model"]["loss"] == "cross_entropy"
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    for ra, rb in zip(a.metrics, b.metrics):
        assert ra["test_loss"] == pytest.approx(2 * rb["test_loss"], rel=1e-4)
    with pytest.raises(fedtorch.ConfigError, match="model.loss='mse' is not allowed"):
        fedtorch.run(plain, output_dir=tmp_path / "c", **{"model.loss": "mse"})
