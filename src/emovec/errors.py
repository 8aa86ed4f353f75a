"""The one error type users see: a clear message and a non-zero exit, never a traceback."""


class EmovecError(Exception):
    """Bad input or an unusable setting, described so the user can fix it."""
