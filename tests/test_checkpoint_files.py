"""Run files that survive crashes and damage (issue 14, items 2, 3, 6): the last two
checkpoints kept and verified by sha256, a damaged newest one falls back to the previous,
SIGKILL at any point of the checkpoint save sequence leaves a run that resumes
bit-identically; damaged or foreign run files and unwritable output folders end in one
``error:`` line (exit 2); run files honour the umask."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fedtorch
from conftest import tiny_config, write_experiment
from fedtorch.cli import main
from helpers import final_model, metrics, run_cli, run_dirs

# SCAFFOLD: server state (c) and per-client states (c_i) in the checkpoint; 4 of 10
# clients per round with Dirichlet-unequal n_i (the tiny experiment); momentum for the
# local optimiser's state within a round.
ARGS = ["rounds=5", "model.name=mlp", "algorithm.name=scaffold", "client.momentum=0.5"]


def strip_times(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_seconds", "elapsed_seconds")} for r in rows]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_idx_dir) -> Path:
    root = tmp_path_factory.mktemp("ckpt_files")
    return write_experiment(root, "A0d5C10", tiny_config(tiny_idx_dir, root / "unused"))


def _quiet_main(*argv) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory) -> Path:
    """The uninterrupted run of ``ARGS``."""
    out = tmp_path_factory.mktemp("reference")
    assert _quiet_main("run", experiment, *ARGS, f"output_dir={out}") == 0
    (run_dir,) = run_dirs(out)
    return run_dir


def crashed_run(experiment, out: Path, stop_at: int, args=ARGS) -> Path:
    """A run interrupted when round ``stop_at`` ends, before its checkpoint: checkpoint.pt
    holds round ``stop_at - 1`` and checkpoint.prev.pt round ``stop_at - 2``."""
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.runner import execute, new_run_dir, prepare

    base, folder = load_experiment(experiment)
    cfg = validate(apply_overrides(base, [*args, f"output_dir={out}"]))
    run_dir = new_run_dir(cfg, folder)

    def crash(row):
        if row["round"] == stop_at:
            raise KeyboardInterrupt

    with contextlib.suppress(KeyboardInterrupt):
        execute(prepare(cfg), run_dir, on_row=crash)
    return run_dir


@pytest.fixture(scope="module")
def crashed(experiment, tmp_path_factory) -> Path:
    """A run of ``ARGS`` stopped after round 4 (checkpoints of rounds 3 and 2); copy it before damaging it."""
    return crashed_run(experiment, tmp_path_factory.mktemp("crashed"), stop_at=4)


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, dest)
    return dest


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def assert_same_as(run_dir: Path, reference: Path) -> None:
    assert torch.equal(final_model(run_dir), final_model(reference))
    assert [m["round"] for m in metrics(run_dir)] == list(range(1, 6))
    assert strip_times(metrics(run_dir)) == strip_times(metrics(reference))


def ckpt_round(path: Path) -> int:
    return torch.load(path, weights_only=True)["round"]


# ---------------------------------------------------------------- item 2: fallback


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(capsys, crashed, reference, tmp_path):
    run_dir = copy_run(crashed, tmp_path)
    assert ckpt_round(run_dir / "checkpoint.pt") == 3 and ckpt_round(run_dir / "checkpoint.prev.pt") == 2
    truncate(run_dir / "checkpoint.pt")
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    assert code == 0, err
    (warning,) = err.strip().splitlines()
    assert warning.startswith("warning: ") and str(run_dir / "checkpoint.pt") in warning and "truncated" in warning
    assert f"resuming from {run_dir / 'checkpoint.prev.pt'} (round 2)" in warning
    assert_same_as(run_dir, reference)  # rounds 3..5 redone; metrics rows 3 (and 4's none) replaced, not duplicated


def test_a_damaged_newest_checkpoint_is_not_rotated_over_the_good_previous_one(tmp_path):
    """After a fallback, the next save must not move the damaged file to checkpoint.prev.pt:
    killed between its two renames, the run would have no good checkpoint."""
    from fedtorch.experiment.checkpoint import read_checkpoint, save_checkpoint
    from fedtorch.protocol import ServerState

    def save(r):
        save_checkpoint(tmp_path, ServerState(x=torch.full((3,), float(r)), round=r), {"c": {r: torch.ones(2)}},
                        extra={"wave": r})

    save(1)
    save(2)
    truncate(tmp_path / "checkpoint.pt")  # round 2 damaged
    assert read_checkpoint(tmp_path).round == 1
    save(3)
    assert ckpt_round(tmp_path / "checkpoint.prev.pt") == 1
    (tmp_path / "checkpoint.pt").unlink()  # as if killed between the renames of the next save
    c = read_checkpoint(tmp_path)
    assert (c.round, c.extra, c.path.name) == (1, {"wave": 1}, "checkpoint.prev.pt")
    assert torch.equal(c.server.x, torch.ones(3)) and torch.equal(c.clients["c"][1], torch.ones(2))


def test_both_checkpoints_damaged_is_one_error_line(capsys, crashed, tmp_path):
    run_dir = copy_run(crashed, tmp_path)
    truncate(run_dir / "checkpoint.pt")
    prev = run_dir / "checkpoint.prev.pt"
    data = bytearray(prev.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern: same size, wrong sha256
    prev.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    line = one_error_line(err)
    assert code == 2
    assert str(run_dir / "checkpoint.pt") in line and "truncated" in line
    assert str(prev) in line and "corrupt" in line and "start it again" in line


# ---------------------------------------------------------------- item 3: damaged or foreign files


def _resign(run_dir: Path, name: str) -> None:
    """Put ``name``'s new sha256 in the manifest, as if fedtorch had written it."""
    path, manifest = run_dir / name, run_dir / "checkpoint.json"
    m = json.loads(manifest.read_text())
    for e in m["checkpoints"]:
        if e["file"] == name:
            e.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), bytes=path.stat().st_size)
    manifest.write_text(json.dumps(m))


