"""The one exception type for bad user input.

`research.main` prints a `UserError` as a single line (problem and fix) and exits with status 2,
instead of a traceback. Raise it for anything a user can fix: an unknown name in the config, a batch
that does not divide by the device count, a dataset that is not prepared, a checkpoint written by
another config, a workdir that cannot be written, a save that fails on a full disk. Filesystem
failures name the path and the cause in words ("No space left on device", "Permission denied").
"""


class UserError(Exception):
  """A problem in the user's config, flags or data, with the fix in the message."""
