"""Allocation sampling math: the kernel's integer -ln(u) and the unbiasing."""

from __future__ import annotations

import math
import random

import pytest

from agent.sources.sampling import interval, log2_q16, probability, scaled, weight
from tests.allocstats import expected_error


@pytest.mark.parametrize("x", [1, 2, 3, 255, 256, 65535, 65536, 123456789, 2**31, 2**32 - 1])
def test_integer_log2_is_within_its_stated_error(x: int) -> None:
    assert abs(log2_q16(x) / 65536 - math.log2(x)) < 0.008


def test_integer_log2_error_bound_holds_across_a_mantissa() -> None:
    worst = max(abs(log2_q16(x) / 65536 - math.log2(x)) for x in range(1 << 16, 1 << 17, 7))
    assert worst < 0.008


def test_intervals_are_exponential_around_the_rate() -> None:
    rng = random.Random(7)
    rate = 512 * 1024
    draws = [interval(rng.getrandbits(32), rate) for _ in range(200_000)]
    mean = sum(draws) / len(draws)
    # exponential: sd == mean, so the mean of n draws is within 4 sd/sqrt(n)
    # of the rate, plus the approximation's bias (< 0.4%)
    assert abs(mean - rate) < rate * (4 / math.sqrt(len(draws)) + 0.004)
    # and the shape: P(X > rate) = 1/e
    above = sum(d > rate for d in draws) / len(draws)
    assert abs(above - math.exp(-1)) < 0.01
    assert min(draws) >= 0 and max(draws) <= 23 * rate


def test_the_largest_draw_is_bounded_and_the_smallest_is_near_zero() -> None:
    assert interval(0, 1000) == interval(1, 1000)  # forced odd: never ln(0)
    assert 21_500 < interval(1, 1000) < 22_300  # 32 ln2 ~ 22.18
    assert interval(2**32 - 1, 1000) == 0


@pytest.mark.parametrize(
    ("size", "rate", "p"),
    [(512 * 1024, 512 * 1024, 1 - math.exp(-1)), (1, 512 * 1024, 1 / (512 * 1024)), (0, 8, 0.0)],
)
def test_probability_of_a_sample(size: int, rate: int, p: float) -> None:
    assert probability(size, rate) == pytest.approx(p, rel=1e-6)


def test_weights_undo_the_sampling_on_average() -> None:
    """Simulate the Poisson sampler on a known workload: the scaled totals
    land within the stated error of the truth."""
    rng = random.Random(11)
    rate = 64 * 1024
    workload = [(64, 50_000), (4096, 4_000), (1 << 20, 20)]
    truth = sum(size * n for size, n in workload)
    est_bytes = est_objects = 0.0
    for size, n in workload:
        for _ in range(n):
            if rng.random() < probability(size, rate):
                objects, space = scaled(size, rate)
                est_objects += objects
                est_bytes += space
    assert abs(est_bytes - truth) < 4 * expected_error(workload, rate)
    assert est_objects == pytest.approx(sum(n for _, n in workload), rel=0.15)


def test_big_allocations_count_once() -> None:
    assert weight(100 << 20, 512 * 1024) == pytest.approx(1.0)
    assert scaled(100 << 20, 512 * 1024)[1] == pytest.approx(100 << 20)
    assert weight(0, 512) == 0.0
