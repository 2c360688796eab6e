"""Secure aggregation wired into the synchronous loop (issue 16, item 3): a SecAgg run equals
the same run with the plain quantised sum bit for bit (with drop-outs, SecAgg+ neighbours and
stochastic rounding), the server steps on the survivors' weighted quantised mean, the cost is
reported, and combinations without meaning are refused."""

from __future__ import annotations

import dataclasses

import torch

from helpers import final_model, metrics, run_cli, run_dirs

from fedtorch.experiment.config import apply_overrides, load_experiment, validate
from fedtorch.experiment.runner import prepare
from fedtorch.federation import ClientStateStore, run_sync
from fedtorch.seeding import generator

SECAGG = ["federation.clients_per_round=6", "secagg.enabled=true", "secagg.clip_range=0.05"]


def test_a_secagg_run_is_the_plain_quantised_run_bit_for_bit(capsys, tiny_experiment, runs_dir):
    for extra in ([], ["secagg.dropout=0.34", "secagg.neighbours=4", "secagg.stochastic=true"]):
        finals = []
        for masked in ("true", "false"):
            out = runs_dir / f"{masked}{len(extra)}"
            assert run_cli(capsys, "run", tiny_experiment, *SECAGG, *extra, f"secagg.masked={masked}",
                           f"output_dir={out}")[0] == 0
            finals.append(run_dirs(out)[0])
        masked_run, plain_run = finals
        assert torch.equal(final_model(masked_run), final_model(plain_run))
        rows = metrics(masked_run)
        assert all(r["secagg_bytes_up"] > 4 * 4 * 7850 and r["secagg_seconds"] > 0 for r in rows)  # 32-bit words of >= 4 clients
        assert "secagg_bytes_up" not in metrics(plain_run)[0]


def test_the_server_steps_on_the_survivors_weighted_quantised_mean(tiny_experiment):
    base, _ = load_experiment(tiny_experiment)
    prep = prepare(validate(apply_overrides(base, [*SECAGG, "secagg.dropout=0.34"])))
    seen, aggregated = [], []
    real = prep.algorithm.aggregate
    prep.algorithm.aggregate = lambda s, m, w: (aggregated.append(m), real(s, m, w))[1]
    settings = dataclasses.replace(prep.settings, rounds=2)
    run_sync(prep.algorithm, prep.executor, prep.data, prep.initial_server(), ClientStateStore(), settings,
             on_round=lambda s, r: seen.append(r))
    step = 0.05 / (2**15 - 1)
    for t, (report, message) in enumerate(zip(seen, aggregated)):
        order = torch.randperm(6, generator=generator(0, t, "secagg_dropout")).tolist()
        survivors = [u for u in range(6) if u not in order[:2]]  # floor(0.34 * 6) = 2 drop
        total, weight = torch.zeros(7850, dtype=torch.float64), 0
        for u in survivors:
            r = report.results[u]
            q = torch.round(r.message.delta.double().clamp(-0.05, 0.05) / step)  # round half to even
            total += r.message.num_samples * q
            weight += r.message.num_samples
        assert message.delta.shape[0] == 1
        assert torch.equal(message.delta[0], (total * step / weight).float())


def test_combinations_without_meaning_are_refused(capsys, tiny_experiment):
    for args, words in ((["robust.aggregator=median"], "robust.aggregator"),
                        (["privacy.mechanism=dp_fedavg", "privacy.noise_multiplier=1"], "privacy.mechanism"),
                        (["compression.method=topk"], "compression.method"),
                        (["algorithm.name=scaffold"], "own server rule"),
                        (["secagg.dropout=1.0"], "secagg.dropout"),
                        (["secagg.bits=64"], "secagg.bits")):
        code, _, err = run_cli(capsys, "run", tiny_experiment, *SECAGG, *args)
        assert code == 2 and words in err, (args, err)
