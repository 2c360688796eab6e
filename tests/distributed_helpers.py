"""Launching torchrun from tests (loopback, free ports, bounded time, no process left
behind), comparing checkpoints bit for bit, and a torchrun script that runs many
distributed runs in one process group (``python distributed_helpers.py cases.json``).

The script keeps CI time low: one torchrun start-up (a few seconds) serves every
algorithm of the matrix. Each case goes through
:func:`fedtorch.experiment.distributed_run.run_in_session`, the code ``fedtorch run`` runs
under torchrun after joining the group; rank 0 writes ``{case: {"run_dir" | "error"}}``
to the output file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import torch

VENV_BIN = Path(sys.executable).parent
TORCHRUN = str(VENV_BIN / "torchrun")
FEDTORCH = str(VENV_BIN / "fedtorch")
FAST_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TORCH_CPP_LOG_LEVEL": "ERROR"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_torchrun(args: list[str], nproc: int, node: tuple[int, int, int] | None = None,
                   env: dict | None = None) -> subprocess.Popen:
    """``torchrun`` on loopback in its own process group: ``--standalone`` (``node`` None) or
    node ``(rank, nnodes, port)`` of a c10d rendezvous at 127.0.0.1:port; ``env`` added.
    Every process it starts inherits ``FEDTORCH_TEST_TAG=<proc.tag>`` (:func:`tagged`)."""
    if node is None:
        where = ["--standalone"]
    else:
        rank, nnodes, port = node
        where = ["--nnodes", str(nnodes), "--node-rank", str(rank), "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}"]
    cmd = [TORCHRUN, *where, "--nproc-per-node", str(nproc), "--max-restarts", "0", *args]
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **FAST_ENV, **(env or {}), "FEDTORCH_TEST_TAG": tag})
    proc.tag = tag
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)``; past ``timeout`` seconds every process torchrun
    started is killed (SIGKILL) and the test fails. ``proc.left`` is the pids of its
    processes still alive when torchrun had exited (killed afterwards)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(proc)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout} s; killed.\nstdout:\n{out}\nstderr:\n{err}") from None
    proc.left = tagged(proc.tag)
    kill_all(proc)  # anything torchrun left behind, so that a failing test leaks nothing
    return proc.returncode, out, err


def tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment holds ``FEDTORCH_TEST_TAG=<tag>``: torchrun
    and every worker it started (the workers run in sessions of their own, so a process
    group check on torchrun's pid would miss them)."""
    needle = f"FEDTORCH_TEST_TAG={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                if "\nState:\tZ" not in (entry / "status").read_text():  # a zombie is gone, only not reaped yet
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun's process group and every process carrying its tag."""
    kill_group(proc)
    for pid in tagged(getattr(proc, "tag", "")) if getattr(proc, "tag", None) else []:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def torchrun(args: list[str], nproc: int = 3, timeout: float = 120, env: dict | None = None) -> tuple[int, str, str]:
    proc = start_torchrun(args, nproc, env=env)
    code, out, err = finish(proc, timeout)
    assert proc.left == [], f"processes left behind by torchrun: {proc.left}"
    return code, out, err


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def checkpoint_differences(a: Path, b: Path) -> list[str]:
    """Where the ``checkpoint.pt`` of run directories ``a`` and ``b`` differ (server state,
    every client state): ``[]`` when bit-identical."""
    x = torch.load(Path(a) / "checkpoint.pt", weights_only=True)
    y = torch.load(Path(b) / "checkpoint.pt", weights_only=True)
    return _differences({"server": x["server"], "clients": x["clients"]}, {"server": y["server"], "clients": y["clients"]}, "")


def _differences(a, b, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        ok = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if ok else [f"{where}: tensors differ"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _run_cases(spec_path: str) -> int:
    """torchrun entry: every case of the JSON spec in one process group."""
    from fedtorch.execution import distributed_setup as setup
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.distributed_run import run_in_session
    from fedtorch.experiment.errors import ConfigError

    spec = json.loads(Path(spec_path).read_text())
    env = setup.launch_env()
    setup.join(env, 60.0)
    out = {}
    try:
        for name, case in spec["cases"].items():
            base, folder = load_experiment(spec["experiment"])
            overrides = case["overrides"] + case.get("rank_overrides", {}).get(str(env.rank), [])
            cfg = validate(apply_overrides(base, overrides))
            seen = {}

            def report(run_dir, result, seen=seen):
                seen["run_dir"] = str(run_dir)
                return 0

            try:
                seen["code"] = run_in_session(env, cfg, folder, report)
                out[name] = seen
            except ConfigError as e:
                out[name] = {"error": str(e)}
    finally:
        setup.stop()
    if env.rank == 0:
        Path(spec["out"]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_run_cases(sys.argv[1]))
