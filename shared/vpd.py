"""A LU's names from its VPD pages, spelled as udev spells them in /dev/disk/by-id.

Page 0x83 (Device Identification, SPC-4 7.8.6) lists designators; udev's `scsi_id`
picks one by a fixed priority and, when it is an NAA designator, exports it as
ID_WWN_WITH_EXTENSION, the `wwn-0x...` link. `wwn` below reproduces that choice exactly,
so a record or a policy rule names a LU the way an administrator sees it:

- only designators associated with the LU (association 0) count;
- NAA IEEE Registered Extended (type 6) first, then IEEE Registered (5), then any NAA,
  binary before ASCII; a page whose first designator has a non-zero byte 2 is an old
  SCSI-2 reply (EMC Symmetrix) and yields no WWN;
- the first 16 hex digits are ID_WWN, the next 16 its vendor extension;
- scsi_id reads 254 bytes of the page, so designators past that are not seen.

Page 0x80 gives the unit serial number (ID_SCSI_SERIAL).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

PAGE_83 = 0x83
PAGE_80 = 0x80
#: scsi_id's SCSI_INQ_BUFF_LEN: how much of a VPD page it reads.
SCSI_ID_BUFFER = 254

CODE_SET_BINARY = 1
CODE_SET_ASCII = 2
TYPE_T10 = 1
TYPE_EUI64 = 2
TYPE_NAA = 3
ASSOCIATION_LU = 0
NAA_IEEE_REGISTERED = 5
NAA_IEEE_REGISTERED_EXTENDED = 6

#: scsi_id's id_search_list after its target port group entry (which only fills
#: ID_TARGET_PORT): (designator type, NAA type or None for any, code set).
_WWN_SEARCH = (
    (TYPE_NAA, NAA_IEEE_REGISTERED_EXTENDED, CODE_SET_BINARY),
    (TYPE_NAA, NAA_IEEE_REGISTERED_EXTENDED, CODE_SET_ASCII),
    (TYPE_NAA, NAA_IEEE_REGISTERED, CODE_SET_BINARY),
    (TYPE_NAA, NAA_IEEE_REGISTERED, CODE_SET_ASCII),
    (TYPE_NAA, None, CODE_SET_BINARY),
    (TYPE_NAA, None, CODE_SET_ASCII),
)


@dataclass(frozen=True)
class Designator:
    code_set: int
    association: int
    type: int
    value: bytes

    def text(self) -> str:
        """Binary designators in lowercase hex, ASCII ones as they are."""
        if self.code_set == CODE_SET_ASCII:
            return self.value.decode("ascii", "replace")
        return self.value.hex()


def designators(page: bytes) -> Iterator[Designator]:
    """The designators of a page 0x83 as scsi_id sees them (its first 254 bytes); a
    descriptor cut short by the page or by that limit ends the list."""
    page = page[:SCSI_ID_BUFFER]
    if len(page) < 4 or page[1] != PAGE_83:
        return
    end = min(len(page), 4 + int.from_bytes(page[2:4], "big"))
    offset = 4
    while offset + 4 <= end:
        length = page[offset + 3]
        if offset + 4 + length > end:
            return
        yield Designator(code_set=page[offset] & 0x0F,
                         association=(page[offset + 1] >> 4) & 0x03,
                         type=page[offset + 1] & 0x0F,
                         value=page[offset + 4:offset + 4 + length])
        offset += 4 + length


def wwn(page: bytes) -> str | None:
    """ID_WWN_WITH_EXTENSION of a page 0x83 ("0x6001405..."), None when udev gives the
    LU no `wwn-` link."""
    if len(page) > 6 and page[6] != 0:
        return None  # a SCSI-2 format page: scsi_id takes its serial from it, no WWN
    found = list(designators(page))
    for kind, naa_type, code_set in _WWN_SEARCH:
        for d in found:
            if (d.association != ASSOCIATION_LU or d.type != kind or d.code_set != code_set
                    or not d.value):
                continue  # (an empty designator, which scsi_id would take and then
                # export no WWN for, is skipped: no device has been seen to send one)
            if naa_type is not None and d.value[0] >> 4 != naa_type:
                continue
            text = d.text()
            return "0x" + text[:16] + text[16:32]
    return None


def unit_serial(page: bytes) -> str | None:
    """The unit serial number of a page 0x80, stripped of the padding spaces."""
    if len(page) < 4 or page[1] != PAGE_80:
        return None
    raw = page[4:4 + page[3]]
    text = raw.decode("ascii", "replace").strip(" \0")
    return text or None


def wwn_from_dm_uuid(uuid: str) -> str | None:
    """A dm-multipath map's uuid is "mpath-" + the LU's udev serial; for an NAA LU that
    is "3" + the designator in hex, the same WWN its paths' `wwn-` links show."""
    if not uuid.startswith("mpath-3"):
        return None
    digits = uuid[len("mpath-3"):]
    if not digits or any(c not in "0123456789abcdef" for c in digits):
        return None
    return "0x" + digits[:32]


def by_id_names(wwn_text: str | None, dm_name: str | None, dm_uuid: str | None) -> list[str]:
    """The /dev/disk/by-id names these identifiers give (the ones a policy or a filter
    can name): wwn-0x..., dm-name-..., dm-uuid-..."""
    names = []
    if wwn_text:
        names.append(f"wwn-{wwn_text}")
    if dm_name:
        names.append(f"dm-name-{dm_name}")
    if dm_uuid:
        names.append(f"dm-uuid-{dm_uuid}")
    return names
