"""execution.mode=distributed under torchrun (gloo on loopback): bit-identical to the serial
executor for every algorithm of the matrix, on one node and on two, and every bad input or
failure stops with one line (docs/distributed.md).

Cost: one torchrun of 3 processes runs the whole matrix in one process group
(``distributed_helpers.py``); the 2-node and failure cases are separate launches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, write_tiny_idx
from distributed_helpers import (FEDTORCH, checkpoint_differences, error_lines, finish, free_port,
                                 start_torchrun, torchrun)
from fedtorch.execution.distributed import assign
from fedtorch.execution.distributed_wire import pack, payload_size, unpack
from fedtorch.experiment.config import apply_overrides, load_experiment, validate
from fedtorch.experiment.runner import execute, new_run_dir, prepare
from helpers import run_cli
from test_algorithm_matrix import IDS, VARIANTS

ROUNDS = 5
COMMON = ["federation.clients_per_round=7"]  # 2-3 clients per rank: the order of a rank's results matters
DIST = ["execution.mode=distributed", "execution.threads=1", *COMMON]

FAULTY = '''
import os
import time
from dataclasses import dataclass

from fedtorch.algorithms.base import FedAlgorithm


@dataclass(frozen=True, kw_only=True)
class FaultyHparams:
    """fault: none | kill | hang | raise, on rank ``rank`` in round ``round`` (unless
    $FEDTORCH_TEST_FAULT=0)."""

    fault: str = "none"
    rank: int = 2
    round: int = 1


class Faulty(FedAlgorithm):
    """FedAvg whose local training fails on one rank (a test double)."""

    name = "faulty"
    paper = "none (test double)"
    Hparams = FaultyHparams

    def init_local(self, run):
        hp = self.hp
        armed = os.environ.get("FEDTORCH_TEST_FAULT", "1") == "1"
        if armed and os.environ.get("RANK") == str(hp.rank) and run.ctx.round == hp.round:
            if hp.fault == "kill":
                os._exit(9)
            if hp.fault == "hang":
                time.sleep(60)
            if hp.fault == "raise":
                raise RuntimeError("injected failure")
        return run.broadcast.x
'''


def _overrides(name: str, hp: dict) -> list[str]:
    return [f"algorithm.name={name}", *(f"algorithm.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in hp.items())]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_idx_dir):
    """The tiny experiment (10 clients, 4 per round, logreg, 5 rounds) with the Faulty algorithm."""
    root = tmp_path_factory.mktemp("dist")
    folder = root / "experiments" / "Tiny" / "A0d5C10"
    folder.mkdir(parents=True)
    cfg = tiny_config(tiny_idx_dir, root / "runs", rounds=ROUNDS)
    (folder / "config.py").write_text(FAULTY + "\n\nCONFIG = " + repr(cfg) + "\n")
    return folder


def _serial(experiment, overrides: list[str], out) -> Path:
    """The serial reference run (1 intra-op thread) of the same experiment and overrides."""
    base, folder = load_experiment(experiment)
    cfg = validate(apply_overrides(base, [*overrides, *COMMON, "execution.threads=1", f"output_dir={out}"]))
    run_dir = new_run_dir(cfg, folder)
    execute(prepare(cfg), run_dir)
    return run_dir


BN_CNN = ["model.name=" + str(Path(__file__).resolve().parents[1] / "experiments/Custom/bn_cnn_A0d5C10/config.py") + ":BNCNN",
          "model.local_buffers=true", "algorithm.name=scaffold"]  # BatchNorm statistics per client, with the task
EXTRA_CASES = {  # name -> (overrides, serial reference overrides or None, per-rank overrides)
    "bn-cnn-local-buffers": (BN_CNN, BN_CNN, {}),
    "scaffold-parallel-workers": (["algorithm.name=scaffold", "execution.worker_mode=parallel",
                                   "execution.devices=[cpu/0,cpu/1]"], ["algorithm.name=scaffold"], {}),
    "feddyn-rank0-only-serves": (["algorithm.name=feddyn", "execution.server_trains=false"], ["algorithm.name=feddyn"], {}),
    "scaffold-vectorized-workers": (["algorithm.name=scaffold", "execution.worker_mode=vectorized"], ["algorithm.name=scaffold"], {}),
    "cuda-without-gpu": (["execution.device=cuda"], None, {}),
    "rank2-other-data-seed": ([], None, {"2": ["data.seed=1"]}),
    "rank1-other-lr": ([], None, {"1": ["client.lr=0.1"]}),
    "rank1-other-data-files": ([], None, {"1": ["data.root={other_data}"]}),
    "rank2-training-raises": (["algorithm.name=faulty", "algorithm.fault=raise"], None, {}),
}


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """IDX files like the tiny data's, with other images (the same config, other data)."""
    return write_tiny_idx(tmp_path_factory.mktemp("other_idx"), train_seed=5, test_seed=6)


