"""The command line of prguard-client: its options and their documentation, no I/O.

Options, their spelling, number bases (numbers.py) and exit status are sg_persist's, so an
operator checks a deployment with the commands they already know. The tables here are the
one source of both --help and the man page: `SG_PERSIST` says, option by option, how
sg_persist spells it and where this command differs; `MAN_NOTES` adds the page's words.
What the options ask for is command.py's business.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from prguard.client.daemon_status import DEFAULT_METRICS_FILE, DEFAULT_UNIT
from prguard.client.exit_status import ExitStatus
from prguard.client.numbers import hex_key, hex_number, maxlen, seconds
from prguard.shared.scsi import DATA_SIZE, PrInAction, PrOutAction

PROG = "prguard-client"
DEFAULT_SOCKET = "/var/run/qemu-pr-helper.sock"
#: Seconds to wait for the helper at each step; prguard's own SG_IO timeout is 30 s.
DEFAULT_TIMEOUT = 60.0
#: sg_persist opens the device read-only for PR IN when this is set (unless -yy).
READ_ONLY_ENV = "SG_PERSIST_IN_RDONLY"
#: sg_persist reads at most this many TransportIDs from a file.
MAX_TRANSPORT_IDS = 32


class UsageError(Exception):
    """A command-line mistake: one line on stderr, and sg3_utils' exit status for it
    (1, or 31 for options that contradict each other or need one another)."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.SYNTAX_ERROR) -> None:
        super().__init__(message)
        self.status = status


def contradiction(message: str) -> UsageError:
    return UsageError(message, ExitStatus.CONTRADICT)


# -- what the options are ---------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    option: str
    short: str  #: sg_persist's letter
    title: str  #: the SPC service action name, as logs and people say it
    code: PrInAction | PrOutAction
    aliases: tuple[str, ...] = ()  #: other spellings, short or long

    @property
    def option_strings(self) -> tuple[str, ...]:
        shorts = tuple(a for a in self.aliases if not a.startswith("--"))
        longs = tuple(a for a in self.aliases if a.startswith("--"))
        return (self.short, *shorts, f"--{self.option}", *longs)

    @property
    def pr_out(self) -> bool:
        return isinstance(self.code, PrOutAction)


ACTIONS: dict[str, Action] = {a.option: a for a in (
    Action("read-keys", "-k", "READ KEYS", PrInAction.READ_KEYS),
    Action("read-reservation", "-r", "READ RESERVATION", PrInAction.READ_RESERVATION),
    Action("report-capabilities", "-c", "REPORT CAPABILITIES",
           PrInAction.REPORT_CAPABILITIES),
    Action("read-full-status", "-s", "READ FULL STATUS", PrInAction.READ_FULL_STATUS,
           ("--read-status",)),
    Action("register", "-G", "REGISTER", PrOutAction.REGISTER),
    Action("register-ignore", "-I", "REGISTER AND IGNORE EXISTING KEY",
           PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY),
    Action("reserve", "-R", "RESERVE", PrOutAction.RESERVE),
    Action("release", "-L", "RELEASE", PrOutAction.RELEASE),
    Action("clear", "-C", "CLEAR", PrOutAction.CLEAR),
    Action("preempt", "-P", "PREEMPT", PrOutAction.PREEMPT),
    Action("preempt-abort", "-A", "PREEMPT AND ABORT", PrOutAction.PREEMPT_AND_ABORT),
    Action("register-move", "-M", "REGISTER AND MOVE", PrOutAction.REGISTER_AND_MOVE),
    Action("replace-lost", "-z", "REPLACE LOST RESERVATION",
           PrOutAction.REPLACE_LOST_RESERVATION, ("-x",)),
)}
DEFAULT_ACTION = ACTIONS["read-keys"]  # sg_persist's
TAKES_TRANSPORT_IDS = ("register", "register-ignore", "register-move")
#: sg_persist warns when these are sent with TYPE 0 (obsolete): the type must match.
NEEDS_TYPE = ("reserve", "release", "preempt", "preempt-abort")


@dataclass(frozen=True)
class Equivalent:
    """How sg_persist spells an option, and what differs here ("" for nothing)."""

    sg_persist: str  #: "" when sg_persist has no such option
    difference: str = ""


SAME = Equivalent("same")
OWN = Equivalent("", "prguard-client's own")

