"""Local DP-SGD on the clients (issue 16, item 2): every local step's gradient is Abadi et
al.'s noisy clipped sum over a Poisson lot, divided by the expected lot size; each client's
epsilon is dp-accounting's for its own (q_i, steps, sigma / sqrt(m)); serial, parallel and
vectorized executors agree bit for bit, and a killed run resumes bit-identically."""

from __future__ import annotations

import dataclasses
import json
import math

import dp_accounting
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config, write_experiment
from helpers import metrics, run_cli, run_dirs
from test_model_buffers import BN_MODEL
from wire_helpers import assert_same_run, killed_and_resumed, prepared, run_rounds

from fedtorch.execution.local_training import train_task
from fedtorch.flat import FlatModule
from fedtorch.privacy import LocalDPSGD
from fedtorch.protocol import ClientTask, RoundContext
from fedtorch.seeding import generator

CLIP, Z, B, LR = 0.5, 0.8, 16, 0.05
DP = ["privacy.mechanism=dp_sgd", f"privacy.clip={CLIP}", f"privacy.noise_multiplier={Z}", "client.momentum=0"]


def reference_update(prep, client: int, round: int, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Client ``client``'s model after ``steps`` local SGD steps from ``x``, recomputed one
    sample at a time with plain autograd: Poisson lots of rate min(1, B / n_i), each
    per-sample gradient clipped to C (in float64), N(0, (z C)^2) on the sum, divided by q n_i."""
    idx = prep.data.client_indices[client]
    n = idx.numel()
    q = min(1.0, B / n)
    lots = generator(0, round, client, "dp_sgd_lots")
    noise = generator(0, round, client, "dp_sgd_noise")
    replica = FlatModule(prep.executor.model_factory())
    train_x, train_y = prep.data.data.train_x, prep.data.data.train_y
    y, clipped_any = x.clone(), False
    for _ in range(steps):
        lot = idx[torch.rand(n, generator=lots) < q]
        total = torch.zeros(x.numel(), dtype=torch.float64)
        replica.params.copy_(y)
        for j in lot.tolist():
            g = replica.loss_and_grad(train_x[j : j + 1], train_y[j : j + 1], F.cross_entropy)[1].double()
            norm = float(g.norm())
            clipped_any |= norm > CLIP
            total += (g * min(1.0, CLIP / norm)).float().double()
        g = (total + Z * CLIP * torch.randn(x.numel(), generator=noise, dtype=torch.float64)) / (q * n)
        y = y - LR * g.float()
    assert clipped_any  # the clipping is exercised
    return y


def test_each_local_step_is_the_noisy_clipped_sum_over_a_poisson_lot(tiny_experiment):
    prep = prepared(tiny_experiment, *DP)
    server, _, rounds = run_rounds(prep, 2)
    x = prep.x0
    sizes = set()
    for t, (report, messages, weights) in enumerate(rounds):
        for result in report.results:  # M = 4 of N = 10 clients, unequal n_i and K_i = ceil(n_i / B)
            n = int(prep.data.client_indices[result.client_id].numel())
            sizes.add(n)
            want = reference_update(prep, result.client_id, t, x, math.ceil(n / B))
            assert torch.allclose(x - result.message.delta, want, rtol=1e-5, atol=1e-6), (t, result.client_id)
        x = x - (weights.to(messages.delta.dtype)[:, None] * messages.delta).sum(0)  # FedAvg, server lr 1
    assert torch.allclose(x, server.x, rtol=0, atol=1e-6)
    assert len(sizes) > 2


def expected_epsilon(prep, sampled: list[list[int]], z: float) -> tuple[float, float]:
    """(max, mean) over clients that trained of dp-accounting's epsilon for their own lots."""
    steps = {}
    for clients in sampled:
        for c in clients:
            n = int(prep.data.client_indices[c].numel())
            steps[c] = steps.get(c, 0) + math.ceil(n / B)
    eps = []
    for c, s in steps.items():
        n = int(prep.data.client_indices[c].numel())
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_accounting.PoissonSampledDpEvent(min(1.0, B / n), dp_accounting.GaussianDpEvent(z)), s)
        eps.append(acc.get_epsilon(1e-5))
    return max(eps), sum(eps) / len(eps)


