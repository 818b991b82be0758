"""Errors the CLI reports as one line with exit code 2 (bad input, not a bug)."""


class MlrInputError(Exception):
    """A problem with what the user gave us: a missing file, an empty dataset, a wrong column.

    The message is one line that names the problem; ``mlr`` prints it and exits with code 2.
    """


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type name when it has none), for wrapping a
    library's exception into a one-line ``MlrInputError``."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def one_line(error: BaseException) -> str:
    """``error``'s type name and the first line of its message (the type name alone when it has
    none), for a cause whose type says as much as its message."""
    name, line = type(error).__name__, first_line(error)
    return name if line == name else f"{name}: {line}"
