"""Errors a user can act on: the CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or a mistaken option: the message says what is wrong and what to do."""
