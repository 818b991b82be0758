"""Errors the CLI reports as one line with exit code 2 (bad input, not a bug)."""


class MlrInputError(Exception):
    """A problem with what the user gave us: a missing file, an empty dataset, a wrong column.

    The message is one line that names the problem; ``mlr`` prints it and exits with code 2.
    """
