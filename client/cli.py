"""`prguard-client`: one PERSISTENT RESERVE IN/OUT through a running helper, by hand.

It does what QEMU does for a guest: opens the device itself, connects to the helper's
socket (prguard or qemu-pr-helper: same protocol), answers the 4-byte handshake, sends one
16-byte CDB with the device fd attached (SCM_RIGHTS) and, for PR OUT, the parameter list,
then reads the reply. Options follow sg_persist so an operator can check a deployment, or
give a demo, with the commands they already know.

Three parts, top to bottom: the command line turned into a Request (no I/O), the exchange
with the helper (the only socket code), and the reply rendered for people or as JSON.
"""

from __future__ import annotations

import argparse
import array
import enum
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from prguard.client import decode, encode
from prguard.client.decode import (
    Capabilities,
    DecodeError,
    FullStatus,
    Keys,
    ReservationStatus,
    SenseData,
    TransportId,
    TruncatedError,
)
from prguard.shared.errors import QemuProtocolError
from prguard.shared.qemu_protocol import (
    NEED_DATA,
    ClientConnection,
    Event,
    FeaturesOffered,
    PrReply,
)
from prguard.shared.scsi import DATA_SIZE, PrInAction, PrOutAction, Status

PROG = "prguard-client"
DEFAULT_SOCKET = "/var/run/qemu-pr-helper.sock"
#: Seconds to wait for the helper at each step; prguard's own SG_IO timeout is 30 s.
DEFAULT_TIMEOUT = 60.0


class ExitStatus(enum.IntEnum):
    GOOD = 0
    SCSI_ERROR = 1  #: the command failed (status other than GOOD), or its data is unusable
    USAGE = 2
    UNREACHABLE = 3  #: device not opened, helper not reached, or no reply from it


class UsageError(Exception):
    """A command-line mistake: one line on stderr, exit 2."""


class HelperError(Exception):
    """The device, the socket or the helper failed us before a reply: exit 3."""


# -- the command line -------------------------------------------------------------------

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


# -- the exchange -----------------------------------------------------------------------

def open_device(path: str, read_only: bool) -> int:
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except OSError as err:
        raise HelperError(f"cannot open {path}: {err.strerror}") from err


def _next_event(conn: ClientConnection, sock: socket.socket) -> Event:
    while True:
        event = conn.next_event()
        if event is not NEED_DATA:
            assert isinstance(event, Event)
            return event
        conn.receive_data(sock.recv(65536))


def exchange(options: Options, fd: int, log: Callable[[int, str], None]) -> PrReply:
    """Handshake, one request with `fd` attached, its reply. Raises HelperError."""
    request = options.request
    path = options.socket_path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(options.timeout)
            try:
                sock.connect(path)
            except OSError as err:
                raise HelperError(f"cannot connect to {path}: {err.strerror or err}") from err
            conn = ClientConnection()
            offered = _next_event(conn, sock)
            assert isinstance(offered, FeaturesOffered)
            log(1, f"helper offers features {offered.features:#x}; requesting none")
            sock.sendall(conn.send_features())
            cdb, params = conn.send_request(request.cdb, request.parameter_list)
            log(1, f"CDB {cdb.hex(' ')}")
            if params:
                log(1, f"parameter list ({len(params)} bytes) {params.hex(' ')}")
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
            sent = sock.sendmsg([cdb], rights)
            # The fd went with the first byte; what a short send left goes without it.
            sock.sendall(cdb[sent:] + params)
            reply = _next_event(conn, sock)
    except TimeoutError as err:
        raise HelperError(f"no answer from the helper on {path} within "
                          f"{options.timeout:g} s") from err
    except QemuProtocolError as err:
        raise HelperError(f"no usable reply from the helper on {path}: {err.reason}"
                          ) from err
    except OSError as err:
        # EPIPE/ECONNRESET: the helper dropped us, which is how it refuses a request.
        raise HelperError(f"helper on {path} closed the connection: "
                          f"{err.strerror or err}") from err
    if not isinstance(reply, PrReply):
        raise HelperError(f"helper on {path} closed the connection without replying")
    return reply


# -- the answer -------------------------------------------------------------------------

PrInData = Keys | ReservationStatus | Capabilities | FullStatus

DECODERS: dict[PrInAction, Callable[[bytes], PrInData]] = {
    PrInAction.READ_KEYS: decode.decode_read_keys,
    PrInAction.READ_RESERVATION: decode.decode_read_reservation,
    PrInAction.REPORT_CAPABILITIES: decode.decode_report_capabilities,
    PrInAction.READ_FULL_STATUS: decode.decode_read_full_status,
}


