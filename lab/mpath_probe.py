"""Measurements of persistent reservations on a dm-multipath map, on the lab's kernel.

Runs INSIDE the lab guest (LIO_LAYOUT=multipath of lio_setup.sh: LU m behind mA and mB,
joined by the round-robin map mpatha, and mC, a second cluster node; LU r the single-path
reference behind rA and rC). Run on the host, it boots one guest and runs itself there:

    PYTHONPATH=. .venv/bin/python -m lab.mpath_probe [results.json]

Each measurement is one record {"id", "what", "result"} in $LAB_RESULTS/mpath_probe.json,
printed as it is made. What is measured, for each way of doing PR OUT on a map:
  routing   which path an ioctl on the map reaches (the SCSI devices' iorequest_cnt);
  sgio      SG_IO on the map, as QEMU's scsi-block and the C helper send it;
  kernel    the block layer's IOC_PR_* ioctls on the map (linux/pr.h): return values,
            who gets registered, APTPL, which capability and fd mode they need;
  paths     SG_IO on each path device, and who may open one;
  mpathpersist  multipath-tools' reference, with and without reservation_key;
  down      one path offline: what each mechanism does, and after the path returns;
  maps      device-mapper maps that are not whole-LU multipath maps.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prguard.client.decode import (
    decode_read_full_status,
    decode_read_keys,
    decode_read_reservation,
    decode_report_capabilities,
)
from prguard.shared.privileges import Identity, drop
from prguard.worker import sgio

HERE = Path(__file__).resolve().parent
NOBODY = Identity(65534, 65534)
TIMEOUT_MS = 30_000

# keys
K1, K2, K3, KC, KM, KZ, KH = (0xA1A1A1A1A1A1A1A1, 0xA2A2A2A2A2A2A2A2, 0xA3A3A3A3A3A3A3A3,
                              0xC1C1C1C1C1C1C1C1, 0xC4C4C4C4C4C4C4C4, 0x2020202020202020,
                              0x4848484848484848)

# linux/pr.h: _IOW('p', nr, struct) = 1 << 30 | sizeof << 16 | 'p' << 8 | nr
IOC_PR_REGISTER = 0x401870C8  # struct pr_registration {u64 old, new; u32 flags, pad}
IOC_PR_RESERVE = 0x401070C9  # struct pr_reservation {u64 key; u32 type, flags}
IOC_PR_RELEASE = 0x401070CA
IOC_PR_PREEMPT = 0x401870CB  # struct pr_preempt {u64 old, new; u32 type, flags}
IOC_PR_PREEMPT_ABORT = 0x401870CC
IOC_PR_CLEAR = 0x401070CD  # struct pr_clear {u64 key; u32 flags, pad}
PR_FL_IGNORE_KEY = 1
# enum pr_type (kernel) -> the SCSI type it is sent as
KTYPE_WE_RO = 3  # SCSI 5
KTYPE_WE = 1  # SCSI 1
SCSI_WE_RO = 5

REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_ABORT, REGISTER_IGNORE = 0, 1, 2, 3, 4, 5, 6
READ_KEYS, READ_RESERVATION, REPORT_CAPABILITIES, READ_FULL_STATUS = 0, 1, 2, 3
APTPL = 0x01

Record = dict[str, Any]
RECORDS: list[Record] = []


def record(rid: str, what: str, result: Any) -> Any:
    RECORDS.append({"id": rid, "what": what, "result": result})
    print(f"[{rid}] {what}\n    {json.dumps(result)}", flush=True)
    return result


# --- SCSI -------------------------------------------------------------------------------

def pr_in_cdb(action: int, alloc: int = 8192) -> bytes:
    return bytes([0x5E, action, 0, 0, 0, 0, 0, alloc >> 8, alloc & 0xFF, 0]).ljust(16, b"\0")


def pr_out_cdb(action: int, prtype: int = 0, length: int = 24) -> bytes:
    return (bytes([0x5F, action, prtype & 0xF, 0, 0]) + length.to_bytes(4, "big")
            + b"\0").ljust(16, b"\0")


def plist(key: int = 0, sakey: int = 0, flags: int = 0) -> bytes:
    return key.to_bytes(8, "big") + sakey.to_bytes(8, "big") + bytes(4) + bytes([flags]) + bytes(3)


def _open(dev: str, flags: int = os.O_RDWR) -> int:
    return os.open(dev, flags | os.O_CLOEXEC | os.O_NONBLOCK)


def sg_raw(fd: int, cdb: bytes, params: bytes = b"") -> dict[str, Any]:
    out = sgio.issue(fd, cdb, params, TIMEOUT_MS)
    res: dict[str, Any] = {}
    if out.errno:
        res["errno"] = os.strerror(out.errno)
        return res
    res["status"] = f"{out.status:#04x}"
    if out.host_status:
        res["host"] = f"{out.host_status:#x}"
    if out.driver_status:
        res["driver"] = f"{out.driver_status:#x}"
    if out.status == 2 and out.sense[0] & 0x7F in (0x70, 0x71):
        res["sense"] = f"{out.sense[2] & 0xF:02x}/{out.sense[12]:02x}/{out.sense[13]:02x}"
    elif out.status == 2 and out.sense[0] & 0x7F in (0x72, 0x73):
        res["sense"] = f"{out.sense[1] & 0xF:02x}/{out.sense[2]:02x}/{out.sense[3]:02x}"
    res["_data"] = out.data[: len(out.data) - out.resid] if out.status == 0 else b""
    return res


def sg(dev: str | int, cdb: bytes, params: bytes = b"") -> dict[str, Any]:
    """One SG_IO on a device path (opened O_RDWR for the call) or an fd."""
    if isinstance(dev, int):
        res = sg_raw(dev, cdb, params)
    else:
        fd = _open(dev)
        try:
            res = sg_raw(fd, cdb, params)
        finally:
            os.close(fd)
    res.pop("_data", None)
    return res


def pr_in(dev: str | int, action: int) -> tuple[dict[str, Any], bytes]:
    if isinstance(dev, int):
        res = sg_raw(dev, pr_in_cdb(action))
    else:
        fd = _open(dev)
        try:
            res = sg_raw(fd, pr_in_cdb(action))
        finally:
            os.close(fd)
    data = res.pop("_data", b"")
    return res, data


TUR = bytes(16)


# --- the lab ------------------------------------------------------------------------------

class Lab:
    def __init__(self, devices: dict[str, dict[str, Any]]) -> None:
        self.devices = devices
        self.map = devices["mpatha"]["map"]
        self.dm = devices["mpatha"]["dm"]

    def sg_of(self, path: str) -> str:
        return str(self.devices[path]["sg"])

    def sd_of(self, path: str) -> str:
        return str(self.devices[path]["sd"])

    def kname(self, path: str) -> str:
        return os.path.basename(os.path.realpath(self.sd_of(path)))

    def sysname(self, path: str) -> str:
        """The kernel's name of the path's block device (the node may be a mknod copy)."""
        hctl = self.devices[path]["hctl"]
        return os.listdir(f"/sys/bus/scsi/devices/{hctl}/block")[0]

    def rtpi_of(self) -> dict[int, str]:
        return {1: "mA", 2: "mB", 3: "mC"}

    def registrations(self, via: str) -> list[str]:
        """READ FULL STATUS through a path's sg node, one line per registered nexus."""
        res, data = pr_in(self.sg_of(via), READ_FULL_STATUS)
        if res.get("status") != "0x00":
            return [f"READ FULL STATUS failed: {res}"]
        names = self.rtpi_of() if via.startswith("m") else {1: "rA", 2: "rC"}
        out = []
        for reg in decode_read_full_status(data).registrations:
            holder = f" HOLDER type {reg.type}" if reg.reservation_holder else ""
            out.append(f"{names.get(reg.relative_target_port, reg.relative_target_port)} "
                       f"key {reg.key:#x}{holder}")
        return out

    def keys(self, via: str) -> dict[str, Any]:
        res, data = pr_in(self.sg_of(via), READ_KEYS)
        if res.get("status") != "0x00":
            return {"failed": res}
        k = decode_read_keys(data)
        return {"generation": k.generation, "keys": [f"{x:#x}" for x in k.keys]}

    def reservation(self, via: str) -> str:
        res, data = pr_in(self.sg_of(via), READ_RESERVATION)
        if res.get("status") != "0x00":
            return f"failed {res}"
        r = decode_read_reservation(data).reservation
        return "none" if r is None else f"key {r.key:#x} type {r.type}"

    def capabilities(self, via: str) -> dict[str, Any]:
        res, data = pr_in(self.sg_of(via), REPORT_CAPABILITIES)
        if res.get("status") != "0x00":
            return {"failed": res}
        c = decode_report_capabilities(data)
        return {"ptpl_a": c.ptpl_a, "ptpl_c": c.ptpl_c, "atp_c": c.atp_c, "sip_c": c.sip_c,
                "crh": c.crh, "type_mask": f"{c.type_mask:#06x}"}

    def counters(self) -> dict[str, int]:
        return {p: int(Path(f"/sys/block/{self.sysname(p)}/device/iorequest_cnt")
                       .read_text().strip(), 16) for p in ("mA", "mB")}

    def routed(self, action: Callable[[], Any]) -> tuple[Any, str]:
        """Run `action`, say which member path(s) of the map saw commands meanwhile."""
        before = self.counters()
        result = action()
        after = self.counters()
        took = [f"{p}+{after[p] - before[p]}" for p in after if after[p] != before[p]]
        return result, ",".join(took) or "none"

    def absorb(self, paths: tuple[str, ...]) -> None:
        """Spend pending unit attentions: a few TEST UNIT READYs per path."""
        for p in paths:
            for _ in range(3):
                sg(self.sg_of(p), TUR)

    def reset(self, lu: str = "m") -> None:
        """No registrations, no reservation, no pending unit attention on the LU."""
        paths = ("mA", "mB", "mC") if lu == "m" else ("rA", "rC")
        self.absorb(paths)
        for p in paths:
            sg(self.sg_of(p), pr_out_cdb(REGISTER_IGNORE), plist(0, KZ))
        sg(self.sg_of(paths[0]), pr_out_cdb(CLEAR), plist(KZ))
        self.absorb(paths)
        left = self.registrations(paths[0])
        if left:
            raise RuntimeError(f"reset of LU {lu} left {left}")

    def dm_status(self) -> str:
        r = subprocess.run(["dmsetup", "status", "mpatha"], capture_output=True, text=True)
        return (r.stdout or r.stderr).strip()

    def set_state(self, path: str, state: str) -> None:
        Path(f"/sys/block/{self.sysname(path)}/device/state").write_text(state + "\n")

    def dev_t(self, path: str) -> str:
        return Path(f"/sys/block/{self.sysname(path)}/dev").read_text().strip()


