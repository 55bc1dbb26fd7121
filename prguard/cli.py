"""qemu-pr-helper's command line (getopt string `hVk:f:dT:u:g:vq`), plus prguard's own
long options.

GNU getopt_long semantics: options and operands may mix, short options cluster (`-vv`,
`-kPATH`), long options take `=VALUE` or the next word, and a unique prefix of one of the
C helper's long options is accepted. prguard's own options must be spelled in full, so
no abbreviation that works with the C helper becomes ambiguous here.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field

from prguard.broker.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_PEER,
    DEFAULT_MESSAGE_DEADLINE,
)
from prguard.broker.trace import TraceOptionError, TraceSpec

DEFAULT_SOCKET = "/var/run/qemu-pr-helper.sock"
DEFAULT_PIDFILE = "/var/run/qemu-pr-helper.pid"
DEFAULT_SG_TIMEOUT = 30.0
DEFAULT_SG_THREADS = 16
DEFAULT_SG_PER_DEVICE = 4

#: -u/-g value meaning "keep the current id" (uid_t)-1, accepted as the C helper does.
NO_CHANGE = 2**32 - 1
SHORT_WITH_ARG = set("kfTug")
SHORT_FLAGS = set("hVdvq")
#: The C helper's long options: name -> short letter.
C_LONG = {
    "help": "h", "version": "V", "socket": "k", "pidfile": "f", "daemon": "d",
    "trace": "T", "user": "u", "group": "g", "verbose": "v", "quiet": "q",
}
#: prguard's own long options (all take an argument); exact spelling only.
OWN_LONG = {"sg-timeout", "sg-threads", "sg-per-device", "print-seccomp", "max-connections",
            "max-connections-per-peer", "client-timeout"}


class UsageError(Exception):
    """A command-line mistake: one line on stderr, exit 1.

    `getopt` errors are glibc's: prefixed with argv[0] verbatim and followed by the
    --help hint; the others are error_report lines, prefixed with basename(argv[0]).
    `located` messages already carry `file:line` and follow the prefix without a space.
    """

    def __init__(self, message: str, getopt: bool = False, located: bool = False) -> None:
        super().__init__(message)
        self.getopt = getopt
        self.located = located


@dataclass
class Options:
    #: -h, -V and -T help act the moment they are parsed, as in the C helper.
    help: bool = False
    version: bool = False
    daemon: bool = False
    socket_path: str = DEFAULT_SOCKET
    socket_given: bool = False
    pidfile: str = DEFAULT_PIDFILE
    pidfile_given: bool = False
    uid: int | None = None
    gid: int | None = None
    verbosity: int = 1
    quiet: bool = False
    trace: TraceSpec = field(default_factory=TraceSpec)
    sg_timeout: float = DEFAULT_SG_TIMEOUT
    sg_threads: int = DEFAULT_SG_THREADS
    sg_per_device: int = DEFAULT_SG_PER_DEVICE
    print_seccomp: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_peer: int = DEFAULT_MAX_PER_PEER
    client_timeout: float = DEFAULT_MESSAGE_DEADLINE

    @property
    def log_level(self) -> int:
        """0 quiet, 1 default (per-connection errors), 2 per-request, 3 debug."""
        return 0 if self.quiet else min(self.verbosity, 3)


def _number(text: str) -> int | None:
    """qemu_strtoul(base 10) semantics for a whole-string unsigned number."""
    stripped = text.lstrip(" \t\n\r\f\v")
    if stripped.startswith("+"):
        stripped = stripped[1:]
    if not stripped.isdigit() or not stripped.isascii():
        return None
    return int(stripped)


def resolve_user(text: str) -> int:
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        pass
    value = _number(text)
    if value is None or value >= 2**32 - 1:
        raise UsageError(f"invalid user '{text}'")
    return value


def resolve_group(text: str) -> int:
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        pass
    value = _number(text)
    if value is None or value >= 2**32:
        raise UsageError(f"invalid group '{text}'")
    return value


def _positive(name: str, text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"--{name} needs a positive number, not '{text}'") from None
    if not value > 0 or value > 24 * 3600:
        raise UsageError(f"--{name} needs a positive number up to 86400, not '{text}'")
    return value


def _apply(opts: Options, key: str, value: str | None, warn: Callable[[str], None]) -> None:
    """Apply one option; `key` is a short letter or one of OWN_LONG."""
    if key == "h":
        opts.help = True
    elif key == "V":
        opts.version = True
    elif key == "d":
        opts.daemon = True
    elif key == "v":
        opts.verbosity += 1
    elif key == "q":
        opts.quiet = True
    elif key == "k":
        assert value is not None
        if not value.startswith("/"):
            raise UsageError("socket path must be absolute")
        opts.socket_path, opts.socket_given = value, True
    elif key == "f":
        assert value is not None
        opts.pidfile, opts.pidfile_given = value, True
    elif key == "u":
        assert value is not None
        uid = resolve_user(value)
        opts.uid = None if uid == NO_CHANGE else uid
    elif key == "g":
        assert value is not None
        gid = resolve_group(value)
        opts.gid = None if gid == NO_CHANGE else gid
    elif key == "T":
        assert value is not None
        try:
            opts.trace.add(value, warn)
        except TraceOptionError as exc:
            raise UsageError(str(exc), located=exc.located) from None
    elif key == "sg-timeout":
        assert value is not None
        opts.sg_timeout = _positive(key, value, float)
    elif key == "sg-threads":
        assert value is not None
        opts.sg_threads = int(_positive(key, value, int))
    elif key == "print-seccomp":
        if value not in ("broker", "worker"):
            raise UsageError(f"--print-seccomp takes broker or worker, not '{value}'")
        opts.print_seccomp = value
    elif key == "max-connections":
        assert value is not None
        opts.max_connections = int(_positive(key, value, int))
    elif key == "max-connections-per-peer":
        assert value is not None
        opts.max_per_peer = int(_positive(key, value, int))
    elif key == "client-timeout":
        assert value is not None
        opts.client_timeout = _positive(key, value, float)
    elif key == "sg-per-device":
        assert value is not None
        opts.sg_per_device = int(_positive(key, value, int))


def _long(name: str) -> str:
    """Resolve a long option name to a short letter or an OWN_LONG name."""
    if name in C_LONG:
        return C_LONG[name]
    if name in OWN_LONG:
        return name
    matches = [long for long in C_LONG if long.startswith(name)]
    if len(matches) == 1:
        return C_LONG[matches[0]]
    if len(matches) > 1:
        raise UsageError(f"option '--{name}' is ambiguous; possibilities: "
                         + " ".join(f"'--{m}'" for m in matches), getopt=True)
    raise UsageError(f"unrecognized option '--{name}'", getopt=True)


def _done(opts: Options) -> bool:
    return opts.help or opts.version or opts.trace.want_help or opts.print_seccomp is not None


def parse(argv: list[str], warn: Callable[[str], None]) -> Options:
    """Parse argv[1:] left to right, stopping at -h, -V or -T help as the C helper does.

    Raises UsageError at the first option the C helper would reject; `warn` gets
    -T warnings as they occur (the text after `<prog>:`).
    """
    opts = Options()
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            break
        if word.startswith("--"):
            name, eq, inline = word[2:].partition("=")
            try:
                key = _long(name)
            except UsageError as exc:
                if eq and "unrecognized" in str(exc):
                    raise UsageError(f"unrecognized option '{word}'", getopt=True) from None
                raise
            takes_arg = key in SHORT_WITH_ARG or key in OWN_LONG
            full = next((n for n, k in C_LONG.items() if k == key), key)
            if not takes_arg:
                if eq:
                    raise UsageError(f"option '--{full}' doesn't allow an argument",
                                     getopt=True)
                _apply(opts, key, None, warn)
                if _done(opts):
                    return opts
                continue
            if eq:
                value = inline
            elif i < len(words):
                value = words[i]
                i += 1
            else:
                raise UsageError(f"option '--{full}' requires an argument", getopt=True)
            _apply(opts, key, value, warn)
            if _done(opts):
                return opts
        elif word.startswith("-") and word != "-":
            j = 1
            while j < len(word):
                letter = word[j]
                j += 1
                if letter in SHORT_FLAGS:
                    _apply(opts, letter, None, warn)
                    if _done(opts):
                        return opts
                elif letter in SHORT_WITH_ARG:
                    if j < len(word):
                        value = word[j:]
                    elif i < len(words):
                        value = words[i]
                        i += 1
                    else:
                        raise UsageError(f"option requires an argument -- '{letter}'",
                                         getopt=True)
                    _apply(opts, letter, value, warn)
                    if _done(opts):
                        return opts
                    break
                else:
                    raise UsageError(f"invalid option -- '{letter}'", getopt=True)
        # operands are ignored, as the C helper ignores them
    return opts


def usage(prog: str) -> str:
    return f"""Usage: {prog} [OPTIONS] FILE
