"""Numbers on the command line, read as sg_persist reads them: keys, TYPE, RTPI and -l
in hex (0x optional), -m as sg3_utils' sg_get_num does (decimal, 0x.. or ..h hex, a
multiplier suffix). Stricter in one way: trailing characters are an error, where
sg_persist's sscanf() stops at them. Each parser raises argparse.ArgumentTypeError."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from prguard.shared.scsi import DATA_SIZE

_HEX = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)")
#: sg3_utils' sg_get_num: decimal, 0x-prefixed or h-suffixed hex, and a multiplier.
_NUM = re.compile(r"(?:0[xX](?P<hex>[0-9a-fA-F]+)|(?P<hexh>[0-9a-fA-F]+)[hH]"
                  r"|(?P<dec>[0-9]+)(?P<unit>[a-zA-Z]*))")
_UNITS = {"": 1, "c": 1, "w": 2, "b": 512, "k": 1024, "kib": 1024, "kb": 1000, "kd": 1000,
          "m": 2**20, "mib": 2**20, "mb": 10**6, "md": 10**6}


def hex_number(limit: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        match = _HEX.fullmatch(text.strip())
        if match is None:
            raise argparse.ArgumentTypeError(f"{what} {text!r} is not a hex number")
        value = int(match.group(1), 16)
        if value > limit:
            raise argparse.ArgumentTypeError(
                f"{what} {text} is over {limit:#x} ({limit})" if limit > 9 else
                f"{what} {text} is over {limit}")
        return value
    return parse


def maxlen(text: str) -> int:
    match = _NUM.fullmatch(text.strip())
    unit = (match.group("unit") or "").lower() if match else ""
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"allocation length {text!r} is not a number")
    if match.group("hex") or match.group("hexh"):
        value = int(match.group("hex") or match.group("hexh"), 16)
    else:
        value = int(match.group("dec")) * _UNITS[unit]
    if value > DATA_SIZE:
        raise argparse.ArgumentTypeError(f"allocation length {text} is over {DATA_SIZE}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


def hex_key(text: str) -> int:
    match = _HEX.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"key {text!r} is not a hex number")
    if len(match.group(1).lstrip("0")) > 16:
        raise argparse.ArgumentTypeError(f"key {text!r} does not fit in 8 bytes")
    return int(match.group(1), 16)


