"""The two kinds of failure, split by whose fault they are (h11's Local/Remote split)."""

from __future__ import annotations


class QemuProtocolError(Exception):
    """The QEMU-side peer broke the wire protocol: close that connection, nothing else.

    `message` is what the C helper prints at default verbosity for this case, or None
    where it closes silently.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message


class ChannelError(Exception):
    """A message on the broker<->worker channel is malformed, oversize or unexpected."""
