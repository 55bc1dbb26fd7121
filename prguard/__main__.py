"""`python -m prguard`: argv[0] would be this file's path; name the program instead."""

import sys

from prguard.main import entry

sys.argv[0] = "prguard"
entry()