@pytest.fixture(scope="module")
def matrix(experiment, other_data, tmp_path_factory):
    """Every case in one torchrun of 3 processes: ``{case: {"run_dir" | "error", "code"}}``."""
    tmp = tmp_path_factory.mktemp("matrix")
    cases = {i: {"overrides": [*_overrides(n, hp), *DIST, f"output_dir={tmp / 'dist'}"]} for i, (n, hp) in zip(IDS, VARIANTS)}
    for name, (overrides, _, per_rank) in EXTRA_CASES.items():
        per_rank = {r: [o.format(other_data=other_data) for o in v] for r, v in per_rank.items()}
        cases[name] = {"overrides": [*overrides, *DIST, f"output_dir={tmp / 'dist'}"], "rank_overrides": per_rank}
    spec = tmp / "cases.json"
    spec.write_text(json.dumps({"experiment": str(experiment), "cases": cases, "out": str(tmp / "out.json")}))
    helper = str(Path(__file__).with_name("distributed_helpers.py"))
    code, out, err = torchrun([helper, str(spec)], nproc=3, timeout=300)
    assert code == 0, f"stdout:\n{out[-3000:]}\nstderr:\n{err[-5000:]}"
    return json.loads((tmp / "out.json").read_text()), tmp, err


@pytest.mark.parametrize("name, hp", VARIANTS, ids=IDS)
def test_three_processes_are_bit_identical_to_serial(name, hp, matrix, experiment):
    results, tmp, _ = matrix
    case = results[IDS[VARIANTS.index((name, hp))]]
    assert "run_dir" in case and case["code"] == 0, case
    reference = _serial(experiment, _overrides(name, hp), tmp / "serial")
    assert checkpoint_differences(case["run_dir"], reference) == []


@pytest.mark.parametrize("case", ["scaffold-parallel-workers", "feddyn-rank0-only-serves", "bn-cnn-local-buffers"])
def test_worker_modes_an_idle_rank0_and_model_buffers_are_bit_identical_to_serial(case, matrix, experiment):
    results, tmp, _ = matrix
    assert "run_dir" in results[case], results[case]
    reference = _serial(experiment, EXTRA_CASES[case][1], tmp / "serial")
    assert checkpoint_differences(results[case]["run_dir"], reference) == []
    rows = [json.loads(line) for line in open(f"{results[case]['run_dir']}/distributed_traffic.jsonl")]
    assert len(rows) == ROUNDS and all(sum(r["clients"].values()) == 7 for r in rows)
    assert all(r["bytes_down"]["1"] > 0 and r["bytes_up"]["1"] > 0 for r in rows)
    if case == "feddyn-rank0-only-serves":
        assert all("0" not in r["clients"] for r in rows)


def test_vectorized_workers_match_serial_within_float_tolerance(matrix, experiment):
    results, tmp, _ = matrix
    case = results["scaffold-vectorized-workers"]
    assert "run_dir" in case and case["code"] == 0, case
    reference = _serial(experiment, ["algorithm.name=scaffold"], tmp / "serial")
    a = torch.load(f"{case['run_dir']}/checkpoint.pt", weights_only=True)
    b = torch.load(reference / "checkpoint.pt", weights_only=True)
    assert torch.allclose(a["server"]["x"], b["server"]["x"], rtol=1e-5, atol=1e-6)
    assert a["clients"].keys() == b["clients"].keys()
    assert all(torch.allclose(a["clients"][c][k], b["clients"][c][k], rtol=1e-5, atol=1e-6) for c in a["clients"] for k in a["clients"][c])


@pytest.mark.parametrize("case, words", [
    ("cuda-without-gpu", ["execution.device=cuda", "rank 0", "no CUDA device"]),
    ("rank2-other-data-seed", ["rank 2's config differs", "data.seed=1", "rank 0: 0"]),
    ("rank1-other-lr", ["rank 1's config differs", "client.lr=0.1"]),
    ("rank1-other-data-files", ["rank 1's data or split differ from rank 0's", "same data files"]),
])
def test_bad_input_on_any_rank_stops_every_rank_before_training(case, words, matrix):
    results, tmp, _ = matrix
    assert "error" in results[case] and all(w in results[case]["error"] for w in words), results[case]


def test_a_worker_whose_training_raises_stops_the_run_naming_it(matrix):
    results, _, err = matrix
    assert results["rank2-training-raises"] == {"code": 1}  # stopped before its report, exit 1
    lines = [line for line in error_lines(err) if "injected failure" in line]
    assert lines == ["error: distributed run stopped: rank 2 failed: its local training raised RuntimeError: injected failure"]
    assert not [line for line in error_lines(err) if "rank 0 failed" in line]  # rank 0 stopped the workers; none timed out


def test_two_nodes_finish_a_run_equal_to_serial(experiment, tmp_path):
    port = free_port()
    args = [FEDTORCH, "run", str(experiment), "algorithm.name=scaffold", *DIST, f"output_dir={tmp_path / 'dist'}"]
    procs = [start_torchrun(args, 1, node=(n, 2, port)) for n in (0, 1)]
    outs = [finish(p, 120) for p in procs]
    assert [o[0] for o in outs] == [0, 0], outs
    (run_dir,) = [line.split(": ", 1)[1] for o in outs for line in o[1].splitlines() if line.startswith("run directory:")]
    assert checkpoint_differences(run_dir, _serial(experiment, ["algorithm.name=scaffold"], tmp_path / "serial")) == []
    assert [p.left for p in procs] == [[], []]