@pytest.mark.parametrize("algorithm, queries", [("fedavg", 1), ("fedsam", 2), ("deltasgd", 2)])
def test_each_clients_epsilon_is_dp_accountings_for_its_lots(tiny_experiment, algorithm, queries):
    prep = prepared(tiny_experiment, *DP, f"algorithm.name={algorithm}")
    source = prep.settings.local_privacy.source
    assert source.queries_per_step == queries  # measured at start-up: SAM and Delta-SGD query each lot twice
    _, _, rounds = run_rounds(prep, 3)
    sampled = []
    for report, _, _ in rounds:
        sampled.append([r.client_id for r in report.results])
        top, mean = expected_epsilon(prep, sampled, Z / math.sqrt(queries))
        assert report.server_metrics["local_epsilon"] == top
        assert report.server_metrics["local_epsilon_mean"] == pytest.approx(mean, rel=1e-12)


def test_a_step_that_queries_more_than_accounted_is_refused(tiny_experiment):
    prep = prepared(tiny_experiment, *DP, "algorithm.name=fedsam")
    algorithm, idx = prep.algorithm, prep.data.client_indices[0]
    ctx = RoundContext(round=0, client_id=0, seed=0, num_samples=int(idx.numel()), num_steps=2, lr=LR)
    replica = FlatModule(prep.executor.model_factory())
    server = algorithm.init_server(prep.x0)
    with pytest.raises(RuntimeError, match="accounted for 1 gradient"):
        train_task(algorithm, replica, prep.data.data.train_x, prep.data.data.train_y, ClientTask(ctx, idx), B,
                   algorithm.broadcast(server), algorithm.init_client(prep.x0), F.cross_entropy, LocalDPSGD(CLIP, Z, 1))


def test_executors_agree_bit_for_bit(tiny_experiment):
    finals = {}
    for mode in ("serial", "parallel", "vectorized"):
        prep = prepared(tiny_experiment, *DP, "algorithm.name=scaffold", f"execution.mode={mode}", "execution.threads=1")
        if mode == "vectorized":
            assert "serial fallback" in prep.executor.description and "Poisson lots" in prep.executor.description
        server, _, rounds = run_rounds(prep, 2)
        finals[mode] = (server.x, [r.server_metrics for r, _, _ in rounds])
        prep.executor.close()
    assert torch.equal(finals["serial"][0], finals["parallel"][0]) and torch.equal(finals["serial"][0], finals["vectorized"][0])
    assert finals["serial"][1] == finals["parallel"][1] == finals["vectorized"][1]


def test_a_killed_run_resumes_bit_identically(capsys, tmp_path, tiny_idx_dir):
    cfg = tiny_config(tiny_idx_dir, tmp_path / "runs", privacy={"mechanism": "dp_sgd", "clip": CLIP, "noise_multiplier": Z})
    folder = write_experiment(tmp_path, "A0d5C10", cfg)
    assert run_cli(capsys, "run", folder, "rounds=4")[0] == 0
    (reference,) = run_dirs(tmp_path / "runs")
    eps = [m["local_epsilon"] for m in metrics(reference)]
    assert eps == sorted(eps) and eps[0] > 0 and eps[-1] > eps[0]  # the worst client so far: never falls
    run_dir = killed_and_resumed(capsys, folder, ["rounds=4"], 2, tmp_path / "killed")
    assert_same_run(run_dir, reference)  # the per-client step counts came back from the checkpoint
    result = json.loads((run_dir / "result.json").read_text())
    assert result["local_epsilon"] == eps[-1] and result["queries_per_step"] == 1


def test_bad_local_dp_settings_are_config_errors(capsys, tiny_experiment):
    for args, words in ((["privacy.mechanism=dp_sgd"], "needs privacy.noise_multiplier"),
                        ([*DP, "privacy.target_epsilon=3"], "target_epsilon"),
                        ([*DP, "privacy.sampling=poisson"], "privacy.sampling='poisson'"),
                        ([*DP, "federation.mode=async"], "federation.mode='async'"),
                        ([*DP, "privacy.clip=0"], "privacy.clip=0"),
                        ([*DP, f"model.name={BN_MODEL}"], "BatchNorm")):
        code, _, err = run_cli(capsys, "run", tiny_experiment, *args)
        assert code == 2 and words in err, (args, err)
