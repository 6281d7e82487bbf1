"""Task catalogue: the conformance kit over every registered task, and per-task properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from zoology.errors import FieldError
from zoology.tasks import BUILTIN_TASKS
from zoology.tasks.base import IGNORE_INDEX
from zoology.tasks.circuits import (
    CumulativeMajority,
    CumulativeParity,
    Majority,
    Parity,
    VocabMajority,
)
from zoology.tasks.fast_sampling import (
    UrnTable,
    np_distinct,
    np_generator,
    np_race_distinct,
    np_rejection_distinct,
    np_weighted_distinct,
)
from zoology.tasks.formal import (
    BucketSort,
    CycleNavigation,
    DuplicateString,
    ModularArithmetic,
    ReverseString,
)
from zoology.tasks.mad import (
    FuzzyInContextRecall,
    InContextRecall,
    Memorization,
    NoisyInContextRecall,
    SelectiveCopying,
)
from zoology.tasks.mqar import MQAR, CompositionalMQAR, ForgettingMQAR
from zoology.tasks.mqar_reference import reference_mqar
from zoology.tasks.recall import AssociativeRecall, InductionHead
from zoology.tasks.sampling import (
    distinct,
    few_distinct,
    first_occurrence,
    generator,
    successive_draws,
    weighted_distinct,
)
from zoology.testing import check_task


@pytest.mark.parametrize("cls", BUILTIN_TASKS, ids=lambda c: c.name)
def test_conformance(cls):
    check_task(cls, **{**cls.example, "num_examples": 64})


def test_names_unique_and_documented():
    names = [c.name for c in BUILTIN_TASKS]
    assert len(names) == len(set(names))
    for c in BUILTIN_TASKS:
        assert c.__doc__ and len(c.__doc__) > 60, c.name


def _p_value(chi2: float, df: int) -> float:
    """P(X >= chi2) for X ~ chi^2(df)."""
    return torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                   torch.tensor(chi2 / 2, dtype=torch.float64)).item()


def _fit_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's goodness of fit of ``counts`` to the exact ``probs`` (same bins)."""
    expected = probs * counts.sum()
    return _p_value(float(((counts - expected) ** 2 / expected).sum()), len(counts) - 1)


