"""The ``genailab`` command line (typer). Entry point: :func:`main`."""

from genailab.cli.app import app, main

__all__ = ["app", "main"]
