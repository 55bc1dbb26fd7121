"""atheris harness: arbitrary datagrams into the broker<->worker message decoder.

    python fuzz/fuzz_messages.py -max_total_time=60 fuzz/corpus/messages
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

with atheris.instrument_imports():
    from fuzz.oracles import channel_datagram

if __name__ == "__main__":
    atheris.Setup(sys.argv, channel_datagram)
    atheris.Fuzz()
