"""Checkpoints: the server state and the client-state store, the last two kept, each
verified by its sha256.

Every random draw in fedtorch is derived from ``(seed, round, client, purpose)``, so no
RNG state needs saving: restoring the server state and client states after round k and
running rounds k+1.. reproduces the uninterrupted run bit for bit.

Files in a run directory:

- ``checkpoint.pt``: the newest checkpoint; ``checkpoint.prev.pt``: the one before it;
- ``checkpoint.json``: the manifest, a list of ``{"file", "sha256", "bytes", "round"}``
  entries. A checkpoint file *verifies* when its sha256 is the digest of an entry,
  whichever entry (the name in an entry is informative only).

The save sequence (:func:`save_checkpoint`); every rename is followed by an fsync of the
directory, and a file is fsynced before it is renamed:

1. ``torch.save`` into a fresh temporary file ``T``, hashing the bytes as they are written.
2. Rewrite the manifest (atomically: temp file, fsync, rename, fsync of the directory) as
   the entries it had **plus** ``T``'s digest.
3. If ``checkpoint.pt`` verifies: rename it to ``checkpoint.prev.pt``. (One that does not,
   e.g. the damaged newest a resume fell back from, is not rotated: the good
   ``checkpoint.prev.pt`` stays.)
4. fsync ``T``, rename it to ``checkpoint.pt``.
5. Rewrite the manifest as exactly the two files now there.

Why a SIGKILL (or a power cut) at any moment leaves a checkpoint that verifies: the
invariant is that each of the two names is absent or holds bytes whose digest is in the
durable manifest. Step 2 adds ``T``'s digest before ``T`` gets a name (step 4); a digest
leaves the manifest (step 5) only after no name holds those bytes. Renames are atomic,
so a name holds the old bytes or the new, never a mix. Before step 3 both old files are
in place; between 3 and 4 ``checkpoint.prev.pt`` holds the old newest; from 4 on
``checkpoint.pt`` holds the new one. Killed before step 4, the run resumes from the
previous checkpoint (at most the rounds since it are redone; the metrics rows beyond it
are truncated). Stale temporary files are removed by the next save.

To decide step 3 without reading the file back, ``checkpoint.pt`` is trusted when its
size and modification time are the ones the manifest recorded when it was written (any
rewrite or truncation changes them); otherwise it is hashed.

:func:`read_checkpoint` verifies ``checkpoint.pt`` and falls back to
``checkpoint.prev.pt`` with a one-line warning on stderr; a checkpoint written by another
fedtorch version or for another parameter layout is refused, not skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import fedtorch
from fedtorch.experiment.atomic import atomic_file, atomic_path, remove_stale_temps, replace, write_text
from fedtorch.experiment.errors import ConfigError
from fedtorch.flat import FlatModule, ParamLayout
from fedtorch.protocol import ServerState

CHECKPOINT_NAME = "checkpoint.pt"
PREV_CHECKPOINT_NAME = "checkpoint.prev.pt"
MANIFEST_NAME = "checkpoint.json"
MODEL_NAME = "model.pt"


class CheckpointError(ConfigError):
    """No checkpoint of a run directory can be used: both damaged, or one written by
    another fedtorch version or for another parameter layout. The CLI prints it as one
    ``error:`` line (exit 2)."""


@dataclass
class Checkpoint:
    """A checkpoint read back by :func:`read_checkpoint`.

    Attributes:
        server: the server state after round ``round`` (``x`` of shape ``(P,)``, on the CPU).
        clients: the client-state store's ``state_dict()``.
        extra: the ``extra`` dict given to :func:`save_checkpoint` (None if none was).
        round: the rounds (server versions) it covers.
        path: the file it came from (``checkpoint.pt``, or ``checkpoint.prev.pt`` after a fallback).
    """

    server: ServerState
    clients: dict
    extra: dict | None
    round: int
    path: Path


def save_checkpoint(run_dir: Path, server: ServerState, client_states: dict, layout: ParamLayout | None = None,
                    extra: dict | None = None) -> Path:
    """Write ``run_dir/checkpoint.pt`` (the previous one kept as ``checkpoint.prev.pt``)
    by the crash-safe sequence of this module's docstring; returns its path.

    Args:
        run_dir: the run directory.
        server: the server state (``x``: ``(P,)``).
        client_states: the client-state store's ``state_dict()``.
        layout: the replicas' :class:`~fedtorch.flat.ParamLayout`, recorded so that a
            resume can refuse flat vectors whose element order it would misread.
        extra: stored verbatim; tensors, ints, floats, str, bool, None, lists, dicts and
            tuples only (it is read back with ``torch.load(weights_only=True)``).

    Raises:
        OSError: a write failed (``filename`` names the file); the checkpoints already
            there are left as they were or rotated, and still verify.
    """
    run_dir = Path(run_dir)
    newest, prev = run_dir / CHECKPOINT_NAME, run_dir / PREV_CHECKPOINT_NAME
    payload = {
        "round": server.round,
        "fedtorch": fedtorch.__version__,
        "server": {"x": server.x.cpu(), "opt": server.opt, "extra": server.extra, "round": server.round,
                   "buffers": None if server.buffers is None else server.buffers.cpu(),
                   "loop": {k: v.cpu() for k, v in server.loop.items()}},
        "clients": client_states,
        "extra": extra,
    }
    if layout is not None:
        payload["layout"] = layout_signature(layout)
    remove_stale_temps(newest)
    remove_stale_temps(run_dir / MANIFEST_NAME)
    entries = _read_manifest(run_dir) or []
    with atomic_file(newest) as f:  # 1. (renamed to checkpoint.pt in step 4, on leaving the block)
        torch.save(payload, f)
        new = {"file": CHECKPOINT_NAME, "sha256": f.sha256.hexdigest(), "bytes": f.bytes, "round": server.round}
        _write_manifest(run_dir, [new, *entries])  # 2.
        old_newest = _entry_of(newest, entries)
        if old_newest is not None:
            replace(newest, prev)  # 3.
            kept = {**old_newest, "file": PREV_CHECKPOINT_NAME}
        else:
            kept = _entry_of(prev, entries)
        mtime_ns = os.fstat(f.fd).st_mtime_ns
    # 4. done by atomic_file: rename T to checkpoint.pt, fsync the directory
    _write_manifest(run_dir, [{**new, "mtime_ns": mtime_ns}, *([kept] if kept else [])])  # 5.
    return newest


def layout_signature(layout: ParamLayout) -> dict:
    """Names, shapes and element order of a flat vector, as plain lists."""
    return {"names": list(layout.names), "shapes": [list(s) for s in layout.shapes], "channels_last": list(layout.channels_last)}


def model_state(replica: FlatModule, x: torch.Tensor, buffers: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The plain ``state_dict`` (CPU tensors, the module's dtypes) of the flat model ``x``
    (``(P,)``) and its buffers (``(Q,)``; required when the model has any) in ``replica``'s
    layouts.

    Raises:
        ValueError: the model has buffers and ``buffers`` is None.
    """
    state = replica.layout.state_dict(x, replica.module)
    if replica.buffer_layout.numel:
        if buffers is None:
            raise ValueError("the model has buffers (BatchNorm statistics) but none were given")
        state.update(replica.buffer_layout.state_dict(buffers, replica.module))
    return state


