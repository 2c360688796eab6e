"""Start-up of ``execution.mode=distributed``: torchrun's environment and the process groups.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in every process it starts (:func:`launch_env` reads them). The default
process group is **gloo** (:func:`join`; the start-up checks are collectives on it). Each
worker r then talks to rank 0 on a group of its own, {0, r} (:func:`open_session`): gloo
for headers, and for payloads on the CPU; NCCL for payloads when ``execution.device`` is a
GPU, rank r then using ``cuda:<LOCAL_RANK>``. With ``execution.edges=E`` each member of an
edge also gets such a pair with its leader (:mod:`fedtorch.execution.distributed_edges`),
unless the leader is rank 0. Every group gets ``execution.timeout_s``:
gloo waits are bounded per call (:mod:`fedtorch.execution.distributed_wire`); NCCL relies
on its watchdog (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default) to turn a hung
transfer into an error.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

LAUNCH_HINT = ("start it with torchrun, e.g. torchrun --standalone --nproc-per-node 3 .venv/bin/fedtorch run "
               "<folder> execution.mode=distributed (docs/distributed.md)")


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun told this process.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes over all nodes.
        local_rank: rank on this node (the GPU index with NCCL).
    """

    rank: int
    world_size: int
    local_rank: int


@dataclass(frozen=True)
class Session:
    """A started distributed run: this process's place and its links' process groups.

    Attributes:
        env: the :class:`LaunchEnv`.
        control: peer rank -> the gloo group of the pair {0, peer} (headers; payloads on
            the CPU). One group per pair: gloo closes every connection of a group after a
            timeout, and rank 0 must still reach the other workers to stop them.
        data: peer rank -> the NCCL group of the pair (payloads on GPUs); empty on the CPU.
        timeout_s: ``execution.timeout_s``.
        edges: the edges' training ranks, leader first (``[]``: no edges).
    """

    env: LaunchEnv
    control: dict
    data: dict
    timeout_s: float
    edges: list = dataclasses.field(default_factory=list)


def launch_env() -> LaunchEnv | None:
    """torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; None outside torchrun (either unset).

    Raises:
        ValueError: a variable that is not an integer.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return LaunchEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ValueError(f"RANK={os.environ['RANK']!r}, WORLD_SIZE={os.environ['WORLD_SIZE']!r}: not integers; {LAUNCH_HINT}") from None


def join(env: LaunchEnv, timeout_s: float) -> None:
    """Join the default (gloo) process group with ``timeout_s`` on every operation.

    Raises:
        RuntimeError, ValueError: the rendezvous failed (torch's message).
    """
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s), rank=env.rank,
                            world_size=env.world_size)


def open_session(env: LaunchEnv, device: str, timeout_s: float, edges: int = 0, server_trains: bool = True) -> Session:
    """The :class:`Session` of a joined process: the pair groups {0, r} of every worker r,
    and {leader, member} of every edge led by a worker (gloo; NCCL too for a GPU ``device``,
    after pinning this process to ``cuda:<local_rank>`` so that ``"cuda"`` means that GPU
    everywhere in the run). Collective: every rank calls it with the same ``edges`` and
    ``server_trains``.

    Raises:
        ValueError: more ``edges`` than training ranks.
    """
    from fedtorch.execution.distributed_edges import edge_groups

    timeout = datetime.timedelta(seconds=timeout_s)
    me = env.rank
    gpu = device.startswith("cuda")
    if gpu:
        torch.cuda.set_device(env.local_rank)
    groups = edge_groups(([0] if server_trains else []) + list(range(1, env.world_size)), edges)
    pairs = [(0, r) for r in range(1, env.world_size)] + [(g[0], m) for g in groups if g[0] != 0 for m in g[1:]]
    control, data = {}, {}
    for a, b in pairs:  # every rank creates every group, in one order (new_group is collective)
        g = dist.new_group([a, b], timeout=timeout, backend="gloo")
        d = dist.new_group([a, b], timeout=timeout, backend="nccl") if gpu else None
        if me in (a, b):
            peer = b if me == a else a
            control[peer] = g
            if gpu:
                data[peer] = d
    return Session(env, control, data, timeout_s, groups)


def stop() -> None:
    """Leave the process group(s), if joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
