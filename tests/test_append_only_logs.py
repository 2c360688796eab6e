"""Append-only run logs (issue 14, item 7): rows are appended, never rewritten; the files
are byte for byte what the former whole-file rewrite wrote; a killed run's partial last
line is dropped on resume; truncate + further appends gives the uninterrupted run's
files; per-client rows are not kept in memory.

The former implementation is reproduced here (``old_*``: its row dicts rendered by
:class:`csv.DictWriter`, as ``recorder.py`` and ``async_outputs.py`` did before) and fed
the same reports as the recorder under test."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from fedtorch.experiment import async_run, runner
from fedtorch.experiment.async_outputs import AsyncRecorder
from fedtorch.experiment.recorder import Recorder, _message_scalars, round_summary
from fedtorch.federation.async_loop import AsyncReport, UpdateRecord
from fedtorch.federation.sync import RoundReport
from fedtorch.protocol import ClientMessage, ClientResult
from helpers import run_cli, run_dirs

SYNC_FILES = ("metrics.jsonl", "metrics.csv", "clients.csv")
ASYNC_FILES = SYNC_FILES + ("updates.csv",)

# ------------------------------------------------------------ the former implementation
OLD_CLIENT_EVAL = [f"{w}_acc_{s}" for w in ("client", "personal") for s in ("mean", "std", "worst10", "best10")]
OLD_METRICS = ["round", "train_loss", "test_loss", "test_accuracy", "wall_seconds", "elapsed_seconds",
               "bytes_down", "bytes_up", "clients_aggregated", *OLD_CLIENT_EVAL]
OLD_CLIENTS = ["round", "client_id", "num_samples", "num_steps", "train_loss", "seconds", "aggregated"]
OLD_ASYNC_METRICS = ["round", "updates", "sim_seconds", "train_loss", "mean_staleness", "test_loss", "test_accuracy",
                     "wall_seconds", "elapsed_seconds", "bytes_down", "bytes_up", "clients_aggregated"]
OLD_ASYNC_CLIENTS = ["update", "wave", "client_id", "num_samples", "num_steps", "train_loss", "seconds", "applied"]
OLD_UPDATES = ["update", "client_id", "wave", "dispatched_at", "arrived_at", "version", "staleness", "num_steps",
               "loss", "lr", "applied", "server_version"]


def old_csv(rows, fields):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
    return buf.getvalue()


def finite(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def old_sync_files(reports) -> dict[str, str]:
    """What the former Recorder's flush wrote after recording ``reports``."""
    metrics, clients = [], []
    for rep in reports:
        elapsed = (metrics[-1]["elapsed_seconds"] if metrics else 0.0) + rep.seconds
        row = {"round": rep.round, "train_loss": finite(rep.train_loss), "test_loss": rep.test_loss,
               "test_accuracy": rep.test_accuracy, "wall_seconds": round(rep.seconds, 6),
               "elapsed_seconds": round(elapsed, 6), "bytes_down": rep.bytes_down, "bytes_up": rep.bytes_up,
               "clients_aggregated": int(rep.valid.sum()), **dict.fromkeys(OLD_CLIENT_EVAL), **(rep.client_eval or {})}
        scalars = [_message_scalars(r.message) for r in rep.results]
        valid = rep.valid.tolist()
        for r, ok, s in zip(rep.results, valid, scalars):
            m = r.message
            clients.append({"round": rep.round, "client_id": r.client_id, "num_samples": m.num_samples,
                            "num_steps": m.num_steps, "train_loss": m.loss, "seconds": round(r.seconds, 6),
                            "aggregated": int(ok), **s})
        row.update(round_summary([s for s, ok in zip(scalars, valid) if ok], sorted({k for s in scalars for k in s})))
        metrics.append(row)
    metric_extra = sorted({k for m in metrics for k in m} - set(OLD_METRICS))
    extra = sorted({k for c in clients for k in c} - set(OLD_CLIENTS))
    return {"metrics.jsonl": "".join(json.dumps(m) + "\n" for m in metrics),
            "metrics.csv": old_csv(metrics, OLD_METRICS + metric_extra),
            "clients.csv": old_csv(clients, OLD_CLIENTS + extra)}


