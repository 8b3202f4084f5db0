"""The optional extras (heavy engines kept out of the default install) and the one check that says
which extra a missing module belongs to and how to install it (it imports nothing of ours).

Every other dependency is in the default install; only these two engines stay optional because
each weighs hundreds of megabytes and only one command path needs it.
"""

from __future__ import annotations

import importlib.util

# extra name -> the modules it provides (pyproject.toml [project.optional-dependencies])
EXTRAS: dict[str, tuple[str, ...]] = {
    "spark": ("pyspark",),
    "jax": ("jax",),
}


class MissingExtraError(ImportError):
    """An optional extra is not installed; the message names it and the command that installs it."""


def install_command(extra: str) -> str:
    """The command that installs ``extra`` into the environment made by the README's set-up (the
    pinned ``requirements-<extra>.lock``)."""
    return f"python3 tasks.py extra {extra}"


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # an import hook refusing it, or sys.modules[name] = None
        return False


def missing_modules(extra: str) -> list[str]:
    return [name for name in EXTRAS[extra] if not _importable(name)]


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` when a module of ``extra`` is not importable; ``what`` names
    the feature that needs it (``"--engine spark"``)."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(
            f"{what} needs the optional extra '{extra}' ({', '.join(missing)} is not installed); "
            f"install it with: {install_command(extra)}",
            name=missing[0],
        )