# --- kernel PR ioctls -------------------------------------------------------------------------

def pr_ioctl(fd: int, request: int, *fields: int) -> str:
    """One IOC_PR_* ioctl; the kernel's return value as it comes (a SCSI result when > 0)."""
    if request in (IOC_PR_REGISTER, IOC_PR_PREEMPT, IOC_PR_PREEMPT_ABORT):
        old, new, third = fields  # third: flags (register) or type (preempt)
        buf = bytearray(old.to_bytes(8, "little") + new.to_bytes(8, "little")
                        + third.to_bytes(4, "little") + bytes(4))
    elif request in (IOC_PR_RESERVE, IOC_PR_RELEASE):
        key, prtype = fields
        buf = bytearray(key.to_bytes(8, "little") + prtype.to_bytes(4, "little") + bytes(4))
    else:
        (key,) = fields
        buf = bytearray(key.to_bytes(8, "little") + bytes(8))
    try:
        rv = fcntl.ioctl(fd, request, buf, True)
    except OSError as exc:
        return f"errno {exc.errno} ({os.strerror(exc.errno or 0)})"
    return f"rv {rv:#x}" if rv else "rv 0"


def pr_ioctl_flags(fd: int, request: int, key_or_old: int, new_or_type: int, flags: int) -> str:
    """IOC_PR_REGISTER / RESERVE with explicit flags (to see which flags the kernel takes)."""
    if request == IOC_PR_REGISTER:
        buf = bytearray(key_or_old.to_bytes(8, "little") + new_or_type.to_bytes(8, "little")
                        + flags.to_bytes(4, "little") + bytes(4))
    else:
        buf = bytearray(key_or_old.to_bytes(8, "little") + new_or_type.to_bytes(4, "little")
                        + flags.to_bytes(4, "little"))
    try:
        rv = fcntl.ioctl(fd, request, buf, True)
    except OSError as exc:
        return f"errno {exc.errno} ({os.strerror(exc.errno or 0)})"
    return f"rv {rv:#x}" if rv else "rv 0"


def register(fd: int, old: int, new: int, flags: int = 0) -> str:
    return pr_ioctl_flags(fd, IOC_PR_REGISTER, old, new, flags)


