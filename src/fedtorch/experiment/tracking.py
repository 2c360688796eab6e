"""Experiment trackers beside TensorBoard: MLflow (``logging.mlflow=true``) and Weights &
Biases (``logging.wandb=true``), both optional extras (``pip install 'fedtorch[mlflow]'``,
``'fedtorch[wandb]'``); docs/tracking.md says how to view them.

- MLflow: a SQLite store ``<run_dir>/mlruns/mlflow.db`` with artifacts in
  ``<run_dir>/mlruns/artifacts`` (``logging.mlflow_uri``: another store). Params: the
  resolved config as dotted keys; metrics: every number of each metrics row, step = round
  (server version for async); artifacts at the end: ``config.yaml``, ``result.json``,
  ``metrics.csv``, ``model.pt``, the PNG plots; status FINISHED, FAILED (diverged or an
  error) or KILLED (Ctrl-C).
- W&B: an offline run in ``<run_dir>/wandb`` (``logging.wandb_mode=online`` uploads; needs
  ``wandb login``). Config: the resolved config; history: the same numbers per step;
  summary: ``result.json``'s numbers; exit code 0 (completed) or 1.

The calling protocol: :func:`check_available` at config time (a missing package is a
:class:`ConfigError` before anything runs), :func:`open_tracking` when the run directory
exists, :meth:`Tracking.log_row` for every metrics row (the recorders call it when they
append one; a row re-logged with a filled-in evaluation logs only the new numbers), and
:meth:`Tracking.finish` once ``result.json`` is written, or :meth:`Tracking.abort` on an
error. ``tracking.json`` in the run directory keeps the MLflow run id and the W&B run id:
``fedtorch run --resume`` continues the same MLflow run (steps it already holds are not
logged twice) and the same W&B run id (a second offline run folder).

Nothing here reaches the network unless asked to (an ``http(s)://`` tracking URI,
``logging.wandb_mode=online``): MLflow's telemetry is switched off
(``MLFLOW_DISABLE_TELEMETRY``), W&B's error reports too (``WANDB_ERROR_REPORTING``; both
unless set already), and W&B runs without console capture, git or code saving, system
metrics or machine metadata.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from fedtorch.experiment.atomic import write_text
from fedtorch.experiment.errors import ConfigError

TRACKING_NAME = "tracking.json"  # the MLflow and W&B run ids of a run directory (for resume)
MLFLOW_DIR = "mlruns"  # the default MLflow store inside a run directory
ARTIFACT_FILES = ("config.yaml", "result.json", "metrics.csv", "model.pt")  # plus every *.png
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores
_PARAM_LIMIT = 500  # MLflow's param value limit when mlflow.utils.validation does not say (6000 since 2.x)


def _mlflow_needs_sqlalchemy(uri: str | None) -> bool:
    return uri is None or uri.split(":", 1)[0].split("+", 1)[0] in _DB_SCHEMES


def _import_mlflow(uri: str | None):
    """``mlflow`` (with SQLAlchemy and alembic for a database store), telemetry off.

    Raises:
        ConfigError: a package is missing (the message names the pip command).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow
        from mlflow.tracking import MlflowClient  # noqa: F401

        if _mlflow_needs_sqlalchemy(uri):
            import alembic  # noqa: F401
            import sqlalchemy  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"logging.mlflow=true needs MLflow: pip install 'fedtorch[mlflow]' ({e})") from None
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    return mlflow


def _import_wandb():
    """``wandb``.

    Raises:
        ConfigError: it is missing (the message names the pip command).
    """
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # no Sentry reports of W&B's own errors
    try:
        import wandb
    except ImportError as e:
        raise ConfigError(f"logging.wandb=true needs Weights & Biases: pip install 'fedtorch[wandb]' ({e})") from None
    return wandb


def check_available(log_cfg) -> None:
    """Import the packages of the trackers ``log_cfg`` (the ``logging`` section) turns on.

    Raises:
        ConfigError: ``logging.mlflow=true`` without MLflow (or, for a database store,
            SQLAlchemy/alembic), ``logging.wandb=true`` without wandb; the message names
            the pip command.
    """
    if log_cfg.mlflow:
        _import_mlflow(log_cfg.mlflow_uri)
    if log_cfg.wandb:
        _import_wandb()


def flat_params(config: dict, limit: int) -> dict[str, str]:
    """The config as MLflow params: dotted keys, values as text.

    Args:
        config: the resolved config as plain nested dicts.
        limit: the longest value allowed (characters).

    Returns:
        ``{"client.lr": "0.05", "execution.devices": "null", ...}``: strings as they are,
        other values as JSON (``null``, ``true``, ``[...]``), so ``yaml.safe_load`` gives
        the value back; a value over ``limit`` is cut and ends in ``...`` (the full one is
        in the ``config.yaml`` artifact).
    """
    out: dict[str, str] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            else:
                text = v if isinstance(v, str) else json.dumps(v)
                out[f"{prefix}{k}"] = text if len(text) <= limit else text[: limit - 3] + "..."

    walk(config, "")
    return out


