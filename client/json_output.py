"""The one JSON document `--json` prints, whatever happened. Pure.

Its shape is stable and every key is always there (null when it does not apply); the
JSON Schema in output.schema.json, next to this file, describes it and a test holds the
output to it:

    device, socket, action   what was asked (null when the command line did not say)
    status, status_code      the reply's SCSI status, by name and number (null: no reply)
    sense                    the decoded sense of a CHECK CONDITION, or null
    data                     the decoded PR IN data, or null
    raw_data                 PR IN data as it came back, in hex, or null
    error                    null, or {kind, message, errno}: why the exit status is not 0
    exit_status              the process' exit status (sg_persist's numbers)
    hints                    lines that may explain a failure (often empty)

Keys are 0x strings: 64-bit values do not survive JSON readers that use doubles.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from prguard.client import decode
from prguard.client.decode import (
    Capabilities,
    DecodeError,
    Keys,
    ReservationStatus,
    TransportId,
)

SCHEMA_FILE = "output.schema.json"

PrInData = Keys | ReservationStatus | Capabilities | decode.FullStatus


def schema_text() -> str:
    """The JSON Schema of the document, as installed with the package."""
    return resources.files("prguard.client").joinpath(SCHEMA_FILE).read_text()


def _key(value: int) -> str:
    return f"{value:#x}"


def _tid(tid: TransportId) -> dict[str, object]:
    return {"protocol": tid.protocol, "protocol_name": tid.protocol_name,
            "format_code": tid.format_code, "identifier": tid.identifier, "isid": tid.isid,
            "hex": tid.raw.hex()}


def data_json(data: PrInData) -> dict[str, object]:
    if isinstance(data, Keys):
        return {"generation": data.generation, "keys": [_key(k) for k in data.keys]}
    if isinstance(data, ReservationStatus):
        held = data.reservation
        return {"generation": data.generation, "reservation": None if held is None else {
            "key": _key(held.key), "scope": held.scope, "type": held.type,
            "type_name": held.type_name}}
    if isinstance(data, Capabilities):
        return {"length": data.length, "rlr_c": data.rlr_c, "crh": data.crh,
                "sip_c": data.sip_c,
                "atp_c": data.atp_c, "ptpl_c": data.ptpl_c, "tmv": data.tmv,
                "allow_commands": data.allow_commands, "ptpl_a": data.ptpl_a,
                "type_mask": f"{data.type_mask:#06x}",
                "types": [{"type": int(t), "name": decode.type_name(t)} for t in data.types]}
    return {"generation": data.generation, "registrations": [
        {"key": _key(r.key), "all_tg_pt": r.all_tg_pt, "reservation_holder": r.reservation_holder,
         "scope": r.scope, "type": r.type,
         "type_name": r.type_name if r.reservation_holder else None,
         "relative_target_port": r.relative_target_port,
         "transport_id": _tid(r.transport_id)} for r in data.registrations]}


def sense_json(raw: bytes) -> dict[str, object] | None:
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


def error_json(kind: str, message: str, errno: str | None = None) -> dict[str, object]:
    """kind: usage, device, connect, timeout, no-reply, scsi (a status other than
    GOOD), malformed (PR IN data that does not decode)."""
    return {"kind": kind, "message": message, "errno": errno}


def document(*, exit_status: int, device: str | None = None, socket: str | None = None,
             action: str | None = None, status: int | None = None, sense: bytes = b"",
             data: PrInData | None = None, raw_data: bytes | None = None,
             error: dict[str, object] | None = None, hints: Sequence[str] = ()
             ) -> dict[str, Any]:
    return {
        "device": device, "socket": socket, "action": action,
        "status": None if status is None else decode.status_name(status),
        "status_code": status,
        "sense": sense_json(sense) if status is not None else None,
        "data": None if data is None else data_json(data),
        "raw_data": None if raw_data is None else raw_data.hex(),
        "error": error, "exit_status": int(exit_status), "hints": list(hints),
    }
