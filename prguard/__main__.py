"""`python -m prguard`: argv[0] would be this file's path; name the program instead."""

import sys

from prguard.main import main

sys.exit(main(["prguard", *sys.argv[1:]]))
