"""The seccomp policies, as data: `worker.policy`, `broker.policy`, `janitor.policy` and
`opener.policy`
beside this file.

Installed as the package `prguard.seccomp` so the policies travel with the code; read
with `policy_text(role)` before a process locks itself down.
"""

from importlib import resources

ROLES = ("broker", "worker", "janitor", "opener")


def policy_text(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"no seccomp policy for {role!r}")
    return resources.files(__name__).joinpath(f"{role}.policy").read_text(encoding="utf-8")