def _same_p(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's two-sample test that histograms ``a`` and ``b`` (same bins, any shape; each
    row of a 2-D histogram is one slot) come from one distribution, per row and jointly."""
    a, b = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
    chi2, df = 0.0, 0
    for x, y in zip(a, b):
        keep = x + y > 0
        x, y = x[keep], y[keep]
        ex, ey = (x + y) * x.sum() / (x + y).sum(), (x + y) * y.sum() / (x + y).sum()
        chi2 += float(((x - ex) ** 2 / ex).sum() + ((y - ey) ** 2 / ey).sum())
        df += len(x) - 1
    return _p_value(chi2, df)


def _per_slot_hist(x: np.ndarray, bins: int) -> np.ndarray:
    """``[k, bins]``: the histogram of each column of ``x`` ``[n, k]``."""
    return np.stack([np.bincount(col, minlength=bins) for col in np.asarray(x).T])


def _successive_exact(w: list[float], k: int) -> dict[tuple[int, ...], float]:
    """Exact probability of every ordered k-tuple under successive sampling without replacement."""
    out = {}
    for t in itertools.permutations(range(len(w)), k):
        p, left = 1.0, sum(w)
        for i in t:
            p *= w[i] / left
            left -= w[i]
        out[t] = p
    return out


# -- sampling --------------------------------------------------------------------------------

def test_distinct_rows_unique_and_in_range():
    for k, lo, hi in [(4, 1, 4096), (64, 1, 4096), (8, 3, 12), (12, 0, 12)]:
        x = distinct(2000, k, lo, hi, generator(0))
        assert x.min() >= lo and x.max() < hi
        assert (x.sort(dim=1).values.diff(dim=1) > 0).all()


def test_distinct_is_uniform_over_ordered_tuples():
    x = distinct(60_000, 2, 0, 4, generator(1))  # 12 ordered pairs
    counts = torch.bincount(x[:, 0] * 4 + x[:, 1], minlength=16).float()
    nz = counts[counts > 0]
    assert len(nz) == 12 and (nz / nz.mean() - 1).abs().max() < 0.05


def test_few_distinct_rows_unique_and_uniform_over_ordered_tuples():
    for k, lo, hi in [(1, 2, 9), (3, 0, 7), (8, 5, 13), (4, 1, 4096)]:
        x = few_distinct(2000, k, lo, hi, generator(0))
        assert x.shape == (2000, k) and x.min() >= lo and x.max() < hi
        assert (x.sort(dim=1).values.diff(dim=1) > 0).all()
    x = few_distinct(120_000, 3, 0, 5, generator(1))  # 60 ordered triples, equally likely
    counts = torch.bincount((x * torch.tensor([25, 5, 1])).sum(1), minlength=125).float()
    nz = counts[counts > 0]
    assert len(nz) == 60 and (nz / nz.mean() - 1).abs().max() < 0.1


def test_urn_table_draws_exactly_the_weights():
    w = np.array([0.5, 1 / 3, 1 / 6 - 1e-6, 1e-6])  # slot rounding residue and a tiny weight
    table = UrnTable(w)
    assert table.filled < table.SLOTS and table.rest is not None
    x = table.draw(2_000_000, np_generator(3))
    freq = np.bincount(x, minlength=4) / len(x)
    assert np.abs(freq - w / w.sum()).max() < 2e-3 and freq[3] < 1e-4


def test_weighted_distinct_matches_successive_sampling():
    w = torch.tensor([4.0, 2.0, 1.0, 1.0])
    x = weighted_distinct(100_000, 1, w, generator(2))
    freq = torch.bincount(x[:, 0], minlength=4).float() / len(x)
    assert torch.allclose(freq, w / w.sum(), atol=0.01)
    # second draw given the first: P({0,1}) = 4/8*2/4 + 2/8*4/6
    x = weighted_distinct(100_000, 2, w, generator(3))
    pair01 = ((x.min(1).values == 0) & (x.max(1).values == 1)).float().mean()
    assert abs(pair01 - (0.25 + 1 / 6)) < 0.01


def test_successive_draws_are_successive_sampling_in_draw_order():
    w = [4.0, 2.0, 1.0, 1.0, 0.5]
    exact = _successive_exact(w, 3)  # 60 ordered triples
    x = successive_draws(200_000, 3, torch.tensor(w), generator(8)).numpy()
    codes = np.bincount(x @ np.array([25, 5, 1]), minlength=125)
    tuples = list(exact)
    counts = np.array([codes[a * 25 + b * 5 + c] for a, b, c in tuples])
    assert counts.sum() == len(x)  # every row is a triple of distinct indices
    assert _fit_p(counts, np.array([exact[t] for t in tuples])) > 1e-3


def test_successive_draws_per_slot_match_numpy_choice_and_weighted_distinct_is_their_set():
    from zoology.tasks.mqar import _power_law

    w = _power_law(20, 0.01)  # MQAR's query gaps: 64 tokens, 12 context pairs
    x = successive_draws(20_000, 8, w, generator(9)).numpy()
    p = (w / w.sum()).numpy()
    rs = np.random.RandomState(0)
    ref = np.stack([rs.choice(20, 8, replace=False, p=p) for _ in range(6000)])  # upstream's draw
    assert _same_p(_per_slot_hist(x, 20), _per_slot_hist(ref, 20)) > 1e-3
    assert np.abs(x.mean(0) - ref.mean(0)).max() < 0.4  # sd of a difference < 0.1
    assert (np.diff(x.mean(0)) > 0).all()  # later draws land further away
    # weighted_distinct: the same indices for the same generator state, in another order
    a = weighted_distinct(5000, 8, w, generator(10))
    b = successive_draws(5000, 8, w, generator(10))
    assert torch.equal(a.sort(1).values, b.sort(1).values)


def test_np_distinct_rows_unique_in_range_and_uniform():
    for k, lo, hi in [(4, 1, 4096), (64, 1, 4096), (64, 4096, 8192), (8, 3, 12), (12, 0, 12), (1, 5, 6)]:
        x = np_distinct(2000, k, lo, hi, np_generator(0))
        assert x.dtype == np.int64 and x.shape == (2000, k) and x.min() >= lo and x.max() < hi
        assert (np.diff(np.sort(x, axis=1), axis=1) > 0).all()
    x = np_distinct(60_000, 2, 0, 4, np_generator(1))  # 12 ordered pairs, equally likely
    counts = np.bincount(x[:, 0] * 4 + x[:, 1], minlength=16)
    nz = counts[counts > 0]
    assert len(nz) == 12 and np.abs(nz / nz.mean() - 1).max() < 0.05
    x = np_distinct(60_000, 3, 0, 5, np_generator(2))  # the redraw path, 60 ordered triples
    codes = (x * [25, 5, 1]).sum(1)
    counts = np.bincount(codes, minlength=125)
    nz = counts[counts > 0]
    assert len(nz) == 60 and np.abs(nz / nz.mean() - 1).max() < 0.15


@pytest.mark.parametrize("draw", [np_weighted_distinct, np_race_distinct, np_rejection_distinct])
def test_np_weighted_distinct_is_ordered_successive_sampling(draw):
    w = np.array([4.0, 2.0, 1.0, 1.0])
    x = draw(100_000, 1, w, np_generator(2))
    assert np.allclose(np.bincount(x[:, 0], minlength=4) / len(x), w / w.sum(), atol=0.01)
    x = draw(200_000, 2, w, np_generator(3))
    # order matters, as with np.random.choice(4, 2, replace=False, p=w/8)
    assert abs(((x[:, 0] == 0) & (x[:, 1] == 1)).mean() - 4 / 8 * 2 / 4) < 0.005
    assert abs(((x[:, 0] == 1) & (x[:, 1] == 0)).mean() - 2 / 8 * 4 / 6) < 0.005
    assert abs(((x[:, 0] == 2) & (x[:, 1] == 3)).mean() - 1 / 8 * 1 / 7) < 0.003
    x = draw(3000, 4, w, np_generator(4))  # k = size: a permutation per row
    assert (np.sort(x, axis=1) == np.arange(4)).all()
    # a third draw after two: P(0, 1, 2) = 4/8 * 2/4 * 1/2
    x = draw(200_000, 3, w, np_generator(5))
    assert abs(((x[:, 0] == 0) & (x[:, 1] == 1) & (x[:, 2] == 2)).mean() - 1 / 8) < 0.004


def test_race_and_rejection_agree_on_mqar_gaps():
    from zoology.tasks.mqar import _power_law

    w = _power_law(192, 0.01).numpy()  # the 512-token, 64-pair setting
    a = np_race_distinct(20_000, 64, w, np_generator(6))
    b = np_rejection_distinct(20_000, 64, w, np_generator(7))
    for x in (a, b):
        assert (np.diff(np.sort(x, axis=1), axis=1) > 0).all()
    # per position: mean gap (sd of the difference ~0.55) and how often gap 0 comes first
    assert np.abs(a.mean(0) - b.mean(0)).max() < 3
    assert abs((a[:, 0] == 0).mean() - (b[:, 0] == 0).mean()) < 0.015


def test_mqar_gaps_are_drawn_in_key_order_like_upstream():
    # upstream: gap j (for the key of pair j) is the j-th draw of np.random.choice(replace=False, p)
    t = MQAR(vocab_size=256, input_seq_len=24, num_kv_pairs=2, power_a=0.5, num_examples=60_000)
    s = t.generate(0)
    pos = (s.labels != IGNORE_INDEX).long()
    first_key = s.inputs[:, 0]
    at = (s.inputs == first_key[:, None]) & (pos == 1)
    g0 = at.long().argmax(1)
    later = ((pos == 1) & ~at).long().argmax(1)
    space = (24 - 4) // 2
    w = np.arange(1, space + 1) ** -0.5
    w /= w.sum()
    exact = sum(w[a] * w[b] / (1 - w[a]) for a in range(space) for b in range(a + 1, space))
    assert abs((g0 < later).double().mean().item() - exact) < 0.01


def test_mqar_same_tensors_with_and_without_the_second_thread():
    t = MQAR(vocab_size=512, input_seq_len=256, num_kv_pairs=16, num_examples=4000)  # >= 1M tokens
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = t.generate(7)
        torch.set_num_threads(2)
        b = t.generate(7)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)


def test_first_occurrence():
    x = torch.tensor([[3, 1, 3, 2, 1, 1]])
    assert first_occurrence(x).tolist() == [[0, 1, 0, 3, 1, 1]]


# -- MQAR family -------------------------------------------------------------------------------

def _pairs(inputs, upto):
    return inputs[:, :upto:2], inputs[:, 1:upto:2]


def test_mqar_semantics():
    t = MQAR(vocab_size=256, input_seq_len=64, num_kv_pairs=8, num_examples=2000)
    s = t.generate(0)
    keys, values = _pairs(s.inputs, 16)
    assert (keys.sort(1).values.diff(1) > 0).all() and keys.min() >= 1 and keys.max() < 128
    assert (values.sort(1).values.diff(1) > 0).all() and values.min() >= 128
    scored = s.labels != IGNORE_INDEX
    assert (scored.sum(1) == 8).all() and not scored[:, :16].any()
    for i in range(50):
        table = dict(zip(keys[i].tolist(), values[i].tolist()))
        for p in scored[i].nonzero().flatten().tolist():
            assert table[s.inputs[i, p].item()] == s.labels[i, p].item()


def test_mqar_gap_histogram_follows_power_law():
    t = MQAR(vocab_size=512, input_seq_len=64, num_kv_pairs=1, power_a=0.5, num_examples=40_000)
    s = t.generate(0)
    gaps = (s.labels != IGNORE_INDEX).int().argmax(1)
    gaps = (gaps - 2) // 2
    space = (64 - 2) // 2
    hist = torch.bincount(gaps, minlength=space).double() / len(gaps)
    g = torch.arange(1, space + 1, dtype=torch.float64)
    p = g ** -0.5
    p /= p.sum()
    assert (hist - p).abs().max() < 0.01


def _check_mqar_exact(t: MQAR, s) -> None:
    """What every MQAR example must be, whichever generator made it."""
    k, half, context = t.num_kv_pairs, t.vocab_size // 2, 2 * t.num_kv_pairs * t.num_passes
    inputs, labels = s.inputs.long(), s.labels.long()
    keys, values = _pairs(inputs, 2 * k)
    assert (keys.sort(1).values.diff(1) > 0).all() and keys.min() >= 1 and keys.max() < half
    assert (values.sort(1).values.diff(1) > 0).all() and values.min() >= half and values.max() < t.vocab_size
    for p in range(1, t.num_passes):
        assert torch.equal(inputs[:, 2 * k * p: 2 * k * (p + 1)], inputs[:, : 2 * k])
    scored = labels != IGNORE_INDEX
    assert not scored[:, :context].any() and not scored[:, context + 1::2].any()
    hits = torch.zeros_like(scored, dtype=torch.int64)
    for j in range(k):  # each key is queried exactly once; the answer is its value
        at = scored & (inputs == keys[:, j:j + 1])
        assert (at.sum(1) == 1).all()
        assert torch.equal(labels[at], values[:, j])
        hits += at
    assert torch.equal(hits.bool(), scored)
    if not t.random_non_queries:
        assert (inputs[:, context:][~scored[:, context:]] == 0).all()


def _mqar_gaps(t: MQAR, s) -> np.ndarray:
    """``[n, k]``: the query gap of each context key, in context order."""
    context = 2 * t.num_kv_pairs * t.num_passes
    inputs, scored = s.inputs.long(), s.labels != IGNORE_INDEX
    keys = inputs[:, 0: 2 * t.num_kv_pairs: 2]
    pos = torch.stack([(scored & (inputs == keys[:, j:j + 1])).long().argmax(1)
                       for j in range(t.num_kv_pairs)], dim=1)
    return ((pos - context) // 2).numpy()


@pytest.mark.parametrize("params", [
    {"vocab_size": 64, "input_seq_len": 48, "num_kv_pairs": 4},
    {"vocab_size": 24, "input_seq_len": 40, "num_kv_pairs": 3, "num_passes": 2, "power_a": 0.5,
     "random_non_queries": False},
])
def test_mqar_fast_generator_matches_the_plain_reference(params):
    fast_task, ref_task = MQAR(**params, num_examples=20_000), MQAR(**params, num_examples=2500)
    fast, ref = fast_task.generate(0), reference_mqar(ref_task, 0)
    assert fast.inputs.dtype == ref.inputs.dtype
    for t, s in ((fast_task, fast), (ref_task, ref)):
        _check_mqar_exact(t, s)
    k, vocab = fast_task.num_kv_pairs, fast_task.vocab_size
    space = (fast_task.input_seq_len - 2 * k * fast_task.num_passes) // 2
    # where each key is queried, per key: the gap distribution and its order across keys
    assert _same_p(_per_slot_hist(_mqar_gaps(fast_task, fast), space),
                   _per_slot_hist(_mqar_gaps(ref_task, ref), space)) > 1e-3
    # which keys and values, per slot of the context
    for cols in (slice(0, 2 * k, 2), slice(1, 2 * k, 2)):
        assert _same_p(_per_slot_hist(fast.inputs[:, cols].long().numpy(), vocab),
                       _per_slot_hist(ref.inputs[:, cols].long().numpy(), vocab)) > 1e-3
    # the filler tokens after the context, outside the queries
    if fast_task.random_non_queries:
        def filler(s):
            c = 2 * k * fast_task.num_passes
            return np.bincount(s.inputs[:, c:][s.labels[:, c:] == IGNORE_INDEX].long().numpy(), minlength=vocab)
        assert _same_p(filler(fast), filler(ref)) > 1e-3


def _upstream_gaps(n: int, k: int, space: int, power_a: float, seed: int) -> np.ndarray:
    """Upstream's query gaps (compositional_mqar, forgetting_mqar): per example,
    ``np.random.choice(space, k, replace=False, p)``; gap j goes to context key j."""
    g = np.arange(1, space + 1)
    p = power_a * g ** (power_a - 1)
    rs = np.random.RandomState(seed)
    return np.stack([rs.choice(space, k, replace=False, p=p / p.sum()) for _ in range(n)])


def test_forgetting_mqar_gaps_per_key_match_upstream():
    k, u, length = 8, 4, 64
    t = ForgettingMQAR(vocab_size=256, input_seq_len=length, num_kv_pairs=k, num_updates=u, num_examples=20_000)
    s = t.generate(0)
    context = 2 * (k + u)
    keys, scored = s.inputs[:, 0: 2 * k: 2].long(), s.labels != IGNORE_INDEX
    pos = torch.stack([(scored & (s.inputs.long() == keys[:, j:j + 1])).long().argmax(1) for j in range(k)], 1)
    ours = ((pos - context) // 2).numpy()
    space = (length - context) // 2
    up = _upstream_gaps(6000, k, space, 0.01, 0)
    assert _same_p(_per_slot_hist(ours, space), _per_slot_hist(up, space)) > 1e-3
    # the distance from a key's pair to its query, in pairs (the check)
    def distance(gaps: np.ndarray) -> np.ndarray:
        return np.bincount(((context + 2 * gaps - 2 * np.arange(k)) // 2).ravel(), minlength=context + space)

    assert _same_p(distance(ours), distance(up)) > 1e-3


def test_compositional_mqar_gaps_per_pair_match_upstream():
    k, length = 4, 64
    t = CompositionalMQAR(vocab_size=300, input_seq_len=length, num_kv_pairs=k, num_examples=20_000)
    s = t.generate(0)
    context = 3 * k
    inputs, scored = s.inputs.long(), s.labels != IGNORE_INDEX
    prev = torch.cat([torch.full_like(inputs[:, :1], -1), inputs[:, :-1]], dim=1)
    pos = torch.stack([(scored & (prev == inputs[:, 3 * j:3 * j + 1]) & (inputs == inputs[:, 3 * j + 1:3 * j + 2]))
                       .long().argmax(1) for j in range(k)], 1)  # the value is scored at the query's k2
    ours = ((pos - 1 - context) // 3).numpy()
    space = (length - context) // 3
    up = _upstream_gaps(6000, k, space, 0.01, 0)
    assert _same_p(_per_slot_hist(ours, space), _per_slot_hist(up, space)) > 1e-3


def test_mqar_rejects_too_many_pairs_with_the_constraint():
    with pytest.raises(FieldError, match=r"<= input_seq_len \(got 72 > 64\)") as e:
        MQAR(vocab_size=256, input_seq_len=64, num_kv_pairs=18, num_examples=1)
    assert e.value.field == "num_kv_pairs"


def test_compositional_keys_are_unique_grid_pairs():
    t = CompositionalMQAR(vocab_size=300, input_seq_len=60, num_kv_pairs=9, num_examples=500)
    s = t.generate(0)
    ctx = s.inputs[:, :27].view(500, 9, 3)
    for i in range(100):
        k1, k2, v = ctx[i].T.tolist()
        assert len(set(zip(k1, k2))) == 9 and len(set(k1)) == 3 and len(set(k2)) == 3
        table = {(a, b): c for a, b, c in zip(k1, k2, v)}
        for p in (s.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist():
            assert table[(s.inputs[i, p - 1].item(), s.inputs[i, p].item())] == s.labels[i, p].item()
    with pytest.raises(FieldError, match="perfect square"):
        CompositionalMQAR(vocab_size=300, input_seq_len=60, num_kv_pairs=8, num_examples=1)


def test_forgetting_mqar_answers_the_latest_value():
    k, u = 6, 3
    t = ForgettingMQAR(vocab_size=128, input_seq_len=64, num_kv_pairs=k, num_updates=u, num_examples=500)
    s = t.generate(0)
    for i in range(200):
        ctx = s.inputs[i, : 2 * (k + u)].tolist()
        latest, first = {}, {}
        for key, val in zip(ctx[::2], ctx[1::2]):
            first.setdefault(key, val)
            latest[key] = val
        assert len(latest) == k and sum(first[x] != latest[x] for x in latest) == u
        scored = (s.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(scored) == k
        for p in scored:
            assert s.labels[i, p].item() == latest[s.inputs[i, p].item()]


# -- circuits ---------------------------------------------------------------------------------

def test_parity_and_majority_labels():
    s = Parity(vocab_size=3, input_seq_len=33, num_examples=500).generate(0)
    assert (s.labels[:, -1] == s.inputs[:, :-1].sum(1) % 2).all() and (s.inputs[:, -1] == 2).all()
    assert (s.labels[:, :-1] == IGNORE_INDEX).all()
    s = Majority(vocab_size=3, input_seq_len=33, num_examples=500).generate(0)
    assert (s.labels[:, -1] == (s.inputs[:, :-1].sum(1) > 16).long()).all()
    s = CumulativeParity(vocab_size=2, input_seq_len=32, num_examples=200).generate(0)
    for t in (0, 7, 31):
        assert (s.labels[:, t] == s.inputs[:, : t + 1].sum(1) % 2).all()
    s = CumulativeMajority(vocab_size=2, input_seq_len=32, num_examples=200).generate(0)
    for t in (0, 7, 31):
        assert (s.labels[:, t] == (2 * s.inputs[:, : t + 1].sum(1) >= t + 1).long()).all()


def test_vocab_majority_answer_is_unique_mode():
    s = VocabMajority(vocab_size=5, input_seq_len=12, num_examples=1000).generate(0)
    seq = s.inputs[:, :-1]
    counts = torch.stack([(seq == v).sum(1) for v in range(5)], 1)
    top = counts.max(1).values
    assert ((counts == top[:, None]).sum(1) == 1).all()
    assert (counts.argmax(1) == s.labels[:, -1]).all()


# -- MAD --------------------------------------------------------------------------------------

def _check_recall(s, noise_from=None):
    for i in range(100):
        table, seen = {}, set()
        toks = s.inputs[i].tolist()
        for p in range(0, len(toks), 2):
            k, v = toks[p], toks[p + 1]
            if noise_from is not None and k >= noise_from:
                assert s.labels[i, p] == IGNORE_INDEX and v >= noise_from
                continue
            assert table.setdefault(k, v) == v
            want = v if k in seen else IGNORE_INDEX
            assert s.labels[i, p].item() == want
            seen.add(k)
        assert s.labels[i, -2] != IGNORE_INDEX  # the probe is always answerable


def test_in_context_recall_semantics():
    _check_recall(InContextRecall(num_examples=200).generate(0))
    s = InContextRecall(num_examples=10, targets="all").generate(0)
    assert (s.labels[:, :-1] == s.inputs[:, 1:]).all()


def test_noisy_recall_noise_is_never_scored():
    t = NoisyInContextRecall(num_examples=200, frac_noise=0.5)
    _check_recall(t.generate(0), noise_from=t.vocab_size - t.noise_vocab_size)


def test_fuzzy_recall_scores_only_value_tokens_and_the_final_probe():
    t = FuzzyInContextRecall(num_examples=300, input_seq_len=64)
    s = t.generate(0)
    assert ((s.labels != IGNORE_INDEX).sum(1) >= 1).all()
    pad = t.vocab_size - 1
    for i in range(100):
        # the final pair is key (3 tokens) + value: scored value tokens sit at the end
        scored = (s.labels[i] != IGNORE_INDEX).nonzero().flatten()
        assert s.labels[i, -1] != IGNORE_INDEX
        assert (s.labels[i, scored] >= (pad // 2)).all()  # only value tokens are scored
        assert (s.labels[i, scored] < pad).all()


def _fuzzy_pairs(seq: list[int], n_key_tok: int, pad: int) -> list[tuple[tuple[int, ...], int, int]]:
    """(key, value start, value end) of each pair: left padding, then alternating runs of
    key tokens and value tokens (every pair is one key run and one value run)."""
    start = next(i for i, x in enumerate(seq) if x != pad)
    pairs, i = [], start
    while i < len(seq):
        j = i
        while j < len(seq) and seq[j] < n_key_tok:
            j += 1
        m = j
        while m < len(seq) and n_key_tok <= seq[m] < pad:
            m += 1
        assert i < j < m, "a key run then a value run"
        pairs.append((tuple(seq[i:j]), j, m))
        i = m
    return pairs


@pytest.mark.parametrize("params", [
    {},  # MAD's baseline: 1.6% of examples scored a never-shown probe key before the fix
    {"input_seq_len": 40, "variable_key_size": True},
    {"vocab_size": 11, "input_seq_len": 31, "k_motif_size": 2, "v_motif_size": 4},
])
def test_fuzzy_recall_scores_exactly_the_values_of_keys_shown_before(params):
    t = FuzzyInContextRecall(**params, num_examples=2500)
    s = t.generate(0)
    pad, n_key_tok = t.vocab_size - 1, (t.vocab_size - 1) // 2
    for inputs, labels in zip(s.inputs.tolist(), s.labels.tolist()):
        seq = [*inputs, labels[-1]]  # the last token only shows up as the final label
        # labels[p] is the token at p + 1: the scored tokens, as positions in seq
        scored = {p + 1 for p, y in enumerate(labels) if y != IGNORE_INDEX}
        assert all(labels[p - 1] == seq[p] for p in scored)
        table, want = {}, set()
        for key, a, b in _fuzzy_pairs(seq, n_key_tok, pad):
            value = seq[a:b]
            if key in table:  # shown before: the same value, every token of it scored
                assert table[key] == value
                want.update(range(a, b))
            table[key] = value
        assert scored == want
        assert len(seq) - 1 in scored  # the final probe is scored, hence its key was shown before


def test_selective_copying_answer_is_the_non_noise_tokens_in_order():
    t = SelectiveCopying(num_examples=300)
    s = t.generate(0)
    blank, copy = t.vocab_size - 2, t.vocab_size - 1
    n_copy = t.num_tokens_to_copy
    for i in range(300):
        toks = s.inputs[i].tolist()
        at = toks.index(copy)
        kept = [x for x in toks[:at] if x != blank]
        assert len(kept) == n_copy == len(toks) - at - 1
        assert s.labels[i, at + 1:].tolist() == kept
        assert (s.labels[i, : at + 1] == IGNORE_INDEX).all()
    s = SelectiveCopying(num_examples=10, num_tokens_to_copy=32, input_seq_len=128).generate(0)
    assert ((s.labels != IGNORE_INDEX).sum(1) == 32).all()


def test_memorization_map_is_fixed_across_seeds():
    t = Memorization(num_examples=500)
    a, b = t.generate(0), t.generate(1)
    table = {}
    for s in (a, b):
        keys, labels = s.inputs[:, 0::2].flatten().tolist(), s.labels[:, 1::2].flatten().tolist()
        for k, v in zip(keys, labels):
            assert table.setdefault(k, v) == v


# -- classic ----------------------------------------------------------------------------------

def test_associative_recall_answer_is_the_bound_value():
    for nk in (1, 2):
        t = AssociativeRecall(vocab_size=20, input_seq_len=40, num_keys=nk, num_examples=300)
        s = t.generate(0)
        for i in range(100):
            toks = s.inputs[i].tolist()
            body = toks[: len(toks) - nk - 1]
            body = [x for x in body if x != t.vocab_size - 1]
            table = {}
            for j in range(0, len(body), nk + 1):
                key = tuple(body[j: j + nk])
                assert table.setdefault(key, body[j + nk]) == body[j + nk]
            assert s.labels[i, -1].item() == table[tuple(toks[-nk:])]


def test_induction_head_copies_after_the_trigger():
    t = InductionHead(vocab_size=20, input_seq_len=40, induction_len=2, num_triggers=3, num_examples=300)
    s = t.generate(0)
    prefix = t.vocab_size - 2
    for i in range(300):
        toks = s.inputs[i].tolist()
        first = toks.index(prefix)
        assert s.labels[i, -2:].tolist() == toks[first + 1: first + 3]
        assert toks[-2] == prefix


# -- formal languages -----------------------------------------------------------------------

def _io(t, s, i):
    toks = s.inputs[i].tolist()
    sep = toks.index(t.alphabet)
    scored = (s.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist()
    return toks[:sep], [s.labels[i, p].item() for p in scored], scored[0] == sep


def test_formal_language_answers():
    cases = [
        (ReverseString, lambda x: x[::-1]),
        (DuplicateString, lambda x: x + x),
        (BucketSort, sorted),
        (CycleNavigation, lambda x: [sum(m - 1 for m in x) % 5]),
    ]
    for cls, f in cases:
        t = cls(input_seq_len=30, num_examples=200)
        s = t.generate(0)
        for i in range(200):
            x, y, at_sep = _io(t, s, i)
            assert at_sep and y == f(x), cls.name


def test_modular_arithmetic_matches_python_eval():
    t = ModularArithmetic(input_seq_len=24, num_examples=300)
    s = t.generate(0)
    for i in range(300):
        x, y, _ = _io(t, s, i)
        expr = " ".join(t.symbols[c] for c in x)
        assert len(x) % 2 == 1 and y == [eval(expr) % 5], expr


def test_formal_min_length_for_length_generalisation():
    t = ReverseString(input_seq_len=100, min_length=41, num_examples=100)
    s = t.generate(0)
    assert ((s.labels != IGNORE_INDEX).sum(1) >= 41).all()
    with pytest.raises(FieldError, match="min_length"):
        ReverseString(input_seq_len=60, min_length=41, num_examples=1)


def test_tasks_with_cross_field_constraints_reject_a_bad_combination():
    bad = {
        CompositionalMQAR: {"num_kv_pairs": 5},
        ForgettingMQAR: {"num_updates": 99},
        SelectiveCopying: {"num_tokens_to_copy": 200},
        AssociativeRecall: {"input_seq_len": 3},
        ModularArithmetic: {"vocab_size": 5},
    }
    for cls, override in bad.items():
        with pytest.raises(FieldError):
            cls(**{**cls.example, "num_examples": 1, **override})



def test_bench_data_times_every_setting_of_a_task(monkeypatch):
    from zoology.bench import bench_data

    # upstream's timed settings are what `zoology bench data` times for mqar ...
    assert [(p["input_seq_len"], p["num_kv_pairs"], p["num_examples"]) for p in MQAR.bench_params] == [
        (64, 4, 100_000), (256, 16, 100_000), (512, 64, 20_000)]
    # ... and each setting gives one row with its parameters and a consistent rate
    small = [{**p, "num_examples": 500} for p in MQAR.bench_params]
    monkeypatch.setattr(MQAR, "bench_params", small)
    rows = list(bench_data(["mqar"]))
    assert [{k: r[k] for k in small[0]} for r in rows] == small
    for r in rows:
        assert r["task"] == "mqar" and r["seconds"] > 0
        assert r["examples_per_s"] == pytest.approx(500 / r["seconds"], rel=0.01)
