"""Use cases. Each function's entry point calls exactly one of these."""
