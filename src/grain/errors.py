"""Errors for bad user input: each message names the value, what was expected and the fix."""


class GrainError(ValueError):
    """A problem with the user's configuration, data or checkpoint (shown without a traceback)."""
