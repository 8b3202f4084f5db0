"""Hash-chained, append-only audit trail.

Every create, update and view of unblinded data appends one row (who, when, what, old and new
values). Row ``n`` stores ``hash = sha256(prev_hash + canonical JSON of its fields)`` and the hash of
row ``n - 1`` as ``prev_hash``; sequence numbers have no gaps, and a one-row head table holds the
last sequence number and hash. Any edit, insertion or deletion therefore breaks the chain, and
:func:`verify_chain` names the first bad row. The database also refuses UPDATE and DELETE on the
table (a trigger, see the initial migration).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from immunostrat.trial.models import AuditHead, AuditRow, Base

GENESIS = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who does something: a user with a role (or the system itself at set-up)."""

    username: str
    role: str
    user_id: int | None = None
    site_id: int | None = None


SYSTEM = Actor("system", "system")


# Built once (SQLAlchemy keeps a prebuilt statement's cache key and compiled form): every write of
# the service appends here, holding the head's lock from the read to the commit.
_log = Base.metadata.tables["audit_log"]
_head = Base.metadata.tables["audit_head"]
_HEAD_FOR_UPDATE = select(_head.c.seq, _head.c.hash).where(_head.c.id == 1).with_for_update()
_ADD_ROW = insert(_log).values({c.name: bindparam(c.name) for c in _log.c})
_MOVE_HEAD = (
    update(_head).where(_head.c.id == 1).values(seq=bindparam("head_seq"), hash=bindparam("head_hash"))
)
_ADD_ROW_MOVING_HEAD = _ADD_ROW.add_cte(_MOVE_HEAD.cte("move_head"))
"""PostgreSQL runs an UPDATE inside a WITH: the row and the head in one round trip."""


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def canonical(value: Any) -> str | None:
    """Deterministic JSON (sorted keys, no spaces); None stays None."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default, ensure_ascii=False)


def row_hash(
    prev_hash: str,
    seq: int,
    at: str,
    actor: str,
    role: str,
    action: str,
    entity: str,
    entity_id: str,
    old: str | None,
    new: str | None,
) -> str:
    body = json.dumps(
        [seq, at, actor, role, action, entity, entity_id, old, new],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    """One appended audit row as written."""

    seq: int
    at: str
    actor: str
    role: str
    action: str
    entity: str
    entity_id: str
    old: str | None
    new: str | None
    prev_hash: str
    hash: str


def append(
    session: Session,
    actor: Actor,
    action: str,
    entity: str,
    entity_id: Any,
    old: Any = None,
    new: Any = None,
) -> AuditRecord:
    """Append one audit row in the caller's transaction (the head row is locked until commit).

    Table statements, not ORM objects, and on PostgreSQL the row and the head in one round trip:
    the head's lock is held from here to the commit."""
    head = session.execute(_HEAD_FOR_UPDATE).one()
    seq = head.seq + 1
    at = datetime.now(UTC).isoformat(timespec="microseconds")
    old_s, new_s = canonical(old), canonical(new)
    digest = row_hash(
        head.hash, seq, at, actor.username, actor.role, action, entity, str(entity_id), old_s, new_s
    )
    record = AuditRecord(
        seq, at, actor.username, actor.role, action, entity, str(entity_id), old_s, new_s, head.hash, digest
    )
    moved = {"head_seq": seq, "head_hash": digest}
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_ADD_ROW_MOVING_HEAD, asdict(record) | moved)
    else:
        session.execute(_ADD_ROW, asdict(record))
        session.execute(_MOVE_HEAD, moved)
    return record


@dataclass(frozen=True)
class AuditVerification:
    """The result of checking the chain: ``first_bad_seq`` names the first bad row (None when intact)."""

    ok: bool
    rows_checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head_hash: str | None = None
    """The last row's hash when intact: record it outside the database (a report, a ticket) so that
    even a rewrite of the whole tail together with the head row can be detected later."""
    expected_head_seq: int | None = None
    """The row whose hash is the head recorded earlier (``audit verify --expect-head``), when found."""

    def __str__(self) -> str:
        if not self.ok and self.first_bad_seq is None:
            return f"audit chain broken: {self.problem}"
        if not self.ok:
            return f"audit chain broken at row {self.first_bad_seq}: {self.problem}"
        text = f"audit chain intact: {self.rows_checked} rows, head {self.head_hash}"
        if self.expected_head_seq is not None:
            since = self.rows_checked - self.expected_head_seq
            text += f"; the recorded head is row {self.expected_head_seq}, {since} row(s) appended since"
        return text


def _digest(row: AuditRow, seq: int) -> str:
    return row_hash(
        row.prev_hash,
        seq,
        row.at,
        row.actor,
        row.role,
        row.action,
        row.entity,
        row.entity_id,
        row.old,
        row.new,
    )


def verify_chain(session: Session) -> AuditVerification:
    """Recompute every hash in order; report the first row that was changed, moved, inserted or
    deleted, and a head row that does not point at the last row."""
    head = session.get(AuditHead, 1)
    expected_seq = 1
    prev_hash = GENESIS
    checked = 0
    stmt = select(AuditRow).order_by(AuditRow.seq).execution_options(yield_per=2000)
    for row in session.scalars(stmt):
        if row.seq != expected_seq:
            missing = (
                f"row {expected_seq} is missing (deleted)"
                if row.seq > expected_seq
                else f"row {row.seq} appears out of order"
            )
            return AuditVerification(False, checked, expected_seq, missing)
        if head is not None and row.seq > head.seq:
            # the service moves the head with every row it writes: this one came from elsewhere
            return AuditVerification(
                False,
                checked,
                row.seq,
                f"row {row.seq} lies beyond the recorded head (row {head.seq}): "
                "written outside the service (forged)",
            )
        if _digest(row, row.seq) != row.hash:
            # contents that hash correctly under a neighbour's number were moved, not edited
            moved = next(
                (
                    other
                    for other in (row.seq + 1, row.seq - 1)
                    if other >= 1 and _digest(row, other) == row.hash
                ),
                None,
            )
            if moved is not None:
                return AuditVerification(
                    False, checked, row.seq, f"row {row.seq} holds the contents of row {moved} (rows swapped)"
                )
            return AuditVerification(
                False, checked, row.seq, "contents do not match the stored hash (edited)"
            )
        if row.prev_hash != prev_hash:
            # both rows hash correctly on their own: the earlier one was rewritten with a recomputed
            # hash (or this row's link was, and its hash with it)
            bad = row.seq - 1 if row.seq > 1 else row.seq
            return AuditVerification(
                False,
                checked,
                bad,
                f"row {row.seq} records prev_hash {row.prev_hash[:12]}..., "
                f"but row {row.seq - 1} hashes to {prev_hash[:12]}... (row {bad} was rewritten)",
            )
        prev_hash = row.hash
        expected_seq += 1
        checked += 1
    if head is None:
        return AuditVerification(False, checked, expected_seq, "the audit head row is missing")
    last = expected_seq - 1
    if head.seq > last:
        return AuditVerification(
            False, checked, last + 1, f"rows {last + 1}..{head.seq} are missing (deleted from the end)"
        )
    if head.hash != prev_hash:
        return AuditVerification(
            False,
            checked,
            last,
            f"the head records hash {head.hash[:12]}... for row {last}, which hashes to "
            f"{prev_hash[:12]}... (the head row was edited)",
        )
    return AuditVerification(True, checked, head_hash=prev_hash)
