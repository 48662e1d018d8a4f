"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class SteerError(Exception):
    """Bad input or an unmet precondition that the user can fix (no traceback is shown)."""
