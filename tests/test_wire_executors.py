"""Every message transform of issue 16 runs in the federation loop, after local training, so
it gives the same run under every executor: parallel bit for bit with serial, vectorized
within float tolerance (its local training rounds differently)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config, write_experiment
from helpers import final_model, run_cli, run_dirs
from wire_helpers import assert_same_run, killed_and_resumed

CASES = {
    "attack+robust": ["attack.name=gaussian", "attack.sigma=0.5", "robust.aggregator=trimmed_mean", "robust.beta=0.2"],
    "dp": ["privacy.mechanism=dp_fedavg", "privacy.noise_multiplier=0.5", "privacy.clip=0.05",
           "privacy.adaptive_clipping=true", "privacy.clipped_count_stddev=1.0"],
    "secagg": ["secagg.enabled=true", "secagg.clip_range=0.05", "secagg.stochastic=true", "secagg.dropout=0.2"],
    "qsgd": ["compression.method=qsgd", "compression.levels=8"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_transforms_are_executor_independent(capsys, tiny_experiment, runs_dir, case):
    finals = {}
    for mode, extra in (("serial", []), ("parallel", ["execution.devices=[cpu/0,cpu/1]"]), ("vectorized", [])):
        out = runs_dir / mode
        code, _, err = run_cli(capsys, "run", tiny_experiment, "federation.clients_per_round=10", "execution.threads=1",
                               f"execution.mode={mode}", *extra, *CASES[case], f"output_dir={out}")
        assert code == 0, err
        finals[mode] = final_model(run_dirs(out)[0])
    assert torch.equal(finals["parallel"], finals["serial"])
    assert torch.allclose(finals["vectorized"], finals["serial"], rtol=1e-3, atol=1e-4)


def test_secagg_with_stochastic_rounding_resumes_bit_identically(capsys, tmp_path, tiny_idx_dir):
    cfg = tiny_config(tiny_idx_dir, tmp_path / "runs", federation={"clients_per_round": 6},
                      secagg={"enabled": True, "clip_range": 0.05, "stochastic": True, "dropout": 0.2})
    folder = write_experiment(tmp_path, "A0d5C10", cfg)
    assert run_cli(capsys, "run", folder, "rounds=4")[0] == 0
    (reference,) = run_dirs(tmp_path / "runs")
    run_dir = killed_and_resumed(capsys, folder, ["rounds=4"], 2, tmp_path / "killed")
    assert_same_run(run_dir, reference, ignore=("secagg_seconds",))
