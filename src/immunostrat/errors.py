"""The one error type for bad input, shared by every layer (it imports nothing of ours)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class InputError(Exception):
    """Bad input: names where it is (file, row, field), what was found and what was expected.

    Interfaces turn it into a one-line message (CLI exit code 2, HTTP 422) with no traceback.
    ``row`` is 1-based as a person counts data rows (the header is not a row), or None.
    """

    message: str
    file: str | None = None
    row: int | None = None
    field: str | None = None
    value: Any = None
    expected: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(f"file {self.file}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field:
            where.append(f"field '{self.field}'")
        head = ", ".join(where)
        text = f"{head}: {self.message}" if head else self.message
        if self.value is not None:
            text += f" (got {self.value!r})"
        if self.expected:
            text += f"; expected {self.expected}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "file": self.file,
            "row": self.row,
            "field": self.field,
            "value": None if self.value is None else str(self.value),
            "expected": self.expected,
        }
