"""DP-FedAvg wired into the synchronous loop (issue 16, item 2): the server steps on the
clipped, noised mean with the fixed denominator M; epsilon per round equals dp-accounting's
for the same (q, z, rounds, delta); the clip norm and round count resume from the
checkpoint; the accuracy-vs-epsilon table lives in docs/results/dp_fedavg_main_job.md."""

from __future__ import annotations

import dataclasses
import json

import dp_accounting
import torch

from conftest import tiny_config, write_experiment
from helpers import metrics, run_cli, run_dirs
from wire_helpers import assert_same_run, killed_and_resumed, prepared, run_rounds

from fedtorch.federation import ClientStateStore, run_sync
from fedtorch.seeding import generator

DP = ["privacy.mechanism=dp_fedavg", "privacy.clip=0.05", "federation.clients_per_round=5"]


def test_the_server_steps_on_the_clipped_noised_mean(tiny_experiment):
    prep = prepared(tiny_experiment, *DP, "privacy.noise_multiplier=0.7")
    _, _, rounds = run_rounds(prep, 2)
    clip = 0.05
    for t, (report, messages, weights) in enumerate(rounds):
        deltas = torch.stack([r.message.delta for r in report.results]).double()
        norms = deltas.norm(dim=1, keepdim=True)
        assert (norms > clip).any()  # the clipping is exercised
        clipped = deltas * torch.clamp(clip / norms, max=1.0)
        noise = torch.randn(deltas.shape[1], generator=generator(0, t, "dp_noise"), dtype=torch.float64)
        want = (clipped.sum(0) + 0.7 * clip * noise) / 5  # the fixed denominator M, whatever the n_i
        assert messages.delta.shape[0] == 1 and weights.tolist() == [1.0]
        assert torch.allclose(messages.delta[0].double(), want, rtol=0, atol=1e-6)


def test_epsilon_per_round_is_dp_accountings(tiny_experiment, tmp_path):
    prep = prepared(tiny_experiment, *DP, "privacy.target_epsilon=6", "rounds=3")
    z = prep.settings.privacy.mechanism.noise_multiplier
    _, _, rounds = run_rounds(prep, 3)
    for t, (report, _, _) in enumerate(rounds):
        acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(10, 5, dp_accounting.GaussianDpEvent(z / 2)), t + 1)
        assert report.server_metrics["epsilon"] == acc.get_epsilon(1e-5)
    assert 5.9 < rounds[-1][0].server_metrics["epsilon"] <= 6.0  # calibrated for the 3 planned rounds


def test_adaptive_clipping_resumes_bit_identically(capsys, tmp_path, tiny_idx_dir):
    cfg = tiny_config(tiny_idx_dir, tmp_path / "runs", federation={"clients_per_round": 5},
                      privacy={"mechanism": "dp_fedavg", "clip": 0.05, "noise_multiplier": 0.5,
                               "adaptive_clipping": True, "clipped_count_stddev": 1.0})
    folder = write_experiment(tmp_path, "A0d5C10", cfg)
    assert run_cli(capsys, "run", folder, "rounds=5")[0] == 0
    (reference,) = run_dirs(tmp_path / "runs")
    clips = [m["clip_norm"] for m in metrics(reference)]
    assert clips[0] == 0.05 and len(set(clips)) == 5  # C moves every round
    run_dir = killed_and_resumed(capsys, folder, ["rounds=5"], 3, tmp_path / "killed")
    assert_same_run(run_dir, reference)  # epsilon and C included
    result = json.loads((run_dir / "result.json").read_text())
    assert result["epsilon"] == metrics(run_dir)[-1]["epsilon"] and result["noise_multiplier"] == 0.5


def test_bad_privacy_settings_are_config_errors(capsys, tiny_experiment):
    for args, words in ((["privacy.mechanism=laplace"], "privacy.mechanism='laplace'"),
                        (["privacy.mechanism=dp_fedavg"], "exactly one of"),
                        ([*DP, "privacy.noise_multiplier=1", "privacy.clip=0"], "privacy.clip"),
                        ([*DP, "privacy.noise_multiplier=1", "algorithm.name=scaffold"], "own server rule"),
                        ([*DP, "privacy.noise_multiplier=1", "robust.aggregator=median"], "robust.aggregator"),
                        ([*DP, "privacy.noise_multiplier=1", "compression.method=topk"], "compression.method")):
        code, _, err = run_cli(capsys, "run", tiny_experiment, *args)
        assert code == 2 and words in err, (args, err)


def test_poisson_sampling_releases_noise_in_an_empty_round(tiny_experiment):
    from fedtorch.privacy import poisson_sample

    prep = prepared(tiny_experiment, "privacy.mechanism=dp_fedavg", "privacy.clip=0.05", "privacy.noise_multiplier=1.0",
                    "privacy.sampling=poisson", "federation.clients_per_round=1")  # q = 1/10
    seen, xs = [], []
    settings = dataclasses.replace(prep.settings, rounds=6)
    run_sync(prep.algorithm, prep.executor, prep.data, prep.initial_server(), ClientStateStore(), settings,
             on_round=lambda s, r: (seen.append(r), xs.append(s.x.clone())))  # the states, not the messages
    sizes = [len(r.results) for r in seen]
    assert sizes == [len(poisson_sample(10, 0.1, generator(0, t, "client_sampling"))) for t in range(6)]
    assert 0 in sizes and max(sizes) > 0
    x = [prep.x0] + xs
    for t, report in enumerate(seen):
        acc = dp_accounting.rdp.RdpAccountant()  # add/remove-one neighbours for Poisson sampling
        acc.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), t + 1)
        assert report.server_metrics["epsilon"] == acc.get_epsilon(1e-5)
        if not report.results:  # no client: the server still steps on noise / (q N)
            noise = torch.randn(x[t].numel(), generator=generator(0, t, "dp_noise"), dtype=torch.float64)
            want = x[t].double() - 1.0 * 0.05 * noise / 1.0
            assert torch.allclose(x[t + 1].double(), want, rtol=0, atol=1e-6)
