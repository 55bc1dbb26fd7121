"""The path opener alone on fd argv[1] (one end of a socketpair the caller holds):

    python -m lab.lone_opener FD

This is how the tests play a compromised broker towards the opener: they speak to its
end of the channel directly. Not installed, not reachable from the QEMU socket.
"""

from __future__ import annotations

import signal
import socket
import sys

from prguard import logs
from prguard.opener.main import OpenerConfig, serve

if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    logs.setup("prguard", 3)
    serve(socket.socket(fileno=int(sys.argv[1])), OpenerConfig(identity=None, groups=()))
