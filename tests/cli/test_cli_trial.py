"""`immunostrat trial init|export|user`, `audit verify` and `serve --demo`, through the real CLI."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from immunostrat.analysis import validate_export
from immunostrat.cli import app

runner = CliRunner()


@pytest.fixture
def trial_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'trial.db'}"
    result = runner.invoke(
        app,
        ["trial", "init", "--db", url, "--admin", "alice"],
        env={"IMMUNOSTRAT_ADMIN_PASSWORD": "correct horse battery"},
    )
    assert result.exit_code == 0, result.output
    assert "randomization seed" in result.stdout
    return url


def test_init_export_and_verify(trial_db: str, tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = runner.invoke(
        app, ["trial", "export", "--db", trial_db, "--trial", "1", "--output", str(out), "--blinded"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "participants.csv").exists()
    validate_export(out)
    verified = runner.invoke(app, ["audit", "verify", "--db", trial_db])
    assert verified.exit_code == 0 and "intact" in verified.stdout


def test_user_add_and_unknown_role(trial_db: str) -> None:
    ok = runner.invoke(
        app,
        ["trial", "user", "--db", trial_db, "--username", "bob", "--role", "monitor"],
        env={"IMMUNOSTRAT_USER_PASSWORD": "another long secret"},
    )
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(
        app,
        ["trial", "user", "--db", trial_db, "--username", "eve", "--role", "king"],
        env={"IMMUNOSTRAT_USER_PASSWORD": "another long secret"},
    )
    assert bad.exit_code in (1, 2) and "role" in bad.output


def test_user_deactivated_at_the_command_line_is_audited_with_the_os_user(trial_db: str) -> None:
    made = runner.invoke(
        app,
        ["trial", "user", "--db", trial_db, "--username", "bob", "--role", "monitor"],
        env={"IMMUNOSTRAT_USER_PASSWORD": "another long secret"},
    )
    assert made.exit_code == 0, made.output
    off = runner.invoke(app, ["trial", "user-update", "--db", trial_db, "--username", "bob", "--deactivate"])
    assert off.exit_code == 0 and "deactivated" in off.stdout, off.output
    path = trial_db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT active FROM users WHERE username = 'bob'").fetchone() == (0,)
        actor, action = con.execute(
            "SELECT actor, action FROM audit_log ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    assert actor.startswith("os:") and action == "update"
    missing = runner.invoke(
        app, ["trial", "user-update", "--db", trial_db, "--username", "nobody", "--activate"]
    )
    assert missing.exit_code == 2 and "unknown user" in missing.output


def test_audit_verify_names_the_first_tampered_row(trial_db: str) -> None:
    path = trial_db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        con.execute("DROP TRIGGER audit_log_no_update")
        con.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    result = runner.invoke(app, ["audit", "verify", "--db", trial_db])
    assert result.exit_code == 1
    assert "row 3" in result.stdout


def test_audit_verify_refuses_a_database_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "mistyped.db"
    result = runner.invoke(app, ["audit", "verify", "--db", f"sqlite:///{missing}"])
    assert result.exit_code == 2, result.output
    assert "database not found" in result.output and "intact" not in result.output
    assert not missing.exists()


def _head(result_stdout: str) -> str:
    return result_stdout.split("head ")[1].split()[0].rstrip(";")


def test_audit_verify_against_a_head_recorded_outside(trial_db: str) -> None:
    first = runner.invoke(app, ["audit", "verify", "--db", trial_db])
    assert first.exit_code == 0, first.output
    recorded = _head(first.stdout)
    rows = int(first.stdout.split("intact: ")[1].split()[0])
    same = runner.invoke(app, ["audit", "verify", "--db", trial_db, "--expect-head", recorded])
    assert same.exit_code == 0 and f"recorded head is row {rows}, 0 row(s) appended" in same.stdout
    # The log grows: the recorded head is still in the chain, with the rows appended since counted.
    added = runner.invoke(
        app,
        ["trial", "user", "--db", trial_db, "--username", "bob", "--role", "monitor"],
        env={"IMMUNOSTRAT_USER_PASSWORD": "another long secret phrase"},
    )
    assert added.exit_code == 0, added.output
    grown = runner.invoke(app, ["audit", "verify", "--db", trial_db, "--expect-head", recorded])
    assert grown.exit_code == 0 and f"recorded head is row {rows}, 1 row(s) appended" in grown.stdout
    latest = _head(grown.stdout)
    # Someone who can write the database deletes the last rows and resets the head: the chain alone
    # still verifies, the head recorded outside does not.
    path = trial_db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            con.execute(f'DROP TRIGGER "{name}"')
        con.execute("DELETE FROM audit_log WHERE seq > ?", (rows - 1,))
        (seq, digest) = con.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        con.execute("UPDATE audit_head SET seq = ?, hash = ?", (seq, digest))
    alone = runner.invoke(app, ["audit", "verify", "--db", trial_db])
    assert alone.exit_code == 0 and "intact" in alone.stdout
    for expected in (recorded, latest):
        caught = runner.invoke(app, ["audit", "verify", "--db", trial_db, "--expect-head", expected])
        assert caught.exit_code == 1, caught.output
        assert "not in the chain" in caught.stdout and "truncation" in caught.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_demo_answers_http(tmp_path: Path) -> None:
    port = _free_port()
    exe = Path(sys.executable).with_name("immunostrat")
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    proc = subprocess.Popen(
        [str(exe), "serve", "--demo", "--db", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.5)
        assert response.status_code == 200
        assert "/classify" in response.json()["paths"]
        discovery = httpx.get(f"http://127.0.0.1:{port}/cds-services", timeout=5).json()
        assert discovery["services"][0]["hook"] == "patient-view"
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert "investigator" in output and "randomization seed" in output
