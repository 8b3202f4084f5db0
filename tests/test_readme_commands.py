"""The README's set-up serves every command the README documents.

The walk copies the working tree, makes a fresh virtual environment with exactly the README's first
command (``python3 tasks.py demo``, the environment under ``tmp_path``), then runs every documented
command twice: its ``--help`` and one real call from ``WALK`` (small sizes; ``../shared/data`` when
present, the bundled demo cohort otherwise). Each call must exit 0 with no traceback. A command the
README documents that ``WALK`` does not cover fails the coverage test, so no command goes unwalked.

Out of scope: ``uvicorn`` (the several-worker variant of ``serve``) and ``createdb`` (PostgreSQL set-up).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED_DATA = ROOT.parent / "shared" / "data"
PREFIXES = ("immunostrat ", "python benchmarks/", "python scripts/", "python3 tasks.py")


# ------------------------------------------------------------------------------- what the README says


def readme_command_lines(text: str) -> list[str]:
    """The command lines of the README's ```bash blocks (continuations joined, comments dropped)."""
    lines: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", raw).strip()
            if line.startswith(PREFIXES):
                lines.append(line)
    return lines


def command_key(line: str) -> str:
    """The command a README line documents: ``immunostrat`` plus its subcommand path (read from the
    real command tree), ``python <script>``, or ``python3 tasks.py <job>``."""
    words = line.split()
    if words[0] == "immunostrat":
        from immunostrat.cli import app

        command: Any = typer.main.get_command(app)
        key = ["immunostrat"]
        for word in words[1:]:
            subcommands = getattr(command, "commands", {})  # a group's subcommands by name
            if word not in subcommands:
                break
            key.append(word)
            command = subcommands[word]
        return " ".join(key)
    return " ".join(words[:3] if words[0] == "python3" else words[:2])


# ------------------------------------------------------------------------------------------- the walk


@dataclass
class Call:
    """One real call: ``command`` as the README writes it, with the walk's places ({tmp}, {data},
    {demo}, {port}); a ``server`` call runs until its pages have been checked, then is stopped."""

    command: str
    env: dict[str, str] = field(default_factory=dict)
    server: bool = False
    expect_code: int = 0
    expect_text: str | None = None


def _data(present: str, absent: str) -> str:
    return present if SHARED_DATA.is_dir() else absent


MIMIC = "{data}/mimic-iv-demo-2.2"
MEDS = "{data}/mimic-iv-demo-meds/mimic_iv_demo_meds_events.parquet"
COHORT_SOURCE = _data(
    f"--source mimic-iv --path {MIMIC} --meds {MEDS}",
    "--source long --path {demo}",
)
SPARK_SOURCE = _data(
    "--source physionet2019 --path {data}/physionet-challenge-2019 --limit 5", "--source long --path {demo}"
)
PASSWORDS = {
    "IMMUNOSTRAT_ADMIN_PASSWORD": "walk-admin-pass-1",
    "IMMUNOSTRAT_USER_PASSWORD": "walk-user-pass-1",
}

