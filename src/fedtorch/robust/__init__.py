"""Byzantine robustness: robust aggregators over ``deltas (M, P)`` and simulated attacks.

A library layer that knows nothing of algorithms, executors or the federation loop (issue 16,
item 4); docs/robustness.md describes each rule, its paper, and what the loop must wire.
"""

from fedtorch.robust.attacks import (
    GaussianNoise,
    LabelFlip,
    Scale,
    SignFlip,
    attackers,
    flip_labels,
    gaussian_noise,
    poison,
    scaled,
    sign_flip,
)
from fedtorch.robust.base import Aggregator, Mean, RobustAggregate
from fedtorch.robust.bulyan import Bulyan
from fedtorch.robust.clipping import CenteredClipping
from fedtorch.robust.coordinate import Median, TrimmedMean, coordinate_median, coordinate_trimmed_mean
from fedtorch.robust.krum import Krum, MultiKrum, krum_scores, pairwise_sq_distances
from fedtorch.robust.registry import AGGREGATORS, ATTACKS, make_aggregator, make_attack

__all__ = [
    "AGGREGATORS", "ATTACKS", "Aggregator", "Bulyan", "CenteredClipping", "GaussianNoise", "Krum", "LabelFlip",
    "Mean", "Median", "MultiKrum", "RobustAggregate", "Scale", "SignFlip", "TrimmedMean", "attackers",
    "coordinate_median", "coordinate_trimmed_mean", "flip_labels", "gaussian_noise", "krum_scores",
    "make_aggregator", "make_attack", "pairwise_sq_distances", "poison", "scaled", "sign_flip",
]
