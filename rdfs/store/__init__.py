"""The store: the only code that runs SQL (the metadata database and the probe cache)."""
