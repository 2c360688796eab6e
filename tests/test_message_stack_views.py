"""ClientMessage.stack without (M, P) copies: a round's messages are the rows of one tensor
per field (the vectorised executor's output), and stack returns a view of it; anything
else (rows of several tensors, rows out of order, gaps) is copied as before."""

import torch
from torch import nn

from fedtorch.algorithms import LocalSGD, get_algorithm
from fedtorch.execution import VectorizedExecutor
from fedtorch.federation.sync import finite_rows
from fedtorch.flat import FlatModule
from fedtorch.protocol import Broadcast, ClientMessage, ClientTask, FederationInfo, RoundContext


def _messages(rows: list[torch.Tensor]) -> list[ClientMessage]:
    return [ClientMessage(delta=r, num_samples=10 + i, num_steps=3, loss=0.5 * i) for i, r in enumerate(rows)]


def _shares(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_consecutive_rows_of_one_tensor_are_stacked_without_a_copy():
    buf = torch.randn(5, 7)
    stacked = ClientMessage.stack(_messages(list(buf[1:4])))  # rows 1, 2, 3: an offset, not the start
    assert _shares(stacked.delta, buf) and stacked.delta.shape == (3, 7)
    assert torch.equal(stacked.delta, buf[1:4].clone())
    assert stacked.num_samples.tolist() == [10, 11, 12] and stacked.loss.tolist() == [0.0, 0.5, 1.0]


def test_rows_out_of_order_with_gaps_or_of_several_tensors_are_copied():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    cases = {
        "out of order": [a[0], a[2], a[1]],
        "a gap": [a[0], a[2], a[3]],
        "two tensors": [a[2], a[3], b[0]],
        "a repeated row": [a[1], a[1]],
        "strided rows": list(a.t()[:3]),  # columns of a: not contiguous
    }
    for name, rows in cases.items():
        stacked = ClientMessage.stack(_messages(rows)).delta
        assert not _shares(stacked, a) and not _shares(stacked, b), name
        assert torch.equal(stacked, torch.stack([r.clone() for r in rows])), name


def test_vectorized_round_messages_are_rows_of_one_tensor_in_task_order():
    """Unequal K_i (the executor trains clients sorted by K_i, in chunks of 2): the
    messages come back in task order as consecutive rows, so stack does not copy, and
    each client's row is its own result (compared with a one-client-per-chunk run)."""
    torch.manual_seed(0)
    x = torch.randn(60, 1, 4, 4)
    y = torch.randint(0, 3, (60,))
    model = lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3))  # noqa: E731
    args = (model, x, y, 4, nn.functional.cross_entropy)
    cls = get_algorithm("scaffold")
    algo = cls(cls.Hparams(), LocalSGD(), federation=FederationInfo(num_clients=6, lr=0.1))
    steps = [2, 5, 1, 5, 3, 4]
    tasks = [ClientTask(RoundContext(1, c, 7, 10, k, 0.1), torch.arange(10 * c, 10 * c + 10)) for c, k in enumerate(steps)]
    bcast = algo.broadcast(algo.init_server(FlatModule(model()).params.clone()))
    states = [{"c": 0.01 * torch.randn(bcast.x.numel())} for _ in tasks]
    results = VectorizedExecutor(*args, max_clients_per_step=2).run(algo, bcast, tasks, states)
    stacked = ClientMessage.stack([r.message for r in results])
    assert _shares(stacked.delta, results[0].message.delta) and _shares(stacked.dc, results[0].message.dc)
    alone = VectorizedExecutor(*args, max_clients_per_step=1)
    for i, task in enumerate(tasks):
        (one,) = alone.run(algo, bcast, [task], [states[i]])
        assert results[i].client_id == task.ctx.client_id
        assert torch.allclose(stacked.delta[i], one.message.delta, rtol=1e-5, atol=1e-7), i
        assert torch.allclose(stacked.dc[i], one.message.dc, rtol=1e-5, atol=1e-6), i
        assert stacked.num_steps[i] == steps[i] and results[i].message.num_steps == steps[i]


def test_finite_rows_checks_every_row_across_blocks():
    delta = torch.randn(150, 9)
    delta[3, 4], delta[70, 0], delta[149, 8] = float("nan"), float("inf"), -float("inf")
    want = torch.ones(150, dtype=torch.bool)
    want[[3, 70, 149]] = False
    assert torch.equal(finite_rows(delta), want)
    assert torch.equal(finite_rows(delta, block=7), want)
