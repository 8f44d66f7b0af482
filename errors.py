"""The one error type for bad input from the user; ``main.py`` prints it as one line."""


class UserError(Exception):
    """A problem with what the user gave us (a file, a flag, the network), not a bug."""


def reason(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message (or its type's name), at most ``limit``
    characters: enough to say why, short enough for a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