def as_user(identity: Identity | None, keep: tuple[str, ...], fn: Callable[[], Any]) -> Any:
    """Run fn in a child that dropped to `identity` with exactly `keep`; its JSON result."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rd)
        try:
            drop(identity, keep)
            out = fn()
        except BaseException as exc:  # noqa: BLE001 - report whatever happened
            out = f"child failed: {exc!r}"
        os.write(wr, json.dumps(out).encode())
        os._exit(0)
    os.close(wr)
    chunks = []
    while chunk := os.read(rd, 65536):
        chunks.append(chunk)
    os.close(rd)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b"null")


def run(cmd: list[str], input: str | None = None) -> dict[str, Any]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, input=input)
    tail = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()][-6:]
    return {"rc": r.returncode, "out": tail}


# --- the measurements ---------------------------------------------------------------------------

def m_setup(lab: Lab) -> None:
    record("setup.kernel", "kernel", os.uname().release)
    record("setup.table", "the map", subprocess.run(
        ["dmsetup", "table", "mpatha"], capture_output=True, text=True).stdout.strip())
    record("setup.uuid", "dm/uuid (sysfs, world-readable)",
           Path(f"/sys/block/{lab.dm}/dm/uuid").read_text().strip())
    record("setup.slaves", "slaves of the map (sysfs)",
           sorted(os.listdir(f"/sys/block/{lab.dm}/slaves")))
    record("setup.paths", "path devices", {p: lab.sysname(p) for p in ("mA", "mB", "mC")})
    st = os.stat(lab.sd_of("mA"))
    record("setup.node", "path node owner/mode in this guest (udev makes them root:disk 0660)",
           f"{st.st_uid}:{st.st_gid} {st.st_mode & 0o777:o}")
    record("setup.caps", "REPORT CAPABILITIES of the LU (path mA)", lab.capabilities("mA"))


def m_routing(lab: Lab) -> None:
    fd = _open(lab.map)
    try:
        seq = [lab.routed(lambda: sg_raw(fd, TUR))[1] for _ in range(6)]
        record("routing.sgio_tur", "SG_IO TEST UNIT READY on the map, 6 times: path per call", seq)
        seq = [lab.routed(lambda: pr_in(fd, READ_KEYS)[0])[1] for _ in range(4)]
        record("routing.sgio_prin", "SG_IO READ KEYS on the map, 4 times: path per call", seq)
        seq = [lab.routed(lambda: pr_ioctl(fd, IOC_PR_CLEAR, KX))[1] for _ in range(4)]
        record("routing.ioctl_clear", "IOC_PR_CLEAR (unregistered key) on the map, 4 times: "
               "path per call", seq)
    finally:
        os.close(fd)


KX = 0xDEADBEEF00000001


def m_sgio(lab: Lab) -> None:
    lab.reset()
    fd = _open(lab.map)
    try:
        r, took = lab.routed(lambda: sg(fd, pr_out_cdb(REGISTER), plist(0, K1)))
        record("sgio.register", "SG_IO REGISTER K1 on the map (as the C helper does)",
               {"reply": r, "path": took, "registered": lab.registrations("mA")})
        clears = [lab.routed(lambda: sg(fd, pr_out_cdb(CLEAR), plist(K1))) for _ in range(2)]
        record("sgio.clear", "SG_IO CLEAR K1 on the map, twice", clears)
    finally:
        os.close(fd)


def m_kernel(lab: Lab) -> None:
    lab.reset()
    fd = _open(lab.map)
    try:
        t0 = time.monotonic()
        rv = register(fd, 0, K1)
        dt = time.monotonic() - t0
        record("kernel.register", "IOC_PR_REGISTER 0->K1 on the map (root)",
               {"rv": rv, "seconds": round(dt, 3), "registered": lab.registrations("mA"),
                "capabilities": lab.capabilities("mA")})
        record("kernel.register_again", "IOC_PR_REGISTER 0->K1 again (each path already has K1)",
               {"rv": register(fd, 0, K1), "registered": lab.registrations("mA")})
        record("kernel.register_ignore", "IOC_PR_REGISTER IGNORE_KEY ->K1",
               {"rv": register(fd, 0, K1, PR_FL_IGNORE_KEY),
                "registered": lab.registrations("mA")})
        record("kernel.register_change", "IOC_PR_REGISTER K1->K2",
               {"rv": register(fd, K1, K2), "registered": lab.registrations("mA")})
        record("kernel.register_wrong_old", "IOC_PR_REGISTER K1->K3 (paths hold K2)",
               {"rv": register(fd, K1, K3), "registered": lab.registrations("mA")})
        register(fd, 0, K2, PR_FL_IGNORE_KEY)
        record("kernel.register_flags", "IOC_PR_REGISTER with flags 0x2 (no such flag)",
               register(fd, 0, K2, 0x2))
        # reservation holder: which path
        r, took = lab.routed(lambda: pr_ioctl(fd, IOC_PR_RESERVE, K2, KTYPE_WE_RO))
        record("kernel.reserve", "IOC_PR_RESERVE K2 WE_RO on the map",
               {"rv": r, "path": took, "registered": lab.registrations("mA")})
        again = [lab.routed(lambda: pr_ioctl(fd, IOC_PR_RESERVE, K2, KTYPE_WE_RO))
                 for _ in range(3)]
        record("kernel.reserve_again", "IOC_PR_RESERVE K2 WE_RO again, 3 times "
               "(single path: GOOD each time)", again)
        rel = [lab.routed(lambda: pr_ioctl(fd, IOC_PR_RELEASE, K2, KTYPE_WE_RO))
               for _ in range(1)]
        record("kernel.release", "IOC_PR_RELEASE K2 WE_RO once",
               {"calls": rel, "reservation": lab.reservation("mA")})
        rel = [lab.routed(lambda: pr_ioctl(fd, IOC_PR_RELEASE, K2, KTYPE_WE_RO))
               for _ in range(2)]
        record("kernel.release_more", "IOC_PR_RELEASE K2 WE_RO twice more",
               {"calls": rel, "reservation": lab.reservation("mA")})
        record("kernel.bad_type", "IOC_PR_RESERVE type 7 (not in enum pr_type)",
               pr_ioctl(fd, IOC_PR_RESERVE, K2, 7))
        record("kernel.reserve_flags", "IOC_PR_RESERVE with flags 0x2",
               pr_ioctl_flags(fd, IOC_PR_RESERVE, K2, KTYPE_WE_RO, 0x2))
        # a CHECK CONDITION from the device: PREEMPT with a zero service action key
        r, took = lab.routed(lambda: pr_ioctl(fd, IOC_PR_PREEMPT, K2, 0, KTYPE_WE_RO))
        single = sg(lab.sg_of("mA"), pr_out_cdb(PREEMPT, SCSI_WE_RO), plist(K2, 0))
        record("kernel.check_condition", "IOC_PR_PREEMPT K2 sakey 0 (LIO: CHECK CONDITION) vs "
               "the same PREEMPT by SG_IO on a path", {"ioctl": r, "path": took,
                                                       "sgio on mA": single})
        # node C preempts us: our paths' next command gets a unit attention
        sg(lab.sg_of("mC"), pr_out_cdb(REGISTER), plist(0, KC))
        sg(lab.sg_of("mC"), pr_out_cdb(RESERVE, SCSI_WE_RO), plist(KC))
        r = sg(lab.sg_of("mC"), pr_out_cdb(PREEMPT, SCSI_WE_RO), plist(KC, K2))
        record("kernel.preempted", "node C (mC, SG_IO) PREEMPTs K2",
               {"reply": r, "registered": lab.registrations("mC")})
        calls = [lab.routed(lambda: register(fd, 0, K2, PR_FL_IGNORE_KEY)) for _ in range(3)]
        record("kernel.after_preempt", "IOC_PR_REGISTER IGNORE ->K2 on the map, 3 times (paths "
               "have a pending UNIT ATTENTION 06/2a/03)",
               {"calls": calls, "registered": lab.registrations("mC")})
        r, took = lab.routed(lambda: pr_ioctl(fd, IOC_PR_PREEMPT, K2, KC, KTYPE_WE_RO))
        record("kernel.preempt", "IOC_PR_PREEMPT K2 preempts KC WE_RO through the map",
               {"rv": r, "path": took, "registered": lab.registrations("mC")})
        r = pr_ioctl(fd, IOC_PR_PREEMPT_ABORT, K2, KX, KTYPE_WE_RO)
        record("kernel.preempt_abort_nomatch", "IOC_PR_PREEMPT_ABORT K2 sakey unregistered "
               "(single path: RESERVATION CONFLICT)", r)
        r, took = lab.routed(lambda: pr_ioctl(fd, IOC_PR_CLEAR, K2))
        record("kernel.clear", "IOC_PR_CLEAR K2 through the map",
               {"rv": r, "path": took, "registered": lab.registrations("mC")})
        lab.absorb(("mA", "mB", "mC"))
        # APTPL: the kernel's REGISTER sets it; can one SG_IO register-and-ignore undo it?
        lab.reset()
        register(fd, 0, K1)
        before = lab.capabilities("mA")["ptpl_a"]
        r, took = lab.routed(lambda: sg(fd, pr_out_cdb(REGISTER_IGNORE), plist(0, K1, 0)))
        record("kernel.aptpl", "PTPL_A after IOC_PR_REGISTER; then after one SG_IO REGISTER AND "
               "IGNORE EXISTING KEY ->K1 APTPL=0 on the map",
               {"ptpl_a_after_ioctl": before, "fixup": r, "path": took,
                "ptpl_a_after_fixup": lab.capabilities("mA")["ptpl_a"],
                "registered": lab.registrations("mA")})
        lab.reset()
        single = sg(lab.sg_of("rA"), pr_out_cdb(REGISTER), plist(0, K1, 0))
        record("kernel.aptpl_single", "reference: REGISTER APTPL=0 by SG_IO on a single path",
               {"reply": single, "ptpl_a": lab.capabilities("rA")["ptpl_a"]})
        lab.reset("r")
    finally:
        os.close(fd)


def m_caps(lab: Lab) -> None:
    lab.reset()
    rw = _open(lab.map)
    ro = _open(lab.map, os.O_RDONLY)
    try:
        def reg(fd: int) -> Callable[[], str]:
            return lambda: register(fd, 0, K1, PR_FL_IGNORE_KEY)
        rows = {}
        for label, ident, keep, fd in (
            ("nobody, no caps, rw fd", NOBODY, (), rw),
            ("nobody, CAP_SYS_RAWIO, rw fd", NOBODY, ("sys_rawio",), rw),
            ("nobody, CAP_SYS_ADMIN, rw fd", NOBODY, ("sys_admin",), rw),
            ("nobody, CAP_SYS_ADMIN, read-only fd", NOBODY, ("sys_admin",), ro),
        ):
            rows[label] = as_user(ident, keep, reg(fd))
            rows[label + " -> registered"] = lab.registrations("mA")
            lab.reset()
        record("caps.ioctl_register", "IOC_PR_REGISTER on the map fd (opened by root, then "
               "the process drops)", rows)

        def prin(fd: int) -> Callable[[], Any]:
            return lambda: pr_in(fd, READ_KEYS)[0]

        def prout(fd: int) -> Callable[[], Any]:
            return lambda: sg(fd, pr_out_cdb(REGISTER_IGNORE), plist(0, K1))
        rows = {
            "PR IN, nobody, no caps": as_user(NOBODY, (), prin(rw)),
            "PR IN, nobody, CAP_SYS_ADMIN": as_user(NOBODY, ("sys_admin",), prin(rw)),
            "PR IN, nobody, CAP_SYS_RAWIO": as_user(NOBODY, ("sys_rawio",), prin(rw)),
            "PR OUT, nobody, CAP_SYS_ADMIN": as_user(NOBODY, ("sys_admin",), prout(rw)),
            "PR OUT, nobody, CAP_SYS_RAWIO": as_user(NOBODY, ("sys_rawio",), prout(rw)),
        }
        record("caps.sgio_map", "SG_IO on the map fd by a dropped process", rows)
        lab.reset()

        def open_path() -> str:
            try:
                os.close(_open(lab.sd_of("mB")))
                return "opened"
            except OSError as exc:
                return f"errno {exc.errno} ({exc.strerror})"
        os.chmod(lab.sd_of("mB"), 0o660)
        os.chown(lab.sd_of("mB"), 0, 6)  # root:disk, as udev leaves it
        record("caps.open_path", "open(/dev/sdX, O_RDWR) of a path node root:disk 0660",
               {"nobody, no caps": as_user(NOBODY, (), open_path),
                "nobody, CAP_SYS_RAWIO": as_user(NOBODY, ("sys_rawio",), open_path),
                "nobody, CAP_SYS_ADMIN": as_user(NOBODY, ("sys_admin",), open_path)})
    finally:
        os.close(rw)
        os.close(ro)


def m_paths(lab: Lab) -> None:
    lab.reset()
    regs = {p: sg(lab.sd_of(p), pr_out_cdb(REGISTER), plist(0, K1)) for p in ("mA", "mB")}
    record("paths.register", "SG_IO REGISTER K1 on each path device (per-path translation)",
           {"replies": regs, "registered": lab.registrations("mA")})
    reserve = [sg(lab.sd_of("mA"), pr_out_cdb(RESERVE, SCSI_WE_RO), plist(K1)) for _ in range(2)]
    other = sg(lab.sd_of("mB"), pr_out_cdb(RESERVE, SCSI_WE_RO), plist(K1))
    release_other = sg(lab.sd_of("mB"), pr_out_cdb(RELEASE, SCSI_WE_RO), plist(K1))
    record("paths.holder", "RESERVE K1 WE_RO twice on mA, once on mB; RELEASE on mB "
           "(a registered non-holder)", {"mA": reserve, "mB reserve": other,
                                          "mB release": release_other,
                                          "reservation": lab.reservation("mA")})
    lab.reset()


def mpath_conf(key: int | None) -> None:
    Path("/etc/multipath").mkdir(exist_ok=True)
    body = "defaults {\n    user_friendly_names no\n    find_multipaths no\n"
    if key is not None:
        body += f"    reservation_key {key:#x}\n"
    Path("/etc/multipath.conf").write_text(body + "}\n")


def mpathpersist(*args: str) -> dict[str, Any]:
    return run(["mpathpersist", *args])


def m_mpathpersist(lab: Lab) -> None:
    if not os.path.exists("/usr/sbin/mpathpersist"):
        record("mpathpersist", "multipath-tools is not installed", None)
        return
    mpath_conf(None)
    lab.reset()
    record("mpathpersist.nokey", "mpathpersist --register K1, no reservation_key configured",
           {"run": mpathpersist("--out", "--register", f"--param-sark={K1:#x}", lab.map),
            "registered": lab.registrations("mA")})
    lab.reset()
    mpath_conf(KM)
    record("mpathpersist.wrongkey", "mpathpersist --register K1, reservation_key is KM",
           {"run": mpathpersist("--out", "--register", f"--param-sark={K1:#x}", lab.map),
            "registered": lab.registrations("mA")})
    lab.reset()
    t0 = time.monotonic()
    run_ = mpathpersist("--out", "--register", f"--param-sark={KM:#x}", lab.map)
    record("mpathpersist.register", "mpathpersist --register KM (= reservation_key)",
           {"run": run_, "seconds": round(time.monotonic() - t0, 2),
            "registered": lab.registrations("mA"), "ptpl_a": lab.capabilities("mA")["ptpl_a"]})
    res = [lab.routed(lambda: mpathpersist("--out", "--reserve", f"--param-rk={KM:#x}",
                                            "--prout-type=5", lab.map)) for _ in range(3)]
    record("mpathpersist.reserve", "mpathpersist --reserve KM type 5, 3 times",
           {"runs": res, "registered": lab.registrations("mA")})
    rel = mpathpersist("--out", "--release", f"--param-rk={KM:#x}", "--prout-type=5", lab.map)
    record("mpathpersist.release", "mpathpersist --release KM type 5",
           {"run": rel, "reservation": lab.reservation("mA")})
    r = mpathpersist("--out", "--register", f"--param-sark={KM:#x}", lab.map)
    record("mpathpersist.register_again", "mpathpersist --register 0->KM when registered",
           {"run": r, "registered": lab.registrations("mA")})
    caps = "+sys_admin,+sys_rawio"
    record("mpathpersist.nobody", "mpathpersist --in --read-keys as nobody holding "
           "CAP_SYS_ADMIN and CAP_SYS_RAWIO (ambient)",
           run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                f"--inh-caps={caps}", f"--ambient-caps={caps}",
                "mpathpersist", "--in", "--read-keys", lab.map]))
    lab.reset()


def m_hybrid(lab: Lab) -> None:
    """The guest's exact CDB by SG_IO on the map, the fan-out by the kernel's ioctl."""
    lab.reset()
    fd = _open(lab.map)
    try:
        t0 = time.monotonic()
        exact, took = lab.routed(lambda: sg(fd, pr_out_cdb(REGISTER), plist(0, K1)))
        fan = register(fd, 0, K1, PR_FL_IGNORE_KEY)
        fix = sg(fd, pr_out_cdb(REGISTER_IGNORE), plist(0, K1, 0))
        record("hybrid.register", "REGISTER 0->K1: exact by SG_IO on the map, IOC_PR_REGISTER "
               "IGNORE ->K1, SG_IO REGISTER AND IGNORE ->K1 APTPL=0",
               {"exact": exact, "path": took, "fan_out": fan, "aptpl_fixup": fix,
                "seconds": round(time.monotonic() - t0, 3),
                "registered": lab.registrations("mA"),
                "ptpl_a": lab.capabilities("mA")["ptpl_a"]})
        again = [lab.routed(lambda: sg(fd, pr_out_cdb(REGISTER), plist(0, K1)))
                 for _ in range(2)]
        record("hybrid.register_again", "REGISTER 0->K1 again by SG_IO on the map, twice "
               "(single path: RESERVATION CONFLICT, registration kept)",
               {"calls": again, "registered": lab.registrations("mA")})
        exact = sg(fd, pr_out_cdb(REGISTER), plist(K1, 0))
        fan = register(fd, 0, 0, PR_FL_IGNORE_KEY)
        record("hybrid.unregister", "REGISTER K1->0 exact, then IOC_PR_REGISTER IGNORE ->0",
               {"exact": exact, "fan_out": fan, "registered": lab.registrations("mA")})
        register(fd, 0, K1, PR_FL_IGNORE_KEY)
        sg(lab.sg_of("mC"), pr_out_cdb(REGISTER), plist(0, KC))
        sg(lab.sg_of("mC"), pr_out_cdb(RESERVE, SCSI_WE_RO), plist(KC))
        rel = pr_ioctl(fd, IOC_PR_RELEASE, K1, KTYPE_WE_RO)
        record("hybrid.release_nonholder", "IOC_PR_RELEASE K1 while node C holds the reservation "
               "(single path: GOOD, nothing released)", {"rv": rel, "reservation":
                                                          lab.reservation("mA")})
        res = pr_ioctl(fd, IOC_PR_RESERVE, K1, KTYPE_WE_RO)
        record("hybrid.reserve_conflict", "IOC_PR_RESERVE K1 while node C holds it "
               "(single path: RESERVATION CONFLICT)", res)
        clear_unreg = sg(fd, pr_out_cdb(CLEAR), plist(KX))
        record("hybrid.clear_wrong_key", "SG_IO CLEAR with an unregistered key on the map",
               clear_unreg)
        r, took = lab.routed(lambda: pr_ioctl(fd, IOC_PR_PREEMPT, K1, KC, KTYPE_WE_RO))
        record("hybrid.preempt", "IOC_PR_PREEMPT K1 preempts node C", {
            "rv": r, "path": took, "registered": lab.registrations("mA")})
        releases = [lab.routed(lambda: pr_ioctl(fd, IOC_PR_RELEASE, K1, KTYPE_WE_RO))
                    for _ in range(2)]
        record("hybrid.release", "IOC_PR_RELEASE K1 (holder mA), twice", {
            "calls": releases, "reservation": lab.reservation("mA"),
            "ua_left": {p: sg(lab.sg_of(p), TUR) for p in ("mA", "mB")}})
        lab.reset()
    finally:
        os.close(fd)


def m_perpath(lab: Lab) -> None:
    """What a per-path translation needs: fds the broker can hold, faithful flags."""
    lab.reset()
    wo = _open(lab.sd_of("mB"), os.O_WRONLY)
    try:
        record("perpath.wronly", "SG_IO with CAP_SYS_RAWIO on a path fd opened O_WRONLY: "
               "PR OUT REGISTER K1, PR IN READ KEYS",
               {"register": as_user(NOBODY, ("sys_rawio",), lambda: sg(
                   wo, pr_out_cdb(REGISTER), plist(0, K1))),
                "read_keys": as_user(NOBODY, ("sys_rawio",), lambda: pr_in(wo, READ_KEYS)[0]),
                "registered": lab.registrations("mA")})
    finally:
        os.close(wo)
    lab.reset()

    def open_as_disk(flags: int) -> Callable[[], str]:
        def go() -> str:
            try:
                os.close(_open(lab.sd_of("mB"), flags))
                return "opened"
            except OSError as exc:
                return f"errno {exc.errno} ({exc.strerror})"
        return go

    def with_group(fn: Callable[[], str]) -> Callable[[], str]:
        def go() -> str:
            os.setgroups([6])
            return fn()
        return go
    rows = {}
    for label, flags in (("O_WRONLY", os.O_WRONLY), ("O_RDONLY", os.O_RDONLY)):
        rows[f"nobody + group disk, {label}"] = _as_nobody_with_group(open_as_disk(flags))
    record("perpath.group", "open of a path node root:disk 0660 by nobody holding the "
           "supplementary group disk and no capability", rows)
    # udev: what closing a path fd costs (OPTIONS+="watch" on sd devices)
    rows = {}
    for label, flags in (("O_WRONLY", os.O_WRONLY), ("O_RDONLY", os.O_RDONLY)):
        mon = subprocess.Popen(["udevadm", "monitor", "--udev", "--subsystem-match=block"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(1.0)
        for _ in range(3):
            os.close(_open(lab.sd_of("mB"), flags))
        time.sleep(3.0)
        mon.terminate()
        out, _ = mon.communicate()
        rows[label] = [line.split()[2:4] for line in out.splitlines() if "UDEV" in line]
    record("perpath.udev", "udev events after opening and closing a path node 3 times",
           rows)
    tid = bytes([0x06, 0, 0, 0]) + (0x50014050000000D1).to_bytes(8, "big") + bytes(12)
    params = plist(0, K1, 0x08) + len(tid).to_bytes(4, "big") + tid
    sp = sg(lab.sd_of("mA"), pr_out_cdb(REGISTER, length=len(params)), params)
    sq = sg(lab.sd_of("mB"), pr_out_cdb(REGISTER_IGNORE), plist(0, K1))
    record("perpath.spec_i_pt", "REGISTER SPEC_I_PT (TransportID of node C) on mA, then "
           "REGISTER AND IGNORE without it on mB", {"mA": sp, "mB": sq,
                                                    "registered": lab.registrations("mA")})
    lab.reset()
    # a key change while a path is down leaves the old key on it
    sg(lab.sd_of("mA"), pr_out_cdb(REGISTER), plist(0, K1))
    sg(lab.sd_of("mB"), pr_out_cdb(REGISTER), plist(0, K1))
    lab.set_state("mB", "offline")
    change = sg(lab.sd_of("mA"), pr_out_cdb(REGISTER), plist(K1, K2))
    sg(lab.sg_of("mC"), pr_out_cdb(REGISTER), plist(0, KC))
    sg(lab.sg_of("mC"), pr_out_cdb(RESERVE, SCSI_WE_RO), plist(KC))
    fence = sg(lab.sg_of("mC"), pr_out_cdb(PREEMPT, SCSI_WE_RO), plist(KC, K2))
    lab.set_state("mB", "running")
    lab.absorb(("mA", "mB"))
    record("perpath.stale_key", "K1 on both; mB offline; K1->K2 on mA; node C (holding a WE_RO "
           "reservation) preempts K2; mB back; a WRITE through each path",
           {"change": change, "preempt": fence, "registered": lab.registrations("mC"),
            "write mA": dd_write(lab.sd_of("mA")), "write mB": dd_write(lab.sd_of("mB"))})
    fix = sg(lab.sd_of("mB"), pr_out_cdb(REGISTER_IGNORE), plist(0, 0))
    lab.absorb(("mB",))
    record("perpath.stale_fix", "REGISTER AND IGNORE ->0 on mB, then a WRITE through it", {
        "reply": fix, "registered": lab.registrations("mC"),
        "write mB": dd_write(lab.sd_of("mB"))})
    lab.reset()
    subprocess.run(["dmsetup", "message", "mpatha", "0", f"reinstate_path {lab.dev_t('mB')}"],
                   capture_output=True)
    # flags a per-path translation must decide on
    sp = sg(lab.sd_of("mA"), pr_out_cdb(REGISTER), plist(0, K1, 0x04))
    sq = sg(lab.sd_of("mB"), pr_out_cdb(REGISTER_IGNORE), plist(0, K1, 0x04))
    record("perpath.all_tg_pt", "REGISTER ALL_TG_PT on mA, then REGISTER AND IGNORE ALL_TG_PT "
           "on mB (another initiator port)", {"mA": sp, "mB": sq,
                                              "registered": lab.registrations("mA")})
    # ALL_TG_PT registrations come last: this probe's reset does not undo them


def dd_write(device: str) -> str:
    r = subprocess.run(["dd", "if=/dev/zero", f"of={device}", "bs=4096", "count=1",
                        "seek=100", "oflag=direct"], capture_output=True, text=True)
    return "written" if r.returncode == 0 else r.stderr.strip().splitlines()[-1]


def _as_nobody_with_group(fn: Callable[[], str]) -> Any:
    """Like as_user, with the supplementary group disk kept (setgroups before the drop)."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rd)
        try:
            os.setgroups([6])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            out = fn()
        except BaseException as exc:  # noqa: BLE001 - report whatever happened
            out = f"child failed: {exc!r}"
        os.write(wr, json.dumps(out).encode())
        os._exit(0)
    os.close(wr)
    data = b""
    while chunk := os.read(rd, 65536):
        data += chunk
    os.close(rd)
    os.waitpid(pid, 0)
    return json.loads(data or b"null")


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError as exc:
        return f"errno {exc.errno} ({exc.strerror})"


