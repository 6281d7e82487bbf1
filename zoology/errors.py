"""Errors that are the user's to fix: the CLI prints them without a traceback (exit 2)."""

from __future__ import annotations

MAX_SHOWN = 50  # problems printed per file; the rest are counted


class UserError(Exception):
    """Bad input: a missing file, an invalid experiment, an unknown component."""


class FieldError(ValueError):
    """An invalid value of one named field; config loading reports it at ``<path>.<field>``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ConfigError(UserError):
    """Every problem found in one experiment file, each with its dotted key path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {path}: {msg}" if path else f"{source}: {msg}" for path, msg in problems[:MAX_SHOWN]]
        if len(problems) > MAX_SHOWN:
            lines.append(f"{source}: … and {len(problems) - MAX_SHOWN} more")
        super().__init__("\n".join(lines))
