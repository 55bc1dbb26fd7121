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

from prguard.broker.main import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_PEER,
    DEFAULT_MESSAGE_DEADLINE,
    WORKER_GRACE,
)
from prguard.trace_option import TraceOptionError, TraceSpec

DEFAULT_SOCKET = "/var/run/qemu-pr-helper.sock"
DEFAULT_PIDFILE = "/var/run/qemu-pr-helper.pid"
DEFAULT_SG_TIMEOUT = 30.0
DEFAULT_SG_THREADS = 16
DEFAULT_SG_PER_DEVICE = 4
MULTIPATH_MODES = ("auto", "on", "off")
DEFAULT_MULTIPATH_GROUP = "disk"

#: -u/-g value meaning "keep the current id" (uid_t)-1, accepted as the C helper does.
NO_CHANGE = 2**32 - 1


@dataclass(frozen=True)
class Option:
    """One option: how it is parsed, its --help lines and its man page text.

    `help` lines are printed as they are, after the option column; the man page joins
    them into its paragraph and adds `man`.
    """

    long: str
    short: str = ""  #: the C helper's letter; prguard's own options have none
    arg: str = ""  #: the value's name, "" for a flag
    help: tuple[str, ...] = ()
    man: str = ""
    #: between the option and `arg` in --help (-T shows its syntax after a space)
    separator: str = "="

    @property
    def key(self) -> str:
        return self.short or self.long


@dataclass(frozen=True)
class OptionGroup:
    title: str  #: a heading line in --help, "" for none
    own: bool  #: prguard's own options: long only, spelled in full
    options: tuple[Option, ...]


