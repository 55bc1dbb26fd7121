"""`make demo`: the fence_scsi story told through prguard-client in the lab VM."""
