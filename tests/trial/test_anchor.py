"""Signed checkpoints outside the database: what the chain alone cannot show (a rewrite of a row with
every later hash and the head, the tail deleted and the head reset, a wipe to genesis) is caught
against the anchor file, on SQLite and PostgreSQL; the anchor file itself cannot be edited unseen."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from immunostrat.cli import app
from immunostrat.errors import InputError
from immunostrat.trial.anchor import (
    KEY_ENV,
    KEY_FILE_ENV,
    AnchorBroken,
    checkpoint,
    generate_key,
    verify_anchored,
    verify_snapshot,
)
from immunostrat.trial.audit import GENESIS, Actor, append, row_hash
from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.ops import verify_audit

runner = CliRunner()


def _fill(engine: Engine, n: int, actor: str = "alice") -> None:
    who = Actor(actor, "investigator")
    with transaction(engine) as s:
        for i in range(n):
            append(s, who, "update", "assessment", i, old={"sofa_total": i}, new={"sofa_total": i + 1})


def _disable_guard(engine: Engine) -> None:
    """What someone who can write the database does first: switch off the append-only triggers."""
    with transaction(engine) as s:
        if engine.dialect.name == "postgresql":
            s.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            s.execute(text("ALTER TABLE audit_head DISABLE TRIGGER USER"))
        else:
            names = s.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars().all()
            for name in names:
                s.execute(text(f'DROP TRIGGER "{name}"'))


def _rewrite_from(engine: Engine, seq: int, actor: str) -> None:
    """Rewrite row ``seq`` (a new actor) and recompute every later hash and the head: the chain
    verifies afterwards."""
    with transaction(engine) as s:
        rows = s.execute(text("SELECT * FROM audit_log WHERE seq >= :s ORDER BY seq"), {"s": seq}).mappings()
        rows = [dict(r) for r in rows]
        prev = rows[0]["prev_hash"]
        for r in rows:
            who = actor if r["seq"] == seq else r["actor"]
            digest = row_hash(
                prev,
                r["seq"],
                r["at"],
                who,
                r["role"],
                r["action"],
                r["entity"],
                r["entity_id"],
                r["old"],
                r["new"],
            )
            s.execute(
                text("UPDATE audit_log SET actor = :a, prev_hash = :p, hash = :h WHERE seq = :s"),
                {"a": who, "p": prev, "h": digest, "s": r["seq"]},
            )
            prev = digest
        s.execute(text("UPDATE audit_head SET hash = :h"), {"h": prev})


def _reset_head(engine: Engine, keep: int) -> None:
    """Delete the rows after ``keep`` and point the head at the last one left (or at genesis)."""
    with transaction(engine) as s:
        s.execute(text("DELETE FROM audit_log WHERE seq > :k"), {"k": keep})
        last = s.execute(text("SELECT hash FROM audit_log WHERE seq = :k"), {"k": keep}).scalar()
        s.execute(text("UPDATE audit_head SET seq = :k, hash = :h"), {"k": keep, "h": last or GENESIS})


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "anchor.pem"
    path.parent.mkdir()
    generate_key(path)
    return path


def _anchored(db_url: str, anchor: Path, key: Path, rows: int = 10) -> Engine:
    engine = get_engine(db_url)
    _fill(engine, rows // 2)
    checkpoint(db_url, anchor, key)
    _fill(engine, rows - rows // 2)
    checkpoint(db_url, anchor, key)
    return engine


def test_intact_chain_holds_every_checkpoint(db_url: str, tmp_path: Path, key: Path) -> None:
    anchor = tmp_path / "anchor.jsonl"
    engine = _anchored(db_url, anchor, key)
    _fill(engine, 3)  # written after the last checkpoint: fine, and counted
    result = verify_anchored(db_url, anchor, key)
    assert result.ok and result.checkpoints == 2 and result.last is not None and result.last.seq == 10
    assert "3 row(s) written since are not anchored yet" in str(result)
    # verifying needs only the public key
    assert verify_anchored(db_url, anchor, Path(f"{key}.pub")).ok


def test_full_rewrite_with_recomputed_hashes_and_head(db_url: str, tmp_path: Path, key: Path) -> None:
    anchor = tmp_path / "anchor.jsonl"
    engine = _anchored(db_url, anchor, key)
    _disable_guard(engine)
    _rewrite_from(engine, 3, "mallory")
    assert verify_audit(db_url).ok  # the chain alone cannot see it
    result = verify_anchored(db_url, anchor, key)
    assert not result.ok and result.result.first_bad_seq == 1
    assert "rows 1..5 were rewritten" in str(result)


def test_rewrite_between_checkpoints_names_the_range(db_url: str, tmp_path: Path, key: Path) -> None:
    anchor = tmp_path / "anchor.jsonl"
    engine = _anchored(db_url, anchor, key)
    _disable_guard(engine)
    _rewrite_from(engine, 8, "mallory")
    assert verify_audit(db_url).ok
    result = verify_anchored(db_url, anchor, key)
    assert not result.ok and result.result.first_bad_seq == 6
    assert "rows 6..10 were rewritten" in str(result)


def test_tail_deleted_and_head_reset(db_url: str, tmp_path: Path, key: Path) -> None:
    anchor = tmp_path / "anchor.jsonl"
    engine = _anchored(db_url, anchor, key)
    _disable_guard(engine)
    _reset_head(engine, 7)
    assert verify_audit(db_url).ok
    result = verify_anchored(db_url, anchor, key)
    assert not result.ok and result.result.first_bad_seq == 8
    assert "rows 8..10 were deleted" in str(result)


def test_truncation_below_the_first_checkpoint(db_url: str, tmp_path: Path, key: Path) -> None:
    anchor = tmp_path / "anchor.jsonl"
    engine = _anchored(db_url, anchor, key)
    _disable_guard(engine)
    _reset_head(engine, 2)
    result = verify_anchored(db_url, anchor, key)
    assert not result.ok and "rows 3..5 were deleted" in str(result)


def test_wipe_to_genesis(db_url: str, tmp_path: Path, key: Path) -> None:
    anchor = tmp_path / "anchor.jsonl"
    engine = _anchored(db_url, anchor, key)
    _disable_guard(engine)
    _reset_head(engine, 0)
    alone = verify_audit(db_url)
    assert alone.ok and alone.rows_checked == 0
    result = verify_anchored(db_url, anchor, key)
    assert not result.ok and "every row was deleted (a wipe back to genesis)" in str(result)


def test_wipe_and_refill_with_as_many_rows(db_url: str, tmp_path: Path, key: Path) -> None:
    anchor = tmp_path / "anchor.jsonl"
    engine = _anchored(db_url, anchor, key)
    _disable_guard(engine)
    _reset_head(engine, 0)
    _fill(engine, 12, actor="mallory")  # a new history, longer than the anchored one
    assert verify_audit(db_url).ok
    result = verify_anchored(db_url, anchor, key)
    assert not result.ok and "rows 1..5 were rewritten" in str(result)


def test_checkpoint_refuses_a_log_that_no_longer_holds(sqlite_url: str, tmp_path: Path, key: Path) -> None:
    anchor = tmp_path / "anchor.jsonl"
    engine = _anchored(sqlite_url, anchor, key)
    _disable_guard(engine)
    _reset_head(engine, 4)
    before = anchor.read_text()
    with pytest.raises(AnchorBroken, match="not anchored"):
        checkpoint(sqlite_url, anchor, key)
    assert anchor.read_text() == before  # the tampered state was not blessed


def _lines(anchor: Path) -> list[dict]:
    return [json.loads(line) for line in anchor.read_text().splitlines()]


def _write(anchor: Path, lines: list[dict]) -> None:
    anchor.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))


def test_anchor_file_edits_are_caught(sqlite_url: str, tmp_path: Path, key: Path) -> None:
    anchor = tmp_path / "anchor.jsonl"
    engine = _anchored(sqlite_url, anchor, key)
    _fill(engine, 2)
    checkpoint(sqlite_url, anchor, key)
    original = _lines(anchor)
    assert [line["seq"] for line in original] == [5, 10, 12]

    edited = [dict(line) for line in original]
    edited[1]["seq"] = 4  # lower the anchored row to hide a truncation
    _write(anchor, edited)
    result = verify_anchored(sqlite_url, anchor, key)
    assert not result.ok and "line 2: the signature does not verify" in str(result)

    _write(anchor, [original[0], original[2]])  # a checkpoint removed
    result = verify_anchored(sqlite_url, anchor, key)
    assert not result.ok and "line 2 does not follow the line before it" in str(result)

    _write(anchor, original[:2])  # the last line removed: still a valid prefix, older rows hold
    assert verify_anchored(sqlite_url, anchor, key).ok

    other = tmp_path / "other.pem"
    generate_key(other)
    _write(anchor, original)
    result = verify_anchored(sqlite_url, anchor, other)  # lines forged with another key
    assert not result.ok and "signed with another key" in str(result)


def test_key_from_the_environment_and_never_overwritten(
    sqlite_url: str, tmp_path: Path, key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    anchor = tmp_path / "anchor.jsonl"
    _fill(get_engine(sqlite_url), 3)
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    with pytest.raises(InputError, match="no anchor key"):
        checkpoint(sqlite_url, anchor, None)
    monkeypatch.setenv(KEY_FILE_ENV, str(key))
    assert checkpoint(sqlite_url, anchor, None).seq == 3
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    monkeypatch.delenv(KEY_FILE_ENV)
    monkeypatch.setenv(KEY_ENV, base64.b64encode(raw).decode())
    assert verify_anchored(sqlite_url, anchor, None).ok
    with pytest.raises(InputError, match="exists already"):
        generate_key(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(InputError, match="cannot sign"):
        checkpoint(sqlite_url, anchor, Path(f"{key}.pub"))


def test_cli_checkpoint_and_verify_with_anchor(sqlite_url: str, tmp_path: Path) -> None:
    key = tmp_path / "anchor.pem"
    anchor = tmp_path / "anchor.jsonl"
    made = runner.invoke(app, ["audit", "keygen", "--output", str(key)])
    assert made.exit_code == 0, made.output
    engine = get_engine(sqlite_url)
    _fill(engine, 6)
    signed = runner.invoke(
        app, ["audit", "checkpoint", "--db", sqlite_url, "--anchor", str(anchor), "--key", str(key)]
    )
    assert signed.exit_code == 0 and "checkpoint: row 6" in signed.stdout, signed.output
    pub = f"{key}.pub"
    ok = runner.invoke(app, ["audit", "verify", "--db", sqlite_url, "--anchor", str(anchor), "--key", pub])
    assert ok.exit_code == 0 and "1 signed checkpoint(s) hold" in ok.stdout, ok.output
    _disable_guard(engine)
    _reset_head(engine, 3)
    alone = runner.invoke(app, ["audit", "verify", "--db", sqlite_url])
    assert alone.exit_code == 0 and "intact" in alone.stdout
    caught = runner.invoke(
        app, ["audit", "verify", "--db", sqlite_url, "--anchor", str(anchor), "--key", pub]
    )
    assert caught.exit_code == 1 and "rows 4..6 were deleted" in caught.stdout, caught.output
    refused = runner.invoke(
        app, ["audit", "checkpoint", "--db", sqlite_url, "--anchor", str(anchor), "--key", str(key)]
    )
    assert refused.exit_code == 1 and "not anchored" in refused.stdout
    missing = runner.invoke(
        app, ["audit", "verify", "--db", sqlite_url, "--anchor", str(tmp_path / "none"), "--key", pub]
    )
    assert missing.exit_code == 2


def test_verification_while_rows_are_appended_sees_one_state(db_url: str) -> None:
    """Rows committed while the log is read are neither missed nor taken for forged ones (on
    PostgreSQL a READ COMMITTED read of the head, then of the rows, saw rows "beyond the head")."""
    engine = get_engine(db_url)
    _fill(engine, 3)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            _fill(engine, 1, actor="bob")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results = [verify_snapshot(db_url) for _ in range(25)]
    finally:
        stop.set()
        thread.join()
    assert [r.problem for r in results if not r.ok] == []
    assert results[-1].rows_checked > results[0].rows_checked  # the writer did write meanwhile
