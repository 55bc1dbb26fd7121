"""prguard's named trace events: the launcher's -T option selects among them
(prguard/trace_option.py), the broker writes them (broker/trace.py)."""

EVENTS: dict[str, str] = {
    "prguard_client_connect": "a QEMU client connected (peer pid, uid, gid)",
    "prguard_client_close": "a client connection ended (reason)",
    "prguard_request": "a complete request arrived (opcode, service action, length)",
    "prguard_refused": "the broker answered a request itself (reason, status, sense)",
    "prguard_reply": "a reply went to the client (status, sense, data size)",
    "prguard_worker_lost": "the worker went away (reason)",
}
