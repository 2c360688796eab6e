"""Asynchronous runs on execution.mode=distributed (torchrun, gloo on loopback; docs/distributed.md):

* the simulated clock, each dispatch wave spread over 3 processes, ends bit-identical to the
  serial executor's run and writes the same event log (``updates.csv``, byte for byte);
* the wall clock (``federation.clock=wall``): idle workers pull the current model, rank 0
  applies updates in arrival order with measured staleness; one deliberately slow worker
  (rank 2, a test double) has several updates applied while it trains;
* combinations that cannot run stop with one ``error:`` line, exit 2, before training.

Cost: one torchrun of 3 processes runs every distributed case in one process group
(``distributed_helpers.py``); the serial references run in this process.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import tiny_config
from distributed_helpers import checkpoint_differences, torchrun
from fedtorch.experiment.config import apply_overrides, load_experiment, validate
from fedtorch.experiment.runner import execute, new_run_dir, prepare
from helpers import run_cli

SLOW_WAIT = 3  # updates the slow worker waits for (per client) before it trains
WALL_UPDATES = 12
SLEEPY = f'''
import glob
import os
import time
from dataclasses import dataclass

from fedtorch.algorithms.fedasync import FedAsync, FedAsyncHparams


@dataclass(frozen=True, kw_only=True)
class SleepyHparams(FedAsyncHparams):
    """FedAsync's, plus ``wait_dir``: rank 2 trains each client only once {SLOW_WAIT} more
    updates are in the updates.csv under it, or all {WALL_UPDATES} (at most 10 s), and logs
    the client to slow.txt."""

    wait_dir: str = ""


class Sleepy(FedAsync):
    """FedAsync whose rank 2 is a slow worker (a test double)."""

    name = "sleepy"
    paper = "none (test double)"
    Hparams = SleepyHparams

    def init_local(self, run):
        d = self.hp.wait_dir
        if d and os.environ.get("RANK") == "2":
            target, deadline = min(_updates(d) + {SLOW_WAIT}, {WALL_UPDATES}), time.monotonic() + 10
            while _updates(d) < target and time.monotonic() < deadline:
                time.sleep(0.02)
            with open(os.path.join(d, "slow.txt"), "a") as f:
                f.write(f"{{run.ctx.round}},{{run.ctx.client_id}}\\n")
        return super().init_local(run)


def _updates(d):
    paths = glob.glob(os.path.join(d, "**", "updates.csv"), recursive=True)
    return sum(max(0, sum(1 for _ in open(p)) - 1) for p in paths)
'''

SIM = ["federation.mode=async", "rounds=8", "federation.concurrency=5", "delays.model=uniform", "delays.max=2.0",
       "client.lr_delay_alpha=0.1", "eval.every=4"]  # 5 in flight: a wave of 1-5 clients over 3 ranks
SIM_CASES = {  # name -> overrides of the serial reference and of the distributed run
    "fedasync": ["algorithm.name=fedasync", *SIM],
    "fedbuff": ["algorithm.name=fedbuff", "algorithm.buffer_size=2", *SIM],
    "scaffold-buffered": ["algorithm.name=scaffold", "federation.buffer_size=3", *SIM],  # client states travel
}
DIST = ["execution.mode=distributed", "execution.threads=1"]
WALL = ["federation.mode=async", "federation.clock=wall", "algorithm.name=sleepy", f"rounds={WALL_UPDATES}",
        "eval.every=4"]
BAD = {  # name -> (overrides, words of rank 0's error)
    "wall-concurrency": ([*WALL, "federation.concurrency=3"],
                         ["federation.concurrency=3 is not allowed with federation.clock=wall", "2 here"]),
    "wall-lr-delay": ([*WALL, "client.lr_delay_alpha=0.1"],
                      ["client.lr_delay_alpha=0.1 is not allowed with federation.clock=wall"]),
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_idx_dir):
    """The tiny experiment (10 clients, logreg) with the Sleepy algorithm."""
    root = tmp_path_factory.mktemp("dist_async")
    folder = root / "experiments" / "Tiny" / "A0d5C10"
    folder.mkdir(parents=True)
    cfg = tiny_config(tiny_idx_dir, root / "runs")
    (folder / "config.py").write_text(SLEEPY + "\n\nCONFIG = " + repr(cfg) + "\n")
    return folder


@pytest.fixture(scope="module")
def runs(experiment, tmp_path_factory):
    """Every distributed case in one torchrun of 3 processes: ``({case: {"run_dir" | "error", "code"}}, tmp)``."""
    tmp = tmp_path_factory.mktemp("cases")
    cases = {name: {"overrides": [*o, *DIST, f"output_dir={tmp / name}"]} for name, o in SIM_CASES.items()}
    cases["wall"] = {"overrides": [*WALL, *DIST, f"algorithm.wait_dir={tmp / 'wall'}", f"output_dir={tmp / 'wall'}"]}
    cases.update({name: {"overrides": [*o, *DIST, f"output_dir={tmp / name}"]} for name, (o, _) in BAD.items()})
    spec = tmp / "cases.json"
    spec.write_text(json.dumps({"experiment": str(experiment), "cases": cases, "out": str(tmp / "out.json")}))
    helper = str(Path(__file__).with_name("distributed_helpers.py"))
    code, out, err = torchrun([helper, str(spec)], nproc=3, timeout=240)  # asserts that no process is left
    assert code == 0, f"stdout:\n{out[-3000:]}\nstderr:\n{err[-5000:]}"
    return json.loads((tmp / "out.json").read_text()), tmp


def _serial(experiment, overrides: list[str], out: Path) -> Path:
    base, folder = load_experiment(experiment)
    cfg = validate(apply_overrides(base, [*overrides, "execution.threads=1", f"output_dir={out}"]))
    run_dir = new_run_dir(cfg, folder)
    execute(prepare(cfg), run_dir)
    return run_dir


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", list(SIM_CASES))
def test_simulated_clock_over_three_processes_equals_serial_model_and_event_log(name, runs, experiment):
    results, tmp = runs
    case = results[name]
    assert "run_dir" in case and case["code"] == 0, case
    run_dir, reference = Path(case["run_dir"]), _serial(experiment, SIM_CASES[name], tmp / f"serial-{name}")
    assert checkpoint_differences(run_dir, reference) == []
    log = (run_dir / "updates.csv").read_bytes()  # no wall-clock column: the whole file must agree
    assert log == (reference / "updates.csv").read_bytes()
    assert max(int(r["staleness"]) for r in _rows(run_dir / "updates.csv")) > 0
    waves = [json.loads(line) for line in open(run_dir / "distributed_traffic.jsonl")]
    assert any(w["clients"].get("1") and w["clients"].get("2") for w in waves)  # waves really spread over ranks


def test_wall_clock_applies_fast_updates_while_the_slow_worker_trains(runs):
    results, tmp = runs
    case = results["wall"]
    assert "run_dir" in case and case["code"] == 0, case
    rows = _rows(Path(case["run_dir"]) / "updates.csv")
    assert [int(r["update"]) for r in rows] == list(range(1, WALL_UPDATES + 1))
    arrived = [float(r["arrived_at"]) for r in rows]
    assert arrived == sorted(arrived)  # applied in arrival order, real seconds since the start
    slow_clients = {tuple(map(int, line.split(","))) for line in (tmp / "wall" / "slow.txt").read_text().split()}
    slow = [r for r in rows if (int(r["wave"]), int(r["client_id"])) in slow_clients]
    assert slow, "no update of the slow worker was applied"
    for u in slow:  # measured staleness: the versions applied between its pull and its push
        between = [r for r in rows
                   if int(r["update"]) < int(u["update"]) and float(r["arrived_at"]) >= float(u["dispatched_at"])]
        assert int(u["staleness"]) == len(between) >= SLOW_WAIT
        assert all((int(r["wave"]), int(r["client_id"])) not in slow_clients for r in between)  # the fast worker's
    assert any(int(a["wave"]) > int(b["wave"]) for a, b in zip(rows, rows[1:]))  # not in dispatch order


@pytest.mark.parametrize("name", list(BAD))
def test_wall_clock_combinations_that_cannot_run_stop_before_training(name, runs):
    results, tmp = runs
    assert "error" in results[name] and all(w in results[name]["error"] for w in BAD[name][1]), results[name]
    assert not (tmp / name).exists()  # stopped before the run directory


def test_wall_clock_outside_distributed_mode_is_one_error_line_and_exit_2(experiment, capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", experiment, *WALL, f"output_dir={tmp_path}")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "federation.clock=wall needs execution.mode=distributed" in err
    assert not any(tmp_path.iterdir())
