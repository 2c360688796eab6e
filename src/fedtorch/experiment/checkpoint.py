"""Checkpoints: the server state and the client-state store, saved atomically.

Every random draw in fedtorch is derived from ``(seed, round, client, purpose)``, so no
RNG state needs saving: restoring the server state and client states after round k and
running rounds k+1.. reproduces the uninterrupted run bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedtorch.experiment.atomic import atomic_path
from fedtorch.flat import ParamLayout
from fedtorch.protocol import ServerState

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"


def save_checkpoint(run_dir: Path, server: ServerState, client_states: dict) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically; returns its path."""
    path = Path(run_dir) / CHECKPOINT_NAME
    payload = {
        "round": server.round,
        "server": {"x": server.x.cpu(), "opt": server.opt, "extra": server.extra, "round": server.round},
        "clients": client_states,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def save_model(run_dir: Path, layout: ParamLayout, x: torch.Tensor) -> Path:
    """Write the global model ``x`` (``(P,)``, fedtorch's flat layout) as a plain
    ``state_dict`` to ``run_dir/model.pt``, atomically; returns its path.

    Load it with ``model.load_state_dict(torch.load(path))`` into the model the run used
    (``fedtorch.models.build_model(name, input_shape, num_classes)``).
    """
    path = Path(run_dir) / MODEL_NAME
    state = {name: t.detach().cpu().contiguous().clone() for name, t in layout.unflatten(x).items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(run_dir: Path) -> tuple[ServerState, dict]:
    """Read ``run_dir/checkpoint.pt``: (server state, client states).

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT_NAME}: nothing to resume")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    s = payload["server"]
    return ServerState(x=s["x"], opt=s["opt"], extra=s["extra"], round=s["round"]), payload["clients"]
