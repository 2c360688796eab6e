"""The disk-backed client-state store (``federation.state_memory_mb``): same run bit for bit,
snapshots that survive later puts and ``kill -9``, bounded disk, the memory budget, and
the config rule through the CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fedtorch.federation import ClientStateStore
from fedtorch.federation.client_states import SPILL_DIR_NAME
from helpers import run_cli, run_dirs


def _state(client: int, version: int, size: int = 50) -> dict:
    """A recognisable state: a float vector and an int scalar, both naming (client, version)."""
    g = torch.Generator().manual_seed(1000 * client + version)
    return {"c": torch.randn(size, generator=g), "v": torch.tensor(version, dtype=torch.int64)}


def _assert_states(store: ClientStateStore, versions: dict[int, int]) -> None:
    got = store.get_many(list(versions), lambda: {})
    for (c, v), state in zip(versions.items(), got):
        want = _state(c, v)
        assert state.keys() == want.keys(), (c, v)
        assert torch.equal(state["c"], want["c"]) and int(state["v"]) == v, (c, v, int(state["v"]))


def _spilled(tmp_path, mb: float = 0.0005) -> ClientStateStore:  # 0.0005 MiB = 524 bytes: about two states
    return ClientStateStore(memory_mb=mb, spill_dir=tmp_path / SPILL_DIR_NAME)


def _scaffold_run(tiny_experiment, *extra: str):
    from fedtorch.experiment.config import apply_overrides, load_experiment, validate
    from fedtorch.experiment.runner import execute, new_run_dir, prepare

    base, folder = load_experiment(tiny_experiment)
    # dirichlet alpha 0.5: unequal n_i; M = 4 of N = 10; the 2NN (199 k parameters, 0.8 MB per c_i)
    cfg = validate(apply_overrides(base, ["algorithm.name=scaffold", "model.name=mlp", "rounds=4", *extra]))
    run_dir = new_run_dir(cfg, folder)
    execute(prepare(cfg), run_dir)
    return cfg, run_dir


def _final_states(cfg, run_dir) -> dict[int, dict]:
    from fedtorch.experiment.checkpoint import load_checkpoint

    server, clients = load_checkpoint(run_dir)
    store = ClientStateStore(cfg.federation.state_memory_mb, run_dir / SPILL_DIR_NAME)
    store.load_state_dict(clients)
    ids = list(range(cfg.data.num_clients))
    states = store.get_many(ids, lambda: {})
    return server, {c: s for c, s in zip(ids, states) if s}


def test_a_spilled_scaffold_run_is_bit_identical_to_the_all_in_ram_run(tiny_experiment):
    cfg_ram, ram = _scaffold_run(tiny_experiment)
    cfg_disk, disk = _scaffold_run(tiny_experiment, "federation.state_memory_mb=1.0")  # one c_i fits in RAM
    assert (disk / SPILL_DIR_NAME).is_dir() and not (ram / SPILL_DIR_NAME).exists()
    server_ram, states_ram = _final_states(cfg_ram, ram)
    server_disk, states_disk = _final_states(cfg_disk, disk)
    assert torch.equal(server_ram.x, server_disk.x)
    assert torch.equal(server_ram.extra["c"], server_disk.extra["c"])
    assert 4 < len(states_ram) <= 10 and states_ram.keys() == states_disk.keys()
    assert all(torch.equal(states_ram[c]["c"], states_disk[c]["c"]) for c in states_ram)
    # the checkpoint holds a reference, not the states: far smaller than the RAM run's
    assert (disk / "checkpoint.pt").stat().st_size * 4 < (ram / "checkpoint.pt").stat().st_size


CLIENTS = list(range(6))
V1, V2 = {c: 1 for c in CLIENTS}, {0: 2, 1: 2, 2: 2, 3: 2, 4: 1, 5: 1}


def _two_snapshots(folder):
    """A store with snapshots `first` (every client at version 1) and `second` (0-3 at
    version 2), then three rounds of puts of every client that no snapshot took."""
    store = _spilled(folder)
    store.put_many(CLIENTS, [_state(c, 1) for c in CLIENTS])
    first = store.state_dict()
    store.put_many(CLIENTS[:4], [_state(c, 2) for c in CLIENTS[:4]])  # clients 4, 5 keep version 1
    second = store.state_dict()
    for v in (3, 4, 5):  # enough writes to reuse every free slot
        store.put_many(CLIENTS, [_state(c, v) for c in CLIENTS])
    _assert_states(store, {c: 5 for c in CLIENTS})
    return first, second


def _put_rounds(store, versions):
    for v in versions:
        store.put_many(CLIENTS, [_state(c, v) for c in CLIENTS])


@pytest.mark.parametrize("newest_damaged", [False, True])
def test_each_of_the_two_last_snapshots_survives_later_puts_and_a_resume(tmp_path, newest_damaged):
    first, second = _two_snapshots(tmp_path)
    for snap, versions in ((first, V1), (second, V2)):
        fresh = _spilled(tmp_path)
        fresh.load_state_dict(snap)
        _assert_states(fresh, versions)
    # resume from checkpoint.pt (second) or, when it is damaged, checkpoint.prev.pt (first)
    snap, versions = (first, V1) if newest_damaged else (second, V2)
    resumed = _spilled(tmp_path)
    resumed.load_state_dict(snap)
    _put_rounds(resumed, (9, 10))
    _assert_states(resumed, {c: 10 for c in CLIENTS})
    for kept in (snap, first):  # the loaded snapshot and the one before it (first: itself)
        again = _spilled(tmp_path)
        again.load_state_dict(kept)
        _assert_states(again, V1 if kept is first else versions)
    if not newest_damaged:  # the resumed run's first checkpoint: `second` stays as checkpoint.prev.pt
        resumed.state_dict()
        _put_rounds(resumed, (11, 12, 13))
        again = _spilled(tmp_path)
        again.load_state_dict(second)
        _assert_states(again, V2)


CHILD = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    from test_client_state_store import _spilled, _state
    from pathlib import Path
    out = Path({out!r})
    store = _spilled(out)
    clients = list(range(8))
    for name, v in (("a", 1), ("b", 2)):
        store.put_many(clients, [_state(c, v) for c in clients])
        with open(out / (name + ".pt.tmp"), "wb") as f:
            torch.save(store.state_dict(), f)
            f.flush(); os.fsync(f.fileno())
        os.replace(out / (name + ".pt.tmp"), out / (name + ".pt"))
    print("saved", flush=True)
    v = 3
    while True:  # puts until killed: evictions write free slots, the files grow and are reused
        store.put_many(clients, [_state(c, v) for c in clients])
        v += 1
""")


