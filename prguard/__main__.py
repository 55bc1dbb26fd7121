from prguard.main import entry

entry()
