"""--audit-log, --audit-journal, --audit-sync, --audit-reads and --policy: opened and read
by the launcher, as root, before the fork (start-up step 2), so that a file that cannot
be used stops prguard with one line before anything else happens. The worker gets what
was opened; the broker closes its copies."""

from __future__ import annotations

from prguard import __version__, cli
from prguard.shared import policy_file
from prguard.shared.policy import PolicyError
from prguard.worker import main as worker_main


class AuditSetupError(Exception):
    """One line for stderr; `located` when it starts with FILE:LINE."""

    def __init__(self, message: str, located: bool = False) -> None:
        super().__init__(message)
        self.located = located


def open_audit(opts: cli.Options) -> worker_main.AuditSetup | None:
    """None when neither audit nor policy is asked for: prguard then behaves as before."""
    if opts.audit_log is None and not opts.audit_journal and opts.policy is None:
        return None
    policy = None
    if opts.policy is not None:
        try:
            policy = policy_file.read_policy(opts.policy)
        except PolicyError as exc:
            raise AuditSetupError(str(exc), located=True) from None
        except policy_file.PolicyFileError as exc:
            raise AuditSetupError(f"--policy: {exc}") from None
    audit_file = None
    if opts.audit_log is not None:
        try:
            audit_file = worker_main.AuditFile(opts.audit_log)
        except OSError as exc:
            raise AuditSetupError(f"cannot open the audit log {opts.audit_log}: "
                                  f"{exc.strerror or exc}") from None
    journal = None
    if opts.audit_journal:
        try:
            journal = worker_main.JournalSink()
        except OSError as exc:
            if audit_file is not None:
                worker_main.AuditSetup(file=audit_file).close()
            raise AuditSetupError(f"cannot reach the journal ({worker_main.JOURNAL_SOCKET}): "
                                  f"{exc.strerror or exc}") from None
    return worker_main.AuditSetup(file=audit_file, journal=journal, sync=opts.audit_sync,
                                  reads=opts.audit_reads, policy=policy,
                                  policy_path=opts.policy, version=__version__)
