"""A Real-Debrid emulator on 127.0.0.1 for tests, the demo and benchmarks.

    emu = Emulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.serve)
        emu.add_torrent("Movie (2020)", [FileSpec("/Movie.2020.mkv", 5 << 30)])
        ...  # talk to emu.api_url with emu.token

See ``core.Emulator`` for the control API, ``control.EmulatorControl`` for the same API over
HTTP (emulator in a subprocess), and ``python -m rdfs.emulator --help`` to run it standalone.
"""

from .content import synthetic_bytes
from .core import Emulator
from .model import Faults, FileSpec

__all__ = ["Emulator", "Faults", "FileSpec", "synthetic_bytes"]
