"""One family of errors: everything leaf raises on purpose is a LeafError."""

from __future__ import annotations


class LeafError(Exception):
    """Base of every error leaf raises deliberately."""


class ProtocolError(LeafError):
    """A peer broke the wire protocol.

    ``err`` is the exact text to send back as ``-ERR '<err>'`` before the
    connection is closed (None: close silently, as nats-server does for
    malformed arguments). ``events`` holds the events the parser completed
    before it hit the error, so they can still be processed in order.
    Errors that keep the connection open are not exceptions: they are
    answered in place.
    """

    def __init__(self, detail: str, err: str | None = None) -> None:
        super().__init__(detail)
        self.err = err
        self.events: list = []


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class StoreError(LeafError):
    """The local stream could not complete an operation."""


class ConfigError(LeafError):
    """A configuration key or command-line value is invalid; the message names it."""
