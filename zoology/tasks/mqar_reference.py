"""The plain definition of MQAR, one example at a time: the oracle of the fast generator.

Written from the Zoology paper (arXiv 2312.04927) and upstream's ``multiquery_ar``
(HazyResearch/zoology, zoology/data/multiquery_ar.py), with a Python loop over examples
and over queries, so that each step can be checked by reading it. ``MQAR.generate`` draws
from the same distribution with vectorized numpy samplers (:mod:`zoology.tasks.fast_sampling`)
and different random numbers; the tests compare the two statistically and check the exact
properties on both. Too slow for training data (most of a millisecond per example here).
"""

from __future__ import annotations

import torch

from zoology.tasks.base import IGNORE_INDEX, Segment, token_dtype
from zoology.tasks.mqar import MQAR
from zoology.tasks.sampling import generator


def reference_mqar(task: MQAR, seed: int) -> Segment:
    """``task.num_examples`` MQAR examples for ``seed``, distributed as ``task.generate``'s."""
    gen = generator(seed)
    n, k, length, vocab = task.num_examples, task.num_kv_pairs, task.input_seq_len, task.vocab_size
    half = vocab // 2
    context = 2 * k * task.num_passes
    space = (length - context) // 2  # query slots: the key of a query sits at context + 2g
    g = torch.arange(1, space + 1, dtype=torch.float64)
    gap_weights = task.power_a * g ** (task.power_a - 1)  # a·(g+1)^(a-1) for g in [0, space)
    inputs, labels = [], []
    for _ in range(n):
        keys = (1 + torch.randperm(half - 1, generator=gen)[:k]).tolist()  # k distinct, [1, V/2)
        values = (half + torch.randperm(vocab - half, generator=gen)[:k]).tolist()  # k distinct, [V/2, V)
        if task.random_non_queries:
            row = torch.randint(0, vocab, (length,), generator=gen).tolist()
        else:
            row = [0] * length
        for p in range(task.num_passes):  # k1 v1 k2 v2 ..., num_passes times
            for j in range(k):
                row[2 * k * p + 2 * j] = keys[j]
                row[2 * k * p + 2 * j + 1] = values[j]
        label = [IGNORE_INDEX] * length
        left = gap_weights.clone()
        for j in range(k):  # successive draws without replacement: the j-th gap is key j's
            gap = int(torch.multinomial(left, 1, generator=gen))
            left[gap] = 0.0
            row[context + 2 * gap] = keys[j]  # the query repeats the key ...
            label[context + 2 * gap] = values[j]  # ... and its value is predicted there
        inputs.append(row)
        labels.append(label)
    dtype = token_dtype(vocab)
    return Segment(torch.tensor(inputs, dtype=dtype),
                   torch.tensor(labels, dtype=dtype))
