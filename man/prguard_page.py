"""prguard(8): the options come from prguard.cli's table, the one --help prints."""

from __future__ import annotations

from prguard import __version__, cli
from prguard.man.layout import Layout
from prguard.man.roff import Page, bold, italic, option


def _tag(opt: cli.Option) -> str:
    """`-k, --socket=PATH`, in the man page's fonts."""
    long = option(f"--{opt.long}", opt.arg, opt.separator)
    return f"{bold('-' + opt.short)}, {long}" if opt.short else long


def _options(page: Page) -> None:
    page.section("Options")
    page.paragraph("The options of qemu-pr-helper come first, with its meaning and its "
                   "getopt_long syntax: short options may be grouped (-vv), a value may be "
                   "attached (-k/run/x.sock, --socket=/run/x.sock) or be the next word, "
                   "and a long option may be abbreviated while it stays unique (--sock). "
                   "Operands are ignored; -- ends the options. -h, -V and -T help act "
                   "as soon as they are read. prguard's own options follow; they take a "
                   "value and must be spelled in full, so that no abbreviation accepted "
                   "by qemu-pr-helper becomes ambiguous.")
    page.subsection("Options of qemu-pr-helper")
    for group in cli.OPTION_GROUPS:
        if group.own:
            page.subsection("prguard's own options")
        for opt in group.options:
            page.tagged(_tag(opt), " ".join(opt.help), opt.man)