def old_async_files(reports, last_eval=None) -> dict[str, str]:
    """What the former AsyncRecorder's close wrote; ``last_eval``: (test loss, accuracy)
    the runner filled into the last metrics row in memory before close."""
    metrics, clients, updates, since = [], [], [], []
    for rep in reports:
        rec, msg = rep.record, rep.result.message
        updates.append({k: (int(v) if isinstance(v, bool) else v) for k, v in vars(rec).items()})
        clients.append({"update": rec.update, "wave": rec.wave, "client_id": rec.client_id, "num_samples": msg.num_samples,
                        "num_steps": rec.num_steps, "train_loss": rec.loss, "seconds": round(rep.result.seconds, 6),
                        "applied": int(rec.applied)})
        since.append(rep)
        if not rep.updated:
            continue
        applied = [r for r in since if r.record.applied]
        seconds = sum(r.seconds for r in since)
        elapsed = (metrics[-1]["elapsed_seconds"] if metrics else 0.0) + seconds
        metrics.append({
            "round": rec.server_version, "updates": rec.update, "sim_seconds": rec.arrived_at,
            "train_loss": finite(sum(r.record.loss for r in applied) / max(len(applied), 1)),
            "mean_staleness": sum(r.record.staleness for r in applied) / max(len(applied), 1),
            "test_loss": rep.test_loss, "test_accuracy": rep.test_accuracy,
            "wall_seconds": round(seconds, 6), "elapsed_seconds": round(elapsed, 6),
            "bytes_down": sum(r.bytes_down for r in since), "bytes_up": sum(r.bytes_up for r in since),
            "clients_aggregated": len(applied)})
        since = []
    if last_eval is not None:
        metrics[-1]["test_loss"], metrics[-1]["test_accuracy"] = last_eval
    return {"metrics.jsonl": "".join(json.dumps(m) + "\n" for m in metrics),
            "metrics.csv": old_csv(metrics, OLD_ASYNC_METRICS), "clients.csv": old_csv(clients, OLD_ASYNC_CLIENTS),
            "updates.csv": old_csv(updates, OLD_UPDATES)}


# ------------------------------------------------------------ synthetic reports
@dataclass
class HMessage(ClientMessage):
    h: Tensor = None  # a one-number field: a clients.csv column, h_mean in the metrics


def sync_report(rnd: int, clients: int = 5, scalar: bool = True) -> RoundReport:
    """Round ``rnd`` of a made-up run: unequal n_i and K_i, one non-finite client every
    third round, a test evaluation every other round (values depend on ``rnd`` only)."""
    g = random.Random(rnd)
    ids = sorted(g.sample(range(max(40, 3 * clients)), clients))
    results = []
    for cid in ids:
        kind, kw = (HMessage, {"h": torch.tensor([g.uniform(0, 3)])}) if scalar else (ClientMessage, {})
        msg = kind(torch.zeros(2), g.randint(5, 60), g.randint(1, 9), g.uniform(0.1, 2.5), **kw)
        results.append(ClientResult(cid, msg, {}, g.uniform(0.001, 0.2)))
    valid = torch.tensor([not (rnd % 3 == 0 and i == 0) for i in range(clients)])
    test = (g.uniform(0.3, 2.0), g.uniform(0.1, 0.9)) if rnd % 2 == 0 else (None, None)
    return RoundReport(rnd, results, valid, g.uniform(0.2, 2.0) if rnd != 4 else float("nan"), *test,
                       g.uniform(0.01, 0.5), 1000 * clients, 990 * clients)


