"""Seeds: same seed -> identical run, different seed -> different; data.seed independent;
a killed run resumed from its checkpoint ends bit-identical to an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time

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


def test_sigkill_then_resume_is_bit_identical(capsys, tiny_experiment, runs_dir, tmp_path):
    args = ["rounds=40", "model.name=mlp"]
    assert run_cli(capsys, "run", tiny_experiment, *args)[0] == 0
    (reference,) = run_dirs(runs_dir)
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedtorch", "run", str(tiny_experiment), *args, f"output_dir={killed_out}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        found = list(killed_out.rglob("metrics.jsonl"))
        if found and found[0].read_text().count("\n") >= 5:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = run_dirs(killed_out)
    assert not (run_dir / "result.json").exists(), "run finished before it could be killed"
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
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    assert code == 2
    assert "another parameter layout (8 parameters, 0 stored channels-last)" in err
    assert "(8 parameters, 2 stored channels-last)" in err and "Traceback" not in err
