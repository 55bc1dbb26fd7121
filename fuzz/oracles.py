"""What the fuzzers check, shared with the regression tests: for any input, only the
project's typed errors may escape, and no fd handed to the protocol core is lost."""

from __future__ import annotations

from prguard.shared.errors import ChannelError, QemuProtocolError
from prguard.shared.messages import Message, decode
from prguard.shared.qemu_protocol import NEED_DATA, Closed, PrReply, PrRequest, ServerConnection
from prguard.shared.scsi import SENSE_SIZE, Status

SENSE0 = bytes(SENSE_SIZE)


def chunks_from(data: bytes) -> list[tuple[bytes, int]]:
    """The qemu fuzzer's input format: up to 32 (bytes, fd count) chunks."""
    import atheris
    fdp = atheris.FuzzedDataProvider(data)
    chunks: list[tuple[bytes, int]] = []
    while fdp.remaining_bytes() > 0 and len(chunks) < 32:
        size = fdp.ConsumeIntInRange(0, 64)
        nfds = fdp.ConsumeIntInRange(0, 3)
        chunks.append((fdp.ConsumeBytes(size), nfds))
    return chunks


def encode_chunks(chunks: list[tuple[bytes, int]]) -> bytes:
    """The inverse of chunks_from, for inputs made by hand: FuzzedDataProvider takes
    bytes from the front and integers from the back (one byte each for these ranges)."""
    sizes: list[int] = []
    for data, nfds in chunks:
        if not (len(data) <= 64 and 0 <= nfds <= 3):
            raise ValueError("a chunk holds at most 64 bytes and 3 fds")
        sizes += [len(data), nfds]
    return b"".join(data for data, _ in chunks) + bytes(reversed(sizes))


def qemu_stream(chunks: list[tuple[bytes, int]]) -> tuple[list[int], list[int], list[int]]:
    """Feed `chunks` (bytes, number of fds sent with them) to a server connection; the fds
    (given, handed out with requests, returned for closing)."""
    conn = ServerConnection()
    conn.initiate()
    next_fd = 100
    given: list[int] = []
    handed: list[int] = []
    try:
        for data, nfds in [*chunks, (b"", 0)]:
            fds = list(range(next_fd, next_fd + nfds)) if data else []
            next_fd += nfds
            given += fds
            conn.receive_data(data, fds)
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, PrRequest):
                    handed.append(event.fd)
                    conn.send_reply(PrReply(Status.GOOD, SENSE0, b""))
                elif isinstance(event, Closed):
                    raise StopIteration
    except (QemuProtocolError, StopIteration):
        pass
    returned = conn.take_fds()
    if sorted(handed + returned) != sorted(given):
        raise AssertionError(f"fds lost: given {given}, handed {handed}, returned {returned}")
    return given, handed, returned


def channel_datagram(data: bytes) -> None:
    try:
        message = decode(data)
    except ChannelError:
        return
    if not isinstance(message, Message):
        raise AssertionError("decode returned a non-message")
    if decode(message.encode()) != message:
        raise AssertionError("a decoded message does not round-trip")
