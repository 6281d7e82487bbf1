"""Tasks: synthetic data generators. ``base.py`` holds the contract (Task, Segment)."""

from zoology.tasks.base import Task
from zoology.tasks.circuits import (
    CumulativeMajority,
    CumulativeParity,
    Majority,
    Parity,
    VocabMajority,
)
from zoology.tasks.formal import (
    BucketSort,
    CycleNavigation,
    DuplicateString,
    EvenPairs,
    ModularArithmetic,
    ParityCheck,
    ReverseString,
)
from zoology.tasks.mad import (
    Compression,
    FuzzyInContextRecall,
    InContextRecall,
    Memorization,
    NoisyInContextRecall,
    SelectiveCopying,
)
from zoology.tasks.mqar import MQAR, CompositionalMQAR, ForgettingMQAR
from zoology.tasks.recall import AssociativeRecall, InductionHead

# registered by zoology.builtin; one line per task class
BUILTIN_TASKS: list[type[Task]] = [
    MQAR,
    CompositionalMQAR,
    ForgettingMQAR,
    Parity,
    Majority,
    VocabMajority,
    CumulativeParity,
    CumulativeMajority,
    InContextRecall,
    FuzzyInContextRecall,
    NoisyInContextRecall,
    SelectiveCopying,
    Compression,
    Memorization,
    AssociativeRecall,
    InductionHead,
    EvenPairs,
    ParityCheck,
    CycleNavigation,
    ModularArithmetic,
    ReverseString,
    DuplicateString,
    BucketSort,
]
