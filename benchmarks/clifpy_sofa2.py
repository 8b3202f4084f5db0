"""SOFA-2: our cohort engine against clifpy's (CLIF consortium) on the same synthetic stays.

    python benchmarks/clifpy_sofa2.py [--stays 200] [--env out/clifpy-env] [--python PATH]

clifpy is an independent implementation of SOFA-2 (``clifpy.utils.sofa2.calculate_sofa2``, DuckDB
SQL). It is installed from PyPI, pinned (``CLIFPY``), into its own virtual environment (``--env``,
created on first use; its pins conflict with ours, e.g. pandas), never vendored, and run there as a
subprocess on CLIF-format tables written from our synthetic cohort (``cohort.synthetic``):
labs (platelets, bilirubin, creatinine, arterial pO2), vitals (MAP, SpO2, weight), GCS assessments,
norepinephrine infusions (ug/kg/min), respiratory support (device + FiO2) and urine output.

Both score 24-h windows ending at each stay's grid hours 24, 48, ... (clifpy: ``[T - 24 h, T]``; ours:
the hourly row at ``T`` = ``(T - 24 h, T]``). Printed: agreement per organ system and on the total,
the time of each, and for every organ system the kinds of difference found (each a documented rule
difference: see the README's SOFA-2 section). The last line is ``benchmark clifpy-sofa2: ...``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import venv
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from immunostrat.cohort import build_cohort
from immunostrat.cohort.synthetic import synthetic_input, write_synthetic

# clifpy 2.1.0 calls DuckDBPyRelation.fetchone(), which DuckDB 2 removed: its environment pins DuckDB 1.4.
CLIFPY = ("clifpy==2.1.0", "duckdb==1.4.1")
# our organ-system slots -> clifpy's sofa2_* columns
COMPONENTS = {
    "cns": "brain",
    "respiration": "resp",
    "cardiovascular": "cv",
    "liver": "liver",
    "renal": "kidney",
    "coagulation": "hemo",
}
DEFAULT_WEIGHT_KG = 70.0  # synthetic stays carry no weight; the same one is given to both sides

RUNNER = r"""
import json, sys, time
import pandas as pd
from clifpy.utils.sofa2 import calculate_sofa2
work = sys.argv[1]
cohort = pd.read_parquet(f"{work}/cohort.parquet")
start = time.perf_counter()
out = calculate_sofa2(cohort, clif_config_path=f"{work}/config.yaml")
seconds = time.perf_counter() - start
# every column clifpy returns except time offsets (intervals), for the explanation of differences
keep = [c for c in out.columns if not str(out[c].dtype).startswith("timedelta")]
out[keep].to_parquet(f"{work}/clifpy_out.parquet")
json.dump({"seconds": seconds}, open(f"{work}/clifpy_time.json", "w"))
"""


def clifpy_python(env: Path, python: Path | None) -> Path:
    """The interpreter of clifpy's own environment (created and filled from PyPI on first use)."""
    if python is not None:
        return python
    exe = env / "bin" / "python"
    if not exe.exists():
        print(f"creating {env} and installing {' '.join(CLIFPY)} from PyPI ...", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True).create(env)
        subprocess.run([str(exe), "-m", "pip", "install", "-q", *CLIFPY], check=True)
    return exe


