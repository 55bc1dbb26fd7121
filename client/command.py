"""What a command line asks for: the parsed options (arguments.py) turned into a
command, checked against each other as sg_persist checks them and more strictly (an option
that means nothing for the action is refused rather than ignored). No I/O but reading the
TransportIDs a `--transport-id=file=NAME` (or `-`) names, as sg_persist does.

A command is a `PrCommand` (one PERSISTENT RESERVE IN/OUT), `ShowVersion` or
`DaemonStatusCommand` (what the running prguard says about itself); another kind of
command is one more class in `Command`, one more branch in `parse` and one in cli.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from prguard.client import encode
from prguard.client.arguments import (
    ACTIONS,
    DEFAULT_ACTION,
    MAX_TRANSPORT_IDS,
    NEEDS_TYPE,
    READ_ONLY_ENV,
    TAKES_TRANSPORT_IDS,
    Action,
    UsageError,
    build_parser,
    contradiction,
    underscores_as_dashes,
)
from prguard.client.daemon_status import DEFAULT_METRICS_FILE, DEFAULT_UNIT
from prguard.shared.scsi import DATA_SIZE, PrInAction, PrOutAction


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
        raise contradiction("--in and --out exclude each other")
    chosen = list(dict.fromkeys(args.actions or ()))
    if len(chosen) > 1:
        raise contradiction(f"one action at a time: --{' and --'.join(chosen)} given")
    if not chosen:
        if args.pr_out:
            raise contradiction("--out needs a PR OUT action (--register, --reserve, ...)")
        return DEFAULT_ACTION
    action = ACTIONS[chosen[0]]
    if action.pr_out and args.pr_in:
        raise contradiction(f"--{action.option} is a PR OUT action, not --in")
    if action.pr_out and not args.pr_out:
        raise contradiction(f"--{action.option} is a PR OUT action: give --out too, as "
                             f"sg_persist requires (a safeguard)")
    if args.pr_out and not action.pr_out:
        raise contradiction(f"--{action.option} is a PR IN action, not --out")
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
    if args.transport_id and action.option not in TAKES_TRANSPORT_IDS:
        given.append("--transport-id")
    if args.param_alltgpt and action.option == "register-move":
        given.append("--param-alltgpt")
    if action.pr_out:
        given += [name for name, on in (("--alloc-length", args.alloc_length is not None),
                                        ("--maxlen", args.maxlen is not None),
                                        ("--hex", args.hex > 0)) if on]
    if given:
        raise contradiction(f"{', '.join(given)} cannot be used with --{action.option}")


def build_request(args: argparse.Namespace) -> Request:
    action = _choose_action(args)
    _only_with(args, action)
    if args.alloc_length is not None and args.maxlen is not None:
        raise contradiction("--alloc-length and --maxlen both set the allocation length")
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
                raise contradiction("--register-move needs one --transport-id and "
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
        raise contradiction("--metrics-file and --unit go with --daemon-status")
    device = _device(args)
    if args.hex and args.json:
        raise contradiction("--hex and --json exclude each other")
    request = build_request(args)
    warnings: list[str] = []
    if request.action.option in NEEDS_TYPE and args.prout_type is None:
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
        raise contradiction(f"--daemon-status takes no {', '.join(pr_options)}")
    return DaemonStatusCommand(args.metrics_file, args.unit, args.json)
