"""What one process does under ``torchrun ... fedtorch run <folder> execution.mode=distributed``.

Every rank parses the same command line, then (:func:`main`):

1. reads torchrun's environment; outside torchrun, or with one process, it stops with one
   ``error:`` line (exit 2) saying how to launch;
2. joins the gloo process group (``execution.timeout_s`` on every operation) and checks the
   settings on every rank together (:func:`settings_problem`: a GPU asked for on a rank
   without one, a bad worker mode or timeout, a wall-clock run that cannot fill its workers): any problem stops every
   rank before training, rank 0 printing one ``error:`` line that names the rank (exit 2);
3. loads the data and builds the split, model, algorithm and executor itself
   (:func:`fedtorch.experiment.runner.prepare`; only sample indices cross the wire later),
   then exchanges a fingerprint (:func:`fingerprint`: the resolved config without the keys
   that may differ per node, the torch and fedtorch versions, a digest of the data and the
   split); a rank that differs from rank 0 stops the run (exit 2, the key or the data named);
4. rank 0 creates the run directory and runs the normal federation loop with the
   :class:`~fedtorch.execution.distributed.DistributedExecutor`, writing everything (plus
   ``distributed_traffic.jsonl``: bytes and transfer seconds per round and rank); the
   other ranks serve (train what rank 0 sends) and write nothing. Rank 0 always tells the
   workers to stop, also when it fails, so that no process waits for a timeout.

A rank that times out or loses its peer prints one ``error:`` line naming the rank that
failed and exits with 1. When one rank dies, torchrun sends SIGTERM to the others; they
exit :data:`SIGTERM_GRACE_S` seconds later rather than at once, so that rank 0 can still
see which connection closed and name that rank (:func:`_deferred_exit`).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

import fedtorch
from fedtorch.execution import EXECUTORS
from fedtorch.execution import distributed_setup as setup
from fedtorch.execution.distributed_wire import PeerError
from fedtorch.experiment import distributed_restart as restart
from fedtorch.experiment.atomic import write_text
from fedtorch.experiment.errors import ConfigError

TRAFFIC_NAME = "distributed_traffic.jsonl"
PER_NODE_KEYS = ("output_dir", "data.root", "logging.")  # may differ between nodes: only rank 0 writes; data are digested
_session: setup.Session | None = None  # set while main() runs a distributed run in this process
SIGTERM_GRACE_S = 5.0  # seconds between torchrun's SIGTERM and this process's exit (see _deferred_exit)
_exit_timer = None


def executor_options(cfg: DictConfig) -> dict:
    """The ``build_executor`` keywords of ``execution.mode=distributed`` (the runner's hook).

    Raises:
        ConfigError: not inside :func:`main` (a distributed run started another way: the
            API, ``--multirun``, ``compare``), with the launch command to use.
    """
    if _session is None:
        raise ConfigError(f"execution.mode=distributed runs only as `fedtorch run` under torchrun: {setup.LAUNCH_HINT}")
    e = cfg.execution
    return {"worker_mode": e.worker_mode, "server_trains": e.server_trains, "session": _session}  # edges: in the session


def settings_problem(cfg: DictConfig, env: setup.LaunchEnv) -> str | None:
    """What stops this rank from taking part, or None (checked before any data is loaded)."""
    e = cfg.execution
    if e.worker_mode not in EXECUTORS:
        return f"execution.worker_mode={e.worker_mode!r} is not allowed: use one of {', '.join(EXECUTORS)}"
    if not e.timeout_s > 0:
        return f"execution.timeout_s={e.timeout_s!r} is not allowed: must be > 0 (seconds)"
    if e.edges:
        training = env.world_size - (0 if e.server_trains else 1)
        if e.edges > training:
            return (f"execution.edges={e.edges} is not allowed: more edges than the {training} training rank(s) of "
                    f"WORLD_SIZE={env.world_size} (execution.server_trains={str(e.server_trains).lower()}); "
                    "use at most that many, or start more processes")
        if cfg.federation.mode == "async":
            return "execution.edges is for synchronous rounds: with federation.mode=async set execution.edges=0"
    if cfg.federation.mode == "async" and cfg.federation.clock == "wall":  # one client in flight per worker rank
        from fedtorch.federation.wallclock_async import wall_clock_problem

        if problem := wall_clock_problem(cfg.federation.concurrency, env.world_size - 1, cfg.data.num_clients):
            return problem
    if e.device.startswith("cuda"):
        if e.device != "cuda":
            return (f"execution.device={e.device!r} is not allowed with execution.mode=distributed: use cuda "
                    "(rank r then uses cuda:<LOCAL_RANK>, with NCCL)")
        if not torch.cuda.is_available():
            return f"execution.device=cuda but rank {env.rank} (local rank {env.local_rank}) has no CUDA device; use cpu (gloo)"
        if env.local_rank >= torch.cuda.device_count():
            return f"rank {env.rank} has local rank {env.local_rank} but its node has {torch.cuda.device_count()} GPU(s)"
    return None


def fingerprint(cfg: DictConfig, prep) -> dict:
    """What must agree between ranks: ``{"config": {key: value}, "versions": ..., "data": sha256}``.

    The config is the resolved one, flattened, without :data:`PER_NODE_KEYS`; the data digest
    covers the shapes and dtypes of the training and test tensors, every label, up to 256
    evenly spaced input rows of each set, and the split (every client's sample indices,
    the held-out ones too).
    """
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    config = {k: v for k, v in flat.items() if not any(k == p or k.startswith(p) for p in PER_NODE_KEYS)}
    ds, h = prep.data.data, hashlib.sha256()
    for t in (ds.train_x, ds.test_x):
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(_bytes(t[torch.linspace(0, len(t) - 1, min(len(t), 256)).long()] if len(t) else t))
    for t in (ds.train_y, ds.test_y):
        h.update(_bytes(t))
    parts = prep.data.client_indices
    if hasattr(parts, "flat"):  # ClientIndices: one flat tensor and the sizes, not N small ones
        h.update(_bytes(parts.flat))
        h.update(parts.sizes.tobytes())
    else:
        for i in range(len(parts)):
            h.update(_bytes(parts[i]))
    for p in prep.holdout or []:
        h.update(_bytes(p))
    return {"config": config, "versions": (torch.__version__, fedtorch.__version__), "data": h.hexdigest()}


def mismatch(prints: list[dict]) -> str | None:
    """The first way a rank's :func:`fingerprint` differs from rank 0's, or None."""
    ref = prints[0]
    for r, fp in enumerate(prints[1:], start=1):
        if fp["versions"] != ref["versions"]:
            return f"rank {r} runs torch/fedtorch {fp['versions']}, rank 0 {ref['versions']}; install the same versions on every node"
        keys = sorted(set(fp["config"]) | set(ref["config"]))
        diff = [k for k in keys if fp["config"].get(k) != ref["config"].get(k)]
        if diff:
            k = diff[0]
            return (f"rank {r}'s config differs from rank 0's: {k}={fp['config'].get(k)!r} (rank 0: "
                    f"{ref['config'].get(k)!r}); start every rank with the same experiment and overrides")
        if fp["data"] != ref["data"]:
            return (f"rank {r}'s data or split differ from rank 0's (digest {fp['data'][:12]} vs {ref['data'][:12]}); "
                    "every node needs the same data files")
    return None


def main(cfg: DictConfig, folder: Path | None, report: Callable[[Path, dict], int], resume_dir: Path | None = None) -> int:
    """Run this process's part of a distributed run (module docstring); the exit code.

    Args:
        cfg: the validated config (``execution.mode=distributed``).
        folder: the experiment folder (None for a resumed run).
        report: rank 0's ``(run_dir, result) -> exit code`` (the CLI's summary).
        resume_dir: continue this run directory from its checkpoint (every rank must be
            able to read its ``config.yaml``).

    Raises:
        ConfigError: on rank 0, bad input found on any rank before training (one line).
    """
    env = _launch_env()
    attempt = restart.current_attempt()  # torchrun --max-restarts: which start of the group (distributed_restart)
    if env.rank == 0:
        restart.forget_stale_marker(cfg.output_dir, folder, attempt)
    previous = signal.signal(signal.SIGTERM, _deferred_exit)
    restart.join(env, cfg.execution.timeout_s, attempt)  # setup.join, each attempt's store keys apart
    try:
        return run_in_session(env, cfg, folder, report, resume_dir)
    finally:
        setup.stop()
        signal.signal(signal.SIGTERM, previous)


def _deferred_exit(signum, frame) -> None:
    """SIGTERM (torchrun stopping the group after one rank died): exit :data:`SIGTERM_GRACE_S`
    seconds later, not at once, so that rank 0 first names the rank that failed (it sees
    that rank's connection close) and tells the live workers to stop."""
    global _exit_timer
    if _exit_timer is None:
        _exit_timer = threading.Timer(SIGTERM_GRACE_S, os._exit, (128 + signum,))
        _exit_timer.daemon = True
        _exit_timer.start()


def run_in_session(env: setup.LaunchEnv, cfg: DictConfig, folder: Path | None, report: Callable[[Path, dict], int],
                   resume_dir: Path | None = None) -> int:
    """Steps 2-4 of the module docstring in a process that has joined the process group
    (:func:`main`; a test may run several runs in one group). Every rank must call it with
    the same run. Returns this rank's exit code; raises ConfigError on rank 0 as :func:`main`."""
    global _session
    executor, code = None, 1  # the workers' exit code when rank 0 stops them: 1 unless the run finished
    try:
        _agree(env, settings_problem(cfg, env) or _resume_problem(cfg, env, resume_dir))
        _agree(env, _topology_problem(env, cfg))  # the process groups below need one topology on every rank
        e = cfg.execution
        _session = setup.open_session(env, e.device, e.timeout_s, e.edges, e.server_trains)
        prep = _prepare(cfg, env)
        executor = prep.executor
        if env.rank != 0:
            return executor.serve(prep.algorithm)
        code = _lead(prep, folder, report, resume_dir)
        return code
    except PeerError as e:
        print(f"error: distributed run stopped: {e}", file=sys.stderr)
        return 1
    except _Quiet as q:
        return q.code
    except KeyboardInterrupt:  # Ctrl-C reaches every process of torchrun's group; rank 0 says how to resume
        if env.rank == 0:
            raise
        return 130
    finally:
        if executor is not None and env.rank == 0:
            executor.stop(code)  # also on rank 0's errors and Ctrl-C: no worker waits for a timeout
        _session = None


class _Quiet(Exception):
    """A worker rank's exit after a problem that rank 0 reports."""

    def __init__(self, code: int):
        self.code = code


def _launch_env() -> setup.LaunchEnv:
    try:
        env = setup.launch_env()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if env is None:
        raise ConfigError(f"execution.mode=distributed needs torchrun (RANK and WORLD_SIZE are not set): {setup.LAUNCH_HINT}")
    if env.world_size < 2:
        raise ConfigError(f"execution.mode=distributed with WORLD_SIZE={env.world_size}: rank 0 and at least one worker "
                          "are needed; start 2 or more processes (torchrun --nproc-per-node 3 ...), or use execution.mode=serial")
    return env


def _agree(env: setup.LaunchEnv, problem: str | None) -> None:
    """Every rank's ``problem`` to every rank; any -> ConfigError on rank 0, a quiet exit 2 elsewhere."""
    problems = [None] * env.world_size
    dist.all_gather_object(problems, problem)
    first = next((p for p in problems if p), None)
    if first is not None:
        if env.rank == 0:
            raise ConfigError(first)
        raise _Quiet(2)


def _topology_problem(env: setup.LaunchEnv, cfg: DictConfig) -> str | None:
    """On rank 0: the first rank whose ``execution.edges`` / ``server_trains`` differ from
    rank 0's (collective: every rank calls it)."""
    mine = (cfg.execution.edges, cfg.execution.server_trains)
    tops = [None] * env.world_size
    dist.all_gather_object(tops, mine)
    for r, top in enumerate(tops):
        if env.rank == 0 and top != tops[0]:
            return (f"rank {r}'s config differs from rank 0's: execution.edges, execution.server_trains = {top} "
                    f"(rank 0: {tops[0]}); start every rank with the same experiment and overrides")
    return None


def _resume_problem(cfg: DictConfig, env: setup.LaunchEnv, resume_dir: Path | None) -> str | None:
    if resume_dir is None or env.rank != 0:
        return None
    from fedtorch.experiment.run_dirs import check_resumable

    try:
        check_resumable(cfg, resume_dir)
    except ConfigError as e:
        return str(e)
    return None


def _prepare(cfg: DictConfig, env: setup.LaunchEnv):
    """:func:`~fedtorch.experiment.runner.prepare` on every rank, then the fingerprint check."""
    from fedtorch.experiment import runner

    prep, problem = None, None
    try:
        prep = runner.prepare(cfg)
    except ConfigError as e:
        problem = f"rank {env.rank}: {e}"
    _agree(env, problem)
    prints = [None] * env.world_size
    dist.all_gather_object(prints, fingerprint(cfg, prep))
    _agree(env, mismatch(prints) if env.rank == 0 else None)
    return prep


def _lead(prep, folder: Path | None, report: Callable[[Path, dict], int], resume_dir: Path | None) -> int:
    """Rank 0: the normal run (new or resumed) with the distributed executor, then the traffic log."""
    from fedtorch import api
    from fedtorch.experiment import runner

    prep.executor.bind(prep.algorithm)
    attempt = restart.current_attempt()
    run_dir, resume = restart.open_run_dir(prep, folder, resume_dir, attempt)  # attempt > 0: the first one's
    print(f"run directory: {run_dir}\nexecution: {prep.executor.description}", flush=True)
    try:
        result = api.finish(prep, run_dir, resume=resume)
    except KeyboardInterrupt:
        print(f"\n{runner.interrupted_hint(prep.cfg, run_dir)} (under torchrun, as it was started)", file=sys.stderr)
        return 130
    finally:
        _write_traffic(Path(run_dir), prep.executor.traffic)
    return report(Path(run_dir), restart.finish(run_dir, result.result, folder, prep.cfg.output_dir, attempt))


def _write_traffic(run_dir: Path, traffic: list) -> None:
    """Append this process's rounds to ``distributed_traffic.jsonl`` (atomically rewritten)."""
    path = run_dir / TRAFFIC_NAME
    old = path.read_text() if path.is_file() else ""
    write_text(path, old + "".join(json.dumps(t.row()) + "\n" for t in traffic))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
