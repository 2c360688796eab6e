"""Uplink message compression: pure tensor transforms over client updates ``deltas (M, P)``.

Knows nothing of algorithms, executors or the federation loop. Every compressor follows the
protocol in :mod:`fedtorch.compression.base` (``init_state`` / ``compress`` / ``encode`` /
``decode``); see ``docs/compression.md`` for the papers, equations and byte accounting.

Example::

    comp = COMPRESSORS["topk"](density=0.01)
    state = comp.init_state(M, P)
    decoded, state, nbytes = comp.compress(deltas, state, None, round=0)
"""

from fedtorch.compression.base import CompressOut
from fedtorch.compression.qsgd import QSGD
from fedtorch.compression.sign import SignEF
from fedtorch.compression.sparse import DGC, TopK

#: name -> constructor (frozen dataclass, keyword-only parameters validated on construction).
COMPRESSORS = {"topk": TopK, "dgc": DGC, "qsgd": QSGD, "sign": SignEF}

__all__ = ["COMPRESSORS", "CompressOut", "DGC", "QSGD", "SignEF", "TopK"]