def async_reports(n: int) -> list[AsyncReport]:
    """``n`` arrivals of a made-up buffered run (K = 2: every second applied arrival makes
    a server version; every seventh arrival is non-finite and rejected)."""
    g, out, version, buffered, t = random.Random(7), [], 0, 0, 0.0
    for u in range(1, n + 1):
        applied = u % 7 != 0
        buffered += applied
        updated = buffered == 2
        if updated:
            version, buffered = version + 1, 0
        t += g.uniform(0.0, 1.5)
        stale = g.randint(0, 4)
        rec = UpdateRecord(u, g.randrange(20), u // 3, t - g.uniform(0, 2), t, max(version - stale, 0), stale,
                           g.randint(1, 8), g.uniform(0.1, 2.0) if applied else float("nan"), 0.05 / (1 + 0.1 * stale),
                           applied, version)
        result = ClientResult(rec.client_id, ClientMessage(torch.zeros(2), g.randint(5, 50), rec.num_steps, rec.loss), {},
                              g.uniform(0.001, 0.1))
        test = (g.uniform(0.3, 2.0), g.uniform(0.1, 0.9)) if updated and version % 3 == 0 else (None, None)
        out.append(AsyncReport(rec, result, updated, *test, g.uniform(0.001, 0.05), 800, 790))
    return out


def read(run_dir: Path, names) -> dict[str, str]:
    return {n: (run_dir / n).read_text() for n in names}


# ------------------------------------------------------------ tests
def test_rows_are_appended_and_earlier_bytes_never_rewritten(tmp_path, monkeypatch):
    """After round 1 every file keeps its inode and its first bytes through rounds 2..8,
    and nothing is renamed over a log file (the former flush did 3 atomic replaces a round)."""
    rec = Recorder(tmp_path)
    rec.record(sync_report(1))
    before = {n: ((tmp_path / n).stat().st_ino, (tmp_path / n).read_bytes()) for n in SYNC_FILES}
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b, **kw: (replaced.append(Path(b).name), real_replace(a, b, **kw)))
    for r in range(2, 9):
        rec.record(sync_report(r))
        for n, (inode, data) in before.items():
            now = (tmp_path / n).read_bytes()
            assert (tmp_path / n).stat().st_ino == inode and now.startswith(data) and len(now) > len(data), (r, n)
            before[n] = (inode, now)
    assert replaced == []
    rec.close()


def test_files_are_those_of_the_former_rewrite_for_synthetic_reports(tmp_path):
    """Including a NaN training loss, rejected clients, rounds without evaluation, and a
    message scalar that first appears in round 3 (the header widens once, earlier rows get
    empty cells, as the whole-file rendering gives)."""
    reports = [sync_report(r, scalar=r >= 3) for r in range(1, 8)]
    rec = Recorder(tmp_path)
    for i, rep in enumerate(reports, 1):
        rec.record(rep)
        assert read(tmp_path, SYNC_FILES) == old_sync_files(reports[:i]), i  # flushed: readable at every round
    rec.close()
    assert "h" in (tmp_path / "clients.csv").read_text().splitlines()[0].split(",")
    assert rec.selection == [(r.round, c.client_id) for r in reports for c in r.results]


class _Wrapped:
    """Feeds the recorder under test's reports to a list (for the former implementation)."""

    seen: list = []

    def record(self, report):
        _Wrapped.seen.append(report)
        return super().record(report)


def test_a_real_run_writes_the_former_files_byte_for_byte(capsys, tiny_experiment, runs_dir, monkeypatch):
    """Delta-SGD (message scalars) with per-client evaluation, M < N, unequal n_i: the
    run's metrics and clients files equal the former rendering of the same reports."""
    _Wrapped.seen = []
    monkeypatch.setattr(runner, "Recorder", type("R", (_Wrapped, Recorder), {}))
    code, _, err = run_cli(capsys, "run", tiny_experiment, "algorithm.name=deltasgd", "rounds=4", "eval.clients_every=2",
                           "federation.clients_per_round=4")
    assert code == 0, err
    (run_dir,) = run_dirs(runs_dir)
    assert len(_Wrapped.seen) == 4
    assert read(run_dir, SYNC_FILES) == old_sync_files(_Wrapped.seen)
    assert "step_size_min" in (run_dir / "clients.csv").read_text().splitlines()[0]
    assert "client_acc_mean" in (run_dir / "metrics.csv").read_text().splitlines()[0]


