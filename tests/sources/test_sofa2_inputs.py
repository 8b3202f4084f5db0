"""SOFA-2 inputs mapped from the demos: GCS motor, potassium, pH, bicarbonate, RRT, mechanical
circulatory support and delirium drugs. Each is checked against the raw tables it comes from (rows kept
plus rows dropped with a reason = the raw rows the mapping selects)."""

from __future__ import annotations

import polars as pl
from sourcetools import shared

from immunostrat.sources import SourceData

MIMIC = "mimic-iv-demo-2.2"
EICU = "eicu-crd-demo-2.0.1"
DELIRIUM = "(?i)haloperidol|quetiapine|olanzapine|ziprasidone"


def _kept(data: SourceData, concept: str) -> pl.DataFrame:
    return data.observations.filter(pl.col("concept") == concept)


def _dropped(data: SourceData, concept: str) -> int:
    dropped = data.tables["dropped"]
    return int(dropped.filter(pl.col("concept") == concept)["rows"].sum())


def _raw(name: str, table: str) -> pl.DataFrame:
    return pl.read_csv(shared(name) / table, infer_schema=False)


def test_mimic_labs_for_the_rrt_criteria(mimic_demo: SourceData) -> None:
    labs = _raw(MIMIC, "hosp/labevents.csv.gz")
    for concept, items, unit in (
        ("potassium", ["50971", "50822"], "mmol/L"),
        ("ph", ["50820"], "1"),
        ("bicarbonate", ["50882", "50803"], "mmol/L"),
    ):
        raw = labs.filter(pl.col("itemid").is_in(items))
        kept = _kept(mimic_demo, concept)
        assert kept.height > 0, concept
        assert kept.height + _dropped(mimic_demo, concept) == raw.height, concept
        assert set(kept["unit"].to_list()) == {unit}, concept
        raw_values = set(raw["valuenum"].cast(pl.Float64, strict=False).drop_nulls().to_list())
        assert set(kept["value"].to_list()) <= raw_values, concept  # mEq/L = mmol/L: unchanged
    ph = _kept(mimic_demo, "ph")["value"]
    assert ph.min() >= 6.5 and ph.max() <= 8.0


def test_mimic_gcs_motor_from_chart_item_223901(mimic_demo: SourceData) -> None:
    motor = _kept(mimic_demo, "gcs_motor")
    assert motor.height > 1000
    assert set(motor["value"].to_list()) <= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    assert motor["value"].min() == 1.0 and motor["value"].max() == 6.0
    gcs_stays = set(_kept(mimic_demo, "gcs")["patient_id"].to_list())
    assert set(motor["patient_id"].to_list()) <= gcs_stays


def test_mimic_rrt_periods_are_the_dialysis_procedures(mimic_demo: SourceData) -> None:
    items = ["225802", "225803", "225809", "225955", "225441", "225805"]
    raw = _raw(MIMIC, "icu/procedureevents.csv.gz").filter(pl.col("itemid").is_in(items))
    rrt = _kept(mimic_demo, "rrt")
    assert set(rrt.filter(pl.col("value") == 1)["patient_id"].to_list()) == set(raw["stay_id"].to_list())
    # hourly points while running: more points than procedure rows
    assert rrt.filter(pl.col("value") == 1).height > raw.height


def test_mimic_delirium_drugs_are_emar_administrations(mimic_demo: SourceData) -> None:
    emar = _raw(MIMIC, "hosp/emar.csv.gz").filter(pl.col("medication").str.contains(DELIRIUM))
    given = emar.filter(pl.col("event_txt").is_in(["Administered", "Delayed Administered"]))
    not_given = emar.filter(pl.col("event_txt") == "Not Given")
    assert not_given.height > 0  # the data hold refusals: they must not count
    kept = _kept(mimic_demo, "delirium_drug")
    assert kept.height > 0
    assert kept.height + _dropped(mimic_demo, "delirium_drug") == given.height
    assert set(kept["value"].to_list()) == {1.0}


