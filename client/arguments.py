"""The command line of prguard-client turned into what to send: no I/O.

Options follow sg_persist so an operator checks a deployment with the commands they
already know.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from prguard.client import encode
from prguard.shared.scsi import DATA_SIZE, PrInAction, PrOutAction

PROG = "prguard-client"
DEFAULT_SOCKET = "/var/run/qemu-pr-helper.sock"
#: Seconds to wait for the helper at each step; prguard's own SG_IO timeout is 30 s.
DEFAULT_TIMEOUT = 60.0


class UsageError(Exception):
    """A command-line mistake: one line on stderr, exit 2."""


@dataclass(frozen=True)
class Action:
    option: str
    title: str  #: the SPC service action name, as logs and people say it
    code: PrInAction | PrOutAction

    @property
    def pr_out(self) -> bool:
        return isinstance(self.code, PrOutAction)


ACTIONS: dict[str, Action] = {a.option: a for a in (
    Action("read-keys", "READ KEYS", PrInAction.READ_KEYS),
    Action("read-reservation", "READ RESERVATION", PrInAction.READ_RESERVATION),
    Action("report-capabilities", "REPORT CAPABILITIES", PrInAction.REPORT_CAPABILITIES),
    Action("read-full-status", "READ FULL STATUS", PrInAction.READ_FULL_STATUS),
    Action("register", "REGISTER", PrOutAction.REGISTER),
    Action("register-ignore", "REGISTER AND IGNORE EXISTING KEY",
           PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY),
    Action("reserve", "RESERVE", PrOutAction.RESERVE),
    Action("release", "RELEASE", PrOutAction.RELEASE),
    Action("clear", "CLEAR", PrOutAction.CLEAR),
    Action("preempt", "PREEMPT", PrOutAction.PREEMPT),
    Action("preempt-abort", "PREEMPT AND ABORT", PrOutAction.PREEMPT_AND_ABORT),
    Action("register-move", "REGISTER AND MOVE", PrOutAction.REGISTER_AND_MOVE),
)}

#: sg_persist's short option for each action.
_SHORT = {
    "read-keys": "-k", "read-reservation": "-r", "report-capabilities": "-c",
    "read-full-status": "-s", "register": "-G", "register-ignore": "-I", "reserve": "-R",
    "release": "-L", "clear": "-C", "preempt": "-P", "preempt-abort": "-A",
    "register-move": "-M",
}
_TAKES_TRANSPORT_IDS = ("register", "register-ignore", "register-move")

#: The man page's words on an option beyond its --help line, by its long name (or a
#: positional's metavar). The page is generated from the parser: options need no entry.
MAN_NOTES: dict[str, str] = {
    "--socket": "A helper that libvirt manages for a domain listens on "
                "/var/lib/libvirt/qemu/domain-ID-NAME/pr-helper0.sock.",
    "DEVICE": "The whole disk (/dev/sdX, a /dev/disk/by-id name, or /dev/sgN), opened "
              "read-write unless --readonly: the fd QEMU would send for its scsi-block "
              "disk.",
}

EPILOG = f"""\
TransportIDs (--transport-id, once per ID): sas,HEX  fcp,HEX  iqn.NAME[,i,0xISID]
(also eui./naa. names, or iscsi,NAME)  hex,BYTES (sent as given).
With --register or --register-ignore they set SPEC_I_PT; --register-move takes exactly one.

Keys are hex, as in sg_persist (0x optional). Without an action: --read-keys.

Exit status: 0 GOOD; 1 the helper answered with an error status (CHECK CONDITION,
RESERVATION CONFLICT, BUSY...) or PR IN data that cannot be decoded; 2 usage error;
3 the device could not be opened, the helper could not be reached, or it closed the
connection without replying. Errors are one line on stderr.