# Command -> its real calls, in the order they run (later calls use earlier outputs).
WALK: dict[str, list[Call]] = {
    "python3 tasks.py demo": [],  # the set-up itself; run first, by the walk
    "immunostrat classify": [
        Call(
            "immunostrat classify --input {demo}/observations.csv --patients {demo}/patients.csv "
            "--protocol immunosep-2025 --output {tmp}/classify.csv"
        )
    ],
    "immunostrat score": [
        Call(
            "immunostrat score --input {demo}/observations.csv --patients {demo}/patients.csv "
            "--score sofa --every 24h --output {tmp}/sofa.parquet"
        )
    ],
    "immunostrat protocols": [Call("immunostrat protocols")],
    "immunostrat concepts": [Call("immunostrat concepts")],
    "immunostrat demo": [Call("immunostrat demo --output-dir {tmp}/demo-output --no-serve")],
    "immunostrat cohort build": [
        # without the extra: one line naming it and the command that installs it
        Call(
            f"immunostrat cohort build {SPARK_SOURCE} --output {{tmp}}/spark --engine spark",
            expect_code=2,
            expect_text="python3 tasks.py extra spark",
        ),
        Call(f"immunostrat cohort build {COHORT_SOURCE} --output {{tmp}}/cohort"),
    ],
    "immunostrat cohort summary": [Call("immunostrat cohort summary {tmp}/cohort")],
    "python benchmarks/cohort.py": [Call("python benchmarks/cohort.py --quick --workdir {tmp}")],
    # clifpy is installed from PyPI into its own environment (its pins clash with ours)
    "python benchmarks/clifpy_sofa2.py": [
        Call(
            "python benchmarks/clifpy_sofa2.py --stays 20 --env {tmp}/clifpy-env",
            expect_text="benchmark clifpy-sofa2",
        )
    ],
    "immunostrat trial templates": [
        Call("immunostrat trial templates", expect_text="sle-secretome"),
        Call("immunostrat trial templates --show sepcell", expect_text="schema_version: 1"),
    ],
    "immunostrat trial init": [
        Call("immunostrat trial init --db sqlite:///{tmp}/trial.db --admin alice", env=PASSWORDS),
        Call("immunostrat trial init --db sqlite:///{tmp}/sle.db --template sle-secretome"),
    ],
    "immunostrat serve": [
        Call("immunostrat serve --demo --db sqlite:///{tmp}/demo.db --port {port}", server=True),
        Call(
            "immunostrat serve --db sqlite:///{tmp}/trial.db --host 127.0.0.1 --port {port}",
            server=True,
        ),
        Call("immunostrat serve --db sqlite:///{tmp}/trial.db --port {port} --workers 2", server=True),
    ],
    "immunostrat trial user": [
        Call(
            "immunostrat trial user --db sqlite:///{tmp}/trial.db --username bob --role investigator "
            "--trial 1 --site S01",
            env=PASSWORDS,
        )
    ],
    "immunostrat trial user-update": [
        Call(
            "immunostrat trial user-update --db sqlite:///{tmp}/trial.db --username bob --deactivate",
            expect_text="deactivated",
        )
    ],
    "immunostrat trial report": [
        Call(
            "immunostrat trial report --db sqlite:///{tmp}/sle.db --trial sle-secretome",
            expect_text="visits done",
        )
    ],
    "immunostrat trial lock": [
        # the command line obeys the API's rule: no unblinded export before the lock
        Call(
            "immunostrat trial export --db sqlite:///{tmp}/demo.db --trial 1 --unblinded "
            "--output {tmp}/early-export",
            expect_code=1,
            expect_text="lock",
        ),
        Call("immunostrat trial lock --db sqlite:///{tmp}/demo.db --trial 1", expect_text="locked"),
    ],
    "immunostrat trial export": [
        Call(
            "immunostrat trial export --db sqlite:///{tmp}/demo.db --trial 1 --unblinded "
            "--output {tmp}/export"
        )
    ],
    "immunostrat audit keygen": [Call("immunostrat audit keygen --output {tmp}/anchor.pem")],
    "immunostrat audit checkpoint": [
        Call(
            "immunostrat audit checkpoint --db sqlite:///{tmp}/demo.db --anchor {tmp}/anchor.jsonl "
            "--key {tmp}/anchor.pem"
        )
    ],
    "immunostrat audit verify": [
        Call("immunostrat audit verify --db sqlite:///{tmp}/demo.db"),
        Call(
            "immunostrat audit verify --db sqlite:///{tmp}/demo.db --anchor {tmp}/anchor.jsonl "
            "--key {tmp}/anchor.pem.pub",
            expect_text="signed checkpoint",
        ),
    ],
    "immunostrat analyze": [
        Call(
            "immunostrat analyze --data {tmp}/export --plan immunosep-2025 --report {tmp}/report/report.html "
            "--pdf --json {tmp}/report/results.json"
        )
    ],
    "immunostrat published": [Call("immunostrat published immunosep-jama-2025")],
    "immunostrat design samplesize proportions": [
        Call(
            "immunostrat design samplesize proportions --p-control 0.2 --p-treated 0.4 --power 0.9 "
            "--dropout 0.15",
            expect_text="117",  # ImmunoSep's 117 per arm (README)
        )
    ],
    "immunostrat design samplesize survival": [
        Call("immunostrat design samplesize survival --hazard-ratio 0.7 --p-event-control 0.5")
    ],
    "immunostrat design samplesize repeated": [
        Call("immunostrat design samplesize repeated --difference 2 --sd 4 --visits 3")
    ],
    "immunostrat design samplesize survival-accrual": [
        Call(
            "immunostrat design samplesize survival-accrual --hazard-ratio 0.7 --median-control 10 "
            "--accrual 24 --followup 12 --dropout-rate 0.1 --looks 0.5,1"
        )
    ],
    "immunostrat design group-sequential": [
        Call("immunostrat design group-sequential --looks 0.5,1 --futility bsOF")
    ],
    "immunostrat simulate population": [
        Call(
            "immunostrat simulate population --size 200 --seed 1 --output {tmp}/vpop.parquet "
            "--observations {tmp}/vobs.parquet"
        )
    ],
    "immunostrat simulate trial": [
        Call("immunostrat simulate trial --design immunosep --n 60 --trials 5 --population-size 200")
    ],
    "immunostrat simulate validate": [
        Call("immunostrat simulate validate --quick --population-size 200 --trials 40")
    ],
    "immunostrat simulate plots": [
        Call("immunostrat simulate plots --output-dir {tmp}/figures --sizes 40,80 --trials 5")
    ],
    "immunostrat simulate size": [
        Call(
            "immunostrat simulate size --design immunosep --power 0.8 --trials 10 --population-size 200 "
            "--max-n 120"
        )
    ],
    "python benchmarks/simulate.py": [
        # JAX is the extra `jax`: its row is skipped with the command that installs it
        Call("python benchmarks/simulate.py --quick", expect_text="python3 tasks.py extra jax")
    ],
    "python scripts/simulation_results.py": [
        Call("python scripts/simulation_results.py --model full --size 200 --trials 5 --n 60")
    ],
    "python scripts/calibrate_secondary_infection.py": [
        Call("python scripts/calibrate_secondary_infection.py --size 200 --hazard 0.002")
    ],
    # the optional engine: installed from its pinned lock, then the Spark build that needed it runs
    "python3 tasks.py extra": [
        Call("python3 tasks.py extra spark"),
        Call(f"immunostrat cohort build {SPARK_SOURCE} --output {{tmp}}/spark --engine spark"),
    ],
    # last: it installs the development lock into the same environment
    "python3 tasks.py test": [
        Call("python3 tasks.py test -q -p no:cacheprovider tests/test_domain_examples.py")
    ],
}


