"""`audit verify|checkpoint|keygen`: the hash-chained audit trail and its signed anchor file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from immunostrat.cli.output import fail
from immunostrat.errors import InputError

out = Console()
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)

DbOpt = Annotated[str, typer.Option("--db", help="Database URL: sqlite:///trial.db or postgresql://...")]
KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--key",
        help="Ed25519 key file (PEM; a public key is enough to verify). Default: "
        "IMMUNOSTRAT_ANCHOR_KEY_FILE, else the key in IMMUNOSTRAT_ANCHOR_KEY.",
    ),
]


def _say(text: str) -> None:
    # One line, never wrapped: the head hash is copied from it into a record kept elsewhere.
    out.print(text, soft_wrap=True, highlight=False, markup=False)


@audit_app.command("verify")
def verify(
    db: DbOpt,
    expect_head: Annotated[
        str | None,
        typer.Option(
            "--expect-head",
            help="A head hash recorded outside the database earlier: the chain must still hold it.",
        ),
    ] = None,
    anchor: Annotated[
        Path | None,
        typer.Option(
            "--anchor",
            help="Anchor file written by `audit checkpoint`: every signed checkpoint must still hold.",
        ),
    ] = None,
    key: KeyOpt = None,
) -> None:
    """Check the audit chain; names the first bad row (exit code 1 when broken, 2 when the database,
    the anchor file or the key cannot be read)."""
    from immunostrat.trial.anchor import verify_anchored, verify_snapshot

    try:
        result = verify_snapshot(db, expect_head)
        if not result.ok or anchor is None:
            _say(str(result))
            if not result.ok:
                raise typer.Exit(code=1)
            return
        anchored = verify_anchored(db, anchor, key)
    except InputError as error:
        fail(error)
    text = str(anchored)
    if anchored.ok and result.expected_head_seq is not None:
        text += f"; the recorded head is row {result.expected_head_seq}"
    _say(text)
    if not anchored.ok:
        raise typer.Exit(code=1)


@audit_app.command("checkpoint")
def checkpoint(
    db: DbOpt,
    anchor: Annotated[
        Path,
        typer.Option(
            "--anchor", help="Anchor file to append to (created when absent); keep it off the database host."
        ),
    ],
    key: KeyOpt = None,
) -> None:
    """Append a signed checkpoint (row, head hash, time) of the audit chain to the anchor file. Run
    it on a schedule (cron, a systemd timer); refused (exit 1) when the chain or an earlier
    checkpoint no longer verifies."""
    from immunostrat.trial.anchor import AnchorBroken
    from immunostrat.trial.anchor import checkpoint as sign_checkpoint

    try:
        cp = sign_checkpoint(db, anchor, key)
    except InputError as error:
        fail(error)
    except AnchorBroken as broken:
        _say(str(broken))
        raise typer.Exit(code=1) from None
    _say(f"checkpoint: row {cp.seq}, head {cp.head}, at {cp.at}, key {cp.key} -> {anchor}")


@audit_app.command("keygen")
def keygen(
    output: Annotated[Path, typer.Option("--output", help="Private key file to create (mode 0600).")],
) -> None:
    """Create the Ed25519 key that signs checkpoints (and FILE.pub, enough to verify). Keep it out
    of the database and off its backups."""
    from immunostrat.trial.anchor import generate_key, key_id

    try:
        public = generate_key(output)
    except InputError as error:
        fail(error)
    _say(f"wrote {output} (private, 0600) and {output}.pub; key id {key_id(public)}")
