"""Per-round outputs of a run directory: metrics (JSONL + CSV), selected clients (CSV),
optional TensorBoard events. Rows are appended and flushed every round, never rewritten
(:mod:`fedtorch.experiment.logfiles`: a round's logging cost does not grow with the
rounds), and fsynced by :meth:`Recorder.sync` before every checkpoint; on resume
:meth:`Recorder.load` and :meth:`Recorder.truncate` drop what the checkpoint does not cover
(and a partial last line left by a killed process).

``clients.csv`` also gets a column for every one-number tensor field an algorithm adds
to its message (Delta-SGD's ``step_size``, ``step_size_min``, ``step_size_max``, q-FFL's
``h``), and the metrics rows (``metrics.jsonl``, ``metrics.csv``) summarise each of them
over the round's aggregated clients (:func:`round_summary`): a field named ``*_min`` by
its minimum, ``*_max`` by its maximum (same column name), any other field ``f`` by its
mean in column ``f_mean``. So a Delta-SGD run has ``step_size_min``, ``step_size_mean``
and ``step_size_max`` per round: the smallest, mean and largest step size any aggregated
client took. These columns are known from the first round; should one appear later, the
CSV file is rewritten once with the widened header.

Only the metrics rows (one per round) stay in memory; of the per-client rows only the
``(round, client id)`` pairs are kept, as two int64 arrays (:attr:`Recorder.selection`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from array import array
from pathlib import Path

from torch import Tensor

from fedtorch.experiment.errors import ConfigError
from fedtorch.experiment.logfiles import CsvLog, LogFile, read_jsonl
from fedtorch.federation.sync import RoundReport

CLIENT_EVAL_FIELDS = [f"{who}_acc_{stat}" for who in ("client", "personal") for stat in ("mean", "std", "worst10", "best10")]
METRIC_FIELDS = [
    "round", "train_loss", "test_loss", "test_accuracy", "wall_seconds", "elapsed_seconds",
    "bytes_down", "bytes_up", "clients_aggregated", *CLIENT_EVAL_FIELDS,
]
CLIENT_FIELDS = ["round", "client_id", "num_samples", "num_steps", "train_loss", "seconds", "aggregated"]
_MESSAGE_FIELDS = {"delta", "num_samples", "num_steps", "loss", "num_clients"}


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


def _finite_or_none(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


class Recorder:
    """Collects round reports and appends them to ``metrics.jsonl``, ``metrics.csv`` and
    ``clients.csv``.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard event files under ``run_dir/tensorboard``.
        tracking: the run's MLflow / W&B trackers
            (:class:`~fedtorch.experiment.tracking.Tracking`), handed every metrics row as
            it is appended; None: none.

    Attributes:
        metrics: the metrics rows, one per round (the only rows kept in memory).

    Raises:
        ConfigError: ``tensorboard`` requested but the package is missing.
    """

    unit = "round"  # the first element of a selection pair

    def __init__(self, run_dir: Path, tensorboard: bool = False, tracking=None):
        self.run_dir = Path(run_dir)
        self._tracking = tracking
        self.metrics: list[dict] = []
        self._jsonl = LogFile(self.run_dir / "metrics.jsonl")
        self._metrics_csv = CsvLog(self.run_dir / "metrics.csv", self._metric_header)
        self._clients_csv = CsvLog(self.run_dir / "clients.csv", self._client_header)
        self._units, self._client_ids = array("q"), array("q")
        self._written: str | None = None  # JSON of the last metrics row as written
        self._loaded = False  # load() done, truncate() not yet
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "logging.tensorboard=true needs the tensorboard package: pip install 'fedtorch[tensorboard]'"
                ) from None
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    @staticmethod
    def _metric_header(keys: set) -> list[str]:
        return METRIC_FIELDS + sorted(keys - set(METRIC_FIELDS))

    @staticmethod
    def _client_header(keys: set) -> list[str]:
        return CLIENT_FIELDS + sorted(keys - set(CLIENT_FIELDS))

    def _client_logs(self) -> list[CsvLog]:
        return [self._clients_csv]

    def _logs(self) -> list[LogFile]:
        """Every log file, per-client ones first (the order of flushes: a metrics row on
        disk implies its per-client rows are)."""
        return [*self._client_logs(), self._jsonl, self._metrics_csv]

    @property
    def selection(self) -> list[tuple[int, int]]:
        """``(round, client id)`` of every client trained (also before a resume), in order."""
        self._settle()
        return list(zip(self._units, self._client_ids))

    def load(self) -> None:
        """Read ``metrics.jsonl`` of an existing run (for resume), dropping a partial last
        line; call :meth:`truncate` next (else the first append truncates to the last
        metrics row).

        Raises:
            ConfigError: a complete line of ``metrics.jsonl`` is not JSON.
        """
        self.metrics = read_jsonl(self._jsonl.path)
        self._loaded = True

    def truncate(self, rounds: int) -> None:
        """Keep rounds ``<= rounds`` (those the checkpoint covers): the metrics rows, and in
        ``clients.csv`` the rows before the first of a later round (the file is cut in
        place; a partial last line goes too). Appending continues after them.

        Raises:
            ConfigError: ``clients.csv`` is damaged.
        """
        self.metrics = [m for m in self.metrics if int(m["round"]) <= rounds]
        self._rewrite_metrics()
        self._units, self._client_ids = array("q"), array("q")
        self._clients_csv.keep_prefix(("round", "client_id"), lambda v: v[0] <= rounds, self._visit)
        self._loaded = False

    def _visit(self, values: list[int]) -> None:
        self._units.append(values[0])
        self._client_ids.append(values[1])

    def _settle(self) -> None:
        """After :meth:`load` without :meth:`truncate`: truncate to the last metrics row."""
        if self._loaded:
            self.truncate(int(self.metrics[-1]["round"]) if self.metrics else 0)

    def _rewrite_metrics(self) -> None:
        self._jsonl.replace("".join(json.dumps(m) + "\n" for m in self.metrics))
        self._metrics_csv.replace_rows(self.metrics)
        self._written = json.dumps(self.metrics[-1]) if self.metrics else None

    def _append_metrics(self, row: dict) -> None:
        """Append ``row`` to the metrics files, after flushing the per-client ones."""
        for log in self._client_logs():
            log.flush()
        self.metrics.append(row)
        self._written = json.dumps(row)
        self._jsonl.append(self._written + "\n")
        self._metrics_csv.append_rows([row])
        self._jsonl.flush()
        self._metrics_csv.flush()
        if self._tracking is not None:
            self._tracking.log_row(row)

    def record(self, report: RoundReport) -> dict:
        """Add one round: append its ``clients.csv`` rows and its metrics row, flushed.

        Returns:
            The round's metrics row.

        Raises:
            OSError: the run directory cannot be written.
        """
        self._settle()
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
            **(getattr(report, "server_metrics", None) or {}),
        }
        scalars = [_message_scalars(r.message) for r in report.results]
        valid = report.valid.tolist()
        rows = []
        for r, ok, s in zip(report.results, valid, scalars):
            m = r.message
            rows.append({
                "round": report.round, "client_id": r.client_id, "num_samples": m.num_samples,
                "num_steps": m.num_steps, "train_loss": m.loss, "seconds": round(r.seconds, 6), "aggregated": int(ok),
                **s,
            })
            self._units.append(report.round)
            self._client_ids.append(r.client_id)
        self._clients_csv.append_rows(rows)
        summary = round_summary([s for s, ok in zip(scalars, valid) if ok], sorted({k for s in scalars for k in s}))
        row.update(summary)
        self._append_metrics(row)
        if self._tb is not None:
            for key in ("train_loss", "test_loss", "test_accuracy", "wall_seconds", *summary):
                if row[key] is not None:
                    self._tb.add_scalar(key, row[key], report.round)
            self._tb.flush()
        return row

    def _amend_last(self) -> None:
        """Rewrite the metrics files if the last row was changed in memory after it was
        written (the asynchronous loop fills in a final evaluation)."""
        if self.metrics and json.dumps(self.metrics[-1]) != self._written:
            self._rewrite_metrics()
            if self._tracking is not None:
                self._tracking.log_row(self.metrics[-1])

    def flush(self) -> None:
        """Hand every appended row to the operating system (no fsync).

        Raises:
            OSError: the run directory cannot be written.
        """
        self._settle()
        self._amend_last()
        for log in self._logs():
            log.flush()

    def sync(self) -> None:
        """:meth:`flush`, then ``os.fsync`` every log file: called right before a
        checkpoint, so the rows it covers survive a power cut.

        Raises:
            OSError: the run directory cannot be written.
        """
        self.flush()
        for log in self._logs():
            log.sync()

    def close(self) -> None:
        """:meth:`sync` and close the log files and the TensorBoard writer.

        Raises:
            OSError: the run directory cannot be written.
        """
        try:
            self.sync()
        finally:
            for log in self._logs():
                log.close()
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
