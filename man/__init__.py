"""prguard(8) and prguard-client(1), generated from the option tables --help prints."""
