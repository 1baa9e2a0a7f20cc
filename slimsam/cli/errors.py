"""The error a subcommand raises for bad input: `slimsam` prints its one-line message and exits with code 2."""


class CliError(Exception):
    """A user error with a one-line explanation."""
