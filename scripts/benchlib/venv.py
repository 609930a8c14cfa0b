"""Run a script with the project's ``.venv`` Python, setting the machine up first when needed.

Imported before anything outside the standard library, so that ``scripts/bench`` and friends
work on a fresh machine: ``scripts/bootstrap`` (idempotent: Debian packages, ``.venv``, the
package) runs once, then the script re-executes itself with ``.venv/bin/python``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def enter_project_venv() -> None:
    """Re-execute the running script under ``.venv/bin/python`` unless it already runs there."""
    if Path(sys.prefix).resolve() == (REPO / ".venv").resolve():
        return
    subprocess.run([str(REPO / "scripts" / "bootstrap")], check=True)
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
