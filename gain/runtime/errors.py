"""The one base class of every error a stage reports to its user as a single line (see gain.runtime.cli)."""


class StageError(Exception):
    """A problem the user can fix (a param, an input file, the tracking store, a download); the message
    names the file, key, value or step at fault."""


class InputError(StageError, ValueError):
    """An input file that is missing, unreadable or inconsistent with the others; the message names it."""