#: Every option and argument by its first long name (or metavar): the man page's table
#: (a test holds the parser to it). The actions are sg_persist's, letter for letter.
SG_PERSIST: dict[str, Equivalent] = {
    **{f"--{option}": SAME for option in ACTIONS},
    "--replace-lost": Equivalent(
        "-z, --replace-lost", "sg_persist's --help names it -x but takes only -z; both "
                              "are taken here"),
    "DEVICE": SAME,
    "--device": Equivalent("same", "DEVICE given both ways is refused"),
    "--help": Equivalent("same", "prints every option at once, on stdout; sg_persist "
                                 "prints to stderr and needs -hh for the rest"),
    "--version": Equivalent("same", "prints prguard's version, on stdout"),
    "--in": SAME,
    "--out": SAME,
    "--param-rk": SAME,
    "--param-sark": SAME,
    "--prout-type": Equivalent("same", "a TYPE over f is refused; sg_persist sends its low "
                                       "4 bits"),
    "--param-aptpl": SAME,
    "--param-alltgpt": Equivalent(
        "same", "refused with --register-move, whose parameter list has no ALL_TG_PT bit; "
                "sg_persist ignores it there"),
    "--transport-id": Equivalent(
        "same", "may be repeated, one TransportID each (sg_persist keeps the last); also "
                "takes fc,HEX, iscsi,NAME, eui. and naa. names and hex,BYTES (sent as "
                "given); a list of hex bytes is padded to 24 bytes but not cut to 24"),
    "--relative-target-port": Equivalent(
        "same", "required with --register-move; sg_persist sends 0, a reserved value"),
    "--unreg": SAME,
    "--alloc-length": Equivalent(
        "same", "refused with PR OUT; data cut short by a small LEN is reported (exit 97) "
                "instead of being decoded from what did not come back"),
    "--maxlen": Equivalent("same", "the experimental x (product) and + (sum) forms are "
                                   "not taken"),
    "--no-inquiry": Equivalent(
        "same", "has no effect: prguard-client never sends INQUIRY (the helper forwards "
                "only PERSISTENT RESERVE), so sg_persist's vendor and device type lines "
                "are never printed"),
    "--readonly": SAME,
    "--hex": Equivalent("same", "refused with PR OUT and with --json; with -H once, an "
                                "empty list prints its length line once, not twice"),
    "--verbose": Equivalent("same", "shows the bytes exchanged with the helper: -v the "
                                    "CDB and parameter list, -vv the reply too"),
    "--socket": OWN,
    "--timeout": OWN,
    "--json": OWN,
    "--daemon-status": OWN,
    "--metrics-file": OWN,
    "--unit": OWN,
}
#: Beyond the options: what differs in every run.
SG_PERSIST_GENERAL = (
    "The decoded PR IN data is printed in words of its own, not in sg_persist's layout; "
    "-H prints sg_persist's hex layout byte for byte.",
    "Values with trailing characters (-K 12zz) are refused; sg_persist reads the leading "
    "digits.",
    "Options that mean nothing for the action (a key with --read-keys) are refused with "
    "exit status 31; sg_persist ignores them.",
    "A CHECK CONDITION with NO SENSE or RECOVERED ERROR exits 0 for PR OUT as with "
    "sg_persist, but 20 or 21 for PR IN: through the helper no data comes back with it.",
)

#: The man page's words on an option beyond its --help line, by its long name (or a
#: positional's metavar). The page is generated from the parser: options need no entry.
MAN_NOTES: dict[str, str] = {
    "--socket": "A helper that libvirt manages for a domain listens on "
                "/var/lib/libvirt/qemu/domain-ID-NAME/pr-helper0.sock.",
    "DEVICE": "The whole disk (/dev/sdX, a /dev/disk/by-id name, or /dev/sgN), opened "
              "read-write unless --readonly: the fd QEMU would send for its scsi-block "
              "disk.",
    "--transport-id": "TIDS is one of: sas,ADDRESS fcp,PORTNAME sbp,EUI64 srp,PORTID "
                      "sop,ROUTINGID (hex), spi,ADDRESS,PORT (decimal), an iSCSI name "
                      "iqn.NAME[,i,0xISID], hex,BYTES, a list of hex bytes separated by "
                      "commas or spaces (6,0,0,0,5,0,c5,0,...), or file=NAME or - to read "
                      "TransportIDs from a file or stdin, one a line, # starting a "
                      "comment. With --register or --register-ignore they set "
                      "SPEC_I_PT; --register-move takes exactly one.",
    "--json": "One JSON document on stdout in every case, errors included; its shape is "
              "described by the JSON Schema client/output.schema.json in the source and "
              "installed with the package (client/daemon_status.schema.json for "
              "--daemon-status).",
    "--daemon-status": "Needs no root and opens no socket: it reads the metrics file "
                       "prguard writes every few seconds (--metrics-file of prguard) and, "
                       "when systemd runs prguard, the unit's state and STATUS= line "
                       "(systemctl show). Prints the version, uptime, clients, requests "
                       "and errors by kind. Exit status 0 when prguard serves and its "
                       "worker answers, 3 when it is stopped, 4 when it runs but its worker "
                       "does not answer or its file is not being written, or when there is "
                       "nothing to read.",
}

