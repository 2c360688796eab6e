"""A run directory's identity files, checked before a resume, and the one message for
an :class:`OSError` met while writing run files.

``config.yaml`` holds the resolved configuration; ``run.json`` records who wrote the run
(fedtorch, torch and Python versions, seeds) and the sha256 of ``config.yaml``, so that a
resume can tell a damaged or edited ``config.yaml`` (still valid YAML after a truncation,
say) from the one the run started with, and refuse a run started by another fedtorch.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import fedtorch
from fedtorch.experiment.atomic import write_bytes, write_text
from fedtorch.experiment.errors import ConfigError

CONFIG_NAME = "config.yaml"
RUN_META_NAME = "run.json"
_RESUME_FILES = ("checkpoint.pt", "checkpoint.prev.pt")  # checkpoint.py's names (not imported: no torch here)


def write_run_files(run_dir: Path, config_yaml: str, meta: dict) -> None:
    """Write ``config.yaml`` and ``run.json`` (``meta`` plus ``config_sha256``), atomically.

    Raises:
        OSError: a write failed (``filename`` names the file).
    """
    run_dir = Path(run_dir)
    digest = write_bytes(run_dir / CONFIG_NAME, config_yaml.encode("utf-8"))
    write_text(run_dir / RUN_META_NAME, json.dumps({**meta, "config_sha256": digest}, indent=2) + "\n")


def read_run_meta(run_dir: Path) -> dict:
    """``run.json``, checked: it parses and was written by this fedtorch version.

    Raises:
        ConfigError: missing, unparseable, or written by another fedtorch version (the
            message names both versions and what to do).
    """
    path = Path(run_dir) / RUN_META_NAME
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: cannot tell which fedtorch wrote the run; start the run again") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is damaged ({type(e).__name__}: {_first_line(e)}); start the run again") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path} is damaged (not a JSON object); start the run again")
    version = meta.get("fedtorch")
    if version != fedtorch.__version__:
        raise ConfigError(
            f"{path}: the run was started by fedtorch {version}, this is fedtorch {fedtorch.__version__}; "
            f"resume it with fedtorch {version}, or start the run again"
        )
    return meta


def check_config_digest(run_dir: Path, meta: dict) -> None:
    """``config.yaml``'s sha256 must be the one ``run.json`` recorded (when it did).

    Raises:
        ConfigError: it differs (the file was damaged or edited since the run started).
    """
    path = Path(run_dir) / CONFIG_NAME
    expected = meta.get("config_sha256")
    if expected is not None and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        raise ConfigError(
            f"{path} is not the config the run started with (its sha256 differs from the one in {RUN_META_NAME}): "
            "it was damaged or edited; restore it, or start the run again"
        )


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else ""


_ADVICE = {
    errno.ENOSPC: "free some space, or set output_dir to another disk",
    errno.EDQUOT: "free some space, or set output_dir to another disk",
    errno.EACCES: "make the folder writable, or set output_dir to a folder you can write",
    errno.EPERM: "make the folder writable, or set output_dir to a folder you can write",
    errno.EROFS: "set output_dir to a folder on a writable file system",
    errno.EEXIST: "a file is in the way of a folder: remove it, or set output_dir to another folder",
    errno.ENOTDIR: "a file is in the way of a folder: remove it, or set output_dir to another folder",
}


def os_error_message(e: OSError) -> str:
    """One line for an :class:`OSError` met while creating or writing run files: the file,
    the reason, what to do, and, for a file of a run directory, how to go on (resume it when
    it has a checkpoint, else start it again)."""
    where = e.filename if e.filename is not None else "a run file"
    line = f"{where}: {e.strerror or type(e).__name__}"
    if e.errno in _ADVICE:
        line += f"; {_ADVICE[e.errno]}"
    if e.filename is not None:
        for d in (Path(e.filename).parent, Path(e.filename).parent.parent):
            if (d / CONFIG_NAME).is_file():
                resumable = any((d / n).is_file() for n in _RESUME_FILES)
                line += f"; then continue the run with: fedtorch run --resume {d}" if resumable else "; then start the run again"
                break
    return line
