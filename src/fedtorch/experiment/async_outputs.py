"""Outputs of an asynchronous run (``federation.mode=async``), beside the synchronous ones.

| file | one row per | content |
| --- | --- | --- |
| ``updates.csv`` | arrival | the event log: client, wave, dispatched and arrived at (simulated seconds), model version, staleness, local steps, local loss, lr used, applied, server version after |
| ``clients.csv`` | arrival | client, samples, local steps, local training loss, wall seconds of its training |
| ``metrics.jsonl``, ``metrics.csv`` | server version | arrivals so far, simulated seconds, mean local loss and staleness of the updates it applied, test loss and accuracy (every ``eval.every`` versions), wall seconds, bytes |
| ``selected.csv``, ``selected.png`` | dispatch wave | the clients dispatched in it |
| ``async_progress.png`` | | test loss and accuracy vs simulated time and vs server updates |

``updates.csv`` holds no wall-clock value, so the same seed writes the same file byte for
byte. Files are rewritten at every evaluation and at the end (not at every arrival, which
would cost quadratic time over the tens of thousands of arrivals of a long run).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedtorch.experiment.atomic import write_text  # noqa: E402
from fedtorch.experiment.plots import save_figure  # noqa: E402
from fedtorch.experiment.recorder import Recorder, _csv, _finite_or_none  # noqa: E402
from fedtorch.federation.async_loop import AsyncReport, UpdateRecord  # noqa: E402

UPDATE_FIELDS = list(UpdateRecord.__dataclass_fields__)
CLIENT_FIELDS = ["update", "wave", "client_id", "num_samples", "num_steps", "train_loss", "seconds", "applied"]
METRIC_FIELDS = [
    "round", "updates", "sim_seconds", "train_loss", "mean_staleness", "test_loss", "test_accuracy",
    "wall_seconds", "elapsed_seconds", "bytes_down", "bytes_up", "clients_aggregated",
]


class AsyncRecorder(Recorder):
    """Collects :class:`~fedtorch.federation.async_loop.AsyncReport` s and writes the files above.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard events (step = server version).
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False):
        super().__init__(run_dir, tensorboard)
        self.updates: list[dict] = []
        self._since: list[AsyncReport] = []  # arrivals since the last server version

    def record(self, report: AsyncReport) -> dict | None:
        """Add one client arrival (an :class:`AsyncReport` from the async loop).

        Appends its ``updates.csv`` and ``clients.csv`` rows; when the arrival made a new
        server version (``report.updated``), also appends the metrics row of that version
        (covering every arrival since the previous one: mean local loss and staleness of
        the applied updates, wall seconds, bytes), logs it to TensorBoard, and rewrites the
        files (:meth:`flush`) if the version was evaluated.

        Returns:
            The new metrics row (keys :data:`METRIC_FIELDS`), or None when the server
            model did not change (a buffered or rejected update).
        """
        rec, msg = report.record, report.result.message
        self.updates.append({k: (int(v) if isinstance(v, bool) else v) for k, v in vars(rec).items()})
        self.clients.append({
            "update": rec.update, "wave": rec.wave, "client_id": rec.client_id, "num_samples": msg.num_samples,
            "num_steps": rec.num_steps, "train_loss": rec.loss, "seconds": round(report.result.seconds, 6),
            "applied": int(rec.applied),
        })
        self._since.append(report)
        if not report.updated:
            return None
        applied = [r for r in self._since if r.record.applied]
        seconds = sum(r.seconds for r in self._since)
        elapsed = (self.metrics[-1]["elapsed_seconds"] if self.metrics else 0.0) + seconds
        row = {
            "round": rec.server_version, "updates": rec.update, "sim_seconds": rec.arrived_at,
            "train_loss": _finite_or_none(sum(r.record.loss for r in applied) / max(len(applied), 1)),
            "mean_staleness": sum(r.record.staleness for r in applied) / max(len(applied), 1),
            "test_loss": report.test_loss, "test_accuracy": report.test_accuracy,
            "wall_seconds": round(seconds, 6), "elapsed_seconds": round(elapsed, 6),
            "bytes_down": sum(r.bytes_down for r in self._since), "bytes_up": sum(r.bytes_up for r in self._since),
            "clients_aggregated": len(applied),
        }
        self._since = []
        self.metrics.append(row)
        if self._tb is not None:
            for key in ("train_loss", "test_loss", "test_accuracy", "mean_staleness"):
                if row[key] is not None:
                    self._tb.add_scalar(key, row[key], row["round"])
        if row["test_accuracy"] is not None:
            self.flush()
        return row

    def flush(self) -> None:
        """Rewrite ``metrics.jsonl``, ``metrics.csv``, ``clients.csv`` and ``updates.csv``
        from everything recorded so far, each atomically.

        Raises:
            OSError: the run directory cannot be written.
        """
        write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.metrics))
        write_text(self.run_dir / "metrics.csv", _csv(self.metrics, METRIC_FIELDS))
        write_text(self.run_dir / "clients.csv", _csv(self.clients, CLIENT_FIELDS))
        write_text(self.run_dir / "updates.csv", _csv(self.updates, UPDATE_FIELDS))

    def close(self) -> None:
        """Write the files a last time (:meth:`flush`) and close the TensorBoard writer.

        Raises:
            OSError: the run directory cannot be written.
        """
        self.flush()
        super().close()


def plot_async(metrics: list[dict], run_dir: Path, title: str = "") -> Path:
    """Write ``async_progress.png``: test loss (and mean local loss) and test accuracy
    against simulated time and against the number of server updates.

    Args:
        metrics: the :class:`AsyncRecorder` metrics rows (``sim_seconds`` in simulated
            seconds; the time axis is shown in hours beyond 2 hours).
        run_dir: the folder to write into (exists).
        title: the figure's title.

    Returns:
        The path of the PNG (written atomically).

    Raises:
        OSError: ``run_dir`` cannot be written.
    """
    evals = [m for m in metrics if m.get("test_accuracy") is not None]
    losses = [m for m in metrics if m.get("train_loss") is not None]
    span = max((m["sim_seconds"] for m in metrics), default=0.0)
    unit, scale = ("hours", 3600.0) if span > 7200 else ("seconds", 1.0)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=100, sharey="row")
    for col, (key, xlabel, div) in enumerate((("sim_seconds", f"simulated time ({unit})", scale),
                                              ("round", "server updates", 1.0))):
        top, bottom = axes[0, col], axes[1, col]
        top.plot([m[key] / div for m in losses], [m["train_loss"] for m in losses], alpha=0.4, lw=0.8,
                 label="mean local loss of the applied updates")
        top.plot([m[key] / div for m in evals], [m["test_loss"] for m in evals], marker=".", label="server test loss")
        bottom.plot([m[key] / div for m in evals], [m["test_accuracy"] for m in evals], marker=".")
        top.set_ylabel("loss")
        bottom.set_ylabel("test accuracy")
        bottom.set_xlabel(xlabel)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, Path(run_dir) / "async_progress.png")
