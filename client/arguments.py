"""The command line of prguard-client turned into what to do: no I/O but reading the
TransportIDs a `--transport-id=file=NAME` (or `-`) names, as sg_persist does.

Options, their spelling, number bases and exit codes are sg_persist's, so an operator
checks a deployment with the commands they already know; `SG_PERSIST` says, option by
option, how sg_persist spells it and where this command differs. A command is a
`PrCommand` (one PERSISTENT RESERVE IN/OUT) or `ShowVersion`; another kind of command
(asking the running daemon about itself, say) is one more class in `Command` and one
more branch in cli.py.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from prguard.client import encode
from prguard.client.daemon_status import DEFAULT_METRICS_FILE, DEFAULT_UNIT
from prguard.client.exit_status import ExitStatus
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


def _contradiction(message: str) -> UsageError:
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
_TAKES_TRANSPORT_IDS = ("register", "register-ignore", "register-move")
#: sg_persist warns when these are sent with TYPE 0 (obsolete): the type must match.
_NEEDS_TYPE = ("reserve", "release", "preempt", "preempt-abort")


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


# -- what a command line asks for -------------------------------------------------------

@dataclass(frozen=True)
class Request:
    action: Action
    cdb: bytes
    parameter_list: bytes = b""

    @property
    def allocation_length(self) -> int:
        """PR IN's allocation length (CDB bytes 7-8)."""
        return int.from_bytes(self.cdb[7:9], "big")


@dataclass(frozen=True)
class PrCommand:
    """One PERSISTENT RESERVE IN or OUT through the helper."""

    device: str
    socket_path: str
    request: Request
    read_only: bool
    timeout: float
    json: bool
    hex: int  #: -H count: sg_persist's hex forms of PR IN data
    verbose: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShowVersion:
    """-V: the version, all else ignored (as sg_persist does)."""


@dataclass(frozen=True)
class DaemonStatusCommand:
    """--daemon-status: what the running prguard publishes about itself."""

    metrics_file: str
    unit: str
    json: bool


Command = PrCommand | ShowVersion | DaemonStatusCommand


# -- numbers, as sg_persist reads them ----------------------------------------------------

_HEX = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)")
#: sg3_utils' sg_get_num: decimal, 0x-prefixed or h-suffixed hex, and a multiplier.
_NUM = re.compile(r"(?:0[xX](?P<hex>[0-9a-fA-F]+)|(?P<hexh>[0-9a-fA-F]+)[hH]"
                  r"|(?P<dec>[0-9]+)(?P<unit>[a-zA-Z]*))")
_UNITS = {"": 1, "c": 1, "w": 2, "b": 512, "k": 1024, "kib": 1024, "kb": 1000, "kd": 1000,
          "m": 2**20, "mib": 2**20, "mb": 10**6, "md": 10**6}


