"""The ``mace`` command line (typer): erase, add, status, artifacts, generate."""
