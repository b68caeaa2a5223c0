"""The harness's error types and deadlines: plain values every layer may raise or pass, so they
sit in the model layer (builders and environments use them without importing the adapters)."""

from __future__ import annotations

import time
from typing import Any


class HarnessError(Exception):
    """Base of the harness's own errors: a one-line message, and a hint where one helps.

    ``diagnostics`` is what an engine said about the failure (a pod's events and logs, ...), kept
    for the evidence; empty when there is nothing beyond the message.
    """

    def __init__(self, message: str, *, hint: str = "", diagnostics: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.diagnostics: dict[str, Any] = dict(diagnostics or {})

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class RequestRejected(HarnessError):
    """The driver or its engine refused the request cleanly; nothing was left behind."""


class DriverUnavailable(HarnessError):
    """The driver cannot run here (engine missing or down); a skip, or an error when required."""


class InfrastructureError(HarnessError):
    """The engine or the harness broke (not the GPU stack under test): verdict ``error``."""


class DeadlineExceeded(InfrastructureError):
    """An external call ran past its deadline."""


class Deadline:
    """A point in monotonic time that every external call is bounded by."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    @property
    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def cap(self, seconds: float) -> float:
        """The smaller of ``seconds`` and what is left; at least a sliver so calls fail fast."""
        return max(0.01, min(seconds, self.remaining))

    def check(self, what: str) -> None:
        if self.expired:
            raise DeadlineExceeded(f"{what}: deadline of {self.seconds:.0f}s exceeded")
