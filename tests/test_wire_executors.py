"""Every message transform of issue 16 runs in the federation loop, after local training, so
it gives the same run under every executor: parallel bit for bit with serial, vectorized
within float tolerance (its local training rounds differently)."""

from __future__ import annotations

import pytest
import torch

from helpers import final_model, run_cli, run_dirs

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
