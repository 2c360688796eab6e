"""Helpers of the tests of the federation loop's transforms (buffers, compression, attacks,
robust rules, DP, SecAgg): a prepared run, rounds with what the algorithm aggregated, and a
SIGKILL + resume of a real process."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from helpers import final_model, metrics, run_cli, run_dirs
from test_determinism_resume import KILLER, strip_times

from fedtorch.experiment.config import apply_overrides, load_experiment, validate
from fedtorch.experiment.runner import prepare
from fedtorch.federation import ClientStateStore, run_sync


def prepared(folder: Path, *overrides: str):
    """The :class:`~fedtorch.experiment.runner.Prepared` run of ``folder`` with ``overrides``."""
    base, _ = load_experiment(folder)
    return prepare(validate(apply_overrides(base, list(overrides))))


def run_rounds(prep, rounds: int):
    """``rounds`` rounds of ``prep``'s own settings: ``(server, store, [(report, messages,
    weights)])``, with the messages and weights the algorithm's ``aggregate`` received."""
    seen, aggregated = [], []
    real = prep.algorithm.aggregate

    def spy(server, messages, weights):
        aggregated.append((dataclasses.replace(messages, delta=messages.delta.clone()), weights))
        return real(server, messages, weights)

    prep.algorithm.aggregate = spy
    store = ClientStateStore()
    settings = dataclasses.replace(prep.settings, rounds=rounds)
    server = run_sync(prep.algorithm, prep.executor, prep.data, prep.initial_server(), store, settings,
                      on_round=lambda s, r: seen.append(r))
    return server, store, [(r, m, w) for r, (m, w) in zip(seen, aggregated)]


def killed_and_resumed(capsys, folder: Path, args: list[str], kill_round: int, out: Path) -> Path:
    """Run ``folder`` in a process that SIGKILLs itself while writing round ``kill_round``'s
    checkpoint, resume it with ``fedtorch run --resume``; return its run directory. The
    killed process gets this process's intra-op thread count: CPU reductions can differ in
    the last bit between counts, and bit-identity is promised for equal counts."""
    proc = subprocess.run([sys.executable, "-c", KILLER, "run", str(folder), *args, f"output_dir={out}"],
                          env={**os.environ, "KILL_AT": f"checkpoint:{kill_round}",
                               "OMP_NUM_THREADS": str(torch.get_num_threads())},  # the in-process runs' count
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (run_dir,) = run_dirs(out)
    assert run_cli(capsys, "run", "--resume", run_dir)[0] == 0
    return run_dir


def assert_same_run(run_dir: Path, reference: Path, ignore: tuple[str, ...] = ()) -> None:
    """The same final model and metrics rows (times and ``ignore`` keys left out)."""
    assert torch.equal(final_model(run_dir), final_model(reference))

    def rows(d):
        return [{k: v for k, v in r.items() if k not in ignore} for r in strip_times(metrics(d))]

    assert rows(run_dir) == rows(reference)