def test_a_kill_9_after_a_snapshot_leaves_it_readable(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "saved"
        time.sleep(1.0)  # mid-way through later puts
        assert child.poll() is None
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    for name, v in (("a", 1), ("b", 2)):
        store = _spilled(tmp_path)
        store.load_state_dict(torch.load(tmp_path / f"{name}.pt", weights_only=True))
        _assert_states(store, {c: v for c in range(8)})


def test_disk_space_is_reclaimed_not_grown_with_rounds(tmp_path):
    store = _spilled(tmp_path)
    num_clients, per_round = 20, 5
    sizes = []
    for r in range(60):
        clients = [(7 * r + 3 * j) % num_clients for j in range(per_round)]
        store.put_many(clients, [_state(c, r) for c in clients])
        store.state_dict()  # a checkpoint every round
        sizes.append(store.disk_bytes)
    record = store._files[0].record_bytes
    # live + two snapshots <= 3 x clients, plus the file's growth step; 60 x 5 = 300 records if never reused
    assert sizes[-1] <= (3 * num_clients + 16) * record
    assert sizes[-1] == sizes[30]  # stopped growing


def test_the_memory_budget_is_respected(tmp_path):
    budget_mb = 0.002  # 2097 bytes: 10 states of 208 bytes
    store = _spilled(tmp_path, budget_mb)
    for r in range(10):
        clients = [(3 * r + j) % 25 for j in range(7)]
        store.put_many(clients, [_state(c, r) for c in clients])
        assert 0 < store.memory_bytes <= budget_mb * 2**20
        store.get_many(range(25), lambda: {})
        assert store.memory_bytes <= budget_mb * 2**20
        if r % 3 == 0:
            store.state_dict()
            assert store.memory_bytes <= budget_mb * 2**20
    assert len(store) == 25 and store.nbytes == 25 * 208 and store.disk_bytes > 0


@pytest.mark.parametrize("value", ["-1", ".nan", "abc"])
def test_a_bad_state_memory_mb_is_one_clear_error(value, capsys, tiny_experiment, runs_dir):
    code, out, err = run_cli(capsys, "run", tiny_experiment, f"federation.state_memory_mb={value}")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "federation.state_memory_mb" in lines[0], err
    assert "Traceback" not in err and not run_dirs(runs_dir)
    if value != "abc":
        assert ">= 0" in lines[0] and "null" in lines[0]
