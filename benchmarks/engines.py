"""Benchmark: fedtorch's execution engines against a plain PyTorch FedAvg loop.

Workloads (Fashion-MNIST, FedAvg, evaluation excluded from the timings):

- **W1** (FedProx-paper shape): 1000 clients, shards (sorted by label, 2000 shards of 30,
  2 per client), logistic regression 784->10, 10 clients/round, 20 local epochs, batch 10,
  SGD lr 0.03, 20 rounds.
- **W2**: 100 clients, Dirichlet alpha 0.5 (min 10 samples), FedAvg CNN, 10 clients/round,
  1 local epoch, batch 32, SGD lr 0.05, 10 rounds.
- **W3** (scale): as W1 with 10,000 clients (20,000 shards of 3, 2 per client), 1,000
  clients/round, 5 local epochs, batch 6, 5 rounds.

Every engine and the plain loop (``plain_loop.plain_fedavg``: torch.optim.SGD, state dicts,
tensor gathers) do exactly the same SGD steps (same clients, same minibatches). They run in
one process, *interleaved round by round* (plain round t, then each engine's round t), so
load from other processes hits all of them alike; s/round is the median over rounds. The
first round (tracing, thread start-up) is reported separately as ``first_round_s``.
``plain-cl`` is the plain loop with its model in channels-last memory format, the layout
fedtorch's replicas give convolution weights: it shows how much of a speed-up on a CNN is
that layout and how much the engine.
``peak_rss_mib`` is the peak resident memory during that engine's rounds (Linux VmHWM, reset
before each of its rounds), ``process_peak_rss_mib`` that of the whole process.

    python benchmarks/engines.py W1 [W2 W3] [--rounds N] [--engines serial,vectorized] [--threads N] [--json]
"""

from __future__ import annotations

import dataclasses
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import plain_fedavg  # noqa: E402

from fedtorch.execution import build_executor  # noqa: E402
from fedtorch.flat import ParamLayout  # noqa: E402
from fedtorch.experiment.config import from_dict, validate  # noqa: E402
from fedtorch.experiment.runner import Prepared, prepare  # noqa: E402
from fedtorch.federation import ClientStateStore, run_sync  # noqa: E402
from fedtorch.models import build_model  # noqa: E402

