"""The broker alone, on a listening socket (fd argv[1]) and its end of the channel
(fd argv[2]); the caller holds the other end and plays the worker:

    python -m lab.lone_broker LISTENER_FD CHANNEL_FD [OPENER_FD]

With OPENER_FD, multipath is on: block devices go to the path opener on that fd, whom
the caller plays too, until it says their major is not device-mapper's.

This is how the tests play a compromised worker (or path opener): they answer the
broker's requests themselves. Not installed, not reachable from the QEMU socket.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from prguard import logs
from prguard.broker.main import BrokerConfig, OpenerLink, run

if __name__ == "__main__":
    # As the launcher leaves it: stop signals held until the broker serves, no SIGPIPE.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    logs.setup("prguard", 2)  # -v: one line per request
    opener = None
    if len(sys.argv) > 3:  # the caller is the opener too: its pid is ours to signal
        opener = OpenerLink(os.getppid(), socket.socket(fileno=int(sys.argv[3])))
    code = run(socket.socket(fileno=int(sys.argv[1])), socket.socket(fileno=int(sys.argv[2])),
               BrokerConfig(identity=None, socket_file=None, worker_pid=os.getppid(),
                            opener=opener))
    os._exit(code)
