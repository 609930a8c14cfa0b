import sys

from rdfs.emulator.server import run_cli

raise SystemExit(run_cli(sys.argv[1:]))
