"""Tasks: synthetic data generators. ``base.py`` holds the contract (Task, Segment)."""

from zoology.tasks.base import Task
from zoology.tasks.mqar import MQAR

# registered by zoology.builtin; one line per task class
BUILTIN_TASKS: list[type[Task]] = [
    MQAR,
]
