"""The one error type for bad input from the user; ``main.py`` prints it as one line."""


class UserError(Exception):
    """A problem with what the user gave us (a file, a flag, the network), not a bug."""