def _numbers(row: dict) -> dict[str, float]:
    """The numbers of a metrics row other than its step (``round``); None and bools left out."""
    return {k: float(v) for k, v in row.items()
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_artifacts(run_dir: Path) -> list[Path]:
    """The files a finished run hands to a tracker: :data:`ARTIFACT_FILES` and the PNG
    plots of ``run_dir`` that exist (a diverged run has no ``model.pt``)."""
    run_dir = Path(run_dir)
    return [run_dir / n for n in ARTIFACT_FILES if (run_dir / n).is_file()] + sorted(run_dir.glob("*.png"))


def default_name(run_dir: Path, sep: str) -> str:
    """``<DATASET><sep><folder>`` of the run's experiment folder (``run.json``), or
    ``fedtorch`` for a run of a config dict."""
    try:
        experiment = json.loads((Path(run_dir) / "run.json").read_text()).get("experiment")
    except (OSError, ValueError, AttributeError):
        experiment = None
    if not experiment:
        return "fedtorch"
    folder = Path(experiment)
    return f"{folder.parent.name}{sep}{folder.name}"


class MLflowTracker:
    """One MLflow run of a fedtorch run, through ``MlflowClient`` (no global active run,
    so runs in one process never mix).

    Args:
        cfg: the validated config.
        run_dir: the run directory (``config.yaml`` and ``run.json`` written).
        state: ``tracking.json``'s ``"mlflow"`` entry of the run being resumed, or None.

    Attributes:
        uri: the tracking URI; run_id: the MLflow run id.

    Raises:
        ConfigError: MLflow missing, or the store cannot be opened (names ``logging.mlflow_uri``).
    """

    def __init__(self, cfg, run_dir: Path, state: dict | None = None):
        _import_mlflow(cfg.logging.mlflow_uri)
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir).resolve()
        self.uri = cfg.logging.mlflow_uri or f"sqlite:///{run_dir / MLFLOW_DIR / 'mlflow.db'}"
        if "://" not in self.uri or self.uri.startswith("file:"):  # a file store, MLflow 3's "maintenance mode"
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._floor = 0  # steps up to this one are in the run already (resume)
        if cfg.logging.mlflow_uri is None:
            (run_dir / MLFLOW_DIR).mkdir(exist_ok=True)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.run_id = self._resume(state) if state else None
            if self.run_id is None:
                self.run_id = self._create(cfg, run_dir)
        except MlflowException as e:
            raise ConfigError(f"logging.mlflow_uri={cfg.logging.mlflow_uri!r}: MLflow cannot use the store {self.uri} "
                              f"({' '.join(str(e).split())[:300]})") from None

    def _create(self, cfg, run_dir: Path) -> str:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from omegaconf import OmegaConf

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:
            limit = _PARAM_LIMIT
        name = cfg.logging.mlflow_experiment or default_name(run_dir, "/")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # in the default store the artifacts stay inside the run directory too
            location = (run_dir / MLFLOW_DIR / "artifacts").as_uri() if cfg.logging.mlflow_uri is None else None
            try:
                experiment_id = self.client.create_experiment(name, artifact_location=location)
            except MlflowException:  # created by another process meanwhile (a shared store)
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        import fedtorch

        run = self.client.create_run(experiment_id, run_name=run_dir.name, tags={
            "fedtorch.run_dir": str(run_dir), "fedtorch.version": fedtorch.__version__,
            "mlflow.source.name": "fedtorch",
        })
        params = [Param(k, v) for k, v in flat_params(OmegaConf.to_container(cfg, resolve=True), limit).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])
        return run.info.run_id

    def _resume(self, state: dict) -> str | None:
        """Continue the run of ``state`` when this store holds it: status RUNNING again, and
        the steps it holds already are skipped. None when it is gone (a new run then)."""
        if state.get("uri") != self.uri or not state.get("run_id"):
            return None
        try:
            run = self.client.get_run(state["run_id"])
        except Exception:  # deleted, or another store: start a new run
            return None
        self._floor = max((m.step for key in run.data.metrics
                           for m in self.client.get_metric_history(run.info.run_id, key)), default=0)
        self.client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id

    def state(self) -> dict:
        """What ``tracking.json`` keeps to resume this run."""
        return {"uri": self.uri, "run_id": self.run_id}

    def log(self, values: dict[str, float], step: int) -> None:
        """Log ``values`` at ``step`` (skipped when the resumed run holds that step already)."""
        from mlflow.entities import Metric

        if step <= self._floor or not values:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, result: dict, files: list[Path]) -> None:
        """Upload ``files`` as artifacts, tag ``fedtorch.status`` and end the run: FINISHED
        for ``"status": "completed"``, FAILED otherwise (diverged)."""
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_tag(self.run_id, "fedtorch.status", result.get("status", "unknown"))
        self.client.set_terminated(self.run_id, "FINISHED" if result.get("status") == "completed" else "FAILED")

    def abort(self, interrupted: bool) -> None:
        """End the run as KILLED (``interrupted``: Ctrl-C) or FAILED."""
        self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")


