"""Errors a user can cause.  The CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input: unknown name, missing or corrupt file, shape mismatch, ...

    ``exit_code`` lets the CLI distinguish classes of failure (default 1).
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NonFiniteLoss(UserError):
    """Training produced a NaN or infinite loss (or weights); the last good checkpoint is kept."""

    exit_code = 3
