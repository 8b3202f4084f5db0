"""eICU-CRD adapter: a small fixture with most tables missing (absent, reported, never a crash), and
the real demo copy (lab, vitalPeriodic, nurseCharting, intakeOutput missing)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from sourcetools import shared, status, write_csv

from immunostrat.concepts import DEFAULT_EPOCH
from immunostrat.scores.sepsis3 import suspected_infection
from immunostrat.sources import SourceData, load_eicu, load_mapping, load_source


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SourceData:
    root = tmp_path_factory.mktemp("eicu")
    write_csv(
        root / "patient.csv",
        """
        patientunitstayid,patienthealthsystemstayid,gender,age,hospitaladmitoffset,hospitaldischargeoffset,hospitaldischargestatus,unitdischargeoffset,unitdischargestatus,admissionweight,admissionheight,uniquepid
        10,1,Female,> 89,-120,3000,Expired,2000,Alive,60,160,001-1
        20,2,Male,45,0,5000,Alive,4000,Alive,,180,001-2
    """,
    )
    write_csv(
        root / "infusiondrug.csv",
        """
        infusiondrugid,patientunitstayid,infusionoffset,drugname,drugrate,infusionrate,drugamount,volumeoffluid,patientweight
        1,10,60,Norepinephrine (mcg/min),6,,,,
        2,10,120,Norepinephrine (ml/hr),10,,,,
        3,10,180,Norepinephrine (),5,,,,
        4,20,60,Norepinephrine (mcg/min),10,,,,
        5,20,60,Vasopressin (units/min),0.04,,,,
        6,20,90,Dopamine (mcg/kg/min),5,,,,
        7,10,200,Epinephrine (mcg/min),OFF,,,,
    """,
    )
    write_csv(
        root / "respiratoryCharting.csv",
        """
        respchartid,patientunitstayid,respchartoffset,respchartentryoffset,respcharttypecat,respchartvaluelabel,respchartvalue
        1,10,30,30,respFlowSettings,FiO2,60
        2,10,30,30,respFlowSettings,PEEP,8
        3,20,30,30,respFlowSettings,FiO2,0
    """,
    )
    write_csv(
        root / "physicalExam.csv",
        """
        physicalexamid,patientunitstayid,physicalexamoffset,physicalexampath,physicalexamvalue,physicalexamtext
        1,10,15,notes/Progress Notes/Physical Exam/Physical Exam/Neurologic/GCS/Eyes Score/3,3,3
        2,10,15,notes/Progress Notes/Physical Exam/Physical Exam/Neurologic/GCS/Verbal Score/4,4,4
        3,10,15,notes/Progress Notes/Physical Exam/Physical Exam/Neurologic/GCS/Motor Score/6,6,6
    """,
    )
    write_csv(
        root / "apacheApsVar.csv",
        """
        apacheapsvarid,patientunitstayid,intubated,vent,dialysis,eyes,motor,verbal,meds,urine,wbc,temperature,respiratoryrate,sodium,heartrate,meanbp,ph,hematocrit,creatinine,albumin,pao2,pco2,bun,glucose,bilirubin,fio2
        1,10,0,1,0,4,6,5,0,1500,12,38.1,20,140,100,70,7.4,30,1.4,3,80,40,20,100,-1,60
        2,20,0,0,0,-1,-1,-1,0,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,2.5,-1
    """,
    )
    write_csv(
        root / "microLab.csv",
        """
        microlabid,patientunitstayid,culturetakenoffset,culturesite,organism,antibiotic,sensitivitylevel
        1,10,100,Blood,E. coli,ampicillin,R
        2,10,100,Blood,E. coli,ceftriaxone,S
    """,
    )
    write_csv(
        root / "medication.csv",
        """
        medicationid,patientunitstayid,drugorderoffset,drugstartoffset,drugivadmixture,drugordercancelled,drugname,drughiclseqno,dosage,routeadmin,frequency,loadingdose,prn,drugstopoffset,gtc
        1,10,50,60,No,No,CEFTRIAXONE 1 G IV,1,1 g,IV,q24h,,No,2000,0
        2,10,50,60,No,Yes,VANCOMYCIN 1 G IV,1,1 g,IV,q12h,,No,2000,0
    """,
    )
    write_csv(
        root / "treatment.csv",
        """
        treatmentid,patientunitstayid,treatmentoffset,treatmentstring,activeupondischarge
        1,20,300,infectious diseases|medications|therapeutic antibacterials|vancomycin,False
        2,20,-30,pulmonary|medications|antibacterials,True
        3,10,400,renal|medications|systemic antibiotics|cephalosporin,False
        4,10,45,surgery|infection|prophylactic antibacterials|for surgery|cephalosporin,False
        5,20,45,gastrointestinal|medications|stress ulcer prophylaxis|pantoprazole,False
        6,20,60,"cardiovascular|shock|vasopressors|norepinephrine > 0.1 micrograms/kg/min",False
        7,99,60,infectious diseases|medications|therapeutic antibacterials,False
    """,
    )
    return load_eicu(root)


def test_missing_tables_are_absent_not_a_crash(small: SourceData) -> None:
    for concept in ("platelets", "spo2", "urine_output", "lactate"):
        state, rows, detail = status(small, concept)
        assert state == "absent" and rows == 0
        assert "missing from this copy" in detail
    assert any("tables missing" in n for n in small.notes)


def test_stays_and_offsets(small: SourceData) -> None:
    stays = small.stays.sort("stay_id")
    assert stays["age"].to_list() == [90.0, 45.0]  # "> 89" -> 90
    assert stays["icu_intime"].to_list() == [DEFAULT_EPOCH, DEFAULT_EPOCH]
    assert stays["admission_time"][0] == DEFAULT_EPOCH - timedelta(minutes=120)
    assert stays["death_time"].to_list() == [DEFAULT_EPOCH + timedelta(minutes=3000), None]
    fio2 = small.observations.filter((pl.col("concept") == "fio2") & (pl.col("patient_id") == "10"))
    assert fio2["time"].to_list()[0] == DEFAULT_EPOCH + timedelta(minutes=30)


def test_vasopressor_units_from_the_drug_name(small: SourceData) -> None:
    ne = small.observations.filter(pl.col("concept") == "norepinephrine_rate").sort("patient_id")
    assert ne["patient_id"].to_list() == ["10"]  # 6 mcg/min / 60 kg admission weight
    assert ne["value"].to_list() == [0.1]
    dropped = {(r["concept"], r["reason"]): r["rows"] for r in small.tables["dropped"].iter_rows(named=True)}
    assert dropped[("norepinephrine_rate", "per-minute rate without a recorded weight")] == 1  # stay 20
    assert dropped[("norepinephrine_rate", "unit: unit 'ml/hr' cannot measure norepinephrine_rate")] == 1
    assert dropped[("norepinephrine_rate", "unit: norepinephrine_rate needs a unit")] == 1
    assert dropped[("epinephrine_rate", "value is not a number")] == 1  # "OFF"
    assert small.observations.filter(pl.col("concept") == "vasopressin_rate")["value"].to_list() == [0.04]


def test_gcs_fio2_vent_and_apache_fallback(small: SourceData) -> None:
    obs = small.observations
    gcs = obs.filter(pl.col("concept") == "gcs")
    assert gcs["value"].to_list() == [13.0]  # exam 3 + 4 + 6; APACHE (15) not needed for this stay
    assert obs.filter(pl.col("concept") == "fio2")["value"].to_list() == [
        0.6
    ]  # 60 %; stay 20 charted 0: junk
    assert obs.filter(pl.col("concept") == "bilirubin")["value"].to_list() == [2.5]  # APACHE day 1, stay 20
    bili = obs.filter(pl.col("concept") == "bilirubin").row(0, named=True)
    assert bili["time"] == DEFAULT_EPOCH + timedelta(hours=24)
    vent = obs.filter(pl.col("concept") == "mechanical_ventilation")
    assert vent.filter(pl.col("patient_id") == "10")["value"].to_list() == [1.0]  # PEEP charted
    assert obs.filter(pl.col("concept") == "urine_output_24h")["value"].to_list() == [1500.0]


def test_infection_events(small: SourceData) -> None:
    obs = small.observations
    assert obs.filter(pl.col("concept") == "culture").height == 1  # one specimen, two sensitivity rows
    medication = obs.filter((pl.col("concept") == "antibiotic") & (pl.col("source") == "eicu:medication.csv"))
    assert medication.height == 1  # the cancelled order left out


def test_treatment_antibiotics(small: SourceData) -> None:
    abx = small.observations.filter(
        (pl.col("concept") == "antibiotic") & (pl.col("source") == "eicu:treatment.csv")
    ).sort("source_row")
    # source_row = the data row of treatment.csv: rows 1-3 are antibacterial therapy; prophylaxis (4),
    # other treatments (5, 6) and a stay missing from patient (7) are not taken
    assert abx.select("patient_id", "source_row", "value").rows() == [
        ("20", 1, 1.0),
        ("20", 2, 1.0),
        ("10", 3, 1.0),
    ]
    assert abx["time"].to_list() == [
        DEFAULT_EPOCH + timedelta(minutes=300),
        DEFAULT_EPOCH - timedelta(minutes=30),  # charted before unit admission
        DEFAULT_EPOCH + timedelta(minutes=400),
    ]
    dropped = {
        (r["concept"], r["table"], r["reason"]): r["rows"]
        for r in small.tables["dropped"].iter_rows(named=True)
    }
    assert dropped[("antibiotic", "treatment.csv", "stay not in the stay table")] == 1
    _, rows, detail = status(small, "antibiotic")
    assert rows == 4 and "treatment.csv 3" in detail and "medication.csv 1" in detail


def test_treatment_table_missing_keeps_medication_antibiotics(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "patient.csv",
        """
        patientunitstayid,patienthealthsystemstayid,gender,age,hospitaladmitoffset,hospitaldischargeoffset,hospitaldischargestatus,unitdischargeoffset,unitdischargestatus,admissionweight,admissionheight,uniquepid
        10,1,Female,60,0,3000,Alive,2000,Alive,60,160,001-1
    """,
    )
    write_csv(
        tmp_path / "medication.csv",
        """
        medicationid,patientunitstayid,drugorderoffset,drugstartoffset,drugivadmixture,drugordercancelled,drugname,drughiclseqno,dosage,routeadmin,frequency,loadingdose,prn,drugstopoffset,gtc
        1,10,50,60,No,No,CEFTRIAXONE 1 G IV,1,1 g,IV,q24h,,No,2000,0
    """,
    )
    data = load_eicu(tmp_path)
    state, rows, detail = status(data, "antibiotic")
    assert (state, rows) == ("present", 1)
    assert "missing from this copy: treatment" in detail


def test_missing_column_is_absent_not_a_crash(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "patient.csv",
        """
        patientunitstayid,patienthealthsystemstayid,gender,age,hospitaladmitoffset,hospitaldischargeoffset,hospitaldischargestatus,unitdischargeoffset,unitdischargestatus,admissionweight,admissionheight,uniquepid
        10,1,Female,60,0,3000,Alive,2000,Alive,60,160,001-1
    """,
    )
    write_csv(
        tmp_path / "vitalAperiodic.csv",
        """
        vitalaperiodicid,patientunitstayid,observationoffset,noninvasivemean
        1,10,5,70
    """,
    )
    data = load_eicu(tmp_path)
    assert data.rows_by_concept()["map"] == 1
    state, _, detail = status(data, "sbp")
    assert state == "absent" and "noninvasivesystolic" in detail


def test_demo_mapping_inherits() -> None:
    demo = load_mapping("eicu-demo")
    assert demo["tables"]["lab"]["file"] == "pyhealth-subset/lab"
    assert demo["concepts"] == load_mapping("eicu")["concepts"]


def test_real_demo(eicu_demo: SourceData) -> None:
    data = eicu_demo
    assert data.stays.height == 2520
    counts = data.rows_by_concept()
    for concept in (
        "map",
        "fio2",
        "gcs",
        "norepinephrine_rate",
        "antibiotic",
        "culture",
        "bilirubin",
        "creatinine",
    ):
        assert counts.get(concept, 0) > 0, concept
    assert status(data, "spo2")[0] == "absent" and "vitalPeriodic" in status(data, "spo2")[2]
    assert status(data, "urine_output")[0] == "absent"
    assert any("pyhealth-subset" in d for d in data.observations["source"].unique().to_list())
    assert data.observations["patient_id"].is_in(data.stays["stay_id"].implode()).all()


def test_real_demo_treatment_antibiotics(eicu_demo: SourceData) -> None:
    treatment = (
        pl.read_csv(shared("eicu-crd-demo-2.0.1") / "treatment.csv.gz", infer_schema=False)
        .with_row_index("source_row", offset=1)
        .with_columns(pl.col("source_row").cast(pl.Int64))
    )
    abx = eicu_demo.observations.filter(pl.col("concept") == "antibiotic")
    from_treatment = abx.filter(pl.col("source") == "eicu:treatment.csv.gz").join(
        treatment, on="source_row", how="left"
    )
    assert from_treatment.height > 2000
    assert (from_treatment["patient_id"] == from_treatment["patientunitstayid"]).all()
    offsets = from_treatment["treatmentoffset"].cast(pl.Int64).to_list()
    assert from_treatment["time"].to_list() == [DEFAULT_EPOCH + timedelta(minutes=m) for m in offsets]
    strings = from_treatment["treatmentstring"].str.to_lowercase()
    assert strings.str.contains("antibacterials|antibiotics").all()
    assert not strings.str.contains("prophyla").any()
    # cultured stays that now have an antibiotic event: before, medication alone gave 6 of 64
    cultured = eicu_demo.observations.filter(pl.col("concept") == "culture")["patient_id"].unique()
    with_medication = abx.filter(pl.col("source") == "eicu:medication.csv.gz")["patient_id"].unique()
    assert (
        abx["patient_id"].unique().is_in(cultured.implode()).sum()
        > with_medication.is_in(cultured.implode()).sum()
    )
    suspected = suspected_infection(eicu_demo.observations).height
    medication_only = suspected_infection(
        eicu_demo.observations.filter(pl.col("source") != "eicu:treatment.csv.gz")
    ).height
    assert suspected > medication_only


def test_registry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown source"):
        load_source("nope", tmp_path)


@pytest.mark.parametrize(
    ("intubated", "verbal", "option", "gcs"),
    [
        ("1", "1", None, 15.0),  # intubated: verbal 1 is the tube, presumed normal (5)
        ("0", "1", None, 11.0),  # not intubated: a real verbal 1
        ("1", "3", None, 13.0),  # intubated but a verbal score was given: kept
        ("1", "1", "charted", 11.0),  # the option keeps the charted 1
    ],
)
def test_apache_gcs_of_intubated_patients(
    intubated: str, verbal: str, option: str | None, gcs: float
) -> None:
    from immunostrat.sources.eicu import apache_gcs
    from immunostrat.sources.mapping import concept_entries, load_mapping

    entry = next(e for e in concept_entries(load_mapping("eicu"), "gcs") if e.callback == "apache_gcs")
    assert entry.options["intubated_verbal"] == "presumed-normal"
    if option is not None:
        entry = entry.model_copy(update={"options": {**entry.options, "intubated_verbal": option}})
    frame = pl.DataFrame(
        {"value": ["4"], "motor": ["6"], "verbal": [verbal], "meds": ["0"], "intubated": [intubated]}
    )
    assert apache_gcs(frame, entry)["value"].cast(pl.Float64).to_list() == [gcs]
