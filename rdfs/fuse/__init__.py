"""The kernel side: the only importer of pyfuse3 (operations, mount lifecycle)."""
