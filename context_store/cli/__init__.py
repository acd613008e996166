"""The ``context-store`` command line (click). Entry point: ``context_store.cli.main:main``."""

from .main import cli, main

__all__ = ["cli", "main"]
