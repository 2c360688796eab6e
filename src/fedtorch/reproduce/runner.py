"""Plan and run a table's cells: one run directory per (cell, method, seed).

Every run goes through the experiment layer (``validate`` -> ``prepare`` -> ``execute``), into
``<out>/runs/<setting>/<cell>/<method>/seed<k>`` where ``<setting>`` is ``r<rounds>`` (and
``_smoke``). A run whose directory already holds ``result.json`` for the same config is
reused, one with a checkpoint is resumed, so a table can be filled in several calls (e.g.
``--methods scaffold`` later) and the report always covers every finished run.
Runs go to worker processes when ``jobs > 1``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from omegaconf import OmegaConf

from fedtorch.data import FederatedData
from fedtorch.experiment.checkpoint import CHECKPOINT_NAME, PREV_CHECKPOINT_NAME
from fedtorch.experiment.config import apply_overrides, from_dict, validate
from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.runner import RESULT_NAME, execute, new_run_dir, prepare
from fedtorch.reproduce.table import Table

SMOKE_ROUNDS = 2


@dataclass(frozen=True)
class Job:
    """One run: ``cell`` x ``method`` (a :class:`~fedtorch.reproduce.table.Method` key) x ``seed``."""

    cell: str
    method: str
    seed: int


@dataclass(frozen=True)
class Setting:
    """What a call runs: the rounds, whether it is the smoke setting, and how many seeds."""

    rounds: int
    smoke: bool
    seeds: int

    @property
    def tag(self) -> str:
        """The folder of this setting's runs: ``r<rounds>`` or ``r<rounds>_smoke``."""
        return f"r{self.rounds}" + ("_smoke" if self.smoke else "")


def _pick(kind: str, text: str | None, allowed: list[str]) -> list[str]:
    if text is None:
        return list(allowed)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--{kind}: empty list; allowed: {', '.join(allowed)}")
    for n in names:
        if n not in allowed:
            raise ConfigError(f"--{kind}: unknown {kind[:-1]} {n!r}; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def plan(table: Table, cells: str | None = None, methods: str | None = None, seeds: int = 1,
         rounds: int | None = None, smoke: bool = False) -> tuple[Setting, list[Job]]:
    """The setting and the jobs of one call (cells x methods x seeds, in table order).

    Args:
        cells: comma-separated cell names, or None for every cell (``smoke``: the table's smoke cell).
        methods: comma-separated method keys, or None for all.
        seeds: seeds 0..seeds-1.
        rounds: rounds per run; None: the table's (``smoke``: 2).

    Raises:
        ConfigError: unknown cell or method, seeds or rounds < 1.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds} is not allowed: must be >= 1")
    if rounds is not None and rounds < 1:
        raise ConfigError(f"--rounds={rounds} is not allowed: must be >= 1")
    chosen = _pick("cells", cells, list(table.cells))
    if smoke and cells is None:
        chosen = [table.smoke_cell]
    keys = _pick("methods", methods, [m.key for m in table.methods])
    setting = Setting(rounds or (SMOKE_ROUNDS if smoke else table.config["rounds"]), smoke, seeds)
    jobs = [Job(c, m, s) for c in chosen for m in keys for s in range(seeds)]
    for job in jobs:  # every config error before anything runs
        job_config(table, job, setting)
    return setting, jobs


def job_config(table: Table, job: Job, setting: Setting):
    """The validated config of one job: the table's config, the cell's and method's
    overrides, ``seed`` = ``data.seed`` = the job's seed, ``rounds`` and the smoke overrides."""
    base = from_dict(table.config, where=f"table {table.name}")
    overrides = [*table.cells[job.cell], *table.method(job.method).overrides,
                 f"seed={job.seed}", f"data.seed={job.seed}", f"rounds={setting.rounds}"]
    if setting.smoke:
        overrides += list(table.smoke)
    return validate(apply_overrides(base, overrides))


def run_dir_of(out: Path, setting: Setting, job: Job) -> Path:
    """``<out>/runs/<setting tag>/<cell>/<method>/seed<k>``."""
    return Path(out) / "runs" / setting.tag / job.cell / job.method / f"seed{job.seed}"


def run_job(table: Table, job: Job, setting: Setting, out: Path) -> dict:
    """Run one job (or reuse / resume its run directory); returns ``{"job", "run_dir",
    "result", "status"}`` with status ``ran``, ``resumed`` or ``reused``.

    Raises:
        ConfigError: the run directory exists with another config (use another ``--out``).
    """
    cfg = job_config(table, job, setting)
    run_dir = run_dir_of(out, setting, job)
    text = OmegaConf.to_yaml(cfg)
    status = "ran"
    if (run_dir / "config.yaml").is_file():
        if (run_dir / "config.yaml").read_text() != text:
            raise ConfigError(f"{run_dir} holds a run of another configuration; use another --out")
        if (run_dir / RESULT_NAME).is_file():
            return {"job": job, "run_dir": run_dir, "result": json.loads((run_dir / RESULT_NAME).read_text()), "status": "reused"}
        status = "resumed" if any((run_dir / n).is_file() for n in (CHECKPOINT_NAME, PREV_CHECKPOINT_NAME)) else "ran"
    if status == "ran" and run_dir.exists():
        shutil.rmtree(run_dir)  # our own folder of this config, stopped before its first checkpoint
    prep = prepare(cfg)
    if table.eval_on == "train":  # the global model's loss on all clients' training data
        ds = prep.data.data
        prep.data = FederatedData(dataclasses.replace(ds, test_x=ds.train_x, test_y=ds.train_y), prep.data.client_indices)
    if status == "ran":
        run_dir = new_run_dir(cfg, None, parent=run_dir.parent, name=run_dir.name)
    result = execute(prep, run_dir, resume=status == "resumed")
    return {"job": job, "run_dir": run_dir, "result": result, "status": status}


def _worker(table_name: str, job: Job, setting: Setting, out: str) -> dict:
    from fedtorch.reproduce import get_table

    return run_job(get_table(table_name), job, setting, Path(out))


def run_jobs(table: Table, jobs: list[Job], setting: Setting, out: Path, workers: int = 1) -> list[dict]:
    """Run ``jobs`` (in this process for ``workers == 1``, else in ``workers`` spawned
    processes) and print one line per finished run; returns :func:`run_job`'s dicts."""
    done = []

    def report(r: dict) -> None:
        res, j = r["result"], r["job"]
        value = res.get(table.metric)
        shown = "n/a" if value is None else f"{value * table.scale:.4g}"
        seconds = res["seconds_per_round"] * res["rounds"]
        print(f"{j.cell} {j.method} seed{j.seed}: {table.metric_label} {shown} "
              f"({r['status']}, {seconds:.0f} s training) -> {r['run_dir']}", flush=True)
        done.append(r)

    if workers <= 1:
        for job in jobs:
            report(run_job(table, job, setting, out))
        return done
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_worker, table.name, job, setting, str(out)) for job in jobs]
        for fut in as_completed(futures):
            try:
                report(fut.result())
            except ConfigError:
                raise
            except Exception as e:  # one crashed run does not lose the others
                print(f"a run crashed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    return done
