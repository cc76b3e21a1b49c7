"""Cloud adapters. They own collection names and topic paths, and translate cloud errors into
TransientError (retry) or PermanentError (never succeeds)."""
