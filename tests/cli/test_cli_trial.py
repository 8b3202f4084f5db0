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


def test_audit_verify_names_the_first_tampered_row(trial_db: str) -> None:
    path = trial_db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        con.execute("DROP TRIGGER audit_log_no_update")
        con.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    result = runner.invoke(app, ["audit", "verify", "--db", trial_db])
    assert result.exit_code == 1
    assert "row 3" in result.stdout


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
