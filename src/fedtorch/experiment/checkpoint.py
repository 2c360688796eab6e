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


def save_checkpoint(run_dir: Path, server: ServerState, client_states: dict, layout: ParamLayout | None = None) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically; returns its path.

    ``layout`` (the replicas' :class:`~fedtorch.flat.ParamLayout`) is recorded so that a
    resume can refuse flat vectors whose element order it would misread.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    payload = {
        "round": server.round,
        "server": {"x": server.x.cpu(), "opt": server.opt, "extra": server.extra, "round": server.round},
        "clients": client_states,
    }
    if layout is not None:
        payload["layout"] = layout_signature(layout)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def layout_signature(layout: ParamLayout) -> dict:
    """Names, shapes and element order of a flat vector, as plain lists."""
    return {"names": list(layout.names), "shapes": [list(s) for s in layout.shapes], "channels_last": list(layout.channels_last)}


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


def load_checkpoint(run_dir: Path, layout: ParamLayout | None = None) -> tuple[ServerState, dict]:
    """Read ``run_dir/checkpoint.pt``: (server state, client states).

    Args:
        run_dir: the run directory.
        layout: if given, the layout the resumed run will use; the checkpoint's must be
            the same (a checkpoint without one was written with every parameter in the
            usual order).

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        ValueError: the checkpoint's parameter layout differs from ``layout``.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT_NAME}: nothing to resume")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if layout is not None:
        expected = layout_signature(layout)
        stored = payload.get("layout") or {**expected, "channels_last": [False] * len(expected["names"])}
        if stored != expected:
            raise ValueError(
                f"{path}: its flat parameter vectors were written with another parameter layout "
                f"({_describe(stored)}) than this fedtorch uses for the run's model ({_describe(expected)}); "
                "resume it with the fedtorch version that wrote it, or start the run again"
            )
    s = payload["server"]
    return ServerState(x=s["x"], opt=s["opt"], extra=s["extra"], round=s["round"]), payload["clients"]


def _describe(signature: dict) -> str:
    cl = sum(signature["channels_last"])
    return f"{len(signature['names'])} parameters, {cl} stored channels-last"