def test_two_nodes_with_different_overrides_stop_with_one_error_line(experiment, tmp_path):
    port = free_port()
    args = [FEDTORCH, "run", str(experiment), *DIST, f"output_dir={tmp_path / 'dist'}"]
    procs = [start_torchrun(args + (["data.seed=1"] if n else []), 1, node=(n, 2, port)) for n in (0, 1)]
    outs = [finish(p, 120) for p in procs]
    errors = [line for o in outs for line in error_lines(o[2])]
    assert all(o[0] != 0 for o in outs) and len(errors) == 1, outs
    assert "config differs from rank 0's: data.seed=" in errors[0]
    assert not (tmp_path / "dist").exists()  # stopped before the run directory


@pytest.mark.parametrize("fault, words", [("kill", ["rank 2 failed", "connection closed"]),
                                          ("hang", ["rank 2 failed", "execution.timeout_s=3 s"])])
def test_a_dead_or_silent_worker_stops_the_run_with_one_line_naming_it(fault, words, experiment, tmp_path):
    args = [FEDTORCH, "run", str(experiment), "algorithm.name=faulty", f"algorithm.fault={fault}",
            "execution.timeout_s=3", *DIST, f"output_dir={tmp_path}"]
    code, out, err = torchrun(args, nproc=3, timeout=90)  # asserts that no process is left
    lines = [line for line in error_lines(err) if "rank 2 failed" in line]
    assert code != 0 and len(lines) == 1 and all(w in lines[0] for w in words), err[-3000:]
    assert not [line for line in error_lines(err) if "rank 0 failed" in line]  # rank 0 stopped rank 1 in time


def test_a_stopped_run_resumes_under_torchrun_bit_identical_to_an_uninterrupted_serial_run(experiment, tmp_path,
                                                                                          monkeypatch):
    faulty = ["algorithm.name=faulty", "algorithm.fault=raise", "algorithm.round=3"]
    code, out, err = torchrun([FEDTORCH, "run", str(experiment), *faulty, *DIST, f"output_dir={tmp_path / 'dist'}"])
    assert code != 0 and "injected failure" in err
    (run_dir,) = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("run directory:")]
    code, out, err = torchrun([FEDTORCH, "run", "--resume", run_dir], env={"FEDTORCH_TEST_FAULT": "0"})
    assert code == 0, err[-3000:]
    monkeypatch.setenv("FEDTORCH_TEST_FAULT", "0")
    assert checkpoint_differences(run_dir, _serial(experiment, faulty, tmp_path / "serial")) == []
    rounds = [json.loads(line)["round"] for line in open(f"{run_dir}/distributed_traffic.jsonl")]
    assert rounds == [0, 1, 2, 3, 4]  # the failed round 3 is not logged; the resume appends rounds 3 and 4


def test_tasks_go_longest_first_to_the_least_loaded_rank():
    assert assign([1, 1, 2], [0, 1]) == {0: [2], 1: [0, 1]}  # in-order greedy would give rank 0 three steps
    assert assign([3, 3, 3], [1, 2]) == {1: [0, 2], 2: [1]}  # ties: lower task index, then the rank listed first
    assert assign([], [0, 1]) == {0: [], 1: []}
    with pytest.raises(ValueError, match="server_trains"):
        assign([1], [])


def test_the_wire_moves_every_dtype_and_shape_bit_for_bit():
    tensors = {("a",): torch.randn(3, 5), ("b", 1): torch.tensor(2.5, dtype=torch.float64), ("c",): torch.arange(7),
               ("d",): torch.tensor([True, False, True]), ("e",): torch.zeros(0, 4), ("f",): torch.randn(6).to(torch.bfloat16),
               ("g",): torch.randn(4, 4).t()}  # not contiguous
    spec, payload = pack(tensors, torch.device("cpu"))
    assert payload.dtype == torch.uint8 and payload.numel() == payload_size(spec) and payload.numel() % 8 == 0
    back = unpack(spec, payload)
    assert list(back) == list(tensors)
    assert all(back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t) for k, t in tensors.items())
    assert all(back[k].untyped_storage().data_ptr() != payload.untyped_storage().data_ptr() for k in back)  # copies


def test_outside_torchrun_and_with_one_process_one_error_line_and_exit_2(experiment, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    code, _, err = run_cli(capsys, "run", experiment, *DIST)
    assert code == 2 and error_lines(err) == [err.strip()] and "torchrun --standalone --nproc-per-node" in err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    code, _, err = run_cli(capsys, "run", experiment, *DIST)
    assert code == 2 and error_lines(err) == [err.strip()] and "WORLD_SIZE=1" in err and "2 or more" in err


def test_distributed_mode_through_the_api_says_how_to_launch(experiment):
    import fedtorch
    from fedtorch.experiment.errors import ConfigError

    with pytest.raises(ConfigError, match="only as `fedtorch run` under torchrun"):
        fedtorch.run(experiment, **{"execution.mode": "distributed"})
