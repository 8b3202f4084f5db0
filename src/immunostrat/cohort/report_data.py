"""The numbers a reader of a `cohort build` folder sees, computed once for the command line
(``immunostrat cohort summary``) and the cohort pages: the folders of a cohorts directory, SOFA
trajectories by first known endotype (mean, 95% CI and n stays per bin), mortality by endotype
(Wilson interval), endotype prevalence, and one stay's timeline.

Large outputs are read lazily (``polars.scan_parquet``: only the columns and, for a stay, the rows
needed), so a folder of 10^5 stays is read in seconds, not loaded whole.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import polars as pl

COHORTS_DIR_ENV = "IMMUNOSTRAT_COHORTS_DIR"
"""The setting naming the folder of ``cohort build`` outputs that may be opened (one per subfolder)."""
TRAJECTORY_HOURS = 7 * 24
"""SOFA trajectories cover the first seven days after ICU admission."""
SOFA_COMPONENTS = ("respiration", "coagulation", "liver", "cardiovascular", "cns", "renal")
"""The organ systems of ``hourly_sofa`` (``sofa_<name>``; SOFA-2 keeps these column names)."""
Bin = Literal["day", "hour"]
BIN_HOURS: dict[str, int] = {"day": 24, "hour": 1}


# ----------------------------------------------------------------------------------- the folders


@dataclass(frozen=True)
class CohortInfo:
    """One build output: its folder name, what summary.json says, and when it was written."""

    name: str
    path: Path
    source: str
    stays: int
    septic_stays: int
    patient_hours: int
    sofa_variant: str
    protocol: str
    built_at: datetime
    """``built_at`` of summary.json where the build wrote one, else the file's modification time
    (``cohort build`` writes the folder at the end of the build)."""
    summary: dict[str, Any] = field(repr=False, compare=False)


def is_cohort_folder(path: Path) -> bool:
    """A visible folder with the build's summary.json (the builder's temporary folders start with a dot)."""
    return not path.name.startswith(".") and path.is_dir() and (path / "summary.json").is_file()


def cohort_info(folder: str | Path) -> CohortInfo:
    path = Path(folder)
    summary_file = path / "summary.json"
    summary: dict[str, Any] = json.loads(summary_file.read_text(encoding="utf-8"))
    stamp = summary.get("built_at")
    built = (
        datetime.fromisoformat(str(stamp))
        if stamp
        else datetime.fromtimestamp(summary_file.stat().st_mtime, tz=UTC)
    )
    protocol = summary.get("protocol") or {}
    return CohortInfo(
        name=path.name,
        path=path,
        source=str(summary.get("source", "")),
        stays=int(summary.get("stays", 0)),
        septic_stays=int(summary.get("septic_stays", 0)),
        patient_hours=int(summary.get("patient_hours", 0)),
        sofa_variant=str(summary.get("sofa_variant", "sofa-1996")),
        protocol=f"{protocol.get('id', '')} {protocol.get('version', '')}".strip(),
        built_at=built,
        summary=summary,
    )


def list_cohorts(root: str | Path) -> tuple[list[CohortInfo], list[str]]:
    """The build outputs directly under ``root`` (sorted by name), and the folders that look like
    one but whose summary.json cannot be read (named, not opened)."""
    base = Path(root)
    found: list[CohortInfo] = []
    unreadable: list[str] = []
    for path in sorted(base.iterdir(), key=lambda p: p.name):
        if not is_cohort_folder(path):
            continue
        try:
            found.append(cohort_info(path))
        except (OSError, ValueError, TypeError) as error:
            unreadable.append(f"{path.name}: {error}")
    return found, unreadable


# ------------------------------------------------------------------------------------ statistics


def mean_interval(mean: float, sd: float | None, n: int, conf: float = 0.95) -> tuple[float, float] | None:
    """Student's t interval for a mean (None below two observations)."""
    if n < 2 or sd is None or math.isnan(sd):
        return None
    from scipy.stats import t

    half = float(t.ppf(0.5 + conf / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def proportion_interval(x: int, n: int, conf: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval (statsmodels, as the trial analysis uses); None when n is 0."""
    if n <= 0:
        return None
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(x, n, alpha=1 - conf, method="wilson")
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------- the summary


@dataclass(frozen=True)
class TrajectoryPoint:
    endotype: str
    bin: int
    """Day 0 is the first 24 h of the ICU grid (hours 0-23); with hour bins, the grid hour."""
    n: int
    """Stays with a SOFA total in the bin."""
    mean: float
    sd: float | None
    ci: tuple[float, float] | None


def sofa_trajectories(
    folder: str | Path, bin: Bin = "day", hours: int = TRAJECTORY_HOURS
) -> list[TrajectoryPoint]:
    """Mean SOFA total by first known endotype over the first ``hours`` of each stay: one value per
    stay and bin (the bin's worst hourly total: each hourly total is already the worst over the
    trailing 24 h, so a day's value is its daily SOFA), then the mean over stays with its 95% t
    interval and n stays. Stays count once per bin, so the interval is over independent stays."""
    if bin not in BIN_HOURS:
        raise ValueError(f"unknown bin {bin!r}: day | hour")
    path = Path(folder)
    width = BIN_HOURS[bin]
    stays = pl.scan_parquet(path / "stays.parquet").select("stay_id", "first_endotype")
    per_stay = (
        pl.scan_parquet(path / "hourly_sofa.parquet")
        .select("stay_id", "hour", "sofa_total")
        .filter((pl.col("hour") >= 0) & (pl.col("hour") < hours) & pl.col("sofa_total").is_not_null())
        .with_columns((pl.col("hour") // width).alias("bin"))
    )
    if width == 1:  # the grid has one row per stay and hour already
        per_stay = per_stay.rename({"sofa_total": "value"})
    else:
        per_stay = per_stay.group_by("stay_id", "bin").agg(pl.col("sofa_total").max().alias("value"))
    table = (
        per_stay.join(stays, on="stay_id", how="left")
        .with_columns(pl.col("first_endotype").fill_null("unknown"))
        .group_by("first_endotype", "bin")
        .agg(
            pl.len().alias("n"),
            pl.col("value").cast(pl.Float64).mean().alias("mean"),
            pl.col("value").cast(pl.Float64).std().alias("sd"),
        )
        .sort("first_endotype", "bin")
        .collect()
    )
    return [
        TrajectoryPoint(
            endotype=str(row["first_endotype"]),
            bin=int(row["bin"]),
            n=int(row["n"]),
            mean=float(row["mean"]),
            sd=None if row["sd"] is None else float(row["sd"]),
            ci=mean_interval(float(row["mean"]), row["sd"], int(row["n"])),
        )
        for row in table.iter_rows(named=True)
    ]


@dataclass(frozen=True)
class MortalityRow:
    endotype: str
    stays: int
    deaths: int
    proportion: float | None
    ci: tuple[float, float] | None


def mortality_by_endotype(summary: dict[str, Any]) -> list[MortalityRow] | None:
    """28-day mortality by first known endotype with the Wilson interval; None where the source
    records no follow-up (no death and no discharge for any stay: "not in the source", never 0)."""
    if not summary.get("mortality_28d_known", True) or "mortality_28d_by_endotype" not in summary:
        return None
    rows = []
    for name, value in sorted(summary["mortality_28d_by_endotype"].items()):
        stays, deaths = int(value["stays"]), int(value["deaths"])
        rows.append(
            MortalityRow(
                endotype=name,
                stays=stays,
                deaths=deaths,
                proportion=deaths / stays if stays else None,
                ci=proportion_interval(deaths, stays),
            )
        )
    return rows


@dataclass(frozen=True)
class PrevalenceRow:
    endotype: str
    ever: int
    """Stays with at least one hour of this endotype."""
    first_known: int
    """Stays whose first known endotype it is (``unknown``: none ever known)."""
    stays: int


def endotype_prevalence(summary: dict[str, Any]) -> list[PrevalenceRow]:
    ever = summary.get("endotype_stays_ever") or {}
    first = summary.get("endotype_first_known") or {}
    total = int(summary.get("stays", 0))
    return [
        PrevalenceRow(name, int(ever.get(name, 0)), int(first.get(name, 0)), total)
        for name in sorted(set(ever) | set(first))
    ]


def format_mortality(rows: list[MortalityRow] | None) -> str:
    """One line for the command line's summary."""
    if rows is None:
        return (
            "28-day mortality by first known endotype: "
            "not in the source (no death or discharge recorded for any stay)"
        )
    parts = []
    for r in rows:
        if r.proportion is None or r.ci is None:
            parts.append(f"{r.endotype} {r.deaths}/{r.stays}")
        else:
            parts.append(
                f"{r.endotype} {r.deaths}/{r.stays} ({100 * r.proportion:.1f}%, "
                f"95% CI {100 * r.ci[0]:.1f} to {100 * r.ci[1]:.1f})"
            )
    return "28-day mortality by first known endotype (Wilson 95% CI): " + ", ".join(parts)


# ------------------------------------------------------------------------------------ the stays


def find_stays(folder: str | Path, query: str, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
    """Stays whose stay id or patient id contains ``query`` (all stays for an empty query), sorted
    by stay id: the first ``limit`` and how many matched."""
    text = query.strip()
    frame = pl.scan_parquet(Path(folder) / "stays.parquet").select(
        "stay_id", "patient_id", "icu_intime", "icu_outtime", "sepsis3", "first_endotype", "grid_hours"
    )
    if text:
        frame = frame.filter(
            pl.col("stay_id").str.contains(text, literal=True)
            | pl.col("patient_id").fill_null("").str.contains(text, literal=True)
        )
    matched = frame.sort("stay_id").collect()
    return matched.head(limit).to_dicts(), matched.height


@dataclass
class StayTimeline:
    stay: dict[str, Any]
    """The stays row (ICU times, age, sex, outcome, first endotype)."""
    sepsis3: dict[str, Any] | None
    hours: list[dict[str, Any]]
    """One row per grid hour: hour, time, ``sofa_<component>``, total, missing components, endotype."""
    periods: list[dict[str, Any]]
    """Runs of one endotype: endotype, first and last hour, start time, hours."""

    def hour_at(self, when: datetime | None) -> float | None:
        """A time as fractional grid hours (hour 0 is the first grid row's time)."""
        if when is None or not self.hours:
            return None
        start = self.hours[0]["time"] - timedelta(hours=self.hours[0]["hour"])
        return (when - start).total_seconds() / 3600.0


def stay_timeline(folder: str | Path, stay_id: str) -> StayTimeline | None:
    """One stay's hourly SOFA components and total, endotype runs and Sepsis-3 row (None when the
    folder has no such stay). Only that stay's rows are read."""
    path = Path(folder)
    stays = pl.scan_parquet(path / "stays.parquet").filter(pl.col("stay_id") == stay_id).collect()
    if stays.height == 0:
        return None
    wanted = ["stay_id", "hour", "time", *(f"sofa_{c}" for c in SOFA_COMPONENTS)]
    wanted += ["sofa_total", "sofa_missing", "sofa_missing_components", "endotype", "therapy"]
    scan = pl.scan_parquet(path / "hourly_sofa.parquet")
    present = set(scan.collect_schema().names())
    hourly = (
        scan.select([c for c in wanted if c in present])
        .filter(pl.col("stay_id") == stay_id)
        .sort("hour")
        .collect()
    )
    septic = pl.scan_parquet(path / "sepsis3.parquet").filter(pl.col("stay_id") == stay_id).collect()
    hours = hourly.to_dicts()
    periods: list[dict[str, Any]] = []
    for row in hours:
        name = row.get("endotype") or "unknown"
        if periods and periods[-1]["endotype"] == name and periods[-1]["last_hour"] == row["hour"] - 1:
            periods[-1]["last_hour"] = row["hour"]
            periods[-1]["hours"] += 1
        else:
            periods.append(
                {
                    "endotype": name,
                    "first_hour": row["hour"],
                    "last_hour": row["hour"],
                    "start": row["time"],
                    "hours": 1,
                    "therapy": row.get("therapy"),
                }
            )
    return StayTimeline(
        stay=stays.row(0, named=True),
        sepsis3=septic.row(0, named=True) if septic.height else None,
        hours=hours,
        periods=periods,
    )
