"""Importing prometheus-client without the standard library's HTTP and TLS stacks.

The package's `__init__` imports its exposition module, and that imports what its HTTP
server, WSGI and ASGI apps and push-gateway client need (http.server, socketserver,
ssl, urllib.request, wsgiref, gzip, and through them email, http.client, json, ...):
about 3.7 MiB of the broker's memory (PSS), against 0.6 MiB for the library itself.
The broker only builds metric families and writes the text format to a file.

So, for the duration of the import only, those modules are stand-ins: module objects
whose names the library's own modules bind at import time (classes it subclasses are
empty classes). Nothing the broker calls reaches them. Modules already imported are
left as they are, and the stand-ins are removed from sys.modules afterwards, so a later
`import ssl` anywhere gets the real one. If the library ever needs more of them at
import time, the import fails, everything it touched is forgotten, and the caller
imports it the ordinary way (the cost above, nothing worse).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

#: module -> the names prometheus-client's modules import from it (classes as empty
#: classes, anything else as None).
STAND_INS: dict[str, dict[str, type | None]] = {
    "http.server": {"BaseHTTPRequestHandler": type},
    "socketserver": {"ThreadingMixIn": type},
    "ssl": {"SSLContext": type, "TLSVersion": type, "Purpose": type, "CERT_REQUIRED": None,
            "PROTOCOL_TLS_SERVER": None, "PROTOCOL_TLS_CLIENT": None},
    "gzip": {},
    "urllib.error": {"HTTPError": type},
    "urllib.request": {"BaseHandler": type, "build_opener": None, "HTTPHandler": type,
                       "HTTPRedirectHandler": type, "HTTPSHandler": type, "Request": type},
    "wsgiref": {},
    "wsgiref.simple_server": {"make_server": None, "WSGIRequestHandler": type,
                              "WSGIServer": type},
}


def _stand_in(name: str, names: dict[str, type | None]) -> types.ModuleType:
    module = types.ModuleType(name, "a stand-in (prguard.broker.lean_import)")
    for attr, kind in names.items():
        setattr(module, attr, type(attr, (), {}) if kind is type else None)
    return module


@contextlib.contextmanager
def without_servers(package: str = "prometheus_client") -> Iterator[None]:
    """Within: the stand-ins are importable. When the import fails for want of one, the
    package's modules and the stand-ins are forgotten (sys.modules as before) and the
    error is raised."""
    added = [name for name in STAND_INS if name not in sys.modules]
    for name in added:
        sys.modules[name] = _stand_in(name, STAND_INS[name])
    try:
        yield
    except (ImportError, AttributeError, TypeError):  # what a missing stand-in raises
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        raise
    finally:
        for name in added:
            if getattr(sys.modules.get(name), "__doc__", "").startswith("a stand-in"):
                del sys.modules[name]
