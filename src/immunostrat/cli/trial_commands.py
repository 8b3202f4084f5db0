"""`immunostrat serve` and `trial templates|init|user|lock|report|export`: thin over trial and api."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from immunostrat.cli.output import fail
from immunostrat.errors import InputError
from immunostrat.trial.schemas import ROLES

console = Console(stderr=True)
out = Console()
trial_app = typer.Typer(help="Set up trials, users and exports.", no_args_is_help=True)

DbOpt = Annotated[str, typer.Option("--db", help="Database URL: sqlite:///trial.db or postgresql://...")]

ROLE_HELP = " | ".join(ROLES)


def serve(
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL (default with --demo: a new SQLite file).")
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Create a demo ImmunoSep-style trial first.")] = False,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes (several: a server database, PostgreSQL).")
    ] = 1,
    worker_timeout: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="With --workers: seconds a worker's event loop may stay silent before the worker is "
            "killed and replaced (default 30).",
        ),
    ] = None,
) -> None:
    """Run the trial service (REST API, CDS Hooks, the web pages) with uvicorn."""
    from immunostrat.api.app import prepare_demo
    from immunostrat.api.app import serve as run_server
    from immunostrat.trial import TrialError

    try:
        if demo:
            with console.status("creating the demo trial"):
                info = prepare_demo(db)
            db = info.db_url
            table = Table(title=f"demo trial {info.trial_code}: users (passwords shown only now)")
            for col in ("role", "username", "password"):
                table.add_column(col)
            for role, (username, password) in info.users.items():
                table.add_row(role, username, password)
            out.print(table)
            counts = f"screened {info.screened}, eligible {info.eligible}, randomized {info.randomized}"
            out.print(f"database {db}; {counts}")
            out.print(f"randomization seed (keep in escrow): {info.seed_hex}")
        if db is None:
            raise InputError("no database", field="--db", expected="a database URL, or --demo")
        out.print(f"serving on http://{host}:{port} (OpenAPI at /openapi.json, CDS Hooks at /cds-services)")
        run_server(db, host=host, port=port, workers=workers, worker_timeout_s=worker_timeout)
    except InputError as error:
        fail(error)
    except TrialError as error:
        fail(error, code=1)


@trial_app.command("init")
def trial_init(
    db: DbOpt,
    spec: Annotated[
        Path | None, typer.Option("--spec", help="Trial file YAML (default: the ImmunoSep example).")
    ] = None,
    template: Annotated[
        str | None,
        typer.Option("--template", help="A shipped trial file: immunosep, sle-secretome or sepcell."),
    ] = None,
    admin: Annotated[
        str | None, typer.Option("--admin", help="Also create this admin user (password prompted).")
    ] = None,
    admin_password: Annotated[
        str | None, typer.Option("--admin-password", envvar="IMMUNOSTRAT_ADMIN_PASSWORD", hidden=True)
    ] = None,
) -> None:
    """Create the schema, the trial, its sites and its concealed randomization list."""
    from immunostrat.trial import EXAMPLE_SPEC, TrialError, init_trial
    from immunostrat.trial.ops import template_path

    try:
        if spec is not None and template is not None:
            raise InputError("give --spec or --template, not both", field="--template", value=template)
        if template is not None:
            spec = template_path(template)
        credentials = None
        if admin:
            password = admin_password or typer.prompt(
                f"password for {admin}", hide_input=True, confirmation_prompt=True
            )
            credentials = (admin, password)
        setup = init_trial(db, spec or EXAMPLE_SPEC, admin=credentials)
    except InputError as error:
        fail(error)
    except TrialError as error:
        fail(error, code=1)
    out.print(f"trial {setup.code} (id {setup.trial_id}) with {setup.n_kits} kits")
    out.print(f"randomization seed (shown once; keep it in escrow): {setup.seed_hex}")


@trial_app.command("templates")
def trial_templates(
    show: Annotated[
        str | None, typer.Option("--show", help="Print this template's YAML (to copy and edit).")
    ] = None,
) -> None:
    """List the shipped trial files, or print one (``--show NAME > mytrial.yaml``) to write your own."""
    from immunostrat.trial.ops import load_trial_spec, template_names, template_path

    if show is not None:
        try:
            path = template_path(show)
        except InputError as error:
            fail(error)
        print(path.read_text(encoding="utf-8"), end="")
        return
    table = Table(title="trial templates (immunostrat trial init --template NAME)")
    for col in ("name", "title", "arms", "visits", "forms"):
        table.add_column(col)
    for name in template_names():
        spec = load_trial_spec(template_path(name))
        table.add_row(name, spec.title, ", ".join(spec.arms), str(len(spec.schedule())), str(len(spec.forms)))
    out.print(table)


@trial_app.command("export")
def trial_export(
    db: DbOpt,
    trial: Annotated[str, typer.Option("--trial", help="Trial id or code.")],
    output: Annotated[Path, typer.Option("--output", help="Folder to write the export into.")],
    blinded: Annotated[bool, typer.Option("--blinded/--unblinded", help="Arms hidden or shown.")] = True,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="csv | parquet | odm (CDISC ODM 1.3.2) | xpt (SAS) | dta (Stata) | sav (SPSS)"
        ),
    ] = "csv",
) -> None:
    """Export a trial (audited): the analysis tables as CSV or Parquet, CDISC ODM 1.3.2, or SAS XPT,
    Stata and SPSS files with labels; each with data_dictionary.csv."""
    from immunostrat.trial import TrialError, export_trial
    from immunostrat.trial.export_files import EXPORT_FORMATS

    try:
        if fmt not in EXPORT_FORMATS:
            raise InputError(
                "unknown format", field="--format", value=fmt, expected=", ".join(EXPORT_FORMATS)
            )
        trial_ref: int | str = int(trial) if trial.isdigit() else trial
        path = export_trial(db, trial_ref, blinded, output, fmt=fmt)
    except InputError as error:
        fail(error)
    except TrialError as error:
        fail(error, code=1)
    out.print(f"wrote {'blinded' if blinded else 'unblinded'} export to {path}")


@trial_app.command("user-update")
def trial_user_update(
    db: DbOpt,
    username: Annotated[str, typer.Option("--username")],
    active: Annotated[
        bool | None, typer.Option("--activate/--deactivate", help="Reactivate or deactivate the user.")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", help=ROLE_HELP)] = None,
) -> None:
    """Deactivate or reactivate a user, or change the role (audited; issued tokens stop working)."""
    from immunostrat.trial import TrialError
    from immunostrat.trial.ops import update_user

    try:
        if active is None and role is None:
            raise InputError(
                "nothing to change", field="--username", expected="--deactivate, --activate or --role"
            )
        user = update_user(db, username, active=active, role=role)
    except InputError as error:
        fail(error)
    except TrialError as error:
        fail(error, code=1)
    state = "active" if user["active"] else "deactivated"
    out.print(f"user {user['username']} ({user['role']}) {state}")


@trial_app.command("lock")
def trial_lock(
    db: DbOpt,
    trial: Annotated[str, typer.Option("--trial", help="Trial id or code.")],
) -> None:
    """Lock the database: data entry stops and the unblinded export becomes possible (audited with
    your operating-system user)."""
    from immunostrat.trial import TrialError
    from immunostrat.trial.ops import lock_trial

    try:
        code = lock_trial(db, int(trial) if trial.isdigit() else trial)
    except InputError as error:
        fail(error)
    except TrialError as error:
        fail(error, code=1)
    out.print(f"trial {code} locked")


@trial_app.command("report")
def trial_report(
    db: DbOpt,
    trial: Annotated[str, typer.Option("--trial", help="Trial id or code.")],
) -> None:
    """The data manager's overview: overdue, due and partial visits, open queries, and serious
    adverse events whose expedited report is due or overdue."""
    from immunostrat.trial import TrialError
    from immunostrat.trial.ops import data_management_report

    try:
        report = data_management_report(db, int(trial) if trial.isdigit() else trial)
    except InputError as error:
        fail(error)
    except TrialError as error:
        fail(error, code=1)
    visits = report["visits"]
    counts = ", ".join(f"{k} {v}" for k, v in visits["counts"].items())
    out.print(f"trial {report['trial']} as of {visits['as_of']}: visits {counts}")
    table = Table(title="visits needing attention")
    for col in ("participant", "visit", "day", "window", "state", "missing forms"):
        table.add_column(col)
    for v in visits["visits"]:
        if v["state"] in ("overdue", "partial", "due"):
            window = f"{v['window_start']} to {v['window_end']}"
            table.add_row(
                v["pseudonym"], v["visit"], str(v["day"]), window, v["state"], ", ".join(v["missing_forms"])
            )
    out.print(table)
    queries = Table(title=f"queries not closed: {len(report['queries'])}")
    for col in ("id", "participant", "visit", "form", "field", "state", "text"):
        queries.add_column(col)
    for q in report["queries"]:
        queries.add_row(
            str(q["id"]), q["pseudonym"], q["visit"], q["form"], q["field"], q["state"], q["text"]
        )
    out.print(queries)
    reports = Table(
        title=f"serious adverse events awaiting their expedited report: {len(report['expedited_reports'])}"
    )
    for col in ("participant", "term", "due", "state"):
        reports.add_column(col)
    for ae in report["expedited_reports"]:
        reports.add_row(ae.get("pseudonym", ""), ae["term"], str(ae["report_due_at"]), ae["report_state"])
    out.print(reports)


@trial_app.command("user")
def trial_user(
    db: DbOpt,
    username: Annotated[str, typer.Option("--username")],
    role: Annotated[str, typer.Option("--role", help=ROLE_HELP)],
    trial: Annotated[str | None, typer.Option("--trial", help="Trial id or code.")] = None,
    site: Annotated[str | None, typer.Option("--site", help="Site code (investigators).")] = None,
    password: Annotated[
        str | None, typer.Option("--password", envvar="IMMUNOSTRAT_USER_PASSWORD", hidden=True)
    ] = None,
) -> None:
    """Add a user with a role (password prompted)."""
    from immunostrat.trial import TrialError, create_user

    try:
        secret = password or typer.prompt(
            f"password for {username}", hide_input=True, confirmation_prompt=True
        )
        trial_ref: int | str | None = None if trial is None else (int(trial) if trial.isdigit() else trial)
        user_id = create_user(db, username, secret, role, trial=trial_ref, site=site)
    except InputError as error:
        fail(error)
    except TrialError as error:
        fail(error, code=1)
    out.print(f"user {username} ({role}) created with id {user_id}")
