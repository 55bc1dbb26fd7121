"""Waiting for an fd to become readable or writable inside a coroutine."""

from __future__ import annotations

import asyncio


def wake(waiter: asyncio.Future[None]) -> None:
    """The add_reader/add_writer callback. The waiter may already be cancelled: its task
    was stopped in the same loop iteration that found the fd ready, and setting a result
    then would raise in the event loop."""
    if not waiter.done():
        waiter.set_result(None)
