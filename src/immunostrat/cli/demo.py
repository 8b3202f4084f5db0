"""The README's main job: classify and score the bundled synthetic cohort, print a summary."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from importlib import resources
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from immunostrat.cli.output import write_table
from immunostrat.concepts import read_observations
from immunostrat.protocols import classify_all, load_protocol
from immunostrat.scores import score_windows, sepsis3, septic_shock, suspected_infection, windows_every

SCREENING_HOURS = 12  # demo design: decide 12 h after admission, when the screening sample is back


def demo_paths() -> tuple[Path, Path]:
    base = resources.files("immunostrat").joinpath("data", "demo")
    return Path(str(base.joinpath("observations.csv"))), Path(str(base.joinpath("patients.csv")))


def run_demo(output_dir: Path, console: Console) -> dict[str, pl.DataFrame]:
    """Read the demo cohort, classify (immunosep-2025), score daily SOFA, Sepsis-3; write and print."""
    observations_path, patients_path = demo_paths()
    with console.status("reading and validating observations"):
        data = read_observations(observations_path, patients_path)
    protocol = load_protocol("immunosep-2025")
    # Screening decision 12 h after admission: the day-0 biomarkers are fresh then.
    screening = {
        r["patient_id"]: r["admission_time"] + timedelta(hours=SCREENING_HOURS)
        for r in data.patients.iter_rows(named=True)
        if r["admission_time"] is not None
    }
    with console.status("classifying immune endotypes"):
        results = classify_all(protocol, data.observations, data.patients, at_by_patient=screening)
    from immunostrat.cli.main import classification_rows

    classes = classification_rows(results)
    with console.status("scoring daily SOFA"):
        windows = windows_every(data.observations, 24.0, data.patients)
        sofa = score_windows(data.observations, windows, "sofa")
    suspicion = suspected_infection(data.observations)
    sepsis = sepsis3(sofa.select("patient_id", "time", "sofa_total"), suspicion)
    shock = septic_shock(data.observations)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_table(classes, str(output_dir / "classify.csv"))
    write_table(
        classes, str(output_dir / "classify.json"), records=[r.model_dump(mode="json") for r in results]
    )
    write_table(sofa, str(output_dir / "sofa_daily.csv"))
    write_table(sepsis.join(shock, on="patient_id", how="left"), str(output_dir / "sepsis3.csv"))

    day1 = (
        sofa.sort("time")
        .group_by("patient_id", maintain_order=True)
        .first()
        .select("patient_id", "sofa_total")
    )
    summary = (
        classes.join(day1, on="patient_id", how="left")
        .join(sepsis.select("patient_id", "sepsis3"), on="patient_id", how="left")
        .join(shock, on="patient_id", how="left")
        .group_by("endotype", "therapy")
        .agg(
            pl.len().alias("patients"),
            pl.col("sofa_total").median().alias("median_day1_sofa"),
            pl.col("sepsis3").sum().alias("sepsis3"),
            pl.col("septic_shock").sum().alias("septic_shock"),
            pl.col("dose").str.contains("renally adjusted").sum().alias("renal_adjusted"),
        )
        .sort("patients", descending=True)
    )
    total = summary["patients"].sum()
    table = Table(
        title=f"immunosep-2025 on the demo cohort ({total} patients, {data.observations.height} observations)"
    )
    for col in ("endotype", "therapy", "n", "%", "day-1 SOFA", "Sepsis-3", "shock", "renal adj."):
        text = col in {"endotype", "therapy"}
        table.add_column(col, justify="left" if text else "right", no_wrap=text)
    for row in summary.iter_rows(named=True):
        table.add_row(
            row["endotype"],
            row["therapy"],
            str(row["patients"]),
            f"{100 * row['patients'] / total:.1f}",
            f"{row['median_day1_sofa']:.1f}" if row["median_day1_sofa"] is not None else "-",
            str(row["sepsis3"]),
            str(row["septic_shock"]),
            str(row["renal_adjusted"]),
        )
    Console(width=max(console.width, 100), file=console.file).print(table)
    console.print(f"outputs in {output_dir}/: classify.csv, classify.json, sofa_daily.csv, sepsis3.csv")
    return {"classes": classes, "sofa": sofa, "sepsis3": sepsis, "summary": summary}


def _free_port(host: str, port: int) -> int:
    """``port`` if it can be bound on ``host``, else one the system hands out."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return port
        except OSError:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])


def _build_demo_cohort(folder: Path) -> None:
    """``cohort build --source long`` over the bundled cohort (the researcher's cohort pages)."""
    from immunostrat.cohort import build_cohort
    from immunostrat.sources import load_source

    observations, _ = demo_paths()
    build_cohort(load_source("long", observations.parent), protocol_id="immunosep-2025", output_dir=folder)


def serve_demo(output_dir: Path, console: Console, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """The web application over a fresh demo trial in ``output_dir/demo-trial.db`` (recreated on
    each run: its passwords are generated now and printed once), serving until interrupted."""
    from immunostrat.api.app import prepare_demo
    from immunostrat.api.app import serve as run_server
    from immunostrat.cohort.report_data import COHORTS_DIR_ENV

    db_file = output_dir / "demo-trial.db"
    for stale in output_dir.glob("demo-trial.db*"):
        stale.unlink()
    with console.status("creating the demo trial"):
        info = prepare_demo(f"sqlite:///{db_file.resolve()}")
    cohorts = output_dir / "cohorts"
    with console.status("building the demo cohort for the cohort pages"):
        _build_demo_cohort(cohorts / "bundled-demo")
    os.environ.setdefault(COHORTS_DIR_ENV, str(cohorts.resolve()))
    chosen = _free_port(host, port)
    url = f"http://{host}:{chosen}/web/"
    console.print(
        f"demo trial {info.trial_code}: screened {info.screened}, eligible {info.eligible}, "
        f"randomized {info.randomized} (database {db_file})"
    )
    console.print("sign in with one of these (passwords shown only now):")
    for role, (username, password) in info.users.items():
        console.print(f"  {role:<13} {username:<20} {password}", highlight=False)
    console.print(f"open {url}  (Ctrl-C stops the server)", highlight=False)
    run_server(info.db_url, host=host, port=chosen)
