"""Hierarchical FL under torchrun: execution.edges=2 over 4 worker ranks (rank 0 serving, 5
processes) equals the flat serial run within 1e-6 relative where the edges send partial sums
(FedAvg, FedProx, SCAFFOLD under both weightings), and bit for bit where they forward
(FedExP's server rule, robust aggregation). One torchrun runs every case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distributed_helpers import FEDTORCH, error_lines, torchrun
from helpers import metrics
from test_distributed import DIST, ROUNDS, _serial, experiment  # noqa: F401  (the module fixture)

EDGES = ["execution.edges=2", "execution.server_trains=false"]  # ranks 1-4 in edges {1, 2} and {3, 4}
CASES = {  # name -> (overrides, the edges send sums)
    "fedavg": (["algorithm.name=fedavg"], True),
    "fedprox": (["algorithm.name=fedprox", "algorithm.mu=0.1"], True),
    "scaffold": (["algorithm.name=scaffold"], True),
    "scaffold-uniform": (["algorithm.name=scaffold", "federation.weighting=uniform"], True),  # edges of 4 and 3 clients
    "fedexp-forwarded": (["algorithm.name=fedexp"], False),
    "median-forwarded": (["algorithm.name=fedavg", "robust.aggregator=median"], False),
}
RANK0_LEADS = ["algorithm.name=scaffold", "execution.edges=2"]  # edges {0, 1, 2} and {3, 4}: rank 0 leads one


@pytest.fixture(scope="module")
def runs(experiment, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("edges")
    cases = {name: {"overrides": [*o, *EDGES, *DIST, f"output_dir={tmp / 'dist'}"]} for name, (o, _) in CASES.items()}
    cases["rank0-leads"] = {"overrides": [*RANK0_LEADS, *DIST, f"output_dir={tmp / 'dist'}"]}
    cases["too-many-edges"] = {"overrides": ["execution.edges=5", "execution.server_trains=false", *DIST,
                                             f"output_dir={tmp / 'dist'}"]}
    cases["rank2-other-edges"] = {"overrides": [*EDGES, *DIST, f"output_dir={tmp / 'dist'}"],
                                  "rank_overrides": {"2": ["execution.edges=1"]}}
    cases["async-edges"] = {"overrides": [*EDGES, "federation.mode=async", *DIST, f"output_dir={tmp / 'dist'}"]}
    cases["member-raises"] = {"overrides": ["algorithm.name=faulty", "algorithm.fault=raise", *EDGES, *DIST,
                                            f"output_dir={tmp / 'dist'}"]}  # last: the run stops; rank 2 is a member of {1, 2}
    spec = tmp / "cases.json"
    spec.write_text(json.dumps({"experiment": str(experiment), "cases": cases, "out": str(tmp / "out.json")}))
    helper = str(Path(__file__).with_name("distributed_helpers.py"))
    code, out, err = torchrun([helper, str(spec)], nproc=5, timeout=400)  # asserts that no process is left
    assert code == 0, f"stdout:\n{out[-3000:]}\nstderr:\n{err[-5000:]}"
    return json.loads((tmp / "out.json").read_text()), tmp, err


def _gaps(a: Path, b: Path) -> dict[str, float]:
    """Relative difference of the final global model and of every client state tensor."""
    x = torch.load(a / "checkpoint.pt", weights_only=True)
    y = torch.load(b / "checkpoint.pt", weights_only=True)
    assert x["clients"].keys() == y["clients"].keys() and x["server"]["round"] == y["server"]["round"] == ROUNDS

    def rel(u, v):
        return float((u - v).norm() / max(float(v.norm()), 1e-12))

    out = {"x": rel(x["server"]["x"], y["server"]["x"])}
    out.update({f"client {c}.{k}": rel(x["clients"][c][k], y["clients"][c][k]) for c in x["clients"] for k in x["clients"][c]})
    out.update({f"extra.{k}": rel(v, y["server"]["extra"][k]) for k, v in x["server"]["extra"].items()})
    return out


def _within(gaps: dict[str, float]) -> None:
    """The global model and the server state within 1e-6 relative of the flat run; client
    states within 1e-5: a control variate is Delta_i / (K_i eta_l), a difference of two
    models, so the models' float rounding (1 ulp of x per round) is larger relative to it."""
    loose = {k: v for k, v in gaps.items() if v > (1e-5 if k.startswith("client") else 1e-6)}
    assert not loose, loose
    assert gaps["x"] <= 1e-6


