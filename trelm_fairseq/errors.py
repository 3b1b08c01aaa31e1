"""One exception type for every user-facing error, and the CLI wrapper that prints it."""
import functools
import sys


class TreLMError(Exception):
    """Bad input or state the user can fix: the message names the file / line /
    field and what was expected.  CLIs print it without a traceback and exit 2."""


def cli_errors(main):
    """Decorator for console-script entry points: TreLMError -> message + exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except TreLMError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