Examples:
  {PROG} --socket /run/prguard.sock --read-full-status /dev/sdb
  {PROG} --register --param-sark 0x1234 /dev/sdb
  {PROG} --reserve --param-rk 0x1234 --prout-type 1 --json /dev/sdb
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _hex_key(text: str) -> int:
    try:
        value = int(text[2:] if text.lower().startswith("0x") else text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hex key") from None
    if not 0 <= value <= encode.MAX_KEY:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit in 8 bytes")
    return value


def _ranged(limit: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} {text!r} is not a number") from None
        if not 0 <= value <= limit:
            raise argparse.ArgumentTypeError(f"{what} {value} is outside 0..{limit}")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send one PERSISTENT RESERVE IN/OUT command to DEVICE through a running "
                    "qemu-pr-helper or prguard, as QEMU does, and show the answer.")
    parser.add_argument("device", metavar="DEVICE", help="block or sg device to open")
    parser.add_argument("--socket", metavar="PATH", default=DEFAULT_SOCKET,
                        help=f"the helper's socket (default {DEFAULT_SOCKET})")
    parser.add_argument("-i", "--in", dest="pr_in", action="store_true",
                        help="PERSISTENT RESERVE IN (the default direction)")
    parser.add_argument("-o", "--out", dest="pr_out", action="store_true",
                        help="PERSISTENT RESERVE OUT (needs one of its actions)")
    actions = parser.add_argument_group("actions (one at most)").add_mutually_exclusive_group()
    for action in ACTIONS.values():
        direction = "PR OUT" if action.pr_out else "PR IN"
        actions.add_argument(_SHORT[action.option], f"--{action.option}", dest="action",
                             action="store_const", const=action.option,
                             help=f"{direction} {action.title}")
    params = parser.add_argument_group("PR OUT parameters")
    params.add_argument("-K", "--param-rk", metavar="KEY", type=_hex_key, default=None,
                        help="RESERVATION KEY (hex; default 0)")
    params.add_argument("-S", "--param-sark", metavar="KEY", type=_hex_key, default=None,
                        help="SERVICE ACTION RESERVATION KEY (hex; default 0)")
    params.add_argument("-T", "--prout-type", metavar="N", type=_ranged(0xF, "type"),
                        default=None,
                        help="reservation TYPE: 1 WE, 3 EA, 5 WE_RO, 6 EA_RO, 7 WE_AR, 8 EA_AR")
    params.add_argument("-Z", "--param-aptpl", action="store_true",
                        help="APTPL: persist through power loss")
    params.add_argument("-Y", "--param-alltgpt", action="store_true",
                        help="ALL_TG_PT: register on all target ports")
    params.add_argument("-X", "--transport-id", metavar="TID", action="append", default=[],
                        help="a TransportID (see below); repeat for several")
    params.add_argument("-Q", "--relative-target-port", metavar="N",
                        type=_ranged(0xFFFF, "relative target port"), default=None,
                        help="REGISTER AND MOVE: the target port to move to")
    params.add_argument("-U", "--unreg", action="store_true",
                        help="REGISTER AND MOVE: unregister this I_T nexus")
    other = parser.add_argument_group("other options")
    other.add_argument("-l", "--alloc-length", metavar="N", default=None,
                       type=_ranged(DATA_SIZE, "allocation length"),
                       help=f"PR IN allocation length (default and most: {DATA_SIZE}, "
                            f"the protocol's limit)")
    other.add_argument("-y", "--readonly", action="store_true",
                       help="open DEVICE read-only (PR OUT is then refused with 05/20/00)")
    other.add_argument("--timeout", metavar="SECONDS", type=_seconds,
                       default=DEFAULT_TIMEOUT,
                       help=f"give up on the helper after this long (default "
                            f"{DEFAULT_TIMEOUT:g})")
    other.add_argument("-j", "--json", action="store_true", help="print JSON on stdout")
    other.add_argument("-v", "--verbose", action="count", default=0,
                       help="show the bytes exchanged on stderr (-vv: data and sense too)")
    return parser


@dataclass(frozen=True)
class Request:
    action: Action
    cdb: bytes
    parameter_list: bytes = b""


@dataclass(frozen=True)
class Options:
    device: str
    socket_path: str
    request: Request
    read_only: bool
    timeout: float
    json: bool
    verbose: int


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
    if args.alloc_length is not None and action.pr_out:
        given.append("--alloc-length")
    if given:
        raise UsageError(f"{', '.join(given)} cannot be used with --{action.option}")


def _choose_action(args: argparse.Namespace) -> Action:
    if args.pr_in and args.pr_out:
        raise UsageError("--in and --out exclude each other")
    if args.action is None:
        if args.pr_out:
            raise UsageError("--out needs a PR OUT action (--register, --reserve, ...)")
        return ACTIONS["read-keys"]  # sg_persist's default
    action = ACTIONS[args.action]
    if args.pr_in and action.pr_out:
        raise UsageError(f"--{action.option} is a PR OUT action, not --in")
    if args.pr_out and not action.pr_out:
        raise UsageError(f"--{action.option} is a PR IN action, not --out")
    return action


def build_request(args: argparse.Namespace) -> Request:
    action = _choose_action(args)
    _only_with(args, action)
    try:
        if isinstance(action.code, PrInAction):
            length = DATA_SIZE if args.alloc_length is None else args.alloc_length
            return Request(action, encode.pr_in_cdb(action.code, length))
        key = args.param_rk or 0
        sa_key = args.param_sark or 0
        tids = [encode.parse_transport_id(text) for text in args.transport_id]
        if action.code is PrOutAction.REGISTER_AND_MOVE:
            if len(tids) != 1 or args.relative_target_port is None:
                raise UsageError("--register-move needs one --transport-id and "
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


def parse_options(argv: Sequence[str]) -> Options:
    args = build_parser().parse_args(argv)
    return Options(device=args.device, socket_path=args.socket, request=build_request(args),
                   read_only=args.readonly, timeout=args.timeout, json=args.json,
                   verbose=args.verbose)


