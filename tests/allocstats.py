"""What the tests of allocation sampling allow for: the spread of an
unbiased estimate, from the same probabilities the agent divides by."""

from __future__ import annotations

import math

from agent.sources.sampling import probability


def expected_error(sizes_and_counts: list[tuple[int, int]], rate: int) -> float:
    """The standard deviation of the estimated total bytes for these
    allocations (size, how many): each is kept with probability p and then
    counts size/p, a variance of size^2 (1-p)/p."""
    var = 0.0
    for size, count in sizes_and_counts:
        p = probability(size, rate)
        if p > 0:
            var += count * size * size * (1 - p) / p
    return math.sqrt(var)
