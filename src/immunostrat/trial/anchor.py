"""Signed checkpoints of the audit chain, kept outside the database.

The hash chain (:mod:`immunostrat.trial.audit`) shows any edit that leaves the later hashes alone,
but someone who can write the database can rewrite a row, every later hash and the head together,
delete the tail and reset the head, or wipe everything back to genesis: the chain then verifies.
A checkpoint fixes ``(seq, head hash, time)`` with an Ed25519 signature (RFC 8032) made with a key
that never lives in the database, appended as one JSON line to an *anchor file* the operator keeps
elsewhere (another host, write-once storage). Verifying the database against that file finds:

- rows deleted below a checkpoint (truncation, tail deletion with the head reset, a wipe);
- a rewrite at or before a checkpoint's row (its hash is no longer the signed one);
- an edited, reordered, removed or forged checkpoint line (each line is signed and carries the
  SHA-256 of the line before it).

Rows written after the last checkpoint are not anchored yet; the verification says how many.

Key: a PKCS#8 PEM file (``IMMUNOSTRAT_ANCHOR_KEY_FILE``, or ``--key``) or the environment variable
``IMMUNOSTRAT_ANCHOR_KEY`` (that PEM text, or the 32-byte private key in base64). Verifying needs only
the public key (a public PEM file), so an auditor can check without being able to sign.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from immunostrat.errors import InputError
from immunostrat.trial import service
from immunostrat.trial.audit import GENESIS, AuditVerification
from immunostrat.trial.db import is_sqlite
from immunostrat.trial.models import AuditHead, AuditRow
from immunostrat.trial.ops import existing_db

KEY_ENV = "IMMUNOSTRAT_ANCHOR_KEY"
KEY_FILE_ENV = "IMMUNOSTRAT_ANCHOR_KEY_FILE"
FORMAT_VERSION = 1
_SIGNED_FIELDS = ("v", "seq", "head", "at", "key", "prev")


class AnchorBroken(Exception):
    """The anchor file itself does not verify (a line edited, removed, reordered or forged)."""


# ------------------------------------------------------------------------------------------ keys


def generate_key(path: Path) -> Ed25519PublicKey:
    """Write a new Ed25519 private key (PKCS#8 PEM, mode 0600) to ``path``, which must not exist,
    and its public key next to it (``path`` + ``.pub``); returns the public key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError("the key file exists already: never overwritten", file=str(path)) from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public = key.public_key()
    Path(f"{path}.pub").write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return public


def _key_text(path: Path | None) -> tuple[bytes, str]:
    """The key material and where it came from: ``path``, else the key file named in the
    environment, else the key in the environment."""
    if path is None and os.environ.get(KEY_FILE_ENV):
        path = Path(os.environ[KEY_FILE_ENV])
    if path is not None:
        if not path.is_file():
            raise InputError("key file not found", file=str(path), field="key")
        return path.read_bytes(), str(path)
    inline = os.environ.get(KEY_ENV, "").strip()
    if inline:
        return inline.encode(), KEY_ENV
    raise InputError(
        "no anchor key",
        field="key",
        expected=f"--key FILE, {KEY_FILE_ENV}=FILE or {KEY_ENV} (never stored in the database)",
    )


def _load(material: bytes, origin: str) -> Ed25519PrivateKey | Ed25519PublicKey:
    if b"-----BEGIN" in material:
        loaded: Any
        try:
            loaded = (
                serialization.load_pem_public_key(material)
                if b"PUBLIC KEY" in material
                else serialization.load_pem_private_key(material, password=None)
            )
        except (ValueError, TypeError) as exc:
            raise InputError(f"not a readable PEM key: {exc}", file=origin, field="key") from None
        if not isinstance(loaded, Ed25519PrivateKey | Ed25519PublicKey):
            raise InputError("not an Ed25519 key", file=origin, field="key", value=type(loaded).__name__)
        return loaded
    try:
        raw = base64.b64decode(material.strip(), validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise InputError(
            "not an Ed25519 key", file=origin, field="key", expected="PEM, or 32 bytes in base64"
        )
    return Ed25519PrivateKey.from_private_bytes(raw)


def signing_key(path: Path | None = None) -> Ed25519PrivateKey:
    """The private key that signs checkpoints (see the module docstring for where it comes from)."""
    material, origin = _key_text(path)
    key = _load(material, origin)
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError("a public key cannot sign checkpoints", file=origin, field="key")
    return key


def verify_key(path: Path | None = None) -> Ed25519PublicKey:
    """The public key that checks checkpoints: from a public or a private key."""
    material, origin = _key_text(path)
    key = _load(material, origin)
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key: names the key in each line."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# ----------------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """One signed line of the anchor file: the chain had ``seq`` rows and head ``head`` at ``at``."""

    seq: int
    head: str
    at: str
    key: str
    prev: str
    sig: str
    line_no: int = 0

    def fields(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "seq": self.seq,
            "head": self.head,
            "at": self.at,
            "key": self.key,
            "prev": self.prev,
        }

    def line(self) -> str:
        return json.dumps({**self.fields(), "sig": self.sig}, separators=(",", ":"))


def _message(fields: dict[str, Any]) -> bytes:
    return json.dumps({k: fields[k] for k in _SIGNED_FIELDS}, sort_keys=True, separators=(",", ":")).encode()


def _line_digest(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def read_anchor(path: Path, public: Ed25519PublicKey) -> list[Checkpoint]:
    """Every checkpoint of the file, each signature and each link to the line before checked;
    :class:`AnchorBroken` names the first line that does not verify."""
    if not path.is_file():
        raise InputError("anchor file not found", file=str(path), field="anchor")
    checkpoints: list[Checkpoint] = []
    prev = GENESIS
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"anchor file line {number}"
        try:
            data = json.loads(text)
            fields = {k: data[k] for k in _SIGNED_FIELDS}
            cp = Checkpoint(
                int(data["seq"]),
                str(data["head"]),
                str(data["at"]),
                str(data["key"]),
                str(data["prev"]),
                str(data["sig"]),
                number,
            )
            signature = base64.b64decode(cp.sig, validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise AnchorBroken(f"{where} is not a checkpoint (edited or damaged)") from None
        try:
            public.verify(signature, _message(fields))
        except InvalidSignature:
            raise AnchorBroken(
                f"{where}: the signature does not verify with key {key_id(public)} "
                "(the line was edited, or signed with another key)"
            ) from None
        if cp.prev != prev:
            raise AnchorBroken(
                f"{where} does not follow the line before it (a checkpoint was removed, "
                "inserted or reordered)"
            )
        if checkpoints and cp.seq < checkpoints[-1].seq:
            raise AnchorBroken(f"{where}: row {cp.seq} is before the previous checkpoint's row")
        checkpoints.append(cp)
        prev = _line_digest(text)
    return checkpoints


@contextmanager
def snapshot(engine: Engine) -> Iterator[Session]:
    """A read-only transaction that sees one state of the whole log (REPEATABLE READ on
    PostgreSQL; on SQLite a deferred BEGIN in WAL mode keeps its first read's snapshot), so that a
    row committed while the chain is read is not taken for a forged one."""
    if is_sqlite(engine):
        bound = engine.execution_options(immunostrat_read_only=True)
    else:
        bound = engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    with Session(bound, expire_on_commit=False) as session, session.begin():
        yield session


def check_against(session: Session, checkpoints: list[Checkpoint]) -> AuditVerification:
    """The chain (:func:`~immunostrat.trial.service.verify_audit`) and then each checkpoint: its row
    must still exist with the signed hash."""
    result = service.verify_audit(session)
    if not result.ok:
        return result
    rows = result.rows_checked
    last_good = 0
    wanted = sorted({cp.seq for cp in checkpoints if 0 < cp.seq <= rows})
    hashes: dict[int, str] = {}
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        found = session.execute(select(AuditRow.seq, AuditRow.hash).where(AuditRow.seq.in_(chunk)))
        hashes.update((seq, digest) for seq, digest in found)
    for cp in checkpoints:
        signed = f"the checkpoint of {cp.at} (anchor line {cp.line_no})"
        if cp.seq > rows:
            what = (
                "every row was deleted (a wipe back to genesis)"
                if rows == 0
                else f"rows {rows + 1}..{cp.seq} were deleted "
                "(truncation, or the tail deleted and the head reset)"
            )
            return replace(
                result,
                ok=False,
                first_bad_seq=rows + 1,
                problem=f"{signed} holds row {cp.seq}, the log has {rows} row(s): {what}",
                head_hash=None,
            )
        current = hashes.get(cp.seq, GENESIS) if cp.seq else GENESIS
        if current != cp.head:
            return replace(
                result,
                ok=False,
                first_bad_seq=last_good + 1,
                problem=(
                    f"{signed} signed hash {cp.head[:12]}... for row {cp.seq}, which now hashes to "
                    f"{current[:12]}...: rows {last_good + 1}..{cp.seq} were rewritten"
                ),
                head_hash=None,
            )
        last_good = cp.seq
    return result


@dataclass(frozen=True)
class AnchoredVerification:
    """The chain checked against the anchor file."""

    result: AuditVerification
    checkpoints: int
    last: Checkpoint | None

    @property
    def ok(self) -> bool:
        return self.result.ok

    def __str__(self) -> str:
        if not self.result.ok:
            return str(self.result)
        if self.last is None:
            return f"{self.result}; the anchor file holds no checkpoint yet"
        unanchored = self.result.rows_checked - self.last.seq
        return (
            f"{self.result}; {self.checkpoints} signed checkpoint(s) hold, the last at row "
            f"{self.last.seq} ({self.last.at}); {unanchored} row(s) written since are not anchored yet"
        )


def verify_snapshot(db_url: str, expect_head: str | None = None) -> AuditVerification:
    """The chain and the records (:func:`~immunostrat.trial.service.verify_audit`) read in one
    snapshot, so that rows committed while it reads are not taken for forged ones (in a plain
    READ COMMITTED transaction on PostgreSQL the head is read before the rows, and a row appended
    in between lies "beyond the head"). ``expect_head``: a head hash recorded outside the database
    earlier, which the chain must still hold (rows appended since are counted)."""
    engine = existing_db(db_url)
    with snapshot(engine) as session:
        result = service.verify_audit(session)
        if expect_head is None or not result.ok:
            return result
        expected = expect_head.strip().lower()
        row = session.scalars(select(AuditRow).where(AuditRow.hash == expected)).first()
    if row is None:
        return replace(
            result,
            ok=False,
            problem=(
                f"the recorded head {expected} is not in the chain ({result.rows_checked} rows): "
                "rows were deleted from its end (truncation) or the chain was rewritten"
            ),
        )
    return replace(result, expected_head_seq=row.seq)


def verify_anchored(db_url: str, anchor: Path, key: Path | None = None) -> AnchoredVerification:
    """Check the database's audit chain against the signed checkpoints in ``anchor``."""
    public = verify_key(key)
    engine = existing_db(db_url)
    try:
        checkpoints = read_anchor(anchor, public)
    except AnchorBroken as broken:
        return AnchoredVerification(AuditVerification(False, 0, None, str(broken)), 0, None)
    with snapshot(engine) as session:
        result = check_against(session, checkpoints)
    return AnchoredVerification(result, len(checkpoints), checkpoints[-1] if checkpoints else None)


def checkpoint(db_url: str, anchor: Path, key: Path | None = None) -> Checkpoint:
    """Append a signed checkpoint of the current head to ``anchor`` (created when absent).

    Refused (:class:`AnchorBroken`) when the chain is broken or no longer holds an earlier
    checkpoint: anchoring a tampered log would bless it."""
    private = signing_key(key)
    public = private.public_key()
    engine = existing_db(db_url)
    fd = os.open(anchor, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(fd, "r+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # two checkpoints at once must not share a `prev`
        checkpoints = read_anchor(anchor, public)
        with snapshot(engine) as session:
            result = check_against(session, checkpoints)
            head = session.get(AuditHead, 1)
        if not result.ok:
            raise AnchorBroken(f"not anchored: {result}")
        assert head is not None and head.seq == result.rows_checked
        content = anchor.read_text(encoding="utf-8").splitlines()
        lines = [text for text in content if text.strip()]
        unsigned = Checkpoint(
            seq=head.seq,
            head=head.hash,
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            key=key_id(public),
            prev=_line_digest(lines[-1]) if lines else GENESIS,
            sig="",
            line_no=len(content) + 1,
        )
        sig = base64.b64encode(private.sign(_message(unsigned.fields()))).decode()
        cp = replace(unsigned, sig=sig)
        handle.write((cp.line() + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())
    return cp
