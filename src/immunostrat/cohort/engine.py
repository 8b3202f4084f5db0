"""The cohort plan: one Ibis expression graph from (stays, canonical observations) to the hourly
buckets that hold data, executed unchanged on DuckDB or PySpark; spreading each stay over its hours,
the trailing windows, SOFA and the endotype then run in Polars on the collected buckets
(:func:`finish_hourly`), the same for every engine, and so do Sepsis-3 (``cohort.sepsis3``) and the
endotype timeline (``cohort.timeline``) on the hourly table.

Hourly grid. Each stay gets one row per hour boundary ``T`` from ``ceil_hour(icu_intime)`` to
``ceil_hour(icu_outtime)``. The row at ``T`` summarises the trailing 24 h, ``(T - 24 h, T]``, exactly the
bedside window ``scores.windows.windows_at(T, 24)``. Observations are first reduced to hourly buckets
``(T - 1 h, T]`` (bucket = ``ceil_hour(time)``) on the engine; the grid holds every bucket from
``keep_buckets`` hours before the first grid hour (in Polars: dense joins in SQL cost more than the
rest of the query), so the 24-h worst value is a rolling window over 24 rows (the 24 buckets ending
at ``T``). Why the windows leave SQL: DuckDB's 24-row frames cost about
80 ns per row and column, a third of the hourly query's CPU, where a rolling window runs in a fifteenth
of that. Observations up to ``LOOKBACK`` before the first grid hour (ED labs, pre-ICU gases) feed the
first windows. A stay without ``icu_outtime`` ends at its last observation.

Worst values (the rules of ``scores/windows.py``, on the hourly grid):

- platelets, GCS, MAP, recorded ``urine_output_24h``: minimum; bilirubin, creatinine: maximum (exact).
  Inputs a definition reads beyond sofa-1996's (sofa-2): GCS motor, pH, bicarbonate minimum;
  potassium maximum; RRT, ECMO, mechanical circulatory support, delirium drug maximum (1 = present).
- respiration: each PaO2 is paired with the latest FiO2 charted in the preceding 4 h and the latest
  respiratory-support status of the preceding 24 h (found with RANGE windows over the event times plus
  an equi-join back on that time, not an as-of join), scored with the SOFA expressions; a window keeps
  the pairing with the most respiration points, then the lowest ratio (exact), and reports that
  pairing's support status as ``mechanical_ventilation``. Ties at one instant: the lowest PaO2 and the
  highest FiO2 count.
- vasopressors (dopamine, dobutamine, epinephrine, norepinephrine): a charted rate runs until the next
  charted rate of that drug when that comes within ``vasopressor_max_gap_hours`` (sofa-1996.yaml; ricu's
  eICU gap), else it ends where it was charted (the last charting is not carried to the end of the
  stay). Consecutive positive rates form one infusion run, which counts only when it lasted at least
  ``vasopressor_min_hours`` (sofa-1996.yaml; Vincent's "given for at least 1 h" is per infusion, not
  per charted segment); each rate is spread over the hourly buckets it touches and the window takes
  the highest rate running at any moment in it. Rates charted more than ``LOOKBACK`` before the
  first grid hour are not carried into the stay.
- urine output: charted volumes summed over the 24 h window when the stay's urine charting covers it
  (first urine event <= window start + 2 h and last >= window end - 2 h); sums are rounded to 1e-6 mL
  so that engines summing in a different order agree. ``urine_output_24h`` = the smaller of that sum and
  any recorded 24-h volume.
- biomarkers of the protocol (ferritin, mHLA-DR): the latest value charted at or before ``T`` and not
  older than the protocol's ``freshness_hours`` (else null, i.e. stale or missing) - the inputs of
  ``protocols.endotype_expression``.

Sepsis-3 (``scores.sepsis3.suspicion_episodes``, ``cohort.sepsis3.assess_sepsis3``): every
suspected-infection episode of a stay is assessed, not only the first; the rule variants of rules.yaml
(suspected infection, SOFA baseline) are arguments of ``build_cohort``. A stay is "not assessable"
where the source or the stay's care site has no events of a concept the suspicion rule needs, or where
every suspicion window lies outside the stay.

Scores come from ``immunostrat.scores.sofa`` and the protocol from ``protocols.classify_frame``, both
narwhals expressions applied to the Polars grid: no band or threshold is written here.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import polars as pl

from immunostrat.cohort.sepsis3 import BASELINE_RULES, assess_sepsis3
from immunostrat.cohort.timeline import endotype_timeline
from immunostrat.extras import require_extra
from immunostrat.protocols import Protocol, classify_frame, load_protocol
from immunostrat.scores import (
    SOFA_INPUTS,
    SOFA_OUTPUTS,
    load_definition,
    sofa,
    sofa_definition,
    sofa_inputs,
)
from immunostrat.scores.sepsis3 import SUSPICION_RULES, suspicion_episodes
from immunostrat.sources import STAYS_SCHEMA, ConceptStatus, SourceData

Progress = Callable[[str, int, int], None]
"""``progress(step_description, steps_done, steps_total)``; called before and after each step."""

ENGINES = ("duckdb", "spark")
HOUR = ibis.interval(hours=1)
LOOKBACK_HOURS = 48
FIO2_LOOKBACK_HOURS = 4
SUPPORT_LOOKBACK_HOURS = 24
URINE_COVERAGE_SLACK_HOURS = 2
WINDOW_HOURS = 24

VASOPRESSORS = ("dopamine_rate", "dobutamine_rate", "epinephrine_rate", "norepinephrine_rate")
# Every vasoactive concept the engine can carry; a variant gets those its definition reads (sofa-2
# also vasopressin, phenylephrine and milrinone, "other agents", and with its option other_vasoactive
# clifpy's angiotensin II and isoproterenol).
ALL_VASOPRESSORS = (
    *VASOPRESSORS,
    "vasopressin_rate",
    "phenylephrine_rate",
    "milrinone_rate",
    "angiotensin_ii_rate",
    "isoproterenol_rate",
)
# Shorter urine windows (hours) for definitions that read urine_output_<h>h (sofa-2).
SHORT_URINE_HOURS = (6, 12)
WORST_MIN = ("platelets", "gcs", "map", "urine_output_24h")
WORST_MAX = ("bilirubin", "creatinine")
# Inputs only some definitions read (sofa-2: motor GCS, the RRT criteria labs, organ support and
# delirium drugs), each carried over the same 24-h window with its worst-value rule; the organ-support
# and drug concepts are 1 when present, so their worst value is the highest.
EXTRA_WORST_MIN = ("gcs_motor", "ph", "bicarbonate")
EXTRA_WORST_MAX = ("potassium", "rrt", "ecmo", "mechanical_circulatory_support", "delirium_drug")
RESPIRATION = ("pao2", "fio2", "mechanical_ventilation")
INFECTION = ("antibiotic", "culture")
SOFA_CONCEPTS = (*RESPIRATION, *WORST_MIN, *WORST_MAX, *VASOPRESSORS, "urine_output")
TABLES = ("stays", "hourly_sofa", "sepsis3", "endotypes")
_T = pl.Datetime("us", "UTC")
IN_MEMORY_GRID_ROWS = 5_000_000


@dataclass
class ParquetInput:
    """A source already in Parquet (e.g. the synthetic generator's output): the stays table
    (:data:`STAYS_SCHEMA` columns) and canonical long observations whose ``patient_id`` is the stay id.
    Paths may be files, directories or globs; nothing is loaded into Python memory."""

    stays: str | Path
    observations: str | Path
    source: str = "long"
    report: list[ConceptStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class CohortResult:
    """The four cohort tables (polars, sorted) and the summary (JSON-serialisable dict)."""

    stays: pl.DataFrame
    hourly_sofa: pl.DataFrame
    sepsis3: pl.DataFrame
    endotypes: pl.DataFrame
    summary: dict[str, Any]
    output_dir: Path | None = None

    def tables(self) -> dict[str, pl.DataFrame]:
        return {name: getattr(self, name) for name in TABLES}


# --------------------------------------------------------------------------------------------- engines


def spark_session(
    master: str = "local[2]", shuffle_partitions: int = 4, config: dict[str, str] | None = None
) -> Any:
    """A PySpark session set up for the cohort plan (UTC session time zone, Arrow transfers, no console
    progress bars); ``config`` adds or overrides settings. Returns the active session if there is one
    (its time zone is set to UTC)."""
    require_extra("spark", "the Spark engine")
    from pyspark.sql import SparkSession

    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        **(config or {}),
    }
    builder = SparkSession.builder.master(master).appName("immunostrat-cohort")
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.conf.set("spark.sql.session.timeZone", "UTC")
    return session


def connect(
    engine: str = "duckdb",
    *,
    spark: Any = None,
    threads: int | None = None,
    memory_limit: str | None = None,
    temp_directory: str | Path | None = None,
) -> Any:
    """An Ibis backend for ``engine`` ("duckdb": embedded, in memory; "spark": PySpark).

    DuckDB: ``threads`` (default: every core), ``memory_limit`` (e.g. "16GB"; default DuckDB's 80 % of
    RAM) and ``temp_directory`` (where sorts, joins and windows spill beyond the memory limit, so a
    cohort larger than memory runs out of core). Insertion order is not preserved: every table the
    engine returns is sorted explicitly, and unordered operators stream in parallel and spill less."""
    if engine == "duckdb":
        con = ibis.duckdb.connect(**({"threads": threads} if threads else {}))
        con.raw_sql("SET TimeZone = 'UTC'")
        con.raw_sql("SET preserve_insertion_order = false")
        if memory_limit:
            con.raw_sql(f"SET memory_limit = '{_sql_text(memory_limit)}'")
        if temp_directory is not None:
            con.raw_sql(f"SET temp_directory = '{_sql_text(str(temp_directory))}'")
        return con
    if engine == "spark":
        require_extra("spark", "the Spark engine")
        return ibis.pyspark.connect(spark if spark is not None else spark_session())
    raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")


def _sql_text(value: str) -> str:
    """``value`` inside a single-quoted SQL string literal."""
    return value.replace("'", "''")


# ------------------------------------------------------------------------------------------- the plan


@cache
def load_rules() -> dict[str, Any]:
    """The cohort engine's rule choices and variants (``cohort/rules.yaml``, each with its source),
    read once per process (pure-Python YAML costs about 0.02 s a read); callers must not change it."""
    import yaml

    path = resources.files("immunostrat.cohort").joinpath("rules.yaml")
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


# The worst PaO2/FiO2 pairing of a window as one integer, so that one windowed MAX finds it: most
# respiration points first, then the lowest ratio, then ventilated before not (the pairing's own support
# status is what ``hourly_sofa.mechanical_ventilation`` reports). Ratios are kept in micro-units
# (rounded to 1e-6, below 1e10 since PaO2 <= 800 mmHg and FiO2 >= 0.21 by the concept dictionary):
# key = points * 4e10 + (1e10 - ratio_micro) * 2 + ventilated, exact in int64 on every engine.
_RESP_RATIO_CAP_MICRO = 10**10
_RESP_POINTS_SCALE = 4 * _RESP_RATIO_CAP_MICRO


_HOUR_US = 3_600_000_000
# Each engine's functions from a timestamp to microseconds since the epoch and back. Ibis' portable
# truncate of a time-zone-aware timestamp costs DuckDB a calendar (ICU) call per row, 0.15 s per 10^6
# rows, against 0.007 s for integer arithmetic on the microseconds.
_EPOCH_US_FUNCTIONS = {
    "duckdb": ("epoch_us", "make_timestamptz"),
    "pyspark": ("unix_micros", "timestamp_micros"),
}


def _ceil_hour(t: ir.TimestampValue) -> ir.TimestampValue:
    """The end of the hourly bucket ``(T - 1 h, T]`` holding ``t``, by integer arithmetic on the
    epoch microseconds (a floored modulo, so that times before 1970 round the same way)."""
    to_name, from_name = _EPOCH_US_FUNCTIONS[t.get_backend().name]  # connect() makes only these
    dtype = t.type()
    to_us = ibis.udf.scalar.builtin(lambda t: None, name=to_name, signature=((dtype,), "int64"))
    from_us = ibis.udf.scalar.builtin(lambda us: None, name=from_name, signature=(("int64",), dtype))
    before = to_us(t) - 1
    into_hour = ((before % _HOUR_US) + _HOUR_US) % _HOUR_US
    return from_us(before - into_hour + _HOUR_US)


def _drop_right(table: ir.Table) -> ir.Table:
    return table.drop(*[c for c in table.columns if c.endswith("_right")])


@dataclass(frozen=True)
class HourlyWindows:
    """What turns the grid of hourly buckets into the hourly table: the trailing windows of each
    column, the urine coverage rule, the biomarker freshness and the score (:func:`finish_hourly`)."""

    variant: str
    sofa_options: tuple[tuple[str, str], ...]
    protocol: Protocol
    worst_min: tuple[str, ...]
    worst_max: tuple[str, ...]
    vasopressors: tuple[str, ...]
    urine_hours: tuple[int, ...]
    spo2_fio2: bool
    extra_inputs: tuple[str, ...]
    provided: tuple[str, ...]
    fresh_seconds: tuple[tuple[str, float], ...]
    fresh_buckets: int
    keep_buckets: int
    lookback_hours: int

    @property
    def biomarkers(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.fresh_seconds)


def hourly_windows(
    protocol: Protocol, variant: str = "sofa", sofa_options: Mapping[str, str] | None = None
) -> HourlyWindows:
    """The window rules of a build (see the module docstring) for ``protocol`` and the SOFA definition."""
    wanted = set(sofa_inputs(variant, sofa_options))
    vasopressors = tuple(c for c in ALL_VASOPRESSORS if c in wanted)
    spo2_fio2 = "spo2_fio2_ratio" in wanted
    urine_hours = tuple(h for h in SHORT_URINE_HOURS if f"urine_output_{h}h" in wanted)
    extra_inputs = tuple(c for c in (*EXTRA_WORST_MIN, *EXTRA_WORST_MAX) if c in wanted)
    provided = (
        *SOFA_INPUTS,
        *[c for c in vasopressors if c not in SOFA_INPUTS],
        *extra_inputs,
        *(["spo2_fio2_ratio"] if spo2_fio2 else []),
        *[f"urine_output_{h}h" for h in urine_hours],
        *(["weight_kg"] if "weight_kg" in wanted else []),
    )
    fresh = {c: float(protocol.requires[c].freshness_hours) for c in protocol.requires}
    fresh_buckets = max([math.floor(h) for h in fresh.values()] or [0])
    return HourlyWindows(
        variant=variant,
        sofa_options=tuple(sorted((sofa_options or {}).items())),
        protocol=protocol,
        worst_min=(*WORST_MIN, *[c for c in EXTRA_WORST_MIN if c in wanted]),
        worst_max=(*WORST_MAX, *[c for c in EXTRA_WORST_MAX if c in wanted]),
        vasopressors=vasopressors,
        urine_hours=urine_hours,
        spo2_fio2=spo2_fio2,
        extra_inputs=extra_inputs,
        provided=provided,
        fresh_seconds=tuple((c, float(round(h * 3600.0))) for c, h in fresh.items()),
        fresh_buckets=fresh_buckets,
        keep_buckets=max(WINDOW_HOURS - 1, fresh_buckets),
        lookback_hours=max(LOOKBACK_HOURS, math.ceil(max(fresh.values() or [0.0])) + 1),
    )


@dataclass
class Plan:
    """The Ibis expressions of one cohort build (built once, executed on any backend); ``grid`` is the
    table of the hourly buckets that hold data and one row per stay, which :func:`finish_hourly`
    turns into the hourly table."""

    bounds: ir.Table
    grid: ir.Table
    windows: HourlyWindows
    concept_counts: ir.Table
    infection: ir.Table


def plan_hourly(
    stays: ir.Table,
    observations: ir.Table,
    protocol: Protocol,
    *,
    open_stays: bool = False,
    variant: str = "sofa",
    sofa_options: Mapping[str, str] | None = None,
) -> Plan:
    """The hourly SOFA + endotype plan (see the module docstring for the rules).

    ``open_stays``: some stays lack ``icu_outtime``; their grid then ends at their last observation
    (else at ``icu_intime``: one hour). ``variant`` (``sofa``/``sofa-1996`` or ``sofa-2``) and its
    named ``sofa_options`` choose the SOFA definition; for sofa-2 the plan also provides the S/F
    fallback, vasopressin, 6- and 12-h urine volumes and the stay's weight."""
    sofa_spec = sofa_definition(variant, sofa_options)
    spec = hourly_windows(protocol, variant, sofa_options)
    vasopressors = spec.vasopressors
    spo2_limit = float(sofa_spec["spo2_fio2_max_spo2_exclusive"]) if spec.spo2_fio2 else None
    worst_min, worst_max = spec.worst_min, spec.worst_max
    extra_inputs = spec.extra_inputs
    min_run = ibis.interval(minutes=round(float(sofa_spec["vasopressor_min_hours"]) * 60))
    max_gap = ibis.interval(minutes=round(float(sofa_spec["vasopressor_max_gap_hours"]) * 60))
    biomarkers = spec.biomarkers
    lookback = spec.lookback_hours
    keep_buckets = spec.keep_buckets

    s = stays.filter(stays.icu_intime.notnull())
    end = s.icu_outtime
    if open_stays:
        last = observations.group_by(stay_id=observations.patient_id.cast("string")).agg(
            _last_obs=observations.time.max()
        )
        s = _drop_right(s.left_join(last, "stay_id"))
        end = s.icu_outtime.coalesce(s._last_obs)
    outtime = ibis.cases(
        (end.isnull(), s.icu_intime),
        (end < s.icu_intime, s.icu_intime),
        else_=end,
    )
    bounds = s.select(
        stay_id=s.stay_id,
        grid_first=_ceil_hour(s.icu_intime),
        grid_last=_ceil_hour(outtime),
        weight_kg=s.weight_kg.cast("float64"),
    )
    bounds = bounds.mutate(lo=bounds.grid_first - ibis.interval(hours=lookback))
    # stays numbered in stay order: the plan groups and joins on this integer (cheaper than the text
    # stay_id), and finish_hourly lays the hours out in (number, hour) order
    bounds = bounds.mutate(stay_seq=ibis.row_number().over(order_by=bounds.stay_id))

    needed = sorted(
        {
            *SOFA_CONCEPTS,
            *vasopressors,
            *extra_inputs,
            *(["spo2"] if spo2_limit is not None else []),
            *biomarkers,
        }
    )
    obs = observations.select(
        stay_id=observations.patient_id.cast("string"),
        time=observations.time,
        concept=observations.concept,
        value=observations.value.cast("float64"),
    )
    obs = obs.filter(obs.time.notnull() & obs.value.notnull())
    concept_counts = obs.group_by("concept").agg(rows=obs.concept.count())
    infection = obs.filter(obs.concept.isin(INFECTION))
    narrow = bounds.select("stay_id", "stay_seq", "grid_first", "grid_last", "lo")
    joined = obs.filter(obs.concept.isin(needed)).inner_join(narrow, "stay_id").drop("stay_id")
    # One relation of the observations for every part, so that the engine reads the files once: the
    # rows of the look-back and the grid, and beyond them what two rules need - vasopressor rates after
    # the grid (the next charting ends a rate) and every urine event (the charting span).
    after_lo = joined.time > joined.lo
    in_grid = after_lo & (joined.time <= joined.grid_last)
    urine = joined.concept == "urine_output"
    o_any = joined.filter(in_grid | (after_lo & joined.concept.isin(vasopressors)) | urine)
    o_any = o_any.mutate(bucket=_ceil_hour(o_any.time))
    o = o_any.filter((o_any.time > o_any.lo) & (o_any.time <= o_any.grid_last))

    def where(concept: str) -> ir.BooleanValue:
        return o.concept == concept

    # -- simple worst values, urine events, biomarker times: one pass over the observations
    aggs: dict[str, Any] = {}
    for c in worst_min:
        aggs[c] = o.value.min(where=where(c))
    for c in worst_max:
        aggs[c] = o.value.max(where=where(c))
    aggs["urine_sum"] = o.value.sum(where=where("urine_output"))  # null when no urine event
    simple = o.group_by(["stay_seq", "bucket"]).agg(**aggs)

    # -- biomarkers: per bucket the latest charting time and its value (the highest of one instant)
    marker: ir.Table | None = None
    if biomarkers:
        b = o.filter(o.concept.isin(biomarkers))
        b = b.group_by(["stay_seq", "bucket", "concept", "time"]).agg(value=b.value.max())
        marker = b.group_by(["stay_seq", "bucket"]).agg(
            **{f"{c}__t": b.time.max(where=b.concept == c) for c in biomarkers},
            **{f"{c}__v": b.value.argmax(b.time, where=b.concept == c) for c in biomarkers},
        )

    # -- respiration: PaO2 (and for SOFA-2 SpO2 below its limit) paired with the latest FiO2 (4 h) and
    # support status (24 h)
    def pairing(numerator: str, ratio_name: str, below: float | None) -> ir.Table:
        r = o.filter(o.concept.isin((numerator, "fio2", "mechanical_ventilation")))
        reading = r.concept == numerator
        if below is not None:
            reading = reading & (r.value < below)
        r = r.group_by(["stay_seq", "time"]).agg(
            pao2=r.value.min(where=reading),
            fio2=r.value.max(where=(r.concept == "fio2") & (r.value > 0)),
            vent=r.value.max(where=r.concept == "mechanical_ventilation"),
        )
        # The latest FiO2 (support status) at or before each time, kept when it lies within the look-back:
        # a running window (rows up to the current one) costs a fraction of a RANGE frame over times.
        so_far = ibis.window(group_by=r.stay_seq, order_by=r.time, rows=(None, 0))
        r = r.mutate(
            last_fio2=r.time.max(where=r.fio2.notnull()).over(so_far),
            last_vent=r.time.max(where=r.vent.notnull()).over(so_far),
        )
        r = r.mutate(
            fio2_time=ibis.cases(
                (r.last_fio2 >= r.time - ibis.interval(hours=FIO2_LOOKBACK_HOURS), r.last_fio2),
                else_=ibis.null("timestamp"),
            ),
            vent_time=ibis.cases(
                (r.last_vent >= r.time - ibis.interval(hours=SUPPORT_LOOKBACK_HOURS), r.last_vent),
                else_=ibis.null("timestamp"),
            ),
        )
        fio2_at = r.filter(r.fio2.notnull()).select(f_stay=r.stay_seq, f_time=r.time, f_value=r.fio2)
        vent_at = r.filter(r.vent.notnull()).select(v_stay=r.stay_seq, v_time=r.time, v_value=r.vent)
        pa = r.filter(r.pao2.notnull() & r.fio2_time.notnull())
        pa = pa.inner_join(fio2_at, [pa.stay_seq == fio2_at.f_stay, pa.fio2_time == fio2_at.f_time])
        pa = pa.left_join(vent_at, [pa.stay_seq == vent_at.v_stay, pa.vent_time == vent_at.v_time])
        pairs = pa.select(
            stay_seq=pa.stay_seq,
            time=pa.time,
            **{ratio_name: (pa.pao2 / pa.f_value).round(6)},
            mechanical_ventilation=pa.v_value.fill_null(0.0),
        )
        scored = sofa(pairs, variant, sofa_options)
        scored = scored.mutate(bucket=_ceil_hour(scored.time))
        # One sortable integer per pairing (see _RESP_POINTS_SCALE).
        ratio_micro = (scored[ratio_name] * 1e6).round().cast("int64")
        key = (
            scored.sofa_respiration.cast("int64") * _RESP_POINTS_SCALE
            + (_RESP_RATIO_CAP_MICRO - ratio_micro) * 2
            + (scored.mechanical_ventilation >= 1).cast("int64")
        )
        return scored.group_by(["stay_seq", "bucket"]).agg(resp_key=key.max())

    resp = pairing("pao2", "pao2_fio2_ratio", None)
    sf: ir.Table | None = None
    if spo2_limit is not None:
        sf = pairing("spo2", "spo2_fio2_ratio", spo2_limit)
        sf = sf.select("stay_seq", "bucket", sf_key=sf.resp_key)

    # -- vasopressors: a charted rate runs until the next one (within the maximum gap, else it ends
    # where charted); consecutive positive rates form one infusion run, and a run counts when it lasted
    # >= min_run (sofa-1996.yaml); its rates are spread over the hourly buckets they touch
    v = o_any.filter(o_any.concept.isin(vasopressors) & (o_any.time > o_any.lo))
    v = v.group_by(["stay_seq", "concept", "time", "grid_first", "grid_last"]).agg(value=v.value.max())
    by_drug = ibis.window(group_by=[v.stay_seq, v.concept], order_by=v.time)
    v = v.mutate(
        next_time=v.time.lead().over(by_drug),
        prev_time=v.time.lag().over(by_drug),
        prev_value=v.value.lag().over(by_drug),
    )
    v = v.mutate(
        until=ibis.cases(
            ((v.next_time.notnull()) & (v.next_time <= v.time + max_gap), v.next_time), else_=v.time
        ),
        run_start=ibis.cases(
            (
                (v.value > 0)
                & (v.prev_value.isnull() | (v.prev_value <= 0) | (v.prev_time + max_gap < v.time)),
                1,
            ),
            else_=0,
        ),
    )
    v = v.mutate(
        run=v.run_start.sum().over(
            ibis.window(group_by=[v.stay_seq, v.concept], order_by=v.time, rows=(None, 0))
        )
    )
    v = v.filter(v.value > 0)
    by_run = ibis.window(group_by=[v.stay_seq, v.concept, v.run])
    v = v.mutate(run_first=v.time.min().over(by_run), run_last=v.until.max().over(by_run))
    v = v.filter((v.time <= v.grid_last) & (v.run_last >= v.run_first + min_run))
    first_bucket = ibis.greatest(_ceil_hour(v.time), v.grid_first - ibis.interval(hours=keep_buckets))
    last_bucket = ibis.least(_ceil_hour(v.until), v.grid_last)
    v = v.mutate(first_bucket=first_bucket, last_bucket=last_bucket)
    v = v.filter(v.first_bucket <= v.last_bucket)
    v = v.mutate(bucket=ibis.range(v.first_bucket, v.last_bucket + HOUR, HOUR).unnest())
    vaso = v.group_by(["stay_seq", "bucket"]).agg(
        **{c: v.value.max(where=v.concept == c) for c in vasopressors}
    )

    # -- urine charting span per stay (all urine events of the stay, before the look-back too)
    u = o_any.filter(o_any.concept == "urine_output")
    urine_span = u.group_by("stay_seq").agg(u_first=u.time.min(), u_last=u.time.max())

    # -- the grid: the buckets that hold data (simple, respiration, vasopressors, biomarkers; one row each
    # per part and bucket) under one row per stay (bucket null: its bounds, weight and urine span).
    # finish_hourly spreads each stay over its hours and joins the buckets onto them in Polars: dense
    # joins in SQL cost more than the query's every other step.
    stay_part = _drop_right(bounds.left_join(urine_span, "stay_seq"))
    parts = [simple, resp, vaso, *([sf] if sf is not None else []), *([marker] if marker is not None else [])]
    columns = {
        name: dtype
        for t in (stay_part, *parts)
        for name, dtype in t.schema().items()
        if name not in ("stay_seq", "bucket", "lo")
    }
    bucket_type = simple.schema()["bucket"]

    def widened(part: ir.Table, bucket: ir.Value) -> ir.Table:
        return part.select(
            stay_seq=part.stay_seq,
            bucket=bucket,
            **{c: part[c] if c in part.columns else ibis.null(t) for c, t in columns.items()},
        )

    grid = ibis.union(
        widened(stay_part, ibis.null(bucket_type)),
        *[widened(p, p.bucket) for p in parts],
        distinct=False,
    )
    return Plan(
        bounds=bounds,
        grid=grid,
        windows=spec,
        concept_counts=concept_counts,
        infection=infection,
    )


def _round6(value: pl.Expr) -> pl.Expr:
    """SQL's ROUND(value, 6) (half away from zero), as the engines round the pairing ratios."""
    return value.round(6, mode="half_away_from_zero")


def finish_hourly(grid: pl.DataFrame, spec: HourlyWindows) -> pl.DataFrame:
    """The hourly table from the grid of buckets (:attr:`Plan.grid`, from any engine): one row per stay
    (bucket null) and the buckets that hold data.

    Each stay is spread over every hour from ``keep_buckets`` buckets before its first grid hour to
    its last, in stay and hour order, and the buckets are joined onto those hours. Every window reaches
    back at most ``keep_buckets``, so the trailing windows run over consecutive rows without a
    partition: the rows a window of an earlier stay reaches are lead-in rows, dropped afterwards.
    Rolling windows (a monotonic queue per column) cost a fifteenth of SQL's 24-row frames."""
    frame = _normalise(grid)
    stay_columns = ["stay_seq", "stay_id", "grid_first", "grid_last", "weight_kg", "u_first", "u_last"]
    stays = frame.filter(pl.col("bucket").is_null()).select(stay_columns).sort("stay_seq")

    # one integer per (stay, hour) to join on: a single-column join costs half a two-column one
    def epoch_hours(column: str) -> pl.Expr:
        return pl.col(column).dt.epoch("s") // 3600  # bucket ends are whole hours

    def key(hours: pl.Expr) -> pl.Expr:
        return pl.col("stay_seq") * 2**32 + hours  # hours since 1970 stay below 2^31 until year 245,000

    # each column of a bucket comes from one part: the maximum over the part's rows is its value
    buckets = (
        frame.lazy()
        .filter(pl.col("bucket").is_not_null())
        .select(key(epoch_hours("bucket")).alias("_key"), pl.exclude(*stay_columns, "bucket"))
        .group_by("_key")
        .agg(pl.all().max())
    )
    every_hour = pl.int_ranges(epoch_hours("grid_first") - spec.keep_buckets, epoch_hours("grid_last") + 1)
    keys = (
        stays.lazy()
        .with_columns(_hour=every_hour)
        .explode("_hour")
        .with_columns(
            _key=key(pl.col("_hour")),
            bucket=pl.from_epoch(pl.col("_hour") * 3600, time_unit="s").dt.replace_time_zone("UTC").cast(_T),
        )
    )
    # in stay and hour order: the windows below run over consecutive rows
    dense = keys.join(buckets, on="_key", how="left", maintain_order="left").drop(
        "_key", "_hour", "stay_seq", "grid_last"
    )

    def trailing(column: str, how: str, hours: int = WINDOW_HOURS) -> pl.Expr:
        """The ``how`` (min, max, sum) of ``column`` over the ``hours`` buckets ending at each row."""
        expr = pl.col(column)
        if how == "min":
            return expr.rolling_min(window_size=hours, min_samples=1)
        if how == "max":
            return expr.rolling_max(window_size=hours, min_samples=1)
        return expr.rolling_sum(window_size=hours, min_samples=1)

    cols: list[pl.Expr] = []
    cols += [trailing(c, "min") for c in spec.worst_min]
    cols += [trailing(c, "max") for c in (*spec.worst_max, *spec.vasopressors)]
    cols.append(trailing("urine_sum", "sum").alias("_urine_sum"))
    cols += [trailing("urine_sum", "sum", h).alias(f"_urine_sum_{h}") for h in spec.urine_hours]
    cols.append(trailing("resp_key", "max").alias("_resp_key"))
    if spec.spo2_fio2:
        cols.append(trailing("sf_key", "max").alias("_sf_key"))
    for c in spec.biomarkers:  # the latest charting within the freshness buckets (times rise with them)
        cols += [pl.col(f"{c}__{x}").forward_fill(limit=spec.fresh_buckets) for x in ("t", "v")]
    win = dense.with_columns(cols).filter(pl.col("bucket") >= pl.col("grid_first"))

    slack = timedelta(hours=URINE_COVERAGE_SLACK_HOURS)

    def covered_sum(column: str, hours: int) -> pl.Expr:
        covered = (
            pl.col(column).is_not_null()
            & (pl.col("u_first") <= pl.col("bucket") - timedelta(hours=hours) + slack)
            & (pl.col("u_last") > pl.col("bucket") - slack)
        )
        return pl.when(covered).then(_round6(pl.col(column))).otherwise(None)

    def decode(key: str) -> tuple[pl.Expr, pl.Expr]:
        rest = pl.col(key) % _RESP_POINTS_SCALE
        ratio = _round6((_RESP_RATIO_CAP_MICRO - (rest - rest % 2) // 2) / 1e6)
        return ratio, (rest % 2).cast(pl.Float64)

    urine_sum = covered_sum("_urine_sum", WINDOW_HOURS)
    ratio, vent = decode("_resp_key")
    extra: dict[str, pl.Expr] = {}
    if spec.spo2_fio2:
        # S/F counts only where the window has no P/F (the score's when_missing); its pairing's support
        # status stands in for the missing P/F pairing's
        extra["spo2_fio2_ratio"], sf_vent = decode("_sf_key")
        vent = pl.coalesce(vent, sf_vent)
    recorded = pl.col("urine_output_24h")
    fresh = dict(spec.fresh_seconds)
    hourly = win.with_columns(
        urine_output_24h=pl.when(recorded.is_null() | (urine_sum < recorded))
        .then(urine_sum)
        .otherwise(recorded),
        pao2_fio2_ratio=ratio,
        mechanical_ventilation=vent,
        **{f"urine_output_{h}h": covered_sum(f"_urine_sum_{h}", h) for h in spec.urine_hours},
        **extra,
        **{
            c: pl.when(pl.col(f"{c}__t") >= pl.col("bucket") - timedelta(seconds=fresh[c]))
            .then(pl.col(f"{c}__v"))
            .otherwise(None)
            for c in spec.biomarkers
        },
    )
    hourly = hourly.select(
        "stay_id",
        time=pl.col("bucket"),
        # the grid is dense from grid_first on, so the hour index is arithmetic
        hour=((pl.col("bucket") - pl.col("grid_first")).dt.total_seconds() // 3600).cast(pl.Int64),
        **{c: pl.col(c).cast(pl.Float64) for c in spec.provided},
        **{c: pl.col(c).cast(pl.Float64) for c in spec.biomarkers},
    )
    scored = sofa(hourly, spec.variant, dict(spec.sofa_options) or None)
    # Polars' in-memory engine runs this query in two thirds of the streaming engine's time on a
    # 10^6-row cohort; the streaming engine holds less at once on the largest grids
    classified = classify_frame(spec.protocol, scored, column="endotype")
    if grid.height <= IN_MEMORY_GRID_ROWS:
        out = classified.collect(engine="in-memory")
    else:
        out = classified.collect(engine="streaming")
    assert isinstance(out, pl.DataFrame)
    return out


# ------------------------------------------------------------------------------------------- running


def _normalise(table: pl.DataFrame) -> pl.DataFrame:
    """Same dtypes whatever engine produced the frame: UTC microsecond timestamps, int64 integers."""
    exprs = []
    for name, dtype in table.schema.items():
        if isinstance(dtype, pl.Datetime):
            col = pl.col(name)
            col = (
                col.dt.replace_time_zone("UTC")
                if dtype.time_zone is None
                else col.dt.convert_time_zone("UTC")
            )
            exprs.append(col.cast(_T))
        elif dtype in (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16, pl.UInt32):
            exprs.append(pl.col(name).cast(pl.Int64))
        elif dtype == pl.Float32:
            exprs.append(pl.col(name).cast(pl.Float64))
    return table.with_columns(exprs) if exprs else table


def _frame(table: Any, sort: Sequence[str]) -> pl.DataFrame:
    """An engine's Arrow result as a normalised Polars frame, sorted by ``sort`` when given."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return _normalise(frame).sort(list(sort)) if sort else _normalise(frame)


# DuckDB notes that Arrow from an executed statement's result copies the rows once more; measured on
# the build's queries, that path is still the faster one (see _Runner._run).
warnings.filterwarnings(
    "ignore", message="Arrow output on a DB-API result", category=UserWarning, module=__name__
)

# Compiled DuckDB queries of earlier builds in this process, keyed by everything the plan depends on
# (protocol, SOFA definition and options, open stays, Sepsis-3 rules, input schemas): building the Ibis
# graph and compiling it to SQL costs about a second, the same for every build with those choices.
_PLAN_CACHE: dict[tuple[Any, ...], dict[str, tuple[str, ir.Table]]] = {}


@dataclass
class _Aside:
    """Frames of queries run beside the main ones (:meth:`_Runner.collect_aside`)."""

    frames: dict[str, pl.DataFrame] | None = None
    future: Future[dict[str, pl.DataFrame]] | None = None

    def result(self) -> dict[str, pl.DataFrame]:
        if self.frames is None:
            assert self.future is not None
            self.frames = self.future.result()
        return self.frames

    def settle(self) -> None:
        """Waits for the queries (so that nothing still reads the build's files), whatever they gave."""
        if self.future is not None:
            wait([self.future])


class _Runner:
    """Runs the build's queries: on DuckDB from the compiled SQL (cached by ``key``), else through Ibis."""

    def __init__(self, con: Any, key: tuple[Any, ...] | None) -> None:
        self.con = con
        self.key = key
        self.cached = _PLAN_CACHE.get(key) if key is not None else None
        self.compiled: dict[str, tuple[str, ir.Table]] = {}

    def _compiled(self, name: str, make: Callable[[], ir.Table]) -> tuple[str, ir.Table]:
        if self.cached is not None and name in self.cached:
            sql, expr = self.cached[name]
        else:
            expr = make()
            sql = str(self.con.compile(expr))
        self.compiled[name] = (sql, expr)
        return sql, expr

    @staticmethod
    def _run(connection: Any, sql: str, expr: ir.Table, sort: Sequence[str]) -> pl.DataFrame:
        from ibis.backends.duckdb.converter import DuckDBPyArrowData

        # execute + fetch binds the statement once; a relation (``sql(...)``) binds it, with a scan of the
        # caller's variables, before running it: 0.06 s more on the 10^6-row grid query
        connection.execute(sql)
        table = expr.__pyarrow_result__(connection.to_arrow_table(), data_mapper=DuckDBPyArrowData)
        return _frame(table, sort)

    def collect(self, name: str, make: Callable[[], ir.Table], sort: Sequence[str]) -> pl.DataFrame:
        if self.key is None:
            return _frame(self.con.to_pyarrow(make()), sort)
        sql, expr = self._compiled(name, make)
        return self._run(self.con.con, sql, expr, sort)

    def collect_aside(
        self, queries: Mapping[str, tuple[Callable[[], ir.Table], Sequence[str]]], views: Sequence[str]
    ) -> _Aside:
        """Starts ``queries`` on a second connection to the same DuckDB database, in a thread, while the
        caller goes on (the grid query leaves a core idle for a fifth of its time); ``views``: the
        temporary views they read (a connection's temporary views are its own). Other engines run
        them at once."""
        if self.key is None:
            return _Aside(frames={n: self.collect(n, make, sort) for n, (make, sort) in queries.items()})
        jobs = [(name, *self._compiled(name, make), sort) for name, (make, sort) in queries.items()]
        cursor = self.con.con.cursor()
        cursor.execute("SET TimeZone = 'UTC'")
        for view in views:
            [(create_view,)] = self.con.con.execute(
                "SELECT sql FROM duckdb_views() WHERE temporary AND view_name = ?", [view]
            ).fetchall()
            cursor.execute(create_view)

        def run() -> dict[str, pl.DataFrame]:
            try:
                return {name: self._run(cursor, sql, expr, sort) for name, sql, expr, sort in jobs}
            finally:
                cursor.close()

        pool = ThreadPoolExecutor(max_workers=1)
        future = pool.submit(run)
        pool.shutdown(wait=False)
        return _Aside(future=future)

    def store(self) -> None:
        if self.key is not None:
            _PLAN_CACHE[self.key] = dict(self.compiled)


def _stays_frame(stays: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in STAYS_SCHEMA if c not in stays.columns]
    frame = stays.with_columns([pl.lit(None, dtype=STAYS_SCHEMA[c]).alias(c) for c in missing])
    return _normalise(frame.select(list(STAYS_SCHEMA)).cast(STAYS_SCHEMA))  # type: ignore[arg-type]


def build_cohort(
    source_data: SourceData | ParquetInput,
    protocol_id: str = "immunosep-2025",
    engine: str = "duckdb",
    output_dir: str | Path | None = None,
    progress: Progress | None = None,
    *,
    spark: Any = None,
    threads: int | None = None,
    memory_limit: str | None = None,
    suspected_infection: str | None = None,
    sofa_baseline: str | None = None,
    sofa_version: str = "sofa-1996",
    sofa_options: Mapping[str, str] | None = None,
    adults: bool = False,
    first_stay: bool = False,
    min_stay_hours: float | None = None,
) -> CohortResult:
    """Run the cohort plan on ``engine`` and return (and, with ``output_dir``, write) the tables.

    ``suspected_infection`` (:data:`SUSPICION_RULES`) and ``sofa_baseline`` (:data:`BASELINE_RULES`)
    choose the Sepsis-3 rule variants of ``rules.yaml`` (defaults there: the Sepsis-3 papers').
    ``sofa_version`` (``sofa-1996``, the Sepsis-3 definition's, or ``sofa-2``) and ``sofa_options`` (the
    named options of its definition file) choose the SOFA score; both are written to the summary.
    ``adults``, ``first_stay`` and ``min_stay_hours`` are the attrition steps of ``rules.yaml`` (all off:
    every stay); the stays left after each step are the summary's ``attrition``.

    ``threads`` and ``memory_limit`` (DuckDB, e.g. "16GB") bound the engine; beyond the limit DuckDB
    spills to the build's temporary folder, so a cohort larger than memory builds out of core.

    ``output_dir`` receives ``stays.parquet``, ``hourly_sofa.parquet``, ``sepsis3.parquet``,
    ``endotypes.parquet`` and ``summary.json``, written to a temporary folder renamed on success.
    ``progress(step, done, total)`` is called as the steps advance (for a progress bar).
    """
    from immunostrat.cohort.attrition import apply_attrition
    from immunostrat.cohort.summary import summarise

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    rules = load_rules()
    suspicion_rule = suspected_infection or str(rules["suspected_infection"]["default"])
    baseline_rule = sofa_baseline or str(rules["sofa_baseline"]["default"])
    if suspicion_rule not in SUSPICION_RULES:
        raise ValueError(
            f"unknown suspected-infection rule {suspicion_rule!r}; use one of {', '.join(SUSPICION_RULES)}"
        )
    if baseline_rule not in BASELINE_RULES:
        raise ValueError(f"unknown SOFA baseline {baseline_rule!r}; use one of {', '.join(BASELINE_RULES)}")
    sofa_spec = sofa_definition(sofa_version, sofa_options)  # refuses unknown variants and options
    protocol = load_protocol(protocol_id)
    steps = ["stage inputs", "hourly SOFA and endotypes", "Sepsis-3", "endotype timeline", "summary"]
    if output_dir is not None:
        steps.append("write tables")
    total = len(steps)

    def tick(i: int) -> None:
        if progress is not None:
            progress(steps[min(i, total - 1)], i, total)

    work = Path(tempfile.mkdtemp(prefix="immunostrat-cohort-"))
    aside: _Aside | None = None
    try:
        tick(0)
        if isinstance(source_data, SourceData):
            stays_pl = _stays_frame(source_data.stays)
            obs_path = work / "observations.parquet"
            source_data.observations.select("patient_id", "time", "concept", "value").write_parquet(obs_path)
            obs_src: str = str(obs_path)
            report, notes, source_name = source_data.report, source_data.notes, source_data.source
            side_tables = source_data.tables
        else:
            side_tables = {}
            stays_pl = _stays_frame(pl.read_parquet(source_data.stays))
            obs_src = str(source_data.observations)
            report, notes, source_name = source_data.report, source_data.notes, source_data.source
        stays_pl, attrition = apply_attrition(
            stays_pl,
            adults=adults,
            first_stay=first_stay,
            min_stay_hours=min_stay_hours,
            min_age_years=float(rules["attrition"]["adults"]["min_age_years"]),
        )
        stays_path = work / "stays.parquet"
        stays_pl.write_parquet(stays_path)
        con = connect(
            engine, spark=spark, threads=threads, memory_limit=memory_limit, temp_directory=work / "spill"
        )
        # Fixed view names on DuckDB, so that the compiled SQL is the same from one build to the next
        # and can be cached (see _PLAN_CACHE).
        names = engine == "duckdb"
        stays_t = con.read_parquet(str(stays_path), **({"table_name": "cohort_stays"} if names else {}))
        obs_t = con.read_parquet(obs_src, **({"table_name": "cohort_observations"} if names else {}))
        open_stays = bool(stays_pl["icu_outtime"].null_count())
        key: tuple[Any, ...] | None = None
        if names:
            key = (
                protocol_id,
                sofa_version,
                tuple(sorted((sofa_options or {}).items())),
                open_stays,
                suspicion_rule,
                baseline_rule,
                tuple(stays_t.schema().items()),
                tuple(obs_t.schema().items()),
            )
        runner = _Runner(con, key)
        biomarkers = tuple(protocol.requires)
        plan_made: list[Plan] = []

        def the_plan() -> Plan:
            if not plan_made:
                plan_made.append(
                    plan_hourly(
                        stays_t,
                        obs_t,
                        protocol,
                        open_stays=open_stays,
                        variant=sofa_version,
                        sofa_options=sofa_options,
                    )
                )
            return plan_made[0]

        tick(1)
        # the small scans (concept counts, infection events) run beside the grid query and the windows
        aside = runner.collect_aside(
            {
                "counts": (lambda: the_plan().concept_counts, ["concept"]),
                "infection": (lambda: the_plan().infection, []),
            },
            views=["cohort_observations"],
        )
        grid = runner.collect("grid", lambda: the_plan().grid, [])
        hourly = finish_hourly(grid, hourly_windows(protocol, sofa_version, sofa_options))
        del grid
        counts, infection = aside.result()["counts"], aside.result()["infection"]
        infection_rows = (
            infection.group_by("stay_id", "concept")
            .agg(rows=pl.len().cast(pl.Int64))
            .sort("stay_id", "concept")
        )
        tick(2)
        episodes = suspicion_episodes(infection, suspicion_rule, key="stay_id")
        sepsis = assess_sepsis3(stays_pl["stay_id"], hourly, episodes, baseline_rule)
        tick(3)
        endotypes = endotype_timeline(hourly, biomarkers)
        runner.store()
        tick(4)
        present = dict(zip(counts["concept"].to_list(), counts["rows"].to_list(), strict=True))
        sepsis = _sepsis_reasons(
            sepsis, present, infection_rows, side_tables.get("care_sites"), suspicion_rule, baseline_rule
        )
        stays_out, summary = summarise(
            stays=stays_pl,
            hourly=hourly,
            sepsis3=sepsis,
            endotypes=endotypes,
            concept_rows=present,
            report=report,
            notes=notes,
            source=source_name,
            engine=engine,
            protocol=protocol,
            rules={
                "suspected_infection": suspicion_rule,
                "sofa_baseline": baseline_rule,
                "sofa": str(sofa_spec["id"]),
                "sofa_options": dict(sofa_spec["options_used"]),
                "vasopressor_max_gap_hours": float(sofa_spec["vasopressor_max_gap_hours"]),
            },
            dropped=side_tables.get("dropped"),
            attrition=attrition,
        )
        result = CohortResult(
            stays=stays_out, hourly_sofa=hourly, sepsis3=sepsis, endotypes=endotypes, summary=summary
        )
        if output_dir is not None:
            tick(5)
            result.output_dir = write_tables(result, output_dir)
        if progress is not None:
            progress("done", total, total)
        return result
    finally:
        if aside is not None:
            aside.settle()
        shutil.rmtree(work, ignore_errors=True)


def _sepsis_reasons(
    sepsis: pl.DataFrame,
    present: dict[str, int],
    infection_rows: pl.DataFrame,
    care_sites: pl.DataFrame | None,
    suspicion_rule: str,
    baseline_rule: str,
) -> pl.DataFrame:
    """Reason and assessability per stay. Suspected infection is not assessable where the source, or
    the stay's care site (eICU: hospital; ``tables['care_sites']``), has no events of a concept the rule
    needs; Sepsis-3 is not assessable where every suspicion window lies outside the ICU stay."""
    spec = load_definition("sepsis3")
    needs = [str(c) for c in load_rules()["suspected_infection"]["variants"][suspicion_rule]["needs"]]
    lacking = [c for c in needs if not present.get(c)]
    source_note = f"source has no {' or '.join(lacking)} events" if lacking else ""
    site_note = pl.lit(None, dtype=pl.String)
    frame = sepsis
    if care_sites is not None and care_sites.height and not lacking:
        sites = care_sites.select(pl.col("stay_id").cast(pl.String), pl.col("care_site").cast(pl.String))
        with_events = infection_rows.join(sites, on="stay_id").select("care_site", "concept").unique()
        frame = frame.join(sites, on="stay_id", how="left")
        for concept in needs:
            has = with_events.filter(pl.col("concept") == concept)["care_site"].implode()
            missing = pl.col("care_site").is_not_null() & ~pl.col("care_site").is_in(has)
            site_note = (
                pl.when(missing & site_note.is_null())
                .then(pl.lit(f"no {concept} events at this stay's care site"))
                .otherwise(site_note)
            )
    shown = "antibiotic + culture" if suspicion_rule == "antibiotic-and-culture" else "antibiotic"
    no_rise = pl.col("suspicion_time").is_not_null() & pl.col("sofa_rise_time").is_null()
    outside = no_rise & (pl.col("sofa_hours_in_window") == 0)
    no_data = no_rise & (pl.col("sofa_hours_with_data") == 0)
    reason = (
        pl.when(pl.lit(bool(lacking)))
        .then(pl.lit(f"not assessable: {source_note}: suspected infection not assessable"))
        .when(site_note.is_not_null() & pl.col("suspicion_time").is_null())
        .then(pl.lit("not assessable: ") + site_note)
        .when(pl.col("suspicion_time").is_null())
        .then(pl.lit(f"no suspected infection ({shown})"))
        .when(outside)
        .then(pl.lit("not assessable: every suspected-infection window lies outside the ICU stay"))
        .when(no_data)
        .then(pl.lit("not assessable: no SOFA component charted in any suspected-infection window"))
        .when(pl.col("sofa_rise_time").is_null())
        .then(pl.lit(f"no SOFA rise >= {int(spec['sofa_rise'])} in the window"))
        .otherwise(pl.lit("suspected infection with SOFA rise"))
    )
    return (
        frame.with_columns(pl.col("sepsis3").fill_null(False), reason.alias("sepsis3_reason"))
        .with_columns(
            (~pl.col("sepsis3_reason").str.starts_with("not assessable")).alias("sepsis3_assessable"),
            pl.lit(spec["id"]).alias("sepsis3_variant"),
            pl.lit(suspicion_rule).alias("suspected_infection_rule"),
            pl.lit(baseline_rule).alias("sofa_baseline_rule"),
        )
        .select(
            "stay_id",
            "sepsis3",
            "sepsis_time",
            "suspicion_time",
            "antibiotic_time",
            "culture_time",
            "suspicion_episodes",
            "sofa_rise_time",
            "sofa_max_in_window",
            "sofa_hours_in_window",
            "sofa_hours_with_data",
            "baseline_sofa",
            "sepsis3_reason",
            "sepsis3_assessable",
            "sepsis3_variant",
            "suspected_infection_rule",
            "sofa_baseline_rule",
        )
    )


def write_tables(result: CohortResult, output_dir: str | Path) -> Path:
    """Write the tables and summary.json into ``output_dir`` atomically (temp folder, then rename)."""
    import json

    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, frame in result.tables().items():
            frame.write_parquet(tmp / f"{name}.parquet")
        (tmp / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str), encoding="utf-8")
        old: Path | None = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


HOURLY_COLUMNS = ("stay_id", "time", "hour", *SOFA_INPUTS, *SOFA_OUTPUTS)
__all__ = [
    "BASELINE_RULES",
    "ENGINES",
    "HOURLY_COLUMNS",
    "SUSPICION_RULES",
    "CohortResult",
    "ParquetInput",
    "Plan",
    "Progress",
    "build_cohort",
    "connect",
    "load_rules",
    "plan_hourly",
    "spark_session",
    "write_tables",
]
