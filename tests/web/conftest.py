"""The page tests' fixtures (defined in ``webworld``: the server, the seeded trial, the browser)."""

from webworld import browser, web

__all__ = ["browser", "web"]