@pytest.mark.parametrize("name", list(CASES))
def test_two_edges_of_two_workers_equal_the_flat_run(name, runs, experiment):  # noqa: F811
    results, tmp, _ = runs
    overrides, sums = CASES[name]
    case = results[name]
    assert "run_dir" in case and case["code"] == 0, case
    run_dir = Path(case["run_dir"])
    reference = _serial(experiment, overrides, tmp / "serial")
    gaps = _gaps(run_dir, reference)
    if sums:
        _within(gaps)
    else:
        assert max(gaps.values()) == 0, gaps  # forwarded messages: the flat round, bit for bit
    rows = metrics(run_dir)
    flat = metrics(reference)
    assert [r["clients_aggregated"] for r in rows] == [r["clients_aggregated"] for r in flat] == [7] * ROUNDS
    assert [r["bytes_up"] for r in rows] == [r["bytes_up"] for r in flat]  # what the clients sent (to their edge)
    if sums:  # the server received two edge rows, not seven messages
        assert all(0 < r["bytes_up_edges"] <= r["bytes_up"] * 2 / 7 + 128 for r in rows)  # + the rows' counts
        assert all(abs(r["train_loss"] - f["train_loss"]) <= 1e-6 * abs(f["train_loss"]) for r, f in zip(rows, flat))
    else:
        assert all(r.get("bytes_up_edges") is None for r in rows)
    traffic = [json.loads(line) for line in open(run_dir / "distributed_traffic.jsonl")]
    assert all(set(t["bytes_up"]) == {"1", "3"} for t in traffic)  # only the leaders answer rank 0
    assert all(sum(t["clients"].values()) == 7 and "0" not in t["clients"] for t in traffic)


def test_rank0_may_lead_an_edge(runs, experiment):  # noqa: F811
    results, tmp, _ = runs
    case = results["rank0-leads"]
    assert "run_dir" in case and case["code"] == 0, case
    _within(_gaps(Path(case["run_dir"]), _serial(experiment, ["algorithm.name=scaffold"], tmp / "serial")))
    traffic = [json.loads(line) for line in open(Path(case["run_dir"]) / "distributed_traffic.jsonl")]
    assert all(set(t["bytes_up"]) == {"1", "2", "3"} for t in traffic)  # rank 0 gathers 1 and 2 itself; 3 leads {3, 4}


@pytest.mark.parametrize("case, words", [
    ("too-many-edges", "more edges than the 4 training rank(s) of WORLD_SIZE=5"),
    ("rank2-other-edges", "rank 2's config differs from rank 0's: execution.edges, execution.server_trains = (1, False) "
                          "(rank 0: (2, False))"),
    ("async-edges", "execution.edges is for synchronous rounds"),
])
def test_bad_edges_stop_every_rank_with_one_error(case, words, runs):
    results, _, _ = runs
    assert words in results[case]["error"] and "run_dir" not in results[case]


def test_a_members_failure_reaches_rank_0_through_its_leader(runs):
    results, _, err = runs
    assert results["member-raises"]["code"] == 1
    lines = [line for line in err.splitlines() if line.startswith("error:") and "injected failure" in line]
    assert lines == ["error: distributed run stopped: rank 2 failed: its local training raised RuntimeError: injected failure"]


@pytest.mark.parametrize("fault, words", [("kill", ["rank 3 failed", "connection closed"]),
                                          ("hang", ["rank 3 failed", "2 x execution.timeout_s=3 s"])])
def test_a_dead_or_silent_edge_leader_stops_the_run_with_one_line_naming_it(fault, words, experiment, tmp_path):  # noqa: F811
    """Rank 3 leads the edge {3, 4}: rank 0 waits twice execution.timeout_s for a leader (it
    may itself be waiting on a member), then names it; rank 0 itself never times out."""
    args = [FEDTORCH, "run", str(experiment), "algorithm.name=faulty", f"algorithm.fault={fault}", "algorithm.rank=3",
            "execution.timeout_s=3", *EDGES, *DIST, f"output_dir={tmp_path}"]
    code, out, err = torchrun(args, nproc=5, timeout=120)  # asserts that no process is left
    lines = [line for line in error_lines(err) if "rank 3 failed" in line]
    assert code != 0 and len(lines) == 1 and all(w in lines[0] for w in words), err[-3000:]
    assert not [line for line in error_lines(err) if "rank 0 failed" in line]
