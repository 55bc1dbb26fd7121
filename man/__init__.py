"""prguard(8), prguard-client(1) and prguard-audit(1), generated from the option tables
--help prints."""
