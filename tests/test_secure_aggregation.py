"""Secure aggregation (SecAgg / SecAgg+) simulation: exact sums under drop-outs, uniformity of
masked vectors, quantisation, threshold recovery, determinism, byte accounting, validation."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from fedtorch.secure_aggregation import FieldQuantizer, RecoveryError, SecAggProtocol, harary_graph, shamir
from fedtorch.secure_aggregation.wire import unpack_vector

M, P = 10, 1000


def _updates(m=M, p=P, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, p, generator=g) * scale).clamp(-0.99, 0.99)


def _gens(m=M, seed=7):
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(m)]


CASES = [  # (neighbours, threshold, dropped_after_masking)
    (None, 6, set()),
    (None, 6, {2, 7}),  # 20 %
    (4, 2, set()),  # SecAgg+
    (4, 2, {0, 5}),  # SecAgg+, 20 %
]


@pytest.mark.parametrize("neighbours,threshold,dropped", CASES)
@pytest.mark.parametrize("stochastic", [False, True])
def test_secure_sum_equals_plain_quantised_sum(neighbours, threshold, dropped, stochastic):
    x, w = _updates(), list(range(1, M + 1))
    proto = SecAggProtocol(num_clients=M, threshold=threshold, neighbours=neighbours, bits=32, quant_bits=16,
                           clip_range=1.0, stochastic=stochastic, seed=3)
    res = proto.transcript(x, w, dropped_after_masking=dropped, gens=_gens() if stochastic else None)
    survivors = [u for u in range(M) if u not in dropped]
    assert res.stats.survivors == tuple(survivors)
    plain = proto.plain_sum(x, w, include=survivors, gens=_gens() if stochastic else None)
    assert torch.equal(res.field_sum, plain)  # integer equality in Z_2^32
    decoded, total_w = proto.quantizer.decode_sum(plain)
    assert torch.equal(res.sum, decoded) and res.sum.dtype == torch.float64  # identical floats
    assert total_w == res.stats.total_weight == sum(w[u] for u in survivors)
    exact = (torch.tensor(w, dtype=torch.float64)[survivors, None] * x[survivors].double()).sum(0)
    tol = sum(w[u] for u in survivors) * proto.quantizer.step * (1.0 if stochastic else 0.5)
    assert (res.sum - exact).abs().max() <= tol + 1e-12  # the sum is the real weighted sum, quantised


def test_secagg_plus_larger_graph_with_every_kind_of_dropout():
    m = 20
    x = _updates(m, 300)
    proto = SecAggProtocol(num_clients=m, threshold=3, neighbours=6, seed=11)
    res = proto.transcript(x, dropped_after_masking={1, 8, 15, 17}, dropped_before_sharing={4},
                           dropped_in_unmasking={10})
    survivors = [u for u in range(m) if u not in {1, 8, 15, 17, 4}]
    assert res.stats.survivors == tuple(survivors)  # a client dropped in unmasking still counts
    assert torch.equal(res.field_sum, proto.plain_sum(x, include=survivors))


def test_harary_graph_is_k_regular_symmetric_and_relabelled():
    g = harary_graph(20, 6, torch.Generator().manual_seed(0))
    assert all(len(n) == 6 and u not in n for u, n in enumerate(g))
    assert all(u in g[v] for u, n in enumerate(g) for v in n)
    ring = tuple(tuple(sorted((u + d) % 20 for d in (-3, -2, -1, 1, 2, 3))) for u in range(20))
    assert g != ring  # randomly relabelled
    assert SecAggProtocol(num_clients=5, threshold=2).graph() == tuple(
        tuple(v for v in range(5) if v != u) for u in range(5))


def _top_byte_pvalue(v: torch.Tensor, bits: int) -> float:
    counts = torch.bincount(v >> (bits - 8), minlength=256).double()
    return float(chisquare(counts.numpy()).pvalue)


@pytest.mark.parametrize("neighbours", [None, 2])
def test_single_masked_update_is_indistinguishable_from_uniform(neighbours):
    p, m, bits = 8192, 5, 32
    x = _updates(m, p)
    proto = SecAggProtocol(num_clients=m, threshold=2, neighbours=neighbours, bits=bits, seed=5)
    res = proto.transcript(x)
    masked = unpack_vector(res.server_view[0], bits)
    plain = proto.quantizer.encode(x[0], 1)
    assert masked.shape == plain.shape == (p + 1,)
    assert _top_byte_pvalue(masked, bits) > 1e-3
    assert _top_byte_pvalue(plain, bits) < 1e-10  # the unmasked encoding is far from uniform


def test_quantisation_error_clipping_and_integer_exactness():
    q = FieldQuantizer(bits=32, quant_bits=12, clip_range=2.0)
    x = torch.linspace(-2.0, 2.0, 4001)
    dec, w = q.decode_sum(q.encode(x, 1))
    assert w == 1 and (dec - x.double()).abs().max() <= q.step / 2 + 1e-12
    qs = FieldQuantizer(bits=32, quant_bits=12, clip_range=2.0, stochastic=True)
    dec_s, _ = qs.decode_sum(qs.encode(x, 1, torch.Generator().manual_seed(0)))
    assert (dec_s - x.double()).abs().max() < qs.step
    out, _ = q.decode_sum(q.encode(torch.tensor([-9.0, -2.5, 2.5, 1e6]), 1))
    assert out.tolist() == [-2.0, -2.0, 2.0, 2.0]  # clipped to [-r, r]
    qi = FieldQuantizer(bits=24, quant_bits=8, clip_range=127.0)  # step 1: integers are exact
    assert qi.step == 1.0
    xi = torch.randint(-127, 128, (M, P), generator=torch.Generator().manual_seed(1)).float()
    proto = SecAggProtocol(num_clients=M, threshold=5, bits=24, quant_bits=8, clip_range=127.0)
    total, _ = proto.run(xi, dropped_after_masking={3})
    assert torch.equal(total, xi[[u for u in range(M) if u != 3]].double().sum(0))


def test_stochastic_rounding_is_unbiased():
    q = FieldQuantizer(bits=32, quant_bits=4, clip_range=1.0, stochastic=True)  # coarse: step 1/7
    x = torch.tensor([0.05, -0.33, 0.5, 0.999])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([q.decode_sum(q.encode(x, 1, g))[0] for _ in range(4000)])
    se = draws.std(0) / 4000 ** 0.5
    assert ((draws.mean(0) - x.double()).abs() <= 4 * se + 1e-12).all()


def test_shamir_needs_threshold_shares():
    secret = bytes(range(32))
    shares = shamir.split(secret, 3, 5)
    assert shamir.combine(shares[2:5], 3, "s") == secret
    assert shamir.combine(shares, 3, "s") == secret
    with pytest.raises(RecoveryError, match="cannot recover s: 2 share"):
        shamir.combine(shares[:2], 3, "s")


def test_fewer_than_t_survivors_cannot_recover_and_t_can():
    x = _updates()
    proto = SecAggProtocol(num_clients=M, threshold=6, seed=1)
    with pytest.raises(RecoveryError, match="5 clients sent masked input, threshold t=6"):
        proto.run(x, dropped_after_masking={0, 1, 2, 3, 4})
    # 7 masked inputs arrive, but only 5 clients answer in unmasking: b_u cannot be rebuilt
    with pytest.raises(RecoveryError, match="cannot recover self-mask seed b_"):
        proto.run(x, dropped_after_masking={0, 1, 2}, dropped_in_unmasking={3, 4})
    # exactly t = 6 answer: recovery works, the sum still covers all 7 survivors
    res = proto.transcript(x, dropped_after_masking={0, 1, 2}, dropped_in_unmasking={3})
    assert torch.equal(res.field_sum, proto.plain_sum(x, include=range(3, M)))


def test_determinism_same_seed_same_masks_other_seed_other_masks():
    x = _updates()
    kw = dict(num_clients=M, threshold=4, neighbours=4, stochastic=True)
    a = SecAggProtocol(seed=9, **kw).transcript(x, dropped_after_masking={6}, gens=_gens(), round=2)
    b = SecAggProtocol(seed=9, **kw).transcript(x, dropped_after_masking={6}, gens=_gens(), round=2)
    assert a.server_view == b.server_view and torch.equal(a.sum, b.sum)
    assert all(torch.equal(a.stats.bytes_sent[k], b.stats.bytes_sent[k]) for k in a.stats.bytes_sent)
    c = SecAggProtocol(seed=10, **kw).transcript(x, dropped_after_masking={6}, gens=_gens(), round=2)
    assert c.server_view[0] != a.server_view[0] and torch.equal(c.sum, a.sum)


def test_server_sees_only_masked_vectors_and_bytes_are_counted():
    x = _updates()
    proto = SecAggProtocol(num_clients=M, threshold=6, bits=20)
    res = proto.transcript(x, dropped_after_masking={4}, dropped_before_sharing={9})
    assert set(res.server_view) == set(range(M)) - {4, 9}
    for u, y in res.server_view.items():
        assert not torch.equal(unpack_vector(y, 20), proto.quantizer.encode(x[u], 1))
    s = res.stats
    assert s.bytes_sent["advertise_keys"].tolist() == [64] * M
    share = 4 + 4 + 2 + 32 + 16 + 16  # header, shares of s^SK and b, GCM tag
    assert s.bytes_sent["share_keys"].tolist() == [9 * share] * 9 + [0]  # client 9 left after round 0
    assert s.bytes_sent["masked_input"].tolist() == [0 if u in (4, 9) else (P + 1) * 3 for u in range(M)]
    assert s.bytes_sent["unmasking"][4] == 0 and s.bytes_sent["unmasking"][0] == 8 * (7 + 16) + 7 + 32
    assert set(s.seconds) == set(s.bytes_sent) == {"advertise_keys", "share_keys", "masked_input", "unmasking"}


@pytest.mark.parametrize("kwargs,match", [
    (dict(threshold=11), "secagg.threshold=11"),
    (dict(threshold=4, neighbours=2), "secagg.threshold=4"),
    (dict(threshold=2, neighbours=3), "secagg.neighbours=3"),
    (dict(threshold=2, bits=60), "secagg.bits=60"),
    (dict(threshold=2, quant_bits=40), "secagg.quant_bits=40"),
    (dict(threshold=2, clip_range=0.0), "secagg.clip_range=0.0"),
])
def test_bad_parameters_raise_value_error_naming_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SecAggProtocol(num_clients=M, **kwargs)


def test_bad_run_inputs_raise_value_error():
    proto = SecAggProtocol(num_clients=M, threshold=4, bits=16, quant_bits=12)
    x = _updates()
    with pytest.raises(ValueError, match="weights must be"):
        proto.run(x, [0.1] * M)
    with pytest.raises(ValueError, match="secagg.bits=16 .* overflows"):
        proto.run(x, [100] * M)
    with pytest.raises(ValueError, match="updates must be"):
        proto.run(x.double())
    with pytest.raises(ValueError, match="invalid or repeated"):
        proto.run(x, dropped_after_masking={1}, dropped_in_unmasking={1})
    with pytest.raises(ValueError, match="NaN/Inf"):
        proto.run(torch.full((M, 3), float("nan")))
