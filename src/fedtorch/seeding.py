"""Counter-based seeding: every random draw comes from ``(seed, round, client, purpose)``.

No code in fedtorch reads the global RNG on the training path. A generator is derived
from the run's seed and the *coordinates* of the draw, so results do not depend on
execution order, on which executor ran a client, or on whether the run was resumed.
"""

from __future__ import annotations

import hashlib

import torch

_PURPOSES = ("client_sampling", "minibatch", "model_init", "noise", "local_steps", "eval", "personalization", "compression")


def derive_seed(seed: int, *coords: int | str) -> int:
    """Return a 63-bit seed derived from ``seed`` and any coordinates.

    Args:
        seed: the run's training seed (``seed`` in the config).
        *coords: round index, client id, purpose name, ... (ints or strings).

    Returns:
        A non-negative int < 2**63, stable across platforms and Python versions
        (BLAKE2b of the decimal/str representation).
    """
    text = "/".join(str(c) for c in (seed, *coords)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *coords: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with :func:`derive_seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *coords))
    return g
