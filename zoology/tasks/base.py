"""The task contract: a frozen attrs class of parameters whose ``generate(seed)`` makes a Segment."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch

from zoology.errors import FieldError

IGNORE_INDEX = -100  # label of positions that are not scored
TOKEN_DTYPES = (torch.int16, torch.int32, torch.int64)


def token_dtype(vocab_size: int) -> torch.dtype:
    """The smallest signed integer dtype holding ``[IGNORE_INDEX, vocab_size)``: int16 for
    every vocabulary up to 32,767 tokens. Segments in it take a quarter of int64's memory and
    cache space, and generate faster (first-touch page faults dominate big segments)."""
    for dtype in TOKEN_DTYPES:
        if vocab_size - 1 <= torch.iinfo(dtype).max:
            return dtype
    raise ValueError(f"vocab_size {vocab_size} does not fit int64")


def at_least(bound: int | float) -> Any:
    """attrs validator: ``value >= bound``, reported at the field's own key path."""

    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value < bound:
            raise FieldError(attribute.name, f"must be >= {bound}, got {value}")

    return check


def between(low: float, high: float) -> Any:
    """attrs validator: ``low <= value <= high``."""

    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not low <= value <= high:
            raise FieldError(attribute.name, f"must be between {low} and {high}, got {value}")

    return check


def param(default: Any = attrs.NOTHING, doc: str = "", validator: Any = None) -> Any:
    """A task parameter: a typed attrs field with a default, a validator and a doc line."""
    return attrs.field(default=default, validator=validator, metadata={"doc": doc})


@attrs.frozen
class Segment:
    """A block of examples from one task configuration.

    ``inputs`` and ``labels`` are integer ``[N, L]`` tensors (int16, int32 or int64; the
    built-in tasks use :func:`token_dtype`, so call ``.long()`` before ``nn.Embedding`` or
    ``cross_entropy``); ``labels[i, t]`` is the token expected after ``inputs[i, :t+1]`` or
    -100 where nothing is scored. What names the segment in per-slice metrics comes from
    the task (``Task.slices()``), filled in by the framework.
    """

    inputs: torch.Tensor
    labels: torch.Tensor

    def __attrs_post_init__(self) -> None:
        if self.inputs.shape != self.labels.shape or self.inputs.dim() != 2:
            raise ValueError(f"inputs {tuple(self.inputs.shape)} and labels "
                             f"{tuple(self.labels.shape)} must both be [N, L]")
        for name, t in (("inputs", self.inputs), ("labels", self.labels)):
            if t.dtype not in TOKEN_DTYPES:
                raise ValueError(f"{name} must be int16, int32 or int64, got {t.dtype}")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]


@attrs.frozen(kw_only=True)
class Task:
    """Base class of every task. Subclasses add typed, validated, documented fields."""

    name: ClassVar[str] = ""
    # bump when a change alters what generate() returns for the same parameters and seed
    version: ClassVar[int] = 1
    # small parameters for `zoology show task` (num_examples is added)
    example: ClassVar[dict[str, Any]] = {"vocab_size": 32, "input_seq_len": 32}
    # settings `zoology bench data` times (None: `example` with 100,000 examples)
    bench_params: ClassVar[list[dict[str, Any]] | None] = None

    @property
    def readout(self) -> str:
        """How the model must produce the scored predictions: ``"next_token"`` (a causal LM,
        ``labels[i, t]`` follows ``inputs[i, :t+1]``) or ``"autoencoder"`` (every position
        decoded from the last one, MAD's compression). ``model.readout`` must match."""
        return "next_token"

    vocab_size: int = param(doc="tokens are in [0, vocab_size)", validator=at_least(2))
    input_seq_len: int = param(doc="length of each example", validator=at_least(1))
    num_examples: int = param(doc="number of examples in the segment", validator=at_least(1))

    def generate(self, seed: int) -> Segment:
        """All ``num_examples`` examples for ``seed``; the same seed gives the same tensors."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Every parameter by name, defaults filled in."""
        return attrs.asdict(self, recurse=False)

    def slices(self) -> dict[str, Any]:
        """What distinguishes this segment in per-slice metrics; tasks may override."""
        return {}

    def decode(self, token: int) -> str:
        """How `zoology show task` prints one token."""
        return str(token)
