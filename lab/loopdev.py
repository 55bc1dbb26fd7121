"""Loop devices on the host: a cheap real block device (SG_IO reaches the loop driver and
fails there with EINVAL), optionally partitioned."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def losetup(image: Path, size: int, partitions: bool = False) -> str:
    with open(image, "wb") as f:
        f.truncate(size)
    if partitions:
        subprocess.run(["sfdisk", "-q", str(image)], input=b"label: dos\n,4M\n,4M\n",
                       check=True)
    args = ["losetup", "-f", "--show"] + (["-P"] if partitions else []) + [str(image)]
    dev = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()
    if partitions:
        # The partition scan of losetup -P is asynchronous here; partx adds them now.
        subprocess.run(["partx", "-a", dev], check=False, capture_output=True)
    return dev


def detach(dev: str) -> None:
    subprocess.run(["losetup", "-d", dev], check=False)


@contextlib.contextmanager
def loop_device(size: int = 16 << 20) -> Iterator[str]:
    """A loop device over a fresh image, detached and the image removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="prguard-loop-") as directory:
        dev = losetup(Path(directory) / "disk.img", size)
        try:
            yield dev
        finally:
            detach(dev)


def partition_node(disk: str, number: int, directory: Path) -> str:
    """A device node for partition `number` of `disk` (no udev here: mknod from sysfs)."""
    name = f"{os.path.basename(disk)}p{number}"
    sysdev = Path(f"/sys/block/{os.path.basename(disk)}/{name}/dev")
    deadline = time.monotonic() + 5
    while not sysdev.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sysdev} did not appear")
        time.sleep(0.05)
    major, minor = (int(x) for x in sysdev.read_text().split(":"))
    node = directory / name
    if not node.exists():
        os.mknod(node, 0o600 | 0o060000, os.makedev(major, minor))
    return str(node)


@contextlib.contextmanager
def opened(path: str, flags: int = os.O_RDWR) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
