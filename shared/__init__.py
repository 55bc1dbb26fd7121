"""Code both processes import: the QEMU wire protocol, the internal message schema,
SCSI constants and the request policy. Imports nothing from broker/ or worker/."""
