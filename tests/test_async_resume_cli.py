"""``fedtorch run --resume`` of an asynchronous run (simulated clock) killed by SIGKILL at
several points ends bit-identical to the uninterrupted run: same model, same ``updates.csv``
byte for byte, same metrics (wall times aside)."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from helpers import final_model, metrics, run_cli, run_dirs

# FedBuff (K = 2 of 4 in flight: arrivals wait in the buffer across checkpoints) and SCAFFOLD
# through the buffered step (client state in the store); lognormal delays; unequal n_i.
CASES = {
    "fedbuff": ["algorithm.name=fedbuff", "algorithm.buffer_size=2"],
    "scaffold": ["algorithm.name=scaffold", "federation.buffer_size=3"],
    # K_i-proportional constant delays: clients with equal K_i arrive together, so a group
    # goes on after the arrival that made a new version and checkpoints hold arrivals not
    # yet summarised in a metrics row
    "fedbuff_ties": ["algorithm.name=fedbuff", "algorithm.buffer_size=3", "delays.model=constant", "delays.mean=1",
                     "delays.step_seconds=1", "checkpoint.every=1"],
}
COMMON = ["federation.mode=async", "rounds=8", "federation.concurrency=4", "delays.model=lognormal", "delays.mean=5",
          "delays.sigma=1", "model.name=mlp", "eval.every=2", "checkpoint.every=2"]

# `python -c KILLER run ...`: `fedtorch run` that SIGKILLs itself at KILL_AT=<point>:<n>:
# `arrival`: as the n-th client arrival is applied (mid-group, between checkpoints);
# `checkpoint`: while writing the n-th checkpoint (its file written, not yet in place).
KILLER = """
import os, signal, sys
import torch
from fedtorch.federation.async_loop import AsyncServer

point, n = os.environ["KILL_AT"].split(":")
n = int(n)
count = [0, 0]
real_arrive, real_save = AsyncServer.arrive, torch.save


def arrive(self, job, result):
    count[0] += 1
    if point == "arrival" and count[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_arrive(self, job, result)


def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if isinstance(obj, dict) and "server" in obj:
        count[1] += 1
        if point == "checkpoint" and count[1] == n:
            os.kill(os.getpid(), signal.SIGKILL)


AsyncServer.arrive, torch.save = arrive, save
from fedtorch.cli import main

sys.exit(main(sys.argv[1:]))
"""


def _strip_times(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_seconds", "elapsed_seconds")} for r in rows]


@pytest.mark.parametrize("case, kill_at", [
    ("fedbuff", "arrival:7"),
    ("fedbuff", "checkpoint:2"),
    ("scaffold", "arrival:13"),
    ("fedbuff_ties", "arrival:6"),
])
def test_async_run_killed_then_resumed_is_bit_identical(capsys, tiny_experiment, runs_dir, tmp_path, case, kill_at):
    args = [*COMMON, *CASES[case]]
    assert run_cli(capsys, "run", tiny_experiment, *args)[0] == 0
    (reference,) = run_dirs(runs_dir)
    killed_out = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, "run", str(tiny_experiment), *args, f"output_dir={killed_out}"],
        env={**os.environ, "KILL_AT": kill_at}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    (run_dir,) = run_dirs(killed_out)
    assert not (run_dir / "result.json").exists()
    ref_updates = (reference / "updates.csv").read_bytes()
    assert (run_dir / "updates.csv").read_bytes() != ref_updates  # it was cut short
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    assert code == 0, err
    assert torch.equal(final_model(run_dir), final_model(reference))
    assert (run_dir / "updates.csv").read_bytes() == ref_updates
    assert _strip_times(metrics(run_dir)) == _strip_times(metrics(reference))


def test_an_asyncio_clock_run_is_not_resumable(capsys, tiny_experiment, runs_dir):
    args = [*COMMON, *CASES["fedbuff"], "federation.clock=asyncio"]
    assert run_cli(capsys, "run", tiny_experiment, *args)[0] == 0
    (run_dir,) = run_dirs(runs_dir)
    (run_dir / "result.json").unlink()
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    assert code == 2 and "federation.clock=asyncio" in err and len(err.strip().splitlines()) == 1
