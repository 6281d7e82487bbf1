"""Numpy (PCG64) fast paths of the busiest built-in generators: MQAR and the formal languages.

These samplers draw from a numpy PCG64 generator, several times faster than torch's mt19937
on CPU, and are built for speed at 100k-example scale: tokens are written in compact dtypes
and temporaries stay small, because first-touch page faults are the largest single cost of
a big segment (:func:`np_token_buffer` takes torch's plain pages, which measured faster in a
fresh process on our VMs than numpy's huge-page-advised buffers). Plugin tasks should use
the plain torch samplers of :mod:`zoology.tasks.sampling` (exported from ``zoology``);
:mod:`zoology.tasks.mqar_reference` is the readable definition the MQAR fast path is
tested against.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def np_generator(seed: int | np.random.SeedSequence) -> np.random.Generator:
    """A numpy PCG64 generator seeded with ``seed`` (several times faster than torch's
    mt19937 on CPU); the ``np_*`` samplers draw every random number from it."""
    return np.random.Generator(np.random.PCG64(seed if isinstance(seed, np.random.SeedSequence) else int(seed)))


NUMPY_DTYPES = {torch.int16: np.int16, torch.int32: np.int32, torch.int64: np.int64}


def np_uint16_fields(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` independent uniform 16-bit integers: the four fields of each raw 64-bit draw."""
    return rng.bit_generator.random_raw((count + 3) // 4).view(np.uint16)[:count]


def np_token_buffer(n: int, length: int, dtype: torch.dtype) -> np.ndarray:
    """An uninitialised ``[n, length]`` array of ``dtype`` from torch's allocator (plain
    pages: in a fresh process the first touch of numpy's huge-page-advised buffers measured
    several times slower on our VMs)."""
    return torch.empty((n, length), dtype=dtype).numpy()


def np_uniform_ints_(out: np.ndarray, low: int, high: int, rng: np.random.Generator,
                     chunk: int = 1 << 16) -> np.ndarray:
    """Fill ``out`` (a C-contiguous integer array) in place with integers uniform on ``[low, high)``.

    When ``high - low`` is a power of two no larger than 2**16, each value is a 16-bit field
    of a raw 64-bit draw, masked (exactly uniform, four values per draw); the draws come in
    cache-sized chunks, so the only big memory touched is ``out`` itself. Otherwise
    ``rng.integers``.
    """
    m = high - low
    if m <= 0:
        raise ValueError(f"empty range [{low}, {high})")
    flat = out.reshape(-1)  # a view: out is contiguous
    if m & (m - 1) == 0 and m <= 2**16:
        mask = np.uint16(m - 1)
        for start in range(0, flat.size, 4 * chunk):
            part = flat[start:start + 4 * chunk]
            np.bitwise_and(np_uint16_fields(part.size, rng), mask, out=part, casting="unsafe")
    else:
        flat[...] = rng.integers(0, m, flat.size, dtype=np.int32 if m < 2**31 else np.int64)
    if low:
        flat += low
    return out


def np_distinct(n: int, k: int, low: int, high: int, rng: np.random.Generator,
                dtype: type = np.int64) -> np.ndarray:
    """``[n, k]`` integers (``dtype``) drawn uniformly without replacement from ``[low, high)``, per row, in
    draw order (every ordered k-subset equally likely, like ``np.random.choice(...,
    replace=False)``).

    Every entry is drawn i.i.d.; then, repeatedly, every entry equal to an entry at an
    earlier position of its row is redrawn. The result is the same as drawing position by
    position and rejecting values already taken at earlier positions (a rejected value is
    always held, at the end, by an earlier position), i.e. exact successive sampling.
    """
    m = high - low
    if not 0 <= k <= m:
        raise ValueError(f"cannot draw {k} distinct values from [{low}, {high})")
    if 2 * k > m:  # dense: a random permutation prefix per row
        return (np.argsort(rng.random((n, m)), axis=1)[:, :k] + low).astype(dtype)
    bits = max(k - 1, 1).bit_length()
    small = (m << bits) < 2**31  # sort keys fit int32: numpy sorts those about 2x faster
    x = rng.integers(0, m, (n, k), dtype=np.int32 if small else np.int64)
    rows = np.arange(n)
    sub = x
    pos = np.arange(k, dtype=x.dtype)
    while k > 1 and len(rows):
        key = (sub << bits) | pos  # unique in its row; sorts by value, then by position
        key.sort(axis=1)
        dup = (key[:, 1:] >> bits) == (key[:, :-1] >> bits)
        r, c = np.nonzero(dup)
        if not len(r):
            break
        at = key[r, c + 1] & ((1 << bits) - 1)  # the later position of each equal pair
        rows = rows[r]
        x[rows, at] = rng.integers(0, m, len(r), dtype=x.dtype)
        keep = np.ones(len(r), dtype=bool)
        keep[1:] = rows[1:] != rows[:-1]
        rows = rows[keep]  # rows that changed: check them again
        sub = x[rows]
    out = x.astype(dtype)
    if low:
        out += dtype(low)
    return out


class AliasTable:
    """Walker's alias method: i.i.d. draws from ``weights`` (any non-negative, not all 0) at
    O(1) each, exact up to float64 rounding like ``np.random.choice(p=...)``."""

    def __init__(self, weights: np.ndarray) -> None:
        w = np.asarray(weights, dtype=np.float64)
        size = len(w)
        scaled = w * (size / w.sum())
        prob = np.ones(size)
        alias = np.arange(size)
        small = [i for i in range(size) if scaled[i] < 1.0]
        large = [i for i in range(size) if scaled[i] >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            prob[s], alias[s] = scaled[s], g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        self.size, self.prob, self.alias = size, prob, alias  # leftovers keep prob 1

    def draw(self, shape: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        x = rng.random(shape)
        x *= self.size
        i = x.astype(np.int64)
        x -= i  # the fractional part: an independent uniform coin
        return np.where(x < self.prob[i], i, self.alias[i])


class UrnTable:
    """Exact i.i.d. draws from ``weights`` at about one table lookup each.

    An urn of 2**16 slots holds ``floor(p_i * 2**16)`` copies of each index ``i``; a 16-bit
    field of a raw 64-bit draw picks a slot (four draws per generator call). A field that
    lands past the filled slots (probability = the rounding residual, under ``size / 2**16``)
    draws instead from the residual weights ``p_i * 2**16 - floor(p_i * 2**16)`` with an
    :class:`AliasTable`. Together: exactly ``p_i``, up to float64 rounding.
    """

    SLOTS = 1 << 16

    def __init__(self, weights: np.ndarray) -> None:
        w = np.asarray(weights, dtype=np.float64)
        scaled = w * (self.SLOTS / w.sum())
        copies = np.floor(scaled).astype(np.int64)
        self.filled = int(copies.sum())
        self.urn = np.zeros(self.SLOTS, dtype=np.int64)  # slots past `filled` are overwritten
        self.urn[: self.filled] = np.repeat(np.arange(len(w), dtype=np.int64), copies)
        residual = scaled - copies
        self.rest = AliasTable(residual) if self.filled < self.SLOTS else None

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` int64 indices."""
        fields = np_uint16_fields(count, rng)
        out = self.urn[fields]
        if self.rest is None:
            return out
        miss = np.flatnonzero(fields >= self.filled)
        if len(miss):
            out[miss] = self.rest.draw(len(miss), rng)
        return out


def np_weighted_distinct(n: int, k: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[n, k]`` int64 indices into ``weights`` drawn without replacement, per row, in draw
    order: ``np.random.choice(len(weights), k, replace=False, p=weights/sum)`` per row.

    Two exact methods, chosen by cost: :func:`np_race_distinct` when k is a large part of
    the weights (it touches every weight), :func:`np_rejection_distinct` otherwise.
    """
    size = len(weights)
    if not 0 <= k <= size:
        raise ValueError(f"cannot draw {k} distinct indices from {size} weights")
    if size <= 4 * k and size < 2**16:
        return np_race_distinct(n, k, weights, rng)
    return np_rejection_distinct(n, k, weights, rng)


def np_race_distinct(n: int, k: int, weights: np.ndarray, rng: np.random.Generator,
                     chunk: int = 2048) -> np.ndarray:
    """The exponential race (Efraimidis–Spirakis): the indices of the k smallest
    ``E_i / w_i`` (``E_i ~ Exp(1)``), in ascending order, are distributed exactly as k
    successive draws without replacement. ``E_i`` are float32 draws (numpy's float32
    ziggurat, three times faster than float64 here; their rounding, 2**-24 relative, is the
    only approximation), the scores float64. The index rides in the low ``bits`` mantissa
    bits of each score (scores closer than 2**(bits - 52) relative are ordered by index), so
    one vectorized int64 sort per block of rows orders the race."""
    size = len(weights)
    bits = max(size - 1, 1).bit_length()
    inv = np.float64(np.sum(weights)) / np.asarray(weights, dtype=np.float64)
    ids = np.arange(size, dtype=np.int64)
    clear, low = np.int64(~((1 << bits) - 1)), np.int64((1 << bits) - 1)
    out = np.empty((n, k), dtype=np.int64)
    for a in range(0, n, chunk):  # blocks that stay in cache
        e = rng.standard_exponential((min(n, a + chunk) - a, size), dtype=np.float32)
        scores = np.multiply(e, inv, dtype=np.float64)  # [rows, size]
        keys = scores.view(np.int64)  # positive floats: int64 order = float order
        keys &= clear
        keys |= ids
        keys.sort(axis=1)
        np.bitwise_and(keys[:, :k], low, out=out[a:a + len(keys)])
    return out


def np_rejection_distinct(n: int, k: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Successive sampling by rejection, vectorized over rows: position j draws from
    ``weights`` (:class:`UrnTable`) and redraws, in the rows where it hit an index taken at
    an earlier position, until it hits a free one; a redraw conditioned on missing the
    taken indices is a draw from the remaining weights."""
    size = len(weights)
    table = UrnTable(weights)
    out = table.draw(k * n, rng).reshape(k, n)  # first try of every position; row j = position j
    # taken[i * n + row]: index-major, so the many draws of the heaviest indices touch few
    # cache lines
    taken = np.zeros(size * n, dtype=bool)
    rows = np.arange(n, dtype=np.int64)
    for j in range(k):
        c = out[j]
        flat = c * n + rows
        if j:
            idx = np.flatnonzero(taken[flat])
            # rows whose draw was taken draw again: r candidates at once, the first free one
            # wins (the same as redrawing one at a time); r is about the expected tries
            q = len(idx) / n  # the chance that a draw is taken, roughly
            r = 1 if q < 0.05 else min(64, math.ceil(1 / max(1 - q, 1 / 64)))
            while len(idx):
                cand = table.draw(len(idx) * r, rng).reshape(len(idx), r)
                hit = taken[cand * n + idx[:, None]]
                first = hit.argmin(axis=1)  # the first free candidate (0 if none is free)
                free = ~hit[np.arange(len(idx)), first]
                c[idx[free]] = cand[free, first[free]]
                idx = idx[~free]
            flat = c * n + rows
        if j < k - 1:
            taken[flat] = True
    return np.ascontiguousarray(out.T)
