"""The one exchange prguard-client makes: open the device, hand its fd to the helper with
one request, bring back the reply. The only code of the command that does I/O besides
printing."""

from __future__ import annotations

import os
from collections.abc import Callable

from prguard.client.arguments import Options
from prguard.client.session import Client, ConnectError
from prguard.shared.errors import QemuProtocolError
from prguard.shared.qemu_protocol import PrReply


class HelperError(Exception):
    """The device, the socket or the helper failed us before a reply: exit 3."""


def open_device(path: str, read_only: bool) -> int:
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except OSError as err:
        raise HelperError(f"cannot open {path}: {err.strerror}") from err


def exchange(options: Options, fd: int, log: Callable[[int, str], None]) -> PrReply:
    """Handshake, one request with `fd` attached, its reply. Raises HelperError."""
    request = options.request
    path = options.socket_path
    try:
        with Client(path, options.timeout, connect_timeout=options.timeout) as client:
            log(1, f"helper offers features {client.features:#x}; requesting none")
            cdb, params = client.send(request.cdb, fd, request.parameter_list)
            log(1, f"CDB {cdb.hex(' ')}")
            if params:
                log(1, f"parameter list ({len(params)} bytes) {params.hex(' ')}")
            return client.receive()
    except ConnectError as err:
        raise HelperError(f"cannot connect to {path}: {err.strerror or err}") from err
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
