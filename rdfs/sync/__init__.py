"""Keeping the store in step with the account: syncer, views, repair, archives, hooks."""
