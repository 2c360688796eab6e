"""Benchmark: execution.mode=distributed against the single-process executors on W2 and W3.

W2 is the bench workload of ``benchmarks/engines.py`` (Fashion-MNIST, 100 clients,
Dirichlet alpha 0.5, FedAvg CNN, 10 clients/round, 1 local epoch, batch 32, lr 0.05).
Every variant is a real ``fedtorch run`` of the same experiment (a temporary folder),
one after another, with the global model evaluated only at the end:

- ``serial-1t``: the serial executor, 1 intra-op thread (the reference of the overhead);
- ``serial-2t``: the serial executor, 2 intra-op threads;
- ``dist-1w``: ``torchrun --nproc-per-node 2``, ``execution.server_trains=false``: one worker
  rank trains every client, rank 0 only serves (the distributed overhead, target <= 1.05x);
- ``dist-2w``: ``torchrun --nproc-per-node 3``, ``server_trains=false``: two workers;
- ``dist-2t``: ``torchrun --nproc-per-node 2``: rank 0 and one worker both train.

W3 (``benchmarks/engines.py``: 10,000 clients, 1,000 per round, logistic regression, tiny
shards) is the vectorised executor's workload:

- ``W3-serial-1t`` and ``W3-vec-1t``: the serial and the vectorized executor, 1 thread;
- ``W3-dist-2w-vec``: ``torchrun --nproc-per-node 3``, ``server_trains=false``,
  ``execution.worker_mode=vectorized``: two worker processes, each training its share of
  the 1,000 clients vectorised.

A vectorised run equals serial within float tolerance, not bit for bit (docs/performance.md),
so W3's column gives the largest relative difference of the final model from
``W3-serial-1t`` instead.

Every rank runs with 1 intra-op thread. s/round is the median of the rounds after the
first (``wall_seconds`` of ``metrics.jsonl``: training and aggregation, no evaluation);
communication is rank 0's transfer seconds and bytes per round from
``distributed_traffic.jsonl`` (sending the work; moving the results' payloads). The
script also checks that every distributed model equals ``serial-1t``'s bit for bit.

    .venv/bin/python benchmarks/distributed.py [--rounds 5] [--variants serial-1t,dist-1w,W3-vec-1t] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import WORKLOADS  # noqa: E402

BIN = Path(sys.executable).parent
VARIANTS = {  # name -> (workload, processes (0: no torchrun), overrides)
    "serial-1t": ("W2", 0, ["execution.mode=serial", "execution.threads=1"]),
    "serial-2t": ("W2", 0, ["execution.mode=serial", "execution.threads=2"]),
    "dist-1w": ("W2", 2, ["execution.mode=distributed", "execution.threads=1", "execution.server_trains=false"]),
    "dist-2w": ("W2", 3, ["execution.mode=distributed", "execution.threads=1", "execution.server_trains=false"]),
    "dist-2t": ("W2", 2, ["execution.mode=distributed", "execution.threads=1"]),
    "W3-serial-1t": ("W3", 0, ["execution.mode=serial", "execution.threads=1"]),
    "W3-vec-1t": ("W3", 0, ["execution.mode=vectorized", "execution.threads=1"]),
    "W3-dist-2w-vec": ("W3", 3, ["execution.mode=distributed", "execution.threads=1", "execution.server_trains=false",
                                 "execution.worker_mode=vectorized"]),
}
REFERENCE = {"W2": "serial-1t", "W3": "W3-serial-1t"}  # what each workload's models are compared with


def write_experiment(root: Path, workload: str, rounds: int) -> Path:
    """``workload`` as an experiment folder (evaluation only after the last round)."""
    folder = root / "experiments" / "Bench" / workload
    folder.mkdir(parents=True)
    config = {**WORKLOADS[workload], "rounds": rounds, "algorithm": {"name": "fedavg"}, "logging": {"progress": "none"},
              "eval": {"every": rounds}, "output_dir": str(root / "runs")}
    (folder / "config.py").write_text(f"CONFIG = {config!r}\n")
    return folder


def run_variant(name: str, folder: Path, out: Path) -> Path:
    """One ``fedtorch run`` of ``folder`` as variant ``name``; its run directory."""
    _, procs, overrides = VARIANTS[name]
    cmd = [str(BIN / "fedtorch"), "run", str(folder), *overrides, f"output_dir={out / name}"]
    if procs:
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(procs), *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, start_new_session=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return next((out / name).rglob("result.json")).parent


def summarize(name: str, run_dir: Path, reference: Path | None) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["wall_seconds"] for r in rows]
    out = {"variant": name, "s_per_round": statistics.median(seconds[1:] or seconds), "first_round_s": seconds[0]}
    traffic = run_dir / "distributed_traffic.jsonl"
    if traffic.is_file():
        t = [json.loads(line) for line in traffic.read_text().splitlines()]
        out["comm_s_per_round"] = statistics.median(r["down_seconds"] + r["up_seconds"] for r in t)
        out["wait_s_per_round"] = statistics.median(r["wait_seconds"] for r in t)
        out["bytes_down_per_round"] = {k: statistics.median(r["bytes_down"].get(k, 0) for r in t) for k in t[0]["bytes_down"]}
        out["bytes_up_per_round"] = {k: statistics.median(r["bytes_up"].get(k, 0) for r in t) for k in t[0]["bytes_up"]}
        out["clients_per_rank"] = t[-1]["clients"]
    if reference is not None:
        a = torch.load(run_dir / "model.pt", weights_only=True)
        b = torch.load(reference / "model.pt", weights_only=True)
        out["equals_reference"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        out["max_rel_diff"] = max(float((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-30)) for k in a)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per run (default 5; W2 itself has 10)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        folders = {w: write_experiment(Path(tmp), w, args.rounds) for w in dict.fromkeys(VARIANTS[n][0] for n in names)}
        load = os.getloadavg()[0]
        dirs = {name: run_variant(name, folders[VARIANTS[name][0]], Path(tmp) / "out") for name in names}
        results = []
        for n, d in dirs.items():
            ref = REFERENCE[VARIANTS[n][0]]
            results.append({"workload": VARIANTS[n][0], **summarize(n, d, dirs.get(ref) if n != ref else None)})
    for r in results:
        base = next((b["s_per_round"] for b in results if b["variant"] == REFERENCE[r["workload"]]), None)
        r["ratio_to_reference"] = None if base is None else round(r["s_per_round"] / base, 3)
    meta = {"workloads": sorted(folders), "rounds": args.rounds, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
    if args.json:
        print(json.dumps({**meta, "variants": results}))
        return
    print(f"{args.rounds} rounds, {meta['cpu_count']} CPUs, torch {meta['torch']}, load average {meta['load_avg_1min']} (start, end); "
          "ratio and model against serial-1t (W2) or W3-serial-1t (W3)")
    print(f"  {'variant':15s} {'s/round':>8s} {'ratio':>6s} {'comm s':>7s} {'wait s':>7s} {'MB down/rank':>13s} {'MB up/rank':>11s}  model")
    for r in results:
        comm = f"{r['comm_s_per_round']:7.3f}" if "comm_s_per_round" in r else f"{'-':>7s}"
        wait = f"{r['wait_s_per_round']:7.3f}" if "wait_s_per_round" in r else f"{'-':>7s}"
        down = ",".join(f"{v / 1e6:.2f}" for v in r.get("bytes_down_per_round", {}).values()) or "-"
        up = ",".join(f"{v / 1e6:.2f}" for v in r.get("bytes_up_per_round", {}).values()) or "-"
        ratio = "-" if r["ratio_to_reference"] is None else f"{r['ratio_to_reference']:.2f}"
        same = "-" if "equals_reference" not in r else (
            "same bits" if r["equals_reference"] else f"rel. diff {r['max_rel_diff']:.1e}")
        print(f"  {r['variant']:15s} {r['s_per_round']:8.3f} {ratio:>6s} {comm} {wait} {down:>13s} {up:>11s}  {same}")


if __name__ == "__main__":
    main()
