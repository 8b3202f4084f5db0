"""Benchmark: hourly SOFA + immune endotypes over whole synthetic cohorts.

    python benchmarks/cohort.py [--quick] [--sizes 1e5 1e6 1e7 1e8] [--engines duckdb spark] [--repeats 3]

For each size (observation rows) a synthetic cohort is written (``immunostrat.cohort.synthetic``) and run
through:

- ``build_cohort`` on DuckDB and on PySpark (``local[2]``): the whole build (the engine's query to hourly
  buckets, then in Polars the hourly grid, windows, SOFA, endotypes, Sepsis-3, summary). On DuckDB the
  compiled SQL is cached per process and per rule choice (``engine._PLAN_CACHE``); the warm-up build
  fills it, so "immunostrat DuckDB" is a build in a process that has built once, and "immunostrat
  DuckDB cold" the same build with the cache emptied (building and compiling the Ibis plan included);
- (a) the baseline a user would write: plain pandas, one stay at a time (groupby, resample/rolling,
  ``merge_asof`` and loops over the hourly grid) implementing the same rules, then the same score and
  protocol functions once on the result. Above ``--pandas-stays`` stays it runs on a deterministic sample
  of that many stays and its rate (patient-hours per second) is extrapolated: its cost is linear in the
  number of stays by construction; the sample is stated in the table;
- (b) an SQL SOFA in the style of MIT-LCP mimic-code's DuckDB concept (hourly components from range
  joins of the hourly table to the charted values, then the maximum over the trailing 24 hourly rows;
  no 1-hour vasopressor rule, 24-h urine rescaled when 22-30 h observed, missing -> 0). It is a
  re-implementation in that style written here, NOT mimic-code itself (which could not be fetched), run
  on DuckDB on the same data.
- (c) with ``--clifpy-stays N``: clifpy's SOFA-2 (``benchmarks/clifpy_sofa2.py``, its own environment)
  on N synthetic stays, against our SOFA-2 build on the same stays.

Checks (on every size run): DuckDB and Spark tables identical; the pandas baseline equals the engine
(SOFA total, every component and the endotype, every stay-hour of the sample); the mimic-style score is
compared (share of stay-hours with the same total) but not asserted, because its rules differ.
With ``--repeats N`` each DuckDB build and the mimic-code-style SQL run N times and the fastest run
counts (the same rule on both sides: on a shared machine the fastest is the least disturbed).
``--memory-limit`` bounds DuckDB (it spills to disk beyond it) and ``--repeat-max-rows`` keeps only the
warm whole build above a size (for a 10^8-row out-of-core run).
Peak memory: the largest resident set (this process plus its children, e.g. Spark's JVM) sampled
during each run. The last line is ``benchmark cohort: ...`` with the ratio of the mimic-code-style
SQL's time to our whole build's at 10^6 rows (above 1: ours faster) and the share of stay-hours where
the two give the same total, the ratio of DuckDB's to pandas' patient-hours per second at the largest
size run, and with ``--clifpy-stays`` how much slower clifpy is on its sample.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl

from immunostrat.cohort import ParquetInput, build_cohort, spark_session
from immunostrat.cohort.engine import _PLAN_CACHE, connect, finish_hourly, plan_hourly
from immunostrat.cohort.synthetic import stays_for_rows, synthetic_input, write_synthetic
from immunostrat.extras import install_command, missing_modules
from immunostrat.protocols import classify_frame, load_protocol
from immunostrat.scores import SOFA_COMPONENTS, load_definition, sofa

PROTOCOL = "immunosep-2025"
SPARK_CONFIG = {"spark.driver.memory": "4g", "spark.driver.maxResultSize": "2g"}


# ------------------------------------------------------------------------------------------ memory


def _rss_tree_kb(pid: int) -> int:
    """Resident set of ``pid`` and all its descendants, in kB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


