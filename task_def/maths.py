"""Heavy arithmetic: CPU-bound work of a size the caller chooses (bounded by the registry)."""

from __future__ import annotations

import math
import random
import sys
from contextlib import contextmanager

from task_def.progress import report_progress

_SEGMENT = 1 << 21


def count_primes(n: int) -> dict:
    """Count the primes below ``n`` with a segmented sieve of Eratosthenes."""
    if n < 3:
        return {"n": n, "primes": 0}
    root = math.isqrt(n - 1)
    small = bytearray([1]) * (root + 1)
    small[0:2] = b"\x00\x00"
    for p in range(2, math.isqrt(root) + 1):
        if small[p]:
            small[p * p :: p] = bytes(len(range(p * p, root + 1, p)))
    base = [p for p in range(2, root + 1) if small[p]]
    count = 0
    for low in range(0, n, _SEGMENT):
        high = min(low + _SEGMENT, n)
        seg = bytearray([1]) * (high - low)
        for p in base:
            if p * p >= high:
                break
            first = max(p * p, (low + p - 1) // p * p)
            seg[first - low :: p] = bytes(len(range(first - low, high - low, p)))
        if low == 0:
            seg[0 : min(2, high)] = bytes(min(2, high))
        count += seg.count(1)
        report_progress(high, n, f"sieved up to {high:,}")
    return {"n": n, "primes": count}


def monte_carlo_pi(samples: int, seed: int = 0) -> dict:
    """Estimate π from ``samples`` random points in the unit square (same seed, same answer)."""
    rng = random.Random(seed)
    rand = rng.random
    inside = 0
    chunk = 200_000
    for start in range(0, samples, chunk):
        stop = min(start + chunk, samples)
        inside += sum(1 for _ in range(stop - start) if rand() ** 2 + rand() ** 2 <= 1.0)
        report_progress(stop, samples, f"{stop:,} samples")
    estimate = 4.0 * inside / samples
    return {"samples": samples, "pi": estimate, "error": abs(estimate - math.pi)}


@contextmanager
def _unbounded_int_str():
    """Python refuses str() of huge ints by default (CVE-2020-10735); these are ours, bounded."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(old)


def fibonacci(n: int, prefix_digits: int = 20) -> dict:
    """The n-th Fibonacci number by fast doubling; returns its digit count and leading digits."""
    bits = bin(n)[2:]
    a, b = 0, 1  # F(k), F(k+1), k the bits consumed so far
    for i, bit in enumerate(bits, 1):
        c = a * (2 * b - a)
        d = a * a + b * b
        a, b = (d, c + d) if bit == "1" else (c, d)
        report_progress(i, len(bits) + 1, f"doubling step {i} of {len(bits)}")
    with _unbounded_int_str():
        digits = str(a)
    report_progress(1, 1, "done")
    return {"n": n, "digits": len(digits), "prefix": digits[:prefix_digits]}


def _is_probable_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    # These bases make Miller-Rabin deterministic below 3.3e24, above the registry's bound.
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _pollard_brent(n: int, rng: random.Random) -> int:
    """A non-trivial factor of the odd composite ``n``."""
    while True:
        y, c, m = rng.randrange(1, n), rng.randrange(1, n), 128
        g = r = q = 1
        x = ys = y
        while g == 1:
            x = y
            for _ in range(r):
                y = (y * y + c) % n
            k = 0
            while k < r and g == 1:
                ys = y
                for _ in range(min(m, r - k)):
                    y = (y * y + c) % n
                    q = q * abs(x - y) % n
                g = math.gcd(q, n)
                k += m
            r *= 2
        if g == n:
            g = 1
            while g == 1:
                ys = (ys * ys + c) % n
                g = math.gcd(abs(x - ys), n)
        if g != n:
            return g


def factorise(n: int) -> dict:
    """The prime factors of ``n`` (trial division, then Pollard-Brent with Miller-Rabin)."""
    total = math.log(n) if n > 1 else 1.0
    factors: list[int] = []
    rest = n
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        while rest % p == 0:
            factors.append(p)
            rest //= p
    rng = random.Random(n)
    stack = [rest] if rest > 1 else []
    while stack:
        m = stack.pop()
        if _is_probable_prime(m):
            factors.append(m)
            report_progress(total - math.log(max(1, n // math.prod(factors))), total, f"found {m}")
            continue
        d = _pollard_brent(m, rng)
        stack += [d, m // d]
    factors.sort()
    report_progress(total, total, "done")
    return {"n": n, "factors": factors, "prime": factors == [n]}
