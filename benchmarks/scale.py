"""Benchmark: client state and bookkeeping for 10^5 - 10^6 clients, through the normal runner.

1. SCAFFOLD, the 2NN (``model.name=mlp``), 100,000 clients of ~20 Synthetic(1, 1) samples
   (FedProx's generator, 60 features, IID among the clients), 1,000 per round, vectorised
   executor, 10 rounds (~10,000 distinct clients with a c_i of 54,410 floats = 218 kB:
   ~2.2 GB of state), with ``federation.state_memory_mb=1024`` (spilled to disk) and with
   everything in RAM: s/round of each, their ratio, peak RSS of the run, bytes on disk.
2. FedAvg, the 2NN, 1,000,000 clients of 10 FCUBE points (3 features; Synthetic's 60
   features would need 2.4 GB of inputs) at 100 clients per round: setup seconds, s/round,
   peak RSS.

Each scenario runs in its own process (peak RSS = that process's VmHWM; "run" peak: reset
after setup through /proc/self/clear_refs). Checkpoints every round (the default).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py [--quick] [--json] [--skip-ram] [key.sub=value ...]

``--quick``: 1/20 of the clients (sanity run, seconds). ``--skip-ram``: no all-in-RAM
SCAFFOLD run (it needs ~2.2 GB for the states plus the data and executor).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedtorch.data import DATASETS, DatasetSpec
from fedtorch.data.synthetic import fcube, synthetic
from fedtorch.experiment.config import apply_overrides, defaults, validate
from fedtorch.experiment.runner import execute, new_run_dir, prepare


def _exactly(ds, n_train: int, n_test: int):
    """The first samples only, copied (a slice would keep the whole generated tensor alive)."""
    if len(ds.train_y) < n_train:
        raise SystemExit(f"generated {len(ds.train_y)} training samples, fewer than {n_train}")
    return dataclasses.replace(ds, train_x=ds.train_x[:n_train].clone(), train_y=ds.train_y[:n_train].clone(),
                               test_x=ds.test_x[:n_test].clone(), test_y=ds.test_y[:n_test].clone(), users=None)


def _register(samples: int) -> None:
    """Two generated datasets of exactly ``samples`` training samples, for ``data.dataset``."""
    DATASETS["bench_synthetic"] = DatasetSpec(
        # ~405 training samples per Synthetic device on average (floor(LogNormal(4, 2)) + 50, 90 %)
        lambda root, seed=0: _exactly(synthetic(math.ceil(samples / 250), seed), samples, 10_000),
        "benchmark: Synthetic(1, 1) devices pooled", options=("seed",))
    DATASETS["bench_fcube"] = DatasetSpec(
        lambda root, seed=0: fcube(seed, num_train=samples, num_test=10_000), "benchmark: FCUBE points", options=("seed",))


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


def _du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def scenario(name: str, clients: int, per_round: int, samples_each: int, rounds: int, overrides: list[str]) -> dict:
    """Run one configuration through prepare + execute; figures as a dict."""
    _register(clients * samples_each)
    algo, dataset = ("scaffold", "bench_synthetic") if name.startswith("scaffold") else ("fedavg", "bench_fcube")
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as out:
        cfg = validate(apply_overrides(defaults(), [
            f"output_dir={out}", f"algorithm.name={algo}", "model.name=mlp", f"data.dataset={dataset}",
            "data.partition=iid", f"data.num_clients={clients}", f"federation.clients_per_round={per_round}",
            f"rounds={rounds}", "client.batch_size=10", "client.lr=0.05", "execution.mode=vectorized",
            "logging.progress=none", "eval.every=1000", *overrides]))
        start = time.perf_counter()
        prep = prepare(cfg)
        setup = time.perf_counter() - start
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back the generator's freed heap (glibc keeps it otherwise)
        setup_rss = _vm("VmRSS")
        setup_peak = _vm("VmHWM")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the run's own peak from here
        run_dir = new_run_dir(cfg, None, Path(out), "run")
        seconds = []
        start = time.perf_counter()
        execute(prep, run_dir, on_row=lambda row: seconds.append(time.perf_counter()))
        rounds_s = [b - a for a, b in zip([start] + seconds[:-1], seconds)]
        spill = run_dir / "client_states"
        return {
            "scenario": name, "clients": clients, "clients_per_round": per_round, "rounds": rounds,
            "train_samples": clients * samples_each, "parameters": int(prep.x0.numel()),
            "setup_s": round(setup, 2), "s_per_round": round(sum(rounds_s[1:]) / max(len(rounds_s) - 1, 1), 3),
            "first_round_s": round(rounds_s[0], 3),
            "rss_after_setup_gib": round(setup_rss / 2**30, 3), "peak_rss_setup_gib": round(setup_peak / 2**30, 3),
            "peak_rss_run_gib": round(_vm("VmHWM") / 2**30, 3),
            "state_disk_bytes": _du(spill) if spill.exists() else 0,
            "checkpoint_bytes": (run_dir / "checkpoint.pt").stat().st_size,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1/20 of the clients and per-round cohort")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--skip-ram", action="store_true", help="no all-in-RAM SCAFFOLD run")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every run, e.g. execution.max_clients_per_step=200")
    ap.add_argument("--scenario", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    k = 20 if args.quick else 1
    plans = {
        "scaffold_spilled": (100_000 // k, 1000 // k, 20, 10, ["federation.state_memory_mb=1024"]),
        "scaffold_in_ram": (100_000 // k, 1000 // k, 20, 10, []),
        "fedavg_1m": (1_000_000 // k, 100, 10, 10, []),
    }
    if args.scenario:
        clients, per_round, each, rounds, extra = plans[args.scenario]
        print(json.dumps(scenario(args.scenario, clients, per_round, each, rounds, extra + args.overrides)))
        return
    results = {}
    for name in plans:
        if name == "scaffold_in_ram" and args.skip_ram:
            continue
        cmd = [sys.executable, __file__, "--scenario", name, *args.overrides] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    if "scaffold_in_ram" in results:
        results["spilled_over_in_ram_s_per_round"] = round(
            results["scaffold_spilled"]["s_per_round"] / results["scaffold_in_ram"]["s_per_round"], 2)
    if args.json:
        print(json.dumps(results))
        return
    for name, r in results.items():
        if not isinstance(r, dict):
            print(f"{name}: {r}")
            continue
        print(f"{name}: {r['clients']} clients, {r['clients_per_round']}/round, {r['rounds']} rounds, "
              f"P={r['parameters']}: setup {r['setup_s']} s, {r['s_per_round']} s/round (first {r['first_round_s']} s), "
              f"peak RSS run {r['peak_rss_run_gib']} GiB (setup {r['peak_rss_setup_gib']} GiB), "
              f"states on disk {r['state_disk_bytes'] / 2**30:.3f} GiB, checkpoint {r['checkpoint_bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