def test_mimic_unmapped_support_is_reported_absent(mimic_demo: SourceData) -> None:
    absent = {c.concept: c.detail for c in mimic_demo.absent()}
    assert "ecmo" in absent and "mechanical_circulatory_support" in absent
    for concept in ("rrt", "delirium_drug", "gcs_motor", "potassium", "ph", "bicarbonate"):
        assert concept not in absent


def test_eicu_labs_for_the_rrt_criteria(eicu_demo: SourceData) -> None:
    lab = _raw(EICU, "pyhealth-subset/lab.csv")
    for concept, names, unit in (
        ("potassium", ["potassium"], "mmol/L"),
        ("ph", ["pH"], "1"),
        ("bicarbonate", ["bicarbonate", "HCO3"], "mmol/L"),
    ):
        raw = lab.filter(pl.col("labname").is_in(names))
        kept = _kept(eicu_demo, concept)
        assert kept.height > 0, concept
        assert kept.height + _dropped(eicu_demo, concept) == raw.height, concept
        assert set(kept["unit"].to_list()) == {unit}, concept


def test_eicu_gcs_motor_exam_and_unsedated_apache(eicu_demo: SourceData) -> None:
    motor = _kept(eicu_demo, "gcs_motor")
    exam = motor.filter(pl.col("source").str.contains("physicalExam"))
    raw_exam = _raw(EICU, "physicalExam.csv.gz").filter(
        pl.col("physicalexampath").str.contains("/GCS/Motor Score/[0-9]+$")
    )
    assert exam.height == raw_exam.height
    assert set(motor["value"].to_list()) <= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    apache = _raw(EICU, "apacheApsVar.csv.gz")
    sedated = set(apache.filter(pl.col("meds") == "1")["patientunitstayid"].to_list())
    from_apache = motor.filter(pl.col("source").str.contains("apacheApsVar"))
    assert from_apache.height > 0
    assert not set(from_apache["patient_id"].to_list()) & sedated  # meds = 1: not assessable


def test_eicu_rrt_mcs_and_delirium_from_treatment_and_medication(eicu_demo: SourceData) -> None:
    treatment = _raw(EICU, "treatment.csv.gz")
    dialysis = treatment.filter(
        pl.col("treatmentstring").str.contains(r"(^|\|)dialysis(\||$)")
        & ~pl.col("treatmentstring").str.contains("insertion of venous catheter|arteriovenous shunt")
    )
    catheter_only = set(
        treatment.filter(pl.col("treatmentstring").str.contains("insertion of venous catheter"))[
            "patientunitstayid"
        ].to_list()
    ) - set(dialysis["patientunitstayid"].to_list())
    rrt_stays = set(_kept(eicu_demo, "rrt")["patient_id"].to_list())
    assert rrt_stays <= set(dialysis["patientunitstayid"].to_list())
    assert len(rrt_stays) > 0
    assert not rrt_stays & catheter_only  # a catheter insertion alone is not RRT
    iabp = treatment.filter(pl.col("treatmentstring").str.contains("intraaortic balloon pump"))
    mcs = _kept(eicu_demo, "mechanical_circulatory_support")
    assert mcs.height + _dropped(eicu_demo, "mechanical_circulatory_support") == iabp.height
    medication = _raw(EICU, "medication.csv.gz")
    drugs = medication.filter(
        pl.col("drugname").str.contains(
            "(?i)haloperidol|haldol|quetiapine|seroquel|olanzapine|zyprexa|ziprasidone|geodon"
        )
    )
    kept = _kept(eicu_demo, "delirium_drug")
    assert 0 < kept.height <= drugs.height
    cancelled = drugs.filter(pl.col("drugordercancelled").str.to_lowercase() == "yes")
    assert kept.height + _dropped(eicu_demo, "delirium_drug") == drugs.height - cancelled.height
