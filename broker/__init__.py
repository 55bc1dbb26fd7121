"""The unprivileged half: owns the QEMU socket, validates, forwards to the worker."""
