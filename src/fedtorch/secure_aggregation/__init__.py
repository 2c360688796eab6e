"""Simulated secure aggregation: SecAgg (Bonawitz et al. CCS 2017) and SecAgg+ (Bell et al. CCS 2020).

Knows nothing of algorithms, executors or the federation loop. Client objects hold the plain
updates and secrets; a server object sees only wire messages (keys, share ciphertexts, masked
vectors, revealed shares) and the sum. See ``docs/secure_aggregation.md``.

Example::

    proto = SecAggProtocol(num_clients=10, threshold=6, bits=32, quant_bits=16, clip_range=1.0)
    total, stats = proto.run(deltas, weights=[1] * 10, dropped_after_masking={3, 7})
    mean = total / stats.total_weight            # (P,) float64
"""

from fedtorch.secure_aggregation.field import FieldQuantizer, plain_quantised_sum
from fedtorch.secure_aggregation.graph import complete_graph, harary_graph
from fedtorch.secure_aggregation.protocol import PHASES, SecAggProtocol, SecAggResult, SecAggStats
from fedtorch.secure_aggregation.shamir import RecoveryError

__all__ = ["PHASES", "FieldQuantizer", "RecoveryError", "SecAggProtocol", "SecAggResult", "SecAggStats",
           "complete_graph", "harary_graph", "plain_quantised_sum"]
