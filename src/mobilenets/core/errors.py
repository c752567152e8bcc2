"""The one exception type users see: its message names the file or argument, the problem and the fix."""


class MobilenetsError(Exception):
    """Raised for bad input (files, folders, arguments); the CLI prints it as one line, no traceback."""