def m_down(lab: Lab) -> None:
    lab.reset()
    fd = _open(lab.map)
    held = _open(lab.sd_of("mB"))  # an fd of the path opened before it went offline
    try:
        register(fd, 0, K1, PR_FL_IGNORE_KEY)
        lab.set_state("mB", "offline")
        record("down.state", "mB offline (sysfs state); dm status", lab.dm_status())
        record("down.path", "the offline path device itself: open(), and SG_IO TUR on an fd "
               "opened before", {"open": _try(lambda: os.close(_open(lab.sd_of("mB")))),
                                 "sgio_held_fd": sg(held, TUR)})
        r, took = lab.routed(lambda: register(fd, 0, K3, PR_FL_IGNORE_KEY))
        record("down.kernel_register", "IOC_PR_REGISTER IGNORE ->K3, mB offline (not failed "
               "in dm)", {"rv": r, "path": took, "registered": lab.registrations("mA"),
                          "dm": lab.dm_status()})
        register(fd, 0, K1, PR_FL_IGNORE_KEY)
        record("down.kernel_register_restore", "IOC_PR_REGISTER IGNORE ->K1 again",
               lab.registrations("mA"))
        calls = [lab.routed(lambda: pr_ioctl(fd, IOC_PR_RESERVE, K1, KTYPE_WE_RO))
                 for _ in range(2)]
        record("down.kernel_reserve", "IOC_PR_RESERVE K1 WE_RO twice, mB offline",
               {"calls": calls, "registered": lab.registrations("mA")})
        calls = [lab.routed(lambda: pr_ioctl(fd, IOC_PR_RELEASE, K1, KTYPE_WE_RO))
                 for _ in range(1)]
        record("down.kernel_release", "IOC_PR_RELEASE K1 WE_RO, mB offline",
               {"calls": calls, "reservation": lab.reservation("mA")})
        tur = [lab.routed(lambda: sg(fd, TUR)) for _ in range(3)]
        record("down.sgio_tur", "SG_IO TUR on the map, 3 times, mB offline",
               {"calls": tur, "dm": lab.dm_status()})
        def read_at(i: int) -> Callable[[], int]:
            return lambda: len(os.pread(fd, 4096, 4096 * i))
        reads = [_try(read_at(i)) for i in range(4)]
        record("down.read", "reads through the map (dm fails mB on its I/O error)",
               {"reads": reads, "dm": lab.dm_status()})
        tur = [lab.routed(lambda: sg(fd, TUR)) for _ in range(3)]
        record("down.sgio_tur_failed", "SG_IO TUR on the map, 3 times, mB failed in dm",
               {"calls": tur})
        r, took = lab.routed(lambda: register(fd, 0, K3, PR_FL_IGNORE_KEY))
        record("down.kernel_register_failed", "IOC_PR_REGISTER IGNORE ->K3, mB failed in dm",
               {"rv": r, "path": took, "registered": lab.registrations("mA")})
        regs = [lab.routed(lambda: sg(fd, pr_out_cdb(REGISTER_IGNORE), plist(0, K3)))
                for _ in range(2)]
        record("down.sgio_register_failed", "SG_IO REGISTER AND IGNORE ->K3 on the map, twice, "
               "mB failed in dm", {"calls": regs, "registered": lab.registrations("mA")})
        calls = [lab.routed(lambda: pr_ioctl(fd, IOC_PR_CLEAR, K3)) for _ in range(2)]
        record("down.kernel_clear", "IOC_PR_CLEAR K3 twice, mB failed in dm",
               {"calls": calls, "registered": lab.registrations("mA")})
        lab.absorb(("mA", "mC"))
        r = sg(lab.sd_of("mA"), pr_out_cdb(REGISTER), plist(0, K1))
        record("down.path_register", "per-path SG_IO REGISTER K1 on mA only (mB offline)",
               {"reply": r, "registered": lab.registrations("mA")})
        lab.set_state("mB", "running")
        record("down.back", "mB running again: registrations, dm's view",
               {"registered": lab.registrations("mA"), "dm": lab.dm_status()})
        r, took = lab.routed(lambda: register(fd, 0, K1, PR_FL_IGNORE_KEY))
        record("down.kernel_reregister", "IOC_PR_REGISTER IGNORE ->K1 with mB back (still "
               "failed in dm)", {"rv": r, "path": took, "registered": lab.registrations("mA")})
        subprocess.run(["dmsetup", "message", "mpatha", "0", f"reinstate_path {lab.dev_t('mB')}"],
                       capture_output=True)
        record("down.reinstated", "after dmsetup message reinstate_path", lab.dm_status())
        lab.absorb(("mA", "mB"))
        if os.path.exists("/usr/sbin/mpathpersist"):
            lab.reset()
            mpath_conf(KM)
            lab.set_state("mB", "offline")
            r = mpathpersist("--out", "--register", f"--param-sark={KM:#x}", lab.map)
            record("down.mpathpersist_register", "mpathpersist --register KM, mB offline",
                   {"run": r, "registered": lab.registrations("mA"), "dm": lab.dm_status()})
            r = mpathpersist("--out", "--reserve", f"--param-rk={KM:#x}", "--prout-type=5",
                             lab.map)
            record("down.mpathpersist_reserve", "mpathpersist --reserve KM type 5, mB offline",
                   {"run": r, "registered": lab.registrations("mA")})
            lab.set_state("mB", "running")
            before = lab.registrations("mA")
            subprocess.run(["dmsetup", "message", "mpatha", "0",
                            f"reinstate_path {lab.dev_t('mB')}"], capture_output=True)
            r = mpathpersist("--out", "--register-ignore", f"--param-sark={KM:#x}", lab.map)
            record("down.mpathpersist_back", "mB back and reinstated: registrations; then "
                   "mpathpersist --register-ignore KM", {"before": before, "run": r,
                                                        "after": lab.registrations("mA")})
        lab.reset()
    finally:
        with contextlib.suppress(OSError):
            lab.set_state("mB", "running")
        subprocess.run(["dmsetup", "message", "mpatha", "0", f"reinstate_path {lab.dev_t('mB')}"],
                       capture_output=True)
        os.close(held)
        os.close(fd)


