"""The arithmetic of allocation sampling, in one place.

The kernel side (bpf/alloc.bpf.c) samples an allocation when a per-thread
byte countdown passes zero, then draws the next countdown from an
exponential distribution with mean `rate`. Because the exponential is
memoryless, an allocation of `size` bytes is sampled with probability
p = 1 - exp(-size/rate) regardless of history. Dividing each sample by p
makes every total an unbiased estimate (the Horvitz-Thompson estimator),
which is what Go's runtime/pprof and tcmalloc do (Go scales per stack by
the mean size; scaling each sample by its own size is exact for mixed sizes).

`interval` mirrors the kernel's integer approximation of -ln(u) * rate, so
unit tests can check its mean and error without loading BPF.
"""

from __future__ import annotations

import math

Q16 = 1 << 16
LN2_Q16 = 45426  # round(ln 2 * 2^16)
BEND_Q16 = 22715  # round(0.3466 * 2^16): log2(1+f) ~ f + C f (1-f)


def log2_q16(x: int) -> int:
    """log2(x) in Q16 for 1 <= x < 2^32, as the BPF program computes it."""
    n = x.bit_length() - 1
    f = (x >> (n - 16)) & 0xFFFF if n >= 16 else (x << (16 - n)) & 0xFFFF
    bend = (((f * (Q16 - f)) >> 16) * BEND_Q16) >> 16
    return (n << 16) + f + bend


def interval(x: int, rate: int) -> int:
    """Bytes until the next sample for the random 32-bit draw `x`: the
    kernel's -ln(x / 2^32) * rate (x is forced odd, so never 0)."""
    x |= 1
    neg_log2_u = (32 << 16) - log2_q16(x)
    return (((rate * neg_log2_u) >> 16) * LN2_Q16) >> 16


def probability(size: int, rate: int) -> float:
    """The chance that an allocation of `size` bytes is sampled."""
    return -math.expm1(-size / rate) if size > 0 else 0.0


def weight(size: int, rate: int) -> float:
    """How many allocations of this size one sample stands for: 1/p."""
    p = probability(size, rate)
    return 1.0 / p if p > 0 else 0.0


def scaled(size: int, rate: int) -> tuple[float, float]:
    """(objects, bytes) one sampled allocation of `size` bytes stands for."""
    w = weight(size, rate)
    return w, w * size