def _foreign_checkpoint(run_dir: Path) -> None:
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        payload = torch.load(run_dir / name, weights_only=True)
        payload["fedtorch"] = "0.0.9"
        torch.save(payload, run_dir / name)
        _resign(run_dir, name)


def _edit(name, old, new):
    def edit(run_dir):
        path = run_dir / name
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return edit


def _only_newest(run_dir):  # as after round 1: no previous checkpoint to fall back on
    (run_dir / "checkpoint.prev.pt").unlink()


DAMAGE = {
    "checkpoint-truncated-no-prev": (lambda d: (_only_newest(d), truncate(d / "checkpoint.pt")),
                                     ["checkpoint.pt is truncated", "checkpoint.prev.pt is missing", "start it again"]),
    "checkpoint-garbage-no-manifest": (lambda d: (_only_newest(d), (d / "checkpoint.json").unlink(),
                                                  (d / "checkpoint.pt").write_bytes(os.urandom(5000))),
                                       ["checkpoint.pt cannot be read", "start it again"]),
    "checkpoint-other-version": (_foreign_checkpoint,
                                 ["checkpoint.pt was written by fedtorch 0.0.9, this is fedtorch " + fedtorch.__version__,
                                  "resume it with fedtorch 0.0.9, or start the run again"]),
    "config-not-yaml": (lambda d: (d / "config.yaml").write_text("seed: 0\nrounds: [5\nmodel: {name: mlp\n"),
                        ["config.yaml is not a valid config", "restore the file, or start the run again"]),
    "config-bad-value": (_edit("config.yaml", "rounds: 5", "rounds: -2"),
                         ["config.yaml: rounds=-2 is not allowed: must be >= 1", "fix it, or start the run again"]),
    "config-unknown-key": (lambda d: (d / "config.yaml").write_text((d / "config.yaml").read_text() + "bogus: 1\n"),
                           ["unknown key 'bogus' in", "config.yaml"]),
    "config-truncated-still-yaml": (lambda d: (d / "config.yaml").write_text(
        "".join((d / "config.yaml").read_text().splitlines(keepends=True)[:40])),
        ["config.yaml is not the config the run started with", "restore it, or start the run again"]),
    "run-json-not-json": (lambda d: (d / "run.json").write_text('{"fedtorch": "0.1'),
                          ["run.json is damaged (JSONDecodeError", "start the run again"]),
    "run-json-missing": (lambda d: (d / "run.json").unlink(), ["run.json is missing", "start the run again"]),
    "run-json-other-version": (_edit("run.json", f'"fedtorch": "{fedtorch.__version__}"', '"fedtorch": "0.0.9"'),
                               [f"started by fedtorch 0.0.9, this is fedtorch {fedtorch.__version__}",
                                "resume it with fedtorch 0.0.9, or start the run again"]),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_or_foreign_run_file_is_one_error_line(capsys, crashed, tmp_path, case):
    damage, expected = DAMAGE[case]
    run_dir = copy_run(crashed, tmp_path)
    damage(run_dir)
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    line = one_error_line(err)
    assert code == 2
    for text in expected:
        assert text in line, (text, line)
    assert not (run_dir / "result.json").exists()


def _read_only(monkeypatch, folder: Path) -> None:
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").mkdir()  # root ignores permissions: refuse it the way the kernel would
    except PermissionError:
        return
    (folder / "probe").rmdir()
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777, **kwargs):
        if Path(path).is_relative_to(folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, mode, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("case", ["read-only", "file-in-the-way", "file-as-parent"])
def test_output_dir_that_cannot_be_created_is_one_error_line(capsys, experiment, tmp_path, monkeypatch, case):
    if case == "read-only":
        out = tmp_path / "ro"
        _read_only(monkeypatch, out)
        expected = ["Permission denied", "make the folder writable, or set output_dir to a folder you can write"]
    elif case == "file-in-the-way":  # output_dir/Tiny is a regular file
        out = tmp_path / "out"
        out.mkdir()
        (out / "Tiny").write_text("not a folder")
        expected = [str(out / "Tiny"), "a file is in the way of a folder"]
    else:  # output_dir itself below a regular file
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "runs"
        expected = [str(tmp_path / "afile"), "a file is in the way of a folder"]
    code, _, err = run_cli(capsys, "run", experiment, "rounds=1", "model.name=mlp", f"output_dir={out}")
    line = one_error_line(err)
    assert code == 2
    for text in expected:
        assert text in line, (text, line)


def _no_space(monkeypatch, when):
    """Simulate ENOSPC: every low-level write of atomic.py for which ``when(path)`` holds fails."""
    from fedtorch.experiment import atomic

    real = atomic._write

    def write(fd, data):
        if when(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(atomic, "_write", write)


def test_no_space_for_the_first_run_file_is_one_error_line(capsys, experiment, tmp_path, monkeypatch):
    _no_space(monkeypatch, lambda path: True)
    code, _, err = run_cli(capsys, "run", experiment, "rounds=1", "model.name=mlp", f"output_dir={tmp_path / 'runs'}")
    line = one_error_line(err)
    assert code == 2 and "config.yaml: No space left on device; free some space, or set output_dir to another disk" in line


def test_no_space_mid_run_is_one_error_line_and_the_run_resumes(capsys, experiment, reference, tmp_path, monkeypatch):
    """The disk fills up while round 3's checkpoint is written: one line naming
    checkpoint.pt and how to continue; after space is freed, the resume ends bit-identical."""
    from fedtorch.experiment import checkpoint

    saved = []
    real_save = checkpoint.save_checkpoint

    def count(run_dir, server, *args, **kwargs):
        saved.append(server.round)
        return real_save(run_dir, server, *args, **kwargs)

    monkeypatch.setattr("fedtorch.experiment.runner.save_checkpoint", count)
    _no_space(monkeypatch, lambda path: ".checkpoint.pt." in path and saved[-1:] == [3])
    code, _, err = run_cli(capsys, "run", experiment, *ARGS, f"output_dir={tmp_path / 'runs'}")
    (run_dir,) = run_dirs(tmp_path / "runs")
    line = one_error_line(err)
    assert code == 2
    assert f"{run_dir / 'checkpoint.pt'}: No space left on device" in line
    assert f"then continue the run with: fedtorch run --resume {run_dir}" in line
    assert not list(run_dir.glob(".*.tmp"))  # the temporary file was removed
    monkeypatch.undo()  # space freed
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    assert code == 0 and err == "", err
    assert_same_as(run_dir, reference)


# ---------------------------------------------------------------- item 6: umask


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_honour_the_umask(capsys, experiment, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        code, _, err = run_cli(capsys, "run", experiment, "rounds=2", "model.name=mlp", f"output_dir={tmp_path / 'runs'}")
    finally:
        os.umask(old)
    assert code == 0, err
    (run_dir,) = run_dirs(tmp_path / "runs")
    names = ["config.yaml", "run.json", "metrics.csv", "metrics.jsonl", "clients.csv", "checkpoint.pt",
             "checkpoint.prev.pt", "checkpoint.json", "model.pt", "result.json", "accuracy.png"]
    modes = {n: stat.S_IMODE((run_dir / n).stat().st_mode) for n in names}
    assert modes == dict.fromkeys(names, mode)


# ---------------------------------------------------------------- item 2: SIGKILL during the save sequence

# `python -c KILLER run ...`: `fedtorch run` in a process that SIGKILLs itself at a point
# of round R's checkpoint save (KILL_AT=<point>:<R>), patched into checkpoint.py/atomic.py:
#   temp-half: halfway through writing the temporary file (after 4 KiB);
#   manifest-1: the temporary file written, before the manifest lists its digest (step 2);
#   renames: between moving checkpoint.pt to checkpoint.prev.pt and the new file to checkpoint.pt (3-4);
#   manifest-2: both renames done, before the manifest is rewritten for them (step 5).
KILLER = """
import os, signal, sys
import torch
from fedtorch.experiment import atomic, checkpoint

point, kill_round = os.environ["KILL_AT"].split(":")
kill_round = int(kill_round)
current, manifests = [None], []
real_save, real_write, real_manifest, real_replace = torch.save, atomic.HashingFile.write, checkpoint._write_manifest, checkpoint.replace


def die(at):
    if point == at and current[0] == kill_round:
        os.kill(os.getpid(), signal.SIGKILL)


def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and "server" in obj:
        current[0] = obj["round"]
    return real_save(obj, f, *args, **kwargs)


def write(self, data):
    if self.bytes > 4096:
        die("temp-half")
    return real_write(self, data)


def write_manifest(run_dir, entries):
    manifests.append(current[0])
    die(f"manifest-{manifests.count(current[0])}")
    return real_manifest(run_dir, entries)


def replace(src, dst):
    real_replace(src, dst)
    die("renames")


torch.save, atomic.HashingFile.write, checkpoint._write_manifest, checkpoint.replace = save, write, write_manifest, replace
from fedtorch.cli import main

sys.exit(main(sys.argv[1:]))
"""

# point -> (round of checkpoint.pt after the kill, or None when absent; round of checkpoint.prev.pt)
KILL_POINTS = {"temp-half": (2, 1), "manifest-1": (2, 1), "renames": (None, 2), "manifest-2": (3, 2)}


@pytest.mark.parametrize("point", [pytest.param("temp-half", marks=pytest.mark.slow),  # the same files as manifest-1
                                   "manifest-1", "renames", "manifest-2"])
def test_sigkill_during_the_checkpoint_save_leaves_a_run_that_resumes_bit_identically(capsys, experiment, reference,
                                                                                      tmp_path, point):
    out = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, "run", str(experiment), *ARGS, f"output_dir={out}"],
        env={**os.environ, "KILL_AT": f"{point}:3"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
    (run_dir,) = run_dirs(out)
    newest, prev = KILL_POINTS[point]
    assert (ckpt_round(run_dir / "checkpoint.pt") if (run_dir / "checkpoint.pt").exists() else None) == newest
    assert ckpt_round(run_dir / "checkpoint.prev.pt") == prev
    assert [m["round"] for m in metrics(run_dir)] == [1, 2, 3]
    code, _, err = run_cli(capsys, "run", "--resume", run_dir)
    assert code == 0, err
    if newest is None:  # the one case with a warning: checkpoint.pt is missing, checkpoint.prev.pt is used
        assert err.startswith(f"warning: {run_dir / 'checkpoint.pt'} is missing; resuming from") and err.count("\n") == 1
    else:
        assert err == ""
    assert_same_as(run_dir, reference)
    assert not list(run_dir.glob(".checkpoint*.tmp"))  # the next save removed what the killed one left
