"""The path opener: the process that opens the paths of dm-multipath maps."""
