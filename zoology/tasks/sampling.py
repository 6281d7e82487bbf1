"""Vectorized sampling helpers shared by the task generators (no loop over examples)."""

from __future__ import annotations

import torch


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: tasks draw every random number from it."""
    return torch.Generator().manual_seed(int(seed))


def distinct(n: int, k: int, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, k]`` integers drawn uniformly without replacement from ``[low, high)``, per row.

    Robert Floyd's algorithm run over all rows at once (k steps, each a vectorized
    membership test), then a random permutation of each row: every ordered k-subset is
    equally likely, as with ``np.random.choice(..., replace=False)``.
    """
    m = high - low
    if not 0 <= k <= m:
        raise ValueError(f"cannot draw {k} distinct values from [{low}, {high})")
    picked = torch.empty(n, k, dtype=torch.int64)
    for i, j in enumerate(range(m - k, m)):
        t = (torch.rand(n, generator=gen) * (j + 1)).long().clamp_(max=j)
        seen = (picked[:, :i] == t[:, None]).any(dim=1)
        picked[:, i] = torch.where(seen, torch.full_like(t, j), t)
    order = torch.rand(n, k, generator=gen).argsort(dim=1)
    return picked.gather(1, order) + low


def weighted_distinct(n: int, k: int, weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[n, k]`` indices into ``weights`` drawn without replacement, per row.

    Gumbel-top-k: the k largest of ``log w + Gumbel noise`` are distributed exactly as k
    successive draws without replacement proportional to ``w``
    (``np.random.choice(..., replace=False, p=w)``).
    """
    u = torch.rand(n, weights.numel(), generator=gen).clamp_(min=1e-12)
    scores = weights.log()[None, :] - torch.log(-torch.log(u))
    return scores.topk(k, dim=1).indices
