"""The namespace's pure rules: safe names, entry specs, view rules (no I/O)."""
