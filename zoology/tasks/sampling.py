"""Vectorized sampling helpers shared by the task generators (no loop over examples).

Every random number comes from the ``torch.Generator`` a task makes with :func:`generator`,
so a segment depends on its seed alone. Big int64 outputs are allocated through numpy
(:func:`empty_long`), which asks the kernel for huge pages: first-touch page faults were
the largest single cost of generating 100k-example segments with ``torch.empty``.
"""

from __future__ import annotations

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


def np_uniform_ints_(out: np.ndarray, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Fill ``out`` (int64, 2-D, any view) in place with integers uniform on ``[low, high)``.

    When ``high - low`` is a power of two no larger than 2**16, each token is a 16-bit field
    of one raw 64-bit draw, masked (exactly uniform, four tokens per draw), written straight
    into ``out``; otherwise ``rng.integers``.
    """
    m = high - low
    if m <= 0:
        raise ValueError(f"empty range [{low}, {high})")
    count = out.size
    if m & (m - 1) == 0 and m <= 2**16 and count:
        words = rng.integers(0, 2**64 - 1, (count + 3) // 4, dtype=np.uint64, endpoint=True)
        fields = words.view(np.uint16)[:count].reshape(out.shape)
        np.bitwise_and(fields, np.uint16(m - 1), out=out, casting="unsafe")
    else:
        out[...] = rng.integers(0, m, out.shape, dtype=np.int32 if m < 2**31 else np.int64)
    if low:
        out += low
    return out


def np_distinct(n: int, k: int, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, k]`` int64 drawn uniformly without replacement from ``[low, high)``, per row, in
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
        return np.argsort(rng.random((n, m)), axis=1)[:, :k].astype(np.int64) + low
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
    out = x.astype(np.int64)
    if low:
        out += low
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


def np_weighted_distinct(n: int, k: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[n, k]`` int64 indices into ``weights`` drawn without replacement, per row, in draw
    order: exactly ``np.random.choice(len(weights), k, replace=False, p=weights/sum)`` per row.

    Successive sampling by rejection, vectorized over rows: position j draws from ``weights``
    (alias method) and redraws, in the rows where it hit an index taken at an earlier
    position, until it hits a free one; a redraw conditioned on missing the taken indices is
    a draw from the remaining weights.
    """
    size = len(weights)
    if not 0 <= k <= size:
        raise ValueError(f"cannot draw {k} distinct indices from {size} weights")
    table = AliasTable(weights)
    out = table.draw((k, n), rng)  # first try of every position; row j = position j
    taken = np.zeros(n * size, dtype=bool)
    base = np.arange(n, dtype=np.int64) * size
    for j in range(k):
        c = out[j]
        if j:
            idx = np.flatnonzero(taken[base + c])
            while len(idx):  # rows whose draw was taken draw again
                c[idx] = table.draw(len(idx), rng)
                idx = idx[taken[base[idx] + c[idx]]]
        if j < k - 1:
            taken[base + c] = True
    return np.ascontiguousarray(out.T)