def clif_tables(stays: pl.DataFrame, obs: pl.DataFrame, work: Path) -> None:
    """CLIF 2.x tables (the columns clifpy's SOFA-2 reads) from canonical observations."""
    hid = pl.col("patient_id").alias("hospitalization_id")

    def concept(name: str) -> pl.DataFrame:
        return obs.filter(pl.col("concept") == name)

    labs = pl.concat(
        [
            concept(c).select(
                hid,
                pl.lit(cat).alias("lab_category"),
                pl.col("time").alias("lab_collect_dttm"),
                pl.col("value").alias("lab_value_numeric"),
            )
            for c, cat in [
                ("platelets", "platelet_count"),
                ("bilirubin", "bilirubin_total"),
                ("creatinine", "creatinine"),
                ("pao2", "po2_arterial"),
            ]
        ]
    )
    weights = stays.select(
        pl.col("stay_id").alias("hospitalization_id"),
        pl.lit("weight_kg").alias("vital_category"),
        pl.col("icu_intime").alias("recorded_dttm"),
        pl.col("weight_kg").fill_null(DEFAULT_WEIGHT_KG).alias("vital_value"),
    )
    vitals = pl.concat(
        [
            *[
                concept(c).select(
                    hid,
                    pl.lit(c).alias("vital_category"),
                    pl.col("time").alias("recorded_dttm"),
                    pl.col("value").alias("vital_value"),
                )
                for c in ("map", "spo2")
            ],
            weights,
        ]
    )
    gcs = concept("gcs").select(
        hid,
        pl.lit("gcs_total").alias("assessment_category"),
        pl.col("time").alias("recorded_dttm"),
        pl.col("value").alias("numerical_value"),
    )
    meds = concept("norepinephrine_rate").select(
        hid,
        pl.col("time").alias("admin_dttm"),
        pl.lit("norepinephrine").alias("med_category"),
        pl.col("value").alias("med_dose"),
        pl.lit("mcg/kg/min").alias("med_dose_unit"),
        pl.when(pl.col("value") > 0)
        .then(pl.lit("going"))
        .otherwise(pl.lit("stop"))
        .alias("mar_action_category"),
    )
    # respiratory support: one row at each FiO2 charting and each support change, the device being the
    # latest support status (IMV while ventilated, else a face mask: no advanced support)
    vent = concept("mechanical_ventilation").select("patient_id", "time", pl.col("value").alias("vent"))
    fio2 = concept("fio2").select("patient_id", "time", pl.col("value").alias("fio2_set"))
    resp = (
        pl.concat(
            [
                vent.with_columns(pl.lit(None, pl.Float64).alias("fio2_set")),
                fio2.with_columns(pl.lit(None, pl.Float64).alias("vent")),
            ],
            how="diagonal",
        )
        .sort("patient_id", "time")
        .with_columns(pl.col("vent").forward_fill().over("patient_id"))
        .select(
            hid,
            pl.col("time").alias("recorded_dttm"),
            pl.when(pl.col("vent").fill_null(0) >= 1)
            .then(pl.lit("imv"))
            .otherwise(pl.lit("face mask"))
            .alias("device_category"),
            pl.lit(None, pl.String).alias("mode_category"),
            pl.col("fio2_set"),
            pl.lit(None, pl.Float64).alias("lpm_set"),
        )
    )
    urine = concept("urine_output").select(
        hid,
        pl.col("time").alias("recorded_dttm"),
        pl.col("value").alias("output_volume"),
        pl.lit("urine").alias("output_group"),
    )
    crrt = pl.DataFrame(schema={"hospitalization_id": pl.String, "recorded_dttm": pl.Datetime("us", "UTC")})
    for name, frame in [
        ("labs", labs),
        ("vitals", vitals),
        ("patient_assessments", gcs),
        ("medication_admin_continuous", meds),
        ("respiratory_support", resp),
        ("output", urine),
        ("crrt_therapy", crrt),
    ]:
        frame.write_parquet(work / f"clif_{name}.parquet")
    (work / "config.yaml").write_text(
        f"data_directory: {work.as_posix()}\nfiletype: parquet\ntimezone: UTC\n", encoding="utf-8"
    )


