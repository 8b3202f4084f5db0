"""Without an optional extra, each thing that needs it stops with one line naming the extra and the
command that installs it. The extras are hidden from a real Python process by an import hook that
refuses ``pyspark`` and ``jax``, exactly as if they were not installed; nothing of ours is replaced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "src" / "immunostrat" / "data" / "demo"

HIDE_EXTRAS = """
import importlib.abc, sys
class RefuseExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pyspark", "jax", "jaxlib"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, RefuseExtras())
"""


def run_hidden(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HIDE_EXTRAS + code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"},
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_the_hook_hides_the_extras(tmp_path: Path) -> None:
    done = run_hidden(
        "from immunostrat.extras import missing_modules\n"
        "print(missing_modules('spark'), missing_modules('jax'))\n"
        "import pyspark\n",
        tmp_path,
    )
    assert done.stdout.strip() == "['pyspark'] ['jax']"
    assert "ModuleNotFoundError" in done.stderr


def test_cohort_build_engine_spark_names_the_extra(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    done = run_hidden(
        "import sys\nfrom immunostrat.cli import main\n"
        f"sys.argv = ['immunostrat', 'cohort', 'build', '--source', 'long', '--path', {str(DEMO)!r}, "
        f"'--output', {str(out)!r}, '--engine', 'spark']\nmain()\n",
        tmp_path,
    )
    assert done.returncode == 2
    line = one_error_line(done)
    assert "--engine spark needs the optional extra 'spark'" in line
    assert "pyspark is not installed" in line
    assert line.endswith("install it with: python3 tasks.py extra spark")
    assert not out.exists()  # stopped before any work


def test_cohort_library_call_names_the_extra(tmp_path: Path) -> None:
    done = run_hidden(
        "from immunostrat.cohort import connect\n"
        "from immunostrat.extras import MissingExtraError\n"
        "try:\n    connect('spark')\nexcept MissingExtraError as error:\n    print(error)\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "the Spark engine needs the optional extra 'spark'" in done.stdout
    assert "python3 tasks.py extra spark" in done.stdout


def test_integrate_jax_names_the_extra(tmp_path: Path) -> None:
    done = run_hidden(
        "from immunostrat.simulation import integrate_jax\n"
        "from immunostrat.extras import MissingExtraError\n"
        "try:\n    integrate_jax([[1.0]], None)\nexcept MissingExtraError as error:\n    print(error)\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "the JAX engine needs the optional extra 'jax' (jax is not installed); "
        "install it with: python3 tasks.py extra jax"
    )


def test_cohort_benchmark_names_the_extra(tmp_path: Path) -> None:
    done = run_hidden(
        "import runpy, sys\n"
        f"sys.argv = ['cohort.py', '--engines', 'spark', '--workdir', {str(tmp_path)!r}]\n"
        f"runpy.run_path({str(ROOT / 'benchmarks' / 'cohort.py')!r}, run_name='__main__')\n",
        tmp_path,
    )
    assert done.returncode == 1
    assert one_error_line(done) == (
        "error: --engines spark: the optional extra 'spark' is not installed; "
        "install it with: python3 tasks.py extra spark"
    )