def save_model(run_dir: Path, replica: FlatModule, x: torch.Tensor, buffers: torch.Tensor | None = None) -> Path:
    """Write the global model ``x`` (``(P,)``, fedtorch's flat layout) and its buffers
    (``(Q,)``) as a plain ``state_dict`` (:func:`model_state`) to ``run_dir/model.pt``,
    atomically; returns its path.

    Load it with ``model.load_state_dict(torch.load(path))`` into the model the run used
    (``fedtorch.models.build_model(name, input_shape, num_classes)``).

    Raises:
        OSError: the write failed (``filename`` names the file).
    """
    path = Path(run_dir) / MODEL_NAME
    state = model_state(replica, x, buffers)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def read_checkpoint(run_dir: Path, layout: ParamLayout | None = None) -> Checkpoint:
    """The newest checkpoint of ``run_dir`` that verifies.

    ``checkpoint.pt`` is checked (present, sha256 in ``checkpoint.json``, loadable); if it
    fails, one line on stderr names it and why, and ``checkpoint.prev.pt`` is used. A run
    directory without a manifest (written by an older fedtorch) is read unverified.

    Args:
        run_dir: the run directory.
        layout: if given, the layout the resumed run will use; the checkpoint's must be
            the same (a checkpoint without one was written with every parameter in the
            usual order).

    Raises:
        CheckpointError: no checkpoint at all, both damaged (the message names each file
            and its problem), or the checkpoint used was written by another fedtorch
            version or for another parameter layout.
    """
    run_dir = Path(run_dir)
    entries = _read_manifest(run_dir)
    problems = []
    for name in (CHECKPOINT_NAME, PREV_CHECKPOINT_NAME):
        path = run_dir / name
        payload, problem = _load_verified(path, entries)
        if problem is None:
            if problems:
                print(f"warning: {problems[0]}; resuming from {path} (round {payload['round']})", file=sys.stderr)
            return _checkpoint(path, payload, layout)
        problems.append(f"{path} {problem}")
    if all(p.endswith(" is missing") for p in problems):
        raise CheckpointError(f"{run_dir} has no {CHECKPOINT_NAME}: nothing to resume "
                              "(the run stopped before its first checkpoint); run it again")
    raise CheckpointError(f"no usable checkpoint: {problems[0]}, and {problems[1]}; "
                          "the run cannot be resumed: start it again")