def test_every_readme_command_is_walked() -> None:
    documented = {command_key(line) for line in readme_command_lines(README.read_text(encoding="utf-8"))}
    assert "immunostrat cohort build" in documented  # the parser reads the README's blocks
    assert sorted(documented - WALK.keys()) == [], "README commands the walk does not cover"
    assert sorted(WALK.keys() - documented) == [], "walk entries the README no longer documents"


def test_command_key_follows_the_command_tree() -> None:
    assert command_key("immunostrat cohort summary out/mimic") == "immunostrat cohort summary"
    assert command_key("immunostrat design samplesize survival --hazard-ratio 0.7") == (
        "immunostrat design samplesize survival"
    )
    assert command_key("immunostrat published [a|b]") == "immunostrat published"
    assert command_key("python benchmarks/cohort.py [--quick]") == "python benchmarks/cohort.py"
    assert command_key("python3 tasks.py extra spark|jax") == "python3 tasks.py extra"


@dataclass
class Walker:
    repo: Path
    venv: Path
    tmp: Path
    env: dict[str, str]
    timings: list[tuple[str, float]] = field(default_factory=list)

    def argv(self, words: list[str], port: int = 0) -> list[str]:
        places = {
            "tmp": str(self.tmp),
            "data": str(SHARED_DATA),
            "demo": str(self.repo / "src" / "immunostrat" / "data" / "demo"),
            "port": str(port),
        }
        out = [w.format(**places) for w in words]
        if out[0] == "immunostrat":
            out[0] = str(self.venv / "bin" / "immunostrat")
        elif out[0] == "python":
            out[0] = str(self.venv / "bin" / "python")
        elif out[0] == "python3":
            out[0] = shutil.which("python3") or sys.executable
        return out

    def run(
        self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        done = subprocess.run(
            argv,
            cwd=self.repo,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        self.timings.append((" ".join([Path(argv[0]).name, *argv[1:4]]), time.monotonic() - start))
        return done

    def check(self, call: Call) -> None:
        argv = self.argv(call.command.split())
        done = self.run(argv, call.env)
        shown = (
            f"{' '.join(argv)}\nexit {done.returncode}\n"
            f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        )
        assert done.returncode == call.expect_code, shown
        assert "Traceback" not in done.stderr + done.stdout, shown
        if call.expect_code != 0:
            errors = [line for line in done.stderr.splitlines() if line.strip()]
            assert len(errors) == 1, shown  # one line, whatever the terminal width
        if call.expect_text is not None:
            assert call.expect_text in re.sub(r"\s+", " ", done.stdout + done.stderr), shown

    def serve(self, call: Call) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        argv = self.argv(call.command.split(), port)
        base = f"http://127.0.0.1:{port}"
        log = self.tmp / f"serve-{port}.log"
        start = time.monotonic()
        with log.open("w") as out:
            proc = subprocess.Popen(argv, cwd=self.repo, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"{' '.join(argv)} exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, (
                    f"{' '.join(argv)} did not start:\n{log.read_text()[-3000:]}"
                )
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            docs = httpx.get(f"{base}/docs", timeout=30)
            assert docs.status_code == 200
            assert "/docs-assets/swagger-ui-bundle.js" in docs.text
            assert httpx.get(f"{base}/docs-assets/swagger-ui-bundle.js", timeout=30).status_code == 200
            spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
            assert "/classify" in spec["paths"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        self.timings.append((" ".join([Path(argv[0]).name, *argv[1:4]]), time.monotonic() - start))
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _copy_working_tree(dest: Path) -> None:
    """The files a checkout has (tracked and untracked, not ignored), without environments or caches."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


SIGN_IN_LINE = re.compile(r"^\s+(\w+)\s+(demo-\w+)\s+(\S+)\s*$")


def first_command(walker: Walker) -> None:
    """``python3 tasks.py demo`` as a user runs it: it installs, runs the main job, then serves the web
    application on the demo trial and prints the address and one sign-in per role; each printed
    sign-in opens the pages, and Ctrl-C (SIGINT to the terminal's process group) ends it cleanly."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [shutil.which("python3") or sys.executable, "tasks.py", "demo", "--port", str(port)]
    log = walker.tmp / "first-command.log"
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv,
            cwd=walker.repo,
            env=walker.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 900
        while "open http" not in log.read_text():
            assert proc.poll() is None, f"{' '.join(argv)} exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no address printed:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        text = log.read_text()
        url = re.search(r"open (http://\S+/web/)", text)
        assert url is not None and url.group(1) == f"http://127.0.0.1:{port}/web/", text[-2000:]
        matches = [SIGN_IN_LINE.match(line) for line in text.splitlines()]
        users = {m.group(1): (m.group(2), m.group(3)) for m in matches if m}
        roles = ("investigator", "pharmacist", "monitor", "statistician", "admin")
        assert set(users) >= {*roles, "clinician", "researcher", "modeller"}, text[-2000:]
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(url.group(1) + "sign-in", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        for role in (*roles, "clinician"):
            with httpx.Client(base_url=url.group(1), timeout=60) as client:
                username, password = users[role]
                signed = client.post("sign-in", data={"username": username, "password": password})
                assert signed.status_code == 303, (role, signed.status_code, signed.text[:500])
                home = client.get("")
                assert home.status_code == 200 and username in home.text, (role, home.text[:500])
                if role in roles:  # the demo trial is there for every trial role
                    assert "immunosep-demo" in home.text, (role, home.text[:2000])
        with httpx.Client(base_url=url.group(1), timeout=120) as client:  # the researcher's demo cohort
            username, password = users["researcher"]
            signed = client.post("sign-in", data={"username": username, "password": password})
            assert signed.status_code == 303, signed.text[:500]
            cohort = client.get("cohorts/bundled-demo")
            assert cohort.status_code == 200 and "<svg" in cohort.text, cohort.text[:2000]
        assert (walker.repo / "demo-output" / "classify.csv").exists()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    walker.timings.append(("tasks.py demo", time.monotonic() - start))
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


HELP_SCRIPT = """
import json, sys
from typer.testing import CliRunner
from immunostrat.cli import app
for path in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, [*path, "--help"])
    print(json.dumps({"path": path, "code": result.exit_code, "output": result.output,
                      "error": None if result.exception is None or isinstance(result.exception, SystemExit)
                      else repr(result.exception)}))
"""


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(1800)
def test_readme_setup_serves_every_documented_command(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to copy the working tree from")
    repo, venv, work = tmp_path / "repo", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    _copy_working_tree(repo)
    dev_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != dev_bin]
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}}
    env |= {
        "IMMUNOSTRAT_VENV": str(venv),
        "PATH": os.pathsep.join([str(venv / "bin"), *path]),
        "COLUMNS": "200",
    }
    walker = Walker(repo, venv, work, env)

    # the README's first command makes the environment, runs the demo and serves the web application
    first_command(walker)
    assert (venv / "bin" / "immunostrat").exists()

    documented = [command_key(line) for line in readme_command_lines(README.read_text(encoding="utf-8"))]
    keys = list(dict.fromkeys(documented))

    # --help of every command: the programs and scripts as processes, the subcommands in one process
    programs = ["immunostrat --help"] + [
        f"{' '.join(k.split()[:2])} --help" for k in keys if not k.startswith("immunostrat ")
    ]
    for program in dict.fromkeys(programs):
        done = walker.run(walker.argv(program.split()))
        assert done.returncode == 0 and "Traceback" not in done.stderr, f"{program}: {done.stderr[-2000:]}"
        assert "usage" in (done.stdout + done.stderr).lower(), program
    paths = [k.split()[1:] for k in keys if k.startswith("immunostrat ")]
    helped = walker.run([str(venv / "bin" / "python"), "-c", HELP_SCRIPT, json.dumps(paths)])
    assert helped.returncode == 0, helped.stderr[-3000:]
    results = [json.loads(line) for line in helped.stdout.splitlines() if line.startswith("{")]
    assert [r["path"] for r in results] == paths
    for result in results:
        assert result["code"] == 0 and result["error"] is None, result
        assert "Usage:" in result["output"], result

    # one real call each, in the walk's order
    for calls in WALK.values():
        for call in calls:
            (walker.serve if call.server else walker.check)(call)

    slowest = sorted(walker.timings, key=lambda t: -t[1])[:8]
    print(
        "walk:",
        f"{sum(t for _, t in walker.timings):.0f} s;",
        "; ".join(f"{n} {t:.0f} s" for n, t in slowest),
    )
