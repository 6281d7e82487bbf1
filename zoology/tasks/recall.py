"""Classic single-query recall tasks of H3 / Hyena (HazyResearch/safari,
``src/dataloaders/synthetics.py``): associative recall and induction head.

Tokens ``[0, V-2)`` are ordinary; ``V-2`` is the copy prefix (``=>``) and ``V-1`` a no-op
used as left padding. Safari trains on every next token and tests on the answer only;
``targets`` selects which (default: the answer, the test split's). ``input_seq_len`` counts
every input token, prefix and query included (Safari's ``input_seq_len`` excludes them).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from zoology.errors import FieldError
from zoology.tasks.base import IGNORE_INDEX, Segment, Task, at_least, param
from zoology.tasks.sampling import first_occurrence, full_long, generator, shift_labels

TARGETS_DOC = "answers: score only the answer (Safari's test split); all: every next token (its training split)"


def _decode(task: Task, token: int) -> str:
    return "=>" if token == task.vocab_size - 2 else "." if token == task.vocab_size - 1 else str(token)


@attrs.frozen(kw_only=True)
class AssociativeRecall(Task):
    """Associative recall: key-value pairs, then ``=>`` and one key; answer its value.

    Keys are ``num_keys`` tokens from ``[0, (V-2)//2)`` (with repeats), values one token
    from ``[(V-2)//2, V-2)``; each example binds every key to a random value, and
    ``(input_seq_len - num_keys - 1) // (num_keys + 1)`` pairs with uniformly drawn keys
    follow one another (left-padded with no-ops). The query is uniform over the distinct
    keys that occurred (Safari's ``allow_dot=False``); its value is scored at the query's
    last token.
    """

    name = "associative_recall"
    example = {"vocab_size": 20, "input_seq_len": 22}
    bench_params = [{"vocab_size": 20, "input_seq_len": 42, "num_examples": 100_000}]

    num_keys: int = param(1, "tokens per key", at_least(1))
    targets: Literal["answers", "all"] = param("answers", TARGETS_DOC)

    def __attrs_post_init__(self) -> None:
        if self.vocab_size < 4:
            raise FieldError("vocab_size", f"must be >= 4 (a key, a value, => and no-op), got {self.vocab_size}")
        need = 2 * (self.num_keys + 1)
        if self.input_seq_len < need:
            raise FieldError("input_seq_len", f"must be >= (num_keys + 1) * 2 = {need} (a pair and the "
                                              f"query), got {self.input_seq_len}")

    def slices(self) -> dict[str, int]:
        return {"input_seq_len": self.input_seq_len, "num_keys": self.num_keys}

    def generate(self, seed: int) -> Segment:
        gen = generator(seed)
        n, length, nk = self.num_examples, self.input_seq_len, self.num_keys
        plain = self.vocab_size - 2
        half = plain // 2
        pairs = (length - nk - 1) // (nk + 1)
        padding = length - pairs * (nk + 1) - nk - 1
        keys = torch.randint(0, half, (n, pairs, nk), generator=gen)
        codes = torch.zeros(n, pairs, dtype=torch.int64)
        for i in range(nk):
            codes = codes * half + keys[:, :, i]
        fresh = torch.randint(half, plain, (n, pairs), generator=gen)
        values = fresh.gather(1, first_occurrence(codes))  # a repeated key keeps its first value
        # query: uniform over the distinct keys present = a random first occurrence
        is_first = first_occurrence(codes) == torch.arange(pairs)
        q = torch.rand(n, pairs, generator=gen).masked_fill_(~is_first, -1.0).argmax(dim=1)
        body = torch.cat([keys, values[:, :, None]], dim=2).view(n, pairs * (nk + 1))
        inputs = torch.cat([torch.full((n, padding), plain + 1, dtype=torch.int64), body,
                            torch.full((n, 1), plain, dtype=torch.int64),
                            keys[torch.arange(n), q]], dim=1)
        if self.targets == "all":
            labels = shift_labels(inputs)
            labels[:, -1] = values[torch.arange(n), q]
        else:
            labels = full_long((n, length), IGNORE_INDEX)
            labels[:, -1] = values[torch.arange(n), q]
        return Segment(inputs, labels)

    def decode(self, token: int) -> str:
        return _decode(self, token)


@attrs.frozen(kw_only=True)
class InductionHead(Task):
    """Induction head: random tokens in which ``=>`` occurs, followed by ``induction_len``
    tokens; at the end ``=>`` again, and those tokens must be repeated.

    The random part is ``input_seq_len - induction_len`` tokens from ``[0, V-2)``. With
    probability 1/2 there is one trigger, else ``num_triggers`` trigger positions are
    drawn (positions closer than ``induction_len + 1`` to the previous kept one are
    dropped, as in Safari); every trigger is ``=>`` followed by the tokens that followed
    the first trigger. The final ``=>`` and the copied tokens are scored.
    """

    name = "induction_head"
    example = {"vocab_size": 20, "input_seq_len": 24}
    bench_params = [{"vocab_size": 20, "input_seq_len": 256, "num_examples": 100_000}]

    induction_len: int = param(1, "tokens to copy after the trigger", at_least(1))
    num_triggers: int = param(1, "triggers in half of the examples (the other half: one)", at_least(1))
    targets: Literal["answers", "all"] = param("answers", TARGETS_DOC)

    def __attrs_post_init__(self) -> None:
        if self.vocab_size < 3:
            raise FieldError("vocab_size", f"must be >= 3 (a token, => and no-op), got {self.vocab_size}")
        need = 2 * self.induction_len + 2
        if self.input_seq_len < need:
            raise FieldError("input_seq_len", f"must be >= induction_len * 2 + 2 = {need}, "
                                              f"got {self.input_seq_len}")

    def slices(self) -> dict[str, int]:
        return {"input_seq_len": self.input_seq_len, "induction_len": self.induction_len}

    def generate(self, seed: int) -> Segment:
        gen = generator(seed)
        n, length, m = self.num_examples, self.input_seq_len, self.induction_len
        prefix = self.vocab_size - 2
        body = length - m
        seq = torch.randint(0, prefix, (n, body + 1 + m), generator=gen)
        seq[:, body] = prefix
        count = torch.where(torch.rand(n, generator=gen) < 0.5, 1, self.num_triggers)
        pos = torch.randint(0, body - 1 - m, (n, self.num_triggers), generator=gen)
        pos = torch.where(torch.arange(self.num_triggers) < count[:, None], pos, body)  # unused: past the end
        pos = pos.sort(dim=1).values
        first = pos[:, 0]
        offs = torch.arange(1, m + 1)
        to_copy = seq.gather(1, first[:, None] + offs)
        last = torch.full((n,), -(m + 1) - 1, dtype=torch.int64)
        for j in range(self.num_triggers):  # keep triggers more than m apart
            p = pos[:, j]
            keep = (p < body) & (p - last > m)
            last = torch.where(keep, p, last)
            at = torch.where(keep, p, body)  # body holds the final prefix anyway
            seq.scatter_(1, at[:, None], prefix)
            seq.scatter_(1, torch.where(keep[:, None], at[:, None] + offs, body),
                         torch.where(keep[:, None], to_copy, prefix))
        seq[:, body + 1:] = to_copy
        inputs = seq[:, :-1].contiguous()
        if self.targets == "all":
            labels = seq[:, 1:].contiguous()
        else:
            labels = full_long((n, length), IGNORE_INDEX)
            labels[:, body:] = to_copy
        return Segment(inputs, labels)

    def decode(self, token: int) -> str:
        return _decode(self, token)
