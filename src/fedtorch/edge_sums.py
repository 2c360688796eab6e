"""Hierarchical aggregation's contract: an edge's partial weighted sum of its clients' messages.

With ``execution.edges=E`` (docs/distributed.md, "Hierarchical FL") the worker ranks form E
edges. An edge trains its clients and, where the round's aggregation allows it, sends the
server one **edge row** instead of its clients' messages (:func:`edge_row`)::

    row_f   = sum_{i in e} (w_i / W_e) m_{i,f}     for every vector field f (delta, dc, ...)
    W_e     = sum_{i in e} w_i,   w_i = n_i ("samples") or 1 ("uniform")   (client_weights)
    row.num_samples = sum n_i,  row.num_clients = |e|,  row.loss = the same weighted mean,
    row.num_steps = max K_i

over the edge's valid clients (finite delta and loss, as the flat loop requires). The
server then aggregates the E rows as if they were clients: its weights p_e
(``aggregation_weights(num_samples, weighting, num_clients)``) are n_e / n_S or
|e| / M, and population weights q_e are n_e / n or |e| / N, so that

    sum_e p_e row_f = sum_e (W_e / W) sum_{i in e} (w_i / W_e) m_{i,f} = sum_i (w_i / W) m_{i,f},

the flat round's weighted mean, exactly in real arithmetic (float rounding differs: about
1e-7 of the value per round in float32).

This is right for an algorithm whose ``aggregate`` reads the messages only through such
weighted means of their vector fields, under the round's p_i or the population q_i, and
reads ``num_steps`` not at all: it declares ``edge_reducible = True``
(:func:`is_edge_reducible`; :class:`fedtorch.algorithms.base.FedAlgorithm` gives True to a
subclass that keeps the base server rule and False to one that overrides it, unless the
subclass declares it). Any other algorithm (FedExP's squared norms, FedNova's a_i, ...)
and any round whose message transforms need each client's update (compression, attacks,
robust aggregation, DP-FedAvg, secure aggregation, per-client model buffers) has its edges
forward the messages unchanged.

Executors and the federation loop both use this module; it imports only the protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from fedtorch.protocol import ClientMessage, ClientResult

_COUNTS = ("num_samples", "num_steps", "num_clients", "loss")  # the scalar fields; every other tensor field is summed


def finite_rows(delta: Tensor, block: int = 64) -> Tensor:
    """``(M,)`` bool: which rows of ``delta`` (``(M, P)``) are all finite, ``block`` rows at a
    time (``torch.isfinite`` of all M rows at once would make (M, P) temporaries)."""
    if delta.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=delta.device)
    return torch.cat([torch.isfinite(rows).all(dim=-1) for rows in delta.split(block)])


def valid_messages(messages: ClientMessage) -> Tensor:
    """``(M,)`` bool: the stacked messages the server may aggregate (finite delta and loss)."""
    return finite_rows(messages.delta) & torch.isfinite(torch.as_tensor(messages.loss).to(messages.delta.device))


def client_weights(num_samples: Tensor, weighting: str) -> Tensor:
    """``(M,)`` float64 w_i before normalisation: n_i (``"samples"``) or 1 (``"uniform"``)."""
    n = torch.as_tensor(num_samples).to(torch.float64)
    return n if weighting == "samples" else torch.ones_like(n)


def upload_bytes(result: ClientResult) -> int:
    """Bytes one client sends up: its message's tensor fields and its model buffers."""
    buffers = result.buffers
    return result.message.nbytes + (0 if buffers is None else buffers.numel() * buffers.element_size())


def is_edge_reducible(algorithm) -> bool:
    """Whether ``algorithm`` declares ``edge_reducible = True`` (module docstring); False for
    an object that does not say."""
    return getattr(algorithm, "edge_reducible", False) is True


def edge_row(messages: ClientMessage, weights: Tensor) -> ClientMessage:
    """One edge's row (module docstring) from its valid clients' stacked ``messages``
    (``(m, ...)`` fields, m >= 1) and their weights ``w_i`` (``(m,)``, not normalised).

    Vector fields are reduced in float64 and cast back to their dtype. Returns a stacked
    message of one row: ``(1, ...)`` fields, ``(1,)`` counts.

    Raises:
        ValueError: no message, or ``weights`` of another length or with a zero sum.
    """
    m = messages.delta.shape[0]
    w = weights.to(torch.float64).reshape(-1)
    if m == 0 or w.numel() != m or not float(w.sum()) > 0:
        raise ValueError(f"an edge row needs m >= 1 messages and m positive weights; got m={m}, weights {tuple(w.shape)}")
    p = (w / w.sum()).to(messages.delta.device)
    out = {}
    for f in dataclasses.fields(messages):
        v = getattr(messages, f.name)
        if f.name in _COUNTS or not isinstance(v, Tensor):
            continue
        mean = (p.reshape(-1, *([1] * (v.dim() - 1))) * v.to(torch.float64)).sum(dim=0, keepdim=True)
        out[f.name] = mean.to(v.dtype)
    counts = torch.as_tensor(messages.num_clients, device=p.device)
    counts = counts.expand(m) if counts.dim() == 0 else counts
    out["num_samples"] = torch.as_tensor(messages.num_samples).reshape(-1).sum().reshape(1)
    out["num_steps"] = torch.as_tensor(messages.num_steps).reshape(-1).max().reshape(1)
    out["num_clients"] = counts.to(torch.int64).sum().reshape(1)
    out["loss"] = (p * torch.as_tensor(messages.loss).to(p)).sum().reshape(1)
    return type(messages)(**out)


def cat_rows(rows: list[ClientMessage]) -> ClientMessage:
    """The stacked message of E edge rows (each from :func:`edge_row`), in order."""
    first = rows[0]
    return type(first)(**{f.name: torch.cat([getattr(r, f.name) for r in rows]) for f in dataclasses.fields(first)})


def light(message: ClientMessage) -> ClientMessage:
    """``message`` of one client without its vector fields (None): what the server learns of
    a client whose update an edge summed (counts, loss, one-number fields for the metrics)."""
    keep = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    for name, v in keep.items():
        if name not in _COUNTS and isinstance(v, Tensor) and v.numel() > 1:
            keep[name] = None
    return type(message)(**keep)


@dataclass
class EdgeRound:
    """A round's local training as the edges report it (``DistributedExecutor.run_edges``).

    Attributes:
        results: one :class:`ClientResult` per task, in task order; messages are
            :func:`light`, states and seconds complete.
        rows: the stacked edge rows (``(E', ...)``), one per edge with a valid client.
        valid: ``(M,)`` bool, the tasks whose update entered their edge's row.
        upload_bytes: ``M`` ints, each client's message bytes (client to edge).
    """

    results: list[ClientResult]
    rows: ClientMessage | None
    valid: Tensor
    upload_bytes: list[int]
