"""Vectorized torch samplers for task generators (no loop over examples).

Each draws every random number from one seeded ``torch.Generator`` (:func:`generator`),
so a segment depends on its seed alone. Plugin tasks use these (``zoology`` exports the
public ones), so what a given generator state yields must not change under them. The
numpy fast paths of MQAR and the formal languages live in :mod:`zoology.tasks.fast_sampling`.
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


def _race(n: int, k: int, weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[n, size]`` exponential-race scores ``E_i / p_i`` with ``E_i = -log U_i ~ Exp(1)``
    (float32; ``U`` is clamped away from 0)."""
    size = weights.numel()
    if not 0 <= k <= size:
        raise ValueError(f"cannot draw {k} distinct indices from {size} weights")
    p = (weights / weights.sum()).float()
    return torch.rand(n, size, generator=gen).clamp_(min=1e-30).log_().neg_().div_(p[None, :])


def successive_draws(n: int, k: int, weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[n, k]`` indices into ``weights`` drawn without replacement, per row, in draw order:
    column j is the j-th of k successive draws, each proportional to the weights not yet
    drawn (``np.random.choice(len(w), k, replace=False, p=w/w.sum())`` per row).

    The exponential race (Efraimidis–Spirakis): the indices of the k smallest ``E_i / w_i``
    (``E_i ~ Exp(1)``), in ascending order of score, are distributed as k successive draws
    (exactly, up to the float32 rounding of the scores); the first to finish is the first
    draw. Use this whenever the order carries meaning (e.g. the j-th draw belongs to the
    j-th key).
    """
    return _race(n, k, weights, gen).topk(k, dim=1, largest=False, sorted=True).indices


def weighted_distinct(n: int, k: int, weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[n, k]`` indices into ``weights`` drawn without replacement, per row, as a *set*:
    the same indices :func:`successive_draws` gives for the same generator state, but in an
    arbitrary order within each row (``topk(sorted=False)``), which is not the draw order
    and not a uniformly random one. Use it only where the k indices are exchangeable, e.g.
    when they are assigned to items that are themselves in random order; otherwise use
    :func:`successive_draws`. Kept, unchanged, because plugin tasks' outputs depend on it.
    """
    return _race(n, k, weights, gen).topk(k, dim=1, largest=False, sorted=False).indices


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