EPILOG = f"""\
TransportIDs (-X TIDS, repeatable): sas,HEX fcp,HEX sbp,HEX srp,HEX sop,HEX spi,N,N
iqn.NAME[,i,0xISID] hex,BYTES, a list of hex bytes (6,0,0,0,5,0,...), or file=NAME
or - for a file or stdin with one a line.

Numbers: keys (-K, -S), TYPE (-T), RTPI (-Q) and -l LEN are hex, 0x optional, as in
sg_persist; -m LEN is decimal unless it starts with 0x or ends in h. Long options may be
written with _ for -, as sg_persist takes them. PR OUT actions need --out, as a
safeguard. Without an action: --read-keys.

Exit status: sg_persist's (see sg3_utils(8)). 0 GOOD; 1 a syntax error; 31 options that
contradict each other; 24 RESERVATION CONFLICT; 26 BUSY; 27 TASK SET FULL; for CHECK
CONDITION by sense key: 2 NOT READY, 3 MEDIUM or HARDWARE ERROR, 5 ILLEGAL REQUEST, 9
ILLEGAL REQUEST with invalid command operation code (a PR OUT on a read-only open),
6 UNIT ATTENTION, 7 DATA PROTECT, 11 ABORTED COMMAND, 98 another or no sense; 97 PR IN
data that does not decode; 33 the helper did not answer within --timeout; 99 the helper
closed the connection without a reply; 50 + errno when the device could not be opened or
the socket not connected to (52 no such file, 63 permission denied; 50 for errno 47 and
up, such as connection refused). Errors are one line on stderr, hints follow.

Examples:
  {PROG} --socket /run/prguard.sock --read-full-status /dev/sdb
  {PROG} --out --register --param-sark 0x1234 /dev/sdb
  {PROG} --out --reserve --param-rk 0x1234 --prout-type 1 --json /dev/sdb
"""


