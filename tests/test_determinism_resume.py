"""Seeds: same seed -> identical run, different seed -> different; data.seed independent;
a killed run resumed from its checkpoint ends bit-identical to an uninterrupted one."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from helpers import final_model, metrics, run_cli, run_dirs


def strip_times(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_seconds", "elapsed_seconds")} for r in rows]


def test_same_seed_identical_different_seed_differs(capsys, tiny_experiment, runs_dir):
    for seed in (0, 0, 1):
        assert run_cli(capsys, "run", tiny_experiment, f"seed={seed}")[0] == 0
    a, b, c = run_dirs(runs_dir)  # sorted by name: seed0, seed0-1, seed1
    assert torch.equal(final_model(a), final_model(b))
    assert strip_times(metrics(a)) == strip_times(metrics(b))
    assert (a / "clients.csv").read_text().count("\n") == (b / "clients.csv").read_text().count("\n")
    assert not torch.equal(final_model(a), final_model(c))
    assert strip_times(metrics(a)) != strip_times(metrics(c))


def test_data_seed_is_independent_of_training_seed(tiny_experiment):
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.runner import prepare

    base, _ = load_experiment(tiny_experiment)

    def split(*overrides):
        return [p.tolist() for p in prepare(validate(apply_overrides(base, list(overrides)))).data.client_indices]

    assert split("seed=0") == split("seed=7")
    assert split("data.seed=0") != split("data.seed=1")


def test_resume_after_exception_is_bit_identical(capsys, tiny_experiment, runs_dir):
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.runner import execute, new_run_dir, prepare

    assert run_cli(capsys, "run", tiny_experiment, "rounds=6", "client.momentum=0.5")[0] == 0
    (reference,) = run_dirs(runs_dir)
    base, folder = load_experiment(tiny_experiment)
    cfg = validate(apply_overrides(base, ["rounds=6", "client.momentum=0.5"]))
    run_dir = new_run_dir(cfg, folder)

    def crash(row):
        if row["round"] == 3:
            raise KeyboardInterrupt

    try:
        execute(prepare(cfg), run_dir, on_row=crash)
    except KeyboardInterrupt:
        pass
    assert not (run_dir / "result.json").exists()
    assert run_cli(capsys, "run", "--resume", run_dir)[0] == 0
    assert torch.equal(final_model(run_dir), final_model(reference))
    assert [m["round"] for m in metrics(run_dir)] == list(range(1, 7))
    assert strip_times(metrics(run_dir)) == strip_times(metrics(reference))


# `python -c KILLER run ...`: `fedtorch run` in a process that SIGKILLs itself at a known
# point, given by KILL_AT=<point>:<round R>, instead of a kill from outside at a time that
# races with the run. `checkpoint`: round R's checkpoint is written to its temporary file
# but not yet moved over checkpoint.pt (which still holds R - 1; metrics.jsonl already has
# row R). `training`: at the first local gradient after round R's checkpoint (round R + 1;
# the serial executor's FlatModule.loss_and_grad).
KILLER = """
import os, signal, sys
import torch
from fedtorch.flat import FlatModule

point, kill_round = os.environ["KILL_AT"].split(":")
checkpointed = []
real_save, real_loss_and_grad = torch.save, FlatModule.loss_and_grad


def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if isinstance(obj, dict) and "server" in obj and obj.get("round") == int(kill_round):
        if point == "checkpoint":
            os.kill(os.getpid(), signal.SIGKILL)
        checkpointed.append(obj["round"])


def loss_and_grad(self, *args, **kwargs):
    if checkpointed and point == "training":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_loss_and_grad(self, *args, **kwargs)


torch.save, FlatModule.loss_and_grad = save, loss_and_grad
from fedtorch.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("point, checkpoint_round", [
    ("checkpoint", 2),  # checkpoint.pt still holds round 2, metrics.jsonl has row 3: resume redoes round 3
    pytest.param("training", 3, marks=pytest.mark.slow),  # a clean cut: checkpoint and rows agree
])
def test_sigkill_then_resume_is_bit_identical(capsys, tiny_experiment, runs_dir, tmp_path, point, checkpoint_round):
    """A run killed by SIGKILL (a real process, no clean-up) at a known point, in the
    middle of writing round 3's checkpoint or during round 4's local training, resumes to
    the uninterrupted run's model and metrics, bit for bit."""
    args = ["rounds=5", "model.name=mlp", "client.momentum=0.5"]
    assert run_cli(capsys, "run", tiny_experiment, *args)[0] == 0
    (reference,) = run_dirs(runs_dir)
    killed_out = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, "run", str(tiny_experiment), *args, f"output_dir={killed_out}"],
        env={**os.environ, "KILL_AT": f"{point}:3"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    (run_dir,) = run_dirs(killed_out)
    assert not (run_dir / "result.json").exists()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["round"] == checkpoint_round
    assert [m["round"] for m in metrics(run_dir)] == [1, 2, 3]
    assert run_cli(capsys, "run", "--resume", run_dir)[0] == 0
    assert torch.equal(final_model(run_dir), final_model(reference))
    assert strip_times(metrics(run_dir)) == strip_times(metrics(reference))


def test_resume_refuses_a_checkpoint_with_another_parameter_layout(capsys, tiny_experiment, runs_dir):
    """A CNN checkpoint whose flat vectors are in the usual (not channels-last) order, as an
    older fedtorch wrote them, would be misread: --resume stops with exit 2 and says why."""
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.runner import execute, new_run_dir, prepare

    base, folder = load_experiment(tiny_experiment)
    cfg = validate(apply_overrides(base, ["rounds=3", "model.name=cnn"]))
    run_dir = new_run_dir(cfg, folder)

    def crash(row):
        if row["round"] == 2:  # round 1's checkpoint is written
            raise KeyboardInterrupt

    try:
        execute(prepare(cfg), run_dir, on_row=crash)
    except KeyboardInterrupt:
        pass
    path = run_dir / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    assert sum(payload["layout"]["channels_last"]) == 2  # the CNN's two convolution weights
    del payload["layout"]
    torch.save(payload, path)
    (run_dir / "checkpoint.json").unlink()  # that fedtorch wrote no checksum manifest either
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    assert code == 2
    assert "another parameter layout (8 parameters, 0 stored channels-last)" in err
    assert "(8 parameters, 2 stored channels-last)" in err and "Traceback" not in err
