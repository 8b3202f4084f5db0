"""Writing result tables: format follows the extension; ``-`` is CSV on stdout; atomic on disk."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import polars as pl
import typer
from rich.console import Console

from immunostrat.errors import InputError

ERRORS = Console(stderr=True)


def fail(error: Exception, code: int = 2) -> NoReturn:
    """One line on stderr, no traceback, and the exit code (2: bad input; 1: refused by the service)."""
    message = str(error) if isinstance(error, InputError) else (getattr(error, "message", None) or str(error))
    ERRORS.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"  # every time in the program is UTC
FORMATS = {".csv": "csv", ".parquet": "parquet", ".json": "json"}


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, renamed only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _csv_ready(frame: pl.DataFrame) -> pl.DataFrame:
    nested = [n for n, t in frame.schema.items() if isinstance(t, pl.List | pl.Struct | pl.Object)]
    return (
        frame.with_columns([pl.col(n).map_elements(json.dumps, return_dtype=pl.String) for n in nested])
        if nested
        else frame
    )


def output_format(output: str, option: str = "--output") -> str:
    """The table format of an output path (csv, parquet or json; ``-`` is CSV on stdout), checked before
    any work so that a bad name fails at once; an InputError names ``option`` otherwise."""
    if output == "-":
        return "csv"
    kind = FORMATS.get(Path(output).suffix.lower())
    if kind is None:
        raise InputError(
            "unsupported output format",
            field=option,
            value=output,
            expected="a file ending in .csv, .parquet or .json, or - for stdout",
        )
    return kind


def write_table(frame: pl.DataFrame, output: str, records: list[dict[str, Any]] | None = None) -> None:
    """Write ``frame`` to ``output`` (.csv, .parquet, .json, or ``-`` for CSV on stdout).

    ``records``: the full nested form for JSON (else the frame's rows).
    """
    if output == "-":
        sys.stdout.write(_csv_ready(frame).write_csv(datetime_format=ISO_UTC))
        return
    path = Path(output)
    kind = output_format(output)
    if kind == "csv":
        atomic_write(path, lambda tmp: _csv_ready(frame).write_csv(tmp, datetime_format=ISO_UTC))
    elif kind == "parquet":
        atomic_write(path, lambda tmp: frame.write_parquet(tmp))
    else:
        data = records if records is not None else frame.to_dicts()
        atomic_write(
            path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        )
