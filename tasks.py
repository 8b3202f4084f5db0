#!/usr/bin/env python3
"""Bootstrap and run: `python3 tasks.py demo`, `python3 tasks.py test` or `python3 tasks.py extra spark|jax`.

Needs nothing but Python 3.11: creates `.venv` (or `$IMMUNOSTRAT_VENV`), installs the pinned lock file
into it (only when the lock changed since the last install), installs the project, then runs the job.
`demo` installs `requirements.lock`, which serves every documented command; `extra NAME` adds an
optional heavy engine from `requirements-NAME.lock`; `test` installs `requirements-dev.lock` (all extras).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("IMMUNOSTRAT_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _run(*args: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, env=env)


def _installer() -> list[str | Path]:
    """uv (from PyPI, into the venv) installs the lock in seconds; plain pip is the fallback."""
    uv = BIN / "uv"
    if not uv.exists():
        subprocess.run([str(PY), "-m", "pip", "install", "--quiet", "uv"], cwd=ROOT, check=False)
    if uv.exists():
        return [uv, "pip", "install", "--quiet", "--python", PY]
    return [PY, "-m", "pip", "install", "--quiet"]


def ensure_env(lock: str) -> None:
    """Create the virtual environment and install `lock` plus the project (editable)."""
    if not PY.exists():
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
        _run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    lock_path = ROOT / lock
    digest = hashlib.sha256(lock_path.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = VENV / f".installed-{lock}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    installer = _installer()
    _run(*installer, "-r", lock_path)
    _run(*installer, "--no-deps", "-e", ROOT)
    stamp.write_text(digest)


def demo(args: list[str]) -> None:
    """The main job, then the web application on the demo trial until Ctrl-C (``--no-serve``: job only)."""
    ensure_env("requirements.lock")
    try:
        _run(BIN / "immunostrat", "demo", *args)
    except KeyboardInterrupt:  # Ctrl-C stops the server: a normal end, not an error
        print("stopped", flush=True)


LINTED = ("src", "tests", "benchmarks", "scripts", "tasks.py")


def test(args: list[str]) -> None:
    ensure_env("requirements-dev.lock")
    paths = [p for p in LINTED if (ROOT / p).exists()]
    _run(BIN / "ruff", "check", *paths)
    _run(BIN / "ruff", "format", "--check", *paths)
    _run(BIN / "mypy")
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    # two workers (pytest-xdist), each test file on one: the suite is CPU-bound and CI has two cores;
    # the slowest 25 steps are listed at the end, to see where the suite's time goes
    default = ["-q", "-n", "2", "--dist", "loadfile", "--durations=25"]
    _run(PY, "-m", "pytest", *(args or default), env=env)


EXTRAS = ("spark", "jax")


def extra(args: list[str]) -> None:
    """Install an optional engine (pyproject.toml's extra of that name) from its pinned lock."""
    if len(args) != 1 or args[0] not in EXTRAS:
        sys.exit(f"usage: python3 tasks.py extra {'|'.join(EXTRAS)}")
    ensure_env(f"requirements-{args[0]}.lock")
    print(f"installed the optional extra '{args[0]}' into {VENV}")


JOBS = {"demo": demo, "test": test, "extra": extra}
USAGE = "usage: python3 tasks.py demo|test|extra NAME [arguments]"


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] in {"-h", "--help"}:
        print(f"{USAGE}\n\n{__doc__}")
        return
    if len(sys.argv) < 2 or sys.argv[1] not in JOBS:
        sys.exit(USAGE)
    JOBS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
