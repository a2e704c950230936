"""The one exception type for bad input. Its message names the bad value and what would be accepted;
train.py prints it as one line and exits 1 instead of showing a traceback."""


class UserError(Exception):
    """A config value, file or dataset the user can fix."""
