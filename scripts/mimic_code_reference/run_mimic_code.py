"""Run MIT-LCP mimic-code's own DuckDB concepts on the MIMIC-IV demo and write small reference fixtures.

mimic-code (https://github.com/MIT-LCP/mimic-code, Apache-2.0) is not part of this project: the user
passes a checkout of it (``--mimic-code``, the repository root) and this script runs its
``mimic-iv/concepts_duckdb`` SQL unchanged, in the order its ``duckdb.sql`` gives, limited to the
concepts the hourly SOFA (``score/sofa.sql``) and Sepsis-3 (``sepsis/sepsis3.sql``) need.

The MIMIC-IV Clinical Database Demo 2.2 (doi:10.13026/dp1f-ex47) as shared lacks icu/chartevents; it
is rebuilt from the demo's MEDS event file (van de Water et al., doi:10.13026/t2y8-ea41): every
``LAB//<itemid>//<unit>`` code with itemid >= 220000 is a chartevents row (1,318 itemids, 668,862
rows). MEDS keeps no text value, no stay_id, hadm_id or storetime: stay_id and hadm_id are given by
the ICU stay whose [intime, outtime] holds the time (on the demo 2,991 chart rows lie outside every
stay and keep a null stay_id), ``value`` is the number as text, and float32
values are read back to 7 significant digits (1.600000023841858 -> 1.6). What the text loss changes in
mimic-code's rules: O2 delivery device (226732, ventilation.sql/oxygen_delivery.sql) and verbal
"No Response-ETT" (223900, gcs.sql) are blank, so ventilation comes only from ventilator settings
and procedureevents are not used by mimic-code for it.

Chart items mimic-code's SOFA reads, rows in the demo's MEDS file (all with a number unless said):
heart rate 220045 (13,913); MAP 220052 (5,560), 220181 (8,342), 225312 (488); SpO2 220277 (13,540);
FiO2 223835 (1,746); GCS eyes 220739 (3,274), verbal 223900 (3,266), motor 223901 (3,251); weight
226512 (129), 224639 (441); O2 delivery device 226732 (3,145, no value at all: text); ventilator mode
223849 (1,048, 1,011 with a number but not the mode's text) and Hamilton mode 229314 (402, likewise).

Output (gzip CSV, in ``--out``):
- ``mimic_code_sofa_hourly.csv.gz``: stay_id, hr, endtime and the 24-hour component scores and total
  of ``mimiciv_derived.sofa`` (one row per stay-hour);
- ``mimic_code_sepsis3.csv.gz``: ``mimiciv_derived.sepsis3`` (one row per stay with a suspected
  infection).

Usage::

    python scripts/mimic_code_reference/run_mimic_code.py --mimic-code PATH/mimic-code \
        --demo PATH/mimic-iv-demo-2.2 --meds PATH/mimic_iv_demo_meds_events.parquet \
        --out tests/cohort/fixtures
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import duckdb

# The concepts sofa.sql and sepsis3.sql read, directly or through another concept (mimic-code's own
# dependency order is taken from duckdb.sql; this list only selects).
NEEDED = (
    "demographics/icustay_times.sql",
    "demographics/icustay_hourly.sql",
    "demographics/weight_durations.sql",
    "measurement/urine_output.sql",
    "measurement/bg.sql",
    "measurement/chemistry.sql",
    "measurement/complete_blood_count.sql",
    "measurement/enzyme.sql",
    "measurement/gcs.sql",
    "measurement/oxygen_delivery.sql",
    "measurement/urine_output_rate.sql",
    "measurement/ventilator_setting.sql",
    "measurement/vitalsign.sql",
    "medication/antibiotic.sql",
    "medication/dobutamine.sql",
    "medication/dopamine.sql",
    "medication/epinephrine.sql",
    "medication/norepinephrine.sql",
    "treatment/ventilation.sql",
    "score/sofa.sql",
    "sepsis/suspicion_of_infection.sql",
    "sepsis/sepsis3.sql",
)
MIN_CHART_ITEMID = 220000


def _run(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None
) -> list[tuple[object, ...]]:
    """Execute and fetch every row (a statement's result is finished before the next one starts)."""
    return con.execute(sql, params or []).fetchall()


def load_demo(con: duckdb.DuckDBPyConnection, demo: Path) -> list[str]:
    """Every hosp/ and icu/ CSV of the demo as mimiciv_hosp.<name> / mimiciv_icu.<name>."""
    loaded = []
    for module in ("hosp", "icu"):
        _run(con, f"CREATE SCHEMA IF NOT EXISTS mimiciv_{module}")
        for path in sorted((demo / module).glob("*.csv.gz")):
            name = path.name.removesuffix(".csv.gz")
            _run(
                con,
                f"CREATE OR REPLACE TABLE mimiciv_{module}.{name} AS "
                "SELECT * FROM read_csv(?, header = true, sample_size = -1)",
                [str(path)],
            )
            loaded.append(f"{module}/{name}")
    return loaded


def rebuild_chartevents(con: duckdb.DuckDBPyConnection, meds: Path) -> int:
    """icu/chartevents from the MEDS LAB codes with itemid >= 220000 (see the module docstring)."""
    _run(
        con,
        f"""
        CREATE OR REPLACE TABLE mimiciv_icu.chartevents AS
        WITH m AS (
            SELECT subject_id, time AS charttime,
                   CAST(split_part(code, '//', 2) AS INTEGER) AS itemid,
                   NULLIF(split_part(code, '//', 3), 'UNK') AS valueuom,
                   CAST(printf('%.7g', value) AS DOUBLE) AS valuenum
            FROM read_parquet(?)
            WHERE code LIKE 'LAB//%' AND CAST(split_part(code, '//', 2) AS INTEGER) >= {MIN_CHART_ITEMID}
        )
        SELECT m.subject_id, s.hadm_id, s.stay_id, CAST(NULL AS INTEGER) AS caregiver_id, m.charttime,
               CAST(NULL AS TIMESTAMP) AS storetime, m.itemid,
               CAST(m.valuenum AS VARCHAR) AS value, m.valuenum, m.valueuom, 0 AS warning
        FROM m
        LEFT JOIN mimiciv_icu.icustays AS s
          ON s.subject_id = m.subject_id AND m.charttime BETWEEN s.intime AND s.outtime
        """,
        [str(meds)],
    )
    return int(str(_run(con, "SELECT count(*) FROM mimiciv_icu.chartevents")[0][0]))


def concept_files(mimic_code: Path) -> list[Path]:
    """The NEEDED concept files in the order mimic-code's duckdb.sql runs them."""
    root = mimic_code / "mimic-iv" / "concepts_duckdb"
    order_file = root / "duckdb.sql"
    if not order_file.is_file():
        raise FileNotFoundError(f"{order_file} not found: --mimic-code must be a mimic-code checkout")
    order = re.findall(r"^\.read\s+(\S+)", order_file.read_text(encoding="utf-8"), flags=re.M)
    missing = [n for n in NEEDED if n not in order]
    if missing:
        raise ValueError(f"duckdb.sql does not run {missing}: not the concept set this script expects")
    return [root / name for name in order if name in NEEDED]


def run_concepts(con: duckdb.DuckDBPyConnection, files: list[Path]) -> None:
    _run(con, "CREATE SCHEMA IF NOT EXISTS mimiciv_derived")
    for path in files:
        _run(con, path.read_text(encoding="utf-8"))


def export(con: duckdb.DuckDBPyConnection, out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    queries = {
        "mimic_code_sofa_hourly.csv.gz": (
            "SELECT stay_id, hr, endtime, respiration_24hours, coagulation_24hours, liver_24hours, "
            "cardiovascular_24hours, cns_24hours, renal_24hours, sofa_24hours "
            "FROM mimiciv_derived.sofa ORDER BY stay_id, hr"
        ),
        "mimic_code_sepsis3.csv.gz": "SELECT * FROM mimiciv_derived.sepsis3 ORDER BY stay_id",
    }
    rows = {}
    for name, query in queries.items():
        target = out / name
        _run(con, f"COPY ({query}) TO '{target}' (HEADER, DELIMITER ',', COMPRESSION gzip)")
        rows[name] = int(str(_run(con, f"SELECT count(*) FROM ({query})")[0][0]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mimic-code", type=Path, required=True, help="mimic-code checkout (repository root)"
    )
    parser.add_argument("--demo", type=Path, required=True, help="MIMIC-IV demo 2.2 folder (hosp/, icu/)")
    parser.add_argument("--meds", type=Path, required=True, help="the demo's MEDS events parquet file")
    parser.add_argument("--out", type=Path, required=True, help="folder for the gzip CSV fixtures")
    args = parser.parse_args()
    files = concept_files(args.mimic_code)
    con = duckdb.connect()
    load_demo(con, args.demo)
    print(f"chartevents rebuilt from MEDS: {rebuild_chartevents(con, args.meds)} rows")
    run_concepts(con, files)
    for name, n in export(con, args.out).items():
        print(f"{name}: {n} rows")


if __name__ == "__main__":
    main()
