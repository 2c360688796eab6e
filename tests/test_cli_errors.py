"""Bad input through the CLI: exit code 2, one clear line, no traceback, no run directory."""

import subprocess
import sys

import pytest

from conftest import tiny_config, write_experiment
from helpers import run_cli, run_dirs

CASES = [
    (["algorithm.name=fedfoo"], "algorithm.name: unknown algorithm 'fedfoo'; available: deltasgd, dualprox, fedadagrad, fedadam, fedasync"),
    (["model.name=resnet999"], "model.name: unknown value 'resnet999'; allowed: char_lstm, cnn, logreg, mlp"),
    (["data.dataset=imagenet"], "data.dataset: unknown value 'imagenet'; allowed:"),
    (["data.nope=1"], "unknown key 'data.nope' in overrides; allowed keys here: alpha,"),
    (["bogus=1"], "unknown key 'bogus' in overrides"),
    (["algorithm.mu=0.1"], "unknown key 'algorithm.mu' for algorithm 'fedavg'; allowed: (none)"),
    (["algorithm.name=fedprox", "algorithm.mu=abc"], "algorithm.mu: Value 'abc' of type 'str' could not be converted to Float"),
    (["algorithm.name=fedprox", "algorithm.mu=-1"], "algorithm.mu=-1.0 is not allowed: must be >= 0"),
    (["server.optimizer=lamb"], "server.optimizer: unknown value 'lamb'; allowed: adagrad, adam, sgd, yogi"),
    (["server.optimizer=adam", "server.momentum=0.9"], "server.momentum=0.9 is not used by server.optimizer='adam'; it takes server.lr, server.beta1"),
    (["algorithm.name=fedadam", "server.beta2=1"], "server.beta2=1.0 is not allowed: must be in [0, 1)"),
    (["server.tau=0.1"], "server.tau=0.1 is not used by server.optimizer='sgd'"),
    (["eval.holdout=1"], "eval.holdout=1.0 is not allowed: must be in (0, 1)"),
    (["algorithm.name=perfedavg", "algorithm.variant=so"], "algorithm.variant='so' is not allowed: use fo or hf"),
    (["rounds=ten"], "rounds: Value 'ten' of type 'str' could not be converted to Integer"),
    (["client.lr=fast"], "client.lr: Value 'fast'"),
    (["data.alpha=0"], "data.alpha=0.0 is not allowed: Dirichlet alpha must be > 0"),
    (["data.alpha=-0.5"], "data.alpha=-0.5 is not allowed"),
    (["federation.clients_per_round=11"], "federation.clients_per_round=11 is not allowed: must be in [1, data.num_clients=10]"),
    (["data.num_clients=601", "federation.clients_per_round=5"], "data.num_clients=601 is more than the 600 training samples"),
    (["data.num_clients=100", "data.min_samples=10"], "cannot give 100 clients at least 10 samples each"),
    (["seed=1,2"], "add --multirun to sweep"),
    (["rounds"], "must look like key.sub=value"),
    (["execution.device=tpu"], "execution.device='tpu' is not allowed"),
    (["execution.edges=2"], "execution.edges=2 is not allowed: edges group worker processes: a count >= 1 with "
                            "execution.mode=distributed, else 0"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[c[0][-1] for c in CASES])
def test_bad_override(capsys, tiny_experiment, runs_dir, overrides, message):
    code, out, err = run_cli(capsys, "run", tiny_experiment, *overrides)
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert run_dirs(runs_dir) == []


def test_folder_name_must_agree_with_config(capsys, tmp_path, tiny_idx_dir):
    folder = write_experiment(tmp_path, "A0d1C10", tiny_config(tiny_idx_dir, tmp_path / "runs"))
    code, _, err = run_cli(capsys, "run", folder)
    assert code == 2 and "folder name 'A0d1C10' says alpha 0.1 but CONFIG has data.alpha=0.5" in err


def test_unknown_key_in_config_file(capsys, tmp_path, tiny_idx_dir):
    cfg = tiny_config(tiny_idx_dir, tmp_path / "runs", client__learning_rate=0.1)
    folder = write_experiment(tmp_path, "A0d5C10", cfg)
    code, _, err = run_cli(capsys, "run", folder)
    assert code == 2 and "unknown key 'client.learning_rate'" in err and "config.py" in err


def test_missing_experiment_and_missing_data(capsys, tmp_path, tiny_idx_dir):
    code, _, err = run_cli(capsys, "run", tmp_path / "nowhere")
    assert code == 2 and "has no config.py" in err
    folder = write_experiment(tmp_path, "A0d5C10", tiny_config(tmp_path / "empty", tmp_path / "runs"))
    code, _, err = run_cli(capsys, "run", folder)
    assert code == 2 and "apt-get install -y dataset-fashion-mnist" in err
    assert run_dirs(tmp_path / "runs") == []


def test_error_from_real_process_has_exit_code_2_and_no_traceback(tiny_experiment):
    proc = subprocess.run(
        [sys.executable, "-m", "fedtorch", "run", str(tiny_experiment), "algorithm.name=nope"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "unknown algorithm 'nope'" in proc.stderr


def test_bare_algorithm_override(capsys, tiny_experiment):
    code, _, err = run_cli(capsys, "run", tiny_experiment, "algorithm=fedprox")
    assert code == 2 and "algorithm.name=fedprox" in err
