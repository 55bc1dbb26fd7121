"""`prguard-client`: an operator's PR IN/OUT client for a running helper (prguard or
qemu-pr-helper). `decode` and `encode` are pure SPC-4 codecs; `cli` is the command."""
