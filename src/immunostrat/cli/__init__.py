"""The `immunostrat` command line (Typer + rich): thin commands that parse, call one function
below and print.
"""

from immunostrat.cli.main import app, main

__all__ = ["app", "main"]