def build(layout: Layout) -> Page:
    page = Page("prguard", 8, f"prguard {__version__}", "System Manager's Manual",
                "privilege-separated persistent reservation helper for QEMU")
    page.section("Synopsis")
    page.raw(f"{bold('prguard')} [{italic('OPTION')}]...")

    page.section("Description")
    page.paragraph(
        "Clustered guests fence each other with SCSI persistent reservations. A QEMU "
        "that runs without privileges cannot send PERSISTENT RESERVE IN or OUT to a "
        "host device itself: its scsi-block and scsi-generic devices forward each of "
        "them, with the device's open file descriptor, over a unix socket to a helper "
        "that holds CAP_SYS_RAWIO (the pr-manager-helper object). prguard is such a "
        "helper, a drop-in replacement for qemu-pr-helper(8): the same command line, "
        "the same protocol byte for byte, the same messages at start-up.")
    page.paragraph(
        "Started as root, prguard creates its socket (or takes the one systemd passes "
        "it), detaches with -d, writes its pidfile, then forks into two processes. The "
        "broker holds no capability: it alone talks to the clients, speaks the "
        "protocol, knows each client by SO_PEERCRED and validates every request. The "
        "worker holds CAP_SYS_RAWIO only and is the only code that issues SG_IO; it "
        "validates every request again. Each drops to the -u/-g user and loads its own "
        "seccomp filter before the first client is served.")
    page.paragraph(
        "Logs go to stderr, a line each: start-up errors and, by default, why a client's "
        "connection was refused or closed as a protocol error; -v adds a line per "
        "request, -vv debugging; -q leaves errors only. Warnings are rate-limited (50 a "
        "second, bursts of 200), errors never.")

    _options(page)

    page.section("Environment")
    page.tagged(bold("LISTEN_FDS") + ", " + bold("LISTEN_PID") + ", " + bold("LISTEN_FDNAMES"),
                "Socket activation: with one socket passed by systemd (fd 3), prguard "
                "serves it and creates none; -k is then an error. The socket must be a "
                "listening unix stream socket.")
    page.tagged(bold("NOTIFY_SOCKET"),
                "prguard sends READY=1 once both processes are confined and serving, and "
                "STOPPING=1 when it stops (systemd's Type=notify).")

    page.section("Signals")
    page.tagged(bold("SIGTERM") + ", " + bold("SIGINT") + ", " + bold("SIGHUP"),
                "Stop: accept no more clients, finish the requests in flight, remove the "
                "socket prguard created (not an activated one, nor one another instance "
                "has taken over), exit 0. Received during start-up, they are held until "
                "the handlers exist.")
    page.tagged(bold("SIGUSR1"), "With --policy: the worker reads the policy file again; "
                "connections and requests in flight go on, and a file that cannot be used "
                "leaves the policy in force (an error line says why). Without --policy, the "
                "default action, as for qemu-pr-helper.")
    page.tagged(bold("SIGPIPE"), "Ignored by the broker: a client that went away is noticed "
                "by the failed write.")
    page.paragraph("If the worker dies, the requests in flight are answered CHECK "
                   "CONDITION, LOGICAL UNIT COMMUNICATION FAILURE (0b/08/00) and the broker "
                   "exits 1. If the broker dies, the worker ends with it.")

    page.section("Exit status")
    page.tagged(bold("0"), "Stopped by a signal; or -h, -V, -T help or --print-seccomp "
                "done; with -d, the foreground process once the socket listens.")
    page.tagged(bold("1"), "A command-line error, a start-up failure (socket, pidfile, "
                "privileges, seccomp), or the worker was lost. The reason is one line on "
                "stderr.")
    page.tagged(bold("70"), "An internal error (a bug), reported in one line.")

    page.section("Files")
    page.tagged(italic(cli.DEFAULT_SOCKET), "The socket without -k or activation.")
    page.tagged(italic(cli.DEFAULT_PIDFILE), "The pidfile with -d and without -f.")
    page.tagged(italic(f"{layout.unitdir}/prguard.socket") + ", "
                + italic(f"{layout.unitdir}/prguard.service"),
                "The systemd units: the socket /run/qemu-pr-helper.sock, root:kvm 0660, and "
                "the service, started on the first connection as user prguard.")
    page.tagged(italic(f"{layout.sysusersdir}/prguard.conf"),
                "The prguard system user and group (systemd-sysusers).")
    page.tagged(italic(f"{layout.tmpfilesdir}/prguard.conf"),
                "The directory /run/prguard, owned by prguard, where the service writes "
                "its --metrics-file, metrics.prom (systemd-tmpfiles).")
    page.tagged(italic(layout.libdir),
                "prguard's own Python virtual environment; "
                + f"{layout.bindir}/prguard, prguard-client and prguard-audit link into it.")
    page.tagged(italic("/run/systemd/journal/socket"),
                "Where --audit-journal sends the audit records (connected at start-up).")

    page.section("Security")
    page.paragraph(
        "What a process can do, not what it is meant to do, is what is confined. The "
        "broker has all capability sets empty; the worker has CAP_SYS_RAWIO permitted "
        "and effective and nothing else; both run with no_new_privs, not dumpable, "
        "secure bits locked, under seccomp allowlists that kill the process on any other "
        "system call (--print-seccomp shows them). prguard refuses to start rather than "
        "run half-confined.")
    page.paragraph(
        "A client reaches only the devices whose descriptors it sends, and only with "
        "PERSISTENT RESERVE IN or OUT: other opcodes close the connection; partitions, "
        "files, pipes, sockets and other devices are refused; PR OUT on a descriptor "
        "opened read-only is answered ILLEGAL REQUEST. A compromised broker still cannot "
        "issue SG_IO, open a file or reach into the worker. Connections per client "
        "process, messages and replies are bounded in number and in time (see the "
        "options).")
    page.paragraph(
        "With --audit-log, the worker, which issues SG_IO, writes the record of each PR "
        "OUT before sending it: a compromised broker cannot have one sent unrecorded. The "
        "client's identity is what the broker vouches for (the worker reads it from a "
        "pidfd of the client where the kernel gives one); the device, the command and the "
        "outcome are the worker's own. --policy rules on devices and actions are applied "
        "by the worker; rules on clients rest on the broker. SECURITY.md, in the source, "
        "says what each process can still do.")

    page.section("Compatibility")
    page.paragraph(
        "prguard answers the same request with the same bytes as qemu-pr-helper and "
        "closes a connection at the same moment, with these deliberate differences: a "
        "partition's descriptor is refused (qemu-pr-helper passes it on, reaching the "
        "whole LUN); sense data it builds is zero-filled (qemu-pr-helper leaks stack "
        "bytes); a command whose outcome is unknown is never answered GOOD; the SG_IO "
        "timeout is --sg-timeout seconds, not 1 ms; the listen backlog is 64, not 1; "
        "the socket's path appears only once it listens; clients that stall are "
        "disconnected. -T takes QEMU's syntax and selects prguard's own trace events. "
        "COMPATIBILITY.md, in the source, lists every difference with its test.")

    page.section("Examples")
    page.paragraph("Under systemd, with socket activation:")
    page.example(["systemd-sysusers", "systemd-tmpfiles --create prguard.conf",
                  "systemctl daemon-reload",
                  "systemctl enable --now prguard.socket"])
    page.paragraph("As libvirt's helper for managed reservations, in /etc/libvirt/qemu.conf:")
    page.example([f'pr_helper = "{layout.bindir}/prguard"'])
    page.paragraph("By hand, for one QEMU:")
    page.example(["prguard -k /run/prguard.sock -u qemu -g kvm -d"])

    page.section("See also")
    page.raw(", ".join(f"{bold(name)}({section})" for name, section in (
        ("prguard-client", 1), ("prguard-audit", 1), ("qemu-pr-helper", 8), ("sg_persist", 8),
        ("systemd.socket", 5), ("systemd-sysusers", 8), ("systemd-tmpfiles", 8),
        ("capabilities", 7),
        ("seccomp", 2))))
    return page


def render(layout: Layout) -> str:
    return build(layout).text()

