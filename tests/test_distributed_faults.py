"""Elastic fault tolerance: under ``torchrun --max-restarts 1`` a rank killed with SIGKILL in
round 3 of 6 (a worker, and separately rank 0) makes torchrun restart the group, and the run
continues from its last checkpoint in the same run directory, ending bit-identical to an
uninterrupted run, with the restart recorded and no process left (docs/distributed.md,
"Faults and restarts"; fedtorch/experiment/distributed_restart.py).

Cost: one torchrun of 3 processes (two attempts) per case, and one serial reference run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from distributed_helpers import FAST_ENV, TORCHRUN, checkpoint_differences, kill_group, tagged
from fedtorch.experiment import distributed_restart as restart_module
from fedtorch.experiment.config import apply_overrides, load_experiment, validate
from fedtorch.experiment.runner import execute, new_run_dir, prepare
from helpers import metrics
from test_determinism_resume import strip_times

ROUNDS, KILL_ROUND = 6, 3  # KILL_ROUND is 1-based, as the metrics rows count rounds
COMMON = ["federation.clients_per_round=7", "execution.threads=1"]

# `torchrun ... KILLER.py run ...`: `fedtorch run` in which rank KILL_RANK SIGKILLs itself on
# the first attempt only (TORCHELASTIC_RESTART_COUNT=0), at a known point of round KILL_ROUND
# (0-based t = KILL_ROUND - 1 in the round contexts): rank 0 when its executor starts the
# round (round KILL_ROUND - 1's checkpoint is written, nothing of the round is sent), a
# worker when it has decoded the round's work (rank 0 waits for its results).
KILLER = """
import os, signal, sys
from fedtorch.execution import distributed

rank, kill_round = int(os.environ["KILL_RANK"]), int(os.environ["KILL_ROUND"])
armed = os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" and os.environ.get("RANK") == str(rank)


def kill_at(tasks):
    if armed and tasks and tasks[0].ctx.round == kill_round - 1:
        os.kill(os.getpid(), signal.SIGKILL)


real_run, real_work = distributed.DistributedExecutor.run, distributed.work_of


def run(self, algorithm, broadcast, tasks, states):
    kill_at(tasks)
    return real_run(self, algorithm, broadcast, tasks, states)


def work(header, tensors, device):
    out = real_work(header, tensors, device)
    kill_at(out[1])
    return out


distributed.DistributedExecutor.run, distributed.work_of = run, work
from fedtorch.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_idx_dir) -> Path:
    """The tiny experiment (10 clients, logreg) with 6 rounds; SCAFFOLD keeps client state."""
    root = tmp_path_factory.mktemp("faults")
    folder = root / "experiments" / "Tiny" / "A0d5C10"
    folder.mkdir(parents=True)
    cfg = tiny_config(tiny_idx_dir, root / "runs", rounds=ROUNDS, algorithm={"name": "scaffold"})
    (folder / "config.py").write_text("CONFIG = " + repr(cfg) + "\n")
    return folder


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory) -> Path:
    """The uninterrupted serial run: distributed == serial bit for bit with equal intra-op
    threads, 1 here as under torchrun (for the evaluation too: the test losses are compared)."""
    base, folder = load_experiment(experiment)
    cfg = validate(apply_overrides(base, [*COMMON, f"output_dir={tmp_path_factory.mktemp('serial')}"]))
    run_dir = new_run_dir(cfg, folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        execute(prepare(cfg), run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


def elastic_torchrun(args: list[str], env: dict, timeout: float = 150) -> tuple[int, str, str, list[int]]:
    """``torchrun --standalone --nproc-per-node 3 --max-restarts 1 args`` (loopback):
    ``(exit code, stdout, stderr, pids of its processes still alive when it exited)``.
    Past ``timeout`` seconds, or at the end, every one of its processes is SIGKILLed."""
    tag = uuid.uuid4().hex
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "3", "--max-restarts", "1", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **FAST_ENV, **env, "FEDTORCH_TEST_TAG": tag})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = "", ""
    left = tagged(tag)
    kill_group(proc)
    for pid in tagged(tag):
        os.kill(pid, signal.SIGKILL)
    if proc.returncode is None:
        out, err = proc.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout} s; killed.\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err, left


@pytest.mark.parametrize("rank", [2, 0], ids=["worker-rank-2", "rank-0"])
def test_a_rank_killed_in_round_3_restarts_and_ends_bit_identical(rank, experiment, reference, tmp_path):
    out_dir = tmp_path / "dist"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    args = [str(killer), "run", str(experiment), "execution.mode=distributed", "execution.timeout_s=30", *COMMON,
            f"output_dir={out_dir}"]
    code, out, err, left = elastic_torchrun(args, {"KILL_RANK": str(rank), "KILL_ROUND": str(KILL_ROUND)})
    assert left == [], f"processes left behind: {left}"
    assert code == 0, f"stdout:\n{out[-3000:]}\nstderr:\n{err[-5000:]}"
    dirs = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("run directory:")]
    assert len(dirs) == 2 and len(set(dirs)) == 1, out  # both attempts ran in one directory
    run_dir = Path(dirs[0])
    assert "Signals.SIGKILL" in err or "exitcode: -9" in err, err[-3000:]  # torchrun saw the kill, then restarted

    assert checkpoint_differences(run_dir, reference) == []  # server state and every client state
    model, model_ref = (torch.load(d / "model.pt", weights_only=True) for d in (run_dir, reference))
    assert model.keys() == model_ref.keys() and all(torch.equal(model[k], model_ref[k]) for k in model)
    assert strip_times(metrics(run_dir)) == strip_times(metrics(reference))  # every round once, equal rows

    restarts = [json.loads(line) for line in (run_dir / "restarts.jsonl").read_text().splitlines()]
    assert [(r["attempt"], r["checkpoint_round"], r["logged_rounds"]) for r in restarts] == [(1, KILL_ROUND - 1, 2)]
    assert json.loads((run_dir / "result.json").read_text())["restarts"] == 1
    assert f"torchrun restart 1 of 1: continuing {run_dir} from its checkpoint of round {KILL_ROUND - 1}" in out
    traffic = [json.loads(line)["round"] for line in (run_dir / "distributed_traffic.jsonl").read_text().splitlines()]
    # a killed rank 0 never wrote its attempt's rows; the restart appends rounds 3..6 (t = 2..5), each once
    assert traffic == (list(range(ROUNDS)) if rank else list(range(KILL_ROUND - 1, ROUNDS)))
    assert not list(run_dir.parent.glob(".torchrun-*"))  # the marker is gone with the finished run


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _attempt(monkeypatch, restart: int, run_id: str = "test-launch") -> restart_module.Attempt:
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restart))
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
    return restart_module.current_attempt()


