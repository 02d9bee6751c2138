"""The one user-facing error type."""


class UserError(Exception):
    """Bad input from the user (wrong name, missing file, impossible budget...).

    The CLI turns it into one line on stderr and exit code 2; anything else is an internal error
    (exit 1).
    """
