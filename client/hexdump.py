"""PR IN data in hex, laid out byte for byte as sg_persist's -H prints it (sg3_utils'
hex2stdout: 16 bytes a line, an extra space after the eighth, the offset in front unless
-HHH). Pure."""

from __future__ import annotations

from prguard.client.decode import CAPABILITIES_LENGTH, HEADER_SIZE
from prguard.shared.scsi import PrInAction

#: Where the first byte starts on a line with its offset in front.
_BYTES_COLUMN = 8


def hex_lines(data: bytes, with_offsets: bool = True) -> list[str]:
    lines = []
    for start in range(0, len(data), 16):
        chunk = [f"{byte:02x}" for byte in data[start:start + 16]]
        text = " ".join(chunk[:8]) + ("  " + " ".join(chunk[8:]) if len(chunk) > 8 else "")
        lines.append(f" {start:02x}".ljust(_BYTES_COLUMN) + text if with_offsets else text)
    return lines


def pr_in_hex(action: PrInAction, data: bytes, allocation_length: int, level: int
              ) -> list[str]:
    """sg_persist -H (level 1), -HH (2), -HHH (3) for one PR IN's data. The data is
    seen as sg_persist sees its buffer: zero-filled up to the allocation length.

    -H: REPORT CAPABILITIES' 8 bytes; for the others the generation and ADDITIONAL
    LENGTH in words, then the list (cut to what the allocation length holds). -HH and
    -HHH: header and list together.
    """
    buffer = data.ljust(allocation_length, b"\0")
    if action is PrInAction.REPORT_CAPABILITIES:
        return hex_lines(buffer[:CAPABILITIES_LENGTH])
    generation = int.from_bytes(buffer[0:4], "big")
    length = int.from_bytes(buffer[4:8], "big", signed=True)
    if level >= 2:
        end = min(HEADER_SIZE + max(length, 0), allocation_length)
        return hex_lines(buffer[:end], with_offsets=level == 2)
    room = allocation_length - HEADER_SIZE
    if length > room:
        return [f"  PR generation={generation:#x}, Additional length too large={length}, "
                f"truncate", *hex_lines(buffer[HEADER_SIZE:])]
    return [f"  PR generation={generation:#x}, Additional length={length}",
            *hex_lines(buffer[HEADER_SIZE:HEADER_SIZE + max(length, 0)])]
