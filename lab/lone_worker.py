"""The worker alone on fd argv[1] (one end of a socketpair the caller holds):

    python -m lab.lone_worker FD

This is how the tests play a compromised broker: they speak to the worker's end of the
channel directly. Not installed, not reachable from the QEMU socket.
"""

from __future__ import annotations

import socket
import sys

from prguard.worker.main import WorkerConfig, serve

if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])),
          WorkerConfig(identity=None, sg_timeout_ms=30000, threads=4, per_device=2))
