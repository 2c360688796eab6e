"""Outputs of an asynchronous run (``federation.mode=async``), beside the synchronous ones.

| file | one row per | content |
| --- | --- | --- |
| ``updates.csv`` | arrival | the event log: client, wave, dispatched and arrived at (simulated seconds), model version, staleness, local steps, local loss, lr used, applied, server version after |
| ``clients.csv`` | arrival | client, samples, local steps, local training loss, wall seconds of its training |
| ``metrics.jsonl``, ``metrics.csv`` | server version | arrivals so far, simulated seconds, mean local loss and staleness of the updates it applied, test loss and accuracy (every ``eval.every`` versions), wall seconds, bytes |
| ``selected.csv``, ``selected.png`` | dispatch wave | the clients dispatched in it |
| ``async_progress.png`` | | test loss and accuracy vs simulated time and vs server updates |

``updates.csv`` holds no wall-clock value, so the same seed writes the same file byte for
byte. Rows are appended, never rewritten (:mod:`fedtorch.experiment.logfiles`): the
per-arrival rows at every arrival, flushed with each new server version's metrics row;
:meth:`AsyncRecorder.sync` fsyncs them before a checkpoint. Only the metrics rows stay in
memory; of the arrivals, the ``(wave, client id)`` pairs (two int64 arrays) and the
staleness sum.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedtorch.experiment.logfiles import CsvLog  # noqa: E402
from fedtorch.experiment.plots import save_figure  # noqa: E402
from fedtorch.experiment.recorder import Recorder, _finite_or_none  # noqa: E402
from fedtorch.federation.async_loop import AsyncReport, UpdateRecord  # noqa: E402

UPDATE_FIELDS = list(UpdateRecord.__dataclass_fields__)
CLIENT_FIELDS = ["update", "wave", "client_id", "num_samples", "num_steps", "train_loss", "seconds", "applied"]
METRIC_FIELDS = [
    "round", "updates", "sim_seconds", "train_loss", "mean_staleness", "test_loss", "test_accuracy",
    "wall_seconds", "elapsed_seconds", "bytes_down", "bytes_up", "clients_aggregated",
]


class AsyncRecorder(Recorder):
    """Collects :class:`~fedtorch.federation.async_loop.AsyncReport` s and appends the files above.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard events (step = server version).
        tracking: MLflow / W&B trackers as for :class:`Recorder` (step = server version).

    Attributes:
        metrics: the metrics rows, one per server version.
    """

    unit = "wave"

    def __init__(self, run_dir: Path, tensorboard: bool = False, tracking=None):
        super().__init__(run_dir, tensorboard, tracking)
        self._updates_csv = CsvLog(self.run_dir / "updates.csv", lambda keys: UPDATE_FIELDS)
        self._staleness = [0, 0]  # sum and count over every arrival
        # arrivals since the last server version: (seconds, bytes_down, bytes_up, applied, loss, staleness)
        self._since: list[tuple] = []

    @staticmethod
    def _metric_header(keys: set) -> list[str]:
        return METRIC_FIELDS

    @staticmethod
    def _client_header(keys: set) -> list[str]:
        return CLIENT_FIELDS

    def _client_logs(self) -> list[CsvLog]:
        return [self._updates_csv, self._clients_csv]

    @property
    def mean_staleness(self) -> float:
        """Mean staleness (server versions) over every arrival so far, applied or not; 0.0
        before any."""
        self._settle()
        total, count = self._staleness
        return total / max(count, 1)

    def record(self, report: AsyncReport) -> dict | None:
        """Add one client arrival (an :class:`AsyncReport` from the async loop).

        Appends its ``updates.csv`` and ``clients.csv`` rows; when the arrival made a new
        server version (``report.updated``), also appends the metrics row of that version
        (covering every arrival since the previous one: mean local loss and staleness of
        the applied updates, wall seconds, bytes), flushes the files and logs the row to
        TensorBoard.

        Returns:
            The new metrics row (keys :data:`METRIC_FIELDS`), or None when the server
            model did not change (a buffered or rejected update).

        Raises:
            OSError: the run directory cannot be written.
        """
        self._settle()
        rec, msg = report.record, report.result.message
        self._updates_csv.append_rows([{k: (int(v) if isinstance(v, bool) else v) for k, v in vars(rec).items()}])
        self._clients_csv.append_rows([{
            "update": rec.update, "wave": rec.wave, "client_id": rec.client_id, "num_samples": msg.num_samples,
            "num_steps": rec.num_steps, "train_loss": rec.loss, "seconds": round(report.result.seconds, 6),
            "applied": int(rec.applied),
        }])
        self._visit([rec.wave, rec.client_id, rec.staleness])
        self._since.append((report.seconds, report.bytes_down, report.bytes_up, bool(rec.applied), rec.loss,
                            rec.staleness))
        if not report.updated:
            return None
        applied = [a for a in self._since if a[3]]
        seconds = sum(a[0] for a in self._since)
        elapsed = (self.metrics[-1]["elapsed_seconds"] if self.metrics else 0.0) + seconds
        row = {
            "round": rec.server_version, "updates": rec.update, "sim_seconds": rec.arrived_at,
            "train_loss": _finite_or_none(sum(a[4] for a in applied) / max(len(applied), 1)),
            "mean_staleness": sum(a[5] for a in applied) / max(len(applied), 1),
            "test_loss": report.test_loss, "test_accuracy": report.test_accuracy,
            "wall_seconds": round(seconds, 6), "elapsed_seconds": round(elapsed, 6),
            "bytes_down": sum(a[1] for a in self._since), "bytes_up": sum(a[2] for a in self._since),
            "clients_aggregated": len(applied),
        }
        self._since = []
        self._append_metrics(row)
        if self._tb is not None:
            for key in ("train_loss", "test_loss", "test_accuracy", "mean_staleness"):
                if row[key] is not None:
                    self._tb.add_scalar(key, row[key], row["round"])
        return row

    def _visit(self, values: list[int]) -> None:
        """One arrival's ``(wave, client id, staleness)``."""
        self._units.append(values[0])
        self._client_ids.append(values[1])
        self._staleness[0] += values[2]
        self._staleness[1] += 1

    def pending(self) -> dict:
        """What the next metrics row needs from the arrivals since the last server version
        (plain Python values: for a checkpoint taken between arrival groups).

        Returns:
            ``{"since": [[seconds, bytes_down, bytes_up, applied, loss, staleness], ...]}``.
        """
        return {"since": [list(a) for a in self._since]}

    def restore_pending(self, state: dict) -> None:
        """Undo :meth:`pending` (after :meth:`truncate`).

        Raises:
            ValueError: ``state`` is not what :meth:`pending` returns.
        """
        since = state.get("since") if isinstance(state, dict) else None
        if not isinstance(since, list) or any(not isinstance(a, (list, tuple)) or len(a) != 6 for a in since):
            raise ValueError(f"the checkpoint's recorder state {state!r} is not AsyncRecorder.pending()'s "
                             "{'since': [[seconds, bytes_down, bytes_up, applied, loss, staleness], ...]}")
        self._since = [tuple(a) for a in since]

    def truncate(self, rounds: int, updates: int | None = None) -> None:
        """Keep what the checkpoint covers: metrics rows of server versions ``<= rounds``,
        and in ``updates.csv`` and ``clients.csv`` the rows before the first arrival
        numbered above ``updates`` (default: the last kept metrics row's ``updates``); the
        files are cut in place (a partial last line goes too) and appending continues after
        them. Forgets the pending arrivals (:meth:`restore_pending` brings them back).

        Raises:
            ConfigError: ``updates.csv`` or ``clients.csv`` is damaged.
        """
        self.metrics = [m for m in self.metrics if int(m["round"]) <= rounds]
        if updates is None:
            updates = int(self.metrics[-1]["updates"]) if self.metrics else 0
        self._rewrite_metrics()
        self._units, self._client_ids, self._staleness, self._since = array("q"), array("q"), [0, 0], []
        self._updates_csv.keep_prefix(("update", "wave", "client_id", "staleness"), lambda v: v[0] <= updates,
                                      lambda v: self._visit(v[1:]))
        self._clients_csv.keep_prefix(("update",), lambda v: v[0] <= updates)
        self._loaded = False

    def flush(self) -> None:
        """Hand every appended row to the operating system (no fsync; :meth:`sync` adds it).

        Raises:
            OSError: the run directory cannot be written.
        """
        super().flush()

    def close(self) -> None:
        """Write the files' headers if no row came, :meth:`sync`, and close the files and
        the TensorBoard writer.

        Raises:
            OSError: the run directory cannot be written.
        """
        self._settle()
        for log in (self._updates_csv, self._clients_csv, self._metrics_csv):
            log.touch()
        if self._jsonl.fresh:
            self._jsonl.append("")
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
