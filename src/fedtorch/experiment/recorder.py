"""Per-round outputs of a run directory: metrics (JSONL + CSV), selected clients (CSV),
optional TensorBoard events. Files are rewritten atomically every round, so a killed
run leaves consistent files; :meth:`Recorder.truncate` drops rounds after a checkpoint.

``clients.csv`` also gets a column for every one-number tensor field an algorithm adds
to its message (Delta-SGD's ``step_size``, ``step_size_min``, ``step_size_max``, q-FFL's
``h``), and the metrics rows (``metrics.jsonl``, ``metrics.csv``) summarise each of them
over the round's aggregated clients (:func:`round_summary`): a field named ``*_min`` by
its minimum, ``*_max`` by its maximum (same column name), any other field ``f`` by its
mean in column ``f_mean``. So a Delta-SGD run has ``step_size_min``, ``step_size_mean``
and ``step_size_max`` per round: the smallest, mean and largest step size any aggregated
client took.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

from torch import Tensor

from fedtorch.experiment.atomic import write_text
from fedtorch.experiment.errors import ConfigError
from fedtorch.federation.sync import RoundReport

CLIENT_EVAL_FIELDS = [f"{who}_acc_{stat}" for who in ("client", "personal") for stat in ("mean", "std", "worst10", "best10")]
METRIC_FIELDS = [
    "round", "train_loss", "test_loss", "test_accuracy", "wall_seconds", "elapsed_seconds",
    "bytes_down", "bytes_up", "clients_aggregated", *CLIENT_EVAL_FIELDS,
]
CLIENT_FIELDS = ["round", "client_id", "num_samples", "num_steps", "train_loss", "seconds", "aggregated"]
_MESSAGE_FIELDS = {"delta", "num_samples", "num_steps", "loss"}


def final_result(cfg, metrics: list[dict], rounds: int) -> dict:
    """The ``result.json`` entries every run has, from its metrics rows.

    Args:
        cfg: the run's validated config (for ``seed`` and ``data.seed``).
        metrics: the recorder's rows, one per round (sync) or server version (async).
        rounds: rounds (sync) or server versions (async) done.

    Returns:
        ``rounds``; final and best test accuracy and final test loss over the evaluated
        rows (None without any); the last row's train loss; mean wall seconds and bytes
        (down + up) per row; ``seed`` and ``data_seed``.
    """
    evals = [m for m in metrics if m["test_accuracy"] is not None]
    return {
        "rounds": rounds,
        "final_test_accuracy": evals[-1]["test_accuracy"] if evals else None,
        "final_test_loss": evals[-1]["test_loss"] if evals else None,
        "best_test_accuracy": max((m["test_accuracy"] for m in evals), default=None),
        "final_train_loss": metrics[-1]["train_loss"] if metrics else None,
        "seconds_per_round": sum(m["wall_seconds"] for m in metrics) / max(len(metrics), 1),
        "bytes_per_round": sum(m["bytes_down"] + m["bytes_up"] for m in metrics) / max(len(metrics), 1),
        "seed": cfg.seed,
        "data_seed": cfg.data.seed,
    }


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
    return buf.getvalue()


def _finite_or_none(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


class Recorder:
    """Collects round reports and writes ``metrics.jsonl``, ``metrics.csv``, ``clients.csv``.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard event files under ``run_dir/tensorboard``.

    Raises:
        ConfigError: ``tensorboard`` requested but the package is missing.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.metrics: list[dict] = []
        self.clients: list[dict] = []
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "logging.tensorboard=true needs the tensorboard package: pip install 'fedtorch[tensorboard]'"
                ) from None
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def load(self) -> None:
        """Read existing files (for resume)."""
        path = self.run_dir / "metrics.jsonl"
        if path.is_file():
            self.metrics = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        path = self.run_dir / "clients.csv"
        if path.is_file():
            with path.open() as f:
                self.clients = list(csv.DictReader(f))

    def truncate(self, rounds: int) -> None:
        """Forget rounds after ``rounds`` (those the checkpoint does not cover)."""
        self.metrics = [m for m in self.metrics if int(m["round"]) <= rounds]
        self.clients = [c for c in self.clients if int(c["round"]) <= rounds]

    def record(self, report: RoundReport) -> dict:
        """Add one round and rewrite the files; returns the round's metrics row."""
        elapsed = (self.metrics[-1]["elapsed_seconds"] if self.metrics else 0.0) + report.seconds
        row = {
            "round": report.round,
            "train_loss": _finite_or_none(report.train_loss),
            "test_loss": report.test_loss,
            "test_accuracy": report.test_accuracy,
            "wall_seconds": round(report.seconds, 6),
            "elapsed_seconds": round(elapsed, 6),
            "bytes_down": report.bytes_down,
            "bytes_up": report.bytes_up,
            "clients_aggregated": int(report.valid.sum()),
            **dict.fromkeys(CLIENT_EVAL_FIELDS),
            **(report.client_eval or {}),
        }
        scalars = [_message_scalars(r.message) for r in report.results]
        valid = report.valid.tolist()
        for r, ok, s in zip(report.results, valid, scalars):
            m = r.message
            self.clients.append({
                "round": report.round, "client_id": r.client_id, "num_samples": m.num_samples,
                "num_steps": m.num_steps, "train_loss": m.loss, "seconds": round(r.seconds, 6), "aggregated": int(ok),
                **s,
            })
        summary = round_summary([s for s, ok in zip(scalars, valid) if ok], sorted({k for s in scalars for k in s}))
        row.update(summary)
        self.metrics.append(row)
        self.flush()
        if self._tb is not None:
            for key in ("train_loss", "test_loss", "test_accuracy", "wall_seconds", *summary):
                if row[key] is not None:
                    self._tb.add_scalar(key, row[key], report.round)
            self._tb.flush()
        return row

    def flush(self) -> None:
        write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.metrics))
        metric_extra = sorted({k for m in self.metrics for k in m} - set(METRIC_FIELDS))
        write_text(self.run_dir / "metrics.csv", _csv(self.metrics, METRIC_FIELDS + metric_extra))
        extra = sorted({k for c in self.clients for k in c} - set(CLIENT_FIELDS))
        write_text(self.run_dir / "clients.csv", _csv(self.clients, CLIENT_FIELDS + extra))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _message_scalars(message) -> dict[str, float]:
    """One-number tensor fields an algorithm added to its message, as floats."""
    out = {}
    for f in dataclasses.fields(message):
        v = getattr(message, f.name)
        if f.name not in _MESSAGE_FIELDS and isinstance(v, Tensor) and v.numel() == 1:
            out[f.name] = v.item()
    return out


def round_summary(clients: list[dict[str, float]], fields: list[str]) -> dict[str, float | None]:
    """One round's summary of the algorithm's per-client message scalars.

    Args:
        clients: the aggregated clients' scalars (:func:`_message_scalars` of each message).
        fields: every scalar field name the round's messages carry.

    Returns:
        ``{f: min}`` for ``f`` ending in ``_min``, ``{f: max}`` for ``_max``, else
        ``{f + "_mean": mean}``, over the finite values of ``clients``; None where there
        are none.
    """
    out: dict[str, float | None] = {}
    for f in fields:
        values = [c[f] for c in clients if f in c and math.isfinite(c[f])]
        if f.endswith("_min"):
            out[f] = min(values, default=None)
        elif f.endswith("_max"):
            out[f] = max(values, default=None)
        else:
            out[f + "_mean"] = sum(values) / len(values) if values else None
    return out
