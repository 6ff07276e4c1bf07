"""Test doubles shared by the unit tests (no network, no cluster)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Answer = list[Any] | Exception | Callable[[str], list[Any]]


class FakePrometheus:
    """Answers `custom_query` from a table keyed by metric name; records every call."""

    def __init__(self, answers: dict[str, Answer], default: Answer | None = None) -> None:
        self.answers = answers
        self.default: Answer = [] if default is None else default
        self.calls: list[tuple[str, dict[str, Any], int]] = []

    def custom_query(self, query: str, params: dict[str, Any], timeout: int) -> Any:
        self.calls.append((query, params, timeout))
        answer = next((a for name, a in self.answers.items() if name in query), self.default)
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(query)
        return answer


def vector(*values: float | str) -> list[dict[str, Any]]:
    """An instant vector as `custom_query` returns it (one sample per value)."""
    return [{"metric": {}, "value": [1700000000.0, str(v)]} for v in values]
