"""The `prguard` command: parses the qemu-pr-helper command line, sets up the socket and
pidfile as root, then forks into the worker (child) and the broker (this process)."""

__version__ = "0.1.0"