_SHARDS_LOGREG = {
    "data": {"partition": "shards", "shards_per_client": 2},
    "model": {"name": "logreg"},
    "client": {"lr": 0.03, "momentum": 0.0},
}
WORKLOADS: dict[str, dict] = {
    "W1": {
        **_SHARDS_LOGREG,
        "data": {**_SHARDS_LOGREG["data"], "num_clients": 1000},
        "client": {**_SHARDS_LOGREG["client"], "local_epochs": 20, "batch_size": 10},
        "federation": {"clients_per_round": 10},
        "rounds": 20,
    },
    "W2": {
        "data": {"partition": "dirichlet", "num_clients": 100, "alpha": 0.5, "min_samples": 10},
        "model": {"name": "cnn"},
        "client": {"local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.0},
        "federation": {"clients_per_round": 10},
        "rounds": 10,
    },
    "W3": {
        **_SHARDS_LOGREG,
        "data": {**_SHARDS_LOGREG["data"], "num_clients": 10000},
        "client": {**_SHARDS_LOGREG["client"], "local_epochs": 5, "batch_size": 6},
        "federation": {"clients_per_round": 1000},
        "rounds": 5,
    },
}
ENGINES: dict[str, dict] = {
    "serial": {"mode": "serial"},
    "parallel": {"mode": "parallel", "devices": ["cpu/0", "cpu/1"]},
    "vectorized": {"mode": "vectorized"},
    "auto": {"mode": "auto"},
    "parallel-3": {"mode": "parallel", "devices": ["cpu/0", "cpu/1", "cpu/2"], "threads": 1},
    "vectorized-1t": {"mode": "vectorized", "threads": 1},
    "serial-1t": {"mode": "serial", "threads": 1},
    "plain-cl": {},  # the plain loop with its model in channels-last memory format (a reference, not an engine)
}
DEFAULT_ENGINES = {"W1": ["serial", "parallel", "vectorized"], "W2": ["serial", "parallel", "vectorized", "plain-cl"],
                   "W3": ["serial", "vectorized"]}


def workload_config(name: str, **execution) -> DictConfig:
    """The validated config of workload ``name`` (``execution.*`` keys as keyword arguments)."""
    raw = {**WORKLOADS[name], "algorithm": {"name": "fedavg"}, "logging": {"progress": "none"}}
    raw["execution"] = execution
    return validate(from_dict(raw, where=f"workload {name}"))


def build_engine(prep: Prepared, engine: str):
    """An executor for ``engine`` (a key of :data:`ENGINES`) on ``prep``'s data."""
    cfg, ds = prep.cfg, prep.data.data
    spec = ENGINES[engine]
    return build_executor(
        spec["mode"], lambda: build_model(cfg.model.name, ds.input_shape, ds.num_classes), ds.train_x, ds.train_y,
        cfg.client.batch_size, F.cross_entropy, devices=spec.get("devices"), threads=spec.get("threads"),
    )


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Plain:
    """The plain loop as one more 'engine' (its own model, advanced a round at a time)."""

    description = "plain PyTorch loop (benchmarks/plain_loop.py)"

    def __init__(self, prep: Prepared, channels_last: bool = False):
        ds = prep.data.data
        self.prep = prep
        self.model = build_model(prep.cfg.model.name, ds.input_shape, ds.num_classes)
        if channels_last:  # what fedtorch's replicas do with convolution weights (fedtorch/flat.py)
            self.model = self.model.to(memory_format=torch.channels_last)
            self.description += ", model.to(memory_format=torch.channels_last)"
        ParamLayout.of(self.model).load(self.model, prep.x0)  # x0 is in fedtorch's flat layout

    def round(self, t: int) -> float:
        c, s = self.prep.cfg.client, self.prep.settings
        ds = self.prep.data.data
        (seconds,) = plain_fedavg(
            self.model, ds.train_x, ds.train_y, self.prep.data.client_indices, rounds=1, start_round=t,
            clients_per_round=s.clients_per_round, batch_size=c.batch_size, local_epochs=c.local_epochs,
            lr=c.lr, momentum=c.momentum, seed=s.seed,
        )
        return seconds

    def model_vector(self) -> torch.Tensor:
        return ParamLayout.of(self.model).flatten(self.model)


class _Engine:
    """A fedtorch executor advanced a round at a time through ``run_sync``."""

    def __init__(self, prep: Prepared, executor):
        self.prep, self.executor = prep, executor
        self.description = executor.description
        self.server = prep.initial_server()
        self.store = ClientStateStore()

    def round(self, t: int) -> float:
        seconds = []
        settings = dataclasses.replace(self.prep.settings, rounds=t + 1)
        self.server = run_sync(self.prep.algorithm, self.executor, self.prep.data, self.server, self.store, settings,
                               on_round=lambda s, report: seconds.append(report.seconds))
        return seconds[0]

    def model_vector(self) -> torch.Tensor:
        return self.server.x


def run_workload(name: str, engines: list[str], rounds: int | None = None) -> dict:
    """Interleave the plain loop and ``engines`` round by round on workload ``name``."""
    cfg = workload_config(name)
    if rounds is not None:
        cfg.rounds = rounds
    prep = prepare(cfg)
    runners: dict[str, object] = {"plain": _Plain(prep)}
    setup: dict[str, float] = {"plain": 0.0}
    for engine in engines:
        start = time.perf_counter()
        runners[engine] = _Plain(prep, channels_last=True) if engine == "plain-cl" else _Engine(prep, build_engine(prep, engine))
        setup[engine] = time.perf_counter() - start
    times: dict[str, list[float]] = {k: [] for k in runners}
    peaks: dict[str, float] = {k: 0.0 for k in runners}
    resettable = _reset_peak_rss()
    load_before = os.getloadavg()[0]
    for t in range(cfg.rounds):
        for key, runner in runners.items():
            if resettable:
                _reset_peak_rss()
            times[key].append(runner.round(t))
            peaks[key] = max(peaks[key], _peak_rss_mib())
    ds = prep.data.data
    evaluator = build_engine(prep, "serial")
    plain_s = statistics.median(times["plain"][1:] or times["plain"])
    out = {"workload": name, "rounds": cfg.rounds, "torch_threads": torch.get_num_threads(),
           "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(), "engines": {}}
    for key, runner in runners.items():
        per_round = times[key][1:] or times[key]
        s = statistics.median(per_round)
        _, acc = evaluator.evaluate(runner.model_vector(), ds.test_x, ds.test_y)
        out["engines"][key] = {
            "description": runner.description,
            "s_per_round": round(s, 4),
            "speedup_vs_plain": round(plain_s / s, 3),
            "ratio_to_plain": round(s / plain_s, 3),
            "first_round_s": round(times[key][0], 3),
            "setup_s": round(setup[key], 3),
            "test_accuracy": round(acc, 4),
            "peak_rss_mib": round(peaks[key], 1) if resettable else None,
        }
    out["process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _print_table(result: dict) -> None:
    print(f"{result['workload']}: {result['rounds']} rounds, torch threads {result['torch_threads']}, "
          f"process peak RSS {result['process_peak_rss_mib']:.0f} MiB, load average {result['load_avg_1min']} (start, end)")
    print(f"  {'engine':11s} {'s/round':>9s} {'speedup':>8s} {'ratio':>6s} {'1st round':>9s} {'setup':>6s} {'test acc':>8s} {'peak RSS':>9s}")
    for key, e in result["engines"].items():
        rss = f"{e['peak_rss_mib']:.0f} MiB" if e["peak_rss_mib"] is not None else "-"
        print(f"  {key:11s} {e['s_per_round']:9.4f} {e['speedup_vs_plain']:7.2f}x {e['ratio_to_plain']:6.2f} "
              f"{e['first_round_s']:9.3f} {e['setup_s']:6.2f} {e['test_accuracy']:8.4f} {rss:>9s}")
    for key, e in result["engines"].items():
        print(f"  {key}: {e['description']}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workloads", nargs="+", choices=sorted(WORKLOADS))
    ap.add_argument("--rounds", type=int, help="rounds (default: the workload's)")
    ap.add_argument("--engines", help=f"comma list of {', '.join(ENGINES)} (default per workload)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads for the whole process, plain loop included")
    ap.add_argument("--json", action="store_true", help="print one JSON object per workload")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.workloads:
        engines = args.engines.split(",") if args.engines else DEFAULT_ENGINES[name]
        unknown = sorted(set(engines) - set(ENGINES))
        if unknown:
            ap.error(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(ENGINES)}")
        result = run_workload(name, engines, args.rounds)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            _print_table(result)


if __name__ == "__main__":
    main()
