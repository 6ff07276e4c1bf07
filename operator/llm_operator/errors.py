"""Domain errors, classified once: the handlers map them to Kopf's permanent/temporary.

A bad spec is permanent (retrying cannot help; the condition names the field); an API
conflict, timeout or unreachable metrics backend is temporary and retried with backoff.
"""

from __future__ import annotations


class LLMOperatorError(Exception):
    """Base of the operator's own errors."""


class InvalidSpecError(LLMOperatorError):
    """The spec is wrong in a way schema and CEL cannot catch (unknown model, GPU type).

    Attributes:
        field: the JSON path of the offending field, e.g. spec.model.name.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class TransientError(LLMOperatorError):
    """A failure worth retrying (API conflict, timeout, 5xx).

    Attributes:
        delay: seconds to wait before the retry.
    """

    def __init__(self, message: str, delay: float = 10.0) -> None:
        self.delay = delay
        super().__init__(message)


class GoneError(LLMOperatorError):
    """The object, or its namespace, is going away (404 on it; 403 "being terminated" when
    creating in a terminating namespace): nothing to do, and not an error to report."""