OPTION_GROUPS = (
    OptionGroup("", False, (
        Option("help", "h", help=("display this help and exit",)),
        Option("version", "V", help=("output version information and exit",)),
    )),
    OptionGroup("", False, (
        Option("daemon", "d", help=("run in the background",),
               man="Detach once the socket listens: fork (the parent exits 0), start a new "
                   "session, change to /, stdin, stdout and stderr on /dev/null; then write "
                   "the pidfile."),
        Option("pidfile", "f", "PATH",
               ("PID file when running as a daemon", f"(default '{DEFAULT_PIDFILE}')"),
               man="Written with -d, or whenever -f is given: created 0600, locked for the "
                   "life of the process, never removed. A pidfile another process holds "
                   "locked is an error, and so is a symbolic link or a hard link at the "
                   "path (never followed or written through)."),
        Option("socket", "k", "PATH",
               ("path to the unix socket", f"(default '{DEFAULT_SOCKET}')"),
               man="An absolute path. The socket listens before its path appears, so a "
                   "client that sees the path can connect; a stale socket there is "
                   "replaced, anything else that exists there is an error (left in "
                   "place). At exit prguard removes it, unless another instance has since "
                   "taken the path over. Not allowed with socket activation."),
        Option("trace", "T", "[[enable=]<pattern>][,events=<file>][,file=<file>]",
               ("specify tracing options",), separator=" ",
               man="Enable the trace events matching pattern (a glob; a leading - "
                   "disables), or each pattern listed in the events file, one a line; write "
                   "the events to the file given by file= instead of stderr. May be "
                   "repeated. -T help lists the events and exits."),
        Option("user", "u", "USER", ("user to drop privileges to",),
               man="A name or a numeric uid. Both processes run as this user, without "
                   "supplementary groups; the worker keeps CAP_SYS_RAWIO only."),
        Option("group", "g", "GROUP", ("group to drop privileges to",),
               man="A name or a numeric gid."),
        Option("verbose", "v", help=("log more (repeat for more)",),
               man="-v: a line per request with the client's pid, uid and gid, and why "
                   "each connection was closed; -vv: debugging (connections accepted, the "
                   "worker's start-up)."),
        Option("quiet", "q", help=("do not log per-connection errors",),
               man="Only errors are logged: those that stop prguard or lose a request."),
    )),
    OptionGroup("prguard options (spelled in full):", True, (
        Option("sg-timeout", arg="SECONDS",
               help=(f"SG_IO timeout (default {DEFAULT_SG_TIMEOUT:g})",),
               man=f"The time the device has to complete one PERSISTENT RESERVE IN or OUT. "
                   f"A request still unanswered {WORKER_GRACE:g} s later is answered CHECK "
                   f"CONDITION, LOGICAL UNIT COMMUNICATION FAILURE (0b/08/00): its outcome "
                   f"is unknown."),
        Option("sg-threads", arg="N",
               help=(f"SG_IO calls run at once (default {DEFAULT_SG_THREADS})",)),
        Option("sg-per-device", arg="N",
               help=(f"of which for one device at most (default {DEFAULT_SG_PER_DEVICE})",),
               man="A LUN that stops answering holds no more than this many of them."),
        Option("max-connections", arg="N",
               help=(f"clients served at once (default {DEFAULT_MAX_CONNECTIONS})",),
               man="Lowered to what RLIMIT_NOFILE allows. When all are taken, a new client "
                   "is let in by closing a connection of the uid that holds the most (of "
                   "its process that holds the most; one still in its handshake first, "
                   "then an idle one), unless its own uid and process hold as many: a "
                   "client that holds nothing always gets in."),
        Option("max-connections-per-peer", arg="N",
               help=(f"of which from one client process (default {DEFAULT_MAX_PER_PEER})",),
               man="A peer is a process, as SO_PEERCRED tells: one QEMU, one VM."),
        Option("client-timeout", arg="SECONDS",
               help=("to finish a message once started, and to read a",
                     f"reply (default {DEFAULT_MESSAGE_DEADLINE:g})"),
               man="A client that stalls within its handshake, a CDB or a parameter list, "
                   "or does not read its reply, is disconnected. Idle time between "
                   "requests is not limited."),
        Option("metrics-file", arg="PATH",
               help=("write metrics there every few seconds",),
               man="The Prometheus text format, for node_exporter's textfile collector "
                   "(name it *.prom in its directory) and for prguard-client "
                   "--daemon-status: requests by service action and outcome, their "
                   "latency, connections, deadline closes, worker deaths (docs/USAGE.md, "
                   "Operating it). Rewritten whole every few seconds, world-readable; "
                   "replaced atomically, so a reader never sees part of it. The directory "
                   "must be writable by the -u user: prguard swaps the file with a spare "
                   "it keeps next to it, .NAME.next."),
        Option("multipath", arg="auto|on|off",
               help=("serve dm-multipath maps on every path (default auto:",
                     "on when the dm_multipath module is loaded)"),
               man="With multipath on, a request on a device-mapper map is served on the "
                   "map's paths: REGISTER reaches every path, the other service actions "
                   "behave as on one path, and a path that is down is registered when it "
                   "is back (docs/MULTIPATH.md). A third process, the path opener, checks "
                   "each map and opens its paths for writing: it runs as the -u/-g user "
                   "with the group of --multipath-group and no capability. A map that is "
                   "not a multipath map over whole SCSI disks is refused as a partition "
                   "is. Off: a map is served as the C helper serves it, through whichever "
                   "path the map picks."),
        Option("multipath-group", arg="GROUP",
               help=(f"group that may open the paths (default {DEFAULT_MULTIPATH_GROUP})",),
               man="The supplementary group the path opener keeps, so that it can open the "
                   "path nodes (/dev/sdX, usually root:disk 0660). A name or a numeric "
                   "gid. Not used without -u/-g."),
        Option("audit-log", arg="FILE",
               help=("append an audit record of each request to FILE",),
               man="One JSON line per PERSISTENT RESERVE OUT forwarded (written before it "
                   "is sent, and again with its outcome), per request refused and, with "
                   "--audit-reads, per PERSISTENT RESERVE IN: who asked, for which LU, "
                   "what, and the answer; each line carries the SHA-256 of the one before "
                   "(prguard-audit(1) verifies and shows them). Opened before prguard "
                   "drops privileges; its directory must be writable by the -u user for a "
                   "rotation (a rename) to be followed. A PR OUT whose record cannot be "
                   "written is not sent (CHECK CONDITION 04/44/00); its outcome is not "
                   "passed on if that cannot be recorded (0b/08/00). docs/AUDIT.md."),
        Option("audit-journal",
               help=("send the audit records to the journal too",),
               man="Each record as a journal entry with MESSAGE_ID "
                   "b1f3a0c6e2d84f5e9a7c3d1e8f6b2a40 and PRGUARD_* fields "
                   "(journalctl MESSAGE_ID=b1f3a0c6e2d84f5e9a7c3d1e8f6b2a40 "
                   "PRGUARD_VM=web02). Without --audit-log the journal is where a record "
                   "must be written for a PR OUT to be sent."),
        Option("audit-sync",
               help=("each record on stable storage before the reply",),
               man="fdatasync after each record of --audit-log."),
        Option("audit-reads",
               help=("record PERSISTENT RESERVE IN requests too",)),
        Option("policy", arg="FILE",
               help=("tenant policy: which client may do what on which LU",),
               man="A TOML file of rules (docs/POLICY.md). A request the policy refuses "
                   "is answered CHECK CONDITION 05/20/02 (ACCESS DENIED). SIGUSR1 reads "
                   "the file again without dropping connections; a file that cannot be "
                   "used leaves the policy in force."),
        Option("check-policy", arg="FILE",
               help=("check a tenant policy file, print its rules and exit",),
               man="Reads FILE as --policy would and prints the rules in force, in the "
                   "order they are tried, with the line each starts on; exit status 0. A "
                   "file that cannot be used is one line naming its line and the problem, "
                   "and exit status 1."),
        Option("print-seccomp", arg="broker|worker|janitor|opener",
               help=("print that process's compiled seccomp filter and exit",),
               man="libseccomp's PFC text of the filter, with stand-ins for the values each "
                   "process fills in at start-up."),
    )),
)
OPTIONS = {option.key: option for group in OPTION_GROUPS for option in group.options}
SHORT_WITH_ARG = {o.short for o in OPTIONS.values() if o.short and o.arg}
SHORT_FLAGS = {o.short for o in OPTIONS.values() if o.short and not o.arg}
#: The C helper's long options: name -> short letter (a unique prefix is accepted).
C_LONG = {o.long: o.short for g in OPTION_GROUPS if not g.own for o in g.options}
#: prguard's own long options; exact spelling only.
OWN_LONG = {o.long for g in OPTION_GROUPS if g.own for o in g.options}
#: Of which these take an argument (the others are flags).
OWN_LONG_WITH_ARG = {o.long for g in OPTION_GROUPS if g.own for o in g.options if o.arg}


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
    check_policy: str | None = None
    metrics_file: str | None = None
    audit_log: str | None = None
    audit_journal: bool = False
    audit_sync: bool = False
    audit_reads: bool = False
    policy: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_peer: int = DEFAULT_MAX_PER_PEER
    client_timeout: float = DEFAULT_MESSAGE_DEADLINE
    multipath: str = "auto"
    multipath_group: str = DEFAULT_MULTIPATH_GROUP

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
        if value not in ("broker", "worker", "janitor", "opener"):
            raise UsageError("--print-seccomp takes broker, worker, janitor or opener, "
                             f"not '{value}'")
        opts.print_seccomp = value
    elif key == "multipath":
        if value not in MULTIPATH_MODES:
            raise UsageError(f"--multipath takes auto, on or off, not '{value}'")
        opts.multipath = value
    elif key == "multipath-group":
        assert value is not None
        opts.multipath_group = value
    elif key == "check-policy":
        opts.check_policy = value
    elif key == "metrics-file":
        if not value or not value.startswith("/"):
            raise UsageError(f"--metrics-file takes an absolute path, not '{value}'")
        opts.metrics_file = value
    elif key == "audit-log":
        assert value is not None
        if not value:
            raise UsageError("--audit-log needs a file name")
        opts.audit_log = value
    elif key == "audit-journal":
        opts.audit_journal = True
    elif key == "audit-sync":
        opts.audit_sync = True
    elif key == "audit-reads":
        opts.audit_reads = True
    elif key == "policy":
        opts.policy = value
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
    return (opts.help or opts.version or opts.trace.want_help or opts.print_seccomp is not None
            or opts.check_policy is not None)


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
            takes_arg = key in SHORT_WITH_ARG or key in OWN_LONG_WITH_ARG
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
    if opts.audit_sync and opts.audit_log is None:
        raise UsageError("--audit-sync needs --audit-log (it syncs that file)")
    if opts.audit_reads and opts.audit_log is None and not opts.audit_journal:
        raise UsageError("--audit-reads needs --audit-log or --audit-journal")
    return opts


