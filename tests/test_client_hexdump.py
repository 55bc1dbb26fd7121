"""The hex layout of -H, checked against sg3_utils itself: sg_vpd prints a VPD page it
cannot decode with the same hex2stdout() sg_persist uses (-H: offsets and ASCII, which
sg_persist leaves out; -HHH: neither)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from prguard.client.hexdump import hex_lines

#: Where sg3_utils puts the ASCII column of a line with offsets.
ASCII_COLUMN = 60


def sg_vpd(page: bytes, tmp_path: Path, *flags: str) -> list[str]:
    inhex = tmp_path / "page.hex"
    inhex.write_text(" ".join(f"{byte:02x}" for byte in page))
    out = subprocess.run(["sg_vpd", f"--inhex={inhex}", "--page=0x80", *flags],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if not line.startswith("Unit serial")]


@pytest.mark.parametrize("size", [4, 5, 8, 9, 15, 16, 17, 31, 33, 300])
def test_the_layout_is_sg3_utils_own(tmp_path: Path, size: int) -> None:
    # A unit serial number VPD page whose PAGE LENGTH covers all `size` bytes.
    page = bytes([0x00, 0x80]) + (size - 4).to_bytes(2, "big") + bytes(
        (7 * i + 0x41) % 256 for i in range(size - 4))
    with_offsets = [line[:ASCII_COLUMN].rstrip() for line in sg_vpd(page, tmp_path, "-H")]
    assert hex_lines(page) == with_offsets
    assert hex_lines(page, with_offsets=False) == sg_vpd(page, tmp_path, "-HHH")


def test_nothing_is_no_line() -> None:
    assert hex_lines(b"") == []
