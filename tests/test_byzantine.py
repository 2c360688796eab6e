"""Malicious clients and robust aggregation wired into the synchronous loop (issue 16,
item 4): which rows are poisoned, what the server aggregates, the rule's state in the
checkpoint, label flipping on the attackers' data only, the start-up checks, and the
defence on real Fashion-MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import wire_helpers
from conftest import FASHION_DIR, tiny_config, write_experiment
from helpers import metrics, run_cli, run_dirs
from wire_helpers import assert_same_run, killed_and_resumed, run_rounds

from fedtorch.robust import attackers


def prepared(folder, *overrides: str):
    return wire_helpers.prepared(folder, "federation.clients_per_round=10", *overrides)


def test_only_the_attackers_rows_are_poisoned(tiny_experiment):
    prep = prepared(tiny_experiment, "attack.name=sign_flip", "attack.scale=3", "attack.fraction=0.3")
    bad = set(attackers(10, 0.3, 0).tolist())
    assert len(bad) == 3 and prep.settings.attack.malicious == frozenset(bad)
    _, _, rounds = run_rounds(prep, 2)
    for report, messages, _ in rounds:
        for row, r in enumerate(report.results):  # the report holds what the client trained
            want = -3 * r.message.delta if r.client_id in bad else r.message.delta
            assert torch.equal(messages.delta[row], want)


def test_the_server_steps_on_the_coordinate_median(tiny_experiment):
    prep = prepared(tiny_experiment, "robust.aggregator=median", "attack.name=scale", "attack.factor=50")
    _, _, rounds = run_rounds(prep, 2)
    for report, messages, weights in rounds:
        assert messages.delta.shape[0] == 1 and weights.tolist() == [1.0]
        sent = torch.stack([(50 if r.client_id in prep.settings.attack.malicious else 1) * r.message.delta
                            for r in report.results])
        want = torch.from_numpy(np.median(sent.double().numpy(), axis=0)).float()
        assert torch.allclose(messages.delta[0], want, rtol=0, atol=1e-7)
        assert int(messages.num_samples[0]) == sum(r.message.num_samples for r in report.results)


def test_centred_clipping_resumes_with_its_centre(capsys, tmp_path, tiny_idx_dir):
    cfg = tiny_config(tiny_idx_dir, tmp_path / "runs", robust={"aggregator": "centered_clipping", "tau": 0.05},
                      attack={"name": "sign_flip", "fraction": 0.2}, federation={"clients_per_round": 10})
    folder = write_experiment(tmp_path, "A0d5C10", cfg)
    assert run_cli(capsys, "run", folder, "rounds=5")[0] == 0
    (reference,) = run_dirs(tmp_path / "runs")
    loop = torch.load(reference / "checkpoint.pt", weights_only=True)["server"]["loop"]
    assert list(loop) == ["robust.CenteredClipping.centre"] and loop["robust.CenteredClipping.centre"].abs().sum() > 0
    assert_same_run(killed_and_resumed(capsys, folder, ["rounds=5"], 3, tmp_path / "killed"), reference)


def test_label_flipping_changes_only_the_attackers_labels(tiny_experiment):
    prep = prepared(tiny_experiment, "attack.name=label_flip", "attack.fraction=0.3")
    honest, trained = prep.data.data.train_y, prep.executor.train_y
    changed = torch.zeros_like(honest, dtype=torch.bool)
    for c in prep.settings.attack.malicious:
        idx = prep.data.client_indices[c]
        assert torch.equal(trained[idx], 9 - honest[idx])
        changed[idx] = True
    assert torch.equal(trained[~changed], honest[~changed]) and changed.sum() > 0


def test_bad_robust_settings_are_config_errors(capsys, tiny_experiment):
    for args, words in ((["robust.aggregator=mode"], "robust.aggregator='mode'"),
                        (["robust.aggregator=trimmed_mean", "robust.beta=0.6"], "robust.beta"),
                        (["robust.aggregator=krum", "robust.f=4"], "M > 2f + 2"),
                        (["robust.aggregator=krum", "algorithm.name=scaffold"], "own server rule"),
                        (["robust.aggregator=median", "federation.mode=async"], "federation.mode=async"),
                        (["attack.name=sign_flip", "attack.fraction=1.5"], "attack.fraction"),
                        (["attack.name=worm"], "attack.name='worm'")):
        code, _, err = run_cli(capsys, "run", tiny_experiment, "federation.clients_per_round=10", *args)
        assert code == 2 and words in err, (args, err)


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
def test_robust_rules_survive_sign_flipping_on_real_fashion_mnist(capsys, tmp_path):
    # 20 clients (IID, 300 images each), all in every round, 4 of them (20 %) send -4x their
    # update. Measured: 0.7765 without attack, 0.0925 plain mean, 0.7770 trimmed mean
    # (beta 0.2), 0.7505 Krum (f 4).
    cfg = {"rounds": 6, "output_dir": str(tmp_path / "runs"),
           "data": {"partition": "iid", "num_clients": 20, "max_train_samples": 6000, "max_test_samples": 2000},
           "model": {"name": "logreg"}, "client": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
           "federation": {"clients_per_round": 20}, "eval": {"every": 6}, "logging": {"progress": "none"}}
    folder = write_experiment(tmp_path, "iid_C20", cfg)
    attack = ["attack.name=sign_flip", "attack.scale=4", "attack.fraction=0.2"]
    accuracy = {}
    for name, args in (("clean", []), ("mean", attack), ("trimmed_mean", [*attack, "robust.aggregator=trimmed_mean",
                       "robust.beta=0.2"]), ("krum", [*attack, "robust.aggregator=krum", "robust.f=4"])):
        out = tmp_path / name
        assert run_cli(capsys, "run", folder, f"output_dir={out}", *args)[0] == 0
        accuracy[name] = metrics(run_dirs(out)[0])[-1]["test_accuracy"]
    assert accuracy["clean"] >= 0.72
    assert accuracy["mean"] < 0.3  # collapses
    assert accuracy["trimmed_mean"] >= accuracy["clean"] - 0.05
    assert accuracy["krum"] >= accuracy["clean"] - 0.05
