"""The privileged half: holds CAP_SYS_RAWIO and issues SG_IO, trusting nobody."""