def _key(value: int) -> str:
    return f"{value:#x}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def describe_transport_id(tid: TransportId) -> str:
    name = tid.protocol_name
    if tid.protocol == decode.Protocol.ISCSI and tid.format_code in (0, 1):
        isid = f", ISID 0x{tid.isid}" if tid.isid is not None else ""
        return f"iSCSI name {tid.identifier}{isid}"
    if tid.identifier != tid.raw.hex():
        return f"{name} port name {tid.identifier}"
    return f"{name} TransportID (format {tid.format_code}) {tid.identifier}"


def text_lines(data: PrInData) -> list[str]:
    """The decoded data as sg_persist shows it, in words."""
    if isinstance(data, Keys):
        if not data.keys:
            return [f"PR generation {data.generation:#x}, no registered reservation keys"]
        return [f"PR generation {data.generation:#x}, {len(data.keys)} registered "
                f"reservation key(s):", *(f"  {_key(k)}" for k in data.keys)]
    if isinstance(data, ReservationStatus):
        held = data.reservation
        if held is None:
            return [f"PR generation {data.generation:#x}, no reservation held"]
        return [f"PR generation {data.generation:#x}, reservation held:",
                f"  key {_key(held.key)}",
                f"  scope {decode.scope_name(held.scope)}, type {held.type_name} ({held.type})"]
    if isinstance(data, Capabilities):
        allow = decode.ALLOW_COMMANDS_NAMES.get(data.allow_commands)
        lines = [
            f"Report capabilities (length {data.length}):",
            f"  Compatible Reservation Handling (CRH): {_yes(data.crh)}",
            f"  Specify Initiator Ports Capable (SIP_C): {_yes(data.sip_c)}",
            f"  All Target Ports Capable (ATP_C): {_yes(data.atp_c)}",
            f"  Persist Through Power Loss Capable (PTPL_C): {_yes(data.ptpl_c)}",
            f"  Type Mask Valid (TMV): {_yes(data.tmv)}",
            f"  Allow Commands: {data.allow_commands}" + (f" ({allow})" if allow else ""),
            f"  Persist Through Power Loss Active (PTPL_A): {_yes(data.ptpl_a)}",
        ]
        if data.tmv:
            lines.append(f"  Supported reservation types (mask {data.type_mask:#06x}):")
            lines += [f"    {decode.type_name(t)} ({int(t)})" for t in data.types] or ["    none"]
        return lines
    if not data.registrations:
        return [f"PR generation {data.generation:#x}, no registrations"]
    lines = [f"PR generation {data.generation:#x}, {len(data.registrations)} registration(s):"]
    for reg in data.registrations:
        holder = (f"yes, scope {decode.scope_name(reg.scope)}, type {reg.type_name} "
                  f"({reg.type})" if reg.reservation_holder else "no")
        lines += [f"  key {_key(reg.key)}",
                  f"    reservation holder: {holder}",
                  f"    all target ports: {_yes(reg.all_tg_pt)}, "
                  f"relative target port {reg.relative_target_port}",
                  f"    {describe_transport_id(reg.transport_id)}"]
    return lines


def _tid_json(tid: TransportId) -> dict[str, object]:
    return {"protocol": tid.protocol, "protocol_name": tid.protocol_name,
            "format_code": tid.format_code, "identifier": tid.identifier, "isid": tid.isid,
            "hex": tid.raw.hex()}


def data_json(data: PrInData) -> dict[str, object]:
    """Keys as 0x strings: 64-bit values do not survive JSON readers that use doubles."""
    if isinstance(data, Keys):
        return {"generation": data.generation, "keys": [_key(k) for k in data.keys]}
    if isinstance(data, ReservationStatus):
        held = data.reservation
        return {"generation": data.generation, "reservation": None if held is None else {
            "key": _key(held.key), "scope": held.scope, "type": held.type,
            "type_name": held.type_name}}
    if isinstance(data, Capabilities):
        return {"length": data.length, "crh": data.crh, "sip_c": data.sip_c,
                "atp_c": data.atp_c, "ptpl_c": data.ptpl_c, "tmv": data.tmv,
                "allow_commands": data.allow_commands, "ptpl_a": data.ptpl_a,
                "type_mask": f"{data.type_mask:#06x}",
                "types": [{"type": int(t), "name": decode.type_name(t)} for t in data.types]}
    return {"generation": data.generation, "registrations": [
        {"key": _key(r.key), "all_tg_pt": r.all_tg_pt, "reservation_holder": r.reservation_holder,
         "scope": r.scope, "type": r.type,
         "type_name": r.type_name if r.reservation_holder else None,
         "relative_target_port": r.relative_target_port,
         "transport_id": _tid_json(r.transport_id)} for r in data.registrations]}


