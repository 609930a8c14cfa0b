"""Hostile input, failures and deadlines: what must never take the library down."""