# -- the parser ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send one PERSISTENT RESERVE IN/OUT command to DEVICE through a running "
                    "qemu-pr-helper or prguard, as QEMU does, and show the answer. The "
                    "options are sg_persist's.")
    parser.add_argument("device", metavar="DEVICE", nargs="?",
                        help="block or sg device to open")
    parser.add_argument("-d", "--device", dest="device_option", metavar="DEVICE",
                        help="DEVICE given as an option rather than an argument")
    parser.add_argument("-V", "--version", action="store_true",
                        help="print the version and exit")
    parser.add_argument("--socket", metavar="PATH", default=DEFAULT_SOCKET,
                        help=f"the helper's socket (default {DEFAULT_SOCKET})")
    parser.add_argument("-i", "--in", dest="pr_in", action="store_true",
                        help="PERSISTENT RESERVE IN (the default direction)")
    parser.add_argument("-o", "--out", dest="pr_out", action="store_true",
                        help="PERSISTENT RESERVE OUT: required with its actions")
    actions = parser.add_argument_group("actions (one at most)")
    for action in ACTIONS.values():
        direction = "PR OUT" if action.pr_out else "PR IN"
        actions.add_argument(*action.option_strings, dest="actions", action="append_const",
                             const=action.option, help=f"{direction} {action.title}"
                                  + (" (the default)" if action is DEFAULT_ACTION else ""))
    params = parser.add_argument_group("PR OUT parameters")
    params.add_argument("-K", "--param-rk", metavar="RK", type=hex_key, default=None,
                        help="RESERVATION KEY (hex; default 0)")
    params.add_argument("-S", "--param-sark", metavar="SARK", type=hex_key, default=None,
                        help="SERVICE ACTION RESERVATION KEY (hex; default 0)")
    params.add_argument("-T", "--prout-type", metavar="TYPE", type=hex_number(0xF, "type"),
                        default=None,
                        help="reservation TYPE (hex): 1 WE, 3 EA, 5 WE_RO, 6 EA_RO, 7 WE_AR, "
                             "8 EA_AR")
    params.add_argument("-Z", "--param-aptpl", action="store_true",
                        help="APTPL: persist through power loss")
    params.add_argument("-Y", "--param-alltgpt", action="store_true",
                        help="ALL_TG_PT: register on all target ports")
    params.add_argument("-X", "--transport-id", metavar="TIDS", action="append", default=[],
                        help="TransportID(s) (see below); may be repeated")
    params.add_argument("-Q", "--relative-target-port", metavar="RTPI",
                        type=hex_number(0xFFFF, "relative target port"), default=None,
                        help="REGISTER AND MOVE: the target port to move to (hex)")
    params.add_argument("-U", "--unreg", "--param-unreg", dest="unreg", action="store_true",
                        help="REGISTER AND MOVE: unregister this I_T nexus")
    other = parser.add_argument_group("other options")
    other.add_argument("-l", "--alloc-length", metavar="LEN", default=None,
                       type=hex_number(DATA_SIZE, "allocation length"),
                       help=f"PR IN allocation length, hex (default and most: "
                            f"{DATA_SIZE:x}, the protocol's {DATA_SIZE})")
    other.add_argument("-m", "--maxlen", metavar="LEN", default=None, type=maxlen,
                       help="PR IN allocation length, decimal (or 0x.., ..h, 8k)")
    other.add_argument("-n", "--no-inquiry", action="store_true",
                       help="accepted for sg_persist's sake: no INQUIRY is ever sent")
    other.add_argument("-y", "--readonly", action="count", default=0,
                       help=f"open DEVICE read-only (PR OUT is then refused with 05/20/00); "
                            f"-yy read-write even if ${READ_ONLY_ENV} is set")
    other.add_argument("-H", "--hex", action="count", default=0,
                       help="PR IN data in hex, as sg_persist shows it (-HH all of it, "
                            "-HHH without offsets)")
    other.add_argument("--timeout", metavar="SECONDS", type=seconds,
                       default=DEFAULT_TIMEOUT,
                       help=f"give up on the helper after this long (default "
                            f"{DEFAULT_TIMEOUT:g})")
    other.add_argument("-j", "--json", action="store_true",
                       help="print one JSON document on stdout, errors included")
    other.add_argument("-v", "--verbose", action="count", default=0,
                       help="show the bytes exchanged on stderr (-vv: data and sense too)")
    daemon = parser.add_argument_group("the running prguard")
    daemon.add_argument("--daemon-status", action="store_true",
                        help="what the running prguard says about itself (no DEVICE)")
    daemon.add_argument("--metrics-file", metavar="PATH", default=DEFAULT_METRICS_FILE,
                        help=f"the file prguard's --metrics-file names (default "
                             f"{DEFAULT_METRICS_FILE})")
    daemon.add_argument("--unit", metavar="NAME", default=DEFAULT_UNIT,
                        help=f"its systemd unit, if systemd runs it (default {DEFAULT_UNIT})")
    return parser


def underscores_as_dashes(argv: Sequence[str]) -> list[str]:
    """`--param_rk=1` as `--param-rk=1`: sg_persist takes both spellings."""
    out: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[index:])
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def wants_json(argv: Sequence[str]) -> bool:
    """Whether --json is among the options, found without parsing them (for a usage
    error, which must be a JSON document too)."""
    parser = build_parser()
    takes_value = {name for action in parser._actions if action.nargs != 0
                   for name in action.option_strings}
    skip = False
    for arg in underscores_as_dashes(argv):
        if skip:
            skip = False
        elif arg == "--":
            return False
        elif arg.startswith("--"):
            name = arg.partition("=")[0]
            if len(name) > 3 and "--json".startswith(name):
                return True
            skip = "=" not in arg and name in takes_value
        elif arg.startswith("-") and len(arg) > 1:
            for index, letter in enumerate(arg[1:], 1):
                if letter == "j":
                    return True
                if f"-{letter}" in takes_value:
                    skip = index == len(arg) - 1
                    break
    return False


