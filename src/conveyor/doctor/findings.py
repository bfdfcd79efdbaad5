"""What a check finds: a level, what is wrong (or right), and how to fix it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum


class Level(StrEnum):
    """How bad a finding is. ``conveyor doctor`` exits non-zero on warnings and errors."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def is_problem(self) -> bool:
        return self in (Level.WARNING, Level.ERROR)


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of one check. ``fix`` says what to do (empty when nothing is wrong)."""

    check: str
    level: Level
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def ok(check: str, message: str) -> Finding:
    return Finding(check, Level.OK, message)


def info(check: str, message: str, fix: str = "") -> Finding:
    return Finding(check, Level.INFO, message, fix)


def warning(check: str, message: str, fix: str) -> Finding:
    return Finding(check, Level.WARNING, message, fix)


def error(check: str, message: str, fix: str) -> Finding:
    return Finding(check, Level.ERROR, message, fix)
