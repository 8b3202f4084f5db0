"""Figures: the outcome map shows the published classes; PNG files are written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from immunostrat.simulation.model import ASEPTIC_DEATH, HEALTH, SEPTIC_DEATH
from immunostrat.simulation.plots import outcome_map, plot_outcome_map, plot_power_curves

PNG = b"\x89PNG\r\n\x1a\n"


def test_outcome_map_classes() -> None:
    kk, _, classes = outcome_map([0.3, 0.6], [0.5, 1.5])
    assert classes.shape == (2, 2)
    # k_pg 0.3: P0 0.5 heals, 1.5 aseptic death; k_pg 0.6: septic death from P0 0.384 (insilico.md 7)
    assert classes.tolist() == [[HEALTH, ASEPTIC_DEATH], [SEPTIC_DEATH, SEPTIC_DEATH]]
    np.testing.assert_allclose(kk, [0.3, 0.6])


def test_png_files(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    out = plot_outcome_map(tmp_path / "fig" / "map.png", np.linspace(0.2, 1.0, 5), np.geomspace(0.1, 3, 6),
                           progress=lambda a, b: calls.append((a, b)))  # fmt: skip
    assert out.read_bytes()[:8] == PNG
    assert calls == [(1, 1)]
    curve = plot_power_curves(tmp_path / "power.png", [50, 100], {"immunosep": [0.3, 0.6], "all": [0.1, 0.2]})
    assert curve.read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fig", "map.png", "power.png"]
