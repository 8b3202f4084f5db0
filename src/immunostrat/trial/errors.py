"""The trial domain's refusals: each carries the HTTP status an interface should use."""

from __future__ import annotations

from typing import Any


class TrialError(Exception):
    """A request the trial cannot honour; ``status`` is the HTTP status an interface should use."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "field": self.field}


class NotFound(TrialError):
    status = 404


class Conflict(TrialError):
    status = 409


class Forbidden(TrialError):
    status = 403
