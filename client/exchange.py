"""The one exchange prguard-client makes: open the device, hand its fd to the helper with
one request, bring back the reply, or say what failed before there was one. The command's
only I/O besides printing and the hints' look at the device and the socket."""

from __future__ import annotations

import errno as errnos
import os
from collections.abc import Callable
from dataclasses import dataclass

from prguard.client import hints
from prguard.client.command import PrCommand
from prguard.client.exit_status import ExitStatus, of_errno
from prguard.client.session import Client, ConnectError
from prguard.shared.errors import QemuProtocolError
from prguard.shared.qemu_protocol import PrReply


@dataclass(frozen=True)
class Failure:
    """No reply. kind: device (not opened), connect (socket not connected to), timeout
    (the helper did not answer in time), no-reply (it hung up or answered nonsense)."""

    kind: str
    message: str
    exit_status: int
    errno: int | None = None
    hints: tuple[str, ...] = ()

    @property
    def errno_name(self) -> str | None:
        return None if self.errno is None else errnos.errorcode.get(self.errno)


def open_device(command: PrCommand) -> int | Failure:
    flags = (os.O_RDONLY if command.read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        return os.open(command.device, flags)
    except OSError as err:
        return Failure("device", f"cannot open {command.device}: {err.strerror}",
                       of_errno(err.errno), err.errno,
                       tuple(hints.for_open(command, err.errno,
                                            hints.device_owner(command.device))))


def exchange(command: PrCommand, fd: int, log: Callable[[int, str], None]
             ) -> PrReply | Failure:
    """Handshake, one request with `fd` attached, its reply."""
    request = command.request
    path = command.socket_path
    try:
        with Client(path, command.timeout, connect_timeout=command.timeout) as client:
            log(1, f"helper offers features {client.features:#x}; requesting none")
            cdb, params = client.send(request.cdb, fd, request.parameter_list)
            log(1, f"CDB {cdb.hex(' ')}")
            if params:
                log(1, f"parameter list ({len(params)} bytes) {params.hex(' ')}")
            return client.receive()
    except ConnectError as err:
        return Failure("connect", f"cannot connect to {path}: {err.strerror or err}",
                       of_errno(err.errno), err.errno,
                       tuple(hints.for_connect(path, err.errno, hints.socket_facts(path))))
    except TimeoutError:
        return Failure("timeout", f"no answer from the helper on {path} within "
                                  f"{command.timeout:g} s", ExitStatus.TIMEOUT,
                       hints=tuple(hints.for_timeout(command)))
    except QemuProtocolError as err:
        return Failure("no-reply", f"no usable reply from the helper on {path}: "
                                   f"{err.reason}", ExitStatus.OTHER,
                       hints=tuple(hints.for_hang_up()))
    except OSError as err:
        # EPIPE/ECONNRESET: the helper dropped us, which is how it refuses a request.
        return Failure("no-reply", f"helper on {path} closed the connection: "
                                   f"{err.strerror or err}", ExitStatus.OTHER, err.errno,
                       tuple(hints.for_hang_up()))


def run(command: PrCommand, log: Callable[[int, str], None]) -> PrReply | Failure:
    fd = open_device(command)
    if isinstance(fd, Failure):
        return fd
    try:
        return exchange(command, fd, log)
    finally:
        os.close(fd)