def load_checkpoint(run_dir: Path, layout: ParamLayout | None = None) -> tuple[ServerState, dict]:
    """``(server state, client states)`` of :func:`read_checkpoint` (same arguments and errors)."""
    c = read_checkpoint(run_dir, layout)
    return c.server, c.clients


def _checkpoint(path: Path, payload: dict, layout: ParamLayout | None) -> Checkpoint:
    version = payload.get("fedtorch")
    if version is not None and version != fedtorch.__version__:
        raise CheckpointError(
            f"{path} was written by fedtorch {version}, this is fedtorch {fedtorch.__version__}; "
            f"resume it with fedtorch {version}, or start the run again"
        )
    if layout is not None:
        expected = layout_signature(layout)
        stored = payload.get("layout") or {**expected, "channels_last": [False] * len(expected["names"])}
        if stored != expected:
            raise CheckpointError(
                f"{path}: its flat parameter vectors were written with another parameter layout "
                f"({_describe(stored)}) than this fedtorch uses for the run's model ({_describe(expected)}); "
                "resume it with the fedtorch version that wrote it, or start the run again"
            )
    s = payload["server"]
    server = ServerState(x=s["x"], opt=s["opt"], extra=s["extra"], round=s["round"], buffers=s.get("buffers"),
                         loop=s.get("loop", {}))
    return Checkpoint(server=server, clients=payload["clients"], extra=payload.get("extra"), round=payload["round"], path=path)


def _load_verified(path: Path, entries: list[dict] | None) -> tuple[dict | None, str | None]:
    """``(payload, None)``, or ``(None, what is wrong)`` for a missing or damaged file."""
    if not path.is_file():
        return None, "is missing"
    if entries is not None:
        digest, size = _sha256(path)
        if digest not in {e.get("sha256") for e in entries}:
            recorded = [e["bytes"] for e in entries if e.get("file") == path.name and isinstance(e.get("bytes"), int)]
            if recorded and size < min(recorded):
                return None, f"is truncated ({size} bytes; {MANIFEST_NAME} records {min(recorded)})"
            return None, f"is corrupt (its sha256 is not in {MANIFEST_NAME})"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...: torch raises many types
        return None, f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if not (isinstance(payload, dict) and isinstance(payload.get("server"), dict) and "round" in payload):
        return None, "is not a fedtorch checkpoint"
    return payload, None


def _sha256(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _entry_of(path: Path, entries: list[dict]) -> dict | None:
    """The manifest entry of ``path``'s bytes if ``path`` verifies (trusted without
    reading when size and mtime are the recorded ones), else None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    for e in entries:
        if e.get("file") == path.name and e.get("bytes") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns:
            return e
    digest, _ = _sha256(path)
    return next((e for e in entries if e.get("sha256") == digest), None)


def _read_manifest(run_dir: Path) -> list[dict] | None:
    """The manifest's entries; None when it is missing or unreadable (checkpoints are then
    read unverified)."""
    path = Path(run_dir) / MANIFEST_NAME
    try:
        entries = json.loads(path.read_text())["checkpoints"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"warning: {path} is unreadable ({type(e).__name__}); checkpoints are read without checksum", file=sys.stderr)
        return None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else None


def _write_manifest(run_dir: Path, entries: list[dict]) -> None:
    write_text(Path(run_dir) / MANIFEST_NAME, json.dumps({"format": 1, "checkpoints": entries}, indent=1) + "\n")


def _describe(signature: dict) -> str:
    cl = sum(signature["channels_last"])
    return f"{len(signature['names'])} parameters, {cl} stored channels-last"