def _dm_name(node: str) -> str:
    rdev = os.stat(node).st_rdev
    return os.path.basename(os.path.realpath(
        f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"))


def m_maps(lab: Lab) -> None:
    """Maps that are not whole-LU multipath maps, on the reference LU r."""
    lab.reset("r")
    sd = lab.sysname("rA")
    size = int(Path(f"/sys/block/{sd}/size").read_text())
    dev_t = lab.dev_t("rA")
    made: list[str] = []

    def create(name: str, table: str, uuid: str | None) -> str:
        cmd = ["dmsetup", "create", name, "--noudevsync", "--table", table]
        if uuid:
            cmd[3:3] = ["--uuid", uuid]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            return f"dmsetup failed: {r.stderr.strip()}"
        made.append(name)
        subprocess.run(["dmsetup", "mknodes", name], capture_output=True)
        return f"/dev/mapper/{name}"

    def try_register(dev: str) -> dict[str, Any]:
        if not dev.startswith("/"):
            return {"map": dev}
        fd = _open(dev)
        try:
            out = {"ioctl": register(fd, 0, KH),
                   "keys_on_LU": lab.keys("rA")["keys"]}
            lab.reset("r")
            out["sgio"] = sg(fd, pr_out_cdb(REGISTER), plist(0, KH))
            out["keys_on_LU_after_sgio"] = lab.keys("rA")["keys"]
            lab.reset("r")
            return out
        finally:
            os.close(fd)
    try:
        node = lab.sd_of("rA")
        parted = run(["sfdisk", "--no-reread", node], input="2048,8192\n")
        subprocess.run(["blockdev", "--rereadpt", node], capture_output=True)
        time.sleep(0.5)
        part = f"{sd}1"
        if os.path.exists(f"/sys/block/{sd}/{part}"):
            pdev = Path(f"/sys/block/{sd}/{part}/dev").read_text().strip()
            psize = int(Path(f"/sys/block/{sd}/{part}/size").read_text())
            rq = create("rpartrq", f"0 {psize} multipath 0 0 1 1 round-robin 0 1 1 {pdev} 1",
                        "mpath-probe-partrq")
            record("maps.mpath_rq_on_partition", "request-based multipath map over a "
                   "partition", rq)
            m = create("rpart", f"0 {psize} multipath 2 queue_mode bio 0 1 1 round-robin 0 1 1 "
                       f"{pdev} 1", "mpath-probe-part")
            dm = _dm_name(m) if m.startswith("/") else ""
            slaves = sorted(os.listdir(f"/sys/block/{dm}/slaves")) if dm else m
            record("maps.mpath_on_partition", "bio-based multipath map (uuid mpath-) over a "
                   "partition",
                   {"slaves": slaves, **try_register(m)})
        else:
            record("maps.mpath_on_partition", "no partition appeared", parted)
        half = create("rhalf", f"0 {size // 2} linear {dev_t} 2048", "LVM-probe")
        record("maps.linear_half", "dm linear over half the LU (an LVM volume): kernel "
               "REGISTER and SG_IO REGISTER as root", try_register(half))
        img = "/run/lio/loop.img"
        Path(img).write_bytes(bytes(1 << 20))
        loop = subprocess.run(["losetup", "-f", "--show", img], capture_output=True,
                              text=True).stdout.strip()
        if loop:
            ldev = Path(f"/sys/block/{os.path.basename(loop)}/dev").read_text().strip()
            m = create("rloop", f"0 2048 multipath 0 0 1 1 round-robin 0 1 1 {ldev} 1",
                       "mpath-probe-loop")
            fd = _open(m) if m.startswith("/") else -1
            if fd < 0:
                record("maps.mpath_on_loop", "multipath map over a loop device", m)
            else:
                record("maps.mpath_on_loop", "multipath map over a loop device (not SCSI)",
                       {"ioctl": register(fd, 0, KH), "sgio": sg(fd, TUR)})
                os.close(fd)
    finally:
        for name in reversed(made):
            subprocess.run(["dmsetup", "remove", name], capture_output=True)
        subprocess.run(["losetup", "-D"], capture_output=True)
        subprocess.run(["wipefs", "-a", "-q", lab.sd_of("rA")], capture_output=True)
        subprocess.run(["blockdev", "--rereadpt", lab.sd_of("rA")], capture_output=True)


MEASUREMENTS: list[tuple[str, Callable[[Lab], None]]] = [
    ("setup", m_setup), ("routing", m_routing), ("sgio", m_sgio), ("kernel", m_kernel),
    ("caps", m_caps), ("paths", m_paths), ("hybrid", m_hybrid),
    ("mpathpersist", m_mpathpersist), ("down", m_down), ("perpath", m_perpath),
    ("maps", m_maps),
]


def guest_main() -> int:
    out_dir = Path(os.environ.get("LAB_RESULTS", "."))
    lio = subprocess.run(["bash", str(HERE / "lio_setup.sh")], capture_output=True, text=True,
                         env={**os.environ, "LIO_LAYOUT": "multipath"})
    (out_dir / "lio_setup.log").write_text(lio.stderr)
    if lio.returncode:
        print(lio.stderr[-3000:], file=sys.stderr)
        return 1
    devices = json.loads(lio.stdout.strip().splitlines()[-1])
    subprocess.run(["udevadm", "settle", "--timeout=30"], capture_output=True)
    lab = Lab(devices)
    only = os.environ.get("PROBE_ONLY", "").split(",")
    for name, fn in MEASUREMENTS:
        if only != [""] and name not in only and name != "setup":
            continue
        try:
            fn(lab)
        except Exception:  # noqa: BLE001 - a probe records its own failure and goes on
            record(f"{name}.error", "measurement failed", traceback.format_exc()[-1500:])
    (out_dir / "mpath_probe.json").write_text(json.dumps(RECORDS, indent=1))
    return 0


def host_main(argv: list[str]) -> int:
    from lab import labvm
    only = os.environ.get("PROBE_ONLY", "")
    script = (f"export PYTHONPATH={HERE.parent} PROBE_ONLY={only}\ncd \"$LAB_RESULTS\"\n"
              f"exec {sys.executable} -m lab.mpath_probe\n")
    result = labvm.run_in_guest(script, 600.0, verbose_console=True)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr[-3000:])
    found = result.results_dir / "mpath_probe.json"
    if argv and found.exists():
        Path(argv[0]).write_text(found.read_text())
    print(f"[mpath_probe] rc={result.returncode} total={result.total_s:.0f}s "
          f"work dir {result.work_dir}", file=sys.stderr)
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(guest_main() if os.environ.get("LAB_IN_GUEST") else host_main(sys.argv[1:]))
