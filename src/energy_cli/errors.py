"""The one exception type for mistakes a user can fix (bad override, missing data, wrong checkpoint).

The CLI prints it as a single line, `energy-ood: error: <message>`, and exits with status 2; anything else
is a bug and keeps its traceback.
"""

import sys


class UserError(Exception):
    """A problem with the user's input; the message says what to do about it."""


class Interrupted(Exception):
    """A run stopped by SIGINT / SIGTERM after saving a checkpoint it can be resumed from. The CLI prints
    the message (which names the command that resumes) and exits with `status` (128 + the signal)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


PROG = "energy-ood"

def fail(message: str, status: int = 2) -> None:
    """Print one line to stderr and exit: the way every user error ends."""
    message = " ".join(message.split())
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(status)
