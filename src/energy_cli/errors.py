"""The one exception type for mistakes a user can fix (bad override, missing data, wrong checkpoint).

The CLI prints it as a single line, `energy-ood: error: <message>`, and exits with status 2; anything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message says what to do about it."""
