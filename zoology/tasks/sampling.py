"""Vectorized sampling helpers shared by the task generators (no loop over examples).

Two families, each drawing every random number from one seeded generator, so a segment
depends on its seed alone: torch ones (:func:`generator`, :func:`distinct`, ...), which
plugin tasks use and whose outputs must not change under them, and numpy PCG64 ones
(``np_*``: several times faster here), which the busiest built-in generators use.
:func:`empty_long` asks numpy (hence the kernel's huge pages) for big int64 buffers;
:func:`np_token_buffer` takes torch's plain pages instead, which measured faster in a fresh
process on our VMs. Either way first-touch page faults are the largest single cost of a
100k-example segment, so the fast paths write compact tokens and keep temporaries small.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: tasks draw every random number from it."""
    return torch.Generator().manual_seed(int(seed))


def empty_long(*shape: int) -> torch.Tensor:
    """An uninitialised int64 tensor backed by a numpy buffer (huge pages when large)."""
    return torch.from_numpy(np.empty(shape, dtype=np.int64))


def full_long(shape: tuple[int, ...], value: int) -> torch.Tensor:
    """An int64 tensor of ``shape`` filled with ``value`` (see :func:`empty_long`)."""
    return empty_long(*shape).fill_(value)


def uniform_ints_(out: torch.Tensor, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """Fill ``out`` (int64, any view) in place with integers uniform on ``[low, high)``.

    When ``high - low`` is a power of two no larger than 2**15, four tokens are cut from the
    bit fields of one 63-bit draw (exactly uniform, a quarter of the generator calls);
    otherwise this is ``random_(low, high)``, i.e. ``torch.randint``.
    """
    m = high - low
    if m <= 0:
        raise ValueError(f"empty range [{low}, {high})")
    if m & (m - 1) or m > 2**15 or out.numel() < 4096:
        return out.random_(low, high, generator=gen)
    words = torch.empty((out.numel() + 3) // 4, dtype=torch.int64).random_(generator=gen)
    fields = words.view(torch.int16)[: out.numel()].view(out.shape)
    torch.bitwise_and(fields, m - 1, out=out)  # int16 fields, masked, widened into out
    if low:
        out += low
    return out


def distinct(n: int, k: int, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, k]`` integers drawn uniformly without replacement from ``[low, high)``, per row.

    Every ordered k-subset is equally likely, as with ``np.random.choice(..., replace=False)``.
    When collisions are rare (``k*(k-1) <= 2*(high - low)``) rows of k independent draws are
    redrawn until they hold no repeat (i.i.d. draws conditioned on being distinct are a
    uniform ordered k-subset); otherwise Robert Floyd's algorithm runs over all rows at
    once (k vectorized steps), followed by a random permutation of each row.
    """
    m = high - low
    if not 0 <= k <= m:
        raise ValueError(f"cannot draw {k} distinct values from [{low}, {high})")
    if k <= 1 or k * (k - 1) <= 2 * m:  # P(no repeat in a row) >= about e^-1
        out = torch.empty(n, k, dtype=torch.int64).random_(low, high, generator=gen)
        todo = torch.arange(n)
        while k > 1:
            s = np.sort(out[todo].numpy(), axis=1)  # numpy sorts short rows ~10x faster
            todo = todo[torch.from_numpy((s[:, 1:] == s[:, :-1]).any(axis=1))]
            if not len(todo):
                break
            out[todo] = torch.empty(len(todo), k, dtype=torch.int64).random_(low, high, generator=gen)
        return out
    picked = torch.empty(n, k, dtype=torch.int64)
    for i, j in enumerate(range(m - k, m)):
        t = torch.empty(n, dtype=torch.int64).random_(0, j + 1, generator=gen)
        seen = (picked[:, :i] == t[:, None]).any(dim=1)
        picked[:, i] = torch.where(seen, torch.full_like(t, j), t)
    order = torch.rand(n, k, generator=gen).argsort(dim=1)
    return picked.gather(1, order) + low


def few_distinct(n: int, k: int, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, k]`` distinct integers from ``[low, high)`` per row, like :func:`distinct`, for
    small k (O(k^2) vectorized steps, no retries): position i draws ``t`` uniform on the
    ``m - i`` values not yet taken and maps it to the t-th free value by stepping over the
    taken values in ascending order — exact successive sampling."""
    m = high - low
    if not 0 <= k <= m:
        raise ValueError(f"cannot draw {k} distinct values from [{low}, {high})")
    out = torch.empty(n, k, dtype=torch.int64)
    taken = torch.empty(n, 0, dtype=torch.int64)  # [n, i], ascending per row
    for i in range(k):
        t = torch.empty(n, dtype=torch.int64).random_(0, m - i, generator=gen)
        for j in range(i):
            t += t >= taken[:, j]
        out[:, i] = t
        taken = torch.cat([taken, t[:, None]], dim=1).sort(dim=1).values if i < k - 1 else taken
    return out + low


def weighted_distinct(n: int, k: int, weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[n, k]`` indices into ``weights`` drawn without replacement, per row.

    The exponential race (Efraimidis–Spirakis, i.e. Gumbel top-k): the k smallest of
    ``E_i / w_i`` with ``E_i = -log U_i ~ Exp(1)`` are distributed exactly as k successive
    draws without replacement proportional to ``w`` (``np.random.choice(..., replace=False,
    p=w)``). The order of the k indices within a row is arbitrary.
    """
    size = weights.numel()
    if not 0 <= k <= size:
        raise ValueError(f"cannot draw {k} distinct indices from {size} weights")
    p = (weights / weights.sum()).float()
    scores = torch.rand(n, size, generator=gen).clamp_(min=1e-30).log_().neg_().div_(p[None, :])
    return scores.topk(k, dim=1, largest=False, sorted=False).indices


def first_occurrence(codes: torch.Tensor) -> torch.Tensor:
    """``[n, m]`` column index of the first occurrence, in its row, of each entry's value."""
    c = codes.numpy()
    order = np.argsort(c, axis=1, kind="stable")
    s = np.take_along_axis(c, order, axis=1)
    start = np.ones(s.shape, dtype=bool)
    start[:, 1:] = s[:, 1:] != s[:, :-1]
    cols = np.arange(s.shape[1])[None, :].repeat(s.shape[0], axis=0)
    group_start = np.maximum.accumulate(np.where(start, cols, 0), axis=1)
    first_sorted = np.take_along_axis(order, group_start, axis=1)
    out = np.empty_like(order)
    np.put_along_axis(out, order, first_sorted, axis=1)
    return torch.from_numpy(out)


def shift_labels(inputs: torch.Tensor) -> torch.Tensor:
    """Language-modelling labels: every position predicts the next input (the last: -100)."""
    labels = torch.full_like(inputs, -100)
    labels[:, :-1] = inputs[:, 1:]
    return labels


# -- numpy samplers (PCG64): the fast path of the MQAR generator ------------------------------


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
