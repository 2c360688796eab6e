"""Per-round cost of a run's logs (``metrics.jsonl``, ``metrics.csv``, ``clients.csv``):
the append-only :class:`~fedtorch.experiment.recorder.Recorder` against the former
rewrite-everything flush (reimplemented below, labelled ``old``), on synthetic round
reports in a temporary directory (no training).

    .venv/bin/python benchmarks/log_cost.py --rounds 10000 --clients 10

prints the mean milliseconds of ``Recorder.record`` (build the rows, append, flush) over
the first and the last 1,000 rounds, then the same for the old flush over ``--old-rounds``
rounds (default 2,000; 0 skips it), whose cost grows with the round number (so the whole
run's cost with the square of the rounds). Neither fsyncs (the new ``Recorder.sync`` runs
only before a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fedtorch.experiment.logfiles import csv_text
from fedtorch.experiment.recorder import (
    CLIENT_EVAL_FIELDS, CLIENT_FIELDS, METRIC_FIELDS, Recorder, _finite_or_none, _message_scalars, round_summary,
)
from fedtorch.federation.sync import RoundReport
from fedtorch.protocol import ClientMessage, ClientResult


@dataclass
class StepMessage(ClientMessage):
    step_size: Tensor = None  # one scalar field, as Delta-SGD's: a clients.csv column


def make_report(rnd: int, clients: int, pool: int) -> RoundReport:
    g = random.Random(rnd)
    ids = sorted(g.sample(range(pool), clients))
    results = [ClientResult(c, StepMessage(torch.zeros(1), g.randint(10, 200), g.randint(1, 50), g.uniform(0.1, 2.0),
                                           step_size=torch.tensor([g.uniform(0.01, 1.0)])), {}, g.uniform(0.01, 0.5))
               for c in ids]
    test = (g.uniform(0.2, 2.0), g.uniform(0.1, 0.9)) if rnd % 5 == 0 else (None, None)
    return RoundReport(rnd, results, torch.ones(clients, dtype=torch.bool), g.uniform(0.1, 2.0), *test,
                       g.uniform(0.1, 1.0), 4000 * clients, 4000 * clients)


class OldRecorder:
    """old: the former ``Recorder`` (before issue 14): every row kept in memory, the three
    files rendered whole and atomically rewritten after every round."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.metrics, self.clients = run_dir, [], []

    def record(self, report: RoundReport) -> dict:
        elapsed = (self.metrics[-1]["elapsed_seconds"] if self.metrics else 0.0) + report.seconds
        row = {"round": report.round, "train_loss": _finite_or_none(report.train_loss), "test_loss": report.test_loss,
               "test_accuracy": report.test_accuracy, "wall_seconds": round(report.seconds, 6),
               "elapsed_seconds": round(elapsed, 6), "bytes_down": report.bytes_down, "bytes_up": report.bytes_up,
               "clients_aggregated": int(report.valid.sum()), **dict.fromkeys(CLIENT_EVAL_FIELDS)}
        scalars = [_message_scalars(r.message) for r in report.results]
        valid = report.valid.tolist()
        for r, ok, sc in zip(report.results, valid, scalars):
            m = r.message
            self.clients.append({"round": report.round, "client_id": r.client_id, "num_samples": m.num_samples,
                                 "num_steps": m.num_steps, "train_loss": m.loss, "seconds": round(r.seconds, 6),
                                 "aggregated": int(ok), **sc})
        row.update(round_summary([sc for sc, ok in zip(scalars, valid) if ok], sorted({k for sc in scalars for k in sc})))
        self.metrics.append(row)
        _old_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.metrics))
        extra = sorted({k for m in self.metrics for k in m} - set(METRIC_FIELDS))
        _old_write_text(self.run_dir / "metrics.csv", csv_text(self.metrics, METRIC_FIELDS + extra))
        extra = sorted({k for c in self.clients for k in c} - set(CLIENT_FIELDS))
        _old_write_text(self.run_dir / "clients.csv", csv_text(self.clients, CLIENT_FIELDS + extra))
        return row

    def close(self) -> None:
        pass


def _old_write_text(path: Path, text: str) -> None:
    """old: the former ``atomic.write_text``: a temporary file renamed over ``path``, no fsync."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def per_round_ms(make_recorder, rounds: int, clients: int, window: int) -> tuple[float, float]:
    """Mean ms of ``record`` over the first and the last ``window`` rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        rec = make_recorder(Path(tmp))
        times = []
        for r in range(1, rounds + 1):
            rep = make_report(r, clients, max(10 * clients, 100))  # not timed
            start = time.perf_counter()
            rec.record(rep)
            times.append(time.perf_counter() - start)
        rec.close()
        size = sum(p.stat().st_size for p in Path(tmp).iterdir() if p.is_file())
    first, last = times[:window], times[-window:]
    print(f"    files at the end: {size / 1e6:.1f} MB; whole run {sum(times):.2f} s")
    return 1000 * sum(first) / len(first), 1000 * sum(last) / len(last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=10, help="clients per round (rows of clients.csv per round)")
    parser.add_argument("--old-rounds", type=int, default=2_000, help="rounds for the old flush (0: skip)")
    parser.add_argument("--window", type=int, default=1_000, help="rounds averaged at the start and at the end")
    args = parser.parse_args()
    window = min(args.window, args.rounds)
    print(f"append-only Recorder, {args.rounds} rounds x {args.clients} clients:")
    first, last = per_round_ms(Recorder, args.rounds, args.clients, window)
    print(f"  mean ms/round: first {window} rounds {first:.3f}, last {window} rounds {last:.3f}, ratio {last / first:.2f}")
    if args.old_rounds:
        window = min(args.window, args.old_rounds)
        print(f"old rewrite-everything flush, {args.old_rounds} rounds x {args.clients} clients:")
        first, last = per_round_ms(OldRecorder, args.old_rounds, args.clients, window)
        print(f"  mean ms/round: first {window} rounds {first:.3f}, last {window} rounds {last:.3f}, ratio {last / first:.2f}")


if __name__ == "__main__":
    main()