#: --help's option column: options longer than this put their text on the next line.
HELP_COLUMN = 28
DESCRIPTION = """prguard is a privilege-separated drop-in replacement for qemu-pr-helper: an
unprivileged broker speaks the protocol and validates every request; only a worker
holding CAP_SYS_RAWIO issues SG_IO.
"""


def option_label(option: Option) -> str:
    """`-k, --socket=PATH`, `--sg-timeout=SECONDS`: the option as --help names it."""
    value = f"{option.separator}{option.arg}" if option.arg else ""
    return (f"-{option.short}, " if option.short else "") + f"--{option.long}{value}"


def _help_lines(group: OptionGroup) -> list[str]:
    lines = [group.title] if group.title else []
    for option in group.options:
        label = ("      " if group.own else "  ") + option_label(option)
        text = list(option.help)
        if len(label) + 2 > HELP_COLUMN:
            lines.append(label)
        else:
            lines.append(label.ljust(HELP_COLUMN) + text.pop(0))
        lines += [" " * HELP_COLUMN + line for line in text]
    return lines


def usage(prog: str) -> str:
    """--help: the C helper's text for its options, then prguard's own."""
    blocks = [[f"Usage: {prog} [OPTIONS] FILE", "Persistent Reservation helper program for QEMU"],
              *(_help_lines(group) for group in OPTION_GROUPS)]
    return "\n\n".join("\n".join(block) for block in blocks) + "\n\n" + DESCRIPTION


def version_text(prog: str, version: str) -> str:
    return f"""{prog} (prguard) {version}
Compatible with qemu-pr-helper's protocol and command line.
License GPL-3.0-or-later: this is free software; there is NO warranty.
"""