def _hex(limit: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        match = _HEX.fullmatch(text.strip())
        if match is None:
            raise argparse.ArgumentTypeError(f"{what} {text!r} is not a hex number")
        value = int(match.group(1), 16)
        if value > limit:
            raise argparse.ArgumentTypeError(
                f"{what} {text} is over {limit:#x} ({limit})" if limit > 9 else
                f"{what} {text} is over {limit}")
        return value
    return parse


def _maxlen(text: str) -> int:
    match = _NUM.fullmatch(text.strip())
    unit = (match.group("unit") or "").lower() if match else ""
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"allocation length {text!r} is not a number")
    if match.group("hex") or match.group("hexh"):
        value = int(match.group("hex") or match.group("hexh"), 16)
    else:
        value = int(match.group("dec")) * _UNITS[unit]
    if value > DATA_SIZE:
        raise argparse.ArgumentTypeError(f"allocation length {text} is over {DATA_SIZE}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


def _hex_key(text: str) -> int:
    match = _HEX.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"key {text!r} is not a hex number")
    if len(match.group(1).lstrip("0")) > 16:
        raise argparse.ArgumentTypeError(f"key {text!r} does not fit in 8 bytes")
    return int(match.group(1), 16)


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
    params.add_argument("-K", "--param-rk", metavar="RK", type=_hex_key, default=None,
                        help="RESERVATION KEY (hex; default 0)")
    params.add_argument("-S", "--param-sark", metavar="SARK", type=_hex_key, default=None,
                        help="SERVICE ACTION RESERVATION KEY (hex; default 0)")
    params.add_argument("-T", "--prout-type", metavar="TYPE", type=_hex(0xF, "type"),
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
                        type=_hex(0xFFFF, "relative target port"), default=None,
                        help="REGISTER AND MOVE: the target port to move to (hex)")
    params.add_argument("-U", "--unreg", "--param-unreg", dest="unreg", action="store_true",
                        help="REGISTER AND MOVE: unregister this I_T nexus")
    other = parser.add_argument_group("other options")
    other.add_argument("-l", "--alloc-length", metavar="LEN", default=None,
                       type=_hex(DATA_SIZE, "allocation length"),
                       help=f"PR IN allocation length, hex (default and most: "
                            f"{DATA_SIZE:x}, the protocol's {DATA_SIZE})")
    other.add_argument("-m", "--maxlen", metavar="LEN", default=None, type=_maxlen,
                       help="PR IN allocation length, decimal (or 0x.., ..h, 8k)")
    other.add_argument("-n", "--no-inquiry", action="store_true",
                       help="accepted for sg_persist's sake: no INQUIRY is ever sent")
    other.add_argument("-y", "--readonly", action="count", default=0,
                       help=f"open DEVICE read-only (PR OUT is then refused with 05/20/00); "
                            f"-yy read-write even if ${READ_ONLY_ENV} is set")
    other.add_argument("-H", "--hex", action="count", default=0,
                       help="PR IN data in hex, as sg_persist shows it (-HH all of it, "
                            "-HHH without offsets)")
    other.add_argument("--timeout", metavar="SECONDS", type=_seconds,
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


# -- from the parsed options to a command ---------------------------------------------------

def _read_transport_ids(source: str) -> list[bytes]:
    """TransportIDs from a file (file=NAME) or stdin (-), one a line, `#` to the end of a
    line a comment, blank lines ignored."""
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as lines:
                text = lines.read()
    except OSError as err:
        raise UsageError(f"cannot read TransportIDs from {source}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise UsageError(f"TransportIDs in {source} are not UTF-8 text") from err
    tids: list[bytes] = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.partition("#")[0].strip()
        if entry:
            try:
                tids.append(encode.parse_transport_id(entry))
            except encode.EncodeError as err:
                raise UsageError(f"{source} line {number}: {err}") from err
    if len(tids) > MAX_TRANSPORT_IDS:
        raise UsageError(f"{source} holds {len(tids)} TransportIDs, more than "
                         f"{MAX_TRANSPORT_IDS}")
    return tids


def _transport_ids(texts: Sequence[str]) -> list[bytes]:
    tids: list[bytes] = []
    for text in texts:
        if text == "-" or text.lower().startswith("file="):
            tids += _read_transport_ids("-" if text == "-" else text[len("file="):])
        else:
            try:
                tids.append(encode.parse_transport_id(text))
            except encode.EncodeError as err:
                raise UsageError(str(err)) from err
    return tids


def _choose_action(args: argparse.Namespace) -> Action:
    if args.pr_in and args.pr_out:
        raise _contradiction("--in and --out exclude each other")
    chosen = list(dict.fromkeys(args.actions or ()))
    if len(chosen) > 1:
        raise _contradiction(f"one action at a time: --{' and --'.join(chosen)} given")
    if not chosen:
        if args.pr_out:
            raise _contradiction("--out needs a PR OUT action (--register, --reserve, ...)")
        return DEFAULT_ACTION
    action = ACTIONS[chosen[0]]
    if action.pr_out and args.pr_in:
        raise _contradiction(f"--{action.option} is a PR OUT action, not --in")
    if action.pr_out and not args.pr_out:
        raise _contradiction(f"--{action.option} is a PR OUT action: give --out too, as "
                             f"sg_persist requires (a safeguard)")
    if args.pr_out and not action.pr_out:
        raise _contradiction(f"--{action.option} is a PR IN action, not --out")
    return action


def _only_with(args: argparse.Namespace, action: Action) -> None:
    """Refuse options that mean nothing for this action rather than silently drop them."""
    pr_out_only = {"--param-rk": args.param_rk is not None,
                   "--param-sark": args.param_sark is not None,
                   "--prout-type": args.prout_type is not None,
                   "--param-aptpl": args.param_aptpl,
                   "--param-alltgpt": args.param_alltgpt}
    move_only = {"--relative-target-port": args.relative_target_port is not None,
                 "--unreg": args.unreg}
    given = [name for name, on in pr_out_only.items() if on and not action.pr_out]
    given += [name for name, on in move_only.items() if on and action.option != "register-move"]
    if args.transport_id and action.option not in _TAKES_TRANSPORT_IDS:
        given.append("--transport-id")
    if args.param_alltgpt and action.option == "register-move":
        given.append("--param-alltgpt")
    if action.pr_out:
        given += [name for name, on in (("--alloc-length", args.alloc_length is not None),
                                        ("--maxlen", args.maxlen is not None),
                                        ("--hex", args.hex > 0)) if on]
    if given:
        raise _contradiction(f"{', '.join(given)} cannot be used with --{action.option}")


def build_request(args: argparse.Namespace) -> Request:
    action = _choose_action(args)
    _only_with(args, action)
    if args.alloc_length is not None and args.maxlen is not None:
        raise _contradiction("--alloc-length and --maxlen both set the allocation length")
    try:
        if isinstance(action.code, PrInAction):
            length = next((n for n in (args.alloc_length, args.maxlen) if n is not None),
                          DATA_SIZE)
            return Request(action, encode.pr_in_cdb(action.code, length))
        key = args.param_rk or 0
        sa_key = args.param_sark or 0
        tids = _transport_ids(args.transport_id)
        if action.code is PrOutAction.REGISTER_AND_MOVE:
            if len(tids) != 1 or args.relative_target_port is None:
                raise _contradiction("--register-move needs one --transport-id and "
                                     "--relative-target-port")
            params = encode.register_and_move_parameters(
                key, sa_key, tids[0], relative_target_port=args.relative_target_port,
                unreg=args.unreg, aptpl=args.param_aptpl)
        else:
            params = encode.pr_out_parameters(key, sa_key, all_tg_pt=args.param_alltgpt,
                                              aptpl=args.param_aptpl, transport_ids=tids)
        cdb = encode.pr_out_cdb(action.code, len(params), args.prout_type or 0)
    except encode.EncodeError as err:
        raise UsageError(str(err)) from err
    return Request(action, cdb, params)


def _device(args: argparse.Namespace) -> str:
    if args.device is not None and args.device_option is not None:
        raise UsageError(f"DEVICE given twice: {args.device_option} (--device) and "
                         f"{args.device}")
    device = args.device if args.device is not None else args.device_option
    if not device:
        raise UsageError("no DEVICE given")
    return str(device)


def _read_only(args: argparse.Namespace, action: Action, environ: dict[str, str]) -> bool:
    if args.readonly >= 2:
        return False  # -yy: read-write whatever the environment says
    return args.readonly == 1 or (READ_ONLY_ENV in environ and not action.pr_out)


def parse(argv: Sequence[str], environ: dict[str, str] | None = None) -> Command:
    """The command a command line asks for; raises UsageError."""
    args = build_parser().parse_args(underscores_as_dashes(argv))
    if args.version:
        return ShowVersion()
    if args.daemon_status:
        return _daemon_status(args)
    if args.metrics_file != DEFAULT_METRICS_FILE or args.unit != DEFAULT_UNIT:
        raise _contradiction("--metrics-file and --unit go with --daemon-status")
    device = _device(args)
    if args.hex and args.json:
        raise _contradiction("--hex and --json exclude each other")
    request = build_request(args)
    warnings: list[str] = []
    if request.action.option in _NEEDS_TYPE and args.prout_type is None:
        warnings.append("--prout-type probably needs to be given")
    environ = dict(os.environ) if environ is None else environ
    return PrCommand(device=device, socket_path=args.socket, request=request,
                     read_only=_read_only(args, request.action, environ),
                     timeout=args.timeout, json=args.json, hex=args.hex,
                     verbose=args.verbose, warnings=tuple(warnings))


def _daemon_status(args: argparse.Namespace) -> DaemonStatusCommand:
    """--daemon-status takes no DEVICE and no option of a PR command."""
    pr_options = [name for name, given in (
        ("DEVICE", args.device is not None or args.device_option is not None),
        ("--in", args.pr_in), ("--out", args.pr_out), ("an action", bool(args.actions)),
        ("--hex", args.hex > 0), ("--readonly", args.readonly > 0),
        ("--verbose", args.verbose > 0)) if given]
    if pr_options:
        raise _contradiction(f"--daemon-status takes no {', '.join(pr_options)}")
    return DaemonStatusCommand(args.metrics_file, args.unit, args.json)
