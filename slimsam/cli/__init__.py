"""The `slimsam` command line: `main.py` parses and dispatches, one module per subcommand, `errors.py` the user error."""
