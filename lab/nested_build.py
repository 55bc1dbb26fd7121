"""Build, on the host, what the nested guest boots: an uncompressed vmlinux and an initramfs.

The lab's outer guest (virtme-ng, TCG) runs a second QEMU (TCG inside TCG) that boots the
same Debian kernel. LAB.md's measured recipe for a bearable boot: the uncompressed ELF
vmlinux (QEMU boots it through PVH), -machine q35, -cpu qemu64, qboot, mitigations=off, and
a small initramfs: static busybox for the shell, sg_persist with the libraries ldd finds,
the virtio-scsi and sd modules in `modprobe --show-depends` order, and lab/
nested_init.sh as /init. Both are built here, where it takes about a second, not in the
emulated guest; the outer guest sees them through its 9p share.

Needs: busybox-static (/bin/busybox must be static), sg3-utils (sg_persist), kmod (modprobe),
the kernel's image and modules (linux-image-amd64).
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
NESTED_INIT = HERE / "nested_init.sh"
BUSYBOX = "/bin/busybox"
SG_PERSIST = "/usr/bin/sg_persist"
# What the nested guest needs to see its virtio-scsi disk as /dev/sda. crct10dif_generic
# and crc64_rocksoft_generic give sd_mod's checksum libraries an algorithm to bind to
# (-cpu qemu64 has no PCLMUL, and there is no modprobe in the initramfs to find them).
MODULES = ("crct10dif_generic", "crc64_rocksoft_generic", "virtio_pci", "virtio_scsi",
           "sd_mod")


class NestedBuildError(RuntimeError):
    """Something the nested guest needs is missing on the host (message says which package)."""


@dataclass(frozen=True)
class NestedImages:
    vmlinux: Path
    initramfs: Path
    modules: tuple[str, ...]


def extract_vmlinux(bzimage: Path, out: Path) -> None:
    """The ELF vmlinux inside a bzImage (Debian compresses it with xz)."""
    data = bzimage.read_bytes()
    offset = data.find(b"\xfd7zXZ\x00")
    if offset < 0:
        raise NestedBuildError(f"{bzimage}: no xz stream found (not a Debian bzImage?)")
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[offset:])
    if not elf.startswith(b"\x7fELF"):
        raise NestedBuildError(f"{bzimage}: the xz payload is not an ELF vmlinux")
    out.write_bytes(elf)


class Cpio:
    """A minimal "newc" cpio writer (what the kernel unpacks as an initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.seen: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        header = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0))
        self.ino += 1
        self.buf.write(header.encode() + name.encode() + b"\0")
        self.buf.write(bytes(-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(bytes(-self.buf.tell() % 4))

    def directory(self, name: str) -> None:
        name = name.strip("/")
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub and sub not in self.seen:
                self.seen.add(sub)
                self._entry(sub, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        self.seen.add(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        self.seen.add(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _ldd(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs: list[str] = []
    for line in out.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0]
        if path.startswith("/"):
            libs.append(path)
    return libs


def module_paths(version: str) -> list[str]:
    """The .ko files to insmod, in dependency order, each once."""
    if shutil.which("modprobe") is None:
        raise NestedBuildError("modprobe not found: install kmod")
    ordered: list[str] = []
    for module in MODULES:
        r = subprocess.run(["modprobe", "-S", version, "--show-depends", module],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise NestedBuildError(f"modprobe --show-depends {module}: {r.stderr.strip()}")
        for line in r.stdout.splitlines():
            words = line.split()
            if words and words[0] == "insmod" and words[1] not in ordered:
                ordered.append(words[1])
    return ordered


def build(out_dir: Path, bzimage: Path, version: str) -> NestedImages:
    """Write vmlinux and initramfs.cpio.gz into out_dir."""
    if not os.path.isfile(BUSYBOX) or not is_static_elf(Path(BUSYBOX)):
        raise NestedBuildError(f"{BUSYBOX} missing or not static: install busybox-static")
    if not os.path.isfile(SG_PERSIST):
        raise NestedBuildError(f"{SG_PERSIST} missing: install sg3-utils")
    out_dir.mkdir(parents=True, exist_ok=True)
    vmlinux = out_dir / "vmlinux"
    extract_vmlinux(bzimage, vmlinux)

    cpio = Cpio()
    for d in ("dev", "proc", "sys", "tmp", "bin", "sbin", "usr/bin", "lib", "lib64"):
        cpio.directory(d)
    cpio.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    cpio.file("init", NESTED_INIT.read_bytes(), 0o755)
    cpio.file(SG_PERSIST, Path(SG_PERSIST).read_bytes(), 0o755)
    for lib in _ldd(SG_PERSIST):
        real = os.path.realpath(lib)
        cpio.file(real, Path(real).read_bytes(), 0o755)
        if real != lib:
            cpio.symlink(lib, real)
    modules = module_paths(version)
    names: list[str] = []
    for ko in modules:
        name = f"lib/modules/{os.path.basename(ko)}"
        cpio.file(name, Path(ko).read_bytes())
        names.append("/" + name)
    cpio.file("modules.order", ("\n".join(names) + "\n").encode())
    initramfs = out_dir / "initramfs.cpio.gz"
    initramfs.write_bytes(gzip.compress(cpio.finish(), compresslevel=1))
    return NestedImages(vmlinux, initramfs, tuple(names))


def is_static_elf(path: Path) -> bool:
    """An ELF64 executable without a PT_INTERP program header (no dynamic loader)."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        start = phoff + i * phentsize
        if int.from_bytes(data[start:start + 4], "little") == 3:  # PT_INTERP
            return False
    return True
