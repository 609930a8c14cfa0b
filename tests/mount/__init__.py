"""Real FUSE mounts of rdfs in a subprocess, driven by real programs."""
