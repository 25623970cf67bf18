"""The ``lorabench`` command line: one module per subcommand."""