class WandbTracker:
    """One Weights & Biases run of a fedtorch run, offline under ``<run_dir>/wandb`` by
    default (``logging.wandb_mode``).

    Args:
        cfg: the validated config.
        run_dir: the run directory.
        state: ``tracking.json``'s ``"wandb"`` entry of the run being resumed, or None.

    Raises:
        ConfigError: wandb missing, or W&B cannot start the run (online without a login, ...).
    """

    def __init__(self, cfg, run_dir: Path, state: dict | None = None):
        wandb = _import_wandb()
        from omegaconf import OmegaConf

        run_dir = Path(run_dir).resolve()
        mode = cfg.logging.wandb_mode
        settings = wandb.Settings(console="off", silent=True, save_code=False, disable_git=True,
                                  disable_job_creation=True, x_disable_stats=True, x_disable_meta=True)
        resume_id = (state or {}).get("id")
        try:
            self.run = wandb.init(
                dir=str(run_dir), mode=mode, project=cfg.logging.wandb_project or default_name(run_dir, "-"),
                name=run_dir.name, config=OmegaConf.to_container(cfg, resolve=True), id=resume_id,
                resume="allow" if resume_id else None, settings=settings, reinit="create_new",
            )
        except Exception as e:  # wandb.errors.* (no login, no network for online)
            raise ConfigError(f"logging.wandb=true (logging.wandb_mode={mode}): W&B cannot start a run "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                              "for online runs `wandb login` first, or use logging.wandb_mode=offline") from None

    def state(self) -> dict:
        """What ``tracking.json`` keeps to resume this run."""
        return {"id": self.run.id, "dir": str(Path(self.run.dir).parent)}

    def log(self, values: dict[str, float], step: int) -> None:
        """Log ``values`` at ``step`` (W&B merges values logged at one step)."""
        if values:
            self.run.log(values, step=step)

    def finish(self, result: dict, files: list[Path]) -> None:
        """Put ``result``'s numbers into the run's summary and end it (exit code 0 for a
        completed run, 1 for a diverged one)."""
        self.run.summary.update({k: v for k, v in result.items() if isinstance(v, str)
                                 or (isinstance(v, (int, float)) and math.isfinite(v))})
        self.run.finish(exit_code=0 if result.get("status") == "completed" else 1)

    def abort(self, interrupted: bool) -> None:
        """End the run with exit code 255 (``interrupted``) or 1."""
        self.run.finish(exit_code=255 if interrupted else 1)


class Tracking:
    """The trackers of one run, driven as one; with none every method does nothing.

    Args:
        trackers: :class:`MLflowTracker` / :class:`WandbTracker` objects (or anything
            with ``log(values, step)``, ``finish(result, files)`` and ``abort(interrupted)``).
    """

    def __init__(self, trackers=()):
        self.trackers = list(trackers)
        self._step: int | None = None
        self._logged: dict[str, float] = {}  # the numbers logged at self._step

    def log_row(self, row: dict) -> None:
        """Log a metrics row's numbers at step ``row["round"]``; called again for the same
        step (the asynchronous loop fills in a final evaluation), only the numbers not
        logged at that step yet go out."""
        if not self.trackers:
            return
        step = int(row["round"])
        if step != self._step:
            self._step, self._logged = step, {}
        values = {k: v for k, v in _numbers(row).items() if k not in self._logged}
        self._logged.update(values)
        for t in self.trackers:
            t.log(values, step)

    def finish(self, result: dict, run_dir: Path) -> None:
        """End every tracker's run with ``result`` (``result.json``) and :func:`run_artifacts`."""
        files = run_artifacts(run_dir)
        for t in self.trackers:
            t.finish(result, files)
        self.trackers = []

    def abort(self, error: BaseException) -> None:
        """End every tracker's run after ``error`` (KILLED for a KeyboardInterrupt, else
        FAILED); errors of the trackers themselves are dropped, so ``error`` is what the
        caller sees."""
        for t in self.trackers:
            try:
                t.abort(isinstance(error, KeyboardInterrupt))
            except Exception:
                pass
        self.trackers = []


def open_tracking(cfg, run_dir: Path, resume: bool = False) -> Tracking:
    """Start the runs of the trackers ``cfg.logging`` turns on (none: an empty
    :class:`Tracking`) and record their ids in ``<run_dir>/tracking.json``; with
    ``resume``, continue the runs recorded there.

    Raises:
        ConfigError: a tracker's package is missing, or its store/service cannot be used.
        OSError: ``tracking.json`` cannot be written.
    """
    log_cfg, path = cfg.logging, Path(run_dir) / TRACKING_NAME
    if not (log_cfg.mlflow or log_cfg.wandb):
        return Tracking()
    previous = {}
    if resume and path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = {}  # damaged: new tracker runs
    trackers, state = [], {}
    try:
        if log_cfg.mlflow:
            trackers.append(MLflowTracker(cfg, run_dir, previous.get("mlflow")))
            state["mlflow"] = trackers[-1].state()
        if log_cfg.wandb:
            trackers.append(WandbTracker(cfg, run_dir, previous.get("wandb")))
            state["wandb"] = trackers[-1].state()
        write_text(path, json.dumps(state, indent=2) + "\n")
    except BaseException as e:
        Tracking(trackers).abort(e)
        raise
    return Tracking(trackers)
