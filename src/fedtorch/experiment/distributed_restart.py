"""Elastic restarts of a distributed run: ``torchrun --max-restarts k`` continues the same run.

When one process of a torchrun group dies (``kill -9``, a crash, a lost node), the others
stop with a non-zero exit (the lost peer is a :class:`~fedtorch.execution.distributed_wire.PeerError`,
exit 1) and torchrun, while it has restarts left, starts the whole group again with the
same command line and ``TORCHELASTIC_RESTART_COUNT`` one higher. This module lets rank 0
of every later attempt find the run directory of the first attempt and continue it from its
last checkpoint; the other ranks need nothing: they rejoin and serve. The settings, config
and data fingerprint checks of :mod:`fedtorch.experiment.distributed_run` run again on
every attempt.

How an attempt finds the run directory (rank 0 only, :func:`open_run_dir`):

- **Attempt 0** (``TORCHELASTIC_RESTART_COUNT=0``) creates the run directory as every run
  does. Under ``--max-restarts k > 0`` it then writes a round-0 checkpoint (the initial
  server state, no client state), so that every later attempt can resume, even one that
  follows a kill in round 1; then the **marker** ``<output_dir>/<DATASET>/<folder>/.torchrun-<id>.json``
  (atomically), holding the run directory. ``<id>`` is torchrun's ``TORCHELASTIC_RUN_ID``,
  the same for every attempt of one launch: a fresh UUID with ``--standalone``, the
  ``--rdzv-id`` given otherwise; without one torchrun says ``none``, and the key becomes
  ``none-<host>-<torchrun's pid>`` (unique on one machine; a multi-node run must pass a
  ``--rdzv-id``). A stale marker of that id is removed when attempt 0 starts
  (:func:`forget_stale_marker`).
- **Attempt n > 0** reads the marker and resumes that directory from its checkpoint
  (``checkpoint.pt``, or ``checkpoint.prev.pt`` when the newest is damaged): the runner's
  resume drops the metrics rows past the checkpoint, so every round is logged exactly once;
  this module also drops those rows of ``distributed_traffic.jsonl`` (synchronous runs; an
  asynchronous run's rows count dispatch waves, not the server versions a checkpoint covers). A directory whose
  ``config.yaml`` is not this launch's config (a marker of another launch reusing the
  ``--rdzv-id``), or that cannot be resumed, is left alone; so is a missing marker (rank 0
  died before writing it): a new run starts, with a one-line warning.
- ``fedtorch run --resume <dir>`` under ``--max-restarts``: every attempt resumes ``<dir>``.

The record (:data:`RESTARTS_NAME`, :func:`finish`): each later attempt appends one row to
``<run_dir>/restarts.jsonl``: ``attempt`` (torchrun's restart count), ``run_id``,
``checkpoint_round`` (the rounds the checkpoint it resumed from covers) and
``logged_rounds`` (metrics rows on disk when it started: the rounds past the checkpoint are
redone), ``time``. ``result.json`` gets ``"restarts": <rows of restarts.jsonl>`` (0 for an
uninterrupted distributed run). ``metrics.jsonl`` stays row for row what an uninterrupted
run writes. When the run is finished the marker is removed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from fedtorch.experiment.atomic import write_text
from fedtorch.experiment.checkpoint import read_checkpoint, save_checkpoint
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.logfiles import read_jsonl
from fedtorch.experiment.paths import experiment_output_dir, timestamp
from fedtorch.experiment.run_files import CONFIG_NAME

RESTARTS_NAME = "restarts.jsonl"
MARKER_PREFIX = ".torchrun-"


@dataclass(frozen=True)
class Attempt:
    """Which start of the torchrun group this process belongs to.

    Attributes:
        restart: ``TORCHELASTIC_RESTART_COUNT``: 0 on the first attempt (and outside torchrun).
        max_restarts: ``TORCHELASTIC_MAX_RESTARTS`` (``--max-restarts``; 0 when unset).
        run_id: the key of this launch's marker (module docstring).
    """

    restart: int
    max_restarts: int
    run_id: str

    @property
    def elastic(self) -> bool:
        """Whether torchrun may restart the group (``--max-restarts`` > 0)."""
        return self.max_restarts > 0


def current_attempt() -> Attempt:
    """The :class:`Attempt` of this process, from torchrun's environment.

    Raises:
        ConfigError: ``TORCHELASTIC_RESTART_COUNT`` or ``TORCHELASTIC_MAX_RESTARTS`` is not an integer.
    """
    values = {}
    for key in ("TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS"):
        raw = os.environ.get(key, "0")
        try:
            values[key] = int(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not an integer (torchrun sets it); start the run with torchrun") \
                from None
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id == "none":  # no --rdzv-id: unique per torchrun agent on this machine
        run_id = f"none-{socket.gethostname()}-{os.getppid()}"
    return Attempt(values["TORCHELASTIC_RESTART_COUNT"], values["TORCHELASTIC_MAX_RESTARTS"], run_id)


def join(env, timeout_s: float, attempt: Attempt) -> None:
    """Join the default (gloo) process group like :func:`fedtorch.execution.distributed_setup.join`,
    with this attempt's keys apart from the earlier attempts'.

    torchrun's c10d rendezvous lends its own TCP store to the workers (``MASTER_ADDR``/``MASTER_PORT``)
    and keeps it across restarts, and ``init_process_group`` does not prefix its keys by attempt: a
    restarted rank would read the addresses the dead attempt published and fail to connect
    (``Gloo connectFullMesh failed ... Connection refused``; pytorch/pytorch#135712). So the store is
    wrapped in ``PrefixStore("fedtorch/attempt<n>/")``, ``n`` = ``TORCHELASTIC_RESTART_COUNT`` (the same on
    every rank: torchrun restarts the whole group).

    Args:
        env: the :class:`~fedtorch.execution.distributed_setup.LaunchEnv`.
        timeout_s: ``execution.timeout_s``, on every operation.
        attempt: this process's :class:`Attempt`.

    Raises:
        RuntimeError, ValueError: the rendezvous failed (torch's message).
    """
    import datetime

    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store, _, _ = next(dist.rendezvous("env://", rank=env.rank, world_size=env.world_size, timeout=timeout))
    store = dist.PrefixStore(f"fedtorch/attempt{attempt.restart}/", store)
    dist.init_process_group("gloo", store=store, rank=env.rank, world_size=env.world_size, timeout=timeout)


def marker_path(output_dir: str | Path, folder: Path | None, attempt: Attempt) -> Path:
    """``<output_dir>/<DATASET>/<folder>/.torchrun-<run id>.json`` (the id made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", attempt.run_id)
    return experiment_output_dir(output_dir, folder) / f"{MARKER_PREFIX}{safe}.json"


def forget_stale_marker(output_dir: str | Path, folder: Path | None, attempt: Attempt) -> None:
    """Rank 0 of attempt 0, at start-up: remove a marker an earlier launch with the same
    run id left behind (it ended without finishing), so a restart of this launch never
    resumes that run."""
    if attempt.restart == 0 and folder is not None:
        marker_path(output_dir, folder, attempt).unlink(missing_ok=True)


def open_run_dir(prep, folder: Path | None, resume_dir: Path | None, attempt: Attempt) -> tuple[Path, bool]:
    """Rank 0: ``(run directory, resume)`` of this attempt (module docstring).

    Args:
        prep: the prepared run (:class:`~fedtorch.experiment.runner.Prepared`).
        folder: the experiment folder (None with ``--resume``).
        resume_dir: the run directory of ``fedtorch run --resume``, or None.
        attempt: this process's :class:`Attempt`.

    A marker that is unreadable, or names a directory that is gone, holds another config
    (another launch with the same ``--rdzv-id``) or cannot be resumed, starts a new run
    with a one-line warning instead.

    Raises:
        ConfigError: with ``resume_dir``, on a restart, no usable checkpoint there.
    """
    from fedtorch.experiment.run_dirs import check_resumable, new_run_dir

    if resume_dir is not None:
        if attempt.restart > 0:
            record_restart(prep, Path(resume_dir), attempt)
        return Path(resume_dir), True
    marker = marker_path(prep.cfg.output_dir, folder, attempt)
    if attempt.restart > 0:
        why = f"no {marker} (the first attempt stopped before creating its run directory)"
        if marker.is_file():
            try:
                run_dir = _marked_dir(marker, prep.cfg)
                check_resumable(prep.cfg, run_dir)  # e.g. a wall-clock asynchronous run, never resumable
                record_restart(prep, run_dir, attempt)
                return run_dir, True
            except ConfigError as e:
                why = str(e)
        print(f"warning: torchrun restart {attempt.restart}: {why}; starting a new run", file=sys.stderr)
    run_dir = new_run_dir(prep.cfg, folder)
    if attempt.elastic:
        if prep.cfg.federation.mode == "sync":  # resumable from the start (async checkpoints hold the loop's queue)
            from fedtorch.federation import ClientStateStore

            save_checkpoint(run_dir, prep.initial_server(), ClientStateStore().state_dict(), prep.executor.replica.layout)
        write_text(marker, json.dumps({"run_dir": str(Path(run_dir).resolve()), "run_id": attempt.run_id}) + "\n")
    return run_dir, False


def _marked_dir(marker: Path, cfg) -> Path:
    """The run directory a marker names, checked to hold this launch's config."""
    try:
        run_dir = Path(json.loads(marker.read_text())["run_dir"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{marker} is unreadable ({type(e).__name__}); remove it and start the run again") from None
    config = run_dir / CONFIG_NAME
    if not config.is_file() or config.read_text() != OmegaConf.to_yaml(cfg):
        raise ConfigError(f"{marker} names {run_dir}, which is not this launch's run (no {CONFIG_NAME}, or another "
                          "config: another launch used the same --rdzv-id; pass a fresh one)")
    return run_dir


def record_restart(prep, run_dir: Path, attempt: Attempt) -> dict:
    """Append this attempt's row to ``run_dir/restarts.jsonl`` and drop the traffic rows past
    the checkpoint it resumes from; print one line saying so. Returns the row.

    Raises:
        ConfigError: no usable checkpoint (:func:`~fedtorch.experiment.checkpoint.read_checkpoint`'s error).
    """
    from fedtorch.experiment.distributed_run import TRAFFIC_NAME

    with contextlib.redirect_stderr(io.StringIO()):  # a fallback warning is printed once, by the runner's resume
        checkpoint_round = read_checkpoint(run_dir, prep.executor.replica.layout).round
    logged = read_jsonl(run_dir / "metrics.jsonl")
    row = {"attempt": attempt.restart, "run_id": attempt.run_id, "checkpoint_round": checkpoint_round,
           "logged_rounds": len(logged), "time": timestamp()}
    path = run_dir / RESTARTS_NAME
    rows = read_jsonl(path)
    write_text(path, "".join(json.dumps(r) + "\n" for r in [*rows, row]))
    traffic = run_dir / TRAFFIC_NAME
    if traffic.is_file() and prep.cfg.federation.mode == "sync":  # rows: 0-based t; the checkpoint covers t < its round
        kept = [r for r in read_jsonl(traffic) if int(r["round"]) < checkpoint_round]
        write_text(traffic, "".join(json.dumps(r) + "\n" for r in kept))
    print(f"torchrun restart {attempt.restart} of {attempt.max_restarts}: continuing {run_dir} from its checkpoint "
          f"of round {checkpoint_round} ({len(logged) - checkpoint_round} logged round(s) redone)", flush=True)
    return row


def finish(run_dir: Path, result: dict, folder: Path | None, output_dir: str | Path, attempt: Attempt) -> dict:
    """Rank 0 after a finished run: ``result.json`` (and the returned copy of ``result``)
    gets ``"restarts"``, the rows of ``restarts.jsonl``; the launch's marker is removed."""
    from fedtorch.experiment.runner import RESULT_NAME

    run_dir = Path(run_dir)
    result = {**result, "restarts": len(read_jsonl(run_dir / RESTARTS_NAME))}
    write_text(run_dir / RESULT_NAME, json.dumps(result, indent=2) + "\n")
    if folder is not None:
        marker_path(output_dir, folder, attempt).unlink(missing_ok=True)
    return result
