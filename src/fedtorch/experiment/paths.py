"""Where outputs go: one function builds every output folder's path.

``<output_dir>/<DATASET>/<folder>/`` for an experiment folder
``experiments/<DATASET>/<folder>``; run, sweep and comparison folders inside it are named
with the start time and get a numeric suffix (``-1``, ``-2``, ...) when that name is taken,
so two runs started in the same second (or by two processes at once) never collide.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path


def timestamp() -> str:
    """The local time as ``YYYYmmdd-HHMMSS``, used in folder names."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def experiment_output_dir(output_dir: str | Path, experiment: Path | None) -> Path:
    """``<output_dir>/<DATASET>/<folder>`` for ``experiment = experiments/<DATASET>/<folder>``
    (``output_dir`` itself when ``experiment`` is None). Creates nothing."""
    out = Path(output_dir)
    if experiment is None:
        return out
    folder = Path(experiment).resolve()
    return out / folder.parent.name / folder.name


def make_unique_dir(parent: Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``parent/name-1``, ``name-2``, ... when taken.

    ``parent`` is created if missing. Each attempt is one ``mkdir`` (atomic), so concurrent
    callers get distinct folders.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    i = 0
    while True:
        path = parent / (name if i == 0 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            i += 1
