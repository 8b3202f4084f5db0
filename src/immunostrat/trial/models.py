"""The trial data model (SQLAlchemy 2). The Alembic migrations in ``migrations/`` create exactly this.

Identifiers shown to people are pseudonyms (participants) and kit numbers (allocations); arms are
stored in ``kits`` (the concealed list) and ``allocations`` and only leave the domain layer for
unblinded roles, with an audit row.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were stored as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the trial model."""


class Trial(Base):
    __tablename__ = "trials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    protocol_id: Mapped[str] = mapped_column(String(64))
    protocol_version: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(16))  # "block" | "minimization"
    arms: Mapped[list[Any]] = mapped_column(JSON)
    control_arm: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed_commitment: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | locked
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # how many allocations the trial has made: the next one's sequence, advanced under the row lock
    allocations_made: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    sites: Mapped[list[Site]] = relationship(back_populates="trial", order_by="Site.id")


class Site(Base):
    __tablename__ = "sites"
    __table_args__ = (UniqueConstraint("trial_id", "code", name="uq_sites_trial_code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), index=True)
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))

    trial: Mapped[Trial] = relationship(back_populates="sites")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Participant(Base):
    __tablename__ = "participants"
    __table_args__ = (
        UniqueConstraint("trial_id", "pseudonym", name="uq_participants_trial_pseudonym"),
        UniqueConstraint("trial_id", "idempotency_key", name="uq_participants_trial_idempotency_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    pseudonym: Mapped[str] = mapped_column(String(32))
    age: Mapped[float] = mapped_column(Float)
    sex: Mapped[str] = mapped_column(String(8))
    weight_kg: Mapped[float | None] = mapped_column(Float, nullable=True)
    infection_site: Mapped[str | None] = mapped_column(String(32), nullable=True)
    baseline_sofa: Mapped[int | None] = mapped_column(Integer, nullable=True)
    septic_shock: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    exclusions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))  # eligible | ineligible | randomized | withdrawn
    withdrawal_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    data_removed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # a retried screening with the same key returns this participant (same body) or is refused
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)

    site: Mapped[Site] = relationship()


