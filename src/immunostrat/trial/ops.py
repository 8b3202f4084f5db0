"""Plain functions over a database URL, for the CLI and scripts: open (and migrate) a database,
set up a trial, export it, verify the audit chain. Each runs in its own transaction(s).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, make_url, select
from sqlalchemy.exc import OperationalError

from immunostrat.errors import InputError
from immunostrat.trial import service
from immunostrat.trial.audit import Actor, AuditVerification
from immunostrat.trial.db import get_engine, migrate, normalise_url, transaction
from immunostrat.trial.export_files import write_trial_export
from immunostrat.trial.models import User
from immunostrat.trial.schemas import TrialSpec, UserIn, UserUpdate, parse


def cli_actor() -> Actor:
    """Who runs the command line: the operating-system user, audited as ``os:<name>`` (the CLI
    reaches the database directly, so the audit names the person, not the tool)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers): the numeric id still names them
        name = f"uid{os.getuid()}"
    return Actor(f"os:{name}"[:64], "cli")


def open_db(db_url: str) -> Engine:
    """The shared engine for ``db_url``, with the schema migrated to the latest revision."""
    engine = get_engine(db_url)
    migrate(engine)
    return engine


TEMPLATES = Path(__file__).resolve().parent / "templates"
EXAMPLE_SPEC = TEMPLATES / "immunosep.yaml"
"""What ``trial init`` sets up when given no trial file: the ImmunoSep template."""


def template_names() -> list[str]:
    """The shipped trial files (``templates/NAME.yaml``)."""
    return sorted(p.stem for p in TEMPLATES.glob("*.yaml"))


def template_path(name: str) -> Path:
    path = TEMPLATES / f"{name}.yaml"
    if not path.is_file():
        raise InputError(
            "unknown trial template", field="template", value=name, expected=", ".join(template_names())
        )
    return path


def load_trial_spec(path: str | Path) -> TrialSpec:
    """A trial set-up from a YAML or JSON file (see ``templates/``)."""
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", file=str(p), field="spec")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML/JSON: {exc}", file=str(p)) from None
    if not isinstance(raw, dict):
        raise InputError("a trial spec is a mapping", file=str(p), expected="code, title, sites, ...")
    try:
        return parse(TrialSpec, raw)
    except InputError as exc:
        exc.file = str(p)
        raise


def init_trial(
    db_url: str,
    spec: TrialSpec | Mapping[str, Any] | str | Path,
    *,
    admin: tuple[str, str] | None = None,
    seed: bytes | None = None,
    actor: Actor | None = None,
) -> service.TrialSetup:
    """Create the schema if needed, then the trial with its sites and concealed list.

    ``spec``: a :class:`TrialSpec`, a mapping, or the path of a YAML/JSON file.

    ``admin`` = (username, password) also creates an admin user. The returned ``seed_hex`` is the
    only copy of the randomization seed: hand it to whoever keeps the escrow.
    """
    if isinstance(spec, TrialSpec):
        trial_spec = spec
    elif isinstance(spec, str | Path):
        trial_spec = load_trial_spec(spec)
    else:
        trial_spec = parse(TrialSpec, dict(spec))
    actor = actor or cli_actor()
    engine = open_db(db_url)
    with transaction(engine) as session:
        result = service.setup_trial(session, actor, trial_spec, seed=seed)
        if admin is not None:
            service.create_user(session, actor, UserIn(username=admin[0], password=admin[1], role="admin"))
    return result


def create_user(
    db_url: str,
    username: str,
    password: str,
    role: str,
    *,
    trial: int | str | None = None,
    site: str | None = None,
    actor: Actor | None = None,
) -> int:
    actor = actor or cli_actor()
    engine = open_db(db_url)
    with transaction(engine) as session:
        trial_obj = _trial(session, trial) if trial is not None else None
        spec = parse(
            UserIn,
            {"username": username, "password": password, "role": role, "site": site},
        )
        return service.create_user(session, actor, spec, trial=trial_obj).id


