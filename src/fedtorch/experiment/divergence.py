"""When a run has diverged, and what the user is told.

A run stops (``result.json`` with ``"status": "diverged"``, exit code 3 through the CLI)
at the first round (async: server version, or wave of arrivals) where

* at least a share ``eval.diverge_nonfinite`` (default 0.5; 1: only when all are) of the
  round's client updates is non-finite (NaN/Inf); in an asynchronous run, where a round
  has no cohort: that share of the last ``concurrency`` arrivals;
* the global model holds a NaN or Inf after the server step; or
* ``eval.diverge_loss`` is set and the round's mean local training loss, or the test loss
  when it was evaluated, exceeds it.

A round where fewer clients send non-finite updates goes on without them (the loop leaves
them out of aggregation and says so on stderr). The default 0.5 is ours (no paper fixes
one): a client or two failing on odd data is survivable, while most of a cohort exploding
means the learning rate (or the model) is wrong and every later round would print garbage. The check runs before the round's checkpoint
is written, so ``checkpoint.pt`` keeps the last good round.
"""

from __future__ import annotations

import math

import torch


class Diverged(Exception):
    """Raised by a federation loop's callback to stop a diverged run.

    Attributes:
        round: the round (async: server version) where it diverged.
        reason: what was non-finite or too large.
    """

    def __init__(self, round: int, reason: str):
        super().__init__(f"diverged at round {round}: {reason}")
        self.round, self.reason = round, reason


def divergence(x: torch.Tensor, nonfinite: int, updates: int, losses: list[float | None], cfg_eval) -> str | None:
    """Why a round counts as diverged, or None.

    Args:
        x: ``(P,)`` the global model after the round.
        nonfinite: how many of the round's ``updates`` client updates held NaN/Inf.
        updates: the round's client updates (async: the last ``concurrency`` arrivals,
            fewer at the start); 0 skips the share test.
        losses: the round's losses to compare with ``eval.diverge_loss`` (None: not measured).
        cfg_eval: the config's ``eval`` section (``diverge_nonfinite``, ``diverge_loss``).
    """
    limit = cfg_eval.diverge_loss
    if updates and nonfinite >= cfg_eval.diverge_nonfinite * updates:
        what = "every client update" if nonfinite == updates else f"{nonfinite} of {updates} client updates"
        return f"{what} held NaN/Inf (eval.diverge_nonfinite={cfg_eval.diverge_nonfinite})"
    if not bool(torch.isfinite(x).all()):
        return "the global model holds NaN/Inf after the server step"
    for loss in losses:
        if loss is not None and (not math.isfinite(loss) or (limit is not None and loss > limit)):
            return f"a loss of {loss:.4g} exceeds eval.diverge_loss={limit}" if math.isfinite(loss) else f"a loss is {loss}"
    return None


def hint(cfg) -> str:
    """The likely key to change, with its value, for the user's message (``cfg``: the run's
    validated config)."""
    return f"the learning rate is the likely cause: lower client.lr (now {cfg.client.lr})"
