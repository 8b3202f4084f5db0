"""report_data: the numbers the cohort pages and `cohort summary` share, on the hand-built source
with known answers (tests/cohort/conftest.py)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import polars as pl
import pytest

from immunostrat.analysis.stats import wilson_interval
from immunostrat.cohort import build_cohort, report_data
from immunostrat.sources import SourceData


@pytest.fixture(scope="module")
def folder(hand_source: SourceData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohorts")
    build_cohort(hand_source, output_dir=root / "hand")
    (root / "empty").mkdir()
    (root / ".hand.tmp-1234").mkdir()
    (root / ".hand.tmp-1234" / "summary.json").write_text("{}")
    (root / "broken").mkdir()
    (root / "broken" / "summary.json").write_text("{not json")
    return root / "hand"


def test_listing_names_build_folders_only(folder: Path) -> None:
    found, unreadable = report_data.list_cohorts(folder.parent)
    assert [c.name for c in found] == ["hand"]
    assert found[0].stays == 4 and found[0].source == "fixture" and found[0].built_at.tzinfo is not None
    assert len(unreadable) == 1 and unreadable[0].startswith("broken: ")


def test_trajectories_count_each_stay_once_per_bin(folder: Path) -> None:
    hourly = pl.read_parquet(folder / "hourly_sofa.parquet")
    stays = pl.read_parquet(folder / "stays.parquet")
    points = report_data.sofa_trajectories(folder, bin="day")
    # day 1: every stay with a grid hour below 24, its worst hourly total
    first = hourly.filter(pl.col("hour") < 24).group_by("stay_id").agg(pl.col("sofa_total").max())
    first = first.join(stays.select("stay_id", "first_endotype"), on="stay_id")
    for (endotype,), part in first.group_by("first_endotype"):
        (point,) = [p for p in points if p.endotype == endotype and p.bin == 0]
        assert point.n == part.height
        assert point.mean == pytest.approx(float(part["sofa_total"].mean()))  # type: ignore[arg-type]
        if part.height >= 2:
            assert point.ci is not None and point.ci[0] <= point.mean <= point.ci[1]
        else:
            assert point.ci is None
    hours = report_data.sofa_trajectories(folder, bin="hour")
    assert sum(p.n for p in hours) == hourly.filter(pl.col("hour") < 168).height
    with pytest.raises(ValueError, match="unknown bin"):
        report_data.sofa_trajectories(folder, bin="week")  # type: ignore[arg-type]


def test_mean_interval_is_students_t() -> None:
    _lo, hi = report_data.mean_interval(10.0, 2.0, 4) or (0.0, 0.0)
    assert hi - 10.0 == pytest.approx(3.182446305 * 2.0 / 2.0)  # t(0.975, 3) * sd / sqrt(n)
    assert report_data.mean_interval(10.0, None, 1) is None


def test_mortality_with_wilson_interval(folder: Path) -> None:
    summary = json.loads((folder / "summary.json").read_text())
    rows = report_data.mortality_by_endotype(summary)
    assert rows is not None
    stays = pl.read_parquet(folder / "stays.parquet")
    assert (
        sum(r.stays for r in rows) == stays.height and sum(r.deaths for r in rows) == stays["death_28d"].sum()
    )
    for r in rows:
        assert r.ci == pytest.approx(wilson_interval(r.deaths, r.stays))  # the trial analysis's interval
    assert "Wilson 95% CI" in report_data.format_mortality(rows)
    absent = {**summary, "mortality_28d_known": False, "mortality_28d_by_endotype": {}}
    assert report_data.mortality_by_endotype(absent) is None
    assert "not in the source" in report_data.format_mortality(None)


def test_stay_search_and_timeline(folder: Path) -> None:
    found, total = report_data.find_stays(folder, "s")
    assert total == 4 and [s["stay_id"] for s in found] == ["s1", "s2", "s3", "s4"]
    assert report_data.find_stays(folder, "s1", limit=1)[1] == 1
    assert report_data.find_stays(folder, ".*")[1] == 0  # a literal match, not a pattern
    assert report_data.stay_timeline(folder, "nope") is None
    tl = report_data.stay_timeline(folder, "s1")
    assert tl is not None
    hourly = pl.read_parquet(folder / "hourly_sofa.parquet").filter(pl.col("stay_id") == "s1")
    assert [h["hour"] for h in tl.hours] == sorted(hourly["hour"].to_list())
    assert sum(p["hours"] for p in tl.periods) == hourly.height
    runs = [p["endotype"] for p in tl.periods]
    assert all(a != b for a, b in itertools.pairwise(runs))  # a run ends where the endotype changes
    assert "mals" in runs and "immunoparalysis" in runs
    assert tl.sepsis3 is not None and tl.sepsis3["sepsis3"]
    onset = tl.hour_at(tl.sepsis3["sepsis_time"])
    assert onset is not None and not math.isnan(onset)
