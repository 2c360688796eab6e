"""Compression library (issue 16 item 1): the papers' rules, exact residuals, real byte counts.

Arrange/Act/Assert; every generator comes from fedtorch.seeding so runs are reproducible.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedtorch.compression import COMPRESSORS, DGC, QSGD, SignEF, TopK
from fedtorch.compression.base import index_dtype
from fedtorch.compression.elias import BitReader, omega_bits, omega_length, pack_bits
from fedtorch.seeding import generator


def gens_for(m: int, seed: int = 0, round: int = 0) -> list[torch.Generator]:
    return [generator(seed, round, i, "compression") for i in range(m)]


def deltas_for(m: int, p: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, p, generator=generator(seed, "deltas")).float()


# (name, constructor kwargs) for every compressor and encoding; P values chosen to hit uint8 and uint16 indices
CASES = [
    ("topk", dict(density=0.05)),
    ("topk", dict(density=0.3, error_feedback=False)),
    ("dgc", dict(density=0.01, momentum=0.9, clip_norm=2.0, warmup_rounds=3)),
    ("qsgd", dict(levels=1)),
    ("qsgd", dict(levels=7)),
    ("qsgd", dict(levels=16, encoding="fixed")),
    ("sign", dict()),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CASES]


def run_rounds(comp, deltas_seq, *, encode=False, seed=0):
    """Compress a sequence of rounds, threading the state; returns the list of outputs."""
    m, p = deltas_seq[0].shape
    state, outs = comp.init_state(m, p), []
    for t, d in enumerate(deltas_seq):
        gens = gens_for(m, seed, t)
        if encode:
            payloads, state = comp.encode(d, state, gens, t)
            outs.append(payloads)
        else:
            out = comp.compress(d, state, gens, t)
            state = out.state
            outs.append(out)
    return outs, state


# ---- QSGD: Lemma 3.1 --------------------------------------------------------------------


@pytest.mark.parametrize("levels", [1, 4])
def test_qsgd_is_unbiased_within_three_standard_errors(levels):
    # Arrange: one fixed vector quantised 10^4 times, each with its own generator
    p, n = 64, 10_000
    v = deltas_for(1, p)
    comp = QSGD(levels=levels)
    # Act
    q = comp.compress(v.expand(n, p).contiguous(), {}, gens_for(n, seed=levels), 0).decoded.double()
    # Assert: per coordinate |mean - v| <= 3 SE, SE estimated from the samples
    se = q.std(dim=0) / math.sqrt(n)
    err = (q.mean(dim=0) - v[0].double()).abs()
    assert bool((err <= 3 * se).all()), f"max |z| = {(err / se).max():.2f}"
    assert bool((se > 0).all())  # not trivially zero: the rounding is random


@pytest.mark.parametrize("levels", [1, 2, 8])
def test_qsgd_variance_matches_rounding_and_obeys_lemma_3_1_bound(levels):
    # Arrange: a Gaussian vector and the all-equal vector (the bound's hardest case for s=1)
    p, n = 64, 10_000
    for v in (deltas_for(1, p, seed=levels)[0], torch.ones(p)):
        comp = QSGD(levels=levels)
        # Act
        q = comp.compress(v.expand(n, p).contiguous(), {}, gens_for(n, seed=10 + levels), 0).decoded.double()
        sq_err = ((q - v.double()) ** 2).sum(dim=1)
        # Assert: the empirical E||Q(v)-v||^2 matches sum_i ||v||^2/s^2 (a_i - l_i)(l_i + 1 - a_i) ...
        norm = v.double().norm()
        a = v.double().abs() / norm * levels
        exact = (norm**2 / levels**2 * ((a - a.floor()) * (a.floor() + 1 - a))).sum()
        assert abs(sq_err.mean() - exact) <= 4 * sq_err.std() / math.sqrt(n) + 1e-9
        # ... and is below Lemma 3.1's bound min(P/s^2, sqrt(P)/s) ||v||^2
        assert sq_err.mean() <= min(p / levels**2, math.sqrt(p) / levels) * norm**2


def test_qsgd_levels_are_integers_in_range_and_zero_vector_is_zero():
    comp = QSGD(levels=3)
    d = torch.cat([deltas_for(2, 50), torch.zeros(1, 50)])
    norm, q = comp.quantise(d, gens_for(3))
    assert q.abs().max() <= 3 and norm[2] == 0
    assert torch.equal(comp.compress(d, {}, gens_for(3), 0).decoded[2], torch.zeros(50))


# ---- exact residuals --------------------------------------------------------------------


def test_topk_residual_carries_exactly_what_was_not_sent():
    # Arrange
    m, p = 4, 300
    comp = TopK(density=0.02)  # k = 6
    residual = deltas_for(m, p, seed=7) * 0.5
    d = deltas_for(m, p)
    # Act
    out = comp.compress(d, {"residual": residual}, None, 0)
    # Assert: residual + sent == delta + old residual, bit for bit
    acc = d + residual
    assert torch.equal(out.state["residual"] + out.decoded, acc)
    sent = out.decoded != 0
    assert sent.sum(dim=1).tolist() == [6] * m
    assert torch.equal(out.decoded[sent], acc[sent]) and bool((out.state["residual"][sent] == 0).all())
    # the sent entries are the largest in magnitude
    assert bool((out.decoded.abs().max(dim=1).values >= out.state["residual"].abs().max(dim=1).values).all())
    assert bool((acc.abs()[sent].view(m, 6).min(dim=1).values >= out.state["residual"].abs().max(dim=1).values).all())


def test_error_feedback_conserves_the_total_over_rounds():
    # sum of what was sent over T rounds + final residual == sum of the updates; integer-valued
    # updates keep every float32 sum exact, so this is an equality, for top-k and DGC (m = 0)
    m, p, t = 3, 40, 12
    seq = [torch.randint(-50, 50, (m, p), generator=generator(0, "int", r)).float() for r in range(t)]
    total = torch.stack(seq).sum(dim=0)
    for comp, key in ((TopK(density=0.1), "residual"), (DGC(density=0.1, momentum=0.0), "v")):
        outs, state = run_rounds(comp, seq)
        assert torch.equal(torch.stack([o.decoded for o in outs]).sum(dim=0) + state[key], total)


def test_dgc_momentum_correction_masking_and_exact_residual():
    # Arrange: nonzero u, v state and no clipping, so the test can recompute eq. (7) itself
    m, p, mom = 3, 200, 0.9
    comp = DGC(density=0.05, momentum=mom)  # k = 10
    state = {"u": deltas_for(m, p, seed=3), "v": deltas_for(m, p, seed=4)}
    d = deltas_for(m, p)
    # Act
    out = comp.compress(d, state, None, 0)
    # Assert: u' = m u + g, v' = v + u'; v_new + sent == v' exactly; u, v zeroed where sent (eq. 9)
    u1 = mom * state["u"] + d
    v1 = state["v"] + u1
    sent = out.decoded != 0
    assert sent.sum(dim=1).tolist() == [10] * m
    assert torch.equal(out.state["v"] + out.decoded, v1)
    assert torch.equal(out.state["u"], torch.where(sent, 0.0, u1))
    assert torch.equal(out.decoded[sent], v1[sent])


def test_dgc_local_clipping_bounds_the_accumulated_gradient():
    m, p, c = 4, 100, 0.5
    comp = DGC(density=0.1, momentum=0.0, clip_norm=c)
    d = deltas_for(m, p) * torch.tensor([[0.001], [1.0], [10.0], [0.0]])  # rows below and above c, and zero
    out = comp.compress(d, comp.init_state(m, p), None, 0)
    v = out.state["v"] + out.decoded  # = the clipped gradient (zero state, m = 0)
    norms = v.double().norm(dim=1)
    assert bool((norms <= c * (1 + 1e-6)).all())
    assert torch.equal(v[0], d[0]) and torch.equal(v[3], d[3])  # below the threshold: untouched
    assert torch.allclose(v[2] / norms[2].float(), d[2] / d[2].norm(), atol=1e-6)  # direction kept
    assert abs(norms[2] - c) < 1e-6


def test_dgc_warmup_follows_the_papers_sparsity_schedule():
    # Lin et al. 2018: sparsity 75%, 93.75%, 98.4375%, 99.6%, 99.9% over the warm-up
    comp = DGC(density=0.001, warmup_rounds=4)
    dens = [comp.density_at(t) for t in range(6)]
    assert dens == [0.25, 0.0625, 0.015625, 0.00390625, 0.001, 0.001]
    assert [round(100 * (1 - x), 1) for x in dens[:5]] == [75.0, 93.8, 98.4, 99.6, 99.9]
    p = 10_000
    d = deltas_for(1, p)
    ks = [int((comp.compress(d, comp.init_state(1, p), None, t).decoded != 0).sum()) for t in range(5)]
    assert ks == [2500, 625, 157, 40, 10]


def test_sign_ef_residual_is_the_exact_float_difference():
    # Arrange
    m, p = 3, 101
    comp = SignEF()
    state = {"residual": deltas_for(m, p, seed=9) * 0.1}
    d = deltas_for(m, p)
    d[0, 5] = 0.0
    state["residual"][0, 5] = 0.0
    # Act
    out = comp.compress(d, state, None, 0)
    # Assert: sent = ||p||_1/P sgn(p) with sgn(0)=+1; e_new == fl(p - sent) bit for bit,
    # e_new + sent == p up to one rounding (sent is not a copy of p, so no exact identity)
    pv = d + state["residual"]
    scale = (pv.double().abs().sum(dim=1) / p).float()
    assert torch.equal(out.decoded.abs(), scale.unsqueeze(1).expand(m, p))
    assert torch.equal(out.decoded > 0, pv >= 0) and out.decoded[0, 5] > 0
    assert torch.equal(out.state["residual"], pv - out.decoded)
    ulp = torch.finfo(torch.float32).eps * torch.maximum(pv.abs(), out.decoded.abs())
    assert bool(((out.state["residual"] + out.decoded - pv).abs() <= ulp).all())


# ---- byte accounting and codec ------------------------------------------------------------


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
@pytest.mark.parametrize("p", [200, 1000])
def test_counted_bytes_equal_serialised_payload_and_decode_is_exact(name, kw, p):
    m = 5
    comp = COMPRESSORS[name](**kw)
    seq = [deltas_for(m, p, seed=s) for s in range(3)]
    outs, state_c = run_rounds(comp, seq)
    payloads, state_e = run_rounds(comp, seq, encode=True)
    for out, pl, t in zip(outs, payloads, range(3)):
        assert [len(b) for b in pl] == out.nbytes.tolist()
        assert out.nbytes.dtype == torch.int64 and out.decoded.dtype == torch.float32
        assert torch.equal(comp.decode(pl, p, t), out.decoded)
    assert state_c.keys() == state_e.keys() and all(torch.equal(state_c[k], state_e[k]) for k in state_c)


def test_byte_formulas_by_hand():
    d = deltas_for(2, 300)
    assert index_dtype(256).itemsize == 1 and index_dtype(257).itemsize == 2 and index_dtype(70_000).itemsize == 4
    assert TopK(density=0.01).compress(d, TopK(density=0.01).init_state(2, 300), None, 0).nbytes.tolist() == [3 * 6] * 2
    assert SignEF(error_feedback=False).compress(d, {}, None, 0).nbytes.tolist() == [4 + 38] * 2
    # fixed width, s = 3: 2 level bits + 1 sign bit per coordinate + 32-bit norm
    assert QSGD(levels=3, encoding="fixed").compress(d[:, :10], {}, gens_for(2), 0).nbytes.tolist() == [8, 8]


def test_qsgd_elias_bitstring_by_hand():
    # q = [0, 2, 0, 0, -1]: gap 2 -> '100', sign '0', level 2 -> '100'; gap 3 -> '110', sign '1', level 1 -> '0'
    comp = QSGD(levels=2)
    q = torch.tensor([[0, 2, 0, 0, -1]])
    body = "100" + "0" + "100" + "110" + "1" + "0"  # 12 bits -> 2 bytes, padded with 1s
    assert comp._pack_elias(q[0].numpy()) == pack_bits(body) == bytes([0b10001001, 0b10101111])
    assert comp.nbytes(q).tolist() == [4 + 2]
    assert comp._unpack_elias(pack_bits(body), 5).tolist() == [0, 2, 0, 0, -1]


def test_elias_omega_code_table_and_lengths():
    table = {1: "0", 2: "100", 3: "110", 4: "101000", 7: "101110", 8: "1110000", 16: "10100100000", 17: "10100100010"}
    assert {n: omega_bits(n) for n in table} == table
    ns = torch.arange(1, 5000)
    assert omega_length(ns).tolist() == [len(omega_bits(int(n))) for n in ns]
    stream = "".join(omega_bits(n) for n in (5, 1, 300))
    r = BitReader(pack_bits(stream))
    assert [r.omega(), r.omega(), r.omega(), r.omega()] == [5, 1, 300, None]  # padding is not a codeword


# ---- determinism and row independence --------------------------------------------------


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_same_inputs_and_seeds_give_identical_outputs(name, kw):
    comp = COMPRESSORS[name](**kw)
    seq = [deltas_for(4, 300, seed=s) for s in range(3)]
    a, sa = run_rounds(comp, seq, seed=5)
    b, sb = run_rounds(comp, seq, seed=5)
    for x, y in zip(a, b):
        assert torch.equal(x.decoded, y.decoded) and torch.equal(x.nbytes, y.nbytes)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    if name == "qsgd":  # and the randomness really comes from the generators
        c, _ = run_rounds(comp, seq, seed=6)
        assert not torch.equal(a[0].decoded, c[0].decoded)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_rows_compressed_separately_equal_rows_compressed_stacked(name, kw):
    m, p = 4, 300
    comp = COMPRESSORS[name](**kw)
    d = deltas_for(m, p)
    state = {k: deltas_for(m, p, seed=20) * 0.3 for k in comp.init_state(m, p)}
    stacked = comp.compress(d, state, gens_for(m, 3), 2)
    for i in range(m):
        row_state = {k: v[i : i + 1] for k, v in state.items()}
        one = comp.compress(d[i : i + 1], row_state, gens_for(m, 3)[i : i + 1], 2)
        assert torch.equal(one.decoded[0], stacked.decoded[i]) and one.nbytes[0] == stacked.nbytes[i]
        assert all(torch.equal(one.state[k][0], stacked.state[k][i]) for k in state)


def test_compress_does_not_modify_its_inputs():
    d, comp = deltas_for(2, 50), DGC(density=0.1)
    state = {"u": deltas_for(2, 50, seed=2), "v": deltas_for(2, 50, seed=3)}
    before = {k: v.clone() for k, v in state.items()}, d.clone()
    comp.compress(d, state, None, 0)
    assert all(torch.equal(before[0][k], state[k]) for k in state) and torch.equal(before[1], d)


# ---- parameter and input errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "name,kw,param",
    [
        ("topk", dict(density=0.0), "compression.density"),
        ("topk", dict(density=1.5), "compression.density"),
        ("topk", dict(density="0.1"), "compression.density"),
        ("topk", dict(density=0.1, error_feedback=1), "compression.error_feedback"),
        ("dgc", dict(momentum=1.0), "compression.momentum"),
        ("dgc", dict(clip_norm=0.0), "compression.clip_norm"),
        ("dgc", dict(warmup_rounds=-1), "compression.warmup_rounds"),
        ("dgc", dict(warmup_rounds=2.0), "compression.warmup_rounds"),
        ("dgc", dict(warmup_base=1.0), "compression.warmup_base"),
        ("dgc", dict(density=-0.1), "compression.density"),
        ("qsgd", dict(levels=0), "compression.levels"),
        ("qsgd", dict(levels=2.5), "compression.levels"),
        ("qsgd", dict(levels=4, encoding="huffman"), "compression.encoding"),
        ("sign", dict(error_feedback="yes"), "compression.error_feedback"),
    ],
)
def test_bad_parameters_raise_value_error_naming_the_parameter(name, kw, param):
    with pytest.raises(ValueError, match=rf"^{param}=.* is not allowed: "):
        COMPRESSORS[name](**kw)


def test_bad_inputs_raise_value_error_naming_the_argument():
    d = deltas_for(2, 10)
    with pytest.raises(ValueError, match="deltas"):
        TopK(density=0.5).compress(d[0], {"residual": torch.zeros(10)}, None, 0)
    with pytest.raises(ValueError, match="deltas"):
        SignEF().compress(d.double(), SignEF().init_state(2, 10), None, 0)
    with pytest.raises(ValueError, match=r"state\['residual'\]"):
        TopK(density=0.5).compress(d, {"residual": torch.zeros(3, 10)}, None, 0)
    with pytest.raises(ValueError, match=r"state\['u'\]"):
        DGC().compress(d, {"v": torch.zeros(2, 10)}, None, 0)
    with pytest.raises(ValueError, match="gens"):
        QSGD(levels=2).compress(d, {}, None, 0)
    with pytest.raises(ValueError, match="gens"):
        QSGD(levels=2).compress(d, {}, gens_for(1), 0)
    with pytest.raises(ValueError, match="compression.round"):
        DGC().compress(d, DGC().init_state(2, 10), None, -1)


def test_registry_names():
    assert set(COMPRESSORS) == {"topk", "dgc", "qsgd", "sign"}
    assert COMPRESSORS["topk"](density=0.5) == TopK(density=0.5)