def update_user(
    db_url: str,
    username: str,
    *,
    active: bool | None = None,
    role: str | None = None,
    actor: Actor | None = None,
) -> dict[str, Any]:
    """Deactivate or reactivate a user or change the role (audited with the OS user); tokens
    already issued stop working at their next request. Returns the user as stored."""
    actor = actor or cli_actor()
    engine = existing_db(db_url)
    with transaction(engine) as session:
        user = session.scalars(select(User).where(User.username == username)).one_or_none()
        if user is None:
            raise InputError(
                "unknown user", field="--username", value=username, expected="an existing username"
            )
        spec = parse(UserUpdate, {"active": active, "role": role})
        return service.user_view(service.update_user(session, actor, user.id, spec))


def _trial(session: Any, trial: int | str) -> Any:
    if isinstance(trial, int) or str(trial).isdigit():
        return service.trial_by_id(session, int(trial))
    return service.trial_by_code(session, str(trial))


def export_trial(
    db_url: str,
    trial_id: int | str,
    blinded: bool,
    output_dir: str | Path,
    *,
    fmt: str = "csv",
    actor: Actor | None = None,
) -> Path:
    """Write the export into ``output_dir``: ``fmt`` csv or parquet (the analysis tables of
    ``immunostrat.analysis.schema``), odm (CDISC ODM 1.3.2), xpt, dta or sav; each with its data
    dictionary.

    ``trial_id`` is the numeric id or the trial code. The export is audited, naming the
    operating-system user. The unblinded export obeys the API's rule: only after the database lock."""
    actor = actor or cli_actor()
    engine = existing_db(db_url)
    with transaction(engine) as session:
        trial = _trial(session, trial_id)
        if not blinded and trial.status != "locked":
            raise service.Conflict(
                f"trial {trial.code} is {trial.status}: the unblinded export needs the database lock first",
                field="--unblinded",
            )
        return write_trial_export(session, actor, trial.id, blinded, fmt, output_dir)


def lock_trial(db_url: str, trial_id: int | str, *, actor: Actor | None = None) -> str:
    """Database lock (data entry stops; the unblinded export becomes possible), audited with the
    operating-system user. Returns the trial's code."""
    actor = actor or cli_actor()
    engine = existing_db(db_url)
    with transaction(engine) as session:
        trial = _trial(session, trial_id)
        if trial.status == "locked":
            raise service.Conflict(f"trial {trial.code} is already locked", field="--trial")
        service.lock_trial(session, actor, trial.id)
        return str(trial.code)


def data_management_report(db_url: str, trial_id: int | str, *, today: Any = None) -> dict[str, Any]:
    """The data manager's overview of a trial set up with forms: visits from the schedule (done,
    partial, due, overdue), open and answered queries, and serious adverse events whose expedited
    report is due or overdue."""
    from immunostrat.trial import datamanagement

    actor = Actor("data-manager", "monitor")  # a read: nothing is written or audited
    engine = existing_db(db_url)
    with transaction(engine) as session:
        trial = _trial(session, trial_id)
        visits = datamanagement.visit_report(session, actor, trial.id, today)
        queries = [q for q in datamanagement.list_queries(session, actor, trial.id) if q["state"] != "closed"]
        reports = [
            ae
            for ae in service.list_adverse_events(session, actor, trial.id)
            if ae.get("report_state") in ("due", "overdue")
        ]
        return {"trial": trial.code, "visits": visits, "queries": queries, "expedited_reports": reports}


def existing_db(db_url: str) -> Engine:
    """Open a database that must already exist: a mistyped SQLite path is an error, never a new,
    empty database (which would verify as "intact: 0 rows")."""
    url = make_url(normalise_url(db_url))
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path in ("", ":memory:") or not Path(path).is_file():
            raise InputError(
                "database not found",
                field="db",
                value=db_url,
                expected="the path of an existing trial database",
            )
    try:
        return open_db(db_url)
    except OperationalError as exc:
        first = str(exc.orig or exc).strip().splitlines()[0]
        raise InputError(
            f"cannot open the database: {first}",
            field="db",
            value=db_url,
            expected="a reachable trial database",
        ) from None


def verify_audit(db_url: str, expect_head: str | None = None) -> AuditVerification:
    """Check the hash chain and the records in one snapshot; the result names the first bad row
    (``first_bad_seq``).

    ``expect_head``: a head hash recorded outside the database earlier. The chain must still hold it
    (rows appended since are fine and counted); if no row has that hash, the log was truncated below
    it or rewritten, and the result says so."""
    from immunostrat.trial.anchor import verify_snapshot

    return verify_snapshot(db_url, expect_head)