def describe_sense(sense: SenseData | None) -> str:
    if sense is None:
        return "no sense data"
    name = sense.asc_name or "unknown additional sense code"
    deferred = " (deferred)" if sense.deferred else ""
    return f"{sense.key_name}, {name} ({sense.code}){deferred}"


def _sense_json(raw: bytes) -> dict[str, object] | None:
    try:
        sense = decode.decode_sense(raw)
    except DecodeError as err:
        return {"error": str(err), "hex": decode.sense_in_use(raw).hex()}
    if sense is None:
        return None
    return {"key": sense.code.key, "key_name": sense.key_name, "asc": sense.code.asc,
            "ascq": sense.code.ascq, "code": str(sense.code), "description": sense.asc_name,
            "format": "descriptor" if sense.descriptor_format else "fixed",
            "deferred": sense.deferred, "hex": decode.sense_in_use(raw).hex()}


def error_line(reply: PrReply) -> str:
    """One line for a reply whose status is not GOOD."""
    status = decode.status_name(reply.status)
    if reply.status != Status.CHECK_CONDITION:
        return status
    try:
        return f"{status}: {describe_sense(decode.decode_sense(reply.sense))}"
    except DecodeError as err:
        return f"{status}: undecodable sense ({err}): {decode.sense_in_use(reply.sense).hex()}"


@dataclass(frozen=True)
class Outcome:
    exit_status: ExitStatus
    stdout: list[str]
    stderr: list[str]


def render(options: Options, reply: PrReply) -> Outcome:
    """What to print for a reply, and the exit status. Pure."""
    action = options.request.action
    data: PrInData | None = None
    problem: str | None = None
    if reply.status != Status.GOOD:
        problem = f"{action.title}: {error_line(reply)}"
    elif isinstance(action.code, PrInAction):
        try:
            data = DECODERS[action.code](reply.data)
        except TruncatedError as err:
            problem = f"{action.title} data: {err}; try a larger --alloc-length"
        except DecodeError as err:
            problem = f"{action.title} data: {err}"
    status = ExitStatus.SCSI_ERROR if problem else ExitStatus.GOOD
    stderr = [f"{PROG}: {problem}"] if problem else []
    if options.json:
        document: dict[str, object] = {
            "device": options.device, "socket": options.socket_path,
            "action": action.option, "status": decode.status_name(reply.status),
            "status_code": reply.status, "sense": _sense_json(reply.sense),
            "data": None if data is None else data_json(data)}
        if reply.data and data is None:
            document["raw_data"] = reply.data.hex()
        return Outcome(status, [json.dumps(document, indent=2)], stderr)
    if data is not None:
        return Outcome(status, text_lines(data), stderr)
    if problem is None:
        return Outcome(status, [f"{action.title}: {decode.status_name(reply.status)}"], stderr)
    return Outcome(status, [], stderr)


# -- the command ------------------------------------------------------------------------

def main(argv: Sequence[str]) -> int:
    try:
        options = parse_options(argv)
    except UsageError as err:
        print(f"{PROG}: error: {err} (see --help)", file=sys.stderr)
        return ExitStatus.USAGE

    def log(level: int, text: str) -> None:
        if options.verbose >= level:
            print(f"{PROG}: {text}", file=sys.stderr)

    try:
        fd = open_device(options.device, options.read_only)
        try:
            reply = exchange(options, fd, log)
        finally:
            os.close(fd)
    except HelperError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return ExitStatus.UNREACHABLE
    log(1, f"reply: status {reply.status:#04x}, {len(reply.data)} bytes of data")
    log(2, f"sense {decode.sense_in_use(reply.sense).hex(' ') or '(none)'}")
    if reply.data:
        log(2, f"data {reply.data.hex(' ')}")
    outcome = render(options, reply)
    for line in outcome.stdout:
        print(line)
    for line in outcome.stderr:
        print(line, file=sys.stderr)
    return outcome.exit_status


def entry() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entry()
