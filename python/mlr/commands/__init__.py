"""``mlr`` subcommands, one module each, listed in ``mlr.cli.COMMANDS``.

A command module defines ``NAME`` (the subcommand), ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit code). It raises ``MlrInputError`` for bad input; the CLI turns
that into one ``mlr: error: ...`` line and exit code 2.
"""
