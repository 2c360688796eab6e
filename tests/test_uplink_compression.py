"""Compression wired into the synchronous loop (issue 16, items 1 and 5): what the server
aggregates is the decoded message, the residuals live in the client-state store (exact,
checkpointed), bytes_up counts the encoded form, every executor sends the same messages.
Realistic schedule: 10 clients of unequal size, 4 per round, one local epoch."""

from __future__ import annotations

import math

import torch

from conftest import tiny_config, write_experiment
from helpers import metrics, run_cli, run_dirs
from wire_helpers import assert_same_run, killed_and_resumed, prepared, run_rounds

from fedtorch.federation.uplink import PREFIX


def test_server_aggregates_what_was_sent_and_the_residual_keeps_the_rest(tiny_experiment):
    prep = prepared(tiny_experiment, "compression.method=topk", "compression.density=0.05")
    p = prep.x0.numel()
    k = math.ceil(0.05 * p)
    _, store, rounds = run_rounds(prep, 3)
    residual = {}
    for report, messages, _ in rounds:
        sent = messages.delta
        for row, r in enumerate(report.results):  # all finite: rows in result order
            c, delta = r.client_id, r.message.delta
            before = residual.get(c, torch.zeros(p))
            assert int((sent[row] != 0).sum()) <= k  # at most k coordinates went up
            after = (delta + before) - sent[row]
            assert torch.equal(after, torch.where(sent[row] != 0, 0.0, delta + before))  # exact split
            residual[c] = after
        width = 1 if p < 2**8 else 2 if p < 2**16 else 4
        assert report.bytes_up == len(report.results) * k * (width + 4)  # indices + float32 values
    for c, state in zip(sorted(residual), store.get_many(sorted(residual), dict)):
        assert torch.equal(state[PREFIX + "residual"], residual[c])


def test_density_one_is_the_uncompressed_run(tiny_experiment):
    plain, _, _ = run_rounds(prepared(tiny_experiment, "client.momentum=0.5"), 3)
    full, store, _ = run_rounds(prepared(tiny_experiment, "client.momentum=0.5", "compression.method=topk",
                                         "compression.density=1.0"), 3)
    assert torch.equal(plain.x, full.x)


def test_executors_send_the_same_quantised_messages(tiny_experiment):
    finals = []
    for mode, extra in (("serial", []), ("parallel", ["execution.devices=[cpu/0,cpu/1]"]), ("vectorized", [])):
        prep = prepared(tiny_experiment, "compression.method=qsgd", "compression.levels=4", f"execution.mode={mode}",
                        "execution.threads=1", "algorithm.name=scaffold", *extra)
        server, _, rounds = run_rounds(prep, 2)
        prep.executor.close()
        finals.append((mode, server.x, [m.delta for _, m, _ in rounds]))
    serial = finals[0]
    assert torch.equal(finals[1][1], serial[1])  # parallel: bit for bit
    for a, b in zip(finals[1][2], serial[2]):
        assert torch.equal(a, b)
    # vectorized trains to float tolerance; the quantiser's levels then agree almost everywhere
    assert torch.allclose(finals[2][1], serial[1], rtol=1e-3, atol=1e-4)


def test_sigkill_then_resume_keeps_the_residuals(capsys, tmp_path, tiny_idx_dir):
    cfg = tiny_config(tiny_idx_dir, tmp_path / "runs", compression={"method": "topk", "density": 0.02},
                      client={"local_epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.5})
    folder = write_experiment(tmp_path, "A0d5C10", cfg)
    args = ["rounds=5"]
    assert run_cli(capsys, "run", folder, *args)[0] == 0
    (reference,) = run_dirs(tmp_path / "runs")
    assert_same_run(killed_and_resumed(capsys, folder, args, 3, tmp_path / "killed"), reference)
    rows = metrics(reference)
    assert rows[0]["bytes_up"] < rows[0]["bytes_down"] / 10  # about 1/(2 * density) smaller than dense


def test_bad_compression_settings_are_config_errors(capsys, tiny_experiment):
    for args, words in ((["compression.method=zip"], "compression.method='zip'"),
                        (["compression.method=topk", "compression.density=0"], "compression.density=0"),
                        (["compression.method=qsgd", "compression.levels=0"], "compression.levels=0"),
                        (["compression.method=topk", "federation.mode=async"], "federation.mode=async")):
        code, _, err = run_cli(capsys, "run", tiny_experiment, *args)
        assert code == 2 and words in err, (args, err)