def compare(n_stays: int, seed: int, python: Path, save: Path | None = None) -> dict[str, Any]:
    """Score ``n_stays`` synthetic stays with both and return the agreement and times (see module doc)."""
    with tempfile.TemporaryDirectory(prefix="immunostrat-clifpy-") as tmp:
        work = Path(tmp)
        write_synthetic(work / "synthetic", n_stays, seed=seed)
        source = synthetic_input(work / "synthetic")
        stays = pl.read_parquet(source.stays).with_columns(pl.col("weight_kg").fill_null(DEFAULT_WEIGHT_KG))
        stays.write_parquet(work / "stays.parquet")
        obs = pl.read_parquet(source.observations)
        source.stays = work / "stays.parquet"

        start = time.perf_counter()
        ours = build_cohort(source, engine="duckdb", sofa_version="sofa-2").hourly_sofa
        our_seconds = time.perf_counter() - start

        # windows ending at grid hours 24, 48, ... (hour = row number from 1 at the first grid hour)
        ends = ours.filter((pl.col("hour") > 24) & ((pl.col("hour") - 1) % 24 == 0)).select(
            pl.col("stay_id").alias("hospitalization_id"), pl.col("time").alias("end_dttm")
        )
        cohort = ends.with_columns((pl.col("end_dttm") - timedelta(hours=24)).alias("start_dttm"))
        cohort.select("hospitalization_id", "start_dttm", "end_dttm").to_pandas().to_parquet(
            work / "cohort.parquet"
        )
        clif_tables(stays, obs, work)
        (work / "runner.py").write_text(RUNNER, encoding="utf-8")
        subprocess.run([str(python), str(work / "runner.py"), str(work)], check=True)
        clif_seconds = json.loads((work / "clifpy_time.json").read_text(encoding="utf-8"))["seconds"]
        theirs = pl.read_parquet(work / "clifpy_out.parquet").with_columns(
            pl.col("end_dttm").cast(pl.Datetime("us", "UTC"))
        )
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        theirs.write_parquet(save / "clifpy_sofa2_windows.parquet")
        ours.write_parquet(save / "ours_hourly_sofa2.parquet")
    joined = ours.join(
        theirs.rename({"hospitalization_id": "stay_id", "end_dttm": "time"}),
        on=["stay_id", "time"],
        how="inner",
    )
    same: dict[str, int] = {}
    spread: dict[str, str] = {}
    for ours_name, theirs_name in [*COMPONENTS.items(), ("total", "total")]:
        diff = joined.select(
            (pl.col(f"sofa_{ours_name}") - pl.col(f"sofa2_{theirs_name}").fill_null(0).cast(pl.Int64)).alias(
                "d"
            )
        )["d"]
        same[ours_name] = int((diff == 0).sum())
        counts = diff.filter(diff != 0).value_counts().sort("d")
        spread[ours_name] = ", ".join(f"{d:+d}: {c}" for d, c in counts.iter_rows())
    return {
        "stays": n_stays,
        "windows": joined.height,
        "our_hours": ours.height,
        "same": same,
        "spread": spread,
        "our_seconds": our_seconds,
        "clifpy_seconds": clif_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--stays", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env", type=Path, default=Path("out") / "clifpy-env", help="clifpy's own venv")
    parser.add_argument("--python", type=Path, default=None, help="an interpreter that has clifpy already")
    parser.add_argument("--save", type=Path, default=None, help="folder for both sides' windows (Parquet)")
    args = parser.parse_args(argv)
    r = compare(args.stays, args.seed, clifpy_python(args.env, args.python), args.save)
    n = r["windows"]
    print(f"{n} windows of 24 h in {args.stays} synthetic stays (seed {args.seed})")
    print(f"{'organ system':<16} {'same points':>12}  differences (ours - clifpy: windows)")
    for name, same in r["same"].items():
        print(f"{name:<16} {same:>6} of {n:<5}  {r['spread'][name]}")
    print(
        f"time: ours (whole build, DuckDB, {r['our_hours']:,} hourly rows) {r['our_seconds']:.2f} s; "
        f"clifpy calculate_sofa2 ({n} daily windows) {r['clifpy_seconds']:.2f} s"
    )
    print(
        f"benchmark clifpy-sofa2: same SOFA-2 total in {r['same']['total']}/{n} windows "
        f"({100 * r['same']['total'] / max(n, 1):.1f}%); components "
        + ", ".join(f"{k} {100 * v / max(n, 1):.0f}%" for k, v in r["same"].items() if k != "total")
        + f"; time ratio clifpy/ours x{r['clifpy_seconds'] / r['our_seconds']:.2f} (above 1: ours faster)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
