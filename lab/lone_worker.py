"""The worker alone on fd argv[1] (one end of a socketpair the caller holds):

    python -m lab.lone_worker FD [--audit-log FILE] [--policy FILE] [-v]

This is how the tests play a compromised broker: they speak to the worker's end of the
channel directly. Not installed, not reachable from the QEMU socket. The audit log and
the policy are opened here as the launcher would (prguard/audit_setup.py).
"""

from __future__ import annotations

import argparse
import logging
import socket

from prguard.shared.policy_file import read_policy
from prguard.worker.main import AuditFile, AuditSetup, WorkerConfig, serve

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("fd", type=int)
    parser.add_argument("--audit-log")
    parser.add_argument("--policy")
    parser.add_argument("-v", action="count", default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.v else logging.WARNING,
                        format="%(message)s")
    audit = None
    if args.audit_log or args.policy:
        audit = AuditSetup(file=AuditFile(args.audit_log) if args.audit_log else None,
                           policy=read_policy(args.policy) if args.policy else None,
                           policy_path=args.policy)
    serve(socket.socket(fileno=args.fd),
          WorkerConfig(identity=None, sg_timeout_ms=30000, threads=4, per_device=2,
                       audit=audit))
