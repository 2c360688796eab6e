"""Asynchronous runs continue from a snapshot bit for bit: the event queue, the clients in
flight (their model version, arrival time and trained result), FedBuff's buffer and the
client-state store all come back, and every seed-derived draw (delays, sampling, local
minibatches) continues where it was."""

import io

import pytest
import torch

from fedtorch.federation import ClientStateStore
from fedtorch.federation.async_loop import AsyncServer, AsyncSettings, run_async
from fedtorch.federation.async_snapshot import from_plain, to_plain
from fedtorch.federation.delays import DelayModel
from tests.test_async import toy
from tests.test_hook_contract import make

CASES = {
    # (algorithm, hparams, settings): unequal n_i (so unequal K_i), M < N, real delays
    "fedbuff_scaffold": ("scaffold", {}, dict(concurrency=4, buffer_size=3)),  # buffer + client state
    "fedasync": ("fedasync", {"alpha": 0.6, "staleness": "polynomial"}, dict(concurrency=3)),
    "fedbuff": ("fedbuff", {"buffer_size": 2}, dict(concurrency=4)),
}


class Stop(Exception):
    pass


def _core(name, hp, extra, store=None):
    s = AsyncSettings(updates=9, batch_size=4, lr=0.1, seed=3, **extra)
    data, ex, x0 = toy(s.batch_size)
    alg = make(name, **hp)
    records = []
    core = AsyncServer(alg, ex, data, alg.init_server(x0), store or ClientStateStore(), s,
                       DelayModel(model="lognormal", mean=5.0, sigma=1.0), on_update=lambda st, r: records.append(r.record))
    return core, records


def _through_a_file(obj):
    """What a checkpoint does to it: torch.save, then torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("stop_after", [2, 5])
def test_restored_async_run_ends_bit_identical(case, stop_after):
    name, hp, extra = CASES[case]
    reference, ref_records = _core(name, hp, extra)
    run_async(reference)

    first, records = _core(name, hp, extra)
    saved = {}
    groups = [0]

    def snapshot_then_stop(core):
        groups[0] += 1
        if groups[0] == stop_after:
            saved["ckpt"] = _through_a_file({"server": to_plain(core.server), "loop": core.snapshot(),
                                             "store": dict(core.store.state_dict())})
            raise Stop

    with pytest.raises(Stop):
        run_async(first, on_group=snapshot_then_stop)
    ckpt = saved["ckpt"]
    assert ckpt["loop"]["jobs"], "the snapshot must hold clients in flight for the test to mean anything"
    if case == "fedbuff_scaffold" and stop_after == 5:
        assert ckpt["loop"]["buffer"], "a snapshot with arrivals in FedBuff's buffer"

    store = ClientStateStore()
    store.load_state_dict(ckpt["store"])
    again, more = _core(name, hp, extra, store)
    again.restore(ckpt["loop"], from_plain(ckpt["server"]))
    run_async(again)
    assert torch.equal(again.server.x, reference.server.x)
    assert records + more == ref_records
    assert again.now == reference.now and again.arrivals == reference.arrivals


def test_a_restored_run_refuses_the_asyncio_clock():
    name, hp, extra = CASES["fedasync"]
    core, _ = _core(name, hp, extra)
    run_async(core, on_group=lambda c: None)
    fresh, _ = _core(name, hp, extra)
    fresh.restore(_through_a_file(core.snapshot()), core.server)
    with pytest.raises(ValueError, match="continue a restored run with the simulated clock"):
        run_async(fresh, clock="asyncio")


def test_plain_form_round_trips_message_subclasses():
    from fedtorch.algorithms.scaffold import ScaffoldMessage

    m = ScaffoldMessage(delta=torch.ones(3), num_samples=4, num_steps=2, loss=0.5, dc=torch.zeros(3))
    back = from_plain(_through_a_file(to_plain([(1, m, {"c": torch.ones(2)})])))
    assert type(back[0][1]) is ScaffoldMessage and torch.equal(back[0][1].dc, m.dc)
    with pytest.raises(ValueError, match="cannot be imported"):
        from_plain({"__dataclass__": "fedtorch.protocol:NoSuchMessage", "delta": 1})
