"""The results script of docs/simulation.md runs end to end (tiny sizes) and prints every design."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from immunostrat.simulation.trial import DESIGNS

SCRIPT = Path(__file__).parents[2] / "scripts" / "simulation_results.py"


def test_simulation_results_script_prints_every_design(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("simulation_results", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["simulation_results.py", "--model", "full", "--size", "120", "--trials", "4", "--n", "40"]
    monkeypatch.setattr(sys, "argv", args)
    module.main()
    out = capsys.readouterr().out
    assert "chi-square" in out
    for design in DESIGNS:
        assert f"== {design}: power SOFA" in out
    assert "superinfection_d15" in out
