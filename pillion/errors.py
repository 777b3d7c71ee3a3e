"""The one base class of user mistakes: bad config values, dataset files, model folders, run folders.

Every command catches `UserError` and prints its message as one line with a non-zero exit code,
never a traceback; the message names the key, file, row, field or tensor at fault. Errors that
are not the user's (a bug, a crashed worker) keep their traceback.
"""


class UserError(ValueError):
    """Raised for input the user can fix; the message is the whole report."""