class ScreeningObservation(Base):
    """A biomarker or vital sign entered at screening: as entered and in the canonical unit."""

    __tablename__ = "screening_observations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"), index=True)
    concept: Mapped[str] = mapped_column(String(64))
    value_entered: Mapped[float] = mapped_column(Float)
    unit_entered: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    entered_by: Mapped[str] = mapped_column(String(64))
    entered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EligibilityDecision(Base):
    """The protocol engine's answer for a participant, stored with its reasons."""

    __tablename__ = "eligibility_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"), index=True)
    protocol_id: Mapped[str] = mapped_column(String(64))
    protocol_version: Mapped[str] = mapped_column(String(32))
    endotype: Mapped[str] = mapped_column(String(32))
    therapy: Mapped[str] = mapped_column(String(32))
    dose: Mapped[str | None] = mapped_column(Text, nullable=True)
    eligible: Mapped[bool] = mapped_column(Boolean)
    reasons: Mapped[list[Any]] = mapped_column(JSON)
    decided_by: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Stratum(Base):
    """One randomization stratum (site x endotype); ``next_seq``: the next unused slot (row-locked)."""

    __tablename__ = "strata"
    __table_args__ = (
        UniqueConstraint("trial_id", "site_id", "endotype", name="uq_strata_trial_site_endotype"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    endotype: Mapped[str] = mapped_column(String(32))
    ratio: Mapped[dict[str, Any]] = mapped_column(JSON)
    next_seq: Mapped[int] = mapped_column(Integer, default=1)
    n_slots: Mapped[int] = mapped_column(Integer)


class Kit(Base):
    """The concealed list: one row per kit. In block randomization a kit is a slot of its stratum's
    list (``stratum_id``, ``seq``, ``block_no``, ``block_size``); under minimization kits form one
    pool per arm (``stratum_id`` empty, ``seq`` = order within the arm)."""

    __tablename__ = "kits"
    __table_args__ = (
        UniqueConstraint("trial_id", "kit_number", name="uq_kits_trial_number"),
        UniqueConstraint("stratum_id", "seq", name="uq_kits_stratum_seq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), index=True)
    kit_number: Mapped[str] = mapped_column(String(16))
    arm: Mapped[str] = mapped_column(String(64))
    stratum_id: Mapped[int | None] = mapped_column(ForeignKey("strata.id"), nullable=True)
    seq: Mapped[int] = mapped_column(Integer)
    block_no: Mapped[int | None] = mapped_column(Integer, nullable=True)
    block_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class Allocation(Base):
    __tablename__ = "allocations"
    __table_args__ = (
        UniqueConstraint("trial_id", "idempotency_key", name="uq_allocations_idempotency"),
        UniqueConstraint("trial_id", "sequence", name="uq_allocations_sequence"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), index=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"), unique=True)
    kit_id: Mapped[int] = mapped_column(ForeignKey("kits.id"), unique=True)
    stratum_id: Mapped[int | None] = mapped_column(ForeignKey("strata.id"), nullable=True)
    arm: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))
    sequence: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    allocated_by: Mapped[str] = mapped_column(String(64))
    allocated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    kit: Mapped[Kit] = relationship()


class Assessment(Base):
    """One study day: SOFA components, biomarkers, infection status, study-drug doses given."""

    __tablename__ = "assessments"
    __table_args__ = (UniqueConstraint("participant_id", "day", name="uq_assessments_participant_day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"), index=True)
    day: Mapped[int] = mapped_column(Integer)
    sofa_respiration: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sofa_coagulation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sofa_liver: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sofa_cardiovascular: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sofa_cns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sofa_renal: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sofa_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ferritin_ng_ml: Mapped[float | None] = mapped_column(Float, nullable=True)
    hla_dr_abc: Mapped[float | None] = mapped_column(Float, nullable=True)
    crp_mg_l: Mapped[float | None] = mapped_column(Float, nullable=True)
    procalcitonin_ng_ml: Mapped[float | None] = mapped_column(Float, nullable=True)
    infection_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    doses_given: Mapped[int | None] = mapped_column(Integer, nullable=True)
    entered_by: Mapped[str] = mapped_column(String(64))
    entered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Outcome(Base):
    __tablename__ = "outcomes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"), unique=True)
    death_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_contact_day: Mapped[int] = mapped_column(Integer)
    discharge_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    infection_status_day15: Mapped[str | None] = mapped_column(String(16), nullable=True)
    ferritin_day15_ng_ml: Mapped[float | None] = mapped_column(Float, nullable=True)
    hla_dr_day15_abc: Mapped[float | None] = mapped_column(Float, nullable=True)
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AdverseEvent(Base):
    __tablename__ = "adverse_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"), index=True)
    day: Mapped[int] = mapped_column(Integer)
    term: Mapped[str] = mapped_column(String(200))
    serious: Mapped[bool] = mapped_column(Boolean)
    severity: Mapped[int | None] = mapped_column(Integer, nullable=True)
    related: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(64), nullable=True)
    meddra_code: Mapped[str | None] = mapped_column(String(8), nullable=True)
    seriousness: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    aware_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    report_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    report_reference: Mapped[str | None] = mapped_column(String(100), nullable=True)
    entered_by: Mapped[str] = mapped_column(String(64))
    entered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UnblindingEvent(Base):
    __tablename__ = "unblinding_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"), index=True)
    username: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditRow(Base):
    """Append-only, hash-chained: ``hash = sha256(prev_hash + canonical row)``; ``seq`` has no gaps."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(32))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(64))
    old: Mapped[str | None] = mapped_column(Text, nullable=True)
    new: Mapped[str | None] = mapped_column(Text, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the last sequence number and hash. Locked by every append (serialises the chain)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class ServiceSetting(Base):
    """Per-installation values generated at set-up (e.g. the token signing key)."""

    __tablename__ = "service_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class CdsTokenUse(Base):
    """A CDS Hooks client's JWT id (``jti``) seen until the token expires: a second use is a replay.

    Kept in the database so that every worker of the service refuses the same replay."""

    __tablename__ = "cds_token_uses"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of issuer and jti
    issuer: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class FormRecord(Base):
    """One form of one visit of a participant, as last saved: values in each field's unit, the
    values as entered (with their units), the derived scores, fields marked not done (with the
    reason), and ``version`` (1 when created, +1 at each change; every change is in FormChange)."""

    __tablename__ = "form_records"
    __table_args__ = (
        UniqueConstraint("participant_id", "visit_id", "form_id", name="uq_form_records_visit_form"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"), index=True)
    visit_id: Mapped[str] = mapped_column(String(32))
    form_id: Mapped[str] = mapped_column(String(64))
    study_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    visit_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    entered: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    derived: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    not_done: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FormChange(Base):
    """One field's change: old and new value, who, when and why (21 CFR 11.10(e))."""

    __tablename__ = "form_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("form_records.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    field: Mapped[str] = mapped_column(String(64))
    old: Mapped[str | None] = mapped_column(Text, nullable=True)
    new: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    changed_by: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DataQuery(Base):
    """A query on one field of a form: raised (by a monitor or an edit check), answered by the
    site, closed by the monitor. ``messages`` keeps the conversation in order."""

    __tablename__ = "data_queries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("form_records.id"), index=True)
    field: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # open | answered | closed
    text: Mapped[str] = mapped_column(Text)
    raised_by: Mapped[str] = mapped_column(String(64))
    raised_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    messages: Mapped[list[Any]] = mapped_column(JSON, default=list)


class Signature(Base):
    """An investigator's electronic signature of a visit (21 CFR 11.50, 11.70): name, time, meaning,
    and the SHA-256 of the signed forms' values, so that a later change shows the signature no
    longer applies."""

    __tablename__ = "signatures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"), index=True)
    visit_id: Mapped[str] = mapped_column(String(32))
    username: Mapped[str] = mapped_column(String(64))
    full_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    meaning: Mapped[str] = mapped_column(Text)
    content_sha256: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
