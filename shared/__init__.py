"""Code used by more than one of prguard's parts (the broker, the worker, the launcher,
the operator client), and by none of them alone: the sans-I/O QEMU wire protocol (broker
and client), the internal message schema, the request rules, fd inspection and passing,
privilege dropping and seccomp loading (broker and worker), SCSI constants (all).
Imports nothing from broker/, worker/, client/ or the launcher."""
