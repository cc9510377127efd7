"""Typed errors shared by every layer.

An error carries a stable machine-readable ``code``, a message a person
understands and, where one input is at fault, the ``field`` that names it.
The HTTP layer maps ``http_status`` onto the response; everything else just
raises or returns these.
"""
from __future__ import annotations

from typing import Any


class RaftctlError(Exception):
    """Base of every error raftctl raises on purpose."""

    code: str = "error"
    http_status: int = 400

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None,
                 http_status: int | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message, "field": self.field}
        if self.details is not None:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ValidationError(RaftctlError):
    code = "invalid"
    http_status = 400


class NotFound(RaftctlError):
    code = "not_found"
    http_status = 404


class Conflict(RaftctlError):
    code = "conflict"
    http_status = 409


class RequestIdConflict(Conflict):
    """An X-Request-Id already applied to a different command (another op, or other fields)."""

    code = "request_id_conflict"


class Unauthorized(RaftctlError):
    code = "unauthorized"
    http_status = 401


class Forbidden(RaftctlError):
    code = "forbidden"
    http_status = 403


class Unavailable(RaftctlError):
    """The control plane cannot answer now (no leader, no quorum, timeout)."""

    code = "unavailable"
    http_status = 503
    handed_to: str | None = None
    """Set by the proposer on a write it had handed to raft: the Raft address of the leader raft named then (the
    leader whose move makes proposing it again worthwhile); None when it never reached raft or is not known."""


class OutcomeUnknown(Unavailable):
    """A write was proposed but its fate is unknown (timeout, leader change)."""

    code = "outcome_unknown"
