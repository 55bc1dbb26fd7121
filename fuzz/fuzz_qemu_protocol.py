"""atheris harness: arbitrary byte and fd streams into the QEMU-facing protocol core.

    python fuzz/fuzz_qemu_protocol.py -max_total_time=60 fuzz/corpus/qemu
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

with atheris.instrument_imports():
    from fuzz.oracles import chunks_from, qemu_stream


def one_input(data: bytes) -> None:
    qemu_stream(chunks_from(data))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