def test_a_run_killed_in_round_1_before_any_checkpoint_restarts_from_its_round_0_checkpoint(experiment, reference,
                                                                                         tmp_path, monkeypatch, capsys):
    """Rank 0's side of two attempts, in one process (the serial executor stands in for the
    distributed one): attempt 0 dies in round 1 after logging it, before its checkpoint;
    attempt 1 finds the directory through the marker and ends equal to the uninterrupted run."""
    base, folder = load_experiment(experiment)
    cfg = validate(apply_overrides(base, [*COMMON, f"output_dir={tmp_path}"]))
    prep = prepare(cfg)
    run_dir, resume = restart_module.open_run_dir(prep, folder, None, _attempt(monkeypatch, 0))
    marker = run_dir.parent / ".torchrun-test-launch.json"
    assert not resume and marker.is_file() and (run_dir / "checkpoint.pt").is_file()

    def killed(row):  # on_row runs after the round's metrics row, before its checkpoint
        raise KeyboardInterrupt

    with one_thread(), pytest.raises(KeyboardInterrupt):
        execute(prep, run_dir, on_row=killed)
    assert [m["round"] for m in metrics(run_dir)] == [1]

    traffic = run_dir / "distributed_traffic.jsonl"
    traffic.write_text(json.dumps({"round": 0}) + "\n")  # round 1 (t = 0), as a killed worker's rank 0 writes it
    prep = prepare(cfg)  # attempt 1: a fresh process
    attempt = _attempt(monkeypatch, 1)
    again, resume = restart_module.open_run_dir(prep, folder, None, attempt)
    assert (again, resume) == (run_dir, True)
    assert traffic.read_text() == ""  # the round is redone, and logged once
    assert "torchrun restart 1 of 1: continuing" in capsys.readouterr().out
    with one_thread():
        result = execute(prep, run_dir, resume=True)
    assert restart_module.finish(run_dir, result, folder, cfg.output_dir, attempt)["restarts"] == 1
    assert checkpoint_differences(run_dir, reference) == []
    assert strip_times(metrics(run_dir)) == strip_times(metrics(reference))
    row = json.loads((run_dir / "restarts.jsonl").read_text())
    assert (row["attempt"], row["checkpoint_round"], row["logged_rounds"]) == (1, 0, 1)
    assert json.loads((run_dir / "result.json").read_text())["restarts"] == 1 and not marker.exists()


def test_a_restart_never_continues_another_launchs_run(experiment, tmp_path, monkeypatch, capsys):
    """A marker of this run id that names a run with another config (another launch reused
    the --rdzv-id), or no marker at all: the restart starts a new run, with one warning line.
    Attempt 0 removes a stale marker of its run id; an uninterrupted run records 0 restarts."""
    base, folder = load_experiment(experiment)
    other = validate(apply_overrides(base, [*COMMON, "seed=1", f"output_dir={tmp_path}"]))
    foreign, _ = restart_module.open_run_dir(prepare(other), folder, None, _attempt(monkeypatch, 0))
    cfg = validate(apply_overrides(base, [*COMMON, f"output_dir={tmp_path}"]))
    prep = prepare(cfg)
    run_dir, resume = restart_module.open_run_dir(prep, folder, None, _attempt(monkeypatch, 1))
    assert run_dir != foreign and not resume
    assert "another config" in capsys.readouterr().err
    restart_module.forget_stale_marker(tmp_path, folder, _attempt(monkeypatch, 0, "gone"))
    assert list(run_dir.parent.glob(".torchrun-*")) == [run_dir.parent / ".torchrun-test-launch.json"]
    restart_module.forget_stale_marker(tmp_path, folder, _attempt(monkeypatch, 0))
    assert not list(run_dir.parent.glob(".torchrun-*"))
    fresh, resume = restart_module.open_run_dir(prep, folder, None, _attempt(monkeypatch, 1, "never-started"))
    assert fresh not in (run_dir, foreign) and not resume and "no " in capsys.readouterr().err
    (fresh / "result.json").write_text(json.dumps({"status": "completed"}))
    done = restart_module.finish(fresh, {"status": "completed"}, folder, tmp_path, _attempt(monkeypatch, 1))
    assert done["restarts"] == 0 and json.loads((fresh / "result.json").read_text())["restarts"] == 0