def test_a_real_async_run_writes_the_former_files_byte_for_byte(capsys, tiny_experiment, runs_dir, monkeypatch):
    _Wrapped.seen = []
    monkeypatch.setattr(async_run, "AsyncRecorder", type("A", (_Wrapped, AsyncRecorder), {}))
    code, _, err = run_cli(capsys, "run", tiny_experiment, "federation.mode=async", "algorithm.name=fedbuff",
                           "algorithm.buffer_size=2", "rounds=5", "federation.concurrency=3", "delays.model=uniform",
                           "delays.max=2.0", "eval.every=2")
    assert code == 0, err
    (run_dir,) = run_dirs(runs_dir)
    assert len(_Wrapped.seen) >= 10
    assert read(run_dir, ASYNC_FILES) == old_async_files(_Wrapped.seen)


def test_async_files_match_the_former_ones_and_a_last_row_filled_in_after_recording(tmp_path):
    """The runner evaluates the final model of a run stopped between evaluations and puts
    it into the last metrics row in memory: close() writes it, as the former close did."""
    reports = async_reports(40)
    rec = AsyncRecorder(tmp_path)
    for rep in reports:
        rec.record(rep)
    assert rec.metrics[-1]["test_accuracy"] is None
    rec.metrics[-1]["test_loss"], rec.metrics[-1]["test_accuracy"] = 0.75, 0.5
    rec.close()
    assert read(tmp_path, ASYNC_FILES) == old_async_files(reports, last_eval=(0.75, 0.5))
    assert rec.selection == [(r.record.wave, r.record.client_id) for r in reports]
    assert rec.mean_staleness == sum(r.record.staleness for r in reports) / len(reports)


def test_an_async_run_without_arrivals_still_writes_the_headers(tmp_path):
    AsyncRecorder(tmp_path).close()
    assert read(tmp_path, ASYNC_FILES) == old_async_files([])


