"""Hierarchical FL on the distributed executor: edges of worker ranks (``execution.edges=E``).

The training ranks (rank 0 first when it trains, then 1 .. W-1) are cut into E contiguous
edges of near-equal size (:func:`edge_groups`); an edge's first rank is its **leader**
(its aggregator). A round then goes (docs/distributed.md, "Hierarchical FL"):

1. rank 0 sends every training rank its tasks, as without edges (the downlink is direct);
2. a member of an edge sends its results to its leader, not to rank 0;
3. the leader gathers its own and its members' results and sends rank 0 one message for
   the edge (:func:`edge_part`): either every client's result unchanged (**forward**: an
   algorithm or a transform that needs each update), or the edge's partial weighted sum,
   :func:`fedtorch.edge_sums.edge_row`, with each client's result :func:`~fedtorch.edge_sums.light`
   (states, counts, losses: what the server stores and logs) (**sum**).

Rank 0 leads edge 0 when it trains; it then gathers that edge's members itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedtorch.edge_sums import edge_row, light, upload_bytes, valid_messages
from fedtorch.protocol import ClientMessage, ClientResult

def edge_groups(ranks: list[int], count: int) -> list[list[int]]:
    """``ranks`` cut into ``count`` contiguous edges, the first ``len(ranks) % count`` one
    rank larger; ``count`` 0: no edges (``[]``).

    Raises:
        ValueError: ``count`` < 0 or more edges than ranks.
    """
    if count == 0:
        return []
    if not 0 < count <= len(ranks):
        raise ValueError(f"execution.edges={count} is not allowed: between 1 and the {len(ranks)} training rank(s) "
                         "(or 0 for no edges)")
    size, extra = divmod(len(ranks), count)
    out, start = [], 0
    for e in range(count):
        n = size + (e < extra)
        out.append(list(ranks[start:start + n]))
        start += n
    return out


@dataclass
class EdgePart:
    """What one edge reports for its tasks (in the edge's task order).

    Attributes:
        results: the clients' results (light ones when summed).
        row: the edge row (a stacked message of one row), or None (forwarded, or no valid client).
        valid: the clients whose update entered ``row`` (summed), or None (forwarded).
        upload: each client's message bytes (client to leader).
    """

    results: list[ClientResult]
    row: ClientMessage | None = None
    valid: list[bool] | None = None
    upload: list[int] | None = None


def edge_part(results: list[ClientResult], weights: list[float] | None) -> EdgePart:
    """The edge's report: its clients' ``results`` forwarded (``weights`` None), or summed
    with their un-normalised weights w_i (:func:`fedtorch.edge_sums.client_weights`)."""
    if weights is None or not results:
        return EdgePart(results)
    stacked = ClientMessage.stack([r.message for r in results])
    valid = valid_messages(stacked)
    upload = [upload_bytes(r) for r in results]
    row = None
    if bool(valid.any()):
        kept = stacked if bool(valid.all()) else stacked.select(valid)
        row = edge_row(kept, torch.tensor(weights, dtype=torch.float64)[valid.cpu()])
    lights = [ClientResult(r.client_id, light(r.message), r.state, r.seconds, r.buffers) for r in results]
    return EdgePart(lights, row, valid.tolist(), upload)


def part_fields(part: EdgePart) -> tuple[dict, dict]:
    """``(header fields, row tensors)`` of a summed part for the wire (the results go as a
    RESULTS message does); ``({}, {})`` for a forwarded one."""
    if part.valid is None:
        return {}, {}
    row = {} if part.row is None else {("row", k): v for k, v in vars(part.row).items() if isinstance(v, torch.Tensor)}
    return {"valid": part.valid, "upload": part.upload, "row_cls": type(part.row) if part.row is not None else None}, row


def part_from(header: dict, tensors: dict, results: list[ClientResult], device: torch.device) -> EdgePart:
    """The :class:`EdgePart` of a leader's message (``results`` rebuilt from it already)."""
    if "valid" not in header:
        return EdgePart(results)
    row = None
    if header["row_cls"] is not None:
        row = header["row_cls"](**{key[1]: t.to(device) for key, t in tensors.items() if key[0] == "row"})
    return EdgePart(results, row, header["valid"], header["upload"])