class PeakMemory:
    """Samples the process tree's resident set every 0.2 s while in use; ``mib`` is the peak's rise
    over the resident set at the start (memory the run needed on top of what was already held)."""

    def __enter__(self) -> PeakMemory:
        self.start_kb = self.peak_kb = _rss_tree_kb(os.getpid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_kb = max(self.peak_kb, _rss_tree_kb(os.getpid()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _rss_tree_kb(os.getpid()))

    @property
    def mib(self) -> float:
        return (self.peak_kb - self.start_kb) / 1024.0


# ------------------------------------------------------------------------- (a) pandas, per stay

VASOPRESSORS = ("dopamine_rate", "dobutamine_rate", "epinephrine_rate", "norepinephrine_rate")
HOUR = pd.Timedelta(hours=1)


def _resp_points(ratio: np.ndarray, vent: np.ndarray) -> np.ndarray:
    """Respiration points from the band table of sofa-1996.yaml (the same data the engine uses)."""
    spec = load_definition("sofa")["components"]["respiration"]
    points = np.zeros(ratio.shape, dtype=np.int64)
    for band in spec["bands"]:
        ok = ratio < band["threshold"] if band["op"] == "<" else ratio <= band["threshold"]
        if band.get("requires"):
            ok &= vent >= 1
        points = np.where(ok, np.maximum(points, band["points"]), points)
    return points


def pandas_stay(
    stay: Any,
    obs: pd.DataFrame,
    fresh_hours: dict[str, float],
    min_run: pd.Timedelta,
    max_gap: pd.Timedelta,
) -> pd.DataFrame:
    """The rules of the engine for one stay, as a pandas user would write them."""
    first = (stay.icu_intime - pd.Timedelta(microseconds=1)).floor("h") + HOUR
    last = (max(stay.icu_outtime, stay.icu_intime) - pd.Timedelta(microseconds=1)).floor("h") + HOUR
    grid = pd.date_range(first, last, freq="h")
    out = pd.DataFrame({"stay_id": stay.stay_id, "time": grid})
    by = dict(tuple(obs.groupby("concept")))
    full = pd.date_range(first - 23 * HOUR, last, freq="h")
    for concept, how in (
        ("platelets", "min"),
        ("gcs", "min"),
        ("map", "min"),
        ("bilirubin", "max"),
        ("creatinine", "max"),
    ):
        part = by.get(concept)
        if part is None:
            out[concept] = np.nan
            continue
        s = part.set_index("time")["value"].sort_index()
        hourly = s.resample("1h", closed="right", label="right").agg(how).reindex(full)
        out[concept] = hourly.rolling(24, min_periods=1).agg(how).reindex(grid).to_numpy()
    # urine: 24-h sum where the urine charting covers the window
    part = by.get("urine_output")
    out["urine_output_24h"] = np.nan
    if part is not None:
        s = part.set_index("time")["value"].sort_index()
        bins = s.resample("1h", closed="right", label="right")
        hourly_uo = pd.DataFrame({"sum": bins.sum(min_count=1), "count": bins.count()}).reindex(
            full, fill_value=0
        )
        sums = hourly_uo["sum"].rolling(24, min_periods=1).sum().reindex(grid).to_numpy()
        counts = hourly_uo["count"].rolling(24, min_periods=1).sum().reindex(grid).to_numpy()
        u_first, u_last = s.index.min(), s.index.max()
        covered = (
            (counts > 0)
            & (u_first <= grid - pd.Timedelta(hours=22))
            & (u_last > grid - pd.Timedelta(hours=2))
        )
        out["urine_output_24h"] = np.where(covered, np.round(sums, 6), np.nan)
    # respiration: PaO2 paired with the latest FiO2 (4 h) and support status (24 h)
    out["pao2_fio2_ratio"] = np.nan
    out["mechanical_ventilation"] = np.nan
    pao2 = by.get("pao2")
    fio2 = by.get("fio2")
    if pao2 is not None and fio2 is not None:
        p = pao2.groupby("time", as_index=False).agg(pao2=("value", "min"))
        f = fio2[fio2["value"] > 0].groupby("time", as_index=False).agg(fio2=("value", "max"))
        pairs = pd.merge_asof(p, f, on="time", direction="backward", tolerance=pd.Timedelta(hours=4))
        vent = by.get("mechanical_ventilation")
        if vent is not None:
            v = vent.groupby("time", as_index=False).agg(vent=("value", "max"))
            pairs = pd.merge_asof(pairs, v, on="time", direction="backward", tolerance=pd.Timedelta(hours=24))
        else:
            pairs["vent"] = np.nan
        pairs = pairs.dropna(subset=["fio2"])
        if len(pairs):
            ratio = np.round(pairs["pao2"].to_numpy() / pairs["fio2"].to_numpy(), 6)
            points = _resp_points(ratio, np.nan_to_num(pairs["vent"].to_numpy(), nan=0.0))
            t = pairs["time"].to_numpy()
            best_ratio, best_vent = [], []
            for end in grid.to_numpy():
                m = (t > end - np.timedelta64(24, "h")) & (t <= end)
                if not m.any():
                    best_ratio.append(np.nan)
                    best_vent.append(np.nan)
                    continue
                top = points[m].max()
                best_ratio.append(ratio[m][points[m] == top].min())
                best_vent.append(1.0 if top >= 3 else 0.0)
            out["pao2_fio2_ratio"] = best_ratio
            out["mechanical_ventilation"] = best_vent
    # vasopressors: a rate runs until the next one when that comes within max_gap, else it ends where
    # charted; consecutive positive rates form one infusion run, counted when it lasted >= min_run
    ends = grid.to_numpy()
    for drug in VASOPRESSORS:
        part = by.get(drug)
        out[drug] = np.nan
        if part is None:
            continue
        r = part.groupby("time", as_index=False).agg(value=("value", "max")).sort_values("time")
        following, previous = r["time"].shift(-1), r["time"].shift(1)
        r["until"] = following.where(following - r["time"] <= max_gap, r["time"])
        prev_value = r["value"].shift(1)
        starts = (r["value"] > 0) & (prev_value.isna() | (prev_value <= 0) | (r["time"] - previous > max_gap))
        r["run"] = starts.cumsum()
        r = r[r["value"] > 0]
        runs = r.groupby("run")
        r = r[runs["until"].transform("max") - runs["time"].transform("min") >= min_run]
        values = []
        for end in ends:
            m = (r["time"].to_numpy() <= end) & (r["until"].to_numpy() > end - np.timedelta64(24, "h"))
            values.append(r["value"].to_numpy()[m].max() if m.any() else np.nan)
        out[drug] = values
    # biomarkers: the latest value within the protocol's freshness window
    for concept, hours in fresh_hours.items():
        part = by.get(concept)
        if part is None:
            out[concept] = np.nan
            continue
        b = part.groupby("time", as_index=False).agg(value=("value", "max")).sort_values("time")
        got = pd.merge_asof(
            out[["time"]], b, on="time", direction="backward", tolerance=pd.Timedelta(hours=hours)
        )
        out[concept] = got["value"].to_numpy()
    return out


def run_pandas(folder: Path, stay_ids: list[str]) -> pl.DataFrame:
    protocol = load_protocol(PROTOCOL)
    fresh = {c: float(r.freshness_hours) for c, r in protocol.requires.items()}
    sofa_spec = load_definition("sofa")
    min_run = pd.Timedelta(hours=float(sofa_spec["vasopressor_min_hours"]))
    max_gap = pd.Timedelta(hours=float(sofa_spec["vasopressor_max_gap_hours"]))
    stays = pd.read_parquet(folder / "stays.parquet")
    stays = stays[stays["stay_id"].isin(stay_ids)]
    obs = pd.read_parquet(folder / "observations", filters=[("patient_id", "in", stay_ids)])
    obs = obs[["patient_id", "time", "concept", "value"]]
    frames = []
    groups = dict(tuple(obs.groupby("patient_id")))
    empty = obs.iloc[0:0]
    for stay in stays.itertuples(index=False):
        frames.append(pandas_stay(stay, groups.get(str(stay.stay_id), empty), fresh, min_run, max_gap))
    wide = pd.concat(frames, ignore_index=True)
    # The score and protocol functions, once; through polars because the core's expressions do not run
    # on numpy-backed pandas yet (nw.lit(None, Int64) cannot be cast there).
    scored = sofa(pl.from_pandas(wide))
    return classify_frame(protocol, scored, column="endotype")


# --------------------------------------------------------------------- (b) mimic-code style SQL

MIMIC_STYLE_SQL = """
WITH stays AS (
  SELECT stay_id, icu_intime, icu_outtime, date_trunc('hour', icu_intime) AS intime_hr
  FROM read_parquet('{stays}')
), co AS (  -- icustay_hourly: hr 0.. with (starttime, endtime]
  SELECT s.stay_id, h.hr, s.intime_hr + to_hours(h.hr) AS starttime,
         s.intime_hr + to_hours(h.hr + 1) AS endtime
  FROM stays s, LATERAL (SELECT unnest(range(0, CAST(
    ceil(date_diff('second', s.intime_hr, s.icu_outtime) / 3600.0) AS BIGINT))) AS hr) h
), o AS (
  SELECT patient_id AS stay_id, time AS charttime, concept, value FROM read_parquet('{obs}')
  WHERE concept IN ('pao2','fio2','mechanical_ventilation','platelets','bilirubin','map','gcs','creatinine',
                    'urine_output','dopamine_rate','dobutamine_rate','epinephrine_rate','norepinephrine_rate')
), bg AS (  -- blood gases with the latest FiO2 of the preceding 4 h
  SELECT p.stay_id, p.charttime, p.value AS po2, f.value AS fio2,
         ROW_NUMBER() OVER (PARTITION BY p.stay_id, p.charttime ORDER BY f.charttime DESC) AS rn
  FROM o p LEFT JOIN o f ON f.stay_id = p.stay_id AND f.concept = 'fio2'
       AND f.charttime BETWEEN p.charttime - INTERVAL 4 HOUR AND p.charttime
  WHERE p.concept = 'pao2'
), vent AS (  -- ventilation status from its charted changes
  SELECT stay_id, charttime AS starttime,
         LEAD(charttime) OVER (PARTITION BY stay_id ORDER BY charttime) AS endtime, value
  FROM o WHERE concept = 'mechanical_ventilation'
), pafi AS (
  SELECT bg.stay_id, bg.charttime, 100.0 * bg.po2 / (100.0 * bg.fio2) AS pao2fio2ratio,
         CASE WHEN v.value = 1 THEN 1 ELSE 0 END AS isvent
  FROM bg LEFT JOIN vent v ON v.stay_id = bg.stay_id AND bg.charttime >= v.starttime
       AND (v.endtime IS NULL OR bg.charttime < v.endtime)
  WHERE bg.rn = 1 AND bg.fio2 > 0
), vaso AS (  -- each charted rate runs until the next chart (no 1-hour rule, as in mimic-code)
  SELECT stay_id, concept, charttime AS starttime,
         LEAD(charttime) OVER (PARTITION BY stay_id, concept ORDER BY charttime) AS endtime, value
  FROM o WHERE concept IN ('dopamine_rate','dobutamine_rate','epinephrine_rate','norepinephrine_rate')
), uo AS (
  SELECT co.stay_id, co.hr, SUM(o.value) AS urineoutput
  FROM co LEFT JOIN o ON o.stay_id = co.stay_id AND o.concept = 'urine_output'
       AND o.charttime > co.starttime AND o.charttime <= co.endtime
  GROUP BY co.stay_id, co.hr
), uo_first AS (
  SELECT stay_id, MIN(charttime) AS first_uo FROM o WHERE concept = 'urine_output' GROUP BY stay_id
), hourly AS (
  SELECT co.stay_id, co.hr, co.starttime, co.endtime,
    (SELECT MIN(pao2fio2ratio) FROM pafi p WHERE p.stay_id = co.stay_id AND p.isvent = 1
       AND p.charttime > co.starttime AND p.charttime <= co.endtime) AS pao2fio2ratio_vent,
    (SELECT MIN(pao2fio2ratio) FROM pafi p WHERE p.stay_id = co.stay_id AND p.isvent = 0
       AND p.charttime > co.starttime AND p.charttime <= co.endtime) AS pao2fio2ratio_novent,
    MIN(CASE WHEN o.concept = 'platelets' THEN o.value END) AS platelet_min,
    MAX(CASE WHEN o.concept = 'bilirubin' THEN o.value END) AS bilirubin_max,
    MIN(CASE WHEN o.concept = 'map' THEN o.value END) AS meanbp_min,
    MIN(CASE WHEN o.concept = 'gcs' THEN o.value END) AS gcs_min,
    MAX(CASE WHEN o.concept = 'creatinine' THEN o.value END) AS creatinine_max
  FROM co LEFT JOIN o ON o.stay_id = co.stay_id AND o.charttime > co.starttime AND o.charttime <= co.endtime
       AND o.concept IN ('platelets','bilirubin','map','gcs','creatinine')
  GROUP BY co.stay_id, co.hr, co.starttime, co.endtime
), rates AS (
  SELECT co.stay_id, co.hr,
    MAX(CASE WHEN v.concept = 'dopamine_rate' THEN v.value END) AS rate_dopamine,
    MAX(CASE WHEN v.concept = 'dobutamine_rate' THEN v.value END) AS rate_dobutamine,
    MAX(CASE WHEN v.concept = 'epinephrine_rate' THEN v.value END) AS rate_epinephrine,
    MAX(CASE WHEN v.concept = 'norepinephrine_rate' THEN v.value END) AS rate_norepinephrine
  FROM co JOIN vaso v ON v.stay_id = co.stay_id AND v.value > 0 AND v.starttime < co.endtime
       AND (v.endtime IS NULL OR v.endtime > co.starttime)
  GROUP BY co.stay_id, co.hr
), uo24 AS (
  SELECT uo.stay_id, uo.hr,
    SUM(uo.urineoutput) OVER w AS uo_sum,
    LEAST(24, date_diff('second', GREATEST(f.first_uo, co.endtime - INTERVAL 24 HOUR), co.endtime) / 3600.0)
      AS uo_tm
  FROM uo JOIN co USING (stay_id, hr) LEFT JOIN uo_first f USING (stay_id)
  WINDOW w AS (PARTITION BY uo.stay_id ORDER BY uo.hr ROWS BETWEEN 23 PRECEDING AND CURRENT ROW)
), scorecomp AS (
  SELECT h.stay_id, h.hr, h.endtime,
    CASE WHEN pao2fio2ratio_vent < 100 THEN 4 WHEN pao2fio2ratio_vent < 200 THEN 3
         WHEN pao2fio2ratio_novent < 300 THEN 2 WHEN pao2fio2ratio_vent < 300 THEN 2
         WHEN pao2fio2ratio_novent < 400 THEN 1 WHEN pao2fio2ratio_vent < 400 THEN 1
         WHEN COALESCE(pao2fio2ratio_vent, pao2fio2ratio_novent) IS NULL THEN NULL ELSE 0 END AS respiration,
    CASE WHEN platelet_min < 20 THEN 4 WHEN platelet_min < 50 THEN 3 WHEN platelet_min < 100 THEN 2
         WHEN platelet_min < 150 THEN 1 WHEN platelet_min IS NULL THEN NULL ELSE 0 END AS coagulation,
    CASE WHEN bilirubin_max >= 12.0 THEN 4 WHEN bilirubin_max >= 6.0 THEN 3 WHEN bilirubin_max >= 2.0 THEN 2
         WHEN bilirubin_max >= 1.2 THEN 1 WHEN bilirubin_max IS NULL THEN NULL ELSE 0 END AS liver,
    CASE WHEN rate_dopamine > 15 OR rate_epinephrine > 0.1 OR rate_norepinephrine > 0.1 THEN 4
         WHEN rate_dopamine > 5 OR rate_epinephrine > 0 OR rate_norepinephrine > 0 THEN 3
         WHEN rate_dopamine > 0 OR rate_dobutamine > 0 THEN 2 WHEN meanbp_min < 70 THEN 1
         WHEN COALESCE(meanbp_min, rate_dopamine, rate_dobutamine, rate_epinephrine,
                       rate_norepinephrine) IS NULL
         THEN NULL ELSE 0 END AS cardiovascular,
    CASE WHEN gcs_min < 6 THEN 4 WHEN gcs_min < 10 THEN 3 WHEN gcs_min < 13 THEN 2 WHEN gcs_min < 15 THEN 1
         WHEN gcs_min IS NULL THEN NULL ELSE 0 END AS cns,
    CASE WHEN creatinine_max >= 5.0 THEN 4
         WHEN u.uo_tm >= 22 AND u.uo_tm <= 30 AND u.uo_sum * 24 / u.uo_tm < 200 THEN 4
         WHEN creatinine_max >= 3.5 THEN 3
         WHEN u.uo_tm >= 22 AND u.uo_tm <= 30 AND u.uo_sum * 24 / u.uo_tm < 500 THEN 3
         WHEN creatinine_max >= 2.0 THEN 2 WHEN creatinine_max >= 1.2 THEN 1
         WHEN COALESCE(creatinine_max, u.uo_sum) IS NULL THEN NULL ELSE 0 END AS renal
  FROM hourly h LEFT JOIN rates r USING (stay_id, hr) LEFT JOIN uo24 u USING (stay_id, hr)
)
SELECT stay_id, hr, endtime AS time,
  COALESCE(MAX(respiration) OVER w, 0) + COALESCE(MAX(coagulation) OVER w, 0) + COALESCE(MAX(liver) OVER w, 0)
  + COALESCE(MAX(cardiovascular) OVER w, 0) + COALESCE(MAX(cns) OVER w, 0) + COALESCE(MAX(renal) OVER w, 0)
  AS sofa_24hours
FROM scorecomp
WINDOW w AS (PARTITION BY stay_id ORDER BY hr ROWS BETWEEN 23 PRECEDING AND CURRENT ROW)
"""


def run_mimic_style(folder: Path) -> pl.DataFrame:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    sql = MIMIC_STYLE_SQL.format(
        stays=(folder / "stays.parquet").as_posix(), obs=(folder / "observations" / "*.parquet").as_posix()
    )
    frame = con.sql(sql).pl()
    con.close()
    return frame


# ------------------------------------------------------------------------------------------- driver


@dataclass
class Row:
    size: str
    method: str
    rows: int
    hours: int
    seconds: float
    peak_mib: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.hours / self.seconds if self.seconds > 0 else float("nan")


def hourly_only(source: ParquetInput) -> int:
    """Only the hourly SOFA + endotype table (plan, compile, run, fetch, windows and scores) - what the
    SQL baseline does."""
    con = connect("duckdb")
    protocol = load_protocol(PROTOCOL)
    plan = plan_hourly(
        con.read_parquet(str(source.stays)), con.read_parquet(str(source.observations)), protocol
    )
    grid = pl.from_arrow(con.to_pyarrow(plan.grid))
    assert isinstance(grid, pl.DataFrame)
    return finish_hourly(grid, plan.windows).height


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float, float]:
    """(result, seconds, peak MiB) of ``fn``; with ``repeats`` > 1 the fastest of that many runs and
    the largest peak (on a shared machine the fastest run is the one least disturbed by other work)."""
    best, peak, value = float("inf"), 0.0, None
    for _ in range(max(repeats, 1)):
        with PeakMemory() as mem:
            start = time.perf_counter()
            value = fn()
            seconds = time.perf_counter() - start
        best, peak = min(best, seconds), max(peak, mem.mib)
    return value, best, peak


def compare_pandas(engine_hourly: pl.DataFrame, baseline: pl.DataFrame) -> tuple[int, int]:
    """(stay-hours compared, mismatches) on SOFA total, components and endotype."""
    cols = ["sofa_total", *[f"sofa_{c}" for c in SOFA_COMPONENTS], "endotype"]
    base = baseline.select("stay_id", "time", *cols).with_columns(
        pl.col("time").dt.cast_time_unit("us").dt.convert_time_zone("UTC"),
        *[pl.col(c).cast(pl.Int64) for c in cols if c != "endotype"],
    )
    ours = engine_hourly.select("stay_id", "time", *cols)
    joined = base.join(ours, on=["stay_id", "time"], how="left", suffix="_engine")
    bad = joined.filter(pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_engine")) for c in cols]))
    return joined.height, bad.height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="1e5 and 1e6 rows, DuckDB only unless --engines names spark"
    )
    parser.add_argument("--sizes", nargs="+", type=float, help="observation rows, e.g. 1e5 1e6 1e7 1e8")
    parser.add_argument("--engines", nargs="+", default=None, choices=["duckdb", "spark"])
    parser.add_argument("--spark-max-rows", type=float, default=None, help="skip Spark above this size")
    parser.add_argument(
        "--pandas-stays", type=int, default=None, help="stays in the pandas sample (150; --quick: 60)"
    )
    parser.add_argument("--no-mimic-style", action="store_true")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time our builds and the mimic-code-style SQL this many times each and keep the fastest",
    )
    parser.add_argument(
        "--repeat-max-rows",
        type=float,
        default=1e99,
        help="above this size only the warm whole build runs on DuckDB (no cold or hourly-only rerun)",
    )
    parser.add_argument(
        "--memory-limit",
        default=None,
        help="DuckDB memory limit for our builds (e.g. 16GB; beyond it DuckDB spills to disk)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where synthetic data is written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clifpy-stays",
        type=int,
        default=0,
        help="also run clifpy's SOFA-2 (its own environment, benchmarks/clifpy_sofa2.py) on this many stays",
    )
    parser.add_argument("--clifpy-env", type=Path, default=Path("out") / "clifpy-env")
    parser.add_argument("--clifpy-python", type=Path, default=None, help="an interpreter that has clifpy")
    args = parser.parse_args(argv)
    sizes = [1e5, 1e6] if args.quick else (args.sizes or [1e5, 1e6, 1e7, 1e8])
    engines_named = args.engines is not None
    if args.engines is None:
        # The JVM start alone costs --quick its minute; DuckDB = Spark is a test (tests/cohort).
        args.engines = ["duckdb"] if args.quick else ["duckdb", "spark"]
    if "spark" in args.engines and missing_modules("spark"):
        extra = f"the optional extra 'spark' is not installed; install it with: {install_command('spark')}"
        if engines_named:
            raise SystemExit(f"error: --engines spark: {extra}")
        print(f"Spark skipped: {extra}")
        args.engines = [e for e in args.engines if e != "spark"]
    if args.pandas_stays is None:
        args.pandas_stays = 60 if args.quick else 150
    spark_max = args.spark_max_rows if args.spark_max_rows is not None else (1e5 if args.quick else 1e99)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="immunostrat-bench-", dir=args.workdir))
    results: list[Row] = []
    problems: list[str] = []
    checked: set[str] = set()
    spark = None
    try:
        # Warm-up (imports, first query compilation, the JVM) on a tiny cohort, not timed.
        warm = work / "warm-up"
        write_synthetic(warm, 20, seed=args.seed)
        if "duckdb" in args.engines:
            build_cohort(synthetic_input(warm), PROTOCOL, engine="duckdb")
        if "spark" in args.engines and sizes[0] <= spark_max:
            spark = spark_session("local[2]", shuffle_partitions=8, config=SPARK_CONFIG)
            spark.sparkContext.setLogLevel("ERROR")
            build_cohort(synthetic_input(warm), PROTOCOL, engine="spark", spark=spark)
        run_pandas(warm, sorted(pl.read_parquet(warm / "stays.parquet")["stay_id"].to_list())[:3])
        for size in sizes:
            label = f"{size:.0e}"
            folder = work / label
            info = write_synthetic(folder, stays_for_rows(int(size)), seed=args.seed)
            source: ParquetInput = synthetic_input(folder)
            print(
                f"[{label}] {info.rows:,} observation rows, {info.stays:,} stays", file=sys.stderr, flush=True
            )
            duck = None
            if "duckdb" in args.engines:
                build = partial(
                    build_cohort, source, PROTOCOL, engine="duckdb", memory_limit=args.memory_limit
                )
                duck, sec, mib = timed(build, args.repeats)
                hours = duck.hourly_sofa.height
                results.append(
                    Row(label, "immunostrat DuckDB", info.rows, hours, sec, mib, "whole build, plan compiled")
                )
            if duck is not None and size <= args.repeat_max_rows:
                # the same build without the per-process plan cache (a first build in a new process)
                def build_cold(build: Callable[[], Any] = build) -> Any:
                    _PLAN_CACHE.clear()
                    return build()

                _, sec, mib = timed(build_cold, args.repeats)
                results.append(
                    Row(
                        label,
                        "immunostrat DuckDB cold",
                        info.rows,
                        hours,
                        sec,
                        mib,
                        "whole build, plan compiled anew",
                    )
                )
                (n_hourly, sec, mib) = timed(partial(hourly_only, source), args.repeats)
                results.append(
                    Row(
                        label,
                        "immunostrat DuckDB hourly",
                        info.rows,
                        n_hourly,
                        sec,
                        mib,
                        "hourly SOFA+endotype table",
                    )
                )
            if "spark" in args.engines and size <= spark_max:
                if spark is None:
                    spark = spark_session("local[2]", shuffle_partitions=8, config=SPARK_CONFIG)
                    spark.sparkContext.setLogLevel("ERROR")
                sp, sec, mib = timed(partial(build_cohort, source, PROTOCOL, engine="spark", spark=spark))
                results.append(
                    Row(label, "immunostrat Spark local[2]", info.rows, sp.hourly_sofa.height, sec, mib)
                )
                if duck is not None:
                    checked.add("DuckDB = Spark (all tables)")
                    for name in ("stays", "hourly_sofa", "sepsis3", "endotypes"):
                        if not getattr(duck, name).equals(getattr(sp, name)):
                            problems.append(f"{label}: DuckDB and Spark differ on {name}")
            # (a) pandas per stay, on a sample above --pandas-stays stays
            ids = pl.read_parquet(folder / "stays.parquet", columns=["stay_id"])["stay_id"]
            sample = ids if ids.len() <= args.pandas_stays else ids.sample(args.pandas_stays, seed=args.seed)
            sample_ids = sorted(sample.to_list())
            base, sec, mib = timed(partial(run_pandas, folder, sample_ids))
            note = (
                "all stays"
                if len(sample_ids) == ids.len()
                else f"sample {len(sample_ids)} stays, rate extrapolated"
            )
            results.append(Row(label, "pandas per stay (a)", info.rows, base.height, sec, mib, note))
            if duck is not None:
                n, bad = compare_pandas(duck.hourly_sofa, base)
                checked.add("pandas baseline = engine (SOFA, components, endotype)")
                if bad:
                    problems.append(
                        f"{label}: pandas baseline differs from the engine on {bad} of {n} stay-hours"
                    )
            # (b) mimic-code-style SQL on DuckDB
            if not args.no_mimic_style:
                mimic, sec, mib = timed(partial(run_mimic_style, folder), args.repeats)
                agree = ""
                if duck is not None:
                    j = duck.hourly_sofa.select("stay_id", "time", "sofa_total").join(
                        mimic.select("stay_id", "time", "sofa_24hours"), on=["stay_id", "time"], how="inner"
                    )
                    same = (j["sofa_total"] == j["sofa_24hours"]).mean() if j.height else float("nan")
                    agree = f"same total as ours on {100 * float(same or 0):.1f}% of {j.height:,} hours"
                results.append(
                    Row(label, "mimic-code-style SQL (b)", info.rows, mimic.height, sec, mib, agree)
                )
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if spark is not None:
            spark.stop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("+peak MiB: rise of resident memory (this process and its children, e.g. the JVM) during the run")
    head = (
        f"{'rows':>7} {'method':<28} {'obs rows':>12} {'pt-hours':>10} {'time s':>8} {'pt-hours/s':>11} "
        f"{'+peak MiB':>9} {'x pandas':>8}  note"
    )
    print(head)
    print("-" * len(head))
    pandas_rate = {r.size: r.rate for r in results if r.method.startswith("pandas")}
    for r in results:
        ratio = r.rate / pandas_rate[r.size] if pandas_rate.get(r.size) else float("nan")
        print(
            f"{r.size:>7} {r.method:<28} {r.rows:>12,} {r.hours:>10,} {r.seconds:>8.2f} {r.rate:>11,.0f} "
            f"{r.peak_mib:>9.0f} {ratio:>8.1f}  {r.note}"
        )
    duck_rows = [r for r in results if r.method == "immunostrat DuckDB"]
    for a, b in itertools.pairwise(duck_rows):
        growth = (b.seconds / a.seconds) / (b.rows / a.rows)
        print(
            f"DuckDB time growth {a.size} -> {b.size}: x{b.seconds / a.seconds:.1f} "
            f"for x{b.rows / a.rows:.0f} rows "
            f"(time per row x{growth:.2f}; 1.0 = linear)"
        )
    mimic_rows = {r.size: r for r in results if r.method.startswith("mimic")}
    for r in results:
        if r.method.startswith("immunostrat DuckDB") and r.size in mimic_rows:
            print(
                f"{r.size}: {r.method} ({r.note}) vs mimic-code-style SQL: "
                f"x{mimic_rows[r.size].seconds / r.seconds:.2f} (above 1: ours faster)"
            )
    clif = None
    if args.clifpy_stays:
        from clifpy_sofa2 import clifpy_python, compare

        clif = compare(args.clifpy_stays, args.seed, clifpy_python(args.clifpy_env, args.clifpy_python))
        print(
            f"clifpy SOFA-2 (c) on {clif['stays']} stays: {clif['clifpy_seconds']:.2f} s for "
            f"{clif['windows']} daily windows; ours (SOFA-2, whole build) {clif['our_seconds']:.2f} s for "
            f"{clif['our_hours']:,} hourly rows; same SOFA-2 total in {clif['same']['total']}/"
            f"{clif['windows']} windows (benchmarks/clifpy_sofa2.py explains the differences)"
        )
    print("checks: " + ("; ".join(problems) if problems else "all agree: " + "; ".join(sorted(checked))))
    if not duck_rows:
        print("benchmark cohort: n/a (DuckDB not run)")
        return 1
    last = duck_rows[-1]
    ratio = last.rate / pandas_rate[last.size]
    spark_last = [r for r in results if r.method.startswith("immunostrat Spark")]
    spark_note = (
        f", Spark {spark_last[-1].rate / pandas_rate[spark_last[-1].size]:.1f}x at {spark_last[-1].size}"
        if spark_last
        else ""
    )
    # against the mimic-code-style SQL at 1e6 rows (else the smallest size run), the whole build
    mimic_note = ""
    ref = next((r for r in duck_rows if r.size == "1e+06"), duck_rows[0])
    if ref.size in mimic_rows:
        m = mimic_rows[ref.size]
        cold = next(
            (r for r in results if r.method == "immunostrat DuckDB cold" and r.size == ref.size), None
        )
        cold_note = f", {m.seconds / cold.seconds:.2f}x with the plan compiled anew" if cold else ""
        mimic_note = (
            f"{m.seconds / ref.seconds:.2f}x mimic-code-style SQL at {ref.size} rows "
            f"(whole build {ref.seconds:.1f} s vs {m.seconds:.1f} s{cold_note}; {m.note}); "
        )
    clif_note = (
        f"; clifpy SOFA-2 x{clif['clifpy_seconds'] / clif['our_seconds']:.1f} slower "
        f"on {clif['stays']} stays "
        f"(daily windows; same total in {100 * clif['same']['total'] / max(clif['windows'], 1):.0f}%)"
        if clif
        else ""
    )
    print(
        f"benchmark cohort: {mimic_note}{ratio:.1f}x pandas-per-stay (DuckDB {last.rate:,.0f} vs pandas "
        f"{pandas_rate[last.size]:,.0f} patient-hours/s at {last.size} observation rows{spark_note}"
        f"{clif_note}; checks {'ok' if not problems else 'FAILED'})"
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
