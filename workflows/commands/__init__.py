"""One module per ``expertbridge`` command group; :mod:`workflows.cli` puts them together."""
