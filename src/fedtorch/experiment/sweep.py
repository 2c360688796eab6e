"""Sweeps: ``key=a,b,c`` overrides with ``--multirun`` run the grid, one run directory
each, and write ``summary.csv`` with every run's final metrics."""

from __future__ import annotations

import csv
import io
import itertools
import re
from pathlib import Path

from omegaconf import DictConfig

from fedtorch.experiment.atomic import write_text
from fedtorch.experiment.config import apply_overrides, parse_override, validate
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.paths import experiment_output_dir, make_unique_dir, timestamp
from fedtorch.experiment.runner import execute, new_run_dir, prepare


def split_values(value: str) -> list[str]:
    """Split ``"0,0.01,1"`` at top-level commas (not inside ``[...]``)."""
    out, depth, cur = [], 0, ""
    for ch in value:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def expand(overrides: list[str]) -> list[list[str]]:
    """The grid: ``["a=1,2", "b=x"] -> [["a=1", "b=x"], ["a=2", "b=x"]]``.

    Raises:
        ConfigError: malformed override or an empty value in a list.
    """
    axes = []
    for text in overrides:
        key, _ = parse_override(text)
        values = split_values(text.split("=", 1)[1])
        if any(v == "" for v in values):
            raise ConfigError(f"{key}: empty value in sweep list {text!r}")
        axes.append([f"{key}={v}" for v in values])
    return [list(combo) for combo in itertools.product(*axes)]


def _slug(combo: list[str]) -> str:
    """Folder-name part of a grid point: the last key component and its value
    (``algorithm.mu=0.5`` -> ``mu=0.5``)."""
    parts = []
    for c in combo:
        key, _, value = c.partition("=")
        parts.append(f"{key.split('.')[-1]}={value}")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", ",".join(parts))[:120] or "run"


def run_sweep(base: DictConfig, experiment: Path, overrides: list[str]) -> Path:
    """Validate every grid point first, then run them in order; returns the sweep dir.

    A diverged run is recorded (``status`` column of ``summary.csv``) and the sweep goes on.
    """
    combos = expand(overrides)
    configs = [validate(apply_overrides(base, combo)) for combo in combos]
    sweep_dir = make_unique_dir(experiment_output_dir(base.output_dir, experiment), f"multirun_{timestamp()}")
    keys = [parse_override(o)[0] for o in overrides]
    rows = []
    for i, (combo, cfg) in enumerate(zip(combos, configs)):
        print(f"[{i + 1}/{len(combos)}] {' '.join(combo)}", flush=True)
        prep = prepare(cfg)
        run_dir = new_run_dir(cfg, experiment, parent=sweep_dir, name=f"{i:03d}_{_slug(combo)}")
        result = execute(prep, run_dir)
        if result["status"] == "diverged":
            print(f"  diverged at round {result['diverged_at']}: {result['reason']}; going on with the next run", flush=True)
        rows.append({"run_dir": run_dir.name, **{k: c.split("=", 1)[1] for k, c in zip(keys, combo)}, **result})
        write_text(sweep_dir / "summary.csv", summary_csv(rows))
    return sweep_dir


def summary_csv(rows: list[dict]) -> str:
    """CSV text of ``rows``; the columns are the union of every row's keys, in order of
    first appearance (grid points can report different keys, e.g. per-client accuracy
    only where ``eval.clients_every > 0``); a key a row lacks is left empty."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
