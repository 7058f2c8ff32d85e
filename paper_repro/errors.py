"""The one exception type for a user's mistake.

The command line turns a ``UserError`` into a single line on stderr and exit status 2, with no
traceback: the message must say what was wrong and how to fix it. Anything else that escapes is a
bug in this package and keeps its traceback. It is a ``ValueError``, as Keras' own errors for bad
arguments are, so callers that catch those catch these.
"""


class UserError(ValueError):
    """Bad input from the user (a path, a name, a setting): the message says how to fix it."""
