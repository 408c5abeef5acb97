"""Exceptions. Library code raises these with a message that names the fix; only the CLI
turns them into one-line messages and exit codes."""


class TempoError(ValueError):
    """Bad input or an impossible request; the message says how to fix it."""