Persistent Reservation helper program for QEMU

  -h, --help                display this help and exit
  -V, --version             output version information and exit

  -d, --daemon              run in the background
  -f, --pidfile=PATH        PID file when running as a daemon
                            (default '{DEFAULT_PIDFILE}')
  -k, --socket=PATH         path to the unix socket
                            (default '{DEFAULT_SOCKET}')
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                            specify tracing options
  -u, --user=USER           user to drop privileges to
  -g, --group=GROUP         group to drop privileges to
  -v, --verbose             log more (repeat for more)
  -q, --quiet               do not log per-connection errors

prguard options (spelled in full):
      --sg-timeout=SECONDS  SG_IO timeout (default {DEFAULT_SG_TIMEOUT:g})
      --sg-threads=N        SG_IO calls run at once (default {DEFAULT_SG_THREADS})
      --sg-per-device=N     of which for one device at most (default {DEFAULT_SG_PER_DEVICE})
      --max-connections=N   clients served at once (default {DEFAULT_MAX_CONNECTIONS})
      --max-connections-per-peer=N
                            of which from one client process (default {DEFAULT_MAX_PER_PEER})
      --client-timeout=SECONDS
                            to finish a message once started, and to read a
                            reply (default {DEFAULT_MESSAGE_DEADLINE:g})
      --print-seccomp=broker|worker
                            print that process's compiled seccomp filter and exit

prguard is a privilege-separated drop-in replacement for qemu-pr-helper: an
unprivileged broker speaks the protocol and validates every request; only a worker
holding CAP_SYS_RAWIO issues SG_IO.
"""


def version_text(prog: str, version: str) -> str:
    return f"""{prog} (prguard) {version}
Compatible with qemu-pr-helper's protocol and command line.
License GPL-3.0-or-later: this is free software; there is NO warranty.
"""
