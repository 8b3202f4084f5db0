"""The hash chain: intact chains verify; edits, rewrites and deletions are named by row."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from immunostrat.trial.audit import GENESIS, SYSTEM, Actor, append, row_hash, verify_chain
from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.ops import verify_audit


def _fill(engine: Engine, n: int) -> None:
    actor = Actor("alice", "investigator")
    with transaction(engine) as s:
        for i in range(n):
            append(s, actor, "update", "assessment", i, old={"sofa_total": i}, new={"sofa_total": i + 1})


def _disable_guard(engine: Engine) -> None:
    """What an attacker with database access would do first."""
    with transaction(engine) as s:
        if engine.dialect.name == "postgresql":
            s.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            s.execute(text("ALTER TABLE audit_head DISABLE TRIGGER USER"))
        else:
            for name in (
                "audit_log_no_update",
                "audit_log_no_delete",
                "audit_head_step",
                "audit_head_no_delete",
            ):
                s.execute(text(f"DROP TRIGGER {name}"))


def test_intact_chain_verifies(db_url: str) -> None:
    engine = get_engine(db_url)
    _fill(engine, 12)
    result = verify_audit(db_url)
    assert result.ok and result.rows_checked == 12 and result.first_bad_seq is None
    assert "intact" in str(result)


def test_edited_row_is_named(db_url: str) -> None:
    engine = get_engine(db_url)
    _fill(engine, 10)
    _disable_guard(engine)
    with transaction(engine) as s:
        s.execute(text("UPDATE audit_log SET new = :v WHERE seq = 6"), {"v": '{"sofa_total":0}'})
    result = verify_audit(db_url)
    assert not result.ok
    assert result.first_bad_seq == 6
    assert "row 6" in str(result)


def test_rewritten_row_with_recomputed_hash_is_named(db_url: str) -> None:
    engine = get_engine(db_url)
    _fill(engine, 10)
    _disable_guard(engine)
    with transaction(engine) as s:
        r = s.execute(text("SELECT * FROM audit_log WHERE seq = 4")).mappings().one()
        forged = row_hash(
            r["prev_hash"],
            4,
            r["at"],
            "mallory",
            r["role"],
            r["action"],
            r["entity"],
            r["entity_id"],
            r["old"],
            r["new"],
        )
        s.execute(text("UPDATE audit_log SET actor = 'mallory', hash = :h WHERE seq = 4"), {"h": forged})
    result = verify_audit(db_url)
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_deleted_rows_are_named(db_url: str) -> None:
    engine = get_engine(db_url)
    _fill(engine, 10)
    _disable_guard(engine)
    with transaction(engine) as s:
        s.execute(text("DELETE FROM audit_log WHERE seq = 3"))
    result = verify_audit(db_url)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "missing" in (result.problem or "")


def test_truncated_tail_is_detected(db_url: str) -> None:
    engine = get_engine(db_url)
    _fill(engine, 10)
    _disable_guard(engine)
    with transaction(engine) as s:
        s.execute(text("DELETE FROM audit_log WHERE seq >= 9"))
    result = verify_audit(db_url)
    assert (result.ok, result.first_bad_seq) == (False, 9)


def test_append_continues_the_chain_across_transactions(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    _fill(engine, 3)
    with transaction(engine) as s:
        row = append(s, SYSTEM, "create", "trial", 1, new={"code": "x"})
        assert row.seq == 4
    with transaction(engine) as s:
        assert verify_chain(s).ok


def test_truncate_and_a_rewound_or_deleted_head_are_refused(db_url: str) -> None:
    engine = get_engine(db_url)
    _fill(engine, 5)
    attacks = [
        "UPDATE audit_head SET seq = 0, hash = :genesis",
        "DELETE FROM audit_head",
        "DELETE FROM audit_log",
    ]
    if engine.dialect.name == "postgresql":
        attacks += ["TRUNCATE audit_log", "TRUNCATE audit_head", "UPDATE audit_head SET seq = seq + 1"]
    for sql in attacks:
        with pytest.raises(DBAPIError), transaction(engine) as s:
            s.execute(text(sql), {"genesis": GENESIS} if ":genesis" in sql else {})
    result = verify_audit(db_url)
    assert result.ok and result.rows_checked == 5


def test_swapped_rows_are_named(db_url: str) -> None:
    engine = get_engine(db_url)
    _fill(engine, 10)
    _disable_guard(engine)
    columns = ("at", "actor", "role", "action", "entity", "entity_id", "old", "new", "prev_hash", "hash")
    with transaction(engine) as s:
        rows = {
            r["seq"]: r for r in s.execute(text("SELECT * FROM audit_log WHERE seq IN (4, 5)")).mappings()
        }
        for seq, other in ((4, 5), (5, 4)):
            sets = ", ".join(f"{c} = :{c}" for c in columns)
            s.execute(
                text(f"UPDATE audit_log SET {sets} WHERE seq = :seq"), {**dict(rows[other]), "seq": seq}
            )
    result = verify_audit(db_url)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "contents of row 5" in (result.problem or "")


def test_edited_head_is_named(db_url: str) -> None:
    engine = get_engine(db_url)
    _fill(engine, 10)
    _disable_guard(engine)
    with transaction(engine) as s:
        s.execute(text("UPDATE audit_head SET hash = :h"), {"h": "f" * 64})
    result = verify_audit(db_url)
    assert (result.ok, result.first_bad_seq) == (False, 10)
    assert "head row was edited" in (result.problem or "")


def test_forged_row_beyond_the_head_is_named(db_url: str) -> None:
    engine = get_engine(db_url)
    _fill(engine, 10)
    with transaction(engine) as s:
        last = s.execute(text("SELECT hash FROM audit_log WHERE seq = 10")).scalar_one()
        forged = {
            "seq": 11,
            "at": "2026-01-01T00:00:00+00:00",
            "actor": "mallory",
            "role": "admin",
            "action": "update",
            "entity": "allocation",
            "entity_id": "1",
            "old": None,
            "new": "{}",
            "prev_hash": last,
            "hash": "e" * 64,
        }
        names = ", ".join(forged)
        values = ", ".join(f":{k}" for k in forged)
        s.execute(text(f"INSERT INTO audit_log ({names}) VALUES ({values})"), forged)
    result = verify_audit(db_url)
    assert (result.ok, result.first_bad_seq) == (False, 11)
    assert "forged" in (result.problem or "")
