"""What a PERSISTENT RESERVE IN/OUT command asks for, decoded for people and for the
tenant policy: service action, scope and type from the CDB (SPC-4 6.15, 6.16), keys and
flags from a PR OUT parameter list (6.16.3, and 6.16.4 for REGISTER AND MOVE).

Pure and total: any CDB and parameter list decode (a field the list is too short for is
None), because refused and malformed requests are recorded too.
"""

from __future__ import annotations

from dataclasses import dataclass

from prguard.shared.scsi import Opcode, PrOutAction, service_action
from prguard.shared.scsi_names import action_name

LU_SCOPE = 0

#: PR OUT service actions whose CDB TYPE (and SCOPE) fields mean something.
TYPED_ACTIONS = frozenset({
    PrOutAction.RESERVE, PrOutAction.RELEASE, PrOutAction.PREEMPT,
    PrOutAction.PREEMPT_AND_ABORT, PrOutAction.REGISTER_AND_MOVE,
    PrOutAction.REPLACE_LOST_RESERVATION,
})
#: Actions whose RESERVATION KEY field the device ignores.
KEY_IGNORED = frozenset({PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
                         PrOutAction.REPLACE_LOST_RESERVATION})
#: Actions whose SERVICE ACTION RESERVATION KEY field means something (the new key, or
#: the key to preempt, or the key of the moved registration).
SA_KEY_USED = frozenset({
    PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
    PrOutAction.PREEMPT, PrOutAction.PREEMPT_AND_ABORT, PrOutAction.REGISTER_AND_MOVE,
    PrOutAction.REPLACE_LOST_RESERVATION,
})
#: Actions where a zero key means "none" rather than a key: REGISTER from an
#: unregistered nexus (RESERVATION KEY 0), unregistering (SERVICE ACTION RESERVATION KEY 0).
REGISTERING = frozenset({PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY})

#: Basic parameter list: RESERVATION KEY, SERVICE ACTION RESERVATION KEY, obsolete, flags.
BASIC_LIST_LENGTH = 24


@dataclass(frozen=True)
class PrCommand:
    """The fields of one PR command that matter to an auditor and to the policy."""

    pr_out: bool
    action: int
    #: CDB SCOPE and TYPE, for actions that use them (TYPED_ACTIONS), else None.
    scope: int | None = None
    type: int | None = None
    #: Keys as the device reads them; None when ignored or the list is too short.
    key: int | None = None
    sa_key: int | None = None
    aptpl: bool | None = None
    all_tg_pt: bool | None = None
    spec_i_pt: bool | None = None
    #: REGISTER AND MOVE only: UNREG and the RELATIVE TARGET PORT IDENTIFIER.
    unreg: bool | None = None
    relative_target_port: int | None = None
    #: PR OUT: the parameter list holds at least the basic 24 bytes (keys and flags)
    complete_list: bool = False

    @property
    def action_name(self) -> str:
        return action_name(self.pr_out, self.action)

    @property
    def opcode_name(self) -> str:
        return "PR OUT" if self.pr_out else "PR IN"


def decode(cdb: bytes, parameter_list: bytes) -> PrCommand:
    """Decode a 16-byte PR CDB (opcode already known to be PR IN or OUT)."""
    pr_out = bool(cdb) and cdb[0] == Opcode.PERSISTENT_RESERVE_OUT
    action = service_action(cdb) if len(cdb) > 1 else 0
    if not pr_out:
        return PrCommand(False, action)
    scope = type_ = None
    if action in TYPED_ACTIONS and len(cdb) > 2:
        scope, type_ = cdb[2] >> 4, cdb[2] & 0xF
    if len(parameter_list) < BASIC_LIST_LENGTH:
        return PrCommand(True, action, scope, type_)
    key = None if action in KEY_IGNORED else int.from_bytes(parameter_list[0:8], "big")
    sa_key = int.from_bytes(parameter_list[8:16], "big") if action in SA_KEY_USED else None
    if action == PrOutAction.REGISTER_AND_MOVE:
        return PrCommand(True, action, scope, type_, key, sa_key,
                         aptpl=bool(parameter_list[17] & 0x01),
                         unreg=bool(parameter_list[17] & 0x02),
                         relative_target_port=int.from_bytes(parameter_list[18:20], "big"),
                         complete_list=True)
    flags = parameter_list[20]
    return PrCommand(True, action, scope, type_, key, sa_key,
                     aptpl=bool(flags & 0x01), all_tg_pt=bool(flags & 0x04),
                     spec_i_pt=bool(flags & 0x08), complete_list=True)