def _killed(rec: Recorder, names) -> None:
    """As a SIGKILL in the middle of an append: half a line at the end of every file."""
    rec.flush()
    for n in names:
        last = (rec.run_dir / n).read_text().splitlines()[-1]
        with open(rec.run_dir / n, "a") as f:
            f.write(last[: len(last) // 2])


def test_load_drops_a_partial_last_line(tmp_path):
    rec = Recorder(tmp_path)
    for r in range(1, 6):
        rec.record(sync_report(r))
    _killed(rec, SYNC_FILES)
    again = Recorder(tmp_path)
    again.load()
    assert [m["round"] for m in again.metrics] == [1, 2, 3, 4, 5]
    for r in range(6, 8):  # load() without truncate(): appends continue after round 5
        again.record(sync_report(r))
    again.close()
    assert read(tmp_path, SYNC_FILES) == old_sync_files([sync_report(r) for r in range(1, 8)])


@pytest.mark.parametrize("partial", [False, True])
def test_truncate_and_append_gives_the_uninterrupted_files(tmp_path, partial):
    """Checkpoint at round 4 (sync() first), rounds 5-6 logged, then a kill; the resumed
    recorder truncates to round 4 and logs 5-9: the uninterrupted run's files."""
    reports = [sync_report(r) for r in range(1, 10)]
    (tmp_path / "ref").mkdir()
    ref = Recorder(tmp_path / "ref")
    for rep in reports:
        ref.record(rep)
    ref.close()
    killed = Recorder(tmp_path)
    for rep in reports[:6]:
        killed.record(rep)
        if rep.round == 4:
            killed.sync()
    if partial:
        _killed(killed, SYNC_FILES)
    resumed = Recorder(tmp_path)
    resumed.load()
    resumed.truncate(4)
    assert read(tmp_path, SYNC_FILES) == old_sync_files(reports[:4])
    for rep in reports[4:]:
        resumed.record(rep)
    resumed.close()
    assert read(tmp_path, SYNC_FILES) == read(tmp_path / "ref", SYNC_FILES)
    assert resumed.selection == ref.selection and resumed.metrics == ref.metrics


@pytest.mark.parametrize("stop", [8, 9])  # 8: arrivals 7 (rejected) and 8 (buffered) pending at the checkpoint; 9: none
def test_async_truncate_with_pending_arrivals_gives_the_uninterrupted_files(tmp_path, stop):
    reports = async_reports(30)
    (tmp_path / "ref").mkdir()
    ref = AsyncRecorder(tmp_path / "ref")
    for rep in reports:
        ref.record(rep)
    ref.close()
    killed = AsyncRecorder(tmp_path)
    for rep in reports[:stop]:
        killed.record(rep)
    killed.sync()
    saved = killed.pending()
    assert len(saved["since"]) == (2 if stop == 8 else 0)
    torch.save(saved, tmp_path / "pending.pt")  # as in a checkpoint's extra: plain values only
    saved = torch.load(tmp_path / "pending.pt", weights_only=True)
    rounds = killed.metrics[-1]["round"]
    for rep in reports[stop:stop + 5]:
        killed.record(rep)
    _killed(killed, ASYNC_FILES)
    resumed = AsyncRecorder(tmp_path)
    resumed.load()
    resumed.truncate(rounds, stop)
    resumed.restore_pending(saved)
    for rep in reports[stop:]:
        resumed.record(rep)
    resumed.close()
    assert read(tmp_path, ASYNC_FILES) == read(tmp_path / "ref", ASYNC_FILES)
    assert resumed.selection == ref.selection and resumed.mean_staleness == ref.mean_staleness


def test_restore_pending_refuses_foreign_state(tmp_path):
    with pytest.raises(ValueError, match="pending"):
        AsyncRecorder(tmp_path).restore_pending({"since": [[1.0, 2]]})


def _containers(obj, depth=2):
    """Lists, dicts, sets and tuples reachable from ``obj``'s attributes (``depth`` levels)."""
    for v in vars(obj).values():
        if isinstance(v, (list, dict, set, tuple)):
            yield v
        elif depth > 1 and hasattr(v, "__dict__") and not isinstance(v, type):
            yield from _containers(v, depth - 1)


def _size(rows: list[dict]) -> int:
    """Bytes of the metrics rows: the dicts and every distinct key and value object."""
    objects = {id(o): o for r in rows for o in (*r.keys(), *r.values())}
    return sum(sys.getsizeof(r) for r in rows) + sum(sys.getsizeof(o) for o in objects.values())


@pytest.mark.parametrize("kind, rows", [("sync", 10_000), ("async", 4_000)])
def test_per_client_rows_are_not_kept_in_memory(tmp_path, kind, rows):
    """100 rounds of 100 clients, or 4,000 arrivals: no container of the recorder holds
    more items than there are metrics rows, and beyond the metrics rows the recorder keeps
    under 200 bytes per client row (the (round, client) pairs take 16; a row as a dict
    about 1 kB)."""
    if kind == "sync":
        rec, reports = Recorder(tmp_path), [sync_report(r, clients=100) for r in range(1, 101)]
    else:
        rec, reports = AsyncRecorder(tmp_path), async_reports(rows)
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    for rep in reports:
        rec.record(rep)
    kept = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    assert max(len(c) for c in _containers(rec)) <= len(rec.metrics) < rows
    per_row = (kept - _size(rec.metrics)) / rows
    assert per_row < 200, per_row
    rec.close()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_sync_fsyncs_every_log_file(tmp_path, monkeypatch):
    rec = AsyncRecorder(tmp_path)
    for rep in async_reports(6):
        rec.record(rep)
    synced, real = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name), real(fd)))
    rec.sync()
    assert sorted(synced) == sorted(ASYNC_FILES)
    rec.close()
