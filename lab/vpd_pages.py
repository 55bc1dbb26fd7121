"""VPD pages built by hand, as a device would send them (for tests of identity parsing)."""

from __future__ import annotations


def descriptor(value: bytes, kind: int, association: int = 0, code_set: int = 1,
               protocol: int = 0, piv: bool = False) -> bytes:
    """One designation descriptor of page 0x83 (SPC-4 7.8.6.1)."""
    return (bytes([protocol << 4 | code_set, (0x80 if piv else 0) | association << 4 | kind,
                   0, len(value)]) + value)


def page83(*descriptors: bytes) -> bytes:
    body = b"".join(descriptors)
    return bytes([0, 0x83]) + len(body).to_bytes(2, "big") + body


def page80(serial: bytes) -> bytes:
    return bytes([0, 0x80, 0, len(serial)]) + serial
