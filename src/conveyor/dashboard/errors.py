"""The one error of the dashboard's pages and actions (apart from broker errors)."""

from __future__ import annotations


class BadRequest(Exception):
    """A request the dashboard refuses with a 4xx page: ``status`` and a sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
